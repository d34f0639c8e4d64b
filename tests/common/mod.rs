//! Shared test harness: a real fanin on 127.0.0.1:0, clients for it, and request builders.
#![allow(dead_code)]

pub mod pki;

use std::time::{Duration, Instant};

use bytes::Bytes;
use fanin::proto::v1::query_service_client::QueryServiceClient;
use fanin::receiver::grpc::RawCodec;
use fanin::store::{Clock, Liveness, Store, SweepReport};
use fanin::{Addresses, App, AppError, Config};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
    exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
    summary_data_point::ValueAtQuantile,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde_json::Value as Json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// A child process killed when the test ends, however it ends.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The path of `program` when it is on PATH.
pub fn installed(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|directory| directory.join(program))
            .find(|candidate| candidate.is_file())
    })
}

/// A free loopback port (bound, then let go), for servers that cannot take port 0.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// A Prometheus server (Debian's `prometheus` package) on a free loopback port, killed when
/// dropped.
pub struct Prometheus {
    pub port: u16,
    _child: Killed,
}

impl Prometheus {
    /// Starts prometheus with the config `yaml` and `flags`, its files under `dir`, and waits
    /// until it is ready. `None` when prometheus is not installed; under `CI=true` that fails
    /// the test instead (`.ci/run` installs it).
    pub async fn start(dir: &std::path::Path, yaml: &str, flags: &[&str]) -> Option<Prometheus> {
        let Some(binary) = installed("prometheus") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run prometheus; .ci/run installs it"
            );
            eprintln!("prometheus not installed: skipped");
            return None;
        };
        std::fs::create_dir_all(dir).expect("prometheus directory");
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, yaml).expect("write prometheus.yml");
        // Prometheus cannot listen on port 0 and say which port it got: take a free one.
        let port = free_port();
        let child = std::process::Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(flags)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start prometheus");
        let prometheus = Prometheus {
            port,
            _child: Killed(child),
        };
        eventually(Duration::from_secs(60), "prometheus is ready", || async {
            let ready = reqwest::get(format!("http://127.0.0.1:{port}/-/ready"))
                .await
                .ok()?;
            ready.status().is_success().then_some(())
        })
        .await;
        Some(prometheus)
    }

    /// One PromQL instant query's first value.
    pub async fn query(&self, query: &str) -> Option<String> {
        let query: String = form_urlencoded::byte_serialize(query.as_bytes()).collect();
        let url = format!("http://127.0.0.1:{}/api/v1/query?query={query}", self.port);
        let answer = reqwest::get(url).await.ok()?;
        let json: Json = serde_json::from_str(&answer.text().await.ok()?).ok()?;
        Some(json["data"]["result"][0]["value"][1].as_str()?.to_string())
    }
}

pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// A running fanin with every listener on an ephemeral loopback port.
pub struct TestFanin {
    pub addresses: Addresses,
    pub store: Store,
    /// fanin's liveness clock; see [`TestFanin::advance`].
    pub clock: Clock,
    /// `aggregation.instance_ttl` as configured.
    pub ttl: Duration,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), AppError>>,
    http: reqwest::Client,
}

/// The default config with every listener on 127.0.0.1:0.
pub fn test_config() -> Config {
    let mut config = Config::from_yaml_with_env(fanin::config::DEFAULT_YAML, &|_| None)
        .expect("the default config parses");
    let any_port = "127.0.0.1:0".parse().expect("literal address");
    config.receivers.otlp.grpc.listen = any_port;
    config.receivers.otlp.http.listen = any_port;
    config.query.listen = any_port;
    config
}

pub async fn start() -> TestFanin {
    start_with(|_| {}).await
}

/// Starts fanin with the test config after `edit` has changed it. Its liveness clock stands
/// still until [`TestFanin::advance`] moves it.
pub async fn start_with(edit: impl FnOnce(&mut Config)) -> TestFanin {
    let mut config = test_config();
    edit(&mut config);
    let ttl = config.aggregation.instance_ttl;
    let clock = Clock::manual();
    let app = App::bind_with_clock(config, clock.clone())
        .await
        .expect("bind 127.0.0.1:0");
    let addresses = app.addresses();
    let store = app.store();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run(shutdown.clone()));
    TestFanin {
        addresses,
        store,
        clock,
        ttl,
        shutdown,
        task,
        http: reqwest::Client::new(),
    }
}

impl TestFanin {
    /// Moves fanin's liveness clock forward by `by` and sweeps, as the sweep task would at
    /// that time: retirement and eviction after `instance_ttl` without waiting for it.
    pub fn advance(&self, by: Duration) -> SweepReport {
        self.clock.advance(by);
        self.store.sweep(&Liveness { ttl: self.ttl })
    }

    /// The gRPC endpoint as a URL, as exporters want it.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.addresses.grpc)
    }

    /// The full OTLP/HTTP metrics URL.
    pub fn http_url(&self) -> String {
        format!("http://{}/v1/metrics", self.addresses.http)
    }

    pub async fn grpc_client(&self) -> MetricsServiceClient<Channel> {
        MetricsServiceClient::connect(self.grpc_url())
            .await
            .expect("connect to the gRPC receiver")
    }

    /// A client of the gRPC `QueryService`, on the OTLP/gRPC listener.
    pub async fn query_client(&self) -> QueryServiceClient<Channel> {
        QueryServiceClient::connect(self.grpc_url())
            .await
            .expect("connect to the query service")
    }

    /// Sends a request over gRPC and returns the response or the status.
    pub async fn export_grpc(
        &self,
        request: ExportMetricsServiceRequest,
    ) -> Result<
        opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse,
        tonic::Status,
    > {
        self.grpc_client()
            .await
            .export(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Sends arbitrary bytes as the gRPC Export message, optionally gzip-compressed.
    pub async fn export_grpc_raw(
        &self,
        body: Vec<u8>,
        gzip: bool,
    ) -> Result<Vec<u8>, tonic::Status> {
        let channel = Channel::from_shared(self.grpc_url())
            .expect("valid URL")
            .connect()
            .await
            .expect("connect to the gRPC receiver");
        let mut grpc = tonic::client::Grpc::new(channel);
        if gzip {
            grpc = grpc.send_compressed(tonic::codec::CompressionEncoding::Gzip);
        }
        grpc.ready().await.expect("channel ready");
        let path = http::uri::PathAndQuery::from_static(EXPORT_PATH);
        // fanin's own pass-through codec: the bytes go out exactly as given.
        grpc.unary(tonic::Request::new(Bytes::from(body)), path, RawCodec)
            .await
            .map(|response| response.into_inner().to_vec())
    }

    /// POSTs a body to the OTLP/HTTP receiver.
    pub async fn post(
        &self,
        content_type: &str,
        encoding: Option<&str>,
        body: Vec<u8>,
    ) -> HttpAnswer {
        self.post_to(&self.http_url(), content_type, encoding, body)
            .await
    }

    pub async fn post_to(
        &self,
        url: &str,
        content_type: &str,
        encoding: Option<&str>,
        body: Vec<u8>,
    ) -> HttpAnswer {
        let mut request = self
            .http
            .post(url)
            .header("content-type", content_type)
            .body(body);
        if let Some(encoding) = encoding {
            request = request.header("content-encoding", encoding);
        }
        let response = request.send().await.expect("HTTP request is answered");
        HttpAnswer {
            status: response.status().as_u16(),
            content_type: response
                .headers()
                .get("content-type")
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            body: response.bytes().await.expect("response body"),
        }
    }

    /// GETs a query path and parses the JSON answer.
    pub async fn get(&self, path_and_query: &str) -> (u16, Json) {
        let url = format!("http://{}{path_and_query}", self.addresses.query);
        let response = self.http.get(url).send().await.expect("query is answered");
        let status = response.status().as_u16();
        let text = response.text().await.expect("query body");
        let json = serde_json::from_str(&text).unwrap_or(Json::String(text));
        (status, json)
    }

    /// The raw streams of a metric, sorted by instance id and attributes for stable asserts.
    pub async fn series(&self, metric: &str) -> Vec<Json> {
        let (status, body) = self.get(&format!("/api/v1/series?metric={metric}")).await;
        assert_eq!(status, 200, "series of {metric}: {body}");
        assert!(body["next_cursor"].is_null(), "more than one page: {body}");
        let mut streams = body["streams"].as_array().expect("streams array").clone();
        streams.sort_by_key(|stream| format!("{}{}", stream["instance"], stream["attributes"]));
        streams
    }

    /// The `value` of every stream of a metric, in `series` order.
    pub async fn values(&self, metric: &str) -> Vec<Json> {
        self.series(metric)
            .await
            .into_iter()
            .map(|stream| stream["value"].clone())
            .collect()
    }

    /// GETs `/api/v1/query?{query}` and returns the status and answer.
    pub async fn query(&self, query: &str) -> (u16, Json) {
        self.get(&format!("/api/v1/query?{query}")).await
    }

    /// The series of a successful query.
    pub async fn query_series(&self, query: &str) -> Vec<Json> {
        let (status, body) = self.query(query).await;
        assert_eq!(status, 200, "{query}: {body}");
        body["series"].as_array().expect("series array").clone()
    }

    /// The value of a query that has exactly one group.
    pub async fn total(&self, query: &str) -> Json {
        let series = self.query_series(query).await;
        assert_eq!(series.len(), 1, "{query}: {series:?}");
        series[0]["value"].clone()
    }

    pub async fn stats(&self) -> Json {
        let (status, body) = self.get("/api/v1/stats").await;
        assert_eq!(status, 200);
        body
    }

    /// Starts a graceful shutdown without waiting for it.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Cancels the servers and waits for them to finish.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("server task does not panic")
            .expect("servers stop cleanly");
    }
}

/// What an HTTP request got back.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub content_type: String,
    pub body: Bytes,
}

impl HttpAnswer {
    pub fn json(&self) -> Json {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "body is not JSON ({error}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Polls `check` until it returns `Some`, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn string_attr(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

pub fn int_attr(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// Builds an export request from one instance.
pub struct Export {
    resource: Vec<KeyValue>,
    metrics: Vec<Metric>,
}

/// A request from the instance whose `service.instance.id` is `instance`.
pub fn export(instance: &str) -> Export {
    Export {
        resource: vec![
            string_attr("service.name", "app"),
            string_attr("service.instance.id", instance),
        ],
        metrics: Vec::new(),
    }
}

fn int_point(attributes: &[(&str, &str)], start: u64, time: u64, value: i64) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attributes
            .iter()
            .map(|(key, value)| string_attr(key, value))
            .collect(),
        start_time_unix_nano: start,
        time_unix_nano: time,
        value: Some(number_data_point::Value::AsInt(value)),
        ..Default::default()
    }
}

impl Export {
    pub fn resource_attr(mut self, attribute: KeyValue) -> Export {
        self.resource.push(attribute);
        self
    }

    pub fn metric(mut self, metric: Metric) -> Export {
        self.metrics.push(metric);
        self
    }

    /// A cumulative monotonic sum point.
    pub fn counter(self, name: &str, start: u64, time: u64, value: i64) -> Export {
        self.counter_with(name, &[], start, time, value)
    }

    pub fn counter_with(
        self,
        name: &str,
        attributes: &[(&str, &str)],
        start: u64,
        time: u64,
        value: i64,
    ) -> Export {
        self.sum(name, 2, true, int_point(attributes, start, time, value))
    }

    /// One cumulative counter with `n` streams, attribute `key` from `0` to `n - 1`, each at
    /// `value`.
    pub fn wide_counter(self, name: &str, key: &str, n: usize, value: i64) -> Export {
        let points = (0..n)
            .map(|index| NumberDataPoint {
                attributes: vec![string_attr(key, &index.to_string())],
                ..int_point(&[], 1, 10, value)
            })
            .collect();
        self.metric(Metric {
            name: name.into(),
            data: Some(Data::Sum(Sum {
                data_points: points,
                aggregation_temporality: 2,
                is_monotonic: true,
            })),
            ..Default::default()
        })
    }

    /// A delta monotonic sum point.
    pub fn delta_counter(self, name: &str, start: u64, time: u64, value: i64) -> Export {
        self.sum(name, 1, true, int_point(&[], start, time, value))
    }

    /// A cumulative non-monotonic sum point.
    pub fn up_down(self, name: &str, start: u64, time: u64, value: i64) -> Export {
        self.sum(name, 2, false, int_point(&[], start, time, value))
    }

    pub fn sum(
        self,
        name: &str,
        temporality: i32,
        monotonic: bool,
        point: NumberDataPoint,
    ) -> Export {
        self.metric(Metric {
            name: name.into(),
            unit: "1".into(),
            data: Some(Data::Sum(Sum {
                data_points: vec![point],
                aggregation_temporality: temporality,
                is_monotonic: monotonic,
            })),
            ..Default::default()
        })
    }

    pub fn gauge(self, name: &str, time: u64, value: f64) -> Export {
        self.metric(Metric {
            name: name.into(),
            unit: "1".into(),
            data: Some(Data::Gauge(Gauge {
                data_points: vec![NumberDataPoint {
                    time_unix_nano: time,
                    value: Some(number_data_point::Value::AsDouble(value)),
                    ..Default::default()
                }],
            })),
            ..Default::default()
        })
    }

    /// A cumulative explicit-bucket histogram point.
    pub fn histogram(
        self,
        name: &str,
        start: u64,
        time: u64,
        bounds: &[f64],
        counts: &[u64],
    ) -> Export {
        self.metric(Metric {
            name: name.into(),
            unit: "s".into(),
            data: Some(Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    start_time_unix_nano: start,
                    time_unix_nano: time,
                    count: counts.iter().sum(),
                    sum: Some(counts.iter().sum::<u64>() as f64),
                    bucket_counts: counts.to_vec(),
                    explicit_bounds: bounds.to_vec(),
                    ..Default::default()
                }],
                aggregation_temporality: 2,
            })),
            ..Default::default()
        })
    }

    /// A cumulative exponential histogram point with positive buckets from index 0.
    pub fn exp_histogram(
        self,
        name: &str,
        start: u64,
        time: u64,
        scale: i32,
        counts: &[u64],
    ) -> Export {
        self.metric(Metric {
            name: name.into(),
            unit: "By".into(),
            data: Some(Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint {
                    start_time_unix_nano: start,
                    time_unix_nano: time,
                    count: counts.iter().sum(),
                    scale,
                    positive: Some(Buckets {
                        offset: 0,
                        bucket_counts: counts.to_vec(),
                    }),
                    ..Default::default()
                }],
                aggregation_temporality: 2,
            })),
            ..Default::default()
        })
    }

    /// A summary point with `(quantile, value)` pairs.
    pub fn summary(
        self,
        name: &str,
        time: u64,
        count: u64,
        sum: f64,
        quantiles: &[(f64, f64)],
    ) -> Export {
        self.metric(Metric {
            name: name.into(),
            data: Some(Data::Summary(Summary {
                data_points: vec![SummaryDataPoint {
                    time_unix_nano: time,
                    count,
                    sum,
                    quantile_values: quantiles
                        .iter()
                        .map(|&(quantile, value)| ValueAtQuantile { quantile, value })
                        .collect(),
                    ..Default::default()
                }],
            })),
            ..Default::default()
        })
    }

    pub fn build(self) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: self.resource,
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics: self.metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }
}

/// Gzip-compresses `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("write to memory");
    encoder.finish().expect("finish in memory")
}
