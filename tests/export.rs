//! The totals sent upstream: Prometheus remote-write into a real Prometheus (Debian's
//! package, `--web.enable-remote-write-receiver`), and OTLP into a second fanin acting as
//! the upstream, through worker restarts, two sidecars, and an upstream that is down and
//! then back.

// Tests may panic on what they expect: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Killed, TestFanin, eventually, export, free_port, start_with};
use fanin::config::{Endpoint, ExportCompression, ExportProtocol, Scalar};
use fanin::model::AttrValue;
use serde_json::{Value as Json, json};

const WAIT: Duration = Duration::from_secs(60);

fn endpoint(url: &str) -> Option<Endpoint> {
    Some(Endpoint(url.parse().expect("URL")))
}

/// The one series of `metric` aggregated over everything, once the metric has arrived.
async fn total(fanin: &TestFanin, metric: &str) -> Option<Json> {
    let (status, answer) = fanin.get(&format!("/api/v1/query?metric={metric}")).await;
    let series = answer["series"].as_array().filter(|_| status == 200)?;
    (series.len() == 1).then(|| series[0].clone())
}

async fn send(fanin: &TestFanin, request: common::Export) {
    let response = fanin.export_grpc(request.build()).await.expect("export");
    assert_eq!(response.partial_success, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn remote_write_into_prometheus_matches_the_query_api_through_worker_restarts() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("remote-write-{}", std::process::id()));
    let flags = ["--web.enable-remote-write-receiver"];
    let Some(prometheus) = common::Prometheus::start(&dir, "global: {}\n", &flags).await else {
        return;
    };
    let port = prometheus.port;
    let fanin = start_with(|config| {
        let remote_write = &mut config.exporters.prometheus_remote_write;
        remote_write.url = endpoint(&format!("http://127.0.0.1:{port}/api/v1/write"));
        remote_write.interval = Duration::from_millis(300);
        remote_write
            .external_labels
            .insert("fanin_instance".into(), "sidecar-test".into());
    })
    .await;

    // Two workers; then w1 restarts (a new start time, its counter from 0 again), w2 goes on.
    let step = |worker: &str, start: u64, time: u64, requests: i64| {
        export(worker)
            .counter_with(
                "http.requests",
                &[("http.route", "/a")],
                start,
                time,
                requests,
            )
            .histogram(
                "http.duration",
                start,
                time,
                &[0.1, 1.0],
                &[1, 2, u64::try_from(requests).unwrap()],
            )
    };
    send(&fanin, step("w1", 1, 10, 100)).await;
    send(&fanin, step("w2", 1, 10, 40)).await;
    let prometheus = &prometheus;
    let wait_for = |expected: &'static str| async move {
        eventually(
            WAIT,
            &format!("prometheus has the total {expected}"),
            || async {
                let value = prometheus
                    .query("sum(http_requests_total{http_route=\"/a\"})")
                    .await?;
                (value == expected).then_some(())
            },
        )
        .await;
    };
    wait_for("140").await;
    send(&fanin, step("w1", 50, 60, 5)).await;
    send(&fanin, step("w2", 1, 60, 45)).await;
    let total = fanin.total("metric=http.requests").await;
    assert_eq!(total, json!(150), "fanin's own total through the restart");
    wait_for("150").await;

    let query = |q: &'static str| prometheus.query(q);
    assert_eq!(
        query("resets(http_requests_total[10m])").await.as_deref(),
        Some("0"),
        "upstream never sees the total go down"
    );
    let count =
        fanin.query_series("metric=http.duration").await[0]["histogram"]["count"].to_string();
    eventually(WAIT, "the histogram count arrives", || async {
        let value = query("sum({__name__=~\"http_duration.*_count\"})").await?;
        (value == count).then_some(())
    })
    .await;
    assert_eq!(
        query("count(http_requests_total{fanin_instance=\"sidecar-test\"})")
            .await
            .as_deref(),
        Some("1"),
        "one series, with the sidecar's label"
    );
    let stats = fanin.stats().await;
    let figures = &stats["exporters"]["prometheus_remote_write"];
    assert!(figures["batches_sent"].as_u64() >= Some(2), "{stats}");
    assert_eq!(figures["batches_failed"], json!(0), "{stats}");
    fanin.stop().await;
}

/// A sidecar exporting over OTLP to `upstream` as `instance`.
async fn sidecar(upstream: &TestFanin, instance: &str, protocol: ExportProtocol) -> TestFanin {
    let endpoint = match protocol {
        ExportProtocol::Grpc => upstream.grpc_url(),
        ExportProtocol::HttpProtobuf => format!("http://{}", upstream.addresses.http),
    };
    start_with(|config| {
        let otlp = &mut config.exporters.otlp;
        otlp.endpoint = self::endpoint(&endpoint);
        otlp.protocol = protocol;
        otlp.compression = ExportCompression::Gzip;
        otlp.interval = Duration::from_millis(200);
        otlp.resource.insert(
            "service.instance.id".into(),
            Scalar(AttrValue::Str(instance.to_string())),
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn two_sidecars_are_two_writers_upstream_and_their_sum_is_the_truth() {
    let upstream = common::start().await;
    let a = sidecar(&upstream, "sidecar-a", ExportProtocol::Grpc).await;
    let b = sidecar(&upstream, "sidecar-b", ExportProtocol::HttpProtobuf).await;
    // Identical workers behind each sidecar.
    for side in [&a, &b] {
        for (worker, value) in [("w1", 30), ("w2", 12)] {
            send(
                side,
                export(worker)
                    .counter_with("jobs.done", &[("queue", "mail")], 1, 10, value)
                    .up_down("jobs.running", 1, 10, 3)
                    .histogram("job.seconds", 1, 10, &[1.0], &[2, 1]),
            )
            .await;
        }
    }
    eventually(WAIT, "both sidecars' totals upstream", || async {
        let series = total(&upstream, "jobs.done").await?;
        (series["value"] == json!(84)).then_some(())
    })
    .await;
    let running = upstream.query_series("metric=jobs.running").await;
    assert_eq!(
        running[0]["value"],
        json!(12),
        "live totals add up: {running:?}"
    );
    let histogram = upstream.query_series("metric=job.seconds").await;
    assert_eq!(
        histogram[0]["histogram"]["count"],
        json!(12),
        "{histogram:?}"
    );

    let (_, collisions) = upstream.get("/api/v1/collisions").await;
    assert_eq!(collisions["collisions"], json!([]), "{collisions}");
    let (_, instances) = upstream.get("/api/v1/instances").await;
    let ids: Vec<&Json> = instances["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|instance| &instance["attributes"]["service.instance.id"])
        .collect();
    assert_eq!(
        ids,
        [&json!("sidecar-a"), &json!("sidecar-b")],
        "{instances}"
    );
    // The workers' common resource attributes travel on the sidecar's resource.
    let service = &instances["instances"][0]["attributes"]["service.name"];
    assert!(service.is_string(), "{instances}");

    // A worker behind a restarts: a's total stays monotonic, so upstream sees no reset.
    send(
        &a,
        export("w1").counter_with("jobs.done", &[("queue", "mail")], 50, 60, 1),
    )
    .await;
    eventually(WAIT, "the restart's count upstream", || async {
        let series = total(&upstream, "jobs.done").await?;
        (series["value"] == json!(85)).then_some(())
    })
    .await;
    let (_, collisions) = upstream.get("/api/v1/collisions").await;
    assert_eq!(collisions["collisions"], json!([]), "{collisions}");
    let streams = upstream.series("jobs.done").await;
    for stream in &streams {
        assert_eq!(stream["runs"], json!(1), "one start time: {stream}");
        assert_eq!(stream["resets"], json!(0), "{stream}");
    }
    a.stop().await;
    b.stop().await;
    upstream.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_is_down_then_back_gets_the_latest_totals() {
    let port = free_port();
    let side = start_with(|config| {
        let otlp = &mut config.exporters.otlp;
        otlp.endpoint = endpoint(&format!("http://127.0.0.1:{port}"));
        otlp.interval = Duration::from_millis(100);
        otlp.timeout = Duration::from_secs(2);
        otlp.queue_size = std::num::NonZeroUsize::new(3).unwrap();
    })
    .await;
    send(&side, export("w1").counter("jobs.done", 1, 10, 7)).await;
    // Upstream is down: attempts fail, are retried with back-off, the queue stays bounded.
    let stats = eventually(WAIT, "retries and a full queue", || async {
        let stats = side.stats().await;
        let figures = stats["exporters"]["otlp"].clone();
        (figures["retries"].as_u64() >= Some(2) && figures["batches_dropped"].as_u64() >= Some(1))
            .then_some(figures)
    })
    .await;
    assert!(stats["queued"].as_u64() <= Some(3), "{stats}");
    assert_eq!(stats["batches_sent"], json!(0), "{stats}");
    send(&side, export("w1").counter("jobs.done", 1, 20, 9)).await;

    // Upstream comes back on that port.
    let upstream = start_with(|config| {
        config.receivers.otlp.grpc.listen = format!("127.0.0.1:{port}").parse().unwrap();
    })
    .await;
    eventually(WAIT, "the latest total upstream", || async {
        let series = total(&upstream, "jobs.done").await?;
        (series["value"] == json!(9)).then_some(())
    })
    .await;
    // The exporter counts a batch as sent when the answer comes back, which may be after
    // upstream has stored it.
    let figures = eventually(WAIT, "the sent batch counted", || async {
        let figures = side.stats().await["exporters"]["otlp"].clone();
        (figures["batches_sent"].as_u64() >= Some(1)).then_some(figures)
    })
    .await;
    assert_eq!(figures["batches_failed"], json!(0), "{figures}");
    side.stop().await;
    upstream.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_permanent_refusal_drops_the_batch_and_is_counted() {
    // Upstream wants a token the sidecar does not send: UNAUTHENTICATED is not retried.
    let upstream = start_with(|config| {
        config.receivers.otlp.grpc.auth.token = Some(fanin::config::Secret("up-token".into()));
    })
    .await;
    let side = start_with(|config| {
        let otlp = &mut config.exporters.otlp;
        otlp.endpoint = endpoint(&upstream.grpc_url());
        otlp.interval = Duration::from_millis(100);
    })
    .await;
    send(&side, export("w1").counter("jobs.done", 1, 10, 7)).await;
    let figures = eventually(WAIT, "refused batches counted", || async {
        let figures = side.stats().await["exporters"]["otlp"].clone();
        (figures["batches_failed"].as_u64() >= Some(2)).then_some(figures)
    })
    .await;
    assert_eq!(figures["retries"], json!(0), "{figures}");
    assert_eq!(figures["batches_sent"], json!(0), "{figures}");
    assert!(upstream.stats().await["unauthenticated"]["grpc"].as_u64() >= Some(2));
    side.stop().await;
    upstream.stop().await;
}

/// Rotel, an independent OTLP implementation (`pip install rotel`, in a virtual environment
/// under target/), between a sidecar and an upstream fanin: what the sidecar sends over
/// OTLP/HTTP, Rotel takes, and passes on over gRPC, arrives whole.
#[tokio::test(flavor = "multi_thread")]
async fn rotel_takes_the_otlp_export_and_passes_it_on() {
    let agent = rotel_agent();
    let upstream = common::start().await;
    let (grpc_port, http_port) = (free_port(), free_port());
    let _rotel = Killed(
        Command::new(agent)
            .args([
                "start",
                "--exporter",
                "otlp",
                "--otlp-exporter-protocol",
                "grpc",
            ])
            .arg(format!("--otlp-grpc-endpoint=127.0.0.1:{grpc_port}"))
            .arg(format!("--otlp-http-endpoint=127.0.0.1:{http_port}"))
            .arg(format!("--otlp-exporter-endpoint={}", upstream.grpc_url()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rotel"),
    );
    let side = start_with(|config| {
        let otlp = &mut config.exporters.otlp;
        otlp.endpoint = endpoint(&format!("http://127.0.0.1:{http_port}"));
        otlp.protocol = ExportProtocol::HttpProtobuf;
        otlp.interval = Duration::from_millis(200);
    })
    .await;
    for (worker, value) in [("w1", 20), ("w2", 22)] {
        send(
            &side,
            export(worker)
                .counter_with("jobs.done", &[("queue", "mail")], 1, 10, value)
                .gauge("queue.depth", 10, 2.5),
        )
        .await;
    }
    eventually(WAIT, "the totals through rotel", || async {
        let series = total(&upstream, "jobs.done").await?;
        (series["value"] == json!(42)).then_some(())
    })
    .await;
    let depth = total(&upstream, "queue.depth")
        .await
        .expect("the gauge too");
    assert_eq!(depth["value"], json!(5.0), "{depth}");
    side.stop().await;
    upstream.stop().await;
}

/// The Rotel version the benchmarks compare with too (benches/compare.sh).
const ROTEL_VERSION: &str = "0.0.1a15";

/// `rotel-agent` from a virtual environment under target/, made once; without Python or
/// PyPI the test fails (it is never skipped).
fn rotel_agent() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let venv = target.join("rotel-venv");
    let python = venv.join("bin").join("python");
    let run = |command: &mut Command, what: &str| {
        let status = command
            .status()
            .unwrap_or_else(|error| panic!("{what}: {error}"));
        assert!(status.success(), "{what} failed: {status}");
    };
    if !python.is_file() {
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv",
        );
    }
    let locate =
        "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))";
    let found = |python: &std::path::Path| {
        Command::new(python)
            .args(["-c", locate])
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    let installed = Command::new(&python)
        .args([
            "-c",
            &format!(
                "import importlib.metadata as m; assert m.version('rotel') == '{ROTEL_VERSION}'"
            ),
        ])
        .status()
        .is_ok_and(|status| status.success());
    if !installed {
        run(
            Command::new(&python)
                .args(["-m", "pip", "install", "--quiet"])
                .arg(format!("rotel=={ROTEL_VERSION}")),
            "pip install rotel",
        );
    }
    std::path::PathBuf::from(found(&python).expect("rotel-agent in the rotel package"))
}

#[tokio::test(flavor = "multi_thread")]
async fn otlp_export_over_tls_with_a_token_on_both_protocols() {
    let pki = common::pki::Pki::new("export-tls");
    let tls = pki.server_files("upstream");
    let upstream = start_with(|config| {
        let otlp = &mut config.receivers.otlp;
        for listener in [&mut otlp.grpc, &mut otlp.http] {
            listener.tls = tls.clone();
            listener.auth.token = Some(fanin::config::Secret("up-7".into()));
        }
    })
    .await;
    let mut sidecars = Vec::new();
    for (instance, protocol, address) in [
        ("tls-grpc", ExportProtocol::Grpc, upstream.addresses.grpc),
        (
            "tls-http",
            ExportProtocol::HttpProtobuf,
            upstream.addresses.http,
        ),
    ] {
        let ca = pki.ca_file();
        let side = start_with(|config| {
            let otlp = &mut config.exporters.otlp;
            otlp.endpoint = endpoint(&format!("https://localhost:{}", address.port()));
            otlp.protocol = protocol;
            otlp.ca_file = Some(ca);
            otlp.interval = Duration::from_millis(200);
            otlp.headers.insert(
                "authorization".into(),
                fanin::config::Secret("Bearer up-7".into()),
            );
            otlp.resource.insert(
                "service.instance.id".into(),
                Scalar(AttrValue::Str(instance.to_string())),
            );
        })
        .await;
        send(&side, export("w1").counter("jobs.done", 1, 10, 21)).await;
        sidecars.push(side);
    }
    eventually(WAIT, "both sidecars' totals over TLS", || async {
        let series = total(&upstream, "jobs.done").await?;
        (series["value"] == json!(42)).then_some(())
    })
    .await;
    assert_eq!(
        upstream.stats().await["unauthenticated"],
        json!({"grpc": 0, "http": 0, "query": 0})
    );
    for side in sidecars {
        side.stop().await;
    }
    upstream.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn partial_success_from_upstream_is_counted_and_the_rest_delivered() {
    // Upstream keeps one stream at most: of two, it refuses one through partial_success.
    let upstream = start_with(|config| {
        config.limits.max_series = std::num::NonZeroUsize::new(1).unwrap();
    })
    .await;
    let side = start_with(|config| {
        let otlp = &mut config.exporters.otlp;
        otlp.endpoint = endpoint(&upstream.grpc_url());
        otlp.interval = Duration::from_millis(100);
    })
    .await;
    send(
        &side,
        export("w1")
            .counter_with("jobs.done", &[("queue", "mail")], 1, 10, 3)
            .counter_with("jobs.done", &[("queue", "sms")], 1, 10, 4),
    )
    .await;
    let figures = eventually(WAIT, "a partial success counted", || async {
        let figures = side.stats().await["exporters"]["otlp"].clone();
        (figures["points_rejected"].as_u64() >= Some(1)).then_some(figures)
    })
    .await;
    assert!(figures["batches_sent"].as_u64() >= Some(1), "{figures}");
    assert_eq!(
        figures["retries"],
        json!(0),
        "a partial success is not retried: {figures}"
    );
    assert_eq!(upstream.series("jobs.done").await.len(), 1);
    side.stop().await;
    upstream.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn at_shutdown_the_last_exports_go_upstream_and_point_attributes_stay_on_points() {
    let upstream = common::start().await;
    let side = start_with(|config| {
        let otlp = &mut config.exporters.otlp;
        otlp.endpoint = endpoint(&upstream.grpc_url());
        // Never within the test: only the batch sent at shutdown can carry the total.
        otlp.interval = Duration::from_secs(3600);
    })
    .await;
    // Every series has queue=mail, but it is a point attribute, not the resource's.
    send(
        &side,
        export("w1").counter_with("jobs.done", &[("queue", "mail")], 1, 10, 11),
    )
    .await;
    side.stop().await;
    let series = total(&upstream, "jobs.done")
        .await
        .expect("sent at shutdown");
    assert_eq!(series["value"], json!(11));
    let streams = upstream.series("jobs.done").await;
    assert_eq!(
        streams[0]["attributes"],
        json!({"queue": "mail"}),
        "{streams:?}"
    );
    assert!(streams[0]["instance"]["queue"].is_null(), "{streams:?}");
    assert_eq!(
        streams[0]["instance"]["service.name"],
        json!("app"),
        "{streams:?}"
    );
    upstream.stop().await;
}
