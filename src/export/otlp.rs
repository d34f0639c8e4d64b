//! The aggregated series as one OTLP `ExportMetricsServiceRequest`, from this sidecar as a
//! single writer (`docs/design.md`, "Beyond one machine").
//!
//! The resource is what the series have in common (the workers' resource attributes that
//! are the same everywhere, such as `service.name`), then this sidecar's identity, then
//! `exporters.otlp.resource`; the rest of each group's attributes are the point's. Counters,
//! histograms and summaries are cumulative sums with a start time per aggregated stream
//! ([`Continuity`]); gauges are gauges, up-down counters non-monotonic cumulative sums; a
//! counter aggregated with something other than `sum` (a rule) is a gauge of that value.

use std::collections::HashMap;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram,
    HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary,
    SummaryDataPoint, exponential_histogram_data_point, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::aggregate::{Agg, Aggregated, Group};
use crate::model::{AttrValue, Attributes, ExpBuckets, Shape, Total};

use crate::query::prometheus::{Families, Family};

/// One start time per aggregated stream, kept while its total does not go down; a stream
/// not seen in an export is forgotten, so this holds no more than one export's streams.
/// Streams are found by metric name, then attributes, so a stream seen before is found
/// without copying its key.
#[derive(Default)]
pub struct Continuity {
    streams: HashMap<String, HashMap<Attributes, Run, foldhash::fast::RandomState>>,
    /// Bumped at each export; a stream whose `seen` is older was not in the last one.
    export: u64,
}

struct Run {
    start: u64,
    last: f64,
    seen: u64,
}

impl Continuity {
    /// The start time for `value` of `metric`'s stream `attributes` exported at `now`: the
    /// stream's own while `value` is not below the last one exported, else `now` (a reset:
    /// upstream sees a new run, as it would from a restarted worker).
    fn start(&mut self, metric: &str, attributes: &Attributes, value: f64, now: u64) -> u64 {
        let export = self.export;
        let streams = match self.streams.get_mut(metric) {
            Some(streams) => streams,
            None => self.streams.entry(metric.to_string()).or_default(),
        };
        let run = match streams.get_mut(attributes) {
            Some(run) => run,
            None => streams.entry(attributes.clone()).or_insert(Run {
                start: now,
                last: value,
                seen: export,
            }),
        };
        if value < run.last {
            run.start = now;
        }
        run.last = value;
        run.seen = export;
        run.start
    }

    /// Starts an export.
    fn begin(&mut self) {
        self.export += 1;
    }

    /// Forgets the streams the export just made did not have.
    fn end(&mut self) {
        let export = self.export;
        for streams in self.streams.values_mut() {
            streams.retain(|_, run| run.seen == export);
        }
        self.streams.retain(|_, streams| !streams.is_empty());
    }

    /// Streams remembered.
    pub fn len(&self) -> usize {
        self.streams.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }
}

/// The request for `families` at `now` (Unix nanoseconds); `identity` names this sidecar
/// and overrides what the series have in common.
pub fn request(
    families: &Families,
    identity: &[(String, AttrValue)],
    continuity: &mut Continuity,
    now: u64,
) -> (ExportMetricsServiceRequest, u64) {
    let common = common_attributes(families);
    let mut resource: Vec<(String, AttrValue)> = common.clone();
    for (key, value) in identity {
        resource.retain(|(existing, _)| existing != key);
        resource.push((key.clone(), value.clone()));
    }
    resource.sort_by(|a, b| a.0.cmp(&b.0));
    continuity.begin();
    let mut points = 0u64;
    let metrics: Vec<Metric> = families
        .iter()
        .filter_map(|family| {
            let data = data(family, &common, continuity, now)?;
            points += point_count(&data);
            Some(Metric {
                name: family.metric.name.clone(),
                description: family.description.clone(),
                unit: family.metric.unit.clone(),
                data: Some(data),
                ..Default::default()
            })
        })
        .collect();
    continuity.end();
    let request = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: key_values(resource.iter().map(|(k, v)| (k.as_str(), v))),
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "fanin".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    (request, points)
}

/// Resource attributes every instance shares that every group of every family has with the
/// same value (a point attribute of that name would win over the resource's in a group).
fn common_attributes(families: &Families) -> Vec<(String, AttrValue)> {
    let mut common: Vec<(String, AttrValue)> = families
        .shared_resource()
        .iter()
        .map(|(key, value)| (key.to_string(), value.clone()))
        .collect();
    for group in families.iter().flat_map(|family| family.groups().iter()) {
        common.retain(|(key, value)| group.attributes.get(key) == Some(value));
        if common.is_empty() {
            break;
        }
    }
    common
}

fn point_count(data: &metric::Data) -> u64 {
    let count = match data {
        metric::Data::Gauge(gauge) => gauge.data_points.len(),
        metric::Data::Sum(sum) => sum.data_points.len(),
        metric::Data::Histogram(histogram) => histogram.data_points.len(),
        metric::Data::ExponentialHistogram(histogram) => histogram.data_points.len(),
        metric::Data::Summary(summary) => summary.data_points.len(),
    };
    count as u64
}

fn data(
    family: &Family,
    common: &[(String, AttrValue)],
    continuity: &mut Continuity,
    now: u64,
) -> Option<metric::Data> {
    let shape = Shape::of(&family.metric);
    let cumulative = AggregationTemporality::Cumulative as i32;
    let name = &family.metric.name;
    let mut start =
        |group: &Group, value: f64| continuity.start(name, &group.attributes, value, now);
    let attributes = |group: &Group| {
        key_values(
            group
                .attributes
                .iter()
                .filter(|(key, _)| common.iter().all(|(common_key, _)| common_key != key)),
        )
    };
    let number = |group: &Group, start_time: u64, value: Total| NumberDataPoint {
        attributes: attributes(group),
        start_time_unix_nano: start_time,
        time_unix_nano: now,
        value: Some(match value {
            Total::Int(value) => match i64::try_from(value) {
                Ok(value) => number_data_point::Value::AsInt(value),
                Err(_) => number_data_point::Value::AsDouble(value as f64),
            },
            Total::Double(value) => number_data_point::Value::AsDouble(value),
        }),
        ..Default::default()
    };
    let numbers = |start: &mut dyn FnMut(&Group, f64) -> u64, with_start: bool| {
        family
            .groups()
            .iter()
            .filter_map(|group| match &group.value {
                Aggregated::Number(value) => {
                    let start_time = if with_start {
                        start(group, value.as_f64())
                    } else {
                        0
                    };
                    Some(number(group, start_time, *value))
                }
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    Some(match shape {
        Shape::Counter if family.agg == Agg::Sum => metric::Data::Sum(Sum {
            data_points: numbers(&mut start, true),
            aggregation_temporality: cumulative,
            is_monotonic: true,
        }),
        Shape::Current
            if family.metric.kind == crate::model::Kind::Sum && family.agg == Agg::Sum =>
        {
            // An up-down counter's total may go down: one start time for as long as it is
            // exported.
            let mut fixed = |group: &Group, _: f64| start(group, f64::NEG_INFINITY);
            metric::Data::Sum(Sum {
                data_points: numbers(&mut fixed, true),
                aggregation_temporality: cumulative,
                is_monotonic: false,
            })
        }
        Shape::Counter | Shape::Current => metric::Data::Gauge(Gauge {
            data_points: numbers(&mut start, false),
        }),
        Shape::Histogram => metric::Data::Histogram(Histogram {
            data_points: family
                .groups()
                .iter()
                .filter_map(|group| {
                    let Aggregated::Histogram {
                        histogram,
                        bounds_differ,
                    } = &group.value
                    else {
                        return None;
                    };
                    let (bounds, counts) = if *bounds_differ {
                        // Bounds that disagree cannot be merged: count and sum only.
                        (Vec::new(), vec![histogram.count])
                    } else {
                        (histogram.bounds.clone(), histogram.bucket_counts.clone())
                    };
                    Some(HistogramDataPoint {
                        attributes: attributes(group),
                        start_time_unix_nano: start(group, histogram.count as f64),
                        time_unix_nano: now,
                        count: histogram.count,
                        sum: histogram.sum,
                        bucket_counts: counts,
                        explicit_bounds: bounds,
                        min: histogram.min,
                        max: histogram.max,
                        ..Default::default()
                    })
                })
                .collect(),
            aggregation_temporality: cumulative,
        }),
        Shape::ExpHistogram => metric::Data::ExponentialHistogram(ExponentialHistogram {
            data_points: family
                .groups()
                .iter()
                .filter_map(|group| {
                    let Aggregated::ExpHistogram(histogram) = &group.value else {
                        return None;
                    };
                    let side = |buckets: &ExpBuckets| exponential_histogram_data_point::Buckets {
                        offset: buckets.offset,
                        bucket_counts: buckets.counts.clone(),
                    };
                    Some(ExponentialHistogramDataPoint {
                        attributes: attributes(group),
                        start_time_unix_nano: start(group, histogram.count as f64),
                        time_unix_nano: now,
                        count: histogram.count,
                        sum: histogram.sum,
                        scale: histogram.scale,
                        zero_count: histogram.zero_count,
                        zero_threshold: histogram.zero_threshold,
                        positive: Some(side(&histogram.positive)),
                        negative: Some(side(&histogram.negative)),
                        min: histogram.min,
                        max: histogram.max,
                        ..Default::default()
                    })
                })
                .collect(),
            aggregation_temporality: cumulative,
        }),
        Shape::Summary => metric::Data::Summary(Summary {
            data_points: family
                .groups()
                .iter()
                .filter_map(|group| {
                    let Aggregated::Summary { count, sum } = &group.value else {
                        return None;
                    };
                    Some(SummaryDataPoint {
                        attributes: attributes(group),
                        start_time_unix_nano: start(group, *count as f64),
                        time_unix_nano: now,
                        count: *count,
                        sum: *sum,
                        ..Default::default()
                    })
                })
                .collect(),
        }),
    })
}

fn key_values<'a>(pairs: impl Iterator<Item = (&'a str, &'a AttrValue)>) -> Vec<KeyValue> {
    pairs
        .map(|(key, value)| KeyValue {
            key: key.to_string(),
            value: Some(any_value(value)),
            ..Default::default()
        })
        .collect()
}

fn any_value(value: &AttrValue) -> AnyValue {
    use any_value::Value;
    let value = match value {
        AttrValue::Empty => None,
        AttrValue::Str(text) => Some(Value::StringValue(text.clone())),
        AttrValue::Bool(flag) => Some(Value::BoolValue(*flag)),
        AttrValue::Int(number) => Some(Value::IntValue(*number)),
        AttrValue::Double(number) => Some(Value::DoubleValue(*number)),
        AttrValue::Bytes(bytes) => Some(Value::BytesValue(bytes.clone())),
        AttrValue::Array(values) => Some(Value::ArrayValue(ArrayValue {
            values: values.iter().map(any_value).collect(),
        })),
        AttrValue::Map(map) => Some(Value::KvlistValue(KeyValueList {
            values: key_values(map.iter()),
        })),
    };
    AnyValue { value }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attributes(route: &str) -> Attributes {
        Attributes::new(vec![("route".into(), AttrValue::Str(route.into()))])
    }

    #[test]
    fn a_start_time_holds_while_the_total_does_not_go_down() {
        let mut continuity = Continuity::default();
        let export = |continuity: &mut Continuity, values: &[(&str, f64)], now: u64| {
            continuity.begin();
            let starts: Vec<u64> = values
                .iter()
                .map(|(route, value)| continuity.start("m", &attributes(route), *value, now))
                .collect();
            continuity.end();
            starts
        };
        assert_eq!(
            export(&mut continuity, &[("/a", 5.0), ("/b", 1.0)], 100),
            [100, 100]
        );
        assert_eq!(
            export(&mut continuity, &[("/a", 5.0), ("/b", 9.0)], 200),
            [100, 100]
        );
        // /a goes down: a new run starts now; /b keeps its start.
        assert_eq!(
            export(&mut continuity, &[("/a", 4.0), ("/b", 9.0)], 300),
            [300, 100]
        );
        // /b is gone from one export: forgotten, and new when it comes back.
        assert_eq!(export(&mut continuity, &[("/a", 4.0)], 400), [300]);
        assert_eq!(continuity.len(), 1);
        assert_eq!(
            export(&mut continuity, &[("/a", 6.0), ("/b", 9.0)], 500),
            [300, 500]
        );
    }
}
