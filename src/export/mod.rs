//! Sending the totals upstream: OTLP (gRPC or HTTP/protobuf) and Prometheus remote-write
//! (`docs/design.md`, "Beyond one machine").
//!
//! Each exporter, every `interval`, aggregates the store as `/metrics` does
//! ([`Families::collect`], on the query threads, in the background of ingest), encodes one
//! batch ([`otlp`], [`remote_write`]) and queues it ([`delivery`]); the head of the queue is
//! sent when the back-off allows. Once the receivers have drained at shutdown, each
//! exporter makes one last attempt with the newest totals, bounded by its timeout and
//! [`FINAL_ATTEMPT`].

pub mod delivery;
pub mod otlp;
pub mod remote_write;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use prost::Message;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{
    ExportCompression, ExportProtocol, ExportersConfig, OtlpExporterConfig, RemoteWriteConfig,
    Secret,
};
use crate::model::AttrValue;
use crate::query::prometheus::Families;
use crate::query::{Answers, Workers};
use crate::store::{ExporterKind, Store};
use delivery::{Attempt, Batch, Queue};

/// The gRPC method OTLP metrics are sent to.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// Longest the last attempt at shutdown may take.
pub const FINAL_ATTEMPT: Duration = Duration::from_secs(5);

/// An exporter that cannot be set up, under the key that says why.
#[derive(Debug, thiserror::Error)]
#[error("config key `{key}`: {message}")]
pub struct ExportError {
    pub key: String,
    pub message: String,
}

/// One configured exporter, ready to run.
pub struct Exporter {
    kind: ExporterKind,
    interval: Duration,
    timeout: Duration,
    queue_size: usize,
    max_queue_bytes: usize,
    upstream: Upstream,
    encoding: Encoding,
    /// Where it sends, for the start-up line.
    pub target: String,
}

enum Upstream {
    Grpc {
        channel: tonic::transport::Channel,
        headers: HeaderMap,
        gzip: bool,
    },
    Http {
        client: Box<HttpClient>,
        uri: Uri,
        headers: HeaderMap,
    },
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

#[derive(Clone)]
enum Encoding {
    Otlp {
        identity: Vec<(String, AttrValue)>,
        continuity: Arc<Mutex<otlp::Continuity>>,
        /// gzip the body (OTLP/HTTP; gRPC compresses in tonic).
        gzip_body: bool,
    },
    RemoteWrite {
        external: Vec<(String, String)>,
    },
}

/// The exporters `config` turns on.
///
/// # Errors
/// [`ExportError`] for a header that is not a valid HTTP header, or a CA file that cannot
/// be used.
pub fn configured(config: &ExportersConfig) -> Result<Vec<Exporter>, ExportError> {
    let host = host_name();
    let mut exporters = Vec::new();
    if let Some(endpoint) = &config.otlp.endpoint {
        exporters.push(otlp_exporter(&config.otlp, &endpoint.0, &host)?);
    }
    if let Some(url) = &config.prometheus_remote_write.url {
        exporters.push(remote_write_exporter(
            &config.prometheus_remote_write,
            &url.0,
            &host,
        )?);
    }
    Ok(exporters)
}

fn otlp_exporter(
    config: &OtlpExporterConfig,
    endpoint: &Uri,
    host: &str,
) -> Result<Exporter, ExportError> {
    let key = "exporters.otlp";
    let mut headers = header_map(&config.headers, key)?;
    let gzip = config.compression == ExportCompression::Gzip;
    if gzip && config.protocol == ExportProtocol::HttpProtobuf {
        headers.insert(
            http::header::CONTENT_ENCODING,
            HeaderValue::from_static("gzip"),
        );
    }
    let mut identity: Vec<(String, AttrValue)> = vec![
        ("host.name".into(), AttrValue::Str(host.to_string())),
        (
            "service.instance.id".into(),
            AttrValue::Str(format!("fanin@{host}")),
        ),
    ];
    for (name, value) in &config.resource {
        identity.retain(|(existing, _)| existing != name);
        identity.push((name.clone(), value.0.clone()));
    }
    let upstream = match config.protocol {
        ExportProtocol::Grpc => Upstream::Grpc {
            channel: grpc_channel(endpoint, config.ca_file.as_deref(), config.timeout, key)?,
            headers,
            gzip,
        },
        ExportProtocol::HttpProtobuf => {
            let uri = if matches!(endpoint.path(), "" | "/") {
                format!("{}/v1/metrics", endpoint.to_string().trim_end_matches('/'))
                    .parse()
                    .map_err(|error| ExportError {
                        key: format!("{key}.endpoint"),
                        message: format!("{error}"),
                    })?
            } else {
                endpoint.clone()
            };
            Upstream::Http {
                client: Box::new(http_client(config.ca_file.as_deref(), key)?),
                uri,
                headers,
            }
        }
    };
    Ok(Exporter {
        kind: ExporterKind::Otlp,
        interval: config.interval,
        timeout: config.timeout,
        queue_size: config.queue_size.get(),
        max_queue_bytes: config.max_queue_bytes.get(),
        target: format!(
            "{endpoint} ({})",
            match config.protocol {
                ExportProtocol::Grpc => "grpc",
                ExportProtocol::HttpProtobuf => "http/protobuf",
            }
        ),
        upstream,
        encoding: Encoding::Otlp {
            identity,
            continuity: Arc::default(),
            gzip_body: gzip && config.protocol == ExportProtocol::HttpProtobuf,
        },
    })
}

fn remote_write_exporter(
    config: &RemoteWriteConfig,
    url: &Uri,
    host: &str,
) -> Result<Exporter, ExportError> {
    let key = "exporters.prometheus_remote_write";
    let mut headers = header_map(&config.headers, key)?;
    headers.insert(
        http::header::CONTENT_ENCODING,
        HeaderValue::from_static("snappy"),
    );
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    );
    headers.insert(
        HeaderName::from_static("x-prometheus-remote-write-version"),
        HeaderValue::from_static("0.1.0"),
    );
    let mut external: Vec<(String, String)> = config
        .external_labels
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    if !config.external_labels.contains_key("fanin_instance") {
        external.push(("fanin_instance".into(), host.to_string()));
    }
    Ok(Exporter {
        kind: ExporterKind::RemoteWrite,
        interval: config.interval,
        timeout: config.timeout,
        queue_size: config.queue_size.get(),
        max_queue_bytes: config.max_queue_bytes.get(),
        target: url.to_string(),
        upstream: Upstream::Http {
            client: Box::new(http_client(config.ca_file.as_deref(), key)?),
            uri: url.clone(),
            headers,
        },
        encoding: Encoding::RemoteWrite { external },
    })
}

fn header_map(
    headers: &std::collections::BTreeMap<String, Secret>,
    key: &str,
) -> Result<HeaderMap, ExportError> {
    let mut map = HeaderMap::new();
    for (name, Secret(value)) in headers {
        let invalid = |what: &str| ExportError {
            key: format!("{key}.headers.{name}"),
            message: format!("not a valid HTTP header {what}"),
        };
        let header = HeaderName::try_from(name.as_str()).map_err(|_| invalid("name"))?;
        let mut value = HeaderValue::try_from(value.as_str()).map_err(|_| invalid("value"))?;
        value.set_sensitive(true);
        map.insert(header, value);
    }
    Ok(map)
}

fn http_client(ca_file: Option<&std::path::Path>, key: &str) -> Result<HttpClient, ExportError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match ca_file {
        Some(path) => {
            let roots = crate::security::tls::roots(path).map_err(|message| ExportError {
                key: format!("{key}.ca_file"),
                message,
            })?;
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|source| ExportError {
                    key: format!("{key}.ca_file"),
                    message: source.to_string(),
                })?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.with_tls_config(config)
        }
        None => builder
            .with_provider_and_native_roots(Arc::unwrap_or_clone(provider))
            .map_err(|source| ExportError {
                key: format!("{key}.ca_file"),
                message: format!("cannot read the system's certificates: {source}"),
            })?,
    };
    let connector = builder.https_or_http().enable_all_versions().build();
    Ok(Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector))
}

fn grpc_channel(
    endpoint: &Uri,
    ca_file: Option<&std::path::Path>,
    timeout: Duration,
    key: &str,
) -> Result<tonic::transport::Channel, ExportError> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let error = |message: String| ExportError {
        key: format!("{key}.endpoint"),
        message,
    };
    let mut channel = Endpoint::from(endpoint.clone())
        .connect_timeout(timeout)
        .timeout(timeout);
    if endpoint.scheme_str() == Some("https") {
        let tls = match ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| ExportError {
                    key: format!("{key}.ca_file"),
                    message: format!("{}: {source}", path.display()),
                })?;
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
            }
            None => ClientTlsConfig::new().with_native_roots(),
        };
        channel = channel
            .tls_config(tls)
            .map_err(|source| error(source.to_string()))?;
    }
    Ok(channel.connect_lazy())
}

/// This host's name, for the default identity upstream.
fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}

fn unix_nanos() -> u64 {
    crate::model::unix_nanos(SystemTime::now())
}

impl Exporter {
    /// The batch of the store's totals now, built on the query threads.
    async fn batch(
        &self,
        store: &Store,
        answers: &Arc<Answers>,
        workers: &Workers,
    ) -> Option<Batch> {
        let (store, answers) = (store.clone(), Arc::clone(answers));
        let encoding = self.encoding.clone();
        let kind = self.kind.as_str();
        let built = workers
            .run(move || {
                let families = Families::collect(&store, &answers);
                encode(&families, &encoding)
            })
            .await;
        match built {
            Ok(Ok(batch)) => Some(batch),
            Ok(Err(error)) => {
                tracing::warn!(exporter = kind, %error, "Cannot encode a batch");
                None
            }
            Err(error) => {
                tracing::warn!(exporter = kind, %error, "Building a batch failed");
                None
            }
        }
    }

    /// Sends one batch once, waiting at most `timeout`.
    async fn attempt(&self, batch: &Batch, timeout: Duration) -> Attempt {
        match tokio::time::timeout(timeout, self.send(batch)).await {
            Ok(attempt) => attempt,
            Err(_) => Attempt::Retry {
                reason: format!("no answer within {timeout:?}"),
                after: None,
            },
        }
    }

    async fn send(&self, batch: &Batch) -> Attempt {
        match &self.upstream {
            Upstream::Grpc {
                channel,
                headers,
                gzip,
            } => send_grpc(channel, headers, *gzip, batch).await,
            Upstream::Http {
                client,
                uri,
                headers,
            } => {
                let otlp = matches!(self.encoding, Encoding::Otlp { .. });
                send_http(client, uri, headers, batch, otlp).await
            }
        }
    }

    /// Runs until `shutdown`: a batch every interval, sent as the queue and back-off allow;
    /// then one last attempt with the newest totals (call it once the receivers are done).
    pub async fn run(
        self,
        store: Store,
        answers: Arc<Answers>,
        workers: Workers,
        shutdown: CancellationToken,
    ) {
        let stats = store.stats();
        let mut queue = Queue::new(self.kind, self.queue_size, self.max_queue_bytes);
        let mut next_batch = Instant::now() + self.interval;
        'export: loop {
            let wake = match queue.retry_at() {
                Some(retry) => retry.min(next_batch),
                None if queue.is_empty() => next_batch,
                None => Instant::now(),
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep_until(wake) => {}
            }
            if Instant::now() >= next_batch {
                next_batch = Instant::now() + self.interval;
                if let Some(batch) = self.batch(&store, &answers, &workers).await {
                    queue.push(batch, stats);
                }
            }
            while let Some(batch) = queue.ready(Instant::now()) {
                let batch = batch.clone();
                let attempt = tokio::select! {
                    () = shutdown.cancelled() => break 'export,
                    attempt = self.attempt(&batch, self.timeout) => attempt,
                };
                queue.settle(attempt, Instant::now(), stats);
            }
        }
        // The newest totals, once: cumulative series lose nothing by skipping older batches.
        queue.supersede(stats);
        if let Some(batch) = self.batch(&store, &answers, &workers).await {
            let attempt = self.attempt(&batch, self.timeout.min(FINAL_ATTEMPT)).await;
            match attempt {
                Attempt::Delivered { .. } => {
                    queue.push(batch, stats);
                    queue.settle(attempt, Instant::now(), stats);
                }
                failed => {
                    tracing::warn!(
                        exporter = self.kind.as_str(),
                        attempt = ?failed,
                        "The last totals did not reach upstream at shutdown"
                    );
                    stats.exporter(self.kind).failed(1);
                }
            }
        }
    }

    pub fn kind(&self) -> ExporterKind {
        self.kind
    }
}

fn encode(families: &Families, encoding: &Encoding) -> Result<Batch, std::io::Error> {
    match encoding {
        Encoding::Otlp {
            identity,
            continuity,
            gzip_body,
        } => {
            let mut continuity = continuity
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            let (request, points) =
                otlp::request(families, identity, &mut continuity, unix_nanos());
            let encoded = request.encode_to_vec();
            let body = if *gzip_body {
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                encoder.write_all(&encoded)?;
                encoder.finish()?
            } else {
                encoded
            };
            Ok(Batch {
                body: Bytes::from(body),
                points,
            })
        }
        Encoding::RemoteWrite { external } => {
            let now_ms = i64::try_from(unix_nanos() / 1_000_000).unwrap_or(i64::MAX);
            let (body, samples) = remote_write::body(families, now_ms, external.clone())
                .map_err(std::io::Error::other)?;
            Ok(Batch {
                body: Bytes::from(body),
                points: samples as u64,
            })
        }
    }
}

/// A delivered OTLP batch, with the `partial_success` of the answer `body`, if any (an
/// empty or unreadable answer is a full success).
fn delivered(body: &[u8]) -> Attempt {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
    let partial = ExportMetricsServiceResponse::decode(body)
        .ok()
        .and_then(|response| response.partial_success);
    Attempt::Delivered {
        rejected: partial.as_ref().map_or(0, |partial| {
            u64::try_from(partial.rejected_data_points).unwrap_or(0)
        }),
        message: partial
            .map(|partial| partial.error_message)
            .unwrap_or_default(),
    }
}

async fn send_grpc(
    channel: &tonic::transport::Channel,
    headers: &HeaderMap,
    gzip: bool,
    batch: &Batch,
) -> Attempt {
    use tonic::Code;
    use tonic_types::StatusExt;
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    if gzip {
        grpc = grpc.send_compressed(tonic::codec::CompressionEncoding::Gzip);
    }
    if let Err(error) = grpc.ready().await {
        return Attempt::Retry {
            reason: format!("cannot connect: {error}"),
            after: None,
        };
    }
    let mut request = tonic::Request::new(batch.body.clone());
    *request.metadata_mut() = tonic::metadata::MetadataMap::from_headers(headers.clone());
    let path = http::uri::PathAndQuery::from_static(EXPORT_PATH);
    match grpc
        .unary(request, path, crate::receiver::grpc::RawCodec)
        .await
    {
        Ok(response) => delivered(&response.into_inner()),
        Err(status) => {
            let retry_info = status
                .get_details_retry_info()
                .and_then(|info| info.retry_delay);
            let reason = format!("{:?}: {}", status.code(), status.message());
            match status.code() {
                // A connection that broke in the middle of a call (no grpc-status at all).
                Code::Unknown
                | Code::Cancelled
                | Code::DeadlineExceeded
                | Code::Aborted
                | Code::OutOfRange
                | Code::Unavailable
                | Code::DataLoss => Attempt::Retry {
                    reason,
                    after: retry_info,
                },
                // Retryable only when upstream says when (OTLP).
                Code::ResourceExhausted if retry_info.is_some() => Attempt::Retry {
                    reason,
                    after: retry_info,
                },
                _ => Attempt::Permanent { reason },
            }
        }
    }
}

async fn send_http(
    client: &HttpClient,
    uri: &Uri,
    headers: &HeaderMap,
    batch: &Batch,
    otlp: bool,
) -> Attempt {
    let mut request = http::Request::post(uri.clone());
    if let Some(map) = request.headers_mut() {
        map.clone_from(headers);
        if otlp {
            map.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-protobuf"),
            );
        }
    }
    let request = match request.body(Full::new(batch.body.clone())) {
        Ok(request) => request,
        Err(error) => {
            return Attempt::Permanent {
                reason: format!("cannot build the request: {error}"),
            };
        }
    };
    let response = match client.request(request).await {
        Ok(response) => response,
        Err(error) => {
            return Attempt::Retry {
                reason: format!("cannot reach upstream: {error}"),
                after: None,
            };
        }
    };
    let status = response.status();
    let after = delivery::retry_after(response.headers());
    // At most 64 KiB of an answer is read: it is a status or a short message.
    let body = http_body_util::Limited::new(response.into_body(), 64 * 1024)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    if status.is_success() {
        // A remote-write answer has no body to read; OTLP's may hold a partial success.
        return if otlp {
            delivered(&body)
        } else {
            Attempt::Delivered {
                rejected: 0,
                message: String::new(),
            }
        };
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
    let reason = format!("HTTP {status}: {}", text.trim());
    let retryable = matches!(status.as_u16(), 408 | 429 | 502 | 503 | 504)
        || (!otlp && status.is_server_error());
    if retryable {
        Attempt::Retry { reason, after }
    } else {
        Attempt::Permanent { reason }
    }
}
