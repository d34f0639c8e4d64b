//! Load generator: many simulated workers exporting OTLP metrics to a collector, with the
//! collector's own CPU time and peak memory read from /proc, so that the fair figure (data
//! points per CPU-second of the target) can be compared between fanin and other collectors.
//!
//! ```sh
//! cargo bench --bench loadgen -- --protocol grpc --target 127.0.0.1:4317 \
//!     --instances 64 --streams 500 --points-per-request 1000 \
//!     --connections 8 --rate 500000 --duration 20 --pid "$(pgrep -n fanin)"
//! ```
//!
//! Each simulated instance has its own resource (`service.instance.id`) and `streams`
//! streams: counters, up-down counters, gauges and explicit-bucket histograms, with two or
//! three point attributes. Requests are encoded before the clock starts, one round (every
//! instance once) after another with timestamps one second apart, so a collector that keeps
//! state sees new points, not duplicates. `--rate` paces the whole load (points per second,
//! spread over the connections); `--rate 0` sends as fast as the target answers. The last
//! line, starting with `RESULT`, is for scripts (`benches/compare.sh`).
//!
//! With `--gzip` every request is compressed before the clock starts too (HTTP at flate2's
//! fast level, gRPC at level 6, what tonic's encoder uses), so a latency and the load's CPU
//! are the target's, not the generator's. `--compress-per-request` compresses inside each
//! timed request instead, the way an exporter does (gRPC through tonic's own encoder): on a
//! machine the generator shares with the target, that measures the generator as well.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use fanin::receiver::grpc::RawCodec;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    Sum, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use common::attr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Protocol {
    Grpc,
    Http,
}

#[derive(Parser, Debug)]
#[command(about = "OTLP metrics load generator for fanin and other collectors")]
struct Args {
    #[arg(long, value_enum, default_value = "grpc")]
    protocol: Protocol,
    /// host:port of the collector's OTLP listener for --protocol.
    #[arg(long)]
    target: String,
    /// Simulated worker instances.
    #[arg(long, default_value_t = 64)]
    instances: usize,
    /// Streams (data points per export) per instance.
    #[arg(long, default_value_t = 500)]
    streams: usize,
    /// Data points per request; a request carries whole instances, so this is rounded to a
    /// multiple of --streams.
    #[arg(long, default_value_t = 1000)]
    points_per_request: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Offered load in data points per second; 0 sends as fast as the target answers.
    #[arg(long, default_value_t = 500_000)]
    rate: u64,
    /// Seconds to send for.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Compress requests with gzip (ahead of time, unless --compress-per-request).
    #[arg(long)]
    gzip: bool,
    /// With --gzip: compress each request when it is sent, inside its latency.
    #[arg(long, requires = "gzip")]
    compress_per_request: bool,
    /// Send every instance's streams once, as fast as possible, then report the target's
    /// memory: for measuring memory per stored stream.
    #[arg(long)]
    once: bool,
    /// The target's pid, to read its CPU time and memory from /proc.
    #[arg(long)]
    pid: Option<u32>,
    /// Accepted and ignored: `cargo bench` passes it.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let per_request = (args.points_per_request / args.streams).max(1);
    let points_per_request = per_request * args.streams;
    let requests_per_round = args.instances.div_ceil(per_request);
    let points_per_round = (args.instances * args.streams) as u64;
    let rounds = if args.once {
        1
    } else if args.rate == 0 {
        // Unpaced: as many rounds as fit in 2 GiB of encoded requests; cycling after that
        // would send duplicates, which a stateful collector drops (cheaply).
        usize::MAX
    } else {
        (args.rate * args.duration).div_ceil(points_per_round) as usize + 1
    };
    let mut requests = prebuild(&args, per_request, rounds, 2 << 30);
    eprintln!(
        "prepared {} requests ({} rounds of {} requests, ~{} points each, {} bytes average)",
        requests.len(),
        requests.len() / requests_per_round,
        requests_per_round,
        points_per_request,
        requests.iter().map(|(bytes, _)| bytes.len()).sum::<usize>() / requests.len().max(1),
    );
    let body = Body::of(&args);
    if body != Body::Plain {
        let started = Instant::now();
        let uncompressed: usize = requests.iter().map(|(bytes, _)| bytes.len()).sum();
        compress_ahead(&mut requests, body)?;
        let compressed: usize = requests.iter().map(|(bytes, _)| bytes.len()).sum();
        eprintln!(
            "compressed {} requests ahead ({:?}): {uncompressed} -> {compressed} bytes, {:.3} ms each",
            requests.len(),
            body,
            started.elapsed().as_secs_f64() * 1000.0 / requests.len().max(1) as f64,
        );
    }

    let before = args.pid.and_then(process_stats);
    let shared = Arc::new(Shared {
        requests,
        next: AtomicUsize::new(0),
        points: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let interval = if args.rate == 0 || args.once {
        None
    } else {
        Some(Duration::from_secs_f64(
            points_per_request as f64 / args.rate as f64,
        ))
    };
    let limit = if args.once {
        Some(requests_per_round)
    } else {
        None
    };
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.connections {
        let sender = Sender::connect(&args).await?;
        let shared = Arc::clone(&shared);
        workers.spawn(worker(sender, shared, start, deadline, interval, limit));
    }
    let mut latencies: Vec<u32> = Vec::new();
    while let Some(joined) = workers.join_next().await {
        latencies.extend(joined?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = args.pid.and_then(process_stats);

    latencies.sort_unstable();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let index = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        f64::from(latencies[index]) / 1000.0
    };
    let points = shared.points.load(Ordering::Relaxed);
    let sent_requests = latencies.len();
    let mut result = vec![
        ("protocol", format!("{:?}", args.protocol).to_lowercase()),
        ("gzip", args.gzip.to_string()),
        (
            "compress_per_request",
            args.compress_per_request.to_string(),
        ),
        ("seconds", format!("{elapsed:.2}")),
        ("points", points.to_string()),
        ("points_per_s", format!("{:.0}", points as f64 / elapsed)),
        (
            "requests_per_s",
            format!("{:.1}", sent_requests as f64 / elapsed),
        ),
        ("p50_ms", format!("{:.2}", percentile(0.50))),
        ("p99_ms", format!("{:.2}", percentile(0.99))),
        ("errors", shared.errors.load(Ordering::Relaxed).to_string()),
        (
            "rejected",
            shared.rejected.load(Ordering::Relaxed).to_string(),
        ),
    ];
    if let (Some(before), Some(after)) = (before, after) {
        let cpu = after.cpu_seconds - before.cpu_seconds;
        result.push(("target_cpu_s", format!("{cpu:.2}")));
        result.push(("points_per_cpu_s", format!("{:.0}", points as f64 / cpu)));
        result.push((
            "target_rss_mib",
            format!("{:.1}", after.rss_kib as f64 / 1024.0),
        ));
        result.push((
            "target_peak_rss_mib",
            format!("{:.1}", after.peak_rss_kib as f64 / 1024.0),
        ));
        result.push((
            "target_rss_before_mib",
            format!("{:.1}", before.rss_kib as f64 / 1024.0),
        ));
    }
    for (key, value) in &result {
        eprintln!("{key:>22}: {value}");
    }
    let line: Vec<String> = result
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    println!("RESULT {}", line.join(" "));
    Ok(())
}

/// Encoded requests, each with the number of points it carries.
type Prepared = Vec<(Bytes, u64)>;

struct Shared {
    requests: Prepared,
    next: AtomicUsize,
    points: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
}

/// Sends requests in schedule order until the deadline; returns latencies in microseconds.
async fn worker(
    mut sender: Sender,
    shared: Arc<Shared>,
    start: Instant,
    deadline: Instant,
    interval: Option<Duration>,
    limit: Option<usize>,
) -> Vec<u32> {
    let mut latencies = Vec::new();
    loop {
        let index = shared.next.fetch_add(1, Ordering::Relaxed);
        if limit.is_some_and(|limit| index >= limit) {
            return latencies;
        }
        if let Some(interval) = interval {
            let due = start + interval.mul_f64(index as f64);
            if due >= deadline {
                return latencies;
            }
            tokio::time::sleep_until(due.into()).await;
        } else if limit.is_none() && Instant::now() >= deadline {
            return latencies;
        }
        let (body, points) = &shared.requests[index % shared.requests.len()];
        let sent = Instant::now();
        match sender.send(body.clone()).await {
            Ok(rejected) => {
                shared
                    .points
                    .fetch_add(points - rejected.min(*points), Ordering::Relaxed);
                shared.rejected.fetch_add(rejected, Ordering::Relaxed);
            }
            Err(error) => {
                if shared.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("export failed: {error}");
                }
            }
        }
        latencies.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
}

/// What a prepared request's body is by the time it is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Body {
    /// The encoded protobuf (also with --compress-per-request: the sender compresses it).
    Plain,
    /// A gzip stream of it, for OTLP/HTTP with `content-encoding: gzip`.
    Gzip,
    /// One whole gRPC message, its payload compressed with gzip and flagged so.
    GrpcGzipFrame,
}

impl Body {
    fn of(args: &Args) -> Body {
        match (args.gzip && !args.compress_per_request, args.protocol) {
            (false, _) => Body::Plain,
            (true, Protocol::Http) => Body::Gzip,
            (true, Protocol::Grpc) => Body::GrpcGzipFrame,
        }
    }
}

/// Compresses every prepared request into `body`'s form, on every core (before the clock).
fn compress_ahead(requests: &mut Prepared, body: Body) -> std::io::Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = requests.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = requests
            .chunks_mut(chunk)
            .map(|part| {
                scope.spawn(move || -> std::io::Result<()> {
                    for (bytes, _) in part {
                        *bytes = match body {
                            Body::Plain => continue,
                            Body::Gzip => Bytes::from(gzip_bytes(bytes, GZIP_HTTP)?),
                            Body::GrpcGzipFrame => {
                                let payload = gzip_bytes(bytes, GZIP_GRPC)?;
                                let length =
                                    u32::try_from(payload.len()).map_err(std::io::Error::other)?;
                                let mut frame = Vec::with_capacity(5 + payload.len());
                                frame.push(1);
                                frame.extend_from_slice(&length.to_be_bytes());
                                frame.extend_from_slice(&payload);
                                Bytes::from(frame)
                            }
                        };
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|handle| {
            handle
                .join()
                .map_err(|_| std::io::Error::other("panicked"))?
        })
    })
}

/// flate2's fast level, what this generator always used for OTLP/HTTP.
const GZIP_HTTP: flate2::Compression = flate2::Compression::fast();
/// Level 6: tonic's gzip encoder, which `--compress-per-request` uses for gRPC.
const GZIP_GRPC: flate2::Compression = flate2::Compression::new(6);

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// One connection to the target.
enum Sender {
    Grpc(tonic::client::Grpc<tonic::transport::Channel>),
    /// HTTP/2 without tonic, for gRPC messages framed and compressed ahead.
    GrpcFramed {
        client: h2::client::SendRequest<Bytes>,
        uri: String,
    },
    Http {
        client: reqwest::Client,
        url: String,
        /// Sent with `content-encoding: gzip`.
        gzip: bool,
        /// Compressed here, inside the request's latency.
        compress: bool,
    },
}

impl Sender {
    async fn connect(args: &Args) -> Result<Sender, Box<dyn std::error::Error>> {
        match (args.protocol, Body::of(args)) {
            (Protocol::Grpc, Body::GrpcGzipFrame) => {
                let connection = tokio::net::TcpStream::connect(&args.target).await?;
                connection.set_nodelay(true)?;
                let (client, driver) = h2::client::handshake(connection).await?;
                tokio::spawn(async move {
                    if let Err(error) = driver.await {
                        eprintln!("HTTP/2 connection ended: {error}");
                    }
                });
                Ok(Sender::GrpcFramed {
                    client,
                    uri: format!("http://{}{EXPORT_PATH}", args.target),
                })
            }
            (Protocol::Grpc, _) => {
                let channel =
                    tonic::transport::Channel::from_shared(format!("http://{}", args.target))?
                        .tcp_nodelay(true)
                        .connect()
                        .await?;
                let mut grpc =
                    tonic::client::Grpc::new(channel).max_decoding_message_size(64 << 20);
                if args.gzip {
                    grpc = grpc.send_compressed(tonic::codec::CompressionEncoding::Gzip);
                }
                Ok(Sender::Grpc(grpc))
            }
            (Protocol::Http, _) => Ok(Sender::Http {
                client: reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .tcp_nodelay(true)
                    .build()?,
                url: format!("http://{}/v1/metrics", args.target),
                gzip: args.gzip,
                compress: args.compress_per_request,
            }),
        }
    }

    /// Sends one prepared request; returns the points the target reported as rejected.
    async fn send(&mut self, body: Bytes) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
        let response = match self {
            Sender::Grpc(grpc) => {
                grpc.ready().await?;
                let path = http::uri::PathAndQuery::from_static(EXPORT_PATH);
                grpc.unary(tonic::Request::new(body), path, RawCodec)
                    .await?
                    .into_inner()
            }
            Sender::GrpcFramed { client, uri } => send_framed(client, uri, body).await?,
            Sender::Http {
                client,
                url,
                gzip,
                compress,
            } => {
                let mut request = client
                    .post(url.as_str())
                    .header("content-type", "application/x-protobuf");
                if *gzip {
                    request = request.header("content-encoding", "gzip");
                }
                let body = if *compress {
                    Bytes::from(gzip_bytes(&body, GZIP_HTTP)?)
                } else {
                    body
                };
                let response = request.body(body).send().await?;
                let status = response.status();
                let bytes = response.bytes().await?;
                if !status.is_success() {
                    return Err(format!("HTTP {status}").into());
                }
                bytes
            }
        };
        let decoded = ExportMetricsServiceResponse::decode(response)?;
        Ok(decoded.partial_success.map_or(0, |partial| {
            u64::try_from(partial.rejected_data_points).unwrap_or(0)
        }))
    }
}

/// One gRPC Export of a framed message over HTTP/2; returns the answer's message.
async fn send_framed(
    client: &h2::client::SendRequest<Bytes>,
    uri: &str,
    frame: Bytes,
) -> Result<Bytes, Box<dyn std::error::Error + Send + Sync>> {
    let request = http::Request::post(uri)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-encoding", "gzip")
        .header("grpc-accept-encoding", "identity")
        .body(())?;
    let mut client = client.clone().ready().await?;
    let (response, mut stream) = client.send_request(request, false)?;
    stream.send_data(frame, true)?;
    let response = response.await?;
    let http_status = response.status();
    let headers = response.headers().clone();
    let mut body = response.into_body();
    let mut answer = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        answer.extend_from_slice(&chunk);
    }
    // A trailers-only answer (an error before any message) carries its status in headers.
    let trailers = body.trailers().await?.unwrap_or_default();
    let status =
        grpc_field(&headers, "grpc-status").or_else(|| grpc_field(&trailers, "grpc-status"));
    if status != Some("0") {
        let message = grpc_field(&headers, "grpc-message")
            .or_else(|| grpc_field(&trailers, "grpc-message"))
            .unwrap_or_default();
        return Err(format!("HTTP {http_status}, grpc-status {status:?}: {message}").into());
    }
    match answer.split_first_chunk::<5>() {
        Some(([0, length @ ..], message))
            if u32::from_be_bytes(*length) as usize == message.len() =>
        {
            Ok(Bytes::copy_from_slice(message))
        }
        _ => Err("the answer is not one uncompressed gRPC message".into()),
    }
}

fn grpc_field<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name)?.to_str().ok()
}

fn gzip_bytes(data: &[u8], level: flate2::Compression) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 4), level);
    encoder.write_all(data)?;
    encoder.finish()
}

const ROUTES: usize = 5;
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];
/// Streams per metric: every route × method.
const COMBINATIONS: usize = ROUTES * METHODS.len();
const START: u64 = 1_700_000_000_000_000_000;
const BOUNDS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// One instance's metrics at `time`: kinds rotate by metric (counter, up-down counter,
/// gauge, histogram); each metric has up to 25 streams (route × method), counters a third
/// attribute.
fn instance_metrics(streams: usize, round: u64, time: u64) -> Vec<Metric> {
    let metrics = streams.div_ceil(COMBINATIONS);
    (0..metrics)
        .map(|metric| {
            let count = COMBINATIONS.min(streams - metric * COMBINATIONS);
            let attributes = |combination: usize, extra: bool| {
                let mut attributes = vec![
                    attr(
                        "http.route",
                        format!("/api/v1/items/{}", combination % ROUTES),
                    ),
                    attr("http.method", METHODS[combination / ROUTES].to_string()),
                ];
                if extra {
                    attributes.push(attr("http.status_code", "200".into()));
                }
                attributes
            };
            let number = |combination: usize, value: f64, extra: bool| NumberDataPoint {
                attributes: attributes(combination, extra),
                start_time_unix_nano: START,
                time_unix_nano: time,
                value: Some(number_data_point::Value::AsDouble(value)),
                ..Default::default()
            };
            let data = match metric % 4 {
                0 => Data::Sum(Sum {
                    data_points: (0..count)
                        .map(|c| number(c, (round * 10 + c as u64) as f64, true))
                        .collect(),
                    aggregation_temporality: 2,
                    is_monotonic: true,
                }),
                1 => Data::Sum(Sum {
                    data_points: (0..count)
                        .map(|c| number(c, (c % 7) as f64, false))
                        .collect(),
                    aggregation_temporality: 2,
                    is_monotonic: false,
                }),
                2 => Data::Gauge(Gauge {
                    data_points: (0..count)
                        .map(|c| number(c, 0.5 + c as f64, false))
                        .collect(),
                }),
                _ => Data::Histogram(Histogram {
                    data_points: (0..count)
                        .map(|c| HistogramDataPoint {
                            attributes: attributes(c, false),
                            start_time_unix_nano: START,
                            time_unix_nano: time,
                            count: 11 * (round + 1),
                            sum: Some(1.5 * (round + 1) as f64),
                            bucket_counts: vec![round + 1; BOUNDS.len() + 1],
                            explicit_bounds: BOUNDS.to_vec(),
                            ..Default::default()
                        })
                        .collect(),
                    aggregation_temporality: 2,
                }),
            };
            Metric {
                name: format!("loadgen.metric.{metric}"),
                unit: "1".into(),
                data: Some(data),
                ..Default::default()
            }
        })
        .collect()
}

fn resource(instance: usize) -> Resource {
    Resource {
        attributes: vec![
            attr("service.name", "loadgen".into()),
            attr("service.instance.id", format!("loadgen-{instance}")),
            attr("host.name", "loadgen-host".into()),
        ],
        ..Default::default()
    }
}

/// Encodes `rounds` rounds (or as many as fit in `max_bytes`), `per_request` instances per
/// request, timestamps one second apart per round.
fn prebuild(args: &Args, per_request: usize, rounds: usize, max_bytes: usize) -> Prepared {
    let mut prepared = Vec::new();
    let mut bytes = 0usize;
    for round in 0..rounds as u64 {
        let time = START + (round + 1) * 1_000_000_000;
        let instances: Vec<usize> = (0..args.instances).collect();
        for group in instances.chunks(per_request) {
            let request = ExportMetricsServiceRequest {
                resource_metrics: group
                    .iter()
                    .map(|instance| ResourceMetrics {
                        resource: Some(resource(*instance)),
                        scope_metrics: vec![ScopeMetrics {
                            metrics: instance_metrics(args.streams, round, time),
                            ..Default::default()
                        }],
                        ..Default::default()
                    })
                    .collect(),
            };
            let encoded = Bytes::from(request.encode_to_vec());
            bytes += encoded.len();
            prepared.push((encoded, (group.len() * args.streams) as u64));
        }
        if bytes >= max_bytes {
            eprintln!(
                "stopped preparing at {} rounds ({bytes} bytes); later requests repeat",
                round + 1
            );
            break;
        }
    }
    prepared
}

/// CPU time and memory of a process, from /proc.
#[derive(Clone, Copy, Debug)]
struct ProcessStats {
    cpu_seconds: f64,
    rss_kib: u64,
    peak_rss_kib: u64,
}

fn process_stats(pid: u32) -> Option<ProcessStats> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after ")" (0-based).
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|line| line.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some(ProcessStats {
        cpu_seconds: ticks as f64 / per_second,
        rss_kib: field("VmRSS:")?,
        peak_rss_kib: field("VmHWM:")?,
    })
}
