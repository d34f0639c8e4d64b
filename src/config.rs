//! Typed configuration: parsed once at startup, before any port is bound.
//!
//! `config.yaml` at the repository root is the default and is compiled into the binary
//! ([`DEFAULT_YAML`]); it is the only place defaults live. YAML is read into a generic tree,
//! `${env:NAME}` references are expanded in its string values (never in comments), and the
//! tree is then deserialised into [`Config`] with the path of any bad key recorded, so every
//! error names the key it is about.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use crate::aggregate::Agg;
use crate::model::{InstanceAttributes, name_glob};
pub use crate::store::CollisionPolicy;
use serde_json::Value as Tree;

/// The default configuration, `config.yaml` at the repository root.
pub const DEFAULT_YAML: &str = include_str!("../config.yaml");

/// Everything fanin can be told.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub receivers: ReceiversConfig,
    pub query: QueryConfig,
    pub aggregation: AggregationConfig,
    pub collisions: CollisionsConfig,
    pub limits: LimitsConfig,
    pub connections: ConnectionsConfig,
    pub exporters: ExportersConfig,
    pub storage: StorageConfig,
    /// How long shutdown waits for requests in flight.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Whether a TCP listener may bind an address other than loopback.
    pub allow_insecure: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiversConfig {
    pub otlp: OtlpConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    pub grpc: ListenerConfig,
    pub http: ListenerConfig,
    pub unix: UnixConfig,
    /// Memory for request bodies in flight, across the three listeners.
    pub max_inflight_bytes: NonZeroUsize,
    /// How long a request's body may take to arrive, once its headers have.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
}

/// OTLP/gRPC over a unix domain socket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnixConfig {
    /// Where the socket lives; `None` turns the listener off.
    pub path: Option<std::path::PathBuf>,
    /// Permissions of the socket file.
    pub mode: FileMode,
    pub max_request_bytes: NonZeroUsize,
    /// Refuse a resource whose `process.pid` is not the connected process's pid.
    pub verify_pid: bool,
}

/// Unix permission bits written in octal, e.g. `"0660"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<FileMode, D::Error> {
        let text = String::deserialize(deserializer)?;
        u32::from_str_radix(text.trim_start_matches("0o"), 8)
            .ok()
            .filter(|mode| *mode <= 0o777)
            .map(FileMode)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{text:?} is not an octal file mode such as \"0660\""
                ))
            })
    }
}

/// Sending the totals upstream (`docs/design.md`, "Beyond one machine"); each exporter is
/// on when its endpoint or url is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportersConfig {
    pub otlp: OtlpExporterConfig,
    pub prometheus_remote_write: RemoteWriteConfig,
}

/// The OTLP exporter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpExporterConfig {
    /// `http://host:port` or `https://…`; `None` turns the exporter off.
    pub endpoint: Option<Endpoint>,
    pub protocol: ExportProtocol,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub compression: ExportCompression,
    /// Sent with every request (`authorization: Bearer …`, say).
    pub headers: std::collections::BTreeMap<String, Secret>,
    /// PEM authorities to trust for `https`; without it the system's.
    pub ca_file: Option<PathBuf>,
    /// Attributes naming this sidecar, over its defaults (`host.name`, `service.instance.id`).
    pub resource: std::collections::BTreeMap<String, Scalar>,
    /// Batches kept while upstream does not take them, and their most bytes.
    pub queue_size: NonZeroUsize,
    pub max_queue_bytes: NonZeroUsize,
}

/// The Prometheus remote-write exporter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteWriteConfig {
    /// The receiver's write URL; `None` turns the exporter off.
    pub url: Option<Endpoint>,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub headers: std::collections::BTreeMap<String, Secret>,
    pub ca_file: Option<PathBuf>,
    /// Labels added to every series, over the default `fanin_instance`.
    pub external_labels: std::collections::BTreeMap<String, String>,
    pub queue_size: NonZeroUsize,
    pub max_queue_bytes: NonZeroUsize,
}

/// An `http://` or `https://` URL with a host, checked when the config is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint(pub http::Uri);

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Endpoint, D::Error> {
        let text = String::deserialize(deserializer)?;
        let uri: http::Uri = text
            .parse()
            .map_err(|error| serde::de::Error::custom(format!("{text:?} is not a URL: {error}")))?;
        match (uri.scheme_str(), uri.host()) {
            (Some("http" | "https"), Some(_)) => Ok(Endpoint(uri)),
            _ => Err(serde::de::Error::custom(format!(
                "{text:?} is not an http:// or https:// URL with a host"
            ))),
        }
    }
}

/// How the OTLP exporter talks to upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ExportProtocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportCompression {
    None,
    Gzip,
}

/// A string, number or boolean attribute value from the config.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar(pub crate::model::AttrValue);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Scalar, D::Error> {
        use crate::model::AttrValue;
        match Tree::deserialize(deserializer)? {
            Tree::String(text) => Ok(Scalar(AttrValue::Str(text))),
            Tree::Bool(flag) => Ok(Scalar(AttrValue::Bool(flag))),
            Tree::Number(number) => match number.as_i64() {
                Some(int) => Ok(Scalar(AttrValue::Int(int))),
                None => Ok(Scalar(AttrValue::Double(
                    number.as_f64().unwrap_or(f64::NAN),
                ))),
            },
            _ => Err(serde::de::Error::custom(
                "an attribute value here is a string, a number or a boolean",
            )),
        }
    }
}

/// One OTLP listener: where it binds and how large a request it takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub listen: SocketAddr,
    /// Bound on the request after decompression (and, for HTTP, before it too).
    pub max_request_bytes: NonZeroUsize,
    /// Connections held open at once.
    pub max_connections: NonZeroUsize,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryConfig {
    pub listen: SocketAddr,
    /// Connections held open at once.
    pub max_connections: NonZeroUsize,
    /// Queries answered at once, off the threads that receive exports; more wait their turn.
    pub max_concurrent_queries: NonZeroUsize,
    pub history: HistoryConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
}

/// What `/api/v1/history` keeps: each metric's aggregated groups, sampled every `step`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    #[serde(with = "humantime_serde")]
    pub step: Duration,
    /// Samples kept per group (`points` × `step` of history).
    pub points: NonZeroUsize,
    /// Groups kept at most, across metrics; 0 keeps no history.
    pub max_series: usize,
}

/// TLS on one TCP listener: on when `cert_file` (and `key_file`) are set (`docs/design.md`,
/// "Who may write and read").
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, the listener's own certificate first.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of that certificate.
    pub key_file: Option<PathBuf>,
    /// PEM certificates of the authorities whose client certificates are accepted; set, a
    /// client without a valid certificate from one of them cannot connect (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
    /// The oldest TLS version accepted.
    pub min_version: TlsVersion,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }
}

/// A TLS protocol version, written `"1.2"` or `"1.3"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

/// The bearer token one listener demands, written in the config (usually as `${env:…}`) or
/// read from a file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub token: Option<Secret>,
    pub token_file: Option<PathBuf>,
}

impl AuthConfig {
    pub fn enabled(&self) -> bool {
        self.token.is_some() || self.token_file.is_some()
    }
}

/// A secret from the config: never shown by `Debug`.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Secret(..)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    /// Any scalar: `${env:TOKEN}` holding digits reads back as a number.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        match Tree::deserialize(deserializer)? {
            Tree::String(text) => Ok(Secret(text)),
            Tree::Number(number) => Ok(Secret(number.to_string())),
            Tree::Bool(flag) => Ok(Secret(flag.to_string())),
            _ => Err(serde::de::Error::custom("a token is a string")),
        }
    }
}

/// Where the store's snapshot is kept (`docs/design.md`, "Surviving a restart").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// The directory of the snapshot; `None` keeps nothing across a restart.
    pub path: Option<std::path::PathBuf>,
    /// How often the snapshot is written (and at shutdown).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

/// How every TCP listener treats its connections.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// How long an HTTP/1 request's headers may take, and a kept-alive connection may wait
    /// for its next request.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A connection that sends nothing for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Requests one HTTP/2 connection may have open at once.
    pub max_concurrent_streams: NonZeroU32,
}

/// How streams add up across instances (`docs/design.md`, "Space aggregation", "Liveness").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregationConfig {
    /// Resource attribute keys (or globs) that identify a worker and are dropped when
    /// aggregating.
    #[serde(deserialize_with = "instance_attributes")]
    pub instance_attributes: InstanceAttributes,
    /// Retire an instance after this long without an export.
    #[serde(with = "humantime_serde")]
    pub instance_ttl: Duration,
    /// Retire a local instance at once when its `process.pid` is gone.
    pub pid_check: bool,
    /// Per-metric default aggregation, first matching glob wins.
    pub rules: Vec<AggregationRule>,
}

/// `metric` glob → default aggregation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregationRule {
    pub metric: Glob,
    pub agg: Agg,
}

/// A glob over names (`*` matches any run of characters, dots included), checked when the
/// config is loaded.
#[derive(Debug, Clone)]
pub struct Glob {
    text: String,
    matcher: globset::GlobMatcher,
}

impl Glob {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn is_match(&self, name: &str) -> bool {
        self.matcher.is_match(name)
    }
}

impl std::str::FromStr for Glob {
    type Err = String;
    fn from_str(text: &str) -> Result<Glob, String> {
        let glob = name_glob(text)?;
        Ok(Glob {
            text: text.to_string(),
            matcher: glob.compile_matcher(),
        })
    }
}

/// Reads `aggregation.instance_attributes`: a list of keys or globs, compiled once here.
fn instance_attributes<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<InstanceAttributes, D::Error> {
    let patterns = Vec::<String>::deserialize(deserializer)?;
    InstanceAttributes::new(patterns.iter().map(String::as_str)).map_err(serde::de::Error::custom)
}

impl<'de> Deserialize<'de> for Glob {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Glob, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What to do about streams written by more than one process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollisionsConfig {
    pub policy: CollisionPolicy,
}

/// `limits`: what one client may make fanin keep (see `store::Limits`).
pub type LimitsConfig = crate::store::Limits;
pub use crate::store::Limits;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config is not valid YAML: {0}")]
    Yaml(#[from] serde_saphyr::Error),
    #[error("config key `{path}`: {message}")]
    Invalid { path: String, message: String },
    #[error("config key `{path}`: {message}")]
    Env { path: String, message: String },
    #[error(
        "config key `{key}.listen`: {address} is not a loopback address, and the listener has \
         no TLS and token: anyone who can reach it could write any worker's streams and read \
         every total. Set `{key}.tls.cert_file` and `{key}.tls.key_file` and `{key}.auth.token` \
         (or `token_file`), or listen on 127.0.0.1 (or ::1), or set `allow_insecure: true` to \
         accept that"
    )]
    Exposed {
        key: &'static str,
        address: SocketAddr,
    },
}

/// One TCP listener as the config has it, under its key (`query`, `receivers.otlp.grpc`, …).
#[derive(Clone, Copy, Debug)]
pub struct TcpListenerConfig<'a> {
    pub key: &'static str,
    pub listen: SocketAddr,
    pub tls: &'a TlsConfig,
    pub auth: &'a AuthConfig,
}

impl Config {
    /// Parses and validates YAML text; `${env:NAME}` is looked up with `env`.
    /// Pure: tests pass their own lookup instead of touching the process environment.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key that is unknown, missing, or has a bad value.
    pub fn from_yaml_with_env(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut tree: Tree = serde_saphyr::from_str(text)?;
        expand_env(&mut tree, &mut Vec::new(), env)?;
        Config::from_tree(tree)
    }

    /// Parses YAML text, expanding `${env:NAME}` from the process environment.
    ///
    /// # Errors
    /// As [`Config::from_yaml_with_env`].
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_with_env(text, &|name| std::env::var(name).ok())
    }

    /// Parses a user's YAML laid over the built-in default: keys the file leaves out keep
    /// their default, objects merge key by key, anything else (lists included) replaces the
    /// default. Unknown keys are still errors. Pure, like [`Config::from_yaml_with_env`].
    ///
    /// # Errors
    /// As [`Config::from_yaml_with_env`].
    pub fn from_yaml_over_default_with_env(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut tree: Tree = serde_saphyr::from_str(DEFAULT_YAML)?;
        let mut overlay: Tree = serde_saphyr::from_str(text)?;
        // An empty file reads as null: nothing to change.
        if !overlay.is_null() {
            expand_env(&mut overlay, &mut Vec::new(), env)?;
            merge(&mut tree, overlay);
        }
        Config::from_tree(tree)
    }

    /// [`Config::from_yaml_over_default_with_env`] with the process environment.
    ///
    /// # Errors
    /// As [`Config::from_yaml_with_env`].
    pub fn from_yaml_over_default(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_over_default_with_env(text, &|name| std::env::var(name).ok())
    }

    fn from_tree(tree: Tree) -> Result<Config, ConfigError> {
        let config: Config = serde_path_to_error::deserialize(tree).map_err(|error| {
            let path = error.path().to_string();
            ConfigError::Invalid {
                path: if path == "." {
                    "(top level)".into()
                } else {
                    path
                },
                message: error.into_inner().to_string(),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The three TCP listeners, each with the config key it lives under.
    pub fn tcp_listeners(&self) -> [TcpListenerConfig<'_>; 3] {
        let otlp = &self.receivers.otlp;
        let view = |key, listen, tls, auth| TcpListenerConfig {
            key,
            listen,
            tls,
            auth,
        };
        [
            view(
                "receivers.otlp.grpc",
                otlp.grpc.listen,
                &otlp.grpc.tls,
                &otlp.grpc.auth,
            ),
            view(
                "receivers.otlp.http",
                otlp.http.listen,
                &otlp.http.tls,
                &otlp.http.auth,
            ),
            view(
                "query",
                self.query.listen,
                &self.query.tls,
                &self.query.auth,
            ),
        ]
    }

    /// The TCP listeners bound to an address other than loopback without both TLS and a
    /// token: anyone who reaches one of them can write and read everything.
    pub fn exposed_listeners(&self) -> Vec<TcpListenerConfig<'_>> {
        self.tcp_listeners()
            .into_iter()
            .filter(|listener| {
                let protected = listener.tls.enabled() && listener.auth.enabled();
                !protected && !listener.listen.ip().to_canonical().is_loopback()
            })
            .collect()
    }

    /// Refuses a listener off loopback without TLS and a token unless `allow_insecure` says
    /// so (`docs/design.md`, "Who may write and read"). Run after every override of the
    /// addresses.
    ///
    /// # Errors
    /// [`ConfigError::Exposed`] naming the first such listener's key.
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        match self.exposed_listeners().first() {
            Some(listener) if !self.allow_insecure => Err(ConfigError::Exposed {
                key: listener.key,
                address: listener.listen,
            }),
            _ => Ok(()),
        }
    }

    /// What serde cannot say about one key alone: TLS needs both files, a token has one
    /// source and is not empty.
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, field: &str, message: &str| ConfigError::Invalid {
            path: format!("{key}.{field}"),
            message: message.to_string(),
        };
        let exporters = &self.exporters;
        for (key, interval, timeout) in [
            (
                "exporters.otlp",
                exporters.otlp.interval,
                exporters.otlp.timeout,
            ),
            (
                "exporters.prometheus_remote_write",
                exporters.prometheus_remote_write.interval,
                exporters.prometheus_remote_write.timeout,
            ),
        ] {
            const DAY: Duration = Duration::from_secs(86_400);
            if !(Duration::from_millis(100)..=DAY).contains(&interval) {
                return Err(invalid(key, "interval", "must be between 100ms and 24h"));
            }
            if !(Duration::from_millis(1)..=Duration::from_secs(600)).contains(&timeout) {
                return Err(invalid(key, "timeout", "must be between 1ms and 10m"));
            }
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(86_400))
            .contains(&self.query.history.step)
        {
            return Err(invalid(
                "query.history",
                "step",
                "must be between 100ms and 24h",
            ));
        }
        if self.query.history.points.get() > 100_000 {
            return Err(invalid("query.history", "points", "must be at most 100000"));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(86_400))
            .contains(&self.storage.interval)
        {
            return Err(invalid(
                "storage",
                "interval",
                "must be between 100ms and 24h",
            ));
        }
        if self
            .storage
            .path
            .as_ref()
            .is_some_and(|path| path.as_os_str().is_empty())
        {
            return Err(invalid(
                "storage",
                "path",
                "must name a directory, or be null to keep nothing",
            ));
        }
        for listener in self.tcp_listeners() {
            let (key, tls, auth) = (listener.key, listener.tls, listener.auth);
            match (&tls.cert_file, &tls.key_file) {
                (Some(_), None) => {
                    return Err(invalid(
                        key,
                        "tls.key_file",
                        "cert_file is set: set key_file too",
                    ));
                }
                (None, Some(_)) => {
                    return Err(invalid(
                        key,
                        "tls.cert_file",
                        "key_file is set: set cert_file too",
                    ));
                }
                _ => {}
            }
            if tls.client_ca_file.is_some() && !tls.enabled() {
                return Err(invalid(
                    key,
                    "tls.client_ca_file",
                    "client certificates need TLS: set cert_file and key_file too",
                ));
            }
            match (&auth.token, &auth.token_file) {
                (Some(_), Some(_)) => {
                    return Err(invalid(key, "auth", "set token or token_file, not both"));
                }
                (Some(Secret(token)), None) if token.trim().is_empty() => {
                    return Err(invalid(key, "auth.token", "the token is empty"));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The built-in default configuration.
    ///
    /// # Errors
    /// Only if `config.yaml` uses an environment reference that cannot be expanded.
    pub fn default_config() -> Result<Config, ConfigError> {
        Config::from_yaml(DEFAULT_YAML)
    }
}

/// Lays `overlay` over `base`: objects merge key by key, anything else replaces.
fn merge(base: &mut Tree, overlay: Tree) {
    match (base, overlay) {
        (Tree::Object(base), Tree::Object(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, overlay) => *base = overlay,
    }
}

/// Replaces `${env:NAME}` and `${env:NAME:-default}` in every string of the tree, and `$$`
/// with `$`. A string that is exactly one reference is re-read as a YAML scalar, so that
/// `max_series: ${env:MAX}` yields a number.
fn expand_env(
    tree: &mut Tree,
    path: &mut Vec<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match tree {
        Tree::String(text) => {
            if !text.contains('$') {
                return Ok(());
            }
            let expanded = expand_text(text, env).map_err(|message| ConfigError::Env {
                path: path.join("."),
                message,
            })?;
            let whole_reference = text.starts_with("${") && text.ends_with('}');
            // A token or a header is text whatever it looks like: "007" stays "007", and
            // an empty variable stays empty (and is refused) instead of turning auth off.
            let secret = path.last().is_some_and(|key| key == "token")
                || path.iter().rev().nth(1).is_some_and(|key| key == "headers");
            *tree = if whole_reference && !secret {
                serde_saphyr::from_str::<Tree>(&expanded)
                    .ok()
                    .filter(|value| !value.is_object() && !value.is_array())
                    .unwrap_or(Tree::String(expanded))
            } else {
                Tree::String(expanded)
            };
            Ok(())
        }
        Tree::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                path.push(index.to_string());
                expand_env(item, path, env)?;
                path.pop();
            }
            Ok(())
        }
        Tree::Object(map) => {
            for (key, item) in map.iter_mut() {
                path.push(key.clone());
                expand_env(item, path, env)?;
                path.pop();
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn expand_text(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        rest = &rest[dollar..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${env:") {
            let end = after
                .find('}')
                .ok_or_else(|| format!("unterminated environment reference in {text:?}"))?;
            let reference = &after[..end];
            let (name, default) = match reference.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (reference, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("{name:?} is not a valid environment variable name"));
            }
            match (env(name), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (write ${{env:{name}:-default}} to give a default)"
                    ));
                }
            }
            rest = &after[end + 1..];
        } else {
            return Err(format!(
                "a `$` in {text:?} starts neither ${{env:NAME}} nor $$ (a literal $)"
            ));
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn with_default(edit: impl Fn(&str) -> String) -> Result<Config, ConfigError> {
        Config::from_yaml_with_env(&edit(DEFAULT_YAML), &no_env)
    }

    #[track_caller]
    fn check_error(yaml: String, expected: &str) {
        let error = Config::from_yaml_with_env(&yaml, &no_env).expect_err("config must fail");
        let message = error.to_string();
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    }

    #[test]
    fn default_config_parses() {
        let config = Config::from_yaml_with_env(DEFAULT_YAML, &no_env).expect("default parses");
        assert_eq!(
            config.receivers.otlp.grpc.listen.to_string(),
            "127.0.0.1:4317"
        );
        assert_eq!(
            config.receivers.otlp.http.listen.to_string(),
            "127.0.0.1:4318"
        );
        assert_eq!(config.query.listen.to_string(), "127.0.0.1:9464");
        assert_eq!(config.receivers.otlp.grpc.max_request_bytes.get(), 4 << 20);
        assert_eq!(config.receivers.otlp.http.max_request_bytes.get(), 20 << 20);
        assert_eq!(config.shutdown_grace, Duration::from_secs(10));
        assert_eq!(config.aggregation.instance_ttl, Duration::from_secs(300));
        assert!(config.aggregation.pid_check);
        let instance: Vec<_> = config.aggregation.instance_attributes.patterns().collect();
        assert_eq!(
            instance,
            ["service.instance.id", "process.pid", "process.*"]
        );
        assert!(config.aggregation.rules.is_empty());
        assert_eq!(config.collisions.policy, CollisionPolicy::Report);
        assert_eq!(config.receivers.otlp.unix.path, None);
        assert_eq!(config.receivers.otlp.unix.mode, FileMode(0o660));
    }

    #[test]
    fn bad_instance_attribute_glob_is_named() {
        check_error(
            DEFAULT_YAML.replace("\"process.*\"]", "\"process.[\"]"),
            "config key `aggregation.instance_attributes`: \"process.[\" is not a valid glob",
        );
    }

    #[test]
    fn unix_socket_mode_is_octal() {
        let yaml = DEFAULT_YAML
            .replace("path: null", "path: /run/fanin.sock")
            .replace("\"0660\"", "\"0600\"");
        let config = Config::from_yaml_with_env(&yaml, &no_env).expect("unix config parses");
        assert_eq!(
            config.receivers.otlp.unix.path.as_deref(),
            Some(std::path::Path::new("/run/fanin.sock"))
        );
        assert_eq!(config.receivers.otlp.unix.mode, FileMode(0o600));
        check_error(
            DEFAULT_YAML.replace("\"0660\"", "\"0999\""),
            "`receivers.otlp.unix.mode`: \"0999\" is not an octal file mode",
        );
    }

    #[test]
    fn rules_parse_and_bad_ones_are_named() {
        let yaml = DEFAULT_YAML.replace(
            "  rules: []",
            "  rules:\n    - metric: \"http.*\"\n      agg: max",
        );
        let config = Config::from_yaml_with_env(&yaml, &no_env).expect("rules parse");
        let rule = &config.aggregation.rules[0];
        assert_eq!(rule.agg, Agg::Max);
        assert!(rule.metric.is_match("http.server.active_requests"));
        assert!(!rule.metric.is_match("rpc.calls"));
        check_error(
            DEFAULT_YAML.replace(
                "  rules: []",
                "  rules:\n    - metric: \"a\"\n      agg: median",
            ),
            "`aggregation.rules[0].agg`",
        );
        check_error(
            DEFAULT_YAML.replace(
                "  rules: []",
                "  rules:\n    - metric: \"a[\"\n      agg: sum",
            ),
            "`aggregation.rules[0].metric`: \"a[\" is not a valid glob",
        );
    }

    #[test]
    fn a_partial_file_keeps_the_other_defaults() {
        let config = Config::from_yaml_over_default_with_env(
            "query:\n  listen: 127.0.0.1:9999\naggregation:\n  rules:\n    - metric: \"a.*\"\n      agg: max\n",
            &no_env,
        )
        .expect("partial config");
        assert_eq!(config.query.listen.to_string(), "127.0.0.1:9999");
        assert_eq!(config.aggregation.rules.len(), 1);
        assert_eq!(
            config.receivers.otlp.grpc.listen.to_string(),
            "127.0.0.1:4317"
        );
        assert_eq!(config.aggregation.instance_ttl, Duration::from_secs(300));
        let empty = Config::from_yaml_over_default_with_env("", &no_env).expect("empty file");
        assert_eq!(empty.limits.max_series.get(), 1_000_000);
    }

    #[test]
    fn a_partial_file_still_rejects_typos_by_key() {
        let error =
            Config::from_yaml_over_default_with_env("query:\n  lissten: 127.0.0.1:1\n", &no_env)
                .expect_err("typo");
        assert!(
            error
                .to_string()
                .contains("config key `query.lissten`: unknown field"),
            "{error}"
        );
    }

    #[test]
    fn listeners_off_loopback_need_allow_insecure() {
        let mut config = Config::default_config().expect("default");
        assert!(config.exposed_listeners().is_empty());
        config.check_exposure().expect("the default binds loopback");
        config.receivers.otlp.http.listen = "[::1]:4318".parse().expect("address");
        config.query.listen = "127.0.0.53:9464".parse().expect("address");
        config.receivers.otlp.grpc.listen = "[::ffff:127.0.0.1]:4317".parse().expect("address");
        config
            .check_exposure()
            .expect("::1, 127/8 and its IPv4-mapped form are loopback");
        config.receivers.otlp.grpc.listen = "0.0.0.0:4317".parse().expect("address");
        config.query.listen = "192.0.2.7:9464".parse().expect("address");
        let exposed: Vec<&str> = config.exposed_listeners().iter().map(|e| e.key).collect();
        assert_eq!(exposed, ["receivers.otlp.grpc", "query"]);
        let message = config.check_exposure().expect_err("refused").to_string();
        assert!(
            message.contains("`receivers.otlp.grpc.listen`"),
            "{message}"
        );
        assert!(message.contains("0.0.0.0:4317"), "{message}");
        config.allow_insecure = true;
        config.check_exposure().expect("allowed");
    }

    #[test]
    fn a_listener_off_loopback_with_tls_and_a_token_is_not_exposed() {
        let mut config = Config::default_config().expect("default config");
        config.query.listen = "0.0.0.0:9464".parse().expect("address");
        config.query.tls.cert_file = Some("/etc/fanin/tls.crt".into());
        config.query.tls.key_file = Some("/etc/fanin/tls.key".into());
        let message = config
            .check_exposure()
            .expect_err("TLS alone is not enough")
            .to_string();
        assert!(message.contains("`query.auth.token`"), "{message}");
        config.query.auth.token_file = Some("/etc/fanin/query.token".into());
        config.check_exposure().expect("TLS and a token");
        config.query.tls = TlsConfig::default();
        assert_eq!(
            config.exposed_listeners().len(),
            1,
            "a token alone is not enough"
        );
    }

    #[test]
    fn tls_and_token_keys_are_checked_together() {
        let over_default = |yaml: &str| {
            Config::from_yaml_over_default_with_env(yaml, &|name| match name {
                "TOKEN" => Some("0012345".to_string()),
                "EMPTY" => Some(String::new()),
                _ => None,
            })
        };
        let error = |yaml: &str| over_default(yaml).expect_err("refused").to_string();
        assert!(
            error("query: {tls: {cert_file: /a.crt}}")
                .starts_with("config key `query.tls.key_file`: cert_file is set"),
        );
        assert!(
            error("receivers: {otlp: {http: {tls: {key_file: /a.key}}}}")
                .starts_with("config key `receivers.otlp.http.tls.cert_file`"),
        );
        assert!(
            error("query: {tls: {client_ca_file: /ca.pem}}")
                .starts_with("config key `query.tls.client_ca_file`"),
        );
        assert!(
            error("query: {auth: {token: x, token_file: /t}}")
                .starts_with("config key `query.auth`: set token or token_file, not both"),
        );
        assert!(
            error("query: {auth: {token: \" \"}}").starts_with("config key `query.auth.token`")
        );
        assert!(error("query: {tls: {min_version: \"1.1\"}}").contains("`query.tls.min_version`"));
        let config = over_default("receivers: {otlp: {grpc: {auth: {token: \"${env:TOKEN}\"}}}}")
            .expect("a token of digits from the environment");
        let token = config.receivers.otlp.grpc.auth.token.expect("token");
        assert_eq!(token.0, "0012345", "kept as text, leading zeros and all");
        let empty = error("query: {auth: {token: \"${env:EMPTY}\"}}");
        assert!(
            empty.starts_with("config key `query.auth.token`: the token is empty"),
            "{empty}"
        );
        let header = over_default("exporters: {otlp: {headers: {x-key: \"${env:TOKEN}\"}}}")
            .expect("a header from the environment");
        assert_eq!(header.exporters.otlp.headers["x-key"].0, "0012345");
        assert!(error("exporters: {otlp: {interval: 0s}}").contains("`exporters.otlp.interval`"));
        assert_eq!(format!("{token:?}"), "Secret(..)", "never shown");
    }

    #[test]
    fn unknown_key_is_named() {
        check_error(
            DEFAULT_YAML.replace("max_series:", "max_serie:"),
            "config key `limits.max_serie`: unknown field `max_serie`, expected one of `max_series`",
        );
    }

    #[test]
    fn bad_value_is_named() {
        check_error(
            DEFAULT_YAML.replace("listen: 127.0.0.1:4318", "listen: localhost"),
            "`receivers.otlp.http.listen`",
        );
        check_error(
            DEFAULT_YAML.replace("max_series: 1000000", "max_series: 0"),
            "`limits.max_series`",
        );
        check_error(
            DEFAULT_YAML.replace("shutdown_grace: 10s", "shutdown_grace: soon"),
            "`shutdown_grace`",
        );
    }

    #[test]
    fn missing_key_is_named() {
        check_error(
            DEFAULT_YAML.replace("  max_series: 1000000\n", ""),
            "config key `limits`: missing field `max_series`",
        );
    }

    #[test]
    fn env_references_expand_with_types() {
        let env = |name: &str| match name {
            "ADDR" => Some("127.0.0.1:5000".to_string()),
            "SERIES" => Some("42".to_string()),
            _ => None,
        };
        let yaml = DEFAULT_YAML
            .replace("listen: 127.0.0.1:9464", "listen: ${env:ADDR}")
            .replace("max_series: 1000000", "max_series: ${env:SERIES}")
            .replace("shutdown_grace: 10s", "shutdown_grace: ${env:GRACE:-3s}");
        let config = Config::from_yaml_with_env(&yaml, &env).expect("expanded config parses");
        assert_eq!(config.query.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(config.limits.max_series.get(), 42);
        assert_eq!(config.shutdown_grace, Duration::from_secs(3));
    }

    #[test]
    fn unset_env_is_an_error_naming_key_and_variable() {
        let error =
            with_default(|yaml| yaml.replace("listen: 127.0.0.1:9464", "listen: ${env:NOPE}"))
                .expect_err("unset variable");
        let message = error.to_string();
        assert!(message.contains("query.listen"), "{message}");
        assert!(message.contains("NOPE is not set"), "{message}");
    }

    #[test]
    fn env_references_in_comments_are_ignored() {
        with_default(|yaml| format!("# see ${{env:NOT_SET}}\n{yaml}")).expect("comment ignored");
    }

    #[test]
    fn expand_text_handles_escapes_and_embedding() {
        let env = |_: &str| Some("x".to_string());
        assert_eq!(expand_text("a$$b", &env).as_deref(), Ok("a$b"));
        assert_eq!(expand_text("p-${env:A}-q", &env).as_deref(), Ok("p-x-q"));
        assert!(expand_text("$HOME", &env).is_err());
        assert!(expand_text("${env:A", &env).is_err());
    }

    #[test]
    fn invalid_yaml_is_reported() {
        check_error("receivers: [".to_string(), "not valid YAML");
    }
}
