//! OTLP requests into the store: the one walk every request takes, and the rules for
//! metrics and points.
//!
//! Whichever reader produced the request's [`Request`] view (`wire::parse` in place, or
//! [`Request::of_message`] over a message `prost` or the OTLP/JSON decoder built),
//! [`store_view`] walks it: one instance lock per resource, each metric's identity checked
//! once, each point validated and handed to the store with attributes that still point into
//! the request. Invalid points are counted in the returned [`Outcome`] with a message for
//! the sender; the store's locks are taken by `Store::begin` and `Ingest::instance`.

use std::collections::HashSet;
use std::sync::Arc;

use foldhash::fast::RandomState;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;

use super::view::{self, Block, ExponentialView, HistogramView, MetricView, Request, ValueView};
use crate::model::{
    AttrRef, Attributes, ExpBuckets, ExpHistogram, Histogram, Kind, MetricId, Number, Point, Scope,
    Summary, Temporality, Value, sort_unique,
};
use crate::outcome::{Outcome, RejectReason};
use crate::store::{InstanceWriter, Limits, NewBlock, NewBlocks, Store, Writer};

/// `DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK`: the stream was explicitly removed.
const NO_RECORDED_VALUE: u32 = 1;

/// A point's kind-specific value, or why it cannot be stored.
type ValueResult = Result<Value, (RejectReason, String)>;

/// Stores a decoded message (the OTLP/JSON path, and protobuf requests `wire` declines)
/// through the same view and walk as a request read in place.
pub fn store_message(
    store: &Store,
    message: &ExportMetricsServiceRequest,
    writer: Writer,
) -> Outcome {
    let nested = view::nested_values(message);
    // A message's view has no blocks to learn.
    store_view(store, &Request::of_message(message, &nested), writer, None)
}

/// A metric's identity, or `None` (its points counted as rejected) when its name is empty
/// or its temporality is neither delta nor cumulative. `temporality` is `None` for the
/// kinds that have none.
fn metric_id(
    name: String,
    unit: String,
    kind: Kind,
    monotonic: bool,
    temporality: Option<i32>,
    n_points: usize,
    outcome: &mut Outcome,
) -> Option<MetricId> {
    let n_points = n_points as u64;
    if name.is_empty() {
        outcome.reject(RejectReason::EmptyName, n_points, || {
            format!("a {} metric has an empty name", kind.as_str())
        });
        return None;
    }
    let temporality = match temporality {
        None => None,
        Some(1) => Some(Temporality::Delta),
        Some(2) => Some(Temporality::Cumulative),
        Some(other) => {
            outcome.reject(RejectReason::BadTemporality, n_points, || {
                format!(
                    "metric {name:?}: aggregation_temporality {other} is not DELTA (1) or CUMULATIVE (2)"
                )
            });
            return None;
        }
    };
    Some(MetricId {
        name,
        kind,
        unit,
        monotonic,
        temporality,
    })
}

/// The rules every point kind shares: time 0 is refused; a NO_RECORDED_VALUE point needs no
/// value; otherwise `value` reads the kind-specific part or says why it cannot be stored.
fn point(
    metric: &MetricId,
    (start, time, flags): (u64, u64, u32),
    value: impl FnOnce() -> ValueResult,
    outcome: &mut Outcome,
) -> Option<Point> {
    if time == 0 {
        outcome.reject(RejectReason::TimeZero, 1, || {
            format!("metric {:?}: a point has time_unix_nano 0", metric.name)
        });
        return None;
    }
    let value = if flags & NO_RECORDED_VALUE != 0 {
        Value::NoRecordedValue
    } else {
        match value() {
            Ok(value) => value,
            Err((reason, problem)) => {
                outcome.reject(reason, 1, || format!("metric {:?}: {problem}", metric.name));
                return None;
            }
        }
    };
    Some(Point { start, time, value })
}

/// Stores a request's view: every resource under its instance's lock, every point under the
/// rules below, each point's stream found with attributes that still point into the request,
/// or by the set of a known block (`view::Block::Known`). With `new_blocks`, each block new
/// to the store whose point reached a stream is added there once while it has room, for
/// `Store::learn_blocks` after the guard the view may borrow from (`Store::known_blocks`) is
/// let go.
pub fn store_view(
    store: &Store,
    request: &Request<'_>,
    writer: Writer,
    new_blocks: Option<&mut NewBlocks>,
) -> Outcome {
    let limits = store.limits();
    let mut ingest = store.begin(writer, Outcome::default());
    // One buffer for every point's sorted attributes: no allocation per point.
    let mut sorted: Vec<(&str, AttrRef<'_>)> = Vec::new();
    // The new blocks, each learnt once however many of the request's points carry it.
    let mut learning = new_blocks.map(|blocks| Learning {
        seen: HashSet::default(),
        blocks,
    });
    for resource in &request.resources {
        let pairs = &request.attributes[resource.attributes.clone()];
        let scopes = &request.scopes[resource.scopes.clone()];
        if let Some(problem) = limits.attribute_problem(pairs) {
            let n = points_in(request, scopes);
            ingest
                .outcome()
                .reject(RejectReason::AttributeLimit, n, || {
                    format!("a resource has {problem}; none of its points is stored")
                });
            continue;
        }
        if let Some(mismatch) = store.pid_mismatch(&writer, pairs) {
            let n = points_in(request, scopes);
            ingest
                .outcome()
                .reject(RejectReason::PidMismatch, n, || mismatch);
            continue;
        }
        let stored = ingest.instance(&Attributes::from_pairs(pairs), |instance| {
            for scope in scopes {
                let pairs = &request.attributes[scope.attributes.clone()];
                if let Some(problem) = limits.attribute_problem(pairs) {
                    let n = points_in(request, std::slice::from_ref(scope));
                    instance
                        .outcome()
                        .reject(RejectReason::AttributeLimit, n, || {
                            format!(
                                "scope {:?} has {problem}; none of its points is stored",
                                scope.name
                            )
                        });
                    continue;
                }
                let scope_key = Arc::new(Scope {
                    name: scope.name.to_owned(),
                    version: scope.version.to_owned(),
                    attributes: Attributes::from_pairs(pairs),
                });
                for metric in &request.metrics[scope.metrics.clone()] {
                    store_metric(
                        instance,
                        request,
                        &scope_key,
                        metric,
                        &mut sorted,
                        &mut learning,
                    );
                }
            }
        });
        if stored.is_none() {
            let n = points_in(request, scopes);
            let max = limits.max_instances;
            ingest.outcome().reject(RejectReason::InstanceLimit, n, || {
                format!(
                    "the store holds {max} instances (limits.max_instances): a new resource's points are refused until some are evicted"
                )
            });
        }
    }
    ingest.finish()
}

/// How many data points the metrics of `scopes` carry.
fn points_in(request: &Request<'_>, scopes: &[view::ScopeView<'_>]) -> u64 {
    scopes
        .iter()
        .flat_map(|scope| &request.metrics[scope.metrics.clone()])
        .filter_map(|metric| metric.data.as_ref())
        .map(|data| data.points.len() as u64)
        .sum()
}

/// Stores the points of one metric. `sorted` is scratch space for each point's attributes.
fn store_metric<'a>(
    instance: &mut InstanceWriter<'_>,
    request: &Request<'a>,
    scope: &Arc<Scope>,
    metric: &MetricView<'a>,
    sorted: &mut Vec<(&'a str, AttrRef<'a>)>,
    learning: &mut Option<Learning<'a, '_>>,
) {
    let Some(data) = &metric.data else {
        instance.outcome().warn(|| no_data(metric.name));
        return;
    };
    let temporality = data.kind.has_temporality().then_some(data.temporality);
    let Some(identity) = metric_id(
        metric.name.to_owned(),
        metric.unit.to_owned(),
        data.kind,
        data.monotonic,
        temporality,
        data.points.len(),
        instance.outcome(),
    ) else {
        return;
    };
    let identity = Arc::new(identity);
    let description: Arc<str> = metric.description.into();
    let key = instance.metric(scope, &identity, &description);
    let limits = instance.limits();
    for view in &request.points[data.points.clone()] {
        let times = (view.start, view.time, view.flags);
        let value = || view_value(request, &view.value, &limits);
        let Some(point) = point(&identity, times, value, instance.outcome()) else {
            continue;
        };
        let pairs = &request.attributes[view.attributes.clone()];
        if let Some(problem) = limits.attribute_problem(pairs) {
            instance
                .outcome()
                .reject(RejectReason::AttributeLimit, 1, || {
                    format!("metric {:?}: a point has {problem}", identity.name)
                });
            continue;
        }
        if let Block::Known(block) = view.block {
            instance.point_known(&key, block, point);
            continue;
        }
        sorted.clear();
        sorted.extend_from_slice(pairs);
        sort_unique(sorted);
        let set = instance.point(&key, &sorted[..], point);
        if let (Block::New(bytes), Some(set), Some(learning)) = (view.block, set, &mut *learning)
            && learning.blocks.has_room()
            && learning.seen.insert(bytes)
        {
            learning.blocks.extend(NewBlock::new(bytes, pairs, set));
        }
    }
}

/// The blocks a request shows the store for the first time.
struct Learning<'a, 'b> {
    /// Their bytes, so that each is copied once.
    seen: HashSet<&'a [u8], RandomState>,
    blocks: &'b mut NewBlocks,
}

/// The value of a point, validated and within `limits`.
fn view_value(request: &Request<'_>, value: &ValueView, limits: &Limits) -> ValueResult {
    if let Some(problem) = histogram_size_problem(value, limits) {
        return Err((RejectReason::HistogramLimit, problem));
    }
    match value {
        ValueView::Double(value) => Ok(Value::Number(Number::Double(*value))),
        ValueView::Int(value) => Ok(Value::Number(Number::Int(*value))),
        ValueView::Missing => Err(no_value()),
        ValueView::Histogram(histogram) => histogram_value(
            histogram,
            &request.bounds[histogram.bounds.clone()],
            &request.counts[histogram.bucket_counts.clone()],
        )
        .map(Value::Histogram)
        .map_err(|problem| (RejectReason::InvalidHistogram, problem)),
        ValueView::Exponential(histogram) => exp_histogram_value(histogram, &request.counts)
            .map(Value::ExpHistogram)
            .map_err(|problem| (RejectReason::InvalidExponentialHistogram, problem)),
        ValueView::Summary(summary) => Ok(Value::Summary(Summary {
            count: summary.count,
            sum: summary.sum,
            quantiles: request.quantiles[summary.quantiles.clone()].to_vec(),
        })),
    }
}

/// Why a histogram has more bounds or buckets than `limits` allow, or `None`.
fn histogram_size_problem(value: &ValueView, limits: &Limits) -> Option<String> {
    match value {
        ValueView::Histogram(histogram) => {
            let bounds = histogram.bounds.len();
            (bounds > limits.max_histogram_bounds.get()).then(|| {
                format!(
                    "a histogram has {bounds} explicit bounds, more than limits.max_histogram_bounds ({})",
                    limits.max_histogram_bounds
                )
            })
        }
        ValueView::Exponential(histogram) => {
            let widest = [&histogram.positive, &histogram.negative]
                .into_iter()
                .flatten()
                .map(|side| side.counts.len())
                .max()
                .unwrap_or(0);
            (widest > limits.max_exponential_buckets.get()).then(|| {
                format!(
                    "an exponential histogram has {widest} buckets on one side, more than limits.max_exponential_buckets ({})",
                    limits.max_exponential_buckets
                )
            })
        }
        _ => None,
    }
}

fn no_data(name: &str) -> String {
    format!(
        "metric {name:?} has no data (no gauge, sum, histogram, exponential histogram or summary)"
    )
}

fn no_value() -> (RejectReason, String) {
    (
        RejectReason::NoValue,
        "a point has neither as_double nor as_int".to_string(),
    )
}

/// NaN carries no number: an optional NaN field is treated as absent.
fn number(value: Option<f64>) -> Option<f64> {
    value.filter(|value| !value.is_nan())
}

/// Validates an explicit-bucket histogram point per the rules in metrics.proto.
fn histogram_value(
    point: &HistogramView,
    bounds: &[f64],
    bucket_counts: &[u64],
) -> Result<Histogram, String> {
    let mut bucket_counts = bucket_counts.to_vec();
    if bucket_counts.is_empty() && bounds.is_empty() {
        // Only count and sum are known: one bucket (-Inf, +Inf).
        bucket_counts.push(point.count);
    } else if bucket_counts.len() != bounds.len() + 1 {
        return Err(format!(
            "histogram has {} bucket counts for {} explicit bounds; it needs one more count than bounds",
            bucket_counts.len(),
            bounds.len()
        ));
    }
    if bounds.iter().any(|bound| bound.is_nan()) {
        return Err("histogram explicit bounds contain NaN".into());
    }
    if bounds.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err("histogram explicit bounds are not strictly increasing".into());
    }
    let total = bucket_counts
        .iter()
        .try_fold(0u64, |total, count| total.checked_add(*count));
    if total != Some(point.count) {
        return Err(format!(
            "histogram bucket counts add up to {} but count is {}",
            total.map_or_else(|| "more than 2^64".to_string(), |total| total.to_string()),
            point.count
        ));
    }
    Ok(Histogram {
        count: point.count,
        sum: number(point.sum),
        min: number(point.min),
        max: number(point.max),
        bounds: bounds.to_vec(),
        bucket_counts,
    })
}

/// The bucket indices finite doubles can fall in at `scale`: bucket `i` covers
/// `(2^(i * 2^-scale), 2^((i + 1) * 2^-scale)]`, and finite doubles lie between 2^-1075 and
/// 2^1024. Indices outside this range describe no value; refusing them also bounds the width
/// of every later merge (at scale -10 the whole range is three buckets).
pub(crate) fn index_range(scale: i32) -> (i64, i64) {
    if scale >= 0 {
        (-1075i64 << scale, (1024i64 << scale) - 1)
    } else {
        (-1075i64 >> -scale, (1024i64 >> -scale) - 1)
    }
}

fn exp_buckets(
    buckets: &Option<view::BucketsView>,
    all_counts: &[u64],
    scale: i32,
    side: &str,
) -> Result<(ExpBuckets, u64), String> {
    let Some(buckets) = buckets else {
        return Ok((ExpBuckets::default(), 0));
    };
    let (offset, counts) = (buckets.offset, &all_counts[buckets.counts.clone()]);
    if !counts.is_empty() {
        let (lowest, highest) = index_range(scale);
        let first = i64::from(offset);
        let last = first + counts.len() as i64 - 1;
        if first < lowest || last > highest {
            return Err(format!(
                "{side} buckets {first}..={last} lie outside {lowest}..={highest}, the indices finite doubles take at scale {scale}"
            ));
        }
    }
    let total = counts
        .iter()
        .try_fold(0u64, |total, count| total.checked_add(*count))
        .ok_or_else(|| format!("{side} bucket counts add up to more than 2^64"))?;
    Ok((
        ExpBuckets {
            offset,
            counts: counts.to_vec(),
        },
        total,
    ))
}

/// Validates an exponential histogram point per the rules in metrics.proto.
/// `counts` holds the buckets of both sides, which the view's ranges point into.
fn exp_histogram_value(point: &ExponentialView, counts: &[u64]) -> Result<ExpHistogram, String> {
    let scales = ExpHistogram::SCALES;
    if !scales.contains(&point.scale) {
        return Err(format!(
            "exponential histogram scale {} is outside {}..={}",
            point.scale,
            scales.start(),
            scales.end()
        ));
    }
    if point.zero_threshold.is_nan() || point.zero_threshold < 0.0 {
        return Err(format!(
            "exponential histogram zero_threshold {} is not a non-negative number",
            point.zero_threshold
        ));
    }
    let (positive, n_positive) = exp_buckets(&point.positive, counts, point.scale, "positive")?;
    let (negative, n_negative) = exp_buckets(&point.negative, counts, point.scale, "negative")?;
    let total = point
        .zero_count
        .checked_add(n_positive)
        .and_then(|total| total.checked_add(n_negative));
    if total != Some(point.count) {
        return Err(format!(
            "exponential histogram zero_count + bucket counts = {} but count is {}",
            total.map_or_else(|| "more than 2^64".to_string(), |total| total.to_string()),
            point.count
        ));
    }
    Ok(ExpHistogram {
        count: point.count,
        sum: number(point.sum),
        min: number(point.min),
        max: number(point.max),
        scale: point.scale,
        zero_count: point.zero_count,
        zero_threshold: point.zero_threshold,
        positive,
        negative,
    })
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::model::{AttrValue, StreamValue};
    use crate::store::{StoreSettings, StreamView, Transport};
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric::Data,
        number_data_point,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;

    fn string(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.into())),
            }),
            ..Default::default()
        }
    }

    fn request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![string("service.instance.id", "w1")],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn number(time: u64, value: Option<number_data_point::Value>, flags: u32) -> NumberDataPoint {
        NumberDataPoint {
            time_unix_nano: time,
            value,
            flags,
            ..Default::default()
        }
    }

    fn sum_metric(temporality: i32, points: Vec<NumberDataPoint>) -> Metric {
        Metric {
            name: "requests".into(),
            data: Some(Data::Sum(Sum {
                data_points: points,
                aggregation_temporality: temporality,
                is_monotonic: true,
            })),
            ..Default::default()
        }
    }

    /// Stores one metric from a decoded message; returns the streams and the outcome.
    #[track_caller]
    fn store_one(metric: Metric) -> (Vec<StreamView>, Outcome) {
        let store = Store::new(StoreSettings::for_tests(100));
        let writer = Writer {
            transport: Transport::Http,
            peer: None,
            pid: None,
        };
        let outcome = store_message(&store, &request(vec![metric]), writer);
        (store.all_streams(), outcome)
    }

    #[test]
    fn int_and_double_values_keep_their_type() {
        for (value, expected) in [
            (number_data_point::Value::AsInt(7), Number::Int(7)),
            (number_data_point::Value::AsDouble(1.5), Number::Double(1.5)),
        ] {
            let (streams, outcome) = store_one(sum_metric(2, vec![number(1, Some(value), 0)]));
            assert_eq!(outcome.partial_success(), None);
            assert_eq!(streams[0].state.value, Some(StreamValue::Number(expected)));
            assert_eq!(
                streams[0].key.metric.temporality,
                Some(Temporality::Cumulative)
            );
            assert!(streams[0].key.metric.monotonic);
        }
    }

    #[test]
    fn time_zero_and_missing_value_are_rejected() {
        let (streams, outcome) = store_one(sum_metric(
            2,
            vec![
                number(0, Some(number_data_point::Value::AsInt(1)), 0),
                number(5, None, 0),
                number(6, None, NO_RECORDED_VALUE),
            ],
        ));
        assert_eq!(outcome.rejected(RejectReason::TimeZero), 1);
        assert_eq!(outcome.rejected(RejectReason::NoValue), 1);
        assert_eq!(outcome.accepted, 1);
        assert!(
            streams[0].state.stale,
            "the NO_RECORDED_VALUE point is stored"
        );
    }

    #[test]
    fn unspecified_temporality_rejects_every_point() {
        let (streams, outcome) = store_one(sum_metric(
            0,
            vec![
                number(1, Some(number_data_point::Value::AsInt(1)), 0),
                number(2, Some(number_data_point::Value::AsInt(2)), 0),
            ],
        ));
        assert!(streams.is_empty());
        assert_eq!(outcome.rejected(RejectReason::BadTemporality), 2);
    }

    #[test]
    fn metric_without_data_is_a_warning() {
        let (streams, outcome) = store_one(Metric {
            name: "empty".into(),
            ..Default::default()
        });
        assert!(streams.is_empty());
        let (rejected, message) = outcome.partial_success().expect("warning");
        assert_eq!(rejected, 0);
        assert!(message.contains("\"empty\" has no data"), "{message}");
    }

    #[test]
    fn gauge_point_attributes_are_kept() {
        let mut point = number(1, Some(number_data_point::Value::AsDouble(3.0)), 0);
        point.attributes = vec![string("route", "/a")];
        let (streams, _) = store_one(Metric {
            name: "inflight".into(),
            data: Some(Data::Gauge(Gauge {
                data_points: vec![point],
            })),
            ..Default::default()
        });
        assert_eq!(
            streams[0].key.attributes.get("route"),
            Some(&AttrValue::Str("/a".into()))
        );
        assert_eq!(streams[0].key.metric.temporality, None);
    }

    #[track_caller]
    fn check_histogram(counts: &[u64], bounds: &[f64], count: u64, expected: Result<(), &str>) {
        let view = HistogramView {
            count,
            ..Default::default()
        };
        match (histogram_value(&view, bounds, counts), expected) {
            (Ok(_), Ok(())) => {}
            (Err(problem), Err(expected)) => assert!(problem.contains(expected), "{problem}"),
            (got, expected) => panic!("got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn histogram_rules() {
        check_histogram(&[1, 2, 3], &[1.0, 2.0], 6, Ok(()));
        check_histogram(&[], &[], 4, Ok(()));
        check_histogram(&[1, 2], &[1.0, 2.0], 3, Err("one more count than bounds"));
        check_histogram(&[1, 2, 3], &[2.0, 1.0], 6, Err("strictly increasing"));
        check_histogram(&[1, 2, 3], &[1.0, f64::NAN], 6, Err("NaN"));
        check_histogram(
            &[1, 2, 3],
            &[1.0, 2.0],
            7,
            Err("add up to 6 but count is 7"),
        );
        check_histogram(&[u64::MAX, 1], &[1.0], 0, Err("more than 2^64"));
    }

    #[track_caller]
    fn check_exp(scale: i32, zero: u64, positive: &[u64], count: u64, expected: Result<(), &str>) {
        check_exp_at(scale, -2, zero, positive, count, expected)
    }

    #[track_caller]
    fn check_exp_at(
        scale: i32,
        offset: i32,
        zero: u64,
        positive: &[u64],
        count: u64,
        expected: Result<(), &str>,
    ) {
        let view = ExponentialView {
            scale,
            zero_count: zero,
            count,
            positive: Some(view::BucketsView {
                offset,
                counts: 0..positive.len(),
            }),
            ..Default::default()
        };
        match (exp_histogram_value(&view, positive), expected) {
            (Ok(_), Ok(())) => {}
            (Err(problem), Err(expected)) => assert!(problem.contains(expected), "{problem}"),
            (got, expected) => panic!("got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn exponential_histogram_rules() {
        check_exp(3, 1, &[1, 2], 4, Ok(()));
        check_exp(21, 0, &[], 0, Err("scale 21"));
        check_exp(0, 1, &[1, 2], 5, Err("= 4 but count is 5"));
        // Indices no finite double can take are refused, whatever the scale.
        check_exp_at(-10, -2, 0, &[1, 1, 1], 3, Ok(()));
        check_exp_at(-10, i32::MIN, 0, &[1], 1, Err("outside -2..=0"));
        check_exp_at(20, i32::MAX - 1, 0, &[1], 1, Err("at scale 20"));
        check_exp_at(20, -1075 << 20, 0, &[1], 1, Ok(()));
    }
}
