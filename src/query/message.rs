//! Answers as `fanin.v1` messages. The one conversion both transports use: the gRPC
//! `QueryService` returns these messages, and the HTTP API serializes the same messages to
//! JSON, so the two cannot drift apart.

use crate::aggregate::Aggregated;
use crate::model::{AttrValue, Attributes, ExpBuckets, ExpHistogram, Histogram, Number};
use crate::proto::v1 as pb;
use crate::store::MetricSummary;

use super::answer::Answer;

/// `/api/v1/query` and `QueryService/Query`.
pub fn query_response(answer: &Answer) -> pb::QueryResponse {
    let metric = &answer.metric;
    pb::QueryResponse {
        metric: metric.name.clone(),
        kind: metric.kind.as_str().to_string(),
        unit: metric.unit.clone(),
        monotonic: metric.monotonic,
        agg: answer.agg.as_str().to_string(),
        series: answer
            .groups
            .iter()
            .map(|group| pb::Series {
                attributes: attributes(&group.attributes),
                result: Some(result(&group.value)),
                instances: group.instances,
            })
            .collect(),
        notes: answer.notes.clone(),
    }
}

/// One entry of `/api/v1/metrics` and `QueryService/Metrics`.
pub fn metric_info(summary: &MetricSummary, default_agg: &str) -> pb::MetricInfo {
    let metric = &summary.metric;
    pb::MetricInfo {
        metric: metric.name.clone(),
        kind: metric.kind.as_str().to_string(),
        unit: metric.unit.clone(),
        monotonic: metric.monotonic,
        description: summary.description.to_string(),
        default_agg: default_agg.to_string(),
        live_instances: summary.live_instances,
        retired_instances: summary.retired_instances,
    }
}

fn result(value: &Aggregated) -> pb::series::Result {
    match value {
        Aggregated::Number(total) => match total.to_number() {
            Some(Number::Int(value)) => pb::series::Result::IntValue(value),
            Some(Number::Double(value)) => pb::series::Result::Value(value),
            // An integer total outside the int64 range: the answer's notes say so.
            None => pb::series::Result::Value(total.as_f64()),
        },
        Aggregated::Histogram {
            histogram,
            bounds_differ,
        } => pb::series::Result::Histogram(cumulative_histogram(histogram, *bounds_differ)),
        Aggregated::ExpHistogram(histogram) => {
            pb::series::Result::ExponentialHistogram(exp_histogram(histogram))
        }
        Aggregated::Summary { count, sum } => pb::series::Result::Summary(pb::SummaryTotal {
            count: *count,
            sum: *sum,
        }),
    }
}

/// Buckets with cumulative counts by upper bound, the last one +Inf, as Prometheus reads
/// them; none when instances disagree on the bounds.
fn cumulative_histogram(histogram: &Histogram, bounds_differ: bool) -> pb::Histogram {
    let buckets = if bounds_differ {
        Vec::new()
    } else {
        let mut running = 0u64;
        histogram
            .bucket_counts
            .iter()
            .enumerate()
            .map(|(index, count)| {
                running = running.saturating_add(*count);
                pb::Bucket {
                    le: histogram
                        .bounds
                        .get(index)
                        .copied()
                        .unwrap_or(f64::INFINITY),
                    count: running,
                }
            })
            .collect()
    };
    pb::Histogram {
        count: histogram.count,
        sum: histogram.sum,
        min: histogram.min,
        max: histogram.max,
        buckets,
    }
}

fn exp_buckets(buckets: &ExpBuckets) -> pb::ExponentialBuckets {
    pb::ExponentialBuckets {
        offset: buckets.offset,
        bucket_counts: buckets.counts.clone(),
    }
}

pub(super) fn exp_histogram(histogram: &ExpHistogram) -> pb::ExponentialHistogram {
    pb::ExponentialHistogram {
        count: histogram.count,
        sum: histogram.sum,
        min: histogram.min,
        max: histogram.max,
        scale: histogram.scale,
        zero_count: histogram.zero_count,
        zero_threshold: histogram.zero_threshold,
        positive: Some(exp_buckets(&histogram.positive)),
        negative: Some(exp_buckets(&histogram.negative)),
    }
}

pub(super) fn attributes(
    attributes: &Attributes,
) -> std::collections::BTreeMap<String, pb::AttributeValue> {
    attributes
        .iter()
        .map(|(key, value)| (key.to_string(), attribute_value(value)))
        .collect()
}

pub(super) fn attribute_value(value: &AttrValue) -> pb::AttributeValue {
    use pb::attribute_value::Value;
    let value = match value {
        AttrValue::Empty => None,
        AttrValue::Str(text) => Some(Value::StringValue(text.clone())),
        AttrValue::Bool(flag) => Some(Value::BoolValue(*flag)),
        AttrValue::Int(number) => Some(Value::IntValue(*number)),
        AttrValue::Double(number) => Some(Value::DoubleValue(*number)),
        AttrValue::Bytes(bytes) => Some(Value::BytesValue(bytes.clone())),
        AttrValue::Array(values) => Some(Value::ArrayValue(pb::ArrayValue {
            values: values.iter().map(attribute_value).collect(),
        })),
        AttrValue::Map(map) => Some(Value::MapValue(pb::KeyValueMap {
            values: attributes(map),
        })),
    };
    pb::AttributeValue { value }
}
