//! OTLP/gRPC: plain and gzip exports land in their streams exactly; partial success; every
//! bad-input path gets the OTLP status code and leaves what was stored untouched.

// Tests may panic on what they expect: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{export, gzip, start, start_with};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use prost::Message;
use serde_json::json;
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn plain_export_lands_in_its_stream() {
    let fanin = start().await;
    let response = fanin
        .export_grpc(
            export("w1")
                .counter("requests", 100, 200, 7)
                .gauge("inflight", 200, 3.5)
                .build(),
        )
        .await
        .expect("export succeeds");
    assert_eq!(response.partial_success, None);
    let series = fanin.series("requests").await;
    assert_eq!(series.len(), 1);
    let stream = &series[0];
    assert_eq!(stream["value"], json!(7));
    assert_eq!(stream["instance"]["service.instance.id"], json!("w1"));
    assert_eq!(stream["kind"], json!("sum"));
    assert_eq!(stream["monotonic"], json!(true));
    assert_eq!(stream["temporality"], json!("cumulative"));
    assert_eq!(stream["start_time_unix_nano"], json!(100));
    assert_eq!(stream["time_unix_nano"], json!(200));
    assert_eq!(fanin.values("inflight").await, vec![json!(3.5)]);
    let (_, instances) = fanin.get("/api/v1/instances").await;
    assert_eq!(
        instances["instances"][0]["writer"]["transport"],
        json!("grpc")
    );
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_export_is_accepted() {
    let fanin = start().await;
    let channel = tonic::transport::Channel::from_shared(fanin.grpc_url())
        .expect("URL")
        .connect()
        .await
        .expect("connect");
    let mut client =
        MetricsServiceClient::new(channel).send_compressed(tonic::codec::CompressionEncoding::Gzip);
    client
        .export(export("w1").counter("requests", 1, 2, 41).build())
        .await
        .expect("gzip export succeeds");
    assert_eq!(fanin.values("requests").await, vec![json!(41)]);
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_points_come_back_in_partial_success() {
    let fanin = start().await;
    let response = fanin
        .export_grpc(
            export("w1")
                .counter("requests", 1, 0, 5)
                .counter("other", 1, 10, 1)
                .build(),
        )
        .await
        .expect("a request that decodes succeeds");
    let partial = response.partial_success.expect("partial success is filled");
    assert_eq!(partial.rejected_data_points, 1);
    assert!(
        partial.error_message.contains("time_unix_nano 0"),
        "{}",
        partial.error_message
    );
    assert_eq!(fanin.values("other").await, vec![json!(1)]);
    let (status, _) = fanin.get("/api/v1/series?metric=requests").await;
    assert_eq!(status, 404, "the rejected point created no stream");
    fanin.stop().await;
}

/// Stores one known value, so each bad-input test can check it is still there afterwards.
async fn store_baseline(fanin: &common::TestFanin) -> Vec<serde_json::Value> {
    fanin
        .export_grpc(export("w1").counter("requests", 1, 10, 5).build())
        .await
        .expect("baseline export");
    fanin.series("requests").await
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_protobuf_is_invalid_argument() {
    let fanin = start().await;
    let before = store_baseline(&fanin).await;
    let status = fanin
        .export_grpc_raw(vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01], false)
        .await
        .expect_err("malformed body fails");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("decode"), "{}", status.message());
    assert_eq!(fanin.series("requests").await, before);
    let stats = fanin.stats().await;
    assert_eq!(stats["request_errors"]["decode"], json!(1), "{stats}");
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_protobuf_is_invalid_argument() {
    let fanin = start().await;
    let before = store_baseline(&fanin).await;
    let full = export("w1")
        .counter("requests", 1, 20, 9)
        .build()
        .encode_to_vec();
    let status = fanin
        .export_grpc_raw(full[..full.len() / 2].to_vec(), false)
        .await
        .expect_err("truncated body fails");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(fanin.series("requests").await, before);
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_request_is_resource_exhausted_not_out_of_range() {
    let fanin = start_with(|config| {
        config.receivers.otlp.grpc.max_request_bytes =
            std::num::NonZeroUsize::new(64 * 1024).expect("non-zero");
    })
    .await;
    let before = store_baseline(&fanin).await;
    let mut big = export("w1");
    for index in 0..2000 {
        big = big.counter(&format!("metric_{index}"), 1, 30, 1);
    }
    let body = big.build().encode_to_vec();
    assert!(body.len() > 64 * 1024);
    let status = fanin
        .export_grpc_raw(body, false)
        .await
        .expect_err("too large");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.metadata().get("grpc-status-details-bin").is_none(),
        "no RetryInfo"
    );
    assert_eq!(fanin.series("requests").await, before);
    let stats = fanin.stats().await;
    assert_eq!(stats["request_errors"]["too_large"], json!(1));
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_bomb_is_resource_exhausted() {
    let fanin = start().await;
    let before = store_baseline(&fanin).await;
    // 64 MiB of zeros compress to about 64 KiB; the default limit is 4 MiB.
    let bomb = vec![0u8; 64 << 20];
    assert!(gzip(&bomb).len() < 4 << 20);
    let status = fanin
        .export_grpc_raw(bomb, true)
        .await
        .expect_err("bomb refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(fanin.series("requests").await, before);
    fanin.stop().await;
}
