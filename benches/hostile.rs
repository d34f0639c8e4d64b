//! What one hostile or careless client can do to a running fanin: the measurements of
//! "Nothing one client sends can hurt the others" (`docs/design.md`), against any build.
//!
//! ```sh
//! cargo build --release
//! cargo bench --bench hostile -- --fanin target/release/fanin            # every scenario
//! cargo bench --bench hostile -- --fanin target/release/fanin json flood # some of them
//! ```
//!
//! Each scenario starts a fresh `fanin serve` on ephemeral loopback ports (only command-line
//! flags, so an older build runs too), reads its memory from `/proc/<pid>/status` (`VmRSS`,
//! and `VmHWM` after resetting it through `/proc/<pid>/clear_refs`), and prints one
//! `RESULT scenario=… key=value …` line. Memory is in MiB above the process's steady state
//! just before the scenario's load (`kept` is the RSS 3 s after the load is over: what the
//! allocator has not returned); latencies are in milliseconds.
//!
//! - `amplification`: the 1.6 MB export of a histogram with 100,000 bounds and 200
//!   attributes, then a `/metrics` scrape.
//! - `largest-page`: the same with the largest histogram the default limits allow (1,024
//!   bounds, 128 attributes of 8,000 bytes: a 1 GB page).
//! - `grpc-held`: one HTTP/2 connection opening 250 gRPC exports of 4 MB each and sending
//!   all but 1,000 bytes of each.
//! - `http-held`: 50 HTTP/1.1 connections each sending all but 1,000 bytes of a 20 MB body;
//!   how many are still open 35 s later.
//! - `json`, `json-x4`: one 20 MB OTLP/JSON body, or four at once, whose points fanin
//!   refuses (time 0), so that the peak is the decode's: memory per body byte.
//! - `render-stall`: 1,000,000 streams stored; a small export's and `/healthz`'s latency,
//!   idle and while two `/metrics` renders run back to back (their readers in the
//!   background, see `read_metrics_in_the_background`).
//! - `idle-connections`: 20,000 idle connections to the gRPC port (64 fewer than the
//!   open-file limit if that is lower); the export latency of a
//!   worker connected before them, `/healthz`'s, whether a new client gets an export
//!   through meanwhile, and 12 s later.
//! - `flood`: one instance sends 1,100,000 new streams; then a new instance sends one point.
//! - `snapshot`: with `storage.path` set, 100,000 and then 1,000,000 streams stored: one
//!   snapshot's size and time, a small export's latency while snapshots are written back to
//!   back (against the same store in a fanin without storage), and the restore's time after
//!   a SIGKILL.

// A benchmark may panic on what it cannot do: the run is then void.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::metrics::v1::{
    Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::attr;

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

const SCENARIOS: [&str; 10] = [
    "amplification",
    "largest-page",
    "grpc-held",
    "http-held",
    "json",
    "json-x4",
    "render-stall",
    "idle-connections",
    "flood",
    "snapshot",
];

#[derive(Parser, Debug)]
#[command(about = "What one hostile client can do to a running fanin")]
struct Args {
    /// The fanin binary to measure.
    #[arg(long, default_value = "target/release/fanin")]
    fanin: String,
    /// Scenarios to run (all when none is named).
    scenarios: Vec<String>,
    /// Accepted for `cargo bench`, which passes it to every bench binary.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let args = Args::parse();
    let chosen: Vec<&str> = if args.scenarios.is_empty() {
        SCENARIOS.to_vec()
    } else {
        args.scenarios.iter().map(String::as_str).collect()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    for scenario in chosen {
        if scenario == "snapshot" {
            let result = runtime.block_on(snapshot(&args.fanin));
            println!("RESULT scenario={scenario} {result}");
            continue;
        }
        let fanin = Fanin::start(&args.fanin);
        let result = runtime.block_on(async {
            match scenario {
                "amplification" => amplification(&fanin, "issue").await,
                "largest-page" => amplification(&fanin, "largest").await,
                "grpc-held" => grpc_held(&fanin).await,
                "http-held" => http_held(&fanin).await,
                "json" => json(&fanin, 1).await,
                "json-x4" => json(&fanin, 4).await,
                "render-stall" => render_stall(&fanin).await,
                "idle-connections" => idle_connections(&fanin).await,
                "flood" => flood(&fanin).await,
                other => panic!("unknown scenario {other:?}; use {}", SCENARIOS.join(", ")),
            }
        });
        println!("RESULT scenario={scenario} {result}");
        drop(fanin);
    }
}

/// A `fanin serve` child on ephemeral loopback ports.
struct Fanin {
    child: Child,
    grpc: SocketAddr,
    http: SocketAddr,
    query: SocketAddr,
}

impl Fanin {
    fn start(binary: &str) -> Fanin {
        Fanin::start_with(binary, &[])
    }

    /// `fanin serve` with `extra` arguments (a `--config` file).
    fn start_with(binary: &str, extra: &[&str]) -> Fanin {
        let mut child = Command::new(binary)
            .args([
                "serve",
                "--grpc-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .args(["--query-listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("start {binary}: {error}"));
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut address = |prefix: &str| -> SocketAddr {
            let line = lines.next().expect("a line").expect("text");
            line.strip_prefix(prefix)
                .unwrap_or_else(|| panic!("{line:?} does not start with {prefix:?}"))
                .trim()
                .parse()
                .expect("an address")
        };
        let grpc = address("otlp-grpc listening on ");
        let http = address("otlp-http listening on ");
        let query = address("query listening on ");
        Fanin {
            child,
            grpc,
            http,
            query,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `(VmRSS, VmHWM)` in MiB.
    fn memory(&self) -> (f64, f64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("/proc status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse::<f64>().ok())
                .map_or(0.0, |kib| kib / 1024.0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Makes `VmHWM` start again from the current RSS.
    fn reset_peak(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").expect("clear_refs");
    }

    async fn client(&self) -> MetricsServiceClient<tonic::transport::Channel> {
        MetricsServiceClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("connect")
            .max_encoding_message_size(64 << 20)
    }
}

impl Drop for Fanin {
    /// Also when a scenario panics: the child never outlives the run.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn request(instance: &str, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    attr("service.name", "hostile".into()),
                    attr("service.instance.id", instance.into()),
                ],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A cumulative counter with `streams` streams (attribute `k`), at time `time`.
fn counters(name: &str, streams: std::ops::Range<usize>, time: u64) -> Metric {
    let points = streams
        .map(|index| NumberDataPoint {
            attributes: vec![attr("k", index.to_string())],
            start_time_unix_nano: 1,
            time_unix_nano: time,
            value: Some(number_data_point::Value::AsInt(1)),
            ..Default::default()
        })
        .collect();
    Metric {
        name: name.into(),
        data: Some(Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: 2,
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

fn histogram(bounds: usize, attributes: usize, value_bytes: usize) -> Metric {
    Metric {
        name: "wide.histogram".into(),
        unit: "s".into(),
        data: Some(Data::Histogram(Histogram {
            data_points: vec![HistogramDataPoint {
                attributes: (0..attributes)
                    .map(|index| attr(&format!("a{index:03}"), "v".repeat(value_bytes)))
                    .collect(),
                start_time_unix_nano: 1,
                time_unix_nano: 10,
                count: bounds as u64 + 1,
                sum: Some(1.0),
                bucket_counts: vec![1; bounds + 1],
                explicit_bounds: (0..bounds).map(|bound| bound as f64).collect(),
                ..Default::default()
            }],
            aggregation_temporality: 2,
        })),
        ..Default::default()
    }
}

/// Exports `request` over gRPC: `(ok, rejected points, message)`.
async fn export(fanin: &Fanin, request: ExportMetricsServiceRequest) -> (bool, i64, String) {
    match fanin.client().await.export(request).await {
        Ok(response) => {
            let partial = response.into_inner().partial_success.unwrap_or_default();
            (true, partial.rejected_data_points, partial.error_message)
        }
        Err(status) => (false, 0, status.message().to_string()),
    }
}

/// GETs `path` on the query listener and reads the whole body: `(status, bytes)`.
async fn scrape(fanin: &Fanin, path: &str) -> (u16, usize) {
    let response = reqwest::Client::new()
        .get(format!("http://{}{path}", fanin.query))
        .send()
        .await
        .expect("an answer");
    let status = response.status().as_u16();
    let mut response = response;
    let mut bytes = 0;
    while let Ok(Some(chunk)) = response.chunk().await {
        bytes += chunk.len();
    }
    (status, bytes)
}

/// One histogram export and a `/metrics` scrape: `issue` is the issue's export, `largest` the
/// largest histogram the default limits let through. Each on a fresh fanin, so that one
/// page does not carry the other's histogram.
async fn amplification(fanin: &Fanin, case: &str) -> String {
    let mut out = Vec::new();
    let (label, bounds, attributes, value_bytes) = match case {
        "issue" => ("issue", 100_000, 200, 8),
        _ => ("largest_allowed", 1024, 128, 8_000),
    };
    {
        let request = request("amp", vec![histogram(bounds, attributes, value_bytes)]);
        let size = request.encoded_len();
        let (ok, rejected, message) = export(fanin, request).await;
        let (steady, _) = fanin.memory();
        fanin.reset_peak();
        let started = Instant::now();
        let (status, page) = scrape(fanin, "/metrics").await;
        let took = started.elapsed();
        let (_, peak) = fanin.memory();
        let kept = kept_after_a_while(fanin).await;
        let message: String = message.chars().take(60).collect();
        out.push(format!(
            "{label}_export_bytes={size} {label}_accepted={} {label}_rejected={rejected} \
             {label}_page_bytes={page} {label}_scrape_status={status} {label}_scrape_s={:.1} \
             {label}_peak_above_steady_mib={:.0} {label}_kept_above_steady_mib={:.0} \
             {label}_message={message:?}",
            ok && rejected == 0,
            took.as_secs_f64(),
            peak - steady,
            kept - steady
        ));
    }
    out.join(" ")
}

/// RSS in MiB once the load has been over for 3 s: what the allocator kept.
async fn kept_after_a_while(fanin: &Fanin) -> f64 {
    tokio::time::sleep(Duration::from_secs(3)).await;
    fanin.memory().0
}

/// A gRPC frame header announcing `length` bytes, and all but `missing` of them.
fn partial_grpc_message(length: usize, missing: usize) -> Bytes {
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(length as u32).to_be_bytes());
    framed.resize(5 + length - missing, 0);
    Bytes::from(framed)
}

async fn grpc_held(fanin: &Fanin) -> String {
    let (steady, _) = fanin.memory();
    fanin.reset_peak();
    let connection = TcpStream::connect(fanin.grpc).await.expect("connect");
    let (client, driver) = h2::client::handshake(connection).await.expect("handshake");
    tokio::spawn(async move {
        let _ = driver.await;
    });
    let message = partial_grpc_message(4_000_000, 1_000);
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut streams = Vec::new();
    for _ in 0..250 {
        let (client, message) = (client.clone(), message.clone());
        let (answered, opened) = (Arc::clone(&answered), Arc::clone(&opened));
        streams.push(tokio::spawn(async move {
            let mut client = client.ready().await.ok()?;
            let request = http::Request::post(EXPORT_PATH)
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .ok()?;
            let (response, mut stream) = client.send_request(request, false).ok()?;
            opened.fetch_add(1, Ordering::Relaxed);
            stream.send_data(message, false).ok()?;
            let answer = response.await;
            answered.fetch_add(1, Ordering::Relaxed);
            Some((answer.is_ok(), stream))
        }));
    }
    tokio::time::sleep(Duration::from_secs(15)).await;
    let (held, peak) = fanin.memory();
    let result = format!(
        "streams_opened={} streams_answered={} held_above_steady_mib={:.0} \
         peak_above_steady_mib={:.0}",
        opened.load(Ordering::Relaxed),
        answered.load(Ordering::Relaxed),
        held - steady,
        peak - steady
    );
    for stream in streams {
        stream.abort();
    }
    result
}

async fn http_held(fanin: &Fanin) -> String {
    let (steady, _) = fanin.memory();
    fanin.reset_peak();
    let length = 20_000_000;
    let part = Bytes::from(vec![0u8; length - 1_000]);
    let mut connections = Vec::new();
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..50 {
        let (address, part, written) = (fanin.http, part.clone(), Arc::clone(&written));
        connections.push(tokio::spawn(async move {
            let mut connection = TcpStream::connect(address).await.ok()?;
            let head = format!(
                "POST /v1/metrics HTTP/1.1\r\nhost: fanin\r\ncontent-type: \
                 application/x-protobuf\r\ncontent-length: {length}\r\n\r\n"
            );
            connection.write_all(head.as_bytes()).await.ok()?;
            // The write stops where fanin stops reading. The connection is the task's
            // output, so it stays open until the task's handle is dropped.
            if connection.write_all(&part).await.is_ok() {
                written.fetch_add(1, Ordering::Relaxed);
            }
            Some(connection)
        }));
    }
    // Keep the sockets: the tasks block in write_all while fanin holds the body.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (held, peak) = fanin.memory();
    let finished_writing = written.load(Ordering::Relaxed);
    // Past the body timeout (30 s by default) the connections should be gone.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let still_open = established_sockets(fanin.http);
    for connection in connections {
        connection.abort();
    }
    format!(
        "held_above_steady_mib={:.0} peak_above_steady_mib={:.0} \
         bodies_fully_written={finished_writing} of=50 open_after_35s={still_open}",
        held - steady,
        peak - steady
    )
}

/// How many established TCP sockets the port has on fanin's side (from `/proc/net/tcp`).
fn established_sockets(port_of: SocketAddr) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let local = format!(":{:04X}", port_of.port());
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3 && fields[1].ends_with(&local) && fields[3] == "01"
        })
        .count()
}

/// An SDK-shaped OTLP/JSON body of about `bytes` bytes: counter points, two attributes each,
/// at time 0 (which fanin refuses, storing nothing).
fn json_body(bytes: usize) -> Vec<u8> {
    let mut text = String::from(
        r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"hostile"}}]},"scopeMetrics":[{"scope":{"name":"s"},"metrics":[{"name":"http.server.requests","unit":"{request}","sum":{"aggregationTemporality":2,"isMonotonic":true,"dataPoints":["#,
    );
    let mut point = 0;
    while text.len() < bytes - 300 {
        if point > 0 {
            text.push(',');
        }
        text.push_str(&format!(
            r#"{{"attributes":[{{"key":"http.route","value":{{"stringValue":"/r/{point}"}}}},{{"key":"http.status_code","value":{{"intValue":"200"}}}}],"startTimeUnixNano":"0","timeUnixNano":"0","asInt":"{point}"}}"#
        ));
        point += 1;
    }
    text.push_str("]}}]}]}]}");
    text.into_bytes()
}

async fn post_json(fanin: &Fanin, body: Vec<u8>) -> u16 {
    reqwest::Client::new()
        .post(format!("http://{}/v1/metrics", fanin.http))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_or(0, |response| response.status().as_u16())
}

/// `concurrent` 20 MB OTLP/JSON bodies at once, on a fresh process, their points all with
/// time 0 so that none is stored: the peak is the decode and the receive path alone.
async fn json(fanin: &Fanin, concurrent: usize) -> String {
    let body = json_body(20_000_000);
    let size = body.len() as f64;
    let (steady, _) = fanin.memory();
    fanin.reset_peak();
    let posts = (0..concurrent).map(|_| post_json(fanin, body.clone()));
    let statuses = futures_util::future::join_all(posts).await;
    let (_, peak) = fanin.memory();
    let kept = kept_after_a_while(fanin).await;
    format!(
        "body_bytes={} statuses={statuses:?} peak_above_steady_mib={:.0} \
         peak_per_body_byte={:.1} kept_above_steady_mib={:.0}",
        body.len(),
        peak - steady,
        (peak - steady) * 1024.0 * 1024.0 / (size * concurrent as f64),
        kept - steady
    )
    .replace(", ", ",")
}

/// Latencies of a series of calls, in ms, and how many of them failed (a failed call is
/// timed too: the figures are only meaningful when `failed` is 0).
#[derive(Clone, Copy, Debug)]
struct Latency {
    p50: f64,
    p99: f64,
    failed: usize,
}

impl Latency {
    /// `NAME_p50_ms=… NAME_p99_ms=… NAME_failed=…`.
    fn fields(&self, name: &str) -> String {
        format!(
            "{name}_p50_ms={:.2} {name}_p99_ms={:.2} {name}_failed={}",
            self.p50, self.p99, self.failed
        )
    }
}

/// `count` runs of `work` one after another; `work` says whether its call succeeded.
async fn latencies<F, Fut>(count: usize, mut work: F) -> Latency
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut times = Vec::with_capacity(count);
    let mut failed = 0;
    for round in 0..count {
        let started = Instant::now();
        if !work(round).await {
            failed += 1;
        }
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let at = |quantile: f64| times[((times.len() - 1) as f64 * quantile).round() as usize];
    Latency {
        p50: at(0.5),
        p99: at(0.99),
        failed,
    }
}

/// How many exports and `/healthz` requests a latency figure is taken over.
const PROBES: usize = 5_000;

/// `PROBES` exports of one point of `metric` for `instance` over `client`'s connection, each
/// a newer point than the last (times from `offset` on).
async fn export_latency(
    client: &MetricsServiceClient<tonic::transport::Channel>,
    instance: &str,
    metric: &str,
    offset: u64,
) -> Latency {
    latencies(PROBES, |round| {
        let request = request(
            instance,
            vec![counters(metric, 0..1, 100 + offset + round as u64)],
        );
        let mut client = client.clone();
        async move { client.export(request).await.is_ok() }
    })
    .await
}

/// `PROBES` calls of `/healthz`.
async fn healthz_latency(fanin: &Fanin) -> Latency {
    let http = reqwest::Client::new();
    let url = format!("http://{}/healthz", fanin.query);
    latencies(PROBES, |_| {
        let call = http.get(&url).send();
        async move { matches!(call.await, Ok(response) if response.status().is_success()) }
    })
    .await
}

async fn render_stall(fanin: &Fanin) -> String {
    for instance in 0..100 {
        let request = request(
            &format!("load-{instance:03}"),
            vec![counters("load", 0..10_000, 10)],
        );
        let (ok, rejected, message) = export(fanin, request).await;
        assert!(ok && rejected == 0, "loading: {message}");
    }
    // Exports to an instance of their own, and to one whose 10,000 streams the renders
    // copy under its lock; then `/healthz`.
    let client = fanin.client().await;
    let measure = |offset: u64| {
        let client = client.clone();
        async move {
            let own = export_latency(&client, "probe", "probe", offset).await;
            let loaded = export_latency(&client, "load-000", "load", offset).await;
            (own, loaded, healthz_latency(fanin).await)
        }
    };
    let idle = measure(0).await;
    let (steady, _) = fanin.memory();
    fanin.reset_peak();
    let rendering = Arc::new(AtomicBool::new(true));
    let readers = read_metrics_in_the_background(fanin.query, 2, Arc::clone(&rendering));
    // Let both renders get going.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let busy = measure(PROBES as u64).await;
    rendering.store(false, Ordering::Relaxed);
    let pages = readers.join().expect("the readers");
    let (_, peak) = fanin.memory();
    let kept = kept_after_a_while(fanin).await;
    let slowest_page = pages.iter().copied().fold(0.0, f64::max);
    format!(
        "{} {} {} {} {} {} pages={} slowest_page_s={slowest_page:.1} \
         render_peak_above_steady_mib={:.0} kept_above_steady_mib={:.0}",
        idle.0.fields("idle_export"),
        idle.1.fields("idle_loaded_export"),
        idle.2.fields("idle_healthz"),
        busy.0.fields("rendering_export"),
        busy.1.fields("rendering_loaded_export"),
        busy.2.fields("rendering_healthz"),
        pages.len(),
        peak - steady,
        kept - steady
    )
}

/// `readers` loops of `GET /metrics`, each reading every page to its end, until `rendering`
/// is cleared; returns how long each page took. They run on a thread of their own under
/// `SCHED_IDLE`: on two cores, readers at the probes' priority would hold a core for a
/// time slice of theirs whenever the export's answer is ready, and the latency measured
/// would be this benchmark's sharing of the machine rather than fanin's doing.
fn read_metrics_in_the_background(
    query: SocketAddr,
    readers: usize,
    rendering: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<f64>> {
    std::thread::spawn(move || {
        fanin::sys::run_in_background().expect("SCHED_IDLE for the readers");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            let loops = (0..readers).map(|_| {
                let rendering = Arc::clone(&rendering);
                async move {
                    let mut pages = Vec::new();
                    while rendering.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let response = reqwest::get(format!("http://{query}/metrics")).await;
                        if let Ok(mut response) = response {
                            while let Ok(Some(_)) = response.chunk().await {}
                        }
                        pages.push(started.elapsed().as_secs_f64());
                    }
                    pages
                }
            });
            futures_util::future::join_all(loops).await.concat()
        })
    })
}

/// `instances` × 10,000 counter streams into `fanin`.
async fn load(fanin: &Fanin, instances: usize) {
    for instance in 0..instances {
        let request = request(
            &format!("load-{instance:03}"),
            vec![counters("load", 0..10_000, 10)],
        );
        let (ok, rejected, message) = export(fanin, request).await;
        assert!(ok && rejected == 0, "loading: {message}");
    }
}

/// fanin's `/api/v1/stats` `storage` figures.
async fn storage_figures(fanin: &Fanin) -> serde_json::Value {
    let text = reqwest::get(format!("http://{}/api/v1/stats", fanin.query))
        .await
        .expect("stats")
        .text()
        .await
        .expect("a body");
    let stats: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    stats["storage"].clone()
}

/// Waits for a snapshot written after the `written`-th and returns its figures.
async fn next_snapshot(fanin: &Fanin, written: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let figures = storage_figures(fanin).await;
        if figures["snapshots_written"].as_u64().unwrap_or(0) > written {
            return figures;
        }
        assert!(Instant::now() < deadline, "no snapshot: {figures}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Exports of one point to an instance of its own and to `load-000` (whose 10,000 streams
/// a snapshot copies under its lock), alternating, until two snapshots have been written
/// while they ran: `(own, loaded, snapshots written meanwhile)`.
async fn probe_while_snapshotting(fanin: &Fanin) -> (Latency, Latency, u64) {
    let client = fanin.client().await;
    let written = || async {
        storage_figures(fanin).await["snapshots_written"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = written().await;
    let (mut own, mut loaded) = (Vec::new(), Vec::new());
    let mut round = 0u64;
    while written().await < before + 2 {
        for (instance, metric, times) in [
            ("probe", "probe", &mut own),
            ("load-000", "load", &mut loaded),
        ] {
            let request = request(instance, vec![counters(metric, 0..1, 100 + round)]);
            let started = Instant::now();
            let ok = client.clone().export(request).await.is_ok();
            assert!(ok, "an export failed");
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        round += 1;
    }
    let latency = |mut times: Vec<f64>| {
        times.sort_by(f64::total_cmp);
        let at = |quantile: f64| times[((times.len() - 1) as f64 * quantile).round() as usize];
        Latency {
            p50: at(0.5),
            p99: at(0.99),
            failed: 0,
        }
    };
    (latency(own), latency(loaded), written().await - before)
}

async fn snapshot(binary: &str) -> String {
    let dir = std::env::temp_dir().join(format!("fanin-bench-snapshot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a directory");
    let config = dir.join("config.yaml");
    let state = dir.join("state");
    std::fs::write(
        &config,
        format!(
            "storage: {{path: {:?}, interval: 200ms}}\n",
            state.display().to_string()
        ),
    )
    .expect("config");
    let with_storage = ["--config", config.to_str().expect("UTF-8")];
    let mut fields = Vec::new();
    for instances in [10, 100] {
        let streams = instances * 10_000;
        let _ = std::fs::remove_dir_all(&state);
        let fanin = Fanin::start_with(binary, &with_storage);
        load(&fanin, instances).await;
        // The first snapshot that began after the load, then one more whole one.
        let written = storage_figures(&fanin).await["snapshots_written"]
            .as_u64()
            .unwrap_or(0);
        let first = next_snapshot(&fanin, written + 1).await;
        let (rss, _) = fanin.memory();
        fields.push(format!(
            "streams_{streams}_snapshot_bytes={} streams_{streams}_snapshot_ms={:.0} \
             streams_{streams}_rss_mib={rss:.0}",
            first["last_bytes"],
            first["last_micros"].as_f64().unwrap_or(0.0) / 1000.0,
        ));
        if instances == 100 {
            let (own, loaded, snapshots) = probe_while_snapshotting(&fanin).await;
            fields.push(own.fields("snapshotting_export"));
            fields.push(loaded.fields("snapshotting_loaded_export"));
            fields.push(format!("snapshots_during_probes={snapshots}"));
        }
        // A crash, and the restore of what the last snapshot holds.
        drop(fanin);
        let started = Instant::now();
        let restored = Fanin::start_with(binary, &with_storage);
        fields.push(format!(
            "streams_{streams}_restore_ms={:.0}",
            started.elapsed().as_secs_f64() * 1000.0
        ));
        drop(restored);
    }
    // The same store in a fanin without storage: the export latency to compare with.
    let fanin = Fanin::start(binary);
    load(&fanin, 100).await;
    let client = fanin.client().await;
    fields.push(
        export_latency(&client, "probe", "probe", 0)
            .await
            .fields("idle_export"),
    );
    fields.push(
        export_latency(&client, "load-000", "load", 0)
            .await
            .fields("idle_loaded_export"),
    );
    drop(fanin);
    let _ = std::fs::remove_dir_all(&dir);
    fields.join(" ")
}

async fn idle_connections(fanin: &Fanin) -> String {
    // Room for the 20,000 connections and the probes' own; past the hard limit only as root.
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let wanted = hard.max(30_000);
    let limit = if setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted).is_ok() {
        wanted
    } else {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
        hard
    };
    // Descriptors left for the probes, the newcomer and the runtime.
    let count = 20_000.min(limit.saturating_sub(64));
    // A worker's exporter holds its connection from before the flood.
    let worker = fanin.client().await;
    let idle = export_latency(&worker, "probe", "probe", 0).await;
    let mut connections = Vec::new();
    let mut failed = 0;
    for _ in 0..count {
        match TcpStream::connect(fanin.grpc).await {
            Ok(connection) => connections.push(connection),
            Err(_) => failed += 1,
        }
    }
    let busy = async {
        let export = export_latency(&worker, "probe", "probe", PROBES as u64).await;
        (export, healthz_latency(fanin).await)
    };
    let busy = match tokio::time::timeout(Duration::from_secs(120), busy).await {
        Ok((export, healthz)) => {
            format!("{} {}", export.fields("export"), healthz.fields("healthz"))
        }
        Err(_) => "export_p99_ms=timeout healthz_p99_ms=timeout".to_string(),
    };
    let newcomer_now = newcomer_exports(fanin, 1).await;
    // fanin closes connections that never speak after connections.header_timeout (10 s).
    tokio::time::sleep(Duration::from_secs(12)).await;
    let count_made = connections.len();
    let still_open = still_open(connections).await;
    let newcomer_later = newcomer_exports(fanin, 2).await;
    format!(
        "{} connections_made={count_made} connect_failed={failed} {busy} \
         new_client_exports_during={newcomer_now} still_open_after_12s={still_open} \
         new_client_exports_after_12s={newcomer_later}",
        idle.fields("idle_export"),
    )
}

/// Whether a client with a new connection gets an export through within 5 s.
async fn newcomer_exports(fanin: &Fanin, time: u64) -> String {
    let attempt = async {
        let mut client = MetricsServiceClient::connect(format!("http://{}", fanin.grpc))
            .await
            .map_err(|error| format!("connect: {error}"))?;
        let request = request("newcomer", vec![counters("newcomer", 0..1, time)]);
        client
            .export(request)
            .await
            .map(|_| ())
            .map_err(|status| format!("export: {}", status.message()))
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(())) => "yes".to_string(),
        Ok(Err(error)) => format!("{error:?}"),
        Err(_) => "\"no answer within 5 s\"".to_string(),
    }
}

/// How many of `connections` fanin has not closed, all looked at together: what fanin has
/// sent (an HTTP/2 server's SETTINGS) is read, then a connection with no end of stream
/// waiting within 100 ms is open.
async fn still_open(connections: Vec<TcpStream>) -> usize {
    let checks = connections.into_iter().map(|mut connection| async move {
        let mut buffer = [0u8; 1024];
        loop {
            let read = connection.read(&mut buffer);
            match tokio::time::timeout(Duration::from_millis(100), read).await {
                Err(_) => return true,              // nothing more to read yet: open
                Ok(Ok(0) | Err(_)) => return false, // closed by fanin
                Ok(Ok(_)) => {}                     // what fanin sent before closing, or not
            }
        }
    });
    futures_util::future::join_all(checks)
        .await
        .into_iter()
        .filter(|open| *open)
        .count()
}

async fn flood(fanin: &Fanin) -> String {
    let started = Instant::now();
    let (mut stored, mut refused, mut reason) = (0usize, 0i64, String::new());
    for batch in 0..110 {
        let streams = batch * 10_000..(batch + 1) * 10_000;
        let (ok, rejected, message) = export(
            fanin,
            request("flooder", vec![counters("flood", streams, 10)]),
        )
        .await;
        if ok {
            stored += 10_000 - rejected as usize;
            refused += rejected;
            if rejected > 0 && reason.is_empty() {
                reason = message.chars().take(80).collect();
            }
        }
    }
    let took = started.elapsed();
    let (ok, rejected, message) = export(
        fanin,
        request("newcomer", vec![counters("newcomer", 0..1, 10)]),
    )
    .await;
    let (rss, _) = fanin.memory();
    format!(
        "flooder_stored={stored} flooder_refused={refused} flood_s={:.1} rss_mib={rss:.0} \
         newcomer_stored={} reason={reason:?} newcomer_message={:?}",
        took.as_secs_f64(),
        ok && rejected == 0,
        message.chars().take(80).collect::<String>()
    )
}
