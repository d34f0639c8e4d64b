//! A fork-aware meter provider for pre-fork workers, built on the official OpenTelemetry SDK.
//!
//! A process that forks workers (the way gunicorn, uWSGI or a hand-written pre-fork server
//! does) hands each child a copy of its OpenTelemetry state: the provider's export thread
//! does not survive the fork, and every child carries the parent's resource, so N workers
//! either export nothing or all write one series. [`Shim`] avoids both:
//!
//! - its provider is built lazily, in the process that first asks for a meter, and rebuilt
//!   in a child after `fork()` (a pid check, plus a `pthread_atfork` child hook that makes
//!   the check one atomic load). The inherited provider is abandoned, never shut down, so
//!   the parent's data is not flushed a second time from the child;
//! - the resource carries `service.instance.id = "<host>-pid-<pid>"`, `process.pid` and
//!   `host.name`, after `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` and the attributes
//!   you give (the three identity keys always win: a per-worker identity is the point);
//! - meters come from the shim's own provider. [`Shim::install_global`] makes the shim the
//!   global provider only if nobody else set one, and says so otherwise;
//! - [`Shim::shutdown`], or dropping the last clone of the shim, flushes the worker's last
//!   values;
//! - it exports over OTLP/gRPC, OTLP/HTTP (protobuf), or fanin's unix socket
//!   (`unix:/path/to/fanin.sock`), honouring `OTEL_EXPORTER_OTLP_*` for whatever the code
//!   leaves unset.
//!
//! Instruments belong to the provider that made them, so an instrument created before a fork
//! records into the abandoned provider in the child. Create instruments after the fork, or
//! hold them as an [`Instrument`], which re-creates itself in a new process:
//!
//! ```no_run
//! use fanin::shim::Shim;
//! use opentelemetry::KeyValue;
//!
//! # fn main() -> Result<(), fanin::shim::ShimError> {
//! let shim = Shim::builder()
//!     .service_name("checkout")
//!     .endpoint("http://127.0.0.1:4317")
//!     .build()?;
//! let requests = shim.instrument("checkout", |meter| meter.u64_counter("http.requests").build());
//!
//! // ... fork the workers here; in each worker:
//! requests.get().add(1, &[KeyValue::new("route", "/cart")]);
//! shim.shutdown()?; // the worker's last values reach fanin before it exits
//! # Ok(())
//! # }
//! ```
//!
//! Blocking calls ([`Shim::force_flush`], [`Shim::shutdown`], the first [`Shim::meter`] in a
//! process) wait for the network or spawn threads; from async code, call them through
//! `spawn_blocking`.
//!
//! Two limits of the fork model apply, as to any library: fork while no other thread of the
//! parent is inside a shim call (a lock held at fork time stays held in the child), and
//! call [`Shim::shutdown`] before `std::process::exit`, which runs no destructors.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use opentelemetry::metrics::{Meter, MeterProvider};
use opentelemetry::{InstrumentationScope, KeyValue, global};
use opentelemetry_otlp::MetricExporter;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};

use crate::sys;

/// Where the SDK's own default would be `localhost`, which may resolve to `::1` while fanin
/// listens on 127.0.0.1.
const DEFAULT_GRPC_ENDPOINT: &str = "http://127.0.0.1:4317";
const DEFAULT_HTTP_ENDPOINT: &str = "http://127.0.0.1:4318";

/// The OTLP protocol the shim exports with. A `unix:` endpoint always means gRPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (`grpc`).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`http/protobuf`).
    HttpProtobuf,
}

impl Protocol {
    fn parse(text: &str, source: &'static str) -> Result<Protocol, ShimError> {
        match text.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            other => Err(ShimError::Protocol {
                value: other.to_string(),
                variable: source,
            }),
        }
    }
}

/// What went wrong setting up or running the shim.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("unsupported OTLP protocol `{value}` (from {variable}): use grpc or http/protobuf")]
    Protocol {
        value: String,
        variable: &'static str,
    },
    #[error("bad OTLP endpoint `{endpoint}`: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("cannot build the metrics pipeline: {0}")]
    Build(String),
    #[error("flushing metrics failed: {0}")]
    Flush(String),
    #[error(
        "a global meter provider is already installed (by auto-instrumentation or another \
         library) and the shim did not replace it; meters from opentelemetry::global will not \
         carry this worker's identity: take them from Shim::meter instead"
    )]
    GlobalTaken,
}

/// Where the exporter sends, resolved once when the shim is built.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Grpc(String),
    /// The full URL, `/v1/metrics` included.
    Http(String),
    Unix(PathBuf),
}

#[derive(Clone, Debug)]
struct Settings {
    service_name: Option<String>,
    attributes: Vec<KeyValue>,
    target: Target,
    interval: Option<Duration>,
    timeout: Option<Duration>,
}

/// Builds a [`Shim`]; see the module docs. Nothing here touches the network or spawns a
/// thread: the pipeline is built on first use, in the process that uses it.
#[derive(Debug, Default)]
pub struct ShimBuilder {
    service_name: Option<String>,
    endpoint: Option<String>,
    protocol: Option<Protocol>,
    attributes: Vec<KeyValue>,
    interval: Option<Duration>,
    timeout: Option<Duration>,
}

impl ShimBuilder {
    /// `service.name`; without it, `OTEL_SERVICE_NAME` or the SDK's default.
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = Some(name.into());
        self
    }

    /// Where fanin listens: `http://127.0.0.1:4317` (gRPC), `http://127.0.0.1:4318` (HTTP,
    /// `/v1/metrics` is appended), or `unix:/run/fanin.sock`. Without it:
    /// `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` (used as is), `OTEL_EXPORTER_OTLP_ENDPOINT`, or
    /// fanin's default port on 127.0.0.1 for the protocol.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Without it: `OTEL_EXPORTER_OTLP_METRICS_PROTOCOL`, `OTEL_EXPORTER_OTLP_PROTOCOL`, or
    /// gRPC.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = Some(protocol);
        self
    }

    /// A resource attribute for every worker (on top of `OTEL_RESOURCE_ATTRIBUTES`).
    pub fn attribute(mut self, attribute: KeyValue) -> Self {
        self.attributes.push(attribute);
        self
    }

    /// How often the periodic reader exports; without it `OTEL_METRIC_EXPORT_INTERVAL` or
    /// the SDK's 60 s.
    pub fn export_interval(mut self, interval: Duration) -> Self {
        self.interval = Some(interval);
        self
    }

    /// Timeout of one export; without it `OTEL_EXPORTER_OTLP_TIMEOUT` or the SDK's 10 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Resolves the endpoint and protocol (from here or the environment) and checks them, so
    /// that a mistake shows up now, in the parent, rather than in every worker.
    pub fn build(self) -> Result<Shim, ShimError> {
        let target = resolve_target(self.endpoint, self.protocol, |name| {
            std::env::var(name)
                .ok()
                .filter(|value| !value.trim().is_empty())
        })?;
        sys::install_fork_hook();
        Ok(Shim {
            inner: Arc::new(Inner {
                settings: Settings {
                    service_name: self.service_name,
                    attributes: self.attributes,
                    target,
                    interval: self.interval,
                    timeout: self.timeout,
                },
                state: Mutex::new(State::Idle),
                warned: AtomicBool::new(false),
            }),
        })
    }
}

/// Picks the target from the builder's values, then the `OTEL_*` variables `env` returns.
fn resolve_target(
    endpoint: Option<String>,
    protocol: Option<Protocol>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Target, ShimError> {
    let protocol = match protocol {
        Some(protocol) => Some(protocol),
        None => match (
            env("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"),
            env("OTEL_EXPORTER_OTLP_PROTOCOL"),
        ) {
            (Some(value), _) => Some(Protocol::parse(
                &value,
                "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
            )?),
            (None, Some(value)) => Some(Protocol::parse(&value, "OTEL_EXPORTER_OTLP_PROTOCOL")?),
            (None, None) => None,
        },
    };
    // A signal-specific endpoint is the full URL; the others are a base that HTTP extends.
    let (endpoint, is_full_url) = match endpoint {
        Some(endpoint) => (Some(endpoint), false),
        None => match env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") {
            Some(endpoint) => (Some(endpoint), true),
            None => (env("OTEL_EXPORTER_OTLP_ENDPOINT"), false),
        },
    };
    let endpoint = endpoint.map(|endpoint| endpoint.trim().to_string());
    if let Some(path) = endpoint.as_deref().and_then(|e| e.strip_prefix("unix:")) {
        if protocol == Some(Protocol::HttpProtobuf) {
            return Err(ShimError::Endpoint {
                endpoint: format!("unix:{path}"),
                reason: "fanin's unix socket speaks OTLP/gRPC; use protocol grpc".to_string(),
            });
        }
        // unix:/path and unix:///path both name /path.
        let path = path.strip_prefix("//").unwrap_or(path);
        if !path.starts_with('/') {
            return Err(ShimError::Endpoint {
                endpoint: format!("unix:{path}"),
                reason: "the socket path must be absolute".to_string(),
            });
        }
        return Ok(Target::Unix(PathBuf::from(path)));
    }
    let protocol = protocol.unwrap_or(Protocol::Grpc);
    let url = match (protocol, endpoint) {
        (Protocol::Grpc, None) => DEFAULT_GRPC_ENDPOINT.to_string(),
        (Protocol::HttpProtobuf, None) => format!("{DEFAULT_HTTP_ENDPOINT}/v1/metrics"),
        (Protocol::Grpc, Some(url)) => url,
        (Protocol::HttpProtobuf, Some(url)) if is_full_url || url.ends_with("/v1/metrics") => url,
        (Protocol::HttpProtobuf, Some(url)) => format!("{}/v1/metrics", url.trim_end_matches('/')),
    };
    check_url(&url)?;
    Ok(match protocol {
        Protocol::Grpc => Target::Grpc(url),
        Protocol::HttpProtobuf => Target::Http(url),
    })
}

fn check_url(url: &str) -> Result<(), ShimError> {
    let bad = |reason: &str| ShimError::Endpoint {
        endpoint: url.to_string(),
        reason: reason.to_string(),
    };
    let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("use http://HOST:PORT, https://HOST:PORT or unix:/PATH")),
    }
    if uri.authority().is_none() {
        return Err(bad("no host"));
    }
    Ok(())
}

/// A fork-aware meter provider; see the module docs. Clones share one pipeline.
#[derive(Clone, Debug)]
pub struct Shim {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: Settings,
    state: Mutex<State>,
    /// Whether a failure to build the pipeline was logged (once per process is enough).
    warned: AtomicBool,
}

#[derive(Debug)]
enum State {
    /// Nothing built yet in this process.
    Idle,
    Running(Pipeline),
    /// After [`Shim::shutdown`]: meters are no-ops.
    Closed,
}

/// One process's provider, and the runtime its gRPC channel runs on.
#[derive(Debug)]
struct Pipeline {
    pid: u32,
    generation: u64,
    provider: SdkMeterProvider,
    /// Kept alive for the gRPC channel; dropped after the provider.
    _runtime: Option<tokio::runtime::Runtime>,
}

impl Pipeline {
    fn built_in_this_process(&self) -> bool {
        same_process(self.generation, self.pid)
    }
}

/// Whether a value recorded at (`generation`, `pid`) was recorded in the calling process.
fn same_process(generation: u64, pid: u32) -> bool {
    // With the at-fork hook in place the generation alone answers, without a syscall; the
    // pid check covers a process where the hook could not be registered.
    generation == sys::fork_generation() && (sys::install_fork_hook() || pid == std::process::id())
}

impl Shim {
    pub fn builder() -> ShimBuilder {
        ShimBuilder::default()
    }

    /// A meter from this process's provider, building it first if this process has none (the
    /// first call, or the first call after a fork). If the pipeline cannot be built, the
    /// error is logged once and the meter is a no-op: metrics must not take the worker down.
    pub fn meter(&self, name: &'static str) -> Meter {
        self.meter_with_scope(InstrumentationScope::builder(name).build())
    }

    /// This process's provider, built on first use.
    pub fn provider(&self) -> Result<SdkMeterProvider, ShimError> {
        self.inner.current()
    }

    /// An instrument that re-creates itself (through `make`) in each new process; see
    /// [`Instrument`].
    pub fn instrument<T, F>(&self, scope: &'static str, make: F) -> Instrument<T>
    where
        T: Clone,
        F: Fn(&Meter) -> T + Send + Sync + 'static,
    {
        Instrument {
            shim: self.clone(),
            scope,
            make: Box::new(make),
            cached: Mutex::new(None),
        }
    }

    /// `service.instance.id` the shim gives this process.
    pub fn instance_id() -> String {
        format!("{}-pid-{}", host_name(), std::process::id())
    }

    /// Exports what this process recorded now, and waits for the answer.
    pub fn force_flush(&self) -> Result<(), ShimError> {
        let provider = match &*self.inner.lock() {
            State::Running(pipeline) if pipeline.built_in_this_process() => {
                pipeline.provider.clone()
            }
            // Nothing was recorded in this process.
            _ => return Ok(()),
        };
        provider
            .force_flush()
            .map_err(|error| ShimError::Flush(error.to_string()))
    }

    /// Exports this process's last values and stops its pipeline; later meters are no-ops.
    /// Call it when a worker exits orderly (dropping the last clone does the same).
    pub fn shutdown(&self) -> Result<(), ShimError> {
        let previous = std::mem::replace(&mut *self.inner.lock(), State::Closed);
        match previous {
            State::Running(pipeline) => finish(pipeline),
            State::Idle | State::Closed => Ok(()),
        }
    }

    /// Makes the shim the global meter provider (`opentelemetry::global`), so libraries that
    /// use the global get this worker's identity too. If someone else already installed a
    /// global provider, it is left in place and this returns [`ShimError::GlobalTaken`]
    /// (also logged): silently replacing it would split the process's metrics in two.
    pub fn install_global(&self) -> Result<(), ShimError> {
        /// Address of the provider the shim installed, to tell its own from someone else's.
        static INSTALLED: AtomicUsize = AtomicUsize::new(0);
        let current = global::meter_provider();
        let ours = INSTALLED.load(Ordering::Relaxed) == address(&current);
        // The SDK's default global is the zero-sized NoopMeterProvider; any provider that
        // does something holds state (tests/shim.rs keeps this assumption honest).
        let unset = std::mem::size_of_val(&*current) == 0;
        if !ours && !unset {
            tracing::warn!("{}", ShimError::GlobalTaken);
            return Err(ShimError::GlobalTaken);
        }
        global::set_meter_provider(self.clone());
        INSTALLED.store(address(&global::meter_provider()), Ordering::Relaxed);
        Ok(())
    }
}

fn address(provider: &Arc<dyn MeterProvider + Send + Sync>) -> usize {
    Arc::as_ptr(provider).cast::<()>() as usize
}

impl MeterProvider for Shim {
    fn meter_with_scope(&self, scope: InstrumentationScope) -> Meter {
        match self.inner.current() {
            Ok(provider) => provider.meter_with_scope(scope),
            Err(error) => {
                if !self.inner.warned.swap(true, Ordering::Relaxed) {
                    tracing::error!("fanin shim: {error}; this process's metrics are dropped");
                }
                opentelemetry::metrics::noop::NoopMeterProvider::new().meter_with_scope(scope)
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// This process's provider: the one built here, or a new one if there is none or the
    /// one in hand was inherited through a fork.
    fn current(&self) -> Result<SdkMeterProvider, ShimError> {
        let mut state = self.lock();
        match &*state {
            State::Running(pipeline) if pipeline.built_in_this_process() => {
                return Ok(pipeline.provider.clone());
            }
            State::Closed => {
                return Err(ShimError::Build("the shim was shut down".to_string()));
            }
            State::Running(_) | State::Idle => {}
        }
        if let State::Running(inherited) = std::mem::replace(&mut *state, State::Idle) {
            abandon(inherited);
        }
        let pipeline = build_pipeline(&self.settings)?;
        let provider = pipeline.provider.clone();
        *state = State::Running(pipeline);
        Ok(provider)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let state = std::mem::replace(
            self.state.get_mut().unwrap_or_else(PoisonError::into_inner),
            State::Closed,
        );
        if let State::Running(pipeline) = state {
            if pipeline.built_in_this_process() {
                if let Err(error) = finish(pipeline) {
                    tracing::warn!("fanin shim: {error}");
                }
            } else {
                abandon(pipeline);
            }
        }
    }
}

/// Leaves a pipeline inherited through a fork alone. Its export thread and runtime threads
/// stayed in the parent, so shutting it down here would block on threads that do not exist;
/// its recorded values are the parent's and must not be exported twice. Its memory is a
/// copy-on-write image of the parent's and is released when the process exits.
fn abandon(pipeline: Pipeline) {
    std::mem::forget(pipeline);
}

/// Flushes and stops a pipeline built in this process. Runs on a helper thread: the HTTP
/// client and the runtime refuse to be dropped inside an async context.
fn finish(pipeline: Pipeline) -> Result<(), ShimError> {
    on_helper_thread("fanin-shim-stop", move || {
        let result = pipeline
            .provider
            .shutdown()
            .map_err(|error| ShimError::Flush(error.to_string()));
        drop(pipeline);
        result
    })
}

fn on_helper_thread<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> Result<T, ShimError> + Send + 'static,
) -> Result<T, ShimError> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(work)
        .map_err(|error| ShimError::Build(format!("cannot start a thread: {error}")))?
        .join()
        .map_err(|_| ShimError::Build(format!("thread {name} panicked")))?
}

/// Builds a provider for this process, on a helper thread: the blocking HTTP client must
/// not be built inside an async runtime, which the caller may be running.
fn build_pipeline(settings: &Settings) -> Result<Pipeline, ShimError> {
    let settings = settings.clone();
    on_helper_thread("fanin-shim-build", move || build_here(&settings))
}

fn build_here(settings: &Settings) -> Result<Pipeline, ShimError> {
    let (exporter, runtime) = build_exporter(settings)?;
    let mut reader = PeriodicReader::builder(exporter);
    if let Some(interval) = settings.interval {
        reader = reader.with_interval(interval);
    }
    let provider = SdkMeterProvider::builder()
        .with_reader(reader.build())
        .with_resource(resource(settings))
        .build();
    Ok(Pipeline {
        pid: std::process::id(),
        generation: sys::fork_generation(),
        provider,
        _runtime: runtime,
    })
}

/// An OTLP exporter for the target, and the runtime a gRPC exporter's channel runs on.
fn build_exporter(
    settings: &Settings,
) -> Result<(MetricExporter, Option<tokio::runtime::Runtime>), ShimError> {
    let failed =
        |error: opentelemetry_otlp::ExporterBuildError| ShimError::Build(error.to_string());
    match &settings.target {
        Target::Http(url) => {
            let mut builder = MetricExporter::builder().with_http().with_endpoint(url);
            if let Some(timeout) = settings.timeout {
                builder = builder.with_timeout(timeout);
            }
            Ok((builder.build().map_err(failed)?, None))
        }
        Target::Grpc(_) | Target::Unix(_) => {
            // tonic's channel runs on a runtime the shim owns, so the shim works the same
            // inside and outside the application's own runtime.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("fanin-shim")
                .enable_all()
                .build()
                .map_err(|error| ShimError::Build(format!("cannot start a runtime: {error}")))?;
            let exporter = {
                let _entered = runtime.enter();
                let mut builder = MetricExporter::builder().with_tonic();
                builder = match &settings.target {
                    Target::Unix(path) => builder.with_channel(unix_channel(path.clone())),
                    Target::Grpc(url) | Target::Http(url) => builder.with_endpoint(url),
                };
                if let Some(timeout) = settings.timeout {
                    builder = builder.with_timeout(timeout);
                }
                builder.build().map_err(failed)?
            };
            Ok((exporter, Some(runtime)))
        }
    }
}

impl Shim {
    /// Exports `metrics` once, through an exporter built for the purpose in this process and
    /// dropped after. `fanin check` uses it to play an SDK that restarts its export thread
    /// after fork but keeps the inherited provider.
    pub(crate) fn export_once(&self, metrics: &ResourceMetrics) -> Result<(), ShimError> {
        let settings = &self.inner.settings;
        // A scoped helper thread, for the same reason as build_pipeline's.
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let (exporter, runtime) = build_exporter(settings)?;
                    let result = futures_executor::block_on(exporter.export(metrics))
                        .map_err(|error| ShimError::Flush(error.to_string()));
                    drop(exporter);
                    drop(runtime);
                    result
                })
                .join()
                .map_err(|_| ShimError::Build("the export thread panicked".to_string()))?
        })
    }
}

/// A gRPC channel to fanin's unix socket; it connects on first use.
fn unix_channel(path: PathBuf) -> tonic::transport::Channel {
    // The URI is required by the API and unused: the connector dials the socket.
    tonic::transport::Endpoint::from_static("http://fanin.sock").connect_with_connector_lazy(
        tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }),
    )
}

/// The SDK's resource (its defaults, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`), the
/// user's attributes, and this process's identity last so that it wins.
fn resource(settings: &Settings) -> Resource {
    let mut builder = Resource::builder();
    if let Some(name) = &settings.service_name {
        builder = builder.with_service_name(name.clone());
    }
    builder
        .with_attributes(settings.attributes.iter().cloned())
        .with_attributes(identity())
        .build()
}

/// The three attributes that make each worker its own instance.
pub fn identity() -> [KeyValue; 3] {
    let pid = std::process::id();
    [
        KeyValue::new("service.instance.id", Shim::instance_id()),
        KeyValue::new("process.pid", i64::from(pid)),
        KeyValue::new("host.name", host_name()),
    ]
}

/// This host's name (`host.name`), `localhost` if the kernel will not say.
pub(crate) fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// An instrument that belongs to the current process: [`Instrument::get`] hands out the one
/// made in this process, making it again (through the shim's current provider) the first
/// time it is asked for after a fork. Create it once, before or after forking.
pub struct Instrument<T> {
    shim: Shim,
    scope: &'static str,
    make: Box<dyn Fn(&Meter) -> T + Send + Sync>,
    cached: Mutex<Option<(u64, u32, T)>>,
}

impl<T: Clone> Instrument<T> {
    /// This process's instrument.
    pub fn get(&self) -> T {
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((generation, pid, instrument)) = &*cached
            && same_process(*generation, *pid)
        {
            return instrument.clone();
        }
        let instrument = (self.make)(&self.shim.meter(self.scope));
        *cached = Some((
            sys::fork_generation(),
            std::process::id(),
            instrument.clone(),
        ));
        instrument
    }
}

impl<T> std::fmt::Debug for Instrument<T> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Instrument")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(
        endpoint: Option<&str>,
        protocol: Option<Protocol>,
        env: &[(&str, &str)],
    ) -> Result<Target, ShimError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        resolve_target(endpoint.map(str::to_string), protocol, |name| {
            env.get(name).cloned()
        })
    }

    #[test]
    fn defaults_point_at_fanin_on_loopback() {
        assert_eq!(
            resolve(None, None, &[]).ok(),
            Some(Target::Grpc("http://127.0.0.1:4317".into()))
        );
        assert_eq!(
            resolve(None, Some(Protocol::HttpProtobuf), &[]).ok(),
            Some(Target::Http("http://127.0.0.1:4318/v1/metrics".into()))
        );
    }

    #[test]
    fn the_environment_fills_what_the_code_leaves_unset() {
        let env = [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://10.0.0.1:4318/"),
        ];
        assert_eq!(
            resolve(None, None, &env).ok(),
            Some(Target::Http("http://10.0.0.1:4318/v1/metrics".into()))
        );
        // The signal-specific endpoint is a full URL, used as is.
        let env = [
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://h:1/custom"),
        ];
        assert_eq!(
            resolve(None, None, &env).ok(),
            Some(Target::Http("http://h:1/custom".into()))
        );
        // The code wins over the environment.
        assert_eq!(
            resolve(Some("http://h:2"), Some(Protocol::Grpc), &env).ok(),
            Some(Target::Grpc("http://h:2".into()))
        );
    }

    #[test]
    fn unix_endpoints_name_a_socket_path() {
        for endpoint in ["unix:/run/fanin.sock", "unix:///run/fanin.sock"] {
            assert_eq!(
                resolve(Some(endpoint), None, &[]).ok(),
                Some(Target::Unix("/run/fanin.sock".into()))
            );
        }
        let error = resolve(Some("unix:/run/f.sock"), Some(Protocol::HttpProtobuf), &[])
            .err()
            .map(|error| error.to_string());
        assert!(error.is_some_and(|e| e.contains("speaks OTLP/gRPC")));
        let error = resolve(Some("unix:fanin.sock"), None, &[]).err();
        assert!(error.is_some_and(|e| e.to_string().contains("absolute")));
    }

    #[test]
    fn bad_settings_are_refused_with_the_reason() {
        let error = resolve(None, None, &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")])
            .err()
            .map(|error| error.to_string());
        assert_eq!(
            error.as_deref(),
            Some(
                "unsupported OTLP protocol `http/json` (from OTEL_EXPORTER_OTLP_PROTOCOL): use \
                 grpc or http/protobuf"
            )
        );
        for endpoint in ["127.0.0.1:4317", "ftp://h:1", "not a url"] {
            let error = resolve(Some(endpoint), None, &[]).err();
            assert!(
                matches!(error, Some(ShimError::Endpoint { .. })),
                "{endpoint}: {error:?}"
            );
        }
    }

    #[test]
    fn the_identity_names_this_process() {
        let [id, pid, host] = identity();
        let pid_text = std::process::id().to_string();
        assert!(id.value.as_str().ends_with(&format!("-pid-{pid_text}")));
        assert_eq!(
            pid.value,
            opentelemetry::Value::I64(i64::from(std::process::id()))
        );
        assert!(id.value.as_str().starts_with(host.value.as_str().as_ref()));
    }
}
