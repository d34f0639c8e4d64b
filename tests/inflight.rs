//! One memory budget for requests in flight, across listeners: bodies that together pass it
//! get a code OTLP exporters retry (HTTP 503 with Retry-After, gRPC UNAVAILABLE) as soon as
//! their bytes arrive, nothing stored changes, and every one succeeds on retry. A body that
//! does not arrive within the body timeout is refused, and a good client keeps exporting
//! meanwhile.

// Tests may panic on what they expect: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::num::NonZeroUsize;
use std::time::Duration;

use bytes::Bytes;
use common::{EXPORT_PATH, TestFanin, eventually, export, start_with};
use prost::Message;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A budget that holds one of the test's bodies but not two.
const BUDGET: usize = 1 << 20;

/// A request of about 700 KB from `instance`: one counter stream per point.
fn big_request(instance: &str) -> Vec<u8> {
    let mut request = export(instance);
    for n in 0..7_000 {
        request = request.counter(&format!("m.{n:05}.{}", "x".repeat(60)), 1, 10, 1);
    }
    let bytes = request.build().encode_to_vec();
    assert!(bytes.len() > BUDGET / 2 + 100_000, "{} bytes", bytes.len());
    bytes
}

async fn budgeted() -> TestFanin {
    start_with(|config| {
        config.receivers.otlp.max_inflight_bytes = NonZeroUsize::new(BUDGET).expect("non-zero");
    })
    .await
}

/// An HTTP/1.1 request whose body is sent only up to `sent` bytes.
async fn half_post(fanin: &TestFanin, body: &[u8], sent: usize) -> TcpStream {
    let mut connection = TcpStream::connect(fanin.addresses.http)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/metrics HTTP/1.1\r\nhost: fanin\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    connection.write_all(head.as_bytes()).await.expect("head");
    connection
        .write_all(&body[..sent])
        .await
        .expect("part of the body");
    connection
}

/// What the server has answered on `connection` so far (empty while it waits).
fn answered(connection: &TcpStream) -> String {
    let mut buffer = vec![0u8; 4096];
    match connection.try_read(&mut buffer) {
        Ok(read) => String::from_utf8_lossy(&buffer[..read]).into_owned(),
        Err(_) => String::new(),
    }
}

async fn instances(fanin: &TestFanin) -> usize {
    fanin.get("/api/v1/instances").await.1["instances"]
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread")]
async fn http_bodies_past_the_budget_are_told_to_retry_and_succeed_on_retry() {
    let fanin = budgeted().await;
    let bodies = [big_request("a"), big_request("b")];
    let part = BUDGET / 2 + 100_000;
    let mut connections = Vec::new();
    for body in &bodies {
        connections.push(half_post(&fanin, body, part).await);
    }
    // Whichever body's bytes came second found the budget full.
    let (refused, answer) = eventually(Duration::from_secs(10), "a 503", || {
        let found = connections
            .iter()
            .enumerate()
            .find_map(|(index, connection)| {
                let answer = answered(connection);
                (!answer.is_empty()).then_some((index, answer))
            });
        async move { found }
    })
    .await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    assert!(answer.contains("max_inflight_bytes"), "{answer}");
    assert_eq!(instances(&fanin).await, 0, "nothing was stored");

    let kept = 1 - refused;
    connections[kept]
        .write_all(&bodies[kept][part..])
        .await
        .expect("rest of the body");
    let answer = eventually(Duration::from_secs(10), "the kept request's answer", || {
        let answer = answered(&connections[kept]);
        async move { (!answer.is_empty()).then_some(answer) }
    })
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let retried = fanin
        .post("application/x-protobuf", None, bodies[refused].clone())
        .await;
    assert_eq!(retried.status, 200);
    assert_eq!(instances(&fanin).await, 2);
    assert_eq!(fanin.stats().await["request_errors"]["busy"], json!(1));
    fanin.stop().await;
}

/// A gRPC Export whose message is sent only up to `sent` bytes, over HTTP/2.
async fn half_export(
    fanin: &TestFanin,
    message: &[u8],
    sent: usize,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let connection = TcpStream::connect(fanin.addresses.grpc)
        .await
        .expect("connect");
    let (client, driver) = h2::client::handshake(connection)
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = driver.await;
    });
    let mut client = client.ready().await.expect("ready");
    let request = http::Request::post(format!("http://{}{EXPORT_PATH}", fanin.addresses.grpc))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (response, mut stream) = client.send_request(request, false).expect("send");
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    stream
        .send_data(Bytes::copy_from_slice(&framed[..5 + sent]), false)
        .expect("part of the message");
    (response, stream)
}

/// The grpc-status of an answer, from its headers (trailers-only) or its trailers.
async fn grpc_status(response: http::Response<h2::RecvStream>) -> (String, String) {
    let header = |headers: &http::HeaderMap, name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    };
    if let Some(status) = header(response.headers(), "grpc-status") {
        return (
            status,
            header(response.headers(), "grpc-message").unwrap_or_default(),
        );
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let _ = chunk.expect("data");
    }
    let trailers = body.trailers().await.expect("trailers").unwrap_or_default();
    (
        header(&trailers, "grpc-status").unwrap_or_default(),
        header(&trailers, "grpc-message").unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_messages_past_the_budget_are_unavailable_and_succeed_on_retry() {
    let fanin = budgeted().await;
    let messages = [big_request("a"), big_request("b")];
    let part = BUDGET / 2 + 100_000;
    let (mut first, first_stream) = half_export(&fanin, &messages[0], part).await;
    let (mut second, second_stream) = half_export(&fanin, &messages[1], part).await;
    // Whichever came second is refused at once; the other waits for the rest.
    let (refused, answer) = tokio::select! {
        answer = &mut first => (0, answer),
        answer = &mut second => (1, answer),
    };
    let (kept, mut kept_stream) = if refused == 0 {
        (second, second_stream)
    } else {
        (first, first_stream)
    };
    let (status, message) = grpc_status(answer.expect("answer")).await;
    assert_eq!(
        status,
        (tonic::Code::Unavailable as i32).to_string(),
        "{message}"
    );
    assert!(message.contains("max_inflight_bytes"), "{message}");
    assert_eq!(instances(&fanin).await, 0, "nothing was stored");

    let kept_index = 1 - refused;
    let framed_len = 5 + messages[kept_index].len();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(messages[kept_index].len() as u32).to_be_bytes());
    framed.extend_from_slice(&messages[kept_index]);
    // Two bodies read at once on two threads can both find the budget full before the
    // first refused one gives its bytes back: then both are refused, the server has closed
    // the kept stream too (so sending the rest may fail), and both succeed on retry.
    let _maybe_closed =
        kept_stream.send_data(Bytes::copy_from_slice(&framed[5 + part..framed_len]), true);
    let (status, message) = grpc_status(kept.await.expect("answer")).await;
    let mut retry = vec![refused];
    if status != "0" {
        assert_eq!(
            status,
            (tonic::Code::Unavailable as i32).to_string(),
            "{message}"
        );
        assert!(message.contains("max_inflight_bytes"), "{message}");
        retry.push(kept_index);
    }
    for index in &retry {
        let retried = fanin.export_grpc_raw(messages[*index].clone(), false).await;
        assert!(retried.is_ok(), "{retried:?}");
    }
    assert_eq!(instances(&fanin).await, 2);
    assert_eq!(
        fanin.stats().await["request_errors"]["busy"],
        json!(retry.len())
    );
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_slower_than_the_body_timeout_is_refused_while_others_export() {
    let fanin = start_with(|config| {
        config.receivers.otlp.body_timeout = Duration::from_millis(300);
    })
    .await;
    let body = export("slow")
        .counter("requests", 1, 10, 1)
        .build()
        .encode_to_vec();
    let slow = half_post(&fanin, &body, body.len() / 2).await;
    // Meanwhile a good client exports.
    let good = export("good")
        .counter("requests", 1, 10, 1)
        .build()
        .encode_to_vec();
    assert_eq!(
        fanin
            .post("application/x-protobuf", None, good)
            .await
            .status,
        200
    );
    let answer = eventually(Duration::from_secs(10), "the slow body's answer", || {
        let answer = answered(&slow);
        async move { (!answer.is_empty()).then_some(answer) }
    })
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert_eq!(fanin.values("requests").await, vec![json!(1)]);
    assert_eq!(fanin.stats().await["request_errors"]["timeout"], json!(1));
    fanin.stop().await;
}
