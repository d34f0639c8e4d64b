//! The gRPC QueryService and the HTTP API give the same answer to the same question: the
//! gRPC response, in its JSON form, equals the HTTP body.

// Tests may panic on what they expect: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{TestFanin, export, start};
use fanin::proto::v1 as pb;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use serde_json::json;
use tonic::Code;

fn typed(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

async fn load(fanin: &TestFanin) {
    for (worker, value) in [("w1", 5), ("w2", 7), ("w3", 11)] {
        let request = export(worker)
            .resource_attr(typed(
                "deployment.ratio",
                any_value::Value::DoubleValue(f64::NAN),
            ))
            .resource_attr(typed(
                "deployment.blob",
                any_value::Value::BytesValue(vec![1, 2, 3]),
            ))
            .counter_with(
                "requests",
                &[("route", "/a"), ("method", "GET")],
                1,
                10,
                value,
            )
            .counter_with(
                "requests",
                &[("route", "/b"), ("method", "POST")],
                1,
                10,
                2 * value,
            )
            .up_down("inflight", 1, 10, value)
            .histogram("latency", 1, 10, &[0.1, 1.0], &[1, 2, 3])
            .exp_histogram("sizes", 1, 10, 2, &[1, 1, 1, 1])
            .summary("legacy", 10, 3, 1.5, &[(0.5, 0.4)]);
        let response = fanin.export_grpc(request.build()).await.expect("export");
        assert_eq!(response.partial_success, None);
    }
}

fn request(
    metric: &str,
    agg: &str,
    by: Option<&[&str]>,
    matches: &[(&str, &str)],
) -> pb::QueryRequest {
    pb::QueryRequest {
        metric: metric.into(),
        agg: agg.into(),
        by: by.map(|keys| pb::GroupBy {
            keys: keys.iter().map(|key| key.to_string()).collect(),
        }),
        matches: matches
            .iter()
            .map(|(key, value)| pb::Match {
                key: key.to_string(),
                value: value.to_string(),
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_and_http_answer_alike() {
    let fanin = start().await;
    load(&fanin).await;
    let mut grpc = fanin.query_client().await;
    let questions = [
        ("metric=requests", request("requests", "", None, &[])),
        (
            "metric=requests&by=route",
            request("requests", "", Some(&["route"]), &[]),
        ),
        (
            "metric=requests&by=",
            request("requests", "", Some(&[]), &[]),
        ),
        (
            "metric=requests&agg=max&by=method&match=route=/b",
            request("requests", "max", Some(&["method"]), &[("route", "/b")]),
        ),
        (
            "metric=inflight&agg=avg",
            request("inflight", "avg", None, &[]),
        ),
        ("metric=latency", request("latency", "", None, &[])),
        ("metric=sizes", request("sizes", "", None, &[])),
        ("metric=legacy", request("legacy", "", None, &[])),
    ];
    for (query, question) in questions {
        let (status, http) = fanin.query(query).await;
        assert_eq!(status, 200, "{query}: {http}");
        let answer = grpc.query(question).await.expect("gRPC query").into_inner();
        let as_json = serde_json::to_value(&answer).expect("serialize");
        assert_eq!(as_json, http, "{query}");
    }
    // The typed attributes survive in both: NaN as "NaN", bytes as base64.
    let (_, http) = fanin.query("metric=inflight").await;
    assert_eq!(
        http["series"][0]["attributes"]["deployment.ratio"],
        json!("NaN")
    );
    assert_eq!(
        http["series"][0]["attributes"]["deployment.blob"],
        json!("AQID")
    );
    assert_eq!(http["series"][0]["value"], json!(23));

    let metrics = grpc
        .metrics(pb::MetricsRequest {})
        .await
        .expect("gRPC metrics")
        .into_inner();
    let (_, http) = fanin.get("/api/v1/metrics").await;
    assert_eq!(serde_json::to_value(&metrics).expect("serialize"), http);
    assert_eq!(metrics.metrics.len(), 5);
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_errors_match_http_errors() {
    let fanin = start().await;
    load(&fanin).await;
    let mut grpc = fanin.query_client().await;
    let status = grpc
        .query(request("nope", "", None, &[]))
        .await
        .expect_err("unknown metric");
    assert_eq!(status.code(), Code::NotFound);
    let (_, http) = fanin.query("metric=nope").await;
    assert_eq!(http["error"], json!(status.message()));

    let status = grpc
        .query(request("requests", "p99", None, &[]))
        .await
        .expect_err("bad agg");
    assert_eq!(status.code(), Code::InvalidArgument);
    let (_, http) = fanin.query("metric=requests&agg=p99").await;
    assert_eq!(http["error"], json!(status.message()));

    let status = grpc
        .query(request("latency", "max", None, &[]))
        .await
        .expect_err("max of a histogram");
    assert_eq!(status.code(), Code::InvalidArgument);

    let status = grpc
        .query(request("", "", None, &[]))
        .await
        .expect_err("no metric");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "missing query parameter `metric`");
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn queries_are_not_counted_as_exports() {
    let fanin = start().await;
    load(&fanin).await;
    let mut grpc = fanin.query_client().await;
    for _ in 0..5 {
        let _ = grpc.query(request("nope", "", None, &[])).await;
    }
    let stats = fanin.stats().await;
    assert_eq!(stats["requests"]["grpc"], json!(3));
    assert_eq!(
        stats["request_errors"],
        json!({"decode": 0, "too_large": 0, "unsupported": 0, "busy": 0, "timeout": 0})
    );
    fanin.stop().await;
}
