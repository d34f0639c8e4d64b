//! The unix-socket receiver: OTLP/gRPC over a unix domain socket, the peer's pid taken from
//! the kernel, recorded as the writer and checked against the resource's `process.pid`;
//! socket mode; stale sockets replaced, live ones and other files left alone.

// Tests may panic on what they expect: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{export, int_attr, start_with, string_attr, test_config};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use serde_json::json;
use tonic::transport::{Channel, Endpoint};

/// A fresh directory under the system temp dir, removed by the caller's `cleanup`.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fanin-unix-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// fanin listening on `socket` too, with `edit` applied to its config.
async fn start_on_socket(
    socket: &Path,
    edit: impl FnOnce(&mut fanin::Config),
) -> common::TestFanin {
    let path = socket.to_path_buf();
    start_with(move |config| {
        config.receivers.otlp.unix.path = Some(path);
        edit(config);
    })
    .await
}

async fn unix_client(path: &Path) -> MetricsServiceClient<Channel> {
    let path = path.to_path_buf();
    // The URI is required by the API and unused: the connector dials the socket.
    let channel = Endpoint::from_static("http://fanin.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .expect("connect over the unix socket");
    MetricsServiceClient::new(channel)
}

#[tokio::test(flavor = "multi_thread")]
async fn exports_over_the_socket_record_the_peer_pid() {
    let dir = temp_dir("pid");
    let socket = dir.join("fanin.sock");
    let fanin = start_on_socket(&socket, |_| {}).await;
    assert_eq!(fanin.addresses.unix.as_deref(), Some(socket.as_path()));
    let mode = std::fs::metadata(&socket)
        .expect("socket exists")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);

    let mut client = unix_client(&socket).await;
    client
        .export(export("w1").counter("requests", 1, 10, 7).build())
        .await
        .expect("export over the unix socket");
    assert_eq!(fanin.values("requests").await, vec![json!(7)]);
    let (_, body) = fanin.get("/api/v1/instances").await;
    let writer = &body["instances"][0]["writer"];
    assert_eq!(writer["transport"], json!("unix"));
    assert_eq!(writer["pid"], json!(std::process::id()));
    assert_eq!(fanin.stats().await["requests"]["unix"], json!(1));

    fanin.stop().await;
    assert!(!socket.exists(), "the socket file is removed on shutdown");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_socket_is_replaced_and_a_live_one_is_not_taken() {
    let dir = temp_dir("stale");
    let socket = dir.join("fanin.sock");
    // A listener that went away without removing its file: the file stays, nobody listens.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    assert!(socket.exists());
    let fanin = start_on_socket(&socket, |_| {}).await;
    let mut client = unix_client(&socket).await;
    client
        .export(export("w1").gauge("up", 10, 1.0).build())
        .await
        .expect("export over the replaced socket");

    // fanin now listens there: a second one must refuse rather than steal it.
    let mut config = test_config();
    config.receivers.otlp.unix.path = Some(socket.clone());
    let error = fanin::App::bind(config)
        .await
        .err()
        .expect("a live socket is not taken over");
    assert!(
        error
            .to_string()
            .contains("another process is listening on it"),
        "{error}"
    );
    assert_eq!(fanin.values("up").await, vec![json!(1.0)]);
    fanin.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_that_is_not_a_socket_is_never_removed() {
    let dir = temp_dir("file");
    let path = dir.join("precious.txt");
    std::fs::write(&path, "keep me").expect("write");
    let mut config = test_config();
    config.receivers.otlp.unix.path = Some(path.clone());
    let error = fanin::App::bind(config).await.err().expect("not a socket");
    assert!(error.to_string().contains("is not a socket"), "{error}");
    assert_eq!(
        std::fs::read_to_string(&path).expect("still there"),
        "keep me"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Exports one counter point for a resource that carries `pid` as its `process.pid`; the
/// answer's rejected points and message.
async fn export_claiming(
    client: &mut MetricsServiceClient<Channel>,
    instance: &str,
    pid: KeyValue,
) -> (i64, String) {
    let request = export(instance)
        .resource_attr(pid)
        .counter("requests", 1, 10, 7)
        .build();
    let answer = client.export(request).await.expect("export answered");
    answer
        .into_inner()
        .partial_success
        .map(|partial| (partial.rejected_data_points, partial.error_message))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resource_naming_another_pid_is_refused() {
    let dir = temp_dir("verify");
    let socket = dir.join("fanin.sock");
    let fanin = start_on_socket(&socket, |_| {}).await;
    let mut client = unix_client(&socket).await;
    let own = i64::from(std::process::id());

    let (rejected, message) =
        export_claiming(&mut client, "me", int_attr("process.pid", own)).await;
    assert_eq!((rejected, message.as_str()), (0, ""));
    let other = own + 1_000_000;
    let (rejected, message) =
        export_claiming(&mut client, "spoof", int_attr("process.pid", other)).await;
    assert_eq!(rejected, 1, "{message}");
    assert!(
        message.contains(&format!(
            "process.pid {other}, but the process that connected"
        )),
        "{message}"
    );
    assert!(message.contains(&format!("is pid {own}")), "{message}");
    let (rejected, message) = export_claiming(
        &mut client,
        "text",
        string_attr("process.pid", &own.to_string()),
    )
    .await;
    assert_eq!(rejected, 1, "a pid must be an integer: {message}");
    assert!(message.contains("not an integer"), "{message}");

    // Every process.pid pair is checked, not only the one the resource keeps.
    let request = export("twice")
        .resource_attr(int_attr("process.pid", own))
        .resource_attr(int_attr("process.pid", other))
        .counter("requests", 1, 10, 7)
        .build();
    let answer = client.export(request).await.expect("export answered");
    let refused = answer
        .into_inner()
        .partial_success
        .map(|p| p.rejected_data_points);
    assert_eq!(refused, Some(1));

    // Only the honest resource's point is stored; the refusals are counted.
    assert_eq!(fanin.values("requests").await, vec![json!(7)]);
    assert_eq!(
        fanin.stats().await["points"]["rejected"]["pid_mismatch"],
        json!(3)
    );
    // Over TCP the kernel names no process: the pid is not checked there.
    let answer = fanin
        .export_grpc(
            export("tcp")
                .resource_attr(int_attr("process.pid", other))
                .counter("requests", 1, 10, 5)
                .build(),
        )
        .await
        .expect("export over TCP");
    assert_eq!(answer.partial_success, None);
    assert_eq!(fanin.total("metric=requests").await, json!(12));
    fanin.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_pid_off_takes_any_pid() {
    let dir = temp_dir("noverify");
    let socket = dir.join("fanin.sock");
    let fanin = start_on_socket(&socket, |config| {
        config.receivers.otlp.unix.verify_pid = false
    })
    .await;
    let mut client = unix_client(&socket).await;
    let other = i64::from(std::process::id()) + 1_000_000;
    let (rejected, message) =
        export_claiming(&mut client, "elsewhere", int_attr("process.pid", other)).await;
    assert_eq!((rejected, message.as_str()), (0, ""));
    assert_eq!(fanin.values("requests").await, vec![json!(7)]);
    fanin.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
