//! What one client may make fanin keep (`limits`): each limit refuses the points it applies
//! to with its own `partial_success` reason, counted per reason, and changes nothing stored;
//! a flood from one instance cannot keep a new instance out; exports that store nothing
//! leave nothing behind.

// Tests may panic on what they expect: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::num::NonZeroUsize;

use common::{TestFanin, export, start_with, string_attr};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use serde_json::{Value, json};

fn limit(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).expect("non-zero")
}

/// Sends `request`; returns `(rejected points, message)` of its partial success.
async fn send(fanin: &TestFanin, request: ExportMetricsServiceRequest) -> (i64, String) {
    let response = fanin.export_grpc(request).await.expect("export");
    response
        .partial_success
        .map(|partial| (partial.rejected_data_points, partial.error_message))
        .unwrap_or_default()
}

async fn rejected(fanin: &TestFanin, reason: &str) -> Value {
    fanin.stats().await["points"]["rejected"][reason].clone()
}

async fn instance_ids(fanin: &TestFanin) -> Vec<String> {
    let (_, body) = fanin.get("/api/v1/instances").await;
    let mut ids: Vec<String> = body["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|instance| instance["evicted"] == json!(false))
        .filter_map(|instance| instance["attributes"]["service.instance.id"].as_str())
        .map(str::to_string)
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn attributes_past_the_limits_refuse_their_points_only() {
    let fanin = start_with(|config| {
        config.limits.max_attributes = limit(2);
        config.limits.max_attribute_key_bytes = limit(20);
        config.limits.max_attribute_value_bytes = limit(32);
    })
    .await;
    let long = "x".repeat(33);
    let many = [("a", "1"), ("b", "2"), ("c", "3")];
    let request = export("w1")
        .counter_with("ok", &[("route", "/a")], 1, 10, 1)
        .counter_with("too.many", &many, 1, 10, 1)
        .counter_with("too.long", &[("route", &long)], 1, 10, 1)
        .counter_with(
            "key.too.long",
            &[("a.key.of.twenty.five.byte", "v")],
            1,
            10,
            1,
        );
    let (count, message) = send(&fanin, request.build()).await;
    assert_eq!(count, 3, "{message}");
    assert!(message.contains("3 attribute_limit"), "{message}");
    assert!(
        message.contains("limits.max_attribute_key_bytes (20)"),
        "{message}"
    );
    assert!(message.contains("limits.max_attributes (2)"), "{message}");
    assert!(
        message.contains("limits.max_attribute_value_bytes (32)"),
        "{message}"
    );
    assert_eq!(fanin.values("ok").await, vec![json!(1)]);
    assert_eq!(rejected(&fanin, "attribute_limit").await, json!(3));

    // A resource past a limit refuses every point it carries, and leaves no instance.
    let big = export("w2")
        .resource_attr(string_attr("blob", &long))
        .counter("ok", 1, 10, 1)
        .counter("other", 1, 10, 1);
    let (count, message) = send(&fanin, big.build()).await;
    assert_eq!(count, 2);
    assert!(message.contains("a resource has"), "{message}");
    // So does a scope.
    let mut scoped = export("w3").counter("ok", 1, 10, 1).build();
    scoped.resource_metrics[0].scope_metrics[0].scope = Some(InstrumentationScope {
        name: "lib".into(),
        attributes: many
            .iter()
            .map(|(key, value)| string_attr(key, value))
            .collect(),
        ..Default::default()
    });
    let (count, message) = send(&fanin, scoped).await;
    assert_eq!(count, 1);
    assert!(
        message.contains("scope \"lib\" has 3 attributes"),
        "{message}"
    );
    assert_eq!(instance_ids(&fanin).await, ["w1"]);
    assert_eq!(rejected(&fanin, "attribute_limit").await, json!(6));
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn histograms_past_the_bucket_limits_are_refused() {
    let fanin = start_with(|config| {
        config.limits.max_histogram_bounds = limit(3);
        config.limits.max_exponential_buckets = limit(4);
    })
    .await;
    let request = export("w1")
        .histogram("fits", 1, 10, &[1.0, 2.0, 3.0], &[1, 1, 1, 1])
        .histogram("wide", 1, 10, &[1.0, 2.0, 3.0, 4.0], &[1, 1, 1, 1, 1])
        .exp_histogram("exp.fits", 1, 10, 0, &[1, 1, 1, 1])
        .exp_histogram("exp.wide", 1, 10, 0, &[1, 1, 1, 1, 1]);
    let (count, message) = send(&fanin, request.build()).await;
    assert_eq!(count, 2, "{message}");
    assert!(
        message.contains("4 explicit bounds, more than limits.max_histogram_bounds (3)"),
        "{message}"
    );
    assert!(
        message.contains("5 buckets on one side, more than limits.max_exponential_buckets (4)"),
        "{message}"
    );
    assert_eq!(rejected(&fanin, "histogram_limit").await, json!(2));
    assert_eq!(fanin.series("fits").await.len(), 1);
    assert_eq!(fanin.series("exp.fits").await.len(), 1);
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_from_one_instance_cannot_keep_a_new_one_out() {
    let fanin = start_with(|config| {
        config.limits.max_series = limit(10);
        config.limits.max_series_per_instance = limit(4);
    })
    .await;
    let mut flood = export("flood");
    for n in 0..8 {
        flood = flood.counter(&format!("m{n}"), 1, 10, 1);
    }
    let (count, message) = send(&fanin, flood.build()).await;
    assert_eq!(count, 4, "{message}");
    assert!(
        message.contains("limits.max_series_per_instance"),
        "{message}"
    );
    // The flooding instance's existing streams keep updating.
    assert_eq!(
        send(&fanin, export("flood").counter("m0", 1, 20, 5).build())
            .await
            .0,
        0
    );
    assert_eq!(fanin.values("m0").await, vec![json!(5)]);
    // A new worker still gets its streams.
    assert_eq!(
        send(&fanin, export("new").counter("m0", 1, 10, 2).build())
            .await
            .0,
        0
    );
    assert_eq!(fanin.total("metric=m0").await, json!(7));
    assert_eq!(rejected(&fanin, "instance_series_limit").await, json!(4));
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_are_bounded_and_made_only_for_stored_points() {
    let fanin = start_with(|config| config.limits.max_instances = limit(2)).await;
    // No points, or only invalid ones: no instance.
    send(&fanin, export("empty").build()).await;
    let (count, _) = send(&fanin, export("invalid").counter("x", 1, 0, 1).build()).await;
    assert_eq!(count, 1, "time 0 is refused");
    assert_eq!(instance_ids(&fanin).await, Vec::<String>::new());

    for worker in ["w1", "w2"] {
        assert_eq!(
            send(&fanin, export(worker).counter("x", 1, 10, 1).build())
                .await
                .0,
            0
        );
    }
    let (count, message) = send(
        &fanin,
        export("w3")
            .counter("x", 1, 10, 1)
            .counter("y", 1, 10, 1)
            .build(),
    )
    .await;
    assert_eq!(count, 2, "{message}");
    assert!(message.contains("limits.max_instances"), "{message}");
    assert_eq!(rejected(&fanin, "instance_limit").await, json!(2));
    // Known instances keep exporting.
    assert_eq!(
        send(&fanin, export("w1").counter("x", 1, 20, 4).build())
            .await
            .0,
        0
    );

    // Once w2 is evicted (retired for a TTL, then another), w3 finds room.
    send(&fanin, export("w1").counter("x", 1, 30, 4).build()).await;
    fanin.advance(fanin.ttl);
    send(&fanin, export("w1").counter("x", 1, 40, 4).build()).await;
    fanin.advance(fanin.ttl);
    assert_eq!(
        send(&fanin, export("w3").counter("x", 1, 10, 1).build())
            .await
            .0,
        0
    );
    assert_eq!(instance_ids(&fanin).await, ["w1", "w3"]);
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn type_conflicts_per_metric_are_bounded() {
    let fanin = start_with(|config| config.limits.max_type_conflicts = limit(1)).await;
    let request = export("w1")
        .counter("name", 1, 10, 1)
        .gauge("name", 10, 1.0)
        .histogram("name", 1, 10, &[], &[1]);
    let (count, message) = send(&fanin, request.build()).await;
    assert_eq!(count, 1, "{message}");
    assert!(message.contains("limits.max_type_conflicts"), "{message}");
    let conflicts = fanin.stats().await["type_conflicts"].clone();
    assert_eq!(conflicts.as_array().map(Vec::len), Some(1), "{conflicts}");
    assert_eq!(rejected(&fanin, "type_conflict_limit").await, json!(1));
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retired_totals_count_against_the_series_limit_and_unused_names_are_forgotten() {
    let fanin = start_with(|config| config.limits.max_series = limit(2)).await;
    send(
        &fanin,
        export("w1")
            .counter("requests", 1, 10, 5)
            .gauge("temperature", 10, 20.0)
            .build(),
    )
    .await;
    fanin.advance(fanin.ttl);
    let report = fanin.advance(fanin.ttl);
    assert_eq!(report.evicted, 1);
    // The counter's total survives as a retired total, in one of the two slots; the gauge
    // has nothing left, and its name is forgotten.
    assert_eq!(fanin.total("metric=requests").await, json!(5));
    let (_, metrics) = fanin.get("/api/v1/metrics").await;
    let names: Vec<&str> = metrics["metrics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|metric| metric["metric"].as_str())
        .collect();
    assert_eq!(names, ["requests"]);
    assert_eq!(
        send(&fanin, export("w2").counter("a", 1, 10, 1).build())
            .await
            .0,
        0
    );
    let (count, message) = send(&fanin, export("w2").counter("b", 1, 10, 1).build()).await;
    assert_eq!(count, 1, "{message}");
    assert!(message.contains("limits.max_series"), "{message}");
    let stats = fanin.stats().await;
    assert_eq!(stats["streams"], json!(1));
    assert_eq!(stats["retired_totals"], json!(1));
    fanin.stop().await;
}
