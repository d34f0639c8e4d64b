//! `GET /metrics`: the aggregated series in Prometheus text format 0.0.4, checked line by line
//! and by `promtool check metrics` when promtool is installed (`.ci/run` installs it).

// Tests may panic on what they expect: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{TestFanin, export, start};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, metric::Data, number_data_point,
};

async fn send(fanin: &TestFanin, request: common::Export) {
    let response = fanin.export_grpc(request.build()).await.expect("export");
    assert_eq!(response.partial_success, None);
}

async fn scrape(fanin: &TestFanin) -> (String, String) {
    let response = reqwest::get(format!("http://{}/metrics", fanin.addresses.query))
        .await
        .expect("scrape answered");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("ASCII")
        .to_string();
    (content_type, response.text().await.expect("page"))
}

/// A gauge whose description and point attribute need escaping.
fn awkward_gauge() -> Metric {
    Metric {
        name: "room.temperature".into(),
        description: "Temperature \\ in \"rooms\"\nper sensor".into(),
        unit: "Cel".into(),
        data: Some(Data::Gauge(Gauge {
            data_points: vec![NumberDataPoint {
                attributes: vec![common::string_attr("sensor.name", "north \"wing\"\\1")],
                time_unix_nano: 10,
                value: Some(number_data_point::Value::AsDouble(21.5)),
                ..Default::default()
            }],
        })),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_page_is_valid_and_carries_the_totals() {
    let fanin = start().await;
    for (worker, value) in [("w1", 5), ("w2", 10)] {
        let request = export(worker)
            .counter_with("http.requests", &[("http.route", "/a")], 1, 10, value)
            .up_down("http.inflight", 1, 10, 128)
            .histogram("http.duration", 1, 10, &[0.1, 1.0], &[1, 2, 3])
            .exp_histogram("payload.size", 1, 10, 0, &[1, 2])
            .summary("legacy.latency", 10, 4, 2.0, &[(0.5, 0.4)]);
        send(&fanin, request).await;
    }
    send(&fanin, export("w1").metric(awkward_gauge())).await;

    let (content_type, page) = scrape(&fanin).await;
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    for line in [
        "# TYPE http_requests_total counter",
        r#"http_requests_total{http_route="/a",service_name="app"} 15"#,
        "# TYPE http_inflight gauge",
        r#"http_inflight{service_name="app"} 256"#,
        "# TYPE http_duration_seconds histogram",
        r#"http_duration_seconds_bucket{le="0.1",service_name="app"} 2"#,
        r#"http_duration_seconds_bucket{le="1",service_name="app"} 6"#,
        r#"http_duration_seconds_bucket{le="+Inf",service_name="app"} 12"#,
        r#"http_duration_seconds_sum{service_name="app"} 12"#,
        r#"http_duration_seconds_count{service_name="app"} 12"#,
        "# TYPE payload_size_bytes histogram",
        r#"payload_size_bytes_bucket{le="0",service_name="app"} 0"#,
        r#"payload_size_bytes_bucket{le="2",service_name="app"} 2"#,
        r#"payload_size_bytes_bucket{le="4",service_name="app"} 6"#,
        r#"payload_size_bytes_bucket{le="+Inf",service_name="app"} 6"#,
        "# TYPE legacy_latency summary",
        r#"legacy_latency_sum{service_name="app"} 4"#,
        r#"legacy_latency_count{service_name="app"} 8"#,
        r#"# HELP room_temperature_celsius Temperature \\ in "rooms"\nper sensor"#,
        r#"room_temperature_celsius{sensor_name="north \"wing\"\\1",service_name="app"} 21.5"#,
        "# TYPE fanin_requests_total counter",
        r#"fanin_requests_total{transport="grpc"} 3"#,
        r#"fanin_points_accepted_total 11"#,
        r#"fanin_instances{state="live"} 2"#,
        r#"fanin_streams 11"#,
    ] {
        assert!(
            page.lines().any(|candidate| candidate == line),
            "missing {line:?} in:\n{page}"
        );
    }
    assert!(page.ends_with('\n'));

    match promtool_check(&page) {
        Some((true, _)) => {}
        Some((false, output)) => {
            panic!("promtool check metrics failed:\n{output}\n--- page ---\n{page}")
        }
        None => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run promtool; .ci/run installs it"
            );
            eprintln!("promtool not installed: skipped `promtool check metrics`");
        }
    }
    fanin.stop().await;
}

/// Runs `promtool check metrics` on the page: `None` when promtool is not installed.
fn promtool_check(page: &str) -> Option<(bool, String)> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(page.as_bytes())
        .expect("feed promtool");
    let output = child.wait_with_output().expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Some((output.status.success(), text))
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_store_still_serves_fanins_own_metrics() {
    let fanin = start().await;
    let (_, page) = scrape(&fanin).await;
    assert!(
        page.contains("# TYPE fanin_points_accepted_total counter\n"),
        "{page}"
    );
    assert!(page.contains("fanin_points_accepted_total 0\n"), "{page}");
    if let Some((ok, output)) = promtool_check(&page) {
        assert!(ok, "{output}");
    }
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn names_that_collide_keep_the_page_valid() {
    let fanin = start().await;
    // "a.b" and "a_b" both become a_b: only the first (in name order) is written.
    send(
        &fanin,
        export("w1").gauge("a.b", 10, 1.0).gauge("a_b", 10, 2.0),
    )
    .await;
    let (_, page) = scrape(&fanin).await;
    assert_eq!(page.matches("# TYPE a_b gauge").count(), 1, "{page}");
    assert!(page.contains("a_b{service_name=\"app\"} 1\n"), "{page}");
    fanin.stop().await;
}

/// A histogram point whose labels sort on both sides of `le`.
fn labelled_histogram() -> Metric {
    Metric {
        name: "rpc.duration".into(),
        unit: "s".into(),
        data: Some(Data::Histogram(Histogram {
            data_points: vec![HistogramDataPoint {
                attributes: vec![
                    common::string_attr("code", "ok"),
                    common::string_attr("zone", "b"),
                ],
                start_time_unix_nano: 1,
                time_unix_nano: 10,
                count: 3,
                sum: Some(7.0),
                bucket_counts: vec![1, 2],
                explicit_bounds: vec![5.0],
                ..Default::default()
            }],
            aggregation_temporality: 2,
        })),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn le_takes_its_place_among_the_labels() {
    let fanin = start().await;
    send(&fanin, export("w1").metric(labelled_histogram())).await;
    let (_, page) = scrape(&fanin).await;
    for line in [
        r#"rpc_duration_seconds_bucket{code="ok",le="5",service_name="app",zone="b"} 1"#,
        r#"rpc_duration_seconds_bucket{code="ok",le="+Inf",service_name="app",zone="b"} 3"#,
        r#"rpc_duration_seconds_sum{code="ok",service_name="app",zone="b"} 7"#,
        r#"rpc_duration_seconds_count{code="ok",service_name="app",zone="b"} 3"#,
    ] {
        assert!(
            page.lines().any(|candidate| candidate == line),
            "missing {line:?} in:\n{page}"
        );
    }
    if let Some((ok, output)) = promtool_check(&page) {
        assert!(ok, "{output}");
    }
    fanin.stop().await;
}

/// More groups than one batch of the renderer builds (`prometheus::BATCH_GROUPS`), and a
/// page many chunks long: every family is there once, with every group's total.
#[tokio::test(flavor = "multi_thread")]
async fn a_page_larger_than_a_batch_is_whole() {
    let fanin = start().await;
    let per_metric = fanin::query::prometheus::BATCH_GROUPS * 3 / 5;
    for (worker, value) in [("w1", 2), ("w2", 3)] {
        for name in ["wide.a", "wide.b"] {
            send(
                &fanin,
                export(worker).wide_counter(name, "k", per_metric, value),
            )
            .await;
        }
    }
    let (_, page) = scrape(&fanin).await;
    assert!(
        page.len() > 10 * fanin::query::prometheus::CHUNK,
        "{} bytes",
        page.len()
    );
    for family in ["wide_a_total", "wide_b_total"] {
        assert_eq!(
            page.matches(&format!("# TYPE {family} counter\n")).count(),
            1
        );
        let values: Vec<&str> = page
            .lines()
            .filter(|line| line.starts_with(&format!("{family}{{")))
            .filter_map(|line| line.rsplit(' ').next())
            .collect();
        assert_eq!(values.len(), per_metric, "{family}: one line per group");
        assert!(
            values.iter().all(|value| *value == "5"),
            "{family}: 2 + 3 everywhere"
        );
    }
    assert!(
        page.contains("\nfanin_streams 120000\n") || per_metric != 30_000,
        "{}",
        &page[..2000]
    );
    fanin.stop().await;
}

/// The Prometheus server (Debian's `prometheus` package) scraping fanin's `/metrics` over
/// TLS with the readers' bearer token (`authorization`, `tls_config`) records the totals;
/// a job with another token records `up` 0. Skipped when prometheus is not installed.
#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_over_tls_with_a_bearer_token() {
    let pki = common::pki::Pki::new("prometheus");
    let tls = pki.server_files("query");
    let fanin = common::start_with(|config| {
        config.query.tls = tls;
        config.query.auth.token = Some(fanin::config::Secret("prom-reader-81".into()));
    })
    .await;
    send(
        &fanin,
        export("w1").counter_with("http.requests", &[("http.route", "/a")], 1, 10, 1234),
    )
    .await;

    let job = |name: &str, token: &str| {
        format!(
            "  - job_name: {name}\n    scheme: https\n    scrape_interval: 1s\n    \
             authorization: {{type: Bearer, credentials: {token}}}\n    \
             tls_config: {{ca_file: {ca}, server_name: localhost}}\n    \
             static_configs: [{{targets: [\"127.0.0.1:{port}\"]}}]\n",
            ca = pki.ca_file().display(),
            port = fanin.addresses.query.port(),
        )
    };
    let yaml = format!(
        "scrape_configs:\n{}{}",
        job("fanin", "prom-reader-81"),
        job("wrong_token", "not-the-token")
    );
    let Some(prometheus) = common::Prometheus::start(&pki.dir, &yaml, &[]).await else {
        return;
    };
    let promql = |query: &'static str| prometheus.query(query);
    let total = common::eventually(
        std::time::Duration::from_secs(60),
        "prometheus scrapes fanin",
        || promql("http_requests_total{job=\"fanin\",http_route=\"/a\"}"),
    )
    .await;
    assert_eq!(total, "1234");
    assert_eq!(promql("up{job=\"fanin\"}").await.as_deref(), Some("1"));
    let refused = common::eventually(
        std::time::Duration::from_secs(60),
        "prometheus tries the wrong token",
        || promql("up{job=\"wrong_token\"}"),
    )
    .await;
    assert_eq!(refused, "0", "a scrape with another token fails");
    let stats = common::pki::https_client(&pki.ca_pem(), None)
        .get(
            fanin.addresses.query,
            "/api/v1/stats",
            Some("prom-reader-81"),
        )
        .await
        .expect("stats over TLS")
        .json();
    assert!(
        stats["unauthenticated"]["query"].as_u64() >= Some(1),
        "{stats}"
    );
    drop(prometheus);
    fanin.stop().await;
}
