//! Binds the listeners, builds the shared store, and runs the servers (OTLP/gRPC, OTLP/HTTP,
//! the query API, the optional unix socket) and the liveness sweep until shutdown.
//!
//! [`App::bind`] returns once every socket listens, so a caller (a test, `main`) may connect
//! at once and may use port 0 and read the bound address back. [`App::run`] serves until the
//! cancellation token fires, then stops accepting and lets requests in flight finish.

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, FileMode};
use crate::export::{ExportError, Exporter};
use crate::query::grpc::QueryServer;
use crate::query::{HistorySettings, QuerySettings};
use crate::receiver::budget::Budget;
use crate::receiver::grpc::{ExportService, ExportSettings};
use crate::receiver::http::HttpSettings;
use crate::security::{Alpn, Guard, SecurityError};
use crate::serve::{self, ConnectionSettings, Gate};
use crate::storage::{Loaded, Storage, StorageError};
use crate::store::{Clock, Listener, Liveness, Store, StoreSettings, Transport};
use crate::{query, receiver, security};

/// Why the app could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen for {listener} on {address}: {source}")]
    Bind {
        listener: &'static str,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on the unix socket {path}: {message}")]
    Unix { path: PathBuf, message: String },
    /// A listener off loopback without TLS and a token, and no `allow_insecure`.
    #[error(transparent)]
    Exposed(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Security(#[from] SecurityError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{listener} server failed: {source}")]
    Serve {
        listener: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A bound, not yet running, fanin.
pub struct App {
    config: Config,
    store: Store,
    liveness: Liveness,
    grpc: TcpListener,
    http: TcpListener,
    query: TcpListener,
    /// The unix socket listener and its path, when configured.
    unix: Option<(UnixListener, PathBuf)>,
    guards: Guards,
    exporters: Vec<Exporter>,
    storage: Option<Arc<Storage>>,
}

/// What guards each TCP listener (TLS, token).
struct Guards {
    grpc: Arc<Guard>,
    http: Arc<Guard>,
    query: Arc<Guard>,
}

impl Guards {
    fn load(config: &Config, store: &Store) -> Result<Guards, SecurityError> {
        let [grpc, http, query] = config.tcp_listeners();
        let guard = |listener, which, alpn| {
            Guard::load(listener, which, alpn)
                .map(|guard| Arc::new(guard.counting_in(store.clone())))
        };
        Ok(Guards {
            grpc: guard(grpc, Listener::Grpc, Alpn::H2)?,
            http: guard(http, Listener::Http, Alpn::H2OrHttp1)?,
            query: guard(query, Listener::Query, Alpn::H2OrHttp1)?,
        })
    }
}

/// The address each listener actually bound.
#[derive(Clone, Debug)]
pub struct Addresses {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub query: SocketAddr,
    pub unix: Option<PathBuf>,
}

async fn bind(listener: &'static str, address: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| AppError::Bind {
            listener,
            address,
            source,
        })
}

fn local_addr(listener: &TcpListener) -> SocketAddr {
    // A bound TCP listener always has a local address; fall back to the unspecified one
    // rather than panic if the OS ever says otherwise.
    listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

impl App {
    /// Builds the store (restoring the snapshot under `storage.path`, if any) and binds
    /// every listener named in `config`.
    ///
    /// # Errors
    /// [`AppError::Bind`] naming the listener and address that could not be bound.
    pub async fn bind(config: Config) -> Result<App, AppError> {
        App::bind_with_clock(config, Clock::system()).await
    }

    /// [`App::bind`], with the store's liveness measured by `clock` (tests move a manual
    /// one instead of waiting out `instance_ttl`).
    ///
    /// # Errors
    /// [`AppError::Exposed`] for a listener off loopback without TLS and a token (unless
    /// `allow_insecure`); [`AppError::Bind`] naming the listener and address that could not
    /// be bound; [`AppError::Security`] naming the key of a certificate, key or token file that cannot
    /// be used; [`AppError::Storage`] when `storage.path` cannot be used, or holds a
    /// damaged snapshot that cannot be moved aside.
    pub async fn bind_with_clock(config: Config, clock: Clock) -> Result<App, AppError> {
        // `main` checks this before anything else; a caller of the library gets it too.
        config.check_exposure()?;
        serve::raise_file_limit();
        let exporters = crate::export::configured(&config.exporters)?;
        let otlp = &config.receivers.otlp;
        let settings = StoreSettings {
            limits: config.limits,
            instance_attributes: config.aggregation.instance_attributes.clone(),
            collision_policy: config.collisions.policy,
            local_host: if config.aggregation.pid_check {
                local_host_name()
            } else {
                None
            },
            verify_unix_pids: otlp.unix.verify_pid,
            clock,
        };
        let liveness = Liveness {
            ttl: config.aggregation.instance_ttl,
        };
        // Restored before any listener opens, so no export lands in a store about to be
        // replaced.
        let storage = Storage::open(&config.storage)?;
        let store = match &storage {
            None => Store::new(settings),
            Some(storage) => {
                let (store, loaded) = storage.load(settings)?;
                report(storage, &loaded);
                // Instances whose pid died while fanin was down are retired at once.
                let swept = store.sweep(&liveness);
                if swept.retired > 0 {
                    tracing::info!(
                        retired = swept.retired,
                        "Retired restored instances whose process is gone or that are past instance_ttl"
                    );
                }
                store
            }
        };
        let guards = Guards::load(&config, &store)?;
        let grpc = bind("OTLP/gRPC", otlp.grpc.listen).await?;
        let http = bind("OTLP/HTTP", otlp.http.listen).await?;
        let query = bind("query", config.query.listen).await?;
        let unix = match &otlp.unix.path {
            Some(path) => Some((bind_unix(path, otlp.unix.mode)?, path.clone())),
            None => None,
        };
        Ok(App {
            config,
            store,
            liveness,
            grpc,
            http,
            query,
            unix,
            guards,
            exporters,
            storage: storage.map(Arc::new),
        })
    }

    pub fn addresses(&self) -> Addresses {
        Addresses {
            grpc: local_addr(&self.grpc),
            http: local_addr(&self.http),
            query: local_addr(&self.query),
            unix: self.unix.as_ref().map(|(_, path)| path.clone()),
        }
    }

    /// The exporters that are on, and where each sends.
    pub fn exporters(&self) -> Vec<(&'static str, String)> {
        self.exporters
            .iter()
            .map(|exporter| (exporter.kind().as_str(), exporter.target.clone()))
            .collect()
    }

    /// The store the servers write to; shared, so callers may inspect it while running.
    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// Serves until `shutdown` is cancelled, then drains requests in flight and returns.
    ///
    /// # Errors
    /// [`AppError::Serve`] if a server fails.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AppError> {
        let App {
            config,
            store,
            liveness,
            grpc,
            http,
            query,
            unix,
            guards,
            exporters,
            storage,
        } = self;
        let otlp = &config.receivers.otlp;
        // One budget for requests in flight, shared by the three listeners.
        let budget = Budget::new(otlp.max_inflight_bytes.get());
        let export_settings = |max_request_bytes: usize| ExportSettings {
            max_request_bytes,
            budget: budget.clone(),
            body_timeout: otlp.body_timeout,
        };

        let connections = |max_connections: usize| ConnectionSettings {
            max_connections,
            header_timeout: config.connections.header_timeout,
            idle_timeout: config.connections.idle_timeout,
            max_concurrent_streams: config.connections.max_concurrent_streams.get(),
        };
        let grpc_connections = connections(otlp.grpc.max_connections.get());
        let grpc_gate = Gate::new(grpc, grpc_connections, "OTLP/gRPC");
        let history = config.query.history;
        let query_settings = QuerySettings::new(
            config.aggregation.rules.clone(),
            config.query.max_concurrent_queries.get(),
        )
        .with_history(HistorySettings {
            step: history.step,
            points: history.points.get(),
            max_series: history.max_series,
        });
        let sampler = (history.max_series > 0).then(|| {
            let (settings, store, shutdown) =
                (query_settings.clone(), store.clone(), shutdown.clone());
            async move { settings.sample_history(store, shutdown).await }
        });
        let grpc_server = tonic::transport::Server::builder()
            .max_concurrent_streams(config.connections.max_concurrent_streams.get())
            .add_service(QueryServer::service(
                store.clone(),
                query_settings.clone(),
                Arc::clone(&guards.grpc),
            ))
            .add_service(
                ExportService::new(
                    store.clone(),
                    export_settings(otlp.grpc.max_request_bytes.get()),
                    Transport::Grpc,
                )
                .guarded(Arc::clone(&guards.grpc)),
            )
            .serve_with_incoming_shutdown(
                serve::incoming(grpc_gate, Arc::clone(&guards.grpc), grpc_connections),
                shutdown.clone().cancelled_owned(),
            );

        let http_router = receiver::http::router(
            store.clone(),
            HttpSettings {
                max_request_bytes: otlp.http.max_request_bytes.get(),
                budget: budget.clone(),
                body_timeout: otlp.body_timeout,
            },
        );
        let http_router =
            security::require_token(http_router, Arc::clone(&guards.http), store.clone());
        let http_settings = connections(otlp.http.max_connections.get());
        let http_server = serve::serve_http(
            Gate::new(http, http_settings, "OTLP/HTTP"),
            Arc::clone(&guards.http),
            http_router,
            http_settings,
            shutdown.clone(),
        );

        let unix_server = unix.map(|(listener, path)| {
            let server = tonic::transport::Server::builder()
                .add_service(ExportService::new(
                    store.clone(),
                    export_settings(otlp.unix.max_request_bytes.get()),
                    Transport::Unix,
                ))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    shutdown.clone().cancelled_owned(),
                );
            (server, path)
        });
        let sweeper = sweep(store.clone(), liveness, shutdown.clone());
        let snapshots = storage
            .clone()
            .map(|storage| storage.run(store.clone(), shutdown.clone()));
        // Exporters stop after the receivers have drained, so their last batch has the
        // workers' final exports in it.
        let export_shutdown = CancellationToken::new();
        let exporting = futures_util::future::join_all(exporters.into_iter().map(|exporter| {
            exporter.run(
                store.clone(),
                Arc::clone(&query_settings.answers),
                query_settings.workers.clone(),
                export_shutdown.clone(),
            )
        }));
        let watcher = security::watch(
            vec![
                Arc::clone(&guards.grpc),
                Arc::clone(&guards.http),
                Arc::clone(&guards.query),
            ],
            shutdown.clone(),
        );
        let query_router = query::router(
            store.clone(),
            query_settings,
            Arc::clone(&guards.query),
            shutdown.clone(),
        );
        let query_connections = connections(config.query.max_connections.get());
        let query_server = serve::serve_http(
            Gate::new(query, query_connections, "query"),
            guards.query,
            query_router,
            query_connections,
            shutdown.clone(),
        );

        let serve_error = |listener: &'static str| {
            move |source: Box<dyn std::error::Error + Send + Sync>| AppError::Serve {
                listener,
                source,
            }
        };
        let servers = async {
            let served = tokio::try_join!(
                async {
                    grpc_server
                        .await
                        .map_err(|error| serve_error("OTLP/gRPC")(error.into()))
                },
                async {
                    http_server.await;
                    Ok(())
                },
                async {
                    query_server.await;
                    Ok(())
                },
                async {
                    sweeper.await;
                    Ok(())
                },
                async {
                    watcher.await;
                    Ok(())
                },
                async {
                    if let Some(snapshots) = snapshots {
                        snapshots.await;
                    }
                    Ok(())
                },
                async {
                    if let Some(sampler) = sampler {
                        sampler.await;
                    }
                    Ok(())
                },
                async {
                    let Some((server, path)) = unix_server else {
                        return Ok(());
                    };
                    let served = server.await;
                    // Leave no socket file behind: the next fanin would have to tell it is stale.
                    let _ = std::fs::remove_file(&path);
                    served.map_err(|error| serve_error("OTLP/gRPC unix socket")(error.into()))
                },
            );
            export_shutdown.cancel();
            // The receivers have drained: the last snapshot, with the workers' final
            // exports in it, is written while the exporters make their last attempt.
            if let Some(storage) = storage {
                last_snapshot(storage, store.clone()).await;
            }
            served
        };
        let (served, _) = tokio::join!(servers, exporting);
        served?;
        Ok(())
    }
}

/// Binds the unix socket at `path` with `mode`. A socket file left by a process that no
/// longer listens is replaced; a live one is not taken over, and a file that is not a socket
/// is never removed.
fn bind_unix(path: &Path, mode: FileMode) -> Result<UnixListener, AppError> {
    let error = |message: String| AppError::Unix {
        path: path.to_path_buf(),
        message,
    };
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        if !metadata.file_type().is_socket() {
            return Err(error(
                "the path exists and is not a socket; not replacing it".into(),
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(error(
                "another process is listening on it; not taking it over".into(),
            ));
        }
        std::fs::remove_file(path)
            .map_err(|source| error(format!("cannot remove the stale socket: {source}")))?;
        tracing::info!(path = %path.display(), "Replaced a stale unix socket");
    }
    let listener = UnixListener::bind(path).map_err(|source| error(source.to_string()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode.0))
        .map_err(|source| error(format!("cannot set its mode to {:o}: {source}", mode.0)))?;
    Ok(listener)
}

/// Writes the snapshot at shutdown, off the runtime's threads, and says so.
async fn last_snapshot(storage: Arc<Storage>, store: Store) {
    let written = tokio::task::spawn_blocking(move || storage.write_logged(&store)).await;
    if let Ok(Some(written)) = written {
        tracing::info!(
            instances = written.instances,
            streams = written.streams,
            bytes = written.bytes,
            "Wrote the snapshot at shutdown"
        );
    }
}

/// Says in one line what was found under `storage.path`.
fn report(storage: &Storage, loaded: &Loaded) {
    let path = storage.file();
    match loaded {
        Loaded::Nothing => {
            tracing::info!(path = %path.display(), "No snapshot yet; starting empty");
        }
        Loaded::Restored { restored, age } => {
            tracing::info!(
                path = %path.display(),
                instances = restored.instances,
                streams = restored.streams,
                retired_totals = restored.retired_totals,
                age = %humantime::format_duration(Duration::from_secs(age.as_secs())),
                "Restored the snapshot"
            );
            if restored.left_out > 0 {
                tracing::warn!(
                    left_out = restored.left_out,
                    "The snapshot holds more streams than the limits in force (limits.max_series, max_series_per_instance, max_instances) allow; those were left out"
                );
            }
        }
        Loaded::Refused { reason, aside } => {
            tracing::warn!(
                path = %path.display(),
                moved_to = %aside.display(),
                "Snapshot refused: {reason}; moved aside, starting empty"
            );
        }
    }
}

/// Retires and evicts instances every `liveness.sweep_interval()` until shutdown.
async fn sweep(store: Store, liveness: Liveness, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(liveness.sweep_interval());
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {
                store.sweep(&liveness);
            }
        }
    }
}

/// This host's name, compared with `host.name` to know whether a pid can be checked here.
fn local_host_name() -> Option<String> {
    match nix::unistd::gethostname() {
        Ok(name) => name.into_string().ok(),
        Err(error) => {
            tracing::warn!(%error, "Cannot read this host's name; pid checks are off");
            None
        }
    }
}
