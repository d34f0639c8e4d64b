//! Who may connect and who may send: TLS on the TCP listeners and bearer tokens
//! (`docs/design.md`, "Who may write and read").
//!
//! Each TCP listener has one [`Guard`], built from its config at start ([`Guard::load`],
//! which fails with a message naming the key when a file cannot be used). The guard holds
//! what is in force, the TLS acceptor and the token, and swaps both whole when their files
//! change ([`Guard::refresh`], run every [`REFRESH_INTERVAL`] and on SIGHUP by [`watch`]).
//! A connection keeps the acceptor it was accepted with, so nothing open is dropped; a
//! file that cannot be used then leaves what was in force and logs a warning.

pub mod tls;
pub mod token;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use http::HeaderMap;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use tls::Alpn;
pub use token::{Refusal, Token};

use crate::config::{AuthConfig, Secret, TcpListenerConfig, TlsConfig};
use crate::store::{Listener, Stats, Store};

/// How often the files are looked at for a change.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// A certificate, key or token that cannot be used, under the key that names it.
#[derive(Debug, thiserror::Error)]
#[error("config key `{key}`: {message}")]
pub struct SecurityError {
    pub key: String,
    pub message: String,
}

/// What guards one TCP listener: its TLS acceptor and token, kept current.
pub struct Guard {
    listener: Listener,
    key: &'static str,
    tls: TlsConfig,
    alpn: Alpn,
    auth: AuthConfig,
    live: ArcSwap<Live>,
    /// What the files looked like when `live` was last built from them.
    stamps: Mutex<Vec<Option<Stamp>>>,
    /// Where failed handshakes are counted (none in tests that build a guard alone).
    store: Option<Store>,
}

/// What is in force.
struct Live {
    acceptor: Option<TlsAcceptor>,
    token: Option<Token>,
}

/// Enough of a file's metadata to see it was rewritten or replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    /// The inode's change time: a `chmod` that makes an unreadable file readable shows here.
    changed: (i64, i64),
    len: u64,
    inode: u64,
}

impl Guard {
    /// Reads the listener's certificate, key and token.
    ///
    /// # Errors
    /// [`SecurityError`] naming the key whose file cannot be used.
    pub fn load(
        config: TcpListenerConfig<'_>,
        listener: Listener,
        alpn: Alpn,
    ) -> Result<Guard, SecurityError> {
        let mut guard = Guard::new(listener, config.key, config.tls, config.auth, alpn);
        let stamps = guard.stamps();
        guard.live.store(Arc::new(guard.read()?));
        *guard
            .stamps
            .get_mut()
            .unwrap_or_else(|poison| poison.into_inner()) = stamps;
        Ok(guard)
    }

    /// A guard with no TLS and no token (a listener on loopback by default; tests).
    pub fn open(listener: Listener) -> Guard {
        let (tls, auth) = (&TlsConfig::default(), &AuthConfig::default());
        Guard::new(listener, "", tls, auth, Alpn::H2OrHttp1)
    }

    /// A guard with nothing in force yet.
    fn new(
        listener: Listener,
        key: &'static str,
        tls: &TlsConfig,
        auth: &AuthConfig,
        alpn: Alpn,
    ) -> Guard {
        Guard {
            listener,
            key,
            tls: tls.clone(),
            alpn,
            auth: auth.clone(),
            live: ArcSwap::from_pointee(Live {
                acceptor: None,
                token: None,
            }),
            stamps: Mutex::new(Vec::new()),
            store: None,
        }
    }

    /// The guard, counting its failed handshakes in `store`'s figures.
    pub fn counting_in(mut self, store: Store) -> Guard {
        self.store = Some(store);
        self
    }

    /// Counts a TLS handshake that failed or did not finish in time.
    pub fn handshake_failed(&self) {
        if let Some(store) = &self.store {
            store.stats().tls_handshake_failed(self.listener);
        }
    }

    /// Whether requests must carry a token.
    pub fn authenticates(&self) -> bool {
        self.auth.enabled()
    }

    /// The acceptor for a new connection; `None` without TLS.
    pub fn acceptor(&self) -> Option<TlsAcceptor> {
        self.live.load().acceptor.clone()
    }

    /// Admits a request carrying the token (any request when there is none); a refusal is
    /// counted in `stats` and logged without the token.
    ///
    /// # Errors
    /// The [`Refusal`] to tell the client.
    pub fn check(&self, headers: &HeaderMap, stats: &Stats) -> Result<(), Refusal> {
        let Some(token) = &self.live.load().token else {
            return Ok(());
        };
        token.check(headers).inspect_err(|refusal| {
            stats.unauthenticated(self.listener);
            tracing::debug!(listener = self.listener.as_str(), %refusal, "Refused a request");
        })
    }

    /// The files behind this guard.
    fn files(&self) -> impl Iterator<Item = &PathBuf> {
        [
            &self.tls.cert_file,
            &self.tls.key_file,
            &self.tls.client_ca_file,
            &self.auth.token_file,
        ]
        .into_iter()
        .flatten()
    }

    fn stamps(&self) -> Vec<Option<Stamp>> {
        use std::os::unix::fs::MetadataExt;
        self.files()
            .map(|path| {
                std::fs::metadata(path).ok().map(|metadata| Stamp {
                    modified: metadata.modified().ok(),
                    changed: (metadata.ctime(), metadata.ctime_nsec()),
                    len: metadata.len(),
                    inode: metadata.ino(),
                })
            })
            .collect()
    }

    fn read(&self) -> Result<Live, SecurityError> {
        let acceptor = if self.tls.enabled() {
            let key = format!("{}.tls", self.key);
            Some(TlsAcceptor::from(tls::server_config(
                &self.tls, &key, self.alpn,
            )?))
        } else {
            None
        };
        let token = match (&self.auth.token, &self.auth.token_file) {
            (Some(Secret(text)), _) => Some((text.clone(), "auth.token")),
            (None, Some(path)) => Some((
                std::fs::read_to_string(path).map_err(|source| SecurityError {
                    key: format!("{}.auth.token_file", self.key),
                    message: format!("{}: {source}", path.display()),
                })?,
                "auth.token_file",
            )),
            (None, None) => None,
        };
        let token = match token {
            None => None,
            Some((text, field)) => Some(Token::new(&text).ok_or_else(|| SecurityError {
                key: format!("{}.{field}", self.key),
                message: "the token is empty".into(),
            })?),
        };
        Ok(Live { acceptor, token })
    }

    /// Reads the files again when they changed since they were last read (or always, with
    /// `force`); what cannot be used leaves what is in force and is logged.
    pub fn refresh(&self, force: bool) {
        let stamps = self.stamps();
        {
            let mut seen = self
                .stamps
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            if !force && *seen == stamps {
                return;
            }
            *seen = stamps;
        }
        match self.read() {
            Ok(live) => {
                self.live.store(Arc::new(live));
                tracing::info!(
                    listener = self.listener.as_str(),
                    "Read the listener's certificate and token files again"
                );
            }
            Err(error) => tracing::warn!(
                listener = self.listener.as_str(),
                %error,
                "Keeping the certificate and token in force"
            ),
        }
    }

    /// Whether there are files to watch.
    fn has_files(&self) -> bool {
        self.files().next().is_some()
    }
}

/// Refreshes the guards every [`REFRESH_INTERVAL`], and at once on SIGHUP, until shutdown.
/// SIGHUP is caught even when no guard reads a file (it then only logs), so that it never
/// ends fanin.
pub async fn watch(guards: Vec<Arc<Guard>>, shutdown: CancellationToken) {
    let guards: Vec<_> = guards
        .into_iter()
        .filter(|guard| guard.has_files())
        .collect();
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "Cannot listen for SIGHUP; files are still checked every 5s");
            None
        }
    };
    let mut interval = tokio::time::interval(REFRESH_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        let force = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick(), if !guards.is_empty() => false,
            Some(()) = async {
                match &mut hangup {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        if force {
            if guards.is_empty() {
                tracing::info!("SIGHUP: no certificate or token files to read again");
            } else {
                tracing::info!("SIGHUP: reading certificate and token files again");
            }
        }
        for guard in &guards {
            guard.refresh(force);
        }
    }
}

/// `router` answering 401 (with `WWW-Authenticate: Bearer`) to a request without the
/// guard's token, before its handler runs; unchanged when the guard has no token. Routes
/// added to the result later are not guarded (the query listener's `/healthz`, `/readyz`).
pub fn require_token(router: axum::Router, guard: Arc<Guard>, store: Store) -> axum::Router {
    if !guard.authenticates() {
        return router;
    }
    router.route_layer(axum::middleware::from_fn_with_state(
        (guard, store),
        check_http,
    ))
}

async fn check_http(
    axum::extract::State((guard, store)): axum::extract::State<(Arc<Guard>, Store)>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match guard.check(request.headers(), store.stats()) {
        Ok(()) => next.run(request).await,
        Err(refusal) => (
            http::StatusCode::UNAUTHORIZED,
            [(http::header::WWW_AUTHENTICATE, "Bearer")],
            format!("{refusal}\n"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("fanin-security-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let value = format!("Bearer {token}").parse().expect("header value");
        headers.insert(http::header::AUTHORIZATION, value);
        headers
    }

    fn query_guard(config: &Config) -> Result<Guard, SecurityError> {
        let [_, _, query] = config.tcp_listeners();
        Guard::load(query, Listener::Query, Alpn::H2OrHttp1)
    }

    #[test]
    fn a_token_file_is_read_again_and_a_broken_one_keeps_the_token_in_force() {
        let path = scratch("token").join("token");
        std::fs::write(&path, "first\n").expect("write");
        let mut config = Config::default_config().expect("default config");
        config.query.auth.token_file = Some(path.clone());
        let guard = query_guard(&config).expect("the token file is read");
        let stats = Stats::default();
        assert_eq!(guard.check(&bearer("first"), &stats), Ok(()));
        assert_eq!(
            guard.check(&HeaderMap::new(), &stats),
            Err(Refusal::Missing)
        );

        std::fs::write(&path, "second-and-longer").expect("write");
        guard.refresh(false);
        assert_eq!(guard.check(&bearer("second-and-longer"), &stats), Ok(()));
        assert_eq!(guard.check(&bearer("first"), &stats), Err(Refusal::Wrong));

        std::fs::write(&path, " \n").expect("write");
        guard.refresh(false);
        std::fs::remove_file(&path).expect("remove");
        guard.refresh(true);
        assert_eq!(guard.check(&bearer("second-and-longer"), &stats), Ok(()));
        let refused = stats.snapshot().unauthenticated;
        assert_eq!(refused, [("grpc", 0), ("http", 0), ("query", 2)]);
    }

    #[test]
    fn files_that_cannot_be_used_are_named_by_their_key() {
        let dir = scratch("missing");
        let mut config = Config::default_config().expect("default config");
        config.query.tls.cert_file = Some(dir.join("absent.crt"));
        config.query.tls.key_file = Some(dir.join("absent.key"));
        let error = query_guard(&config).err().expect("refused").to_string();
        assert!(
            error.starts_with("config key `query.tls.cert_file`: "),
            "{error}"
        );
        assert!(error.contains("absent.crt"), "{error}");

        std::fs::write(dir.join("empty.crt"), "").expect("write");
        config.query.tls.cert_file = Some(dir.join("empty.crt"));
        let error = query_guard(&config).err().expect("refused").to_string();
        assert!(error.contains("no PEM certificate"), "{error}");

        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
        let other_key = rcgen::KeyPair::generate().expect("key");
        std::fs::write(dir.join("server.crt"), cert.pem()).expect("write");
        std::fs::write(dir.join("other.key"), other_key.serialize_pem()).expect("write");
        config.query.tls.cert_file = Some(dir.join("server.crt"));
        config.query.tls.key_file = Some(dir.join("other.key"));
        let error = query_guard(&config).err().expect("refused").to_string();
        assert!(
            error.starts_with("config key `query.tls.key_file`: "),
            "{error}"
        );

        std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("write");
        config.query.tls.key_file = Some(dir.join("server.key"));
        let guard = query_guard(&config).expect("a matching key is accepted");
        assert!(guard.acceptor().is_some());
        // A certificate file broken later leaves the one in force.
        std::fs::write(dir.join("server.crt"), "garbage").expect("write");
        guard.refresh(true);
        assert!(guard.acceptor().is_some());
    }
}
