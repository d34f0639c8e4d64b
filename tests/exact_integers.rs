//! Integer points stay integers through the store, aggregation and every renderer: 2^53 + 1
//! and i64::MAX come back exactly from `/api/v1/series`, `/api/v1/query` (HTTP and gRPC)
//! and `/metrics`; a total past the i64 range is exact in `/metrics` and, where the answer
//! is an int64, the nearest double with a note saying so.

// Tests may panic on what they expect: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{TestFanin, export, start};
use fanin::proto::v1 as pb;
use serde_json::json;

async fn send(fanin: &TestFanin, request: common::Export) {
    let response = fanin.export_grpc(request.build()).await.expect("export");
    assert_eq!(response.partial_success, None);
}

async fn grpc_result(fanin: &TestFanin, metric: &str) -> (Option<pb::series::Result>, Vec<String>) {
    let answer = fanin
        .query_client()
        .await
        .query(pb::QueryRequest {
            metric: metric.into(),
            ..Default::default()
        })
        .await
        .expect("gRPC query")
        .into_inner();
    (answer.series[0].result.clone(), answer.notes)
}

const PAST_2_53: i64 = (1 << 53) + 1;

#[tokio::test(flavor = "multi_thread")]
async fn integers_come_back_exactly_from_every_answer() {
    let fanin = start().await;
    send(
        &fanin,
        export("w1")
            .counter("past.two.fifty.three", 1, 10, PAST_2_53)
            .counter("largest", 1, 10, i64::MAX),
    )
    .await;
    for (metric, value) in [("past.two.fifty.three", PAST_2_53), ("largest", i64::MAX)] {
        assert_eq!(fanin.values(metric).await, vec![json!(value)], "{metric}");
        assert_eq!(
            fanin.total(&format!("metric={metric}")).await,
            json!(value),
            "{metric}"
        );
        let (result, notes) = grpc_result(&fanin, metric).await;
        assert_eq!(
            result,
            Some(pb::series::Result::IntValue(value)),
            "{metric}"
        );
        assert_eq!(notes, Vec::<String>::new());
    }
    let (_, page) = fanin.get("/metrics").await;
    let page = page.as_str().unwrap_or_default().to_string();
    assert!(
        page.contains("\npast_two_fifty_three_total{service_name=\"app\"} 9007199254740993\n"),
        "{page}"
    );
    assert!(
        page.contains("\nlargest_total{service_name=\"app\"} 9223372036854775807\n"),
        "{page}"
    );
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_total_past_i64_is_never_wrapped() {
    let fanin = start().await;
    for worker in ["w1", "w2"] {
        send(&fanin, export(worker).counter("largest", 1, 10, i64::MAX)).await;
    }
    let exact = 2 * i128::from(i64::MAX);
    let (_, page) = fanin.get("/metrics").await;
    let page = page.as_str().unwrap_or_default().to_string();
    assert!(
        page.contains(&format!(
            "\nlargest_total{{service_name=\"app\"}} {exact}\n"
        )),
        "{page}"
    );
    let (_, answer) = fanin.query("metric=largest").await;
    assert_eq!(answer["series"][0]["value"], json!(exact as f64));
    let notes = answer["notes"].to_string();
    assert!(notes.contains("outside the 64-bit range"), "{notes}");
    let (result, notes) = grpc_result(&fanin, "largest").await;
    assert_eq!(result, Some(pb::series::Result::Value(exact as f64)));
    assert!(notes.iter().any(|note| note.contains("nearest double")));
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn integers_and_doubles_together_are_a_double() {
    let fanin = start().await;
    send(&fanin, export("w1").counter("mixed", 1, 10, 2)).await;
    send(
        &fanin,
        export("w2").sum(
            "mixed",
            2,
            true,
            opentelemetry_proto::tonic::metrics::v1::NumberDataPoint {
                start_time_unix_nano: 1,
                time_unix_nano: 10,
                value: Some(
                    opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsDouble(
                        0.5,
                    ),
                ),
                ..Default::default()
            },
        ),
    )
    .await;
    assert_eq!(fanin.total("metric=mixed").await, json!(2.5));
    fanin.stop().await;
}
