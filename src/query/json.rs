//! The JSON shapes of the query API: attributes, streams, instances, counters.
//!
//! Attribute values keep their OTLP type where JSON can show it: strings stay strings, ints
//! and doubles are numbers, bytes are base64, an empty value is `null`. Doubles JSON cannot
//! hold (NaN, ±Infinity) are written as the strings `"NaN"`, `"Infinity"`, `"-Infinity"`, as
//! proto3 JSON does.
//!
//! Attributes and exponential histograms are encoded through the query API's messages
//! (`message.rs`), so every endpoint writes them the same way.

use serde_json::{Value as Json, json};

use super::message;
use crate::model::{AttrValue, Attributes, Histogram, Number, Scope, Summary};
use crate::store::{
    CollisionView, InheritedState, InstanceView, RunState, StatsSnapshot, StreamValue, StreamView,
    TypeConflict,
};

/// A double as JSON; non-finite values as proto3 JSON strings.
pub fn number(value: f64) -> Json {
    if value.is_nan() {
        json!("NaN")
    } else if value == f64::INFINITY {
        json!("Infinity")
    } else if value == f64::NEG_INFINITY {
        json!("-Infinity")
    } else {
        json!(value)
    }
}

/// A point's or stream's number: integers exactly, doubles as [`number`] writes them.
pub fn exact(value: Number) -> Json {
    match value {
        Number::Int(value) => json!(value),
        Number::Double(value) => number(value),
    }
}

fn optional_number(value: Option<f64>) -> Json {
    value.map_or(Json::Null, number)
}

/// An attribute value as text, the way `match=key=value` compares it and Prometheus labels
/// carry it: strings as they are, everything else as its JSON form (NaN and infinities as
/// `NaN`, `Infinity`, `-Infinity`).
pub fn attr_text(value: &AttrValue) -> String {
    match value {
        AttrValue::Str(text) => text.clone(),
        AttrValue::Double(double) if !double.is_finite() => match number(*double) {
            Json::String(text) => text,
            other => other.to_string(),
        },
        other => serde_json::to_string(&message::attribute_value(other)).unwrap_or_default(),
    }
}

/// Attributes as a JSON object, encoded exactly as the query API's messages encode them.
pub fn attributes(attributes: &Attributes) -> Json {
    to_json(&message::attributes(attributes))
}

/// The JSON form of a `fanin.v1` message. Those messages hold strings, numbers and maps
/// with string keys only, which always serialize.
fn to_json<T: serde::Serialize>(message: &T) -> Json {
    serde_json::to_value(message).unwrap_or(Json::Null)
}

pub use crate::model::unix_nanos;

fn scope(scope: &Scope) -> Json {
    json!({
        "name": scope.name,
        "version": scope.version,
        "attributes": attributes(&scope.attributes),
    })
}

fn histogram(histogram: &Histogram) -> Json {
    json!({
        "count": histogram.count,
        "sum": optional_number(histogram.sum),
        "min": optional_number(histogram.min),
        "max": optional_number(histogram.max),
        "explicit_bounds": histogram.bounds.iter().copied().map(number).collect::<Vec<_>>(),
        "bucket_counts": histogram.bucket_counts,
    })
}

fn summary(summary: &Summary) -> Json {
    json!({
        "count": summary.count,
        "sum": number(summary.sum),
        "quantiles": summary
            .quantiles
            .iter()
            .map(|(quantile, value)| json!({ "quantile": number(*quantile), "value": number(*value) }))
            .collect::<Vec<_>>(),
    })
}

/// One raw stream: where it comes from, what identifies it, and its current value.
pub fn stream(view: &StreamView) -> Json {
    let metric = &view.key.metric;
    let mut object = json!({
        "instance": attributes(&view.instance),
        "scope": scope(&view.key.scope),
        "kind": metric.kind.as_str(),
        "unit": metric.unit,
        "monotonic": metric.monotonic,
        "temporality": metric.temporality.map(|temporality| temporality.as_str()),
        "description": &*view.description,
        "attributes": attributes(&view.key.attributes),
        "start_time_unix_nano": view.state.start,
        "time_unix_nano": view.state.last_time,
        "resets": view.state.resets,
        "stale": view.state.stale,
        "runs": view.state.runs.len().max(1),
        "unreliable": view.state.unreliable.map(|evidence| json!({
            "evidence": evidence.as_str(),
            "description": evidence.describe(),
            "fix": crate::store::FIX,
        })),
    });
    if view.state.runs.len() > 1
        && let Some(map) = object.as_object_mut()
    {
        let parts = view.state.runs.iter().map(run).collect::<Vec<_>>();
        map.insert("parts".to_string(), Json::Array(parts));
    }
    let key = match &view.state.value {
        None | Some(StreamValue::Number(_)) => "value",
        Some(StreamValue::Histogram(_)) => "histogram",
        Some(StreamValue::ExpHistogram(_)) => "exponential_histogram",
        Some(StreamValue::Summary(_)) => "summary",
    };
    let value = view.state.value.as_ref().map_or(Json::Null, stream_value);
    if let Some(map) = object.as_object_mut() {
        map.insert(key.to_string(), value);
    }
    object
}

/// One writer's run (or delta chain) of a stream written by several.
fn run(run: &RunState) -> Json {
    json!({
        "start_time_unix_nano": run.start,
        "time_unix_nano": run.last_time,
        "pid": run.pid,
        "live": run.live,
        "refused": run.refused,
        "value": run.value.as_ref().map_or(Json::Null, stream_value),
    })
}

/// A stream's or run's value, in the member [`stream`] names for its shape.
fn stream_value(value: &StreamValue) -> Json {
    match value {
        StreamValue::Number(value) => exact(*value),
        StreamValue::Histogram(value) => histogram(value),
        StreamValue::ExpHistogram(value) => to_json(&message::exp_histogram(value)),
        StreamValue::Summary(value) => summary(value),
    }
}

pub fn instance(view: &InstanceView) -> Json {
    let pid = match view.attributes.get("process.pid") {
        Some(AttrValue::Int(pid)) => json!(pid),
        _ => Json::Null,
    };
    json!({
        "attributes": attributes(&view.attributes),
        "pid": pid,
        "first_seen_unix_nano": unix_nanos(view.first_seen),
        "last_seen_unix_nano": unix_nanos(view.last_seen),
        "writer": {
            "transport": view.last_writer.transport.as_str(),
            "peer": view.last_writer.peer.map(|peer| peer.to_string()),
            "pid": view.last_writer.pid,
        },
        "exports": view.exports,
        "streams": view.streams,
        "live": view.retired.is_none(),
        "retired": view.retired.map(|retirement| json!({
            "reason": retirement.reason.as_str(),
            "at_unix_nano": unix_nanos(retirement.at),
        })),
        "evicted": view.evicted,
    })
}

/// `/api/v1/collisions`: colliding streams and inherited-state findings, with the fix.
pub fn collisions(collisions: &[CollisionView], inherited: &[InheritedState]) -> Json {
    json!({
        "fix": crate::store::FIX,
        "collisions": collisions
            .iter()
            .map(|collision| json!({
                "metric": collision.key.metric.name,
                "kind": collision.key.metric.kind.as_str(),
                "instance": attributes(&collision.instance),
                "attributes": attributes(&collision.key.attributes),
                "evidence": collision.evidence.iter().map(|evidence| json!({
                    "kind": evidence.as_str(),
                    "description": evidence.describe(),
                    "repairable": evidence.repairable(),
                })).collect::<Vec<_>>(),
                "repaired": collision.repaired,
                "effect": if collision.repaired {
                    "repaired: fanin keeps each writer's run (start time, pid or delta chain) apart, so the total is exact"
                } else {
                    "unreliable: the writers share a start time (or carry none) and cannot be told apart, so the total is wrong; answers that include this stream say so in their notes"
                },
                "writers": collision.writers,
                "first_seen_unix_nano": unix_nanos(collision.first_seen),
                "last_seen_unix_nano": unix_nanos(collision.last_seen),
                "count": collision.count,
            }))
            .collect::<Vec<_>>(),
        "inherited_state": inherited
            .iter()
            .map(|finding| json!({
                "metric": finding.metric.name,
                "resource": attributes(&finding.resource),
                "attributes": attributes(&finding.attributes),
                "start_time_unix_nano": finding.start,
                "instances": finding.instances.iter().map(|instance| attributes(instance)).collect::<Vec<_>>(),
                "explanation": "these instances report the same start time: counts recorded before fork live on in each of them, and their sum over-counts; record after fork",
            }))
            .collect::<Vec<_>>(),
    })
}

fn counts(pairs: &[(&'static str, u64)]) -> Json {
    Json::Object(
        pairs
            .iter()
            .map(|(key, count)| (key.to_string(), json!(count)))
            .collect(),
    )
}

/// How much the store holds, for `/api/v1/stats`.
pub struct Held {
    pub streams: usize,
    pub retired_totals: usize,
    pub instances: usize,
}

pub fn stats(stats: &StatsSnapshot, held: Held, conflicts: &[TypeConflict]) -> Json {
    json!({
        "requests": counts(&stats.requests),
        "request_errors": counts(&stats.request_errors),
        "unauthenticated": counts(&stats.unauthenticated),
        "tls_handshake_failures": counts(&stats.tls_handshake_failures),
        "exporters": stats
            .exporters
            .iter()
            .map(|(name, figures)| (name.to_string(), json!(figures)))
            .collect::<serde_json::Map<_, _>>(),
        "storage": stats.storage,
        "points": {
            "received": stats.points_received,
            "accepted": stats.points_accepted,
            "rejected": counts(&stats.points_rejected),
            "dropped": counts(&stats.points_dropped),
        },
        "streams": held.streams,
        "retired_totals": held.retired_totals,
        "instances": held.instances,
        "instances_retired": stats.instances_retired,
        "collisions": stats.collisions,
        "type_conflicts": conflicts
            .iter()
            .map(|conflict| json!({
                "metric": conflict.metric,
                "first": conflict.first,
                "conflicting": conflict.conflicting,
                "first_seen_unix_nano": unix_nanos(conflict.first_seen),
                "streams": conflict.streams,
            }))
            .collect::<Vec<_>>(),
    })
}
