//! The official OpenTelemetry Rust SDK (`opentelemetry_sdk` + `opentelemetry-otlp`) exports to
//! fanin over gRPC and over HTTP; the values read back through /api/v1/series are exact.

// Tests may panic on what they expect: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{TestFanin, start};
use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use serde_json::json;

fn provider(exporter: opentelemetry_otlp::MetricExporter, instance: &str) -> SdkMeterProvider {
    let resource = Resource::builder()
        .with_service_name("sdk-test")
        .with_attributes([
            KeyValue::new("service.instance.id", instance.to_string()),
            KeyValue::new("process.pid", i64::from(std::process::id())),
        ])
        .build();
    SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter).build())
        .with_resource(resource)
        .build()
}

/// Records known values in two rounds, flushing after each, and checks fanin's streams.
async fn record_and_check(fanin: &TestFanin, provider: SdkMeterProvider, instance: &str) {
    let meter = provider.meter("fanin-tests");
    let requests = meter
        .u64_counter("http.requests")
        .with_unit("{request}")
        .build();
    let inflight = meter.i64_up_down_counter("http.inflight").build();
    let temperature = meter.f64_gauge("room.temperature").with_unit("Cel").build();
    let latency = meter.f64_histogram("http.latency").with_unit("s").build();
    let route = [KeyValue::new("route", "/a")];

    requests.add(5, &route);
    requests.add(7, &route);
    inflight.add(10, &[]);
    inflight.add(-3, &[]);
    temperature.record(21.5, &[]);
    for value in [0.3, 7.0, 12.0] {
        latency.record(value, &[]);
    }
    let flushed = provider.clone();
    tokio::task::spawn_blocking(move || flushed.force_flush())
        .await
        .expect("flush task")
        .expect("first flush");

    let stream = &fanin.series("http.requests").await[0];
    assert_eq!(stream["value"], json!(12));
    assert_eq!(stream["attributes"], json!({"route": "/a"}));
    assert_eq!(stream["unit"], json!("{request}"));
    assert_eq!(stream["instance"]["service.instance.id"], json!(instance));
    assert_eq!(stream["scope"]["name"], json!("fanin-tests"));
    assert_eq!(fanin.values("http.inflight").await, vec![json!(7)]);
    assert_eq!(fanin.values("room.temperature").await, vec![json!(21.5)]);
    let histogram = &fanin.series("http.latency").await[0]["histogram"];
    assert_eq!(histogram["count"], json!(3));
    assert_eq!(histogram["sum"], json!(19.3));
    assert_eq!(histogram["min"], json!(0.3));
    assert_eq!(histogram["max"], json!(12.0));
    // SDK default bounds 0, 5, 10, 25, ...: 0.3 in (0, 5], 7 in (5, 10], 12 in (10, 25].
    let mut expected_buckets = vec![json!(0); 16];
    expected_buckets[1..4].fill(json!(1));
    assert_eq!(histogram["bucket_counts"], json!(expected_buckets));

    requests.add(1, &route);
    inflight.add(-7, &[]);
    let flushed = provider.clone();
    tokio::task::spawn_blocking(move || flushed.force_flush())
        .await
        .expect("flush task")
        .expect("second flush");
    assert_eq!(fanin.values("http.requests").await, vec![json!(13)]);
    assert_eq!(fanin.values("http.inflight").await, vec![json!(0)]);

    tokio::task::spawn_blocking(move || provider.shutdown())
        .await
        .expect("shutdown task")
        .expect("provider shuts down");
    let (_, instances) = fanin.get("/api/v1/instances").await;
    assert_eq!(instances["instances"][0]["pid"], json!(std::process::id()));
}

#[tokio::test(flavor = "multi_thread")]
async fn sdk_exports_over_grpc() {
    let fanin = start().await;
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(fanin.grpc_url())
        .build()
        .expect("gRPC exporter");
    record_and_check(&fanin, provider(exporter, "grpc-worker"), "grpc-worker").await;
    let stats = fanin.stats().await;
    assert!(stats["requests"]["grpc"].as_u64() >= Some(2), "{stats}");
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sdk_exports_over_grpc_with_gzip_and_delta_temporality() {
    let fanin = start().await;
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(fanin.grpc_url())
        .with_compression(opentelemetry_otlp::Compression::Gzip)
        .with_temporality(Temporality::Delta)
        .build()
        .expect("gRPC exporter");
    record_and_check(&fanin, provider(exporter, "delta-worker"), "delta-worker").await;
    assert_eq!(
        fanin.series("http.requests").await[0]["temporality"],
        json!("delta")
    );
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sdk_exports_over_http() {
    let fanin = start().await;
    let url = fanin.http_url();
    // The HTTP exporter uses a blocking client, which must be built outside the runtime.
    let exporter = tokio::task::spawn_blocking(move || {
        opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_endpoint(url)
            .build()
            .expect("HTTP exporter")
    })
    .await
    .expect("exporter task");
    record_and_check(&fanin, provider(exporter, "http-worker"), "http-worker").await;
    let stats = fanin.stats().await;
    assert!(stats["requests"]["http"].as_u64() >= Some(2), "{stats}");
    fanin.stop().await;
}
