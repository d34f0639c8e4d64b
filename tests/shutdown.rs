//! Graceful shutdown: once cancelled, fanin stops accepting connections but answers the
//! requests already in flight, then stops.

// Tests may panic on what they expect: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{eventually, export, start};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread")]
async fn request_in_flight_completes_after_shutdown_begins() {
    let fanin = start().await;
    let body = export("w1")
        .counter("requests", 1, 10, 21)
        .build()
        .encode_to_vec();
    let (first, rest) = body.split_at(body.len() / 2);

    let mut connection = TcpStream::connect(fanin.addresses.http)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/metrics HTTP/1.1\r\nhost: fanin\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    connection
        .write_all(head.as_bytes())
        .await
        .expect("send head");
    connection
        .write_all(first)
        .await
        .expect("send half the body");
    // The request is in flight once its handler runs, which counts it; a connection whose
    // head was not read yet is idle, and closing idle connections is what shutdown does.
    let store = fanin.store.clone();
    eventually(Duration::from_secs(10), "the handler to start", || {
        let requests = store.stats().snapshot().requests;
        async move { requests.contains(&("http", 1)).then_some(()) }
    })
    .await;

    fanin.begin_shutdown();
    let address = fanin.addresses.http;
    eventually(
        Duration::from_secs(10),
        "the listener to close",
        || async move { TcpStream::connect(address).await.is_err().then_some(()) },
    )
    .await;

    connection.write_all(rest).await.expect("send the rest");
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
        let read = connection.read(&mut buffer).await.expect("read answer");
        assert!(read > 0, "connection closed before an answer: {answer:?}");
        answer.extend_from_slice(&buffer[..read]);
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let streams = fanin.store.streams("requests");
    assert_eq!(streams.len(), 1);
    assert_eq!(
        streams[0].state.value,
        Some(fanin::store::StreamValue::Number(
            fanin::model::Number::Int(21)
        ))
    );
    drop(connection);
    fanin.stop().await;
}
