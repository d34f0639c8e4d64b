//! What every listener does with connections: a cap per listener (one past it is closed at
//! once, and the other listeners keep answering), request headers that must arrive within
//! the header timeout, connections closed after the idle timeout; a good client keeps
//! exporting through all of it.

// Tests may panic on what they expect: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use common::{TestFanin, eventually, export, start_with};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether the server has closed `connection` (a read finds the end or an error), without
/// waiting.
fn closed(connection: &TcpStream) -> bool {
    let mut buffer = [0u8; 64];
    match connection.try_read(&mut buffer) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => error.kind() != std::io::ErrorKind::WouldBlock,
    }
}

async fn wait_closed(connection: &TcpStream, what: &str) {
    eventually(Duration::from_secs(10), what, || {
        let gone = closed(connection);
        async move { gone.then_some(()) }
    })
    .await;
}

/// One export on a connection of its own. With a 300 ms header timeout, hyper closes a
/// kept-alive connection that sends no next request within 300 ms; a pooled connection
/// reused just as that happens fails (`IncompleteMessage`), the race any keep-alive client
/// has with a server's keep-alive limit. That race is not what these tests are about.
async fn good_export(fanin: &TestFanin, time: u64) {
    let body = export("good")
        .counter("requests", 1, time, time as i64)
        .build();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("an HTTP client");
    let answer = client
        .post(fanin.http_url())
        .header("content-type", "application/x-protobuf")
        .body(body.encode_to_vec())
        .send()
        .await
        .expect("HTTP request is answered");
    assert_eq!(answer.status(), 200);
}

async fn connect(address: SocketAddr) -> TcpStream {
    TcpStream::connect(address).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_past_the_cap_is_closed_and_other_listeners_answer() {
    let fanin = start_with(|config| {
        config.receivers.otlp.http.max_connections = NonZeroUsize::new(2).expect("non-zero");
    })
    .await;
    let held = [
        connect(fanin.addresses.http).await,
        connect(fanin.addresses.http).await,
    ];
    let third = connect(fanin.addresses.http).await;
    wait_closed(&third, "the third connection to be closed").await;
    // The first two were admitted and stay open.
    for connection in &held {
        assert!(!closed(connection));
    }
    // The query listener has its own cap.
    let (status, _) = fanin.get("/healthz").await;
    assert_eq!(status, 200);
    // A slot comes back when a connection goes.
    drop(held);
    eventually(Duration::from_secs(10), "a slot for a new client", || async {
        let body = export("good").counter("requests", 1, 10, 1).build().encode_to_vec();
        let mut connection = connect(fanin.addresses.http).await;
        let head = format!(
            "POST /v1/metrics HTTP/1.1\r\nhost: fanin\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        connection.write_all(head.as_bytes()).await.ok()?;
        connection.write_all(&body).await.ok()?;
        let mut answer = String::new();
        connection.read_to_string(&mut answer).await.ok()?;
        answer.starts_with("HTTP/1.1 200").then_some(())
    })
    .await;
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_headers_are_cut_off_while_a_good_client_exports() {
    let fanin = start_with(|config| {
        config.connections.header_timeout = Duration::from_millis(300);
    })
    .await;
    let mut slow = connect(fanin.addresses.http).await;
    slow.write_all(b"POST /v1/metrics HTTP/1.1\r\nhost: fa")
        .await
        .expect("half a header");
    good_export(&fanin, 10).await;
    wait_closed(&slow, "the slow-header connection to be closed").await;
    good_export(&fanin, 20).await;
    assert_eq!(fanin.values("requests").await, vec![serde_json::json!(20)]);
    fanin.stop().await;
}

/// Connections opened only to fill the cap, which never send a byte, are closed after the
/// header timeout, long before the idle timeout; a client that exports keeps its own.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_that_never_speaks_is_closed_after_the_header_timeout() {
    let fanin = start_with(|config| {
        config.connections.header_timeout = Duration::from_millis(300);
        config.connections.idle_timeout = Duration::from_secs(3600);
        config.receivers.otlp.grpc.max_connections = NonZeroUsize::new(4).expect("non-zero");
    })
    .await;
    let mut client = fanin.grpc_client().await;
    let export = |time| export("w1").counter("requests", 1, time, 1).build();
    client.export(export(10)).await.expect("an export");
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(connect(fanin.addresses.grpc).await);
    }
    for connection in &silent {
        wait_closed(connection, "a silent connection to be closed").await;
    }
    // The places are free again, and the exporting client's connection was kept.
    let newcomer = fanin.export_grpc(export(20)).await;
    assert!(newcomer.is_ok(), "{newcomer:?}");
    client
        .export(export(30))
        .await
        .expect("the first client's channel still works");
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let fanin = start_with(|config| {
        config.connections.idle_timeout = Duration::from_millis(300);
    })
    .await;
    // Over gRPC's listener (HTTP/2), where no header timeout applies.
    let silent = connect(fanin.addresses.grpc).await;
    good_export(&fanin, 10).await;
    wait_closed(&silent, "the silent connection to be closed").await;
    // The gRPC listener still takes exports.
    let response = fanin
        .export_grpc(export("w1").counter("requests", 1, 10, 1).build())
        .await;
    assert!(response.is_ok(), "{response:?}");
    fanin.stop().await;
}
