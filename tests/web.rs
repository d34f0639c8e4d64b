//! The page at `/`, driven in headless Chromium (Debian's `chromium`, which `.ci/run`
//! installs): real SDK workers exporting, the overview shows each of them and the exact
//! totals `/api/v1/query` gives; a collision shows with the fix; markup in a metric name
//! and in attribute values stays text (the DOM Chromium built is checked: no element and
//! no script came from them).
//!
//! Set `FANIN_SCREENSHOTS=DIR` to have the test save the overview and a metric page at
//! 1280×800 there (the ones under `docs/` were made so).

// Tests may panic on what they expect: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::TestFanin;
use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// Chromium, or `None` (skipped) outside CI; under `CI=true` a missing one fails.
fn chromium() -> Option<PathBuf> {
    let found = common::installed("chromium");
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run chromium; .ci/run installs it"
        );
        eprintln!("chromium not installed: skipped");
    }
    found
}

/// Chromium's headless run with `flags` on `url`; its stdout.
fn run_chromium(chromium: &Path, profile: &Path, flags: &[&str], url: &str) -> String {
    let output = Command::new("timeout")
        .arg("120")
        .arg(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(flags)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The DOM Chromium built for `url`, once its scripts ran, serialized.
fn dom(chromium: &Path, profile: &Path, url: &str) -> String {
    run_chromium(
        chromium,
        profile,
        &["--virtual-time-budget=2000", "--dump-dom"],
        url,
    )
}

/// The number of the render a page's `<main>` came from.
fn render_number(page: &str) -> u64 {
    let (_, rest) = page
        .split_once("data-render=\"")
        .unwrap_or_else(|| panic!("no render number: {page}"));
    rest.split('"')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number")
}

/// An SDK meter provider for worker `instance` of service `shop`, exporting over gRPC.
fn worker(fanin: &TestFanin, instance: &str, pid: i64) -> SdkMeterProvider {
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(fanin.grpc_url())
        .build()
        .expect("gRPC exporter");
    let resource = Resource::builder()
        .with_service_name("shop")
        .with_attributes([
            KeyValue::new("service.instance.id", instance.to_string()),
            KeyValue::new("process.pid", pid),
        ])
        .build();
    SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter).build())
        .with_resource(resource)
        .build()
}

async fn flush(provider: &SdkMeterProvider) {
    let provider = provider.clone();
    tokio::task::spawn_blocking(move || provider.force_flush())
        .await
        .expect("flush task")
        .expect("flushed");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_overview_shows_workers_exact_totals_collisions_and_no_injected_markup() {
    let Some(chromium) = chromium() else {
        return;
    };
    let fanin = common::start_with(|config| {
        config.query.history.step = Duration::from_millis(100);
    })
    .await;
    let profile = std::env::temp_dir().join(format!("fanin-chromium-{}", std::process::id()));

    // Two workers of the shop, set up right; a third and fourth share one identity (the
    // naive setup), so their streams collide.
    let hostile = "\"><img src=x onerror=\"document.title='pwned'\">";
    let mut providers = Vec::new();
    for (instance, pid, served) in [
        ("shop-1", 101, 40),
        ("shop-2", 102, 2),
        ("shared", 7, 5),
        ("shared", 7, 6),
    ] {
        let provider = worker(&fanin, instance, pid);
        let meter = provider.meter("shop");
        let requests = meter
            .u64_counter("http.requests")
            .with_unit("{request}")
            .build();
        requests.add(served, &[KeyValue::new("http.route", "/cart")]);
        let latency = meter.f64_histogram("http.latency").with_unit("s").build();
        for value in [0.002, 0.02, 0.2] {
            latency.record(value, &[KeyValue::new("note", hostile)]);
        }
        flush(&provider).await;
        providers.push(provider);
    }
    // A second round from the sharing pair: their runs advance side by side.
    for (provider, more) in providers[2..].iter().zip([1, 2]) {
        let requests = provider
            .meter("shop")
            .u64_counter("http.requests")
            .with_unit("{request}")
            .build();
        requests.add(more, &[KeyValue::new("http.route", "/cart")]);
        flush(provider).await;
    }
    // A metric name that is markup (no SDK sends one; a raw client can).
    let request = common::export("shop-1")
        .counter("<script>alert(1)</script>", 100, 200, 3)
        .build();
    fanin.export_grpc(request).await.expect("accepted");
    // Both streams of the pair collide, the histogram (whose attribute is the hostile
    // one) included, so the overview lists that attribute.
    common::eventually(WAIT, "both collisions", || async {
        let (_, found) = fanin.get("/api/v1/collisions").await;
        let metrics: Vec<&str> = found["collisions"]
            .as_array()?
            .iter()
            .filter_map(|collision| collision["metric"].as_str())
            .collect();
        (metrics.contains(&"http.requests") && metrics.contains(&"http.latency")).then_some(())
    })
    .await;
    let total = fanin.total("metric=http.requests&by=").await;
    assert_eq!(total, json!(56), "40 + 2 + 5 + 6 + 1 + 2");
    // Two samples of the total in the history: the overview draws its sparkline.
    common::eventually(WAIT, "two samples of the total", || async {
        let (_, history) = fanin.get("/api/v1/history?metric=http.requests&by=").await;
        let samples = history["series"][0]["values"].as_array()?;
        (samples
            .iter()
            .filter(|value| **value == json!(56.0))
            .count()
            >= 2)
            .then_some(())
    })
    .await;

    let base = format!("http://{}", fanin.addresses.query);
    let page = dom(&chromium, &profile, &format!("{base}/"));
    assert!(
        page.contains("<title>fanin: workers, totals, collisions</title>"),
        "{page}"
    );
    for instance in ["shop-1", "shop-2", "shared"] {
        assert!(
            page.contains(&format!("<td class=\"instance\">{instance}</td>")),
            "{instance} listed: {page}"
        );
    }
    assert!(
        page.contains("data-metric=\"http.requests\">56</td><td><svg class=\"spark\""),
        "the total /api/v1/query gives, with its sparkline: {page}"
    );
    assert!(page.contains("<polyline points="), "{page}");
    // The hostile attribute is on the overview (the histogram's collision), as text.
    assert!(page.contains("onerror="), "{page}");
    let latency = fanin.query_series("metric=http.latency&by=").await;
    let count = latency[0]["histogram"]["count"].as_u64().expect("a count");
    assert!(
        page.contains(&format!("data-metric=\"http.latency\">count {count},")),
        "{page}"
    );
    // The collision, what was seen, and the fix.
    assert!(page.contains("How to fix:"), "{page}");
    assert!(page.contains(fanin::store::FIX), "{page}");
    assert!(
        page.contains("runs with different start times advance side by side"),
        "{page}"
    );
    // Markup stays text: the name shows escaped, and nothing it or the attribute carried
    // became an element or ran.
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(!page.contains("<script>alert(1)"), "{page}");
    assert!(
        !page.contains("<img"),
        "no element from an attribute value: {page}"
    );
    assert!(!page.contains("pwned</title>"), "{page}");

    // The numbers refresh without a reload: after 12 s (Chromium's virtual time) the
    // <main> shown is a later render than the page Chromium loaded, which itself comes
    // after the one fetched here.
    let fetched = reqwest::get(format!("{base}/"))
        .await
        .expect("the overview")
        .text()
        .await
        .expect("a body");
    let refreshed = run_chromium(
        &chromium,
        &profile,
        &["--virtual-time-budget=12000", "--dump-dom"],
        &format!("{base}/"),
    );
    let (before, after) = (render_number(&fetched), render_number(&refreshed));
    assert!(
        after >= before + 2,
        "render {after} after {before}: not refreshed"
    );

    // The metric page: the attribute with quotes and angle brackets, as text, in the
    // streams behind the totals; the buckets drawn.
    let url = format!("{base}/ui/metric?metric=http.latency");
    let metric = dom(&chromium, &profile, &url);
    assert!(metric.contains("<h1>http.latency</h1>"), "{metric}");
    assert!(
        metric.contains("&quot;&gt;&lt;img src=x onerror=&quot;document.title='pwned'&quot;&gt;")
            || metric.contains("\"&gt;&lt;img src=x onerror=\"document.title='pwned'\"&gt;"),
        "{metric}"
    );
    assert!(!metric.contains("<img"), "{metric}");
    assert!(metric.contains("Buckets"), "{metric}");
    assert!(
        metric.contains("<td class=\"instance\">shop-2</td>"),
        "{metric}"
    );

    if let Some(dir) = std::env::var_os("FANIN_SCREENSHOTS") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("screenshot directory");
        for (name, url) in [
            ("overview.png", format!("{base}/")),
            (
                "metric.png",
                format!("{base}/ui/metric?metric=http.requests&by=http.route"),
            ),
        ] {
            let file = dir.join(name);
            run_chromium(
                &chromium,
                &profile,
                &[
                    "--window-size=1280,800",
                    &format!("--screenshot={}", file.display()),
                ],
                &url,
            );
            assert!(file.is_file(), "{name} written");
        }
    }
    for provider in providers {
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
    fanin.stop().await;
    let _ = std::fs::remove_dir_all(&profile);
}
