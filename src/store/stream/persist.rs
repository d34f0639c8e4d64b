//! A stream's accounting to and from the snapshot's messages (`proto/fanin/v1/snapshot.proto`):
//! every run and chain with its writer ids, base and latest value, so that a restored stream
//! goes on exactly as the one that was written would have.
//!
//! Reading checks what the accounting relies on (runs for cumulative kinds and gauges,
//! chains for deltas, values of the stream's shape, histogram bounds, bounded counts) and
//! says what does not hold; nothing read is trusted to be consistent because it was
//! checksummed.

use std::sync::Arc;

use smallvec::SmallVec;

use super::chains::{BOUNDS, Chain, Chains, MAX_CHAINS};
use super::runs::{MAX_RUNS, Run, Runs};
use super::{Accumulator, Additive, Evidence, Stream};
use crate::model::{ExpBuckets, ExpHistogram, Histogram, MetricId, Number, StreamValue, Summary};
use crate::proto::v1::snapshot as pb;
use crate::receiver::otlp::index_range;

/// What a snapshot's values are checked against as they are read.
type Checked<T> = Result<T, String>;

/// A value a stream accumulates, as the snapshot writes it.
pub(in crate::store) trait Persist: Sized {
    fn to_proto(&self) -> pb::PointValue;
    /// # Errors
    /// What is missing or does not hold for a value of this shape.
    fn from_proto(value: &pb::PointValue) -> Checked<Self>;
}

fn point_value(value: pb::point_value::Value) -> pb::PointValue {
    pb::PointValue { value: Some(value) }
}

fn shape_error(wanted: &str, value: &pb::PointValue) -> String {
    let found = match &value.value {
        None => "no value",
        Some(pb::point_value::Value::Int(_) | pb::point_value::Value::Double(_)) => "a number",
        Some(pb::point_value::Value::Histogram(_)) => "a histogram",
        Some(pb::point_value::Value::ExponentialHistogram(_)) => "an exponential histogram",
        Some(pb::point_value::Value::Summary(_)) => "a summary",
    };
    format!("a stream of {wanted} holds {found}")
}

impl Persist for Number {
    fn to_proto(&self) -> pb::PointValue {
        point_value(match *self {
            Number::Int(int) => pb::point_value::Value::Int(int),
            Number::Double(double) => pb::point_value::Value::Double(double),
        })
    }

    fn from_proto(value: &pb::PointValue) -> Checked<Number> {
        match value.value {
            Some(pb::point_value::Value::Int(int)) => Ok(Number::Int(int)),
            Some(pb::point_value::Value::Double(double)) => Ok(Number::Double(double)),
            _ => Err(shape_error("numbers", value)),
        }
    }
}

impl Persist for Histogram {
    fn to_proto(&self) -> pb::PointValue {
        point_value(pb::point_value::Value::Histogram(pb::Histogram {
            count: self.count,
            sum: self.sum,
            min: self.min,
            max: self.max,
            bounds: self.bounds.clone(),
            bucket_counts: self.bucket_counts.clone(),
        }))
    }

    fn from_proto(value: &pb::PointValue) -> Checked<Histogram> {
        let Some(pb::point_value::Value::Histogram(histogram)) = &value.value else {
            return Err(shape_error("histograms", value));
        };
        let bounds = &histogram.bounds;
        if histogram.bucket_counts.len() != bounds.len() + 1 {
            return Err(format!(
                "a histogram has {} bucket counts for {} bounds",
                histogram.bucket_counts.len(),
                bounds.len()
            ));
        }
        if bounds.iter().any(|bound| bound.is_nan()) || bounds.windows(2).any(|w| w[0] >= w[1]) {
            return Err("a histogram's bounds are not strictly increasing".into());
        }
        Ok(Histogram {
            count: histogram.count,
            sum: histogram.sum,
            min: histogram.min,
            max: histogram.max,
            bounds: bounds.clone(),
            bucket_counts: histogram.bucket_counts.clone(),
        })
    }
}

fn buckets_to_proto(buckets: &ExpBuckets) -> pb::Buckets {
    pb::Buckets {
        offset: buckets.offset,
        counts: buckets.counts.clone(),
    }
}

fn buckets_from_proto(buckets: Option<&pb::Buckets>, scale: i32) -> Checked<ExpBuckets> {
    let Some(buckets) = buckets else {
        return Ok(ExpBuckets::default());
    };
    if !buckets.counts.is_empty() {
        let (lowest, highest) = index_range(scale);
        let first = i64::from(buckets.offset);
        let last = first + buckets.counts.len() as i64 - 1;
        if first < lowest || last > highest {
            return Err(format!(
                "exponential buckets {first}..={last} lie outside {lowest}..={highest} at scale {scale}"
            ));
        }
    }
    Ok(ExpBuckets {
        offset: buckets.offset,
        counts: buckets.counts.clone(),
    })
}

impl Persist for ExpHistogram {
    fn to_proto(&self) -> pb::PointValue {
        point_value(pb::point_value::Value::ExponentialHistogram(
            pb::ExponentialHistogram {
                count: self.count,
                sum: self.sum,
                min: self.min,
                max: self.max,
                scale: self.scale,
                zero_count: self.zero_count,
                zero_threshold: self.zero_threshold,
                positive: Some(buckets_to_proto(&self.positive)),
                negative: Some(buckets_to_proto(&self.negative)),
            },
        ))
    }

    fn from_proto(value: &pb::PointValue) -> Checked<ExpHistogram> {
        let Some(pb::point_value::Value::ExponentialHistogram(histogram)) = &value.value else {
            return Err(shape_error("exponential histograms", value));
        };
        if !ExpHistogram::SCALES.contains(&histogram.scale) {
            return Err(format!(
                "an exponential histogram's scale {} is outside the scales fanin keeps",
                histogram.scale
            ));
        }
        Ok(ExpHistogram {
            count: histogram.count,
            sum: histogram.sum,
            min: histogram.min,
            max: histogram.max,
            scale: histogram.scale,
            zero_count: histogram.zero_count,
            zero_threshold: histogram.zero_threshold,
            positive: buckets_from_proto(histogram.positive.as_ref(), histogram.scale)?,
            negative: buckets_from_proto(histogram.negative.as_ref(), histogram.scale)?,
        })
    }
}

impl Persist for Summary {
    fn to_proto(&self) -> pb::PointValue {
        point_value(pb::point_value::Value::Summary(pb::Summary {
            count: self.count,
            sum: self.sum,
            quantiles: self
                .quantiles
                .iter()
                .map(|(quantile, _)| *quantile)
                .collect(),
            values: self.quantiles.iter().map(|(_, value)| *value).collect(),
        }))
    }

    fn from_proto(value: &pb::PointValue) -> Checked<Summary> {
        let Some(pb::point_value::Value::Summary(summary)) = &value.value else {
            return Err(shape_error("summaries", value));
        };
        if summary.quantiles.len() != summary.values.len() {
            return Err("a summary has quantiles without values".into());
        }
        Ok(Summary {
            count: summary.count,
            sum: summary.sum,
            quantiles: summary
                .quantiles
                .iter()
                .copied()
                .zip(summary.values.iter().copied())
                .collect(),
        })
    }
}

impl Persist for StreamValue {
    fn to_proto(&self) -> pb::PointValue {
        match self {
            StreamValue::Number(number) => number.to_proto(),
            StreamValue::Histogram(histogram) => histogram.to_proto(),
            StreamValue::ExpHistogram(histogram) => histogram.to_proto(),
            StreamValue::Summary(summary) => summary.to_proto(),
        }
    }

    fn from_proto(value: &pb::PointValue) -> Checked<StreamValue> {
        Ok(match &value.value {
            Some(pb::point_value::Value::Histogram(_)) => {
                StreamValue::Histogram(Histogram::from_proto(value)?)
            }
            Some(pb::point_value::Value::ExponentialHistogram(_)) => {
                StreamValue::ExpHistogram(ExpHistogram::from_proto(value)?)
            }
            Some(pb::point_value::Value::Summary(_)) => {
                StreamValue::Summary(Summary::from_proto(value)?)
            }
            _ => StreamValue::Number(Number::from_proto(value)?),
        })
    }
}

pub(in crate::store) fn evidence_to_proto(evidence: Option<Evidence>) -> i32 {
    let evidence = match evidence {
        None => pb::Evidence::None,
        Some(Evidence::DifferentProcesses) => pb::Evidence::DifferentProcesses,
        Some(Evidence::RunsOverlap) => pb::Evidence::RunsOverlap,
        Some(Evidence::ChainsOverlap) => pb::Evidence::ChainsOverlap,
        Some(Evidence::WentDownWithoutNewStart) => pb::Evidence::WentDownWithoutNewStart,
        Some(Evidence::SameTimeOtherValue) => pb::Evidence::SameTimeOtherValue,
        Some(Evidence::ConnectionsAlternate) => pb::Evidence::ConnectionsAlternate,
        Some(Evidence::TooManyWriters) => pb::Evidence::TooManyWriters,
    };
    evidence as i32
}

/// # Errors
/// A number no [`pb::Evidence`] has.
pub(in crate::store) fn evidence_from_proto(evidence: i32) -> Checked<Option<Evidence>> {
    let evidence = pb::Evidence::try_from(evidence)
        .map_err(|_| format!("evidence {evidence} is not one fanin knows"))?;
    Ok(match evidence {
        pb::Evidence::None => None,
        pb::Evidence::DifferentProcesses => Some(Evidence::DifferentProcesses),
        pb::Evidence::RunsOverlap => Some(Evidence::RunsOverlap),
        pb::Evidence::ChainsOverlap => Some(Evidence::ChainsOverlap),
        pb::Evidence::WentDownWithoutNewStart => Some(Evidence::WentDownWithoutNewStart),
        pb::Evidence::SameTimeOtherValue => Some(Evidence::SameTimeOtherValue),
        pb::Evidence::ConnectionsAlternate => Some(Evidence::ConnectionsAlternate),
        pb::Evidence::TooManyWriters => Some(Evidence::TooManyWriters),
    })
}

fn optional<T: Persist>(value: Option<&pb::PointValue>) -> Checked<Option<T>> {
    value.map(T::from_proto).transpose()
}

fn runs_to_proto<T: Additive + Persist>(runs: &Runs<T>) -> pb::stream::Parts {
    pb::stream::Parts::Runs(pb::Runs {
        base: runs.base.as_ref().map(Persist::to_proto),
        runs: runs
            .runs
            .iter()
            .map(|run| pb::Run {
                start: run.start,
                last: run.last,
                gap_ms: run.gap_ms,
                stale: run.stale,
                refused: evidence_to_proto(run.refused),
                writer: run.writer,
                previous_writer: run.previous_writer,
                value: run.value.as_ref().map(Persist::to_proto),
            })
            .collect(),
    })
}

fn runs_from_proto<T: Additive + Persist>(parts: Option<&pb::stream::Parts>) -> Checked<Runs<T>> {
    let Some(pb::stream::Parts::Runs(message)) = parts else {
        return Err("a cumulative stream or gauge holds no runs".into());
    };
    if message.runs.len() > MAX_RUNS {
        return Err(format!("a stream holds {} runs", message.runs.len()));
    }
    let runs = message
        .runs
        .iter()
        .map(|run| {
            Ok(Run {
                start: run.start,
                last: run.last,
                gap_ms: run.gap_ms,
                stale: run.stale,
                refused: evidence_from_proto(run.refused)?,
                writer: run.writer,
                previous_writer: run.previous_writer,
                value: optional(run.value.as_ref())?,
            })
        })
        .collect::<Checked<SmallVec<_>>>()?;
    Ok(Runs {
        base: optional(message.base.as_ref())?,
        runs,
    })
}

fn chains_to_proto<T: Additive + Persist>(chains: &Chains<T>) -> pb::stream::Parts {
    pb::stream::Parts::Chains(pb::Chains {
        base: chains.base.as_ref().map(Persist::to_proto),
        chains: chains
            .chains
            .iter()
            .map(|chain| pb::Chain {
                bounds: chain.bounds[..usize::from(chain.len)].to_vec(),
                startless: chain.startless,
                refused: evidence_to_proto(chain.refused),
                writer: chain.writer,
                total: chain.total.as_ref().map(Persist::to_proto),
            })
            .collect(),
    })
}

fn chains_from_proto<T: Additive + Persist>(
    parts: Option<&pb::stream::Parts>,
) -> Checked<Chains<T>> {
    let Some(pb::stream::Parts::Chains(message)) = parts else {
        return Err("a delta stream holds no chains".into());
    };
    if message.chains.len() > MAX_CHAINS {
        return Err(format!("a stream holds {} chains", message.chains.len()));
    }
    let chains = message
        .chains
        .iter()
        .map(|chain| {
            if chain.bounds.is_empty() || chain.bounds.len() > BOUNDS {
                return Err(format!("a delta chain holds {} bounds", chain.bounds.len()));
            }
            let mut restored = Chain::new(&chain.bounds, chain.startless, chain.writer, None);
            restored.refused = evidence_from_proto(chain.refused)?;
            restored.total = optional(chain.total.as_ref())?;
            Ok(restored)
        })
        .collect::<Checked<SmallVec<_>>>()?;
    Ok(Chains {
        base: optional(message.base.as_ref())?,
        chains,
    })
}

impl Stream {
    /// The stream as the snapshot writes it; the caller sets the table indices.
    pub(in crate::store) fn to_proto(&self) -> pb::Stream {
        let parts = match &self.accumulator {
            Accumulator::Numbers(runs) => runs_to_proto(runs),
            Accumulator::DeltaNumbers(chains) => chains_to_proto(chains),
            Accumulator::Histograms(runs) => runs_to_proto(runs),
            Accumulator::DeltaHistograms(chains) => chains_to_proto(chains),
            Accumulator::ExpHistograms(runs) => runs_to_proto(runs),
            Accumulator::DeltaExpHistograms(chains) => chains_to_proto(chains),
            Accumulator::Summaries(runs) => runs_to_proto(runs),
        };
        pb::Stream {
            resets: self.resets,
            stale: self.stale,
            unreliable: evidence_to_proto(self.unreliable),
            parts: Some(parts),
            ..pb::Stream::default()
        }
    }

    /// A stream of `metric` as the snapshot wrote it.
    ///
    /// # Errors
    /// What in `message` does not fit a stream of `metric`.
    pub(in crate::store) fn from_proto(
        metric: &MetricId,
        description: Arc<str>,
        message: &pb::Stream,
    ) -> Checked<Stream> {
        let mut stream = Stream::new(metric, description);
        let parts = message.parts.as_ref();
        stream.accumulator = match &stream.accumulator {
            Accumulator::Numbers(_) => Accumulator::Numbers(runs_from_proto(parts)?),
            Accumulator::DeltaNumbers(_) => {
                Accumulator::DeltaNumbers(Box::new(chains_from_proto(parts)?))
            }
            Accumulator::Histograms(_) => {
                Accumulator::Histograms(Box::new(runs_from_proto(parts)?))
            }
            Accumulator::DeltaHistograms(_) => {
                Accumulator::DeltaHistograms(Box::new(chains_from_proto(parts)?))
            }
            Accumulator::ExpHistograms(_) => {
                Accumulator::ExpHistograms(Box::new(runs_from_proto(parts)?))
            }
            Accumulator::DeltaExpHistograms(_) => {
                Accumulator::DeltaExpHistograms(Box::new(chains_from_proto(parts)?))
            }
            Accumulator::Summaries(_) => Accumulator::Summaries(Box::new(runs_from_proto(parts)?)),
        };
        stream.resets = message.resets;
        stream.stale = message.stale;
        stream.unreliable = evidence_from_proto(message.unreliable)?;
        stream.check_bounds()?;
        Ok(stream)
    }

    /// Every stored histogram of the stream has the same bounds, as points applied one by
    /// one guarantee.
    fn check_bounds(&self) -> Checked<()> {
        fn agree<'v>(mut values: impl Iterator<Item = &'v Histogram>) -> Checked<()> {
            let Some(first) = values.next() else {
                return Ok(());
            };
            values.try_for_each(|value| {
                first
                    .check_bounds(value)
                    .map_err(|_| "a stream's histograms disagree on their bounds".to_string())
            })
        }
        match &self.accumulator {
            Accumulator::Histograms(runs) => agree(
                runs.base
                    .iter()
                    .chain(runs.runs.iter().filter_map(|run| run.value.as_ref())),
            ),
            Accumulator::DeltaHistograms(chains) => agree(
                chains.base.iter().chain(
                    chains
                        .chains
                        .iter()
                        .filter_map(|chain| chain.total.as_ref()),
                ),
            ),
            _ => Ok(()),
        }
    }
}
