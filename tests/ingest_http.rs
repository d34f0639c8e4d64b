//! OTLP/HTTP: protobuf and JSON bodies, gzip, canonical responses, and every bad-input path
//! with its status code, its message, and the stored values left untouched.

// Tests may panic on what they expect: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{HttpAnswer, TestFanin, export, gzip, start, start_with};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use prost::Message;
use serde_json::json;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

/// Stores one known value and returns the stored stream.
async fn store_baseline(fanin: &TestFanin) -> Vec<serde_json::Value> {
    let answer = fanin
        .post(
            PROTOBUF,
            None,
            export("w1")
                .counter("requests", 1, 10, 5)
                .build()
                .encode_to_vec(),
        )
        .await;
    assert_eq!(answer.status, 200);
    fanin.series("requests").await
}

fn status_message(answer: &HttpAnswer) -> String {
    if answer.content_type.starts_with(PROTOBUF) {
        tonic_types::Status::decode(answer.body.clone())
            .expect("error body is a google.rpc.Status")
            .message
    } else {
        answer.json()["message"]
            .as_str()
            .expect("message field")
            .to_string()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn protobuf_export_round_trips() {
    let fanin = start().await;
    let answer = fanin
        .post(
            PROTOBUF,
            None,
            export("w1")
                .counter("requests", 1, 10, 12)
                .build()
                .encode_to_vec(),
        )
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.content_type, PROTOBUF);
    let response = ExportMetricsServiceResponse::decode(answer.body).expect("protobuf response");
    assert_eq!(response.partial_success, None);
    assert_eq!(fanin.values("requests").await, vec![json!(12)]);
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_protobuf_is_accepted() {
    let fanin = start().await;
    let body = gzip(
        &export("w1")
            .counter("requests", 1, 10, 3)
            .build()
            .encode_to_vec(),
    );
    let answer = fanin.post(PROTOBUF, Some("gzip"), body).await;
    assert_eq!(answer.status, 200);
    assert_eq!(fanin.values("requests").await, vec![json!(3)]);
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_protobuf_inflating_past_the_inline_size_is_accepted() {
    // Inflated on the async worker up to 512 KiB, then finished on the blocking pool: a
    // schema URL (read, not kept) makes the body about 1 MiB once inflated.
    let fanin = start().await;
    let mut request = export("w1").counter("requests", 1, 10, 3).build();
    request.resource_metrics[0].schema_url = "s".repeat(1 << 20);
    let body = gzip(&request.encode_to_vec());
    assert!(body.len() < 64 << 10, "{} bytes compressed", body.len());
    let answer = fanin.post(PROTOBUF, Some("gzip"), body).await;
    assert_eq!(answer.status, 200);
    assert_eq!(fanin.values("requests").await, vec![json!(3)]);
    fanin.stop().await;
}

/// An OTLP/JSON document with every metric kind, 64-bit integers as strings, enums both as
/// numbers and names, and the NaN/Infinity spellings the Collector writes.
const EVERY_KIND: &str = r#"{
  "resourceMetrics": [{
    "resource": {"attributes": [
      {"key": "service.name", "value": {"stringValue": "app"}},
      {"key": "service.instance.id", "value": {"stringValue": "json-1"}},
      {"key": "process.pid", "value": {"intValue": "4242"}}
    ]},
    "scopeMetrics": [{
      "scope": {"name": "my.library", "version": "1.0.0"},
      "metrics": [
        {"name": "requests", "unit": "1", "sum": {"aggregationTemporality": 2, "isMonotonic": true,
          "dataPoints": [{"attributes": [{"key": "route", "value": {"stringValue": "/a"}}],
            "startTimeUnixNano": "1700000000000000000", "timeUnixNano": "1700000010000000000",
            "asInt": "9007199254740993"}]}},
        {"name": "inflight", "unit": "{request}", "sum": {"aggregationTemporality": "AGGREGATION_TEMPORALITY_CUMULATIVE",
          "dataPoints": [{"timeUnixNano": "1700000010000000000", "asInt": "-3"}]}},
        {"name": "temperature", "unit": "Cel", "gauge": {"dataPoints": [
          {"timeUnixNano": "1700000010000000000", "asDouble": "21.5"}]}},
        {"name": "ratio", "gauge": {"dataPoints": [
          {"timeUnixNano": "1700000010000000000", "asDouble": "Infinity"}]}},
        {"name": "latency", "unit": "s", "histogram": {"aggregationTemporality": 2, "dataPoints": [
          {"startTimeUnixNano": "1700000000000000000", "timeUnixNano": "1700000010000000000",
           "count": "6", "sum": 7.5, "min": 0.1, "max": 4,
           "bucketCounts": ["1", "2", "3"], "explicitBounds": [0.5, 1]}]}},
        {"name": "sizes", "unit": "By", "exponentialHistogram": {"aggregationTemporality": 1, "dataPoints": [
          {"startTimeUnixNano": "1700000000000000000", "timeUnixNano": "1700000010000000000",
           "count": "6", "sum": 40, "scale": 3, "zeroCount": "1", "zeroThreshold": 0,
           "positive": {"offset": 2, "bucketCounts": ["1", "2"]},
           "negative": {"offset": "-1", "bucketCounts": ["2"]}}]}},
        {"name": "legacy", "summary": {"dataPoints": [
          {"timeUnixNano": "1700000010000000000", "count": "10", "sum": "55",
           "quantileValues": [{"quantile": 0.5, "value": 5}, {"quantile": 1, "value": "10"}]}]}}
      ]
    }]
  }]
}"#;

#[tokio::test(flavor = "multi_thread")]
async fn json_with_every_kind_arrives_whole() {
    let fanin = start().await;
    let answer = fanin.post(JSON, None, EVERY_KIND.as_bytes().to_vec()).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.content_type, JSON);
    assert_eq!(
        answer.json(),
        json!({}),
        "full success has no partialSuccess"
    );

    let requests = &fanin.series("requests").await[0];
    // 2^53 + 1 as an int arrives and stays exact.
    assert_eq!(requests["value"], json!(9007199254740993u64));
    assert_eq!(requests["attributes"], json!({"route": "/a"}));
    assert_eq!(requests["instance"]["process.pid"], json!(4242));
    assert_eq!(requests["scope"]["name"], json!("my.library"));
    assert_eq!(
        requests["start_time_unix_nano"],
        json!(1_700_000_000_000_000_000u64)
    );
    assert_eq!(
        requests["time_unix_nano"],
        json!(1_700_000_010_000_000_000u64)
    );

    assert_eq!(fanin.values("inflight").await, vec![json!(-3)]);
    assert_eq!(fanin.series("inflight").await[0]["monotonic"], json!(false));
    assert_eq!(fanin.values("temperature").await, vec![json!(21.5)]);
    assert_eq!(fanin.values("ratio").await, vec![json!("Infinity")]);

    let latency = &fanin.series("latency").await[0]["histogram"];
    assert_eq!(
        latency,
        &json!({"count": 6, "sum": 7.5, "min": 0.1, "max": 4.0,
                "explicit_bounds": [0.5, 1.0], "bucket_counts": [1, 2, 3]})
    );
    let sizes = &fanin.series("sizes").await[0];
    assert_eq!(sizes["temporality"], json!("delta"));
    assert_eq!(
        sizes["exponential_histogram"],
        json!({"count": 6, "sum": 40.0, "min": null, "max": null, "scale": 3,
               "zero_count": 1, "zero_threshold": 0.0,
               "positive": {"offset": 2, "bucket_counts": [1, 2]},
               "negative": {"offset": -1, "bucket_counts": [2]}})
    );
    assert_eq!(
        fanin.series("legacy").await[0]["summary"],
        json!({"count": 10, "sum": 55.0, "quantiles": [
            {"quantile": 0.5, "value": 5.0}, {"quantile": 1.0, "value": 10.0}]})
    );
    let stats = fanin.stats().await;
    assert_eq!(stats["points"]["accepted"], json!(7));
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn json_partial_success_is_canonical() {
    let fanin = start().await;
    let body = r#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"g","gauge":{"dataPoints":[
        {"timeUnixNano":"0","asDouble":1},{"timeUnixNano":"5"},{"timeUnixNano":"6","asDouble":2}]}}]}]}]}"#;
    let answer = fanin
        .post("application/json; charset=utf-8", None, body.into())
        .await;
    assert_eq!(answer.status, 200);
    let json = answer.json();
    // int64 in canonical OTLP/JSON is a decimal string.
    assert_eq!(json["partialSuccess"]["rejectedDataPoints"], json!("2"));
    let message = json["partialSuccess"]["errorMessage"]
        .as_str()
        .expect("message");
    assert!(message.contains("1 time_zero, 1 no_value"), "{message}");
    assert_eq!(fanin.values("g").await, vec![json!(2.0)]);
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_json_is_accepted() {
    let fanin = start().await;
    let answer = fanin
        .post(JSON, Some("gzip"), gzip(EVERY_KIND.as_bytes()))
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(fanin.values("temperature").await, vec![json!(21.5)]);
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_protobuf_is_400_with_status_body() {
    let fanin = start().await;
    let before = store_baseline(&fanin).await;
    let answer = fanin
        .post(PROTOBUF, None, vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f])
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.content_type, PROTOBUF);
    let message = status_message(&answer);
    assert!(
        message.starts_with("body is not a valid OTLP protobuf"),
        "{message}"
    );
    assert_eq!(fanin.series("requests").await, before);
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_protobuf_is_400() {
    let fanin = start().await;
    let before = store_baseline(&fanin).await;
    let full = export("w1")
        .counter("requests", 1, 20, 9)
        .build()
        .encode_to_vec();
    let answer = fanin
        .post(PROTOBUF, None, full[..full.len() - 3].to_vec())
        .await;
    assert_eq!(answer.status, 400);
    assert!(status_message(&answer).contains("protobuf"));
    assert_eq!(fanin.series("requests").await, before);
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_json_is_400_naming_the_field() {
    let fanin = start().await;
    let before = store_baseline(&fanin).await;
    let body = r#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"requests","sum":{
        "aggregationTemporality":2,"isMonotonic":true,
        "dataPoints":[{"timeUnixNano":"30","asInt":"12x"}]}}]}]}]}"#;
    let answer = fanin.post(JSON, None, body.into()).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.content_type, JSON);
    assert_eq!(answer.json()["code"], json!(3));
    assert_eq!(
        status_message(&answer),
        "body is not a valid OTLP/JSON ExportMetricsServiceRequest: \
         resourceMetrics[0].scopeMetrics[0].metrics[0].sum.dataPoints[0].asInt: \"12x\" is not an integer"
    );
    let truncated = fanin
        .post(JSON, None, br#"{"resourceMetrics":[{"#.to_vec())
        .await;
    assert_eq!(truncated.status, 400);
    assert!(status_message(&truncated).contains("not valid JSON"));
    assert_eq!(fanin.series("requests").await, before);
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_body_is_413() {
    let fanin = start_with(|config| {
        config.receivers.otlp.http.max_request_bytes =
            std::num::NonZeroUsize::new(1024).expect("non-zero");
    })
    .await;
    let before = store_baseline(&fanin).await;
    let answer = fanin.post(PROTOBUF, None, vec![0u8; 4096]).await;
    assert_eq!(answer.status, 413);
    assert_eq!(
        status_message(&answer),
        "request body is larger than the limit of 1024 bytes"
    );
    assert_eq!(fanin.series("requests").await, before);
    assert_eq!(fanin.stats().await["request_errors"]["too_large"], json!(1));
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_bomb_is_413_after_decompression() {
    let fanin = start().await;
    let before = store_baseline(&fanin).await;
    // 64 MiB of zeros: about 64 KiB compressed, far under the 20 MiB raw limit.
    let bomb = gzip(&vec![0u8; 64 << 20]);
    let answer = fanin.post(PROTOBUF, Some("gzip"), bomb).await;
    assert_eq!(answer.status, 413);
    assert_eq!(
        status_message(&answer),
        "request body is larger than the limit of 20971520 bytes after decompression"
    );
    assert_eq!(fanin.series("requests").await, before);
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_content_type_is_415() {
    let fanin = start().await;
    let before = store_baseline(&fanin).await;
    let answer = fanin.post("text/plain", None, b"requests 5".to_vec()).await;
    assert_eq!(answer.status, 415);
    assert_eq!(
        status_message(&answer),
        "content type \"text/plain\" is not supported; send application/x-protobuf or application/json"
    );
    let encoding = fanin.post(PROTOBUF, Some("br"), vec![1, 2, 3]).await;
    assert_eq!(encoding.status, 415);
    assert!(status_message(&encoding).contains("content encoding \"br\""));
    assert_eq!(fanin.series("requests").await, before);
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_path_is_404_and_get_is_405() {
    let fanin = start().await;
    let url = format!("http://{}/v1/traces", fanin.addresses.http);
    let answer = fanin.post_to(&url, PROTOBUF, None, vec![]).await;
    assert_eq!(answer.status, 404);
    assert!(status_message(&answer).contains("POST /v1/metrics"));
    let get = reqwest::get(fanin.http_url()).await.expect("answered");
    assert_eq!(get.status().as_u16(), 405);
    assert_eq!(get.headers()["allow"], "POST");
    let (status, body) = fanin.get("/api/v1/nothing").await;
    assert_eq!(status, 404);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|error| error.contains("/api/v1/nothing"))
    );
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_kind_for_an_existing_name_is_a_separate_stream_and_a_conflict() {
    let fanin = start().await;
    let before = store_baseline(&fanin).await;
    // "requests" is a counter; w2 sends it as a gauge.
    let answer = fanin
        .post(
            PROTOBUF,
            None,
            export("w2")
                .gauge("requests", 20, 1.5)
                .build()
                .encode_to_vec(),
        )
        .await;
    assert_eq!(answer.status, 200);
    let series = fanin.series("requests").await;
    assert_eq!(series.len(), 2);
    assert_eq!(series[0], before[0], "the counter stream is unchanged");
    assert_eq!(series[1]["kind"], json!("gauge"));
    assert_eq!(series[1]["value"], json!(1.5));
    let conflicts = fanin.stats().await["type_conflicts"].clone();
    assert_eq!(
        conflicts,
        json!([{
            "metric": "requests",
            "first": "sum (monotonic, cumulative, unit \"1\")",
            "conflicting": "gauge (unit \"1\")",
            "first_seen_unix_nano": conflicts[0]["first_seen_unix_nano"],
            "streams": 1,
        }])
    );
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn series_needs_a_known_metric() {
    let fanin = start().await;
    let (status, body) = fanin.get("/api/v1/series").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], json!("missing query parameter `metric`"));
    let (status, body) = fanin.get("/api/v1/series?metric=nope").await;
    assert_eq!(status, 404);
    assert_eq!(
        body["error"],
        json!("no metric named \"nope\" has been received")
    );
    let (status, _) = fanin.get("/healthz").await;
    assert_eq!(status, 200);
    let (status, _) = fanin.get("/readyz").await;
    assert_eq!(status, 200);
    fanin.stop().await;
}
