//! OTLP protobuf messages to fanin's model: the one conversion both transports share.
//!
//! Pure: no I/O, no locks, no clock. It takes the decoded request by value (so strings move
//! instead of being copied), validates every point, and groups the valid ones by instance.
//! Invalid points are counted in the returned [`Outcome`] with a message for the sender.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    ExponentialHistogramDataPoint, HistogramDataPoint, Metric, NumberDataPoint, SummaryDataPoint,
    exponential_histogram_data_point, metric::Data, number_data_point,
};

use super::wire::{self, ValueView};
use crate::model::{
    AttrRef, AttrValue, Attributes, ExpBuckets, ExpHistogram, Histogram, Kind, MetricId, Number,
    Point, Scope, StreamKey, StreamPoint, Summary, Temporality, Value, sort_unique,
};
use crate::outcome::{Outcome, RejectReason};
use crate::store::{InstancePoints, InstanceWriter, Store, Writer};

/// `DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK`: the stream was explicitly removed.
const NO_RECORDED_VALUE: u32 = 1;

/// Exponential histogram scales OTLP allows (the SDKs' `MaxScale` is 20).
const SCALES: std::ops::RangeInclusive<i32> = -10..=20;

/// Converts a request into per-instance batches, counting invalid points in the outcome.
pub fn to_batches(request: ExportMetricsServiceRequest) -> (Vec<InstancePoints>, Outcome) {
    let mut outcome = Outcome::default();
    let mut batches = Vec::with_capacity(request.resource_metrics.len());
    for resource_metrics in request.resource_metrics {
        let resource = to_attributes(
            resource_metrics
                .resource
                .map(|resource| resource.attributes)
                .unwrap_or_default(),
        );
        // Sized up front: a point is large, and growing the vector copies every one.
        let mut points = Vec::with_capacity(count_points(&resource_metrics.scope_metrics));
        for scope_metrics in resource_metrics.scope_metrics {
            let scope = Arc::new(
                scope_metrics
                    .scope
                    .map(|scope| Scope {
                        name: scope.name,
                        version: scope.version,
                        attributes: to_attributes(scope.attributes),
                    })
                    .unwrap_or_default(),
            );
            for metric in scope_metrics.metrics {
                convert_metric(metric, &scope, &mut points, &mut outcome);
            }
        }
        batches.push(InstancePoints { resource, points });
    }
    (batches, outcome)
}

/// How many data points the scopes carry, whatever their kind.
fn count_points(scopes: &[opentelemetry_proto::tonic::metrics::v1::ScopeMetrics]) -> usize {
    scopes
        .iter()
        .flat_map(|scope| &scope.metrics)
        .map(|metric| match &metric.data {
            Some(Data::Gauge(gauge)) => gauge.data_points.len(),
            Some(Data::Sum(sum)) => sum.data_points.len(),
            Some(Data::Histogram(histogram)) => histogram.data_points.len(),
            Some(Data::ExponentialHistogram(histogram)) => histogram.data_points.len(),
            Some(Data::Summary(summary)) => summary.data_points.len(),
            None => 0,
        })
        .sum()
}

/// Converts OTLP key/values into an attribute set.
pub fn to_attributes(pairs: Vec<KeyValue>) -> Attributes {
    Attributes::new(
        pairs
            .into_iter()
            .map(|pair| (pair.key, to_attr_value(pair.value)))
            .collect(),
    )
}

fn to_attr_value(value: Option<AnyValue>) -> AttrValue {
    match value.and_then(|value| value.value) {
        None => AttrValue::Empty,
        Some(any_value::Value::StringValue(value)) => AttrValue::Str(value),
        Some(any_value::Value::BoolValue(value)) => AttrValue::Bool(value),
        Some(any_value::Value::IntValue(value)) => AttrValue::Int(value),
        Some(any_value::Value::DoubleValue(value)) => AttrValue::Double(value),
        Some(any_value::Value::BytesValue(value)) => AttrValue::Bytes(value),
        Some(any_value::Value::ArrayValue(array)) => AttrValue::Array(
            array
                .values
                .into_iter()
                .map(|value| to_attr_value(Some(value)))
                .collect(),
        ),
        Some(any_value::Value::KvlistValue(list)) => AttrValue::Map(to_attributes(list.values)),
        // A profiling-only dictionary reference: the proto asks metrics receivers to treat it
        // as a non-fatal oddity, i.e. as if the value were absent.
        Some(any_value::Value::StringValueStrindex(_)) => AttrValue::Empty,
    }
}

/// Everything the points of one metric share.
struct MetricContext<'a> {
    scope: &'a Arc<Scope>,
    metric: Arc<MetricId>,
    description: Arc<str>,
}

impl MetricContext<'_> {
    fn push(&self, attributes: Vec<KeyValue>, point: Point, points: &mut Vec<StreamPoint>) {
        points.push(StreamPoint {
            key: StreamKey {
                scope: Arc::clone(self.scope),
                metric: Arc::clone(&self.metric),
                attributes: Arc::new(to_attributes(attributes)),
            },
            point,
            description: Arc::clone(&self.description),
        });
    }
}

fn convert_metric(
    metric: Metric,
    scope: &Arc<Scope>,
    points: &mut Vec<StreamPoint>,
    outcome: &mut Outcome,
) {
    let Metric {
        name,
        description,
        unit,
        data,
        ..
    } = metric;
    let Some(data) = data else {
        outcome.warn(|| no_data(&name));
        return;
    };
    let (kind, monotonic, temporality, n_points) = match &data {
        Data::Gauge(gauge) => (Kind::Gauge, false, None, gauge.data_points.len()),
        Data::Sum(sum) => (
            Kind::Sum,
            sum.is_monotonic,
            Some(sum.aggregation_temporality),
            sum.data_points.len(),
        ),
        Data::Histogram(histogram) => (
            Kind::Histogram,
            false,
            Some(histogram.aggregation_temporality),
            histogram.data_points.len(),
        ),
        Data::ExponentialHistogram(histogram) => (
            Kind::ExponentialHistogram,
            false,
            Some(histogram.aggregation_temporality),
            histogram.data_points.len(),
        ),
        Data::Summary(summary) => (Kind::Summary, false, None, summary.data_points.len()),
    };
    let Some(metric) = metric_id(name, unit, kind, monotonic, temporality, n_points, outcome)
    else {
        return;
    };
    let context = MetricContext {
        scope,
        metric: Arc::new(metric),
        description: description.into(),
    };
    match data {
        Data::Gauge(gauge) => context.convert_all(gauge.data_points, number_value, points, outcome),
        Data::Sum(sum) => context.convert_all(sum.data_points, number_value, points, outcome),
        Data::Histogram(histogram) => {
            let value = |point: &HistogramDataPoint| {
                histogram_value(point.into())
                    .map(Value::Histogram)
                    .map_err(|problem| (RejectReason::InvalidHistogram, problem))
            };
            context.convert_all(histogram.data_points, value, points, outcome);
        }
        Data::ExponentialHistogram(histogram) => {
            let value = |point: &ExponentialHistogramDataPoint| {
                exp_histogram_value(point.into())
                    .map(Value::ExpHistogram)
                    .map_err(|problem| (RejectReason::InvalidExponentialHistogram, problem))
            };
            context.convert_all(histogram.data_points, value, points, outcome);
        }
        Data::Summary(summary) => {
            context.convert_all(summary.data_points, summary_value, points, outcome);
        }
    }
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

/// Stores a request read in place by [`wire::parse`]: the same rules as [`to_batches`] and
/// [`Store::ingest`], applied point by point, each point's stream found with attributes
/// that still point into the request buffer.
pub fn store_view(store: &Store, request: &wire::Request<'_>, writer: Writer) -> Outcome {
    let mut ingest = store.begin(writer, Outcome::default());
    // One buffer for every point's sorted attributes: no allocation per point.
    let mut sorted: Vec<(&str, AttrRef<'_>)> = Vec::new();
    for resource in &request.resources {
        let resource_attributes =
            Attributes::from_pairs(&request.attributes[resource.attributes.clone()]);
        ingest.instance(&resource_attributes, |instance| {
            for scope in &request.scopes[resource.scopes.clone()] {
                let scope_key = Arc::new(Scope {
                    name: scope.name.to_owned(),
                    version: scope.version.to_owned(),
                    attributes: Attributes::from_pairs(
                        &request.attributes[scope.attributes.clone()],
                    ),
                });
                for metric in &request.metrics[scope.metrics.clone()] {
                    store_metric(instance, request, &scope_key, metric, &mut sorted);
                }
            }
        });
    }
    ingest.finish()
}

/// Stores the points of one metric read in place. `sorted` is scratch space for each
/// point's attributes.
fn store_metric<'a>(
    instance: &mut InstanceWriter<'_>,
    request: &wire::Request<'a>,
    scope: &Arc<Scope>,
    metric: &wire::MetricView<'a>,
    sorted: &mut Vec<(&'a str, AttrRef<'a>)>,
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
    for view in &request.points[data.points.clone()] {
        let times = (view.start, view.time, view.flags);
        let value = || view_value(request, &view.value);
        let Some(point) = point(&identity, times, value, instance.outcome()) else {
            continue;
        };
        sorted.clear();
        sorted.extend_from_slice(&request.attributes[view.attributes.clone()]);
        sort_unique(sorted);
        instance.point(&key, &sorted[..], point);
    }
}

/// The value of a point read in place.
fn view_value(request: &wire::Request<'_>, value: &ValueView) -> ValueResult {
    match value {
        ValueView::Double(value) => Ok(Value::Number(Number::Double(*value))),
        ValueView::Int(value) => Ok(Value::Number(Number::Int(*value))),
        ValueView::Missing => Err(no_value()),
        ValueView::Histogram(histogram) => histogram_value(HistogramParts {
            count: histogram.count,
            sum: histogram.sum,
            min: histogram.min,
            max: histogram.max,
            bounds: &request.bounds[histogram.bounds.clone()],
            bucket_counts: &request.counts[histogram.bucket_counts.clone()],
        })
        .map(Value::Histogram)
        .map_err(|problem| (RejectReason::InvalidHistogram, problem)),
        ValueView::Exponential(histogram) => {
            let side = |buckets: &Option<wire::BucketsView>| {
                buckets
                    .as_ref()
                    .map(|buckets| (buckets.offset, &request.counts[buckets.counts.clone()]))
            };
            exp_histogram_value(ExpParts {
                count: histogram.count,
                sum: histogram.sum,
                min: histogram.min,
                max: histogram.max,
                scale: histogram.scale,
                zero_count: histogram.zero_count,
                zero_threshold: histogram.zero_threshold,
                positive: side(&histogram.positive),
                negative: side(&histogram.negative),
            })
            .map(Value::ExpHistogram)
            .map_err(|problem| (RejectReason::InvalidExponentialHistogram, problem))
        }
        ValueView::Summary(summary) => Ok(Value::Summary(Summary {
            count: summary.count,
            sum: summary.sum,
            quantiles: request.quantiles[summary.quantiles.clone()].to_vec(),
        })),
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

/// What every point kind shares, taken out of the point so its value can be read apart.
struct PointCommon {
    attributes: Vec<KeyValue>,
    start: u64,
    time: u64,
    flags: u32,
}

/// The four OTLP data point messages, seen through what they share.
trait DataPoint {
    fn take_common(&mut self) -> PointCommon;
}

macro_rules! impl_data_point {
    ($($point:ty),*) => {$(
        impl DataPoint for $point {
            fn take_common(&mut self) -> PointCommon {
                PointCommon {
                    attributes: std::mem::take(&mut self.attributes),
                    start: self.start_time_unix_nano,
                    time: self.time_unix_nano,
                    flags: self.flags,
                }
            }
        }
    )*};
}

impl_data_point!(
    NumberDataPoint,
    HistogramDataPoint,
    ExponentialHistogramDataPoint,
    SummaryDataPoint
);

/// A point's kind-specific value, or why it cannot be stored.
type ValueResult = Result<Value, (RejectReason, String)>;

impl MetricContext<'_> {
    /// Validates and collects the points of one metric (see [`point`]).
    fn convert_all<P: DataPoint>(
        &self,
        data_points: Vec<P>,
        value: impl Fn(&P) -> ValueResult,
        points: &mut Vec<StreamPoint>,
        outcome: &mut Outcome,
    ) {
        for mut data_point in data_points {
            let common = data_point.take_common();
            let times = (common.start, common.time, common.flags);
            if let Some(point) = point(&self.metric, times, || value(&data_point), outcome) {
                self.push(common.attributes, point, points);
            }
        }
    }
}

fn number_value(point: &NumberDataPoint) -> ValueResult {
    match point.value {
        Some(number_data_point::Value::AsDouble(value)) => Ok(Value::Number(Number::Double(value))),
        Some(number_data_point::Value::AsInt(value)) => Ok(Value::Number(Number::Int(value))),
        None => Err(no_value()),
    }
}

fn summary_value(point: &SummaryDataPoint) -> ValueResult {
    Ok(Value::Summary(Summary {
        count: point.count,
        sum: point.sum,
        quantiles: point
            .quantile_values
            .iter()
            .map(|quantile| (quantile.quantile, quantile.value))
            .collect(),
    }))
}

/// NaN carries no number: an optional NaN field is treated as absent.
fn number(value: Option<f64>) -> Option<f64> {
    value.filter(|value| !value.is_nan())
}

/// The fields of an explicit-bucket histogram point, however they were read.
struct HistogramParts<'p> {
    count: u64,
    sum: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    bounds: &'p [f64],
    bucket_counts: &'p [u64],
}

impl<'p> From<&'p HistogramDataPoint> for HistogramParts<'p> {
    fn from(point: &'p HistogramDataPoint) -> Self {
        HistogramParts {
            count: point.count,
            sum: point.sum,
            min: point.min,
            max: point.max,
            bounds: &point.explicit_bounds,
            bucket_counts: &point.bucket_counts,
        }
    }
}

/// Validates an explicit-bucket histogram point per the rules in metrics.proto.
fn histogram_value(point: HistogramParts<'_>) -> Result<Histogram, String> {
    let bounds = point.bounds;
    let mut bucket_counts = point.bucket_counts.to_vec();
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
fn index_range(scale: i32) -> (i64, i64) {
    if scale >= 0 {
        (-1075i64 << scale, (1024i64 << scale) - 1)
    } else {
        (-1075i64 >> -scale, (1024i64 >> -scale) - 1)
    }
}

/// The fields of an exponential histogram point, however they were read; a side is its
/// offset and bucket counts.
struct ExpParts<'p> {
    count: u64,
    sum: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    scale: i32,
    zero_count: u64,
    zero_threshold: f64,
    positive: Option<(i32, &'p [u64])>,
    negative: Option<(i32, &'p [u64])>,
}

impl<'p> From<&'p ExponentialHistogramDataPoint> for ExpParts<'p> {
    fn from(point: &'p ExponentialHistogramDataPoint) -> Self {
        let side = |buckets: &'p Option<exponential_histogram_data_point::Buckets>| {
            buckets
                .as_ref()
                .map(|buckets| (buckets.offset, &buckets.bucket_counts[..]))
        };
        ExpParts {
            count: point.count,
            sum: point.sum,
            min: point.min,
            max: point.max,
            scale: point.scale,
            zero_count: point.zero_count,
            zero_threshold: point.zero_threshold,
            positive: side(&point.positive),
            negative: side(&point.negative),
        }
    }
}

fn exp_buckets(
    buckets: Option<(i32, &[u64])>,
    scale: i32,
    side: &str,
) -> Result<(ExpBuckets, u64), String> {
    let Some((offset, counts)) = buckets else {
        return Ok((ExpBuckets::default(), 0));
    };
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
fn exp_histogram_value(point: ExpParts<'_>) -> Result<ExpHistogram, String> {
    if !SCALES.contains(&point.scale) {
        return Err(format!(
            "exponential histogram scale {} is outside {}..={}",
            point.scale,
            SCALES.start(),
            SCALES.end()
        ));
    }
    if point.zero_threshold.is_nan() || point.zero_threshold < 0.0 {
        return Err(format!(
            "exponential histogram zero_threshold {} is not a non-negative number",
            point.zero_threshold
        ));
    }
    let (positive, n_positive) = exp_buckets(point.positive, point.scale, "positive")?;
    let (negative, n_negative) = exp_buckets(point.negative, point.scale, "negative")?;
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
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, ResourceMetrics, ScopeMetrics, Sum, exponential_histogram_data_point::Buckets,
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

    #[track_caller]
    fn convert_one(metric: Metric) -> (Vec<StreamPoint>, Outcome) {
        let (mut batches, outcome) = to_batches(request(vec![metric]));
        assert_eq!(batches.len(), 1);
        (batches.remove(0).points, outcome)
    }

    #[test]
    fn int_and_double_values_keep_their_type() {
        let (points, outcome) = convert_one(sum_metric(
            2,
            vec![
                number(1, Some(number_data_point::Value::AsInt(7)), 0),
                number(2, Some(number_data_point::Value::AsDouble(1.5)), 0),
            ],
        ));
        assert_eq!(outcome.partial_success(), None);
        let values: Vec<_> = points
            .iter()
            .map(|point| point.point.value.clone())
            .collect();
        assert_eq!(
            values,
            vec![
                Value::Number(Number::Int(7)),
                Value::Number(Number::Double(1.5))
            ]
        );
        assert_eq!(
            points[0].key.metric.temporality,
            Some(Temporality::Cumulative)
        );
        assert!(points[0].key.metric.monotonic);
    }

    #[test]
    fn time_zero_and_missing_value_are_rejected() {
        let (points, outcome) = convert_one(sum_metric(
            2,
            vec![
                number(0, Some(number_data_point::Value::AsInt(1)), 0),
                number(5, None, 0),
                number(6, None, NO_RECORDED_VALUE),
            ],
        ));
        assert_eq!(outcome.rejected(RejectReason::TimeZero), 1);
        assert_eq!(outcome.rejected(RejectReason::NoValue), 1);
        assert_eq!(points.len(), 1);
        assert_eq!(points[0].point.value, Value::NoRecordedValue);
    }

    #[test]
    fn unspecified_temporality_rejects_every_point() {
        let (points, outcome) = convert_one(sum_metric(
            0,
            vec![
                number(1, Some(number_data_point::Value::AsInt(1)), 0),
                number(2, Some(number_data_point::Value::AsInt(2)), 0),
            ],
        ));
        assert!(points.is_empty());
        assert_eq!(outcome.rejected(RejectReason::BadTemporality), 2);
    }

    #[test]
    fn metric_without_data_is_a_warning() {
        let (points, outcome) = convert_one(Metric {
            name: "empty".into(),
            ..Default::default()
        });
        assert!(points.is_empty());
        let (rejected, message) = outcome.partial_success().expect("warning");
        assert_eq!(rejected, 0);
        assert!(message.contains("\"empty\" has no data"), "{message}");
    }

    #[test]
    fn gauge_point_attributes_are_kept() {
        let mut point = number(1, Some(number_data_point::Value::AsDouble(3.0)), 0);
        point.attributes = vec![string("route", "/a")];
        let (points, _) = convert_one(Metric {
            name: "inflight".into(),
            data: Some(Data::Gauge(Gauge {
                data_points: vec![point],
            })),
            ..Default::default()
        });
        assert_eq!(
            points[0].key.attributes.get("route"),
            Some(&AttrValue::Str("/a".into()))
        );
    }

    #[track_caller]
    fn check_histogram(counts: &[u64], bounds: &[f64], count: u64, expected: Result<(), &str>) {
        let point = HistogramDataPoint {
            time_unix_nano: 1,
            count,
            bucket_counts: counts.to_vec(),
            explicit_bounds: bounds.to_vec(),
            ..Default::default()
        };
        match (histogram_value((&point).into()), expected) {
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
        let point = ExponentialHistogramDataPoint {
            time_unix_nano: 1,
            scale,
            zero_count: zero,
            count,
            positive: Some(Buckets {
                offset,
                bucket_counts: positive.to_vec(),
            }),
            ..Default::default()
        };
        match (exp_histogram_value((&point).into()), expected) {
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
