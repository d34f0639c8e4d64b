//! The one shape a request takes on its way to the store: a borrowed view of an
//! `ExportMetricsServiceRequest`, strings and attribute values pointing into the request,
//! points and attributes in flat arrays.
//!
//! Two readers produce it: `wire::parse` reads protobuf bytes in place, and
//! [`Request::of_message`] looks at a message `prost` (or the OTLP/JSON decoder) built. The
//! store walks only this view (`otlp::store_view`), so every rule about metrics and points
//! has one home whichever way a request came in.

use std::ops::Range;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    ExponentialHistogramDataPoint, HistogramDataPoint, Metric, NumberDataPoint, SummaryDataPoint,
    exponential_histogram_data_point, metric::Data, number_data_point,
};

use crate::model::{AttrRef, AttrValue, Attributes, Kind};
use crate::store::KnownBlock;

/// What an attribute value that is a profiling dictionary reference (`string_value_strindex`)
/// reads as: absent. The proto asks metrics receivers to treat it as a non-fatal oddity.
pub const PROFILING_REFERENCE: AttrRef<'static> = AttrRef::Empty;

/// A request, as slices of its buffer and indices into flat arrays.
#[derive(Debug, Default)]
pub struct Request<'a> {
    pub resources: Vec<ResourceView>,
    pub scopes: Vec<ScopeView<'a>>,
    pub metrics: Vec<MetricView<'a>>,
    pub points: Vec<PointView<'a>>,
    /// Attribute pairs in wire order (duplicates included) for every resource, scope and
    /// point.
    pub attributes: Vec<(&'a str, AttrRef<'a>)>,
    /// Histogram bucket counts and exponential histogram buckets.
    pub counts: Vec<u64>,
    /// Explicit histogram bounds.
    pub bounds: Vec<f64>,
    /// Summary `(quantile, value)` pairs.
    pub quantiles: Vec<(f64, f64)>,
}

/// One `ResourceMetrics`.
#[derive(Clone, Debug, Default)]
pub struct ResourceView {
    /// Into [`Request::attributes`]; empty when the resource is absent.
    pub attributes: Range<usize>,
    /// Into [`Request::scopes`].
    pub scopes: Range<usize>,
}

/// One `ScopeMetrics` with its `InstrumentationScope` (empty strings when absent).
#[derive(Clone, Debug, Default)]
pub struct ScopeView<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub attributes: Range<usize>,
    /// Into [`Request::metrics`].
    pub metrics: Range<usize>,
}

/// One `Metric`.
#[derive(Clone, Debug, Default)]
pub struct MetricView<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub unit: &'a str,
    /// `None` when no data member is set.
    pub data: Option<DataView>,
}

/// The data member of a metric.
#[derive(Clone, Debug)]
pub struct DataView {
    pub kind: Kind,
    /// `aggregation_temporality` as sent; 0 for gauges and summaries, which have none.
    pub temporality: i32,
    /// `is_monotonic`; false for every kind but sums.
    pub monotonic: bool,
    /// Into [`Request::points`].
    pub points: Range<usize>,
}

/// One data point of any kind.
#[derive(Clone, Debug, Default)]
pub struct PointView<'a> {
    pub attributes: Range<usize>,
    /// The bytes its attributes came in, when the store may recognise them next time.
    pub block: Block<'a>,
    pub start: u64,
    pub time: u64,
    pub flags: u32,
    pub value: ValueView,
}

/// Where a point's attributes came from, as the in-place reader saw them: the run of
/// attribute fields in its data point (the key of the first left out), which the store can
/// learn and the reader then recognise (`store::KnownBlocks`).
#[derive(Clone, Copy, Debug, Default)]
pub enum Block<'a> {
    /// Nothing to learn: no attributes, attributes in more than one run, or a reader that
    /// does not see bytes (`prost`, OTLP/JSON).
    #[default]
    None,
    /// One run, not known before: these bytes read as the point's attributes.
    New(&'a [u8]),
    /// One run byte-equal to a known block, whose pairs the point's attributes are.
    Known(&'a KnownBlock),
}

/// The kind-specific part of a point.
#[derive(Clone, Debug, Default)]
pub enum ValueView {
    /// A number point with neither `as_double` nor `as_int`.
    #[default]
    Missing,
    Double(f64),
    Int(i64),
    Histogram(HistogramView),
    Exponential(ExponentialView),
    Summary(SummaryView),
}

#[derive(Clone, Debug, Default)]
pub struct HistogramView {
    pub count: u64,
    pub sum: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Into [`Request::counts`].
    pub bucket_counts: Range<usize>,
    /// Into [`Request::bounds`].
    pub bounds: Range<usize>,
}

#[derive(Clone, Debug, Default)]
pub struct ExponentialView {
    pub count: u64,
    pub sum: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub scale: i32,
    pub zero_count: u64,
    pub zero_threshold: f64,
    pub positive: Option<BucketsView>,
    pub negative: Option<BucketsView>,
}

/// One side of an exponential histogram.
#[derive(Clone, Debug, Default)]
pub struct BucketsView {
    pub offset: i32,
    /// Into [`Request::counts`].
    pub counts: Range<usize>,
}

#[derive(Clone, Debug, Default)]
pub struct SummaryView {
    pub count: u64,
    pub sum: f64,
    /// Into [`Request::quantiles`].
    pub quantiles: Range<usize>,
}

impl<'a> Request<'a> {
    /// The view of a decoded message. `nested` must be [`nested_values`] of the same
    /// message: array and map attribute values, which have no borrowed form, converted once.
    pub fn of_message(
        message: &'a ExportMetricsServiceRequest,
        nested: &'a [AttrValue],
    ) -> Request<'a> {
        let mut builder = Builder {
            request: Request::default(),
            nested: nested.iter(),
        };
        for resource_metrics in &message.resource_metrics {
            let attributes = builder.attributes(
                resource_metrics
                    .resource
                    .as_ref()
                    .map_or(&[][..], |resource| &resource.attributes),
            );
            let first_scope = builder.request.scopes.len();
            for scope_metrics in &resource_metrics.scope_metrics {
                let scope = scope_metrics.scope.as_ref();
                let attributes =
                    builder.attributes(scope.map_or(&[][..], |scope| &scope.attributes));
                let first_metric = builder.request.metrics.len();
                for metric in &scope_metrics.metrics {
                    builder.metric(metric);
                }
                builder.request.scopes.push(ScopeView {
                    name: scope.map_or("", |scope| &scope.name),
                    version: scope.map_or("", |scope| &scope.version),
                    attributes,
                    metrics: first_metric..builder.request.metrics.len(),
                });
            }
            let scopes = first_scope..builder.request.scopes.len();
            builder
                .request
                .resources
                .push(ResourceView { attributes, scopes });
        }
        debug_assert!(
            builder.nested.next().is_none(),
            "nested_values walks the message as of_message does"
        );
        builder.request
    }
}

/// The array and map attribute values of `message`, converted, in the order
/// [`Request::of_message`] meets them: each resource's, then each of its scopes', then the
/// points' of each metric.
pub fn nested_values(message: &ExportMetricsServiceRequest) -> Vec<AttrValue> {
    let mut nested = Vec::new();
    let mut collect = |pairs: &[KeyValue]| {
        for pair in pairs {
            if let Some(
                value @ (any_value::Value::ArrayValue(_) | any_value::Value::KvlistValue(_)),
            ) = pair.value.as_ref().and_then(|value| value.value.as_ref())
            {
                nested.push(owned(Some(value)));
            }
        }
    };
    for resource_metrics in &message.resource_metrics {
        if let Some(resource) = &resource_metrics.resource {
            collect(&resource.attributes);
        }
        for scope_metrics in &resource_metrics.scope_metrics {
            if let Some(scope) = &scope_metrics.scope {
                collect(&scope.attributes);
            }
            for metric in &scope_metrics.metrics {
                for_each_point_attributes(metric, &mut collect);
            }
        }
    }
    nested
}

fn for_each_point_attributes(metric: &Metric, visit: &mut impl FnMut(&[KeyValue])) {
    match &metric.data {
        Some(Data::Gauge(gauge)) => gauge.data_points.iter().for_each(|p| visit(&p.attributes)),
        Some(Data::Sum(sum)) => sum.data_points.iter().for_each(|p| visit(&p.attributes)),
        Some(Data::Histogram(histogram)) => histogram
            .data_points
            .iter()
            .for_each(|p| visit(&p.attributes)),
        Some(Data::ExponentialHistogram(histogram)) => histogram
            .data_points
            .iter()
            .for_each(|p| visit(&p.attributes)),
        Some(Data::Summary(summary)) => summary
            .data_points
            .iter()
            .for_each(|p| visit(&p.attributes)),
        None => {}
    }
}

/// An `AnyValue` as an owned attribute value.
fn owned(value: Option<&any_value::Value>) -> AttrValue {
    match value {
        None => AttrValue::Empty,
        Some(any_value::Value::StringValue(value)) => AttrValue::Str(value.clone()),
        Some(any_value::Value::BoolValue(value)) => AttrValue::Bool(*value),
        Some(any_value::Value::IntValue(value)) => AttrValue::Int(*value),
        Some(any_value::Value::DoubleValue(value)) => AttrValue::Double(*value),
        Some(any_value::Value::BytesValue(value)) => AttrValue::Bytes(value.clone()),
        Some(any_value::Value::ArrayValue(array)) => AttrValue::Array(
            array
                .values
                .iter()
                .map(|value| owned(value.value.as_ref()))
                .collect(),
        ),
        Some(any_value::Value::KvlistValue(list)) => AttrValue::Map(Attributes::new(
            list.values
                .iter()
                .map(|pair| (pair.key.clone(), owned(any_of(pair))))
                .collect(),
        )),
        Some(any_value::Value::StringValueStrindex(_)) => PROFILING_REFERENCE.to_owned_value(),
    }
}

fn any_of(pair: &KeyValue) -> Option<&any_value::Value> {
    pair.value
        .as_ref()
        .and_then(|value: &AnyValue| value.value.as_ref())
}

/// Fills a [`Request`] from a message, in the order [`nested_values`] walks it.
struct Builder<'a> {
    request: Request<'a>,
    nested: std::slice::Iter<'a, AttrValue>,
}

impl<'a> Builder<'a> {
    fn attributes(&mut self, pairs: &'a [KeyValue]) -> Range<usize> {
        let start = self.request.attributes.len();
        for pair in pairs {
            let value = match any_of(pair) {
                None => AttrRef::Empty,
                Some(any_value::Value::StringValue(value)) => AttrRef::Str(value),
                Some(any_value::Value::BoolValue(value)) => AttrRef::Bool(*value),
                Some(any_value::Value::IntValue(value)) => AttrRef::Int(*value),
                Some(any_value::Value::DoubleValue(value)) => AttrRef::Double(*value),
                Some(any_value::Value::BytesValue(value)) => AttrRef::Bytes(value),
                Some(any_value::Value::ArrayValue(_) | any_value::Value::KvlistValue(_)) => {
                    match self.nested.next() {
                        Some(AttrValue::Array(values)) => AttrRef::Array(values),
                        Some(AttrValue::Map(map)) => AttrRef::Map(map),
                        // `nested_values` converted this very value: an array or a map.
                        _ => AttrRef::Empty,
                    }
                }
                Some(any_value::Value::StringValueStrindex(_)) => PROFILING_REFERENCE,
            };
            self.request.attributes.push((&pair.key, value));
        }
        start..self.request.attributes.len()
    }

    fn metric(&mut self, metric: &'a Metric) {
        let data = metric.data.as_ref().map(|data| {
            let start = self.request.points.len();
            let (kind, temporality, monotonic) = match data {
                Data::Gauge(gauge) => {
                    gauge
                        .data_points
                        .iter()
                        .for_each(|point| self.number(point));
                    (Kind::Gauge, 0, false)
                }
                Data::Sum(sum) => {
                    sum.data_points.iter().for_each(|point| self.number(point));
                    (Kind::Sum, sum.aggregation_temporality, sum.is_monotonic)
                }
                Data::Histogram(histogram) => {
                    histogram
                        .data_points
                        .iter()
                        .for_each(|point| self.histogram(point));
                    (Kind::Histogram, histogram.aggregation_temporality, false)
                }
                Data::ExponentialHistogram(histogram) => {
                    histogram
                        .data_points
                        .iter()
                        .for_each(|point| self.exponential(point));
                    let temporality = histogram.aggregation_temporality;
                    (Kind::ExponentialHistogram, temporality, false)
                }
                Data::Summary(summary) => {
                    summary
                        .data_points
                        .iter()
                        .for_each(|point| self.summary(point));
                    (Kind::Summary, 0, false)
                }
            };
            DataView {
                kind,
                temporality,
                monotonic,
                points: start..self.request.points.len(),
            }
        });
        self.request.metrics.push(MetricView {
            name: &metric.name,
            description: &metric.description,
            unit: &metric.unit,
            data,
        });
    }

    fn push(&mut self, attributes: &'a [KeyValue], times: (u64, u64, u32), value: ValueView) {
        let attributes = self.attributes(attributes);
        let (start, time, flags) = times;
        self.request.points.push(PointView {
            attributes,
            block: Block::None,
            start,
            time,
            flags,
            value,
        });
    }

    fn number(&mut self, point: &'a NumberDataPoint) {
        let value = match point.value {
            None => ValueView::Missing,
            Some(number_data_point::Value::AsDouble(value)) => ValueView::Double(value),
            Some(number_data_point::Value::AsInt(value)) => ValueView::Int(value),
        };
        let times = (
            point.start_time_unix_nano,
            point.time_unix_nano,
            point.flags,
        );
        self.push(&point.attributes, times, value);
    }

    fn histogram(&mut self, point: &'a HistogramDataPoint) {
        let counts = self.request.counts.len();
        self.request.counts.extend_from_slice(&point.bucket_counts);
        let bounds = self.request.bounds.len();
        self.request
            .bounds
            .extend_from_slice(&point.explicit_bounds);
        let value = ValueView::Histogram(HistogramView {
            count: point.count,
            sum: point.sum,
            min: point.min,
            max: point.max,
            bucket_counts: counts..self.request.counts.len(),
            bounds: bounds..self.request.bounds.len(),
        });
        let times = (
            point.start_time_unix_nano,
            point.time_unix_nano,
            point.flags,
        );
        self.push(&point.attributes, times, value);
    }

    fn exponential(&mut self, point: &'a ExponentialHistogramDataPoint) {
        let mut side = |buckets: &Option<exponential_histogram_data_point::Buckets>| {
            buckets.as_ref().map(|buckets| {
                let start = self.request.counts.len();
                self.request
                    .counts
                    .extend_from_slice(&buckets.bucket_counts);
                BucketsView {
                    offset: buckets.offset,
                    counts: start..self.request.counts.len(),
                }
            })
        };
        let positive = side(&point.positive);
        let negative = side(&point.negative);
        let value = ValueView::Exponential(ExponentialView {
            count: point.count,
            sum: point.sum,
            min: point.min,
            max: point.max,
            scale: point.scale,
            zero_count: point.zero_count,
            zero_threshold: point.zero_threshold,
            positive,
            negative,
        });
        let times = (
            point.start_time_unix_nano,
            point.time_unix_nano,
            point.flags,
        );
        self.push(&point.attributes, times, value);
    }

    fn summary(&mut self, point: &'a SummaryDataPoint) {
        let start = self.request.quantiles.len();
        self.request.quantiles.extend(
            point
                .quantile_values
                .iter()
                .map(|quantile| (quantile.quantile, quantile.value)),
        );
        let value = ValueView::Summary(SummaryView {
            count: point.count,
            sum: point.sum,
            quantiles: start..self.request.quantiles.len(),
        });
        let times = (
            point.start_time_unix_nano,
            point.time_unix_nano,
            point.flags,
        );
        self.push(&point.attributes, times, value);
    }
}
