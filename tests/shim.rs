//! `fanin::shim` in one process against a real fanin: each transport delivers the worker's
//! identity and values; the global provider is taken only when nobody else holds it; a shut
//! down shim records nothing. Forked workers are in tests/fork.rs.

// Tests may panic on what they expect: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{TestFanin, start_with};
use fanin::shim::{Protocol, Shim, ShimError};
use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider;
use serde_json::json;

fn shim(endpoint: &str, protocol: Protocol) -> Shim {
    Shim::builder()
        .service_name("shim-test")
        .endpoint(endpoint)
        .protocol(protocol)
        .attribute(KeyValue::new("deployment.environment", "test"))
        // A user attribute cannot take the worker's identity away.
        .attribute(KeyValue::new("service.instance.id", "everyone"))
        .build()
        .expect("valid settings")
}

/// Runs blocking shim calls off the test's runtime, as an async application would.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work)
        .await
        .expect("blocking task")
}

async fn start_with_socket(name: &str) -> (TestFanin, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("fanin-shim-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let socket = dir.join("fanin.sock");
    let path = socket.clone();
    let fanin = start_with(move |config| config.receivers.otlp.unix.path = Some(path)).await;
    (fanin, socket)
}

#[tokio::test(flavor = "multi_thread")]
async fn each_transport_delivers_the_workers_identity_and_values() {
    let (fanin, socket) = start_with_socket("transports").await;
    let targets = [
        ("grpc", fanin.grpc_url(), Protocol::Grpc),
        ("http", fanin.http_url(), Protocol::HttpProtobuf),
        ("unix", format!("unix:{}", socket.display()), Protocol::Grpc),
    ];
    for (name, endpoint, protocol) in targets {
        let shim = shim(&endpoint, protocol);
        let counter = shim.instrument("shim-test", move |meter| {
            meter.u64_counter(format!("shim.{name}.requests")).build()
        });
        blocking(move || {
            counter.get().add(5, &[KeyValue::new("route", "/a")]);
            counter.get().add(2, &[KeyValue::new("route", "/a")]);
            shim.shutdown()
        })
        .await
        .unwrap_or_else(|error| panic!("{name}: {error}"));

        let series = fanin.series(&format!("shim.{name}.requests")).await;
        assert_eq!(series.len(), 1, "{name}: {series:?}");
        assert_eq!(series[0]["value"], json!(7), "{name}");
        let instance = &series[0]["instance"];
        let pid = std::process::id();
        let host = nix::unistd::gethostname().expect("hostname");
        let host = host.to_str().expect("utf-8 hostname");
        assert_eq!(
            instance["service.instance.id"],
            json!(format!("{host}-pid-{pid}"))
        );
        assert_eq!(instance["process.pid"], json!(pid));
        assert_eq!(instance["host.name"], json!(host));
        assert_eq!(instance["service.name"], json!("shim-test"));
        assert_eq!(instance["deployment.environment"], json!("test"));
        // One process, one identity: every shim run here is the same instance, last
        // written over this transport.
        let (_, body) = fanin.get("/api/v1/instances").await;
        assert_eq!(
            body["instances"].as_array().map(Vec::len),
            Some(1),
            "{body}"
        );
        assert_eq!(body["instances"][0]["writer"]["transport"], json!(name));
    }
    let (_, body) = fanin.get("/api/v1/instances").await;
    assert_eq!(
        body["instances"][0]["writer"]["pid"],
        json!(std::process::id()),
        "the kernel named the unix peer"
    );
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shut_down_shim_hands_out_meters_that_record_nothing() {
    let (fanin, _socket) = start_with_socket("closed").await;
    let shim = shim(&fanin.grpc_url(), Protocol::Grpc);
    let closed = shim.clone();
    blocking(move || {
        closed
            .meter("shim-test")
            .u64_counter("before")
            .build()
            .add(1, &[]);
        closed.shutdown()?;
        // No panic, no export, no pipeline rebuilt behind the caller's back.
        closed
            .meter("shim-test")
            .u64_counter("after")
            .build()
            .add(1, &[]);
        closed.force_flush()
    })
    .await
    .expect("flush after shutdown is a no-op");
    assert_eq!(fanin.values("before").await, vec![json!(1)]);
    let (status, _) = fanin.get("/api/v1/series?metric=after").await;
    assert_eq!(status, 404, "nothing recorded after shutdown reached fanin");
    assert!(matches!(shim.provider(), Err(ShimError::Build(_))));
    fanin.stop().await;
}

/// The only test in this binary that touches the process-wide global provider.
#[tokio::test(flavor = "multi_thread")]
async fn the_global_provider_is_taken_only_when_nobody_else_set_one() {
    // install_global recognises "unset" as the SDK's zero-sized no-op provider.
    assert_eq!(
        std::mem::size_of_val(&*opentelemetry::global::meter_provider()),
        0
    );
    let (fanin, _socket) = start_with_socket("global").await;
    let shim = shim(&fanin.grpc_url(), Protocol::Grpc);
    shim.install_global().expect("nobody set a global");
    shim.install_global()
        .expect("replacing its own global is fine");
    let flushed = shim.clone();
    blocking(move || {
        let counter = opentelemetry::global::meter("lib")
            .u64_counter("via.global")
            .build();
        counter.add(3, &[]);
        flushed.force_flush()
    })
    .await
    .expect("flush");
    let series = fanin.series("via.global").await;
    assert_eq!(series[0]["value"], json!(3));
    assert_eq!(series[0]["instance"]["service.name"], json!("shim-test"));

    // Someone else (auto-instrumentation, say) installs a provider: the shim leaves it.
    let other = opentelemetry_sdk::metrics::SdkMeterProvider::builder().build();
    opentelemetry::global::set_meter_provider(other.clone());
    let error = shim.install_global().expect_err("taken");
    assert!(matches!(error, ShimError::GlobalTaken));
    assert!(error.to_string().contains("Shim::meter"), "{error}");
    // Meters from the shim itself still work.
    let meter = shim.meter_with_scope(opentelemetry::InstrumentationScope::builder("x").build());
    drop(meter);
    blocking(move || shim.shutdown()).await.expect("shutdown");
    fanin.stop().await;
}
