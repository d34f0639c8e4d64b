//! What every TCP listener does with a connection before HTTP sees a byte of it, and the
//! HTTP server loop for the axum routers (OTLP/HTTP and the query API).
//!
//! - A [`Gate`] admits at most `max_connections` connections per listener: one past the cap
//!   is accepted and closed at once, so the kernel's queue never fills and the other
//!   listeners (`/healthz` among them) keep answering. An `accept` that fails for a reason
//!   other than the peer (out of file descriptors, say) is retried after a back-off that
//!   doubles up to a second, instead of spinning.
//! - An [`Admitted`] connection that sends nothing within `header_timeout` of being
//!   accepted, or nothing for `idle_timeout` later on, is closed (so idle connections
//!   opened to fill the cap are gone within seconds, on HTTP/2 listeners too); the
//!   HTTP/1 server also closes one whose request headers take longer than `header_timeout`
//!   (and, hyper measuring it from the moment a connection falls idle, one that sends no
//!   next request within it). Slow bodies are the receivers' business (`body_timeout`).
//! - HTTP/2 connections take at most `max_concurrent_streams` requests at once.
//! - On a listener with TLS, an admitted connection is a [`Connection::Tls`] once its
//!   handshake (bounded by `header_timeout`) is through, with the acceptor in force when it
//!   was accepted (`security`).
//! - At start the open-file limit is raised to its hard limit ([`raise_file_limit`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::security::Guard;

/// Raises this process's limit on open files to the hard limit, so that connections run
/// into the per-listener caps before they run into the kernel's. Returns the limit now in
/// force, `None` when it cannot be read.
pub fn raise_file_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        if let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            tracing::warn!(%error, soft, hard, "Cannot raise the open-file limit");
            return Some(soft);
        }
        tracing::debug!(from = soft, to = hard, "Raised the open-file limit");
    }
    Some(hard.max(soft))
}

/// How a listener treats connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionSettings {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_concurrent_streams: u32,
}

/// A listener that admits a bounded number of connections.
pub struct Gate {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    header_timeout: Duration,
    idle_timeout: Duration,
    name: &'static str,
}

/// Longest pause between two failed `accept`s.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

impl Gate {
    pub fn new(listener: TcpListener, settings: ConnectionSettings, name: &'static str) -> Gate {
        Gate {
            listener,
            slots: Arc::new(Semaphore::new(settings.max_connections)),
            header_timeout: settings.header_timeout,
            idle_timeout: settings.idle_timeout,
            name,
        }
    }

    /// The next connection within the cap.
    pub async fn accept(&mut self) -> (Admitted, SocketAddr) {
        let mut backoff = Duration::from_millis(5);
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => match Arc::clone(&self.slots).try_acquire_owned() {
                    Ok(slot) => {
                        if let Err(error) = stream.set_nodelay(true) {
                            // Without it Nagle's algorithm and the client's delayed ACK hold
                            // small responses back by up to ~40 ms; the connection still works.
                            tracing::debug!(%error, "Cannot set TCP_NODELAY on a connection");
                        }
                        let timeouts = (self.header_timeout, self.idle_timeout);
                        return (Admitted::new(stream, slot, timeouts), peer);
                    }
                    Err(_) => {
                        tracing::debug!(
                            listener = self.name,
                            %peer,
                            "Connection closed at once: the listener holds its most connections"
                        );
                        drop(stream);
                    }
                },
                Err(error) if peer_gone(&error) => {}
                Err(error) => {
                    tracing::warn!(
                        listener = self.name,
                        %error,
                        backoff = ?backoff,
                        "Cannot accept a connection; trying again after a pause"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Errors that concern one connection only: the next `accept` may succeed at once.
fn peer_gone(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// An admitted connection: it holds its slot under the cap, and fails its next read once
/// the peer has sent nothing within the header timeout of the accept, or later for the
/// idle timeout, which closes it.
pub struct Admitted {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    first_timeout: Duration,
    idle_timeout: Duration,
    quiet: Pin<Box<Sleep>>,
}

impl Admitted {
    /// `(first, idle)`: how long the peer may take to send its first bytes, and later to
    /// send more.
    fn new(
        stream: TcpStream,
        slot: OwnedSemaphorePermit,
        (first, idle_timeout): (Duration, Duration),
    ) -> Admitted {
        Admitted {
            stream,
            _slot: slot,
            first_timeout: first.min(idle_timeout),
            idle_timeout,
            quiet: Box::pin(tokio::time::sleep(first.min(idle_timeout))),
        }
    }

    /// After a TLS handshake: the first request's bytes must come within the header
    /// timeout, as on a plain connection, not within the idle timeout the handshake's own
    /// bytes started.
    fn await_first_request(&mut self) {
        let deadline = Instant::now() + self.first_timeout;
        self.quiet.as_mut().reset(deadline);
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buffer.filled().len();
        match Pin::new(&mut this.stream).poll_read(context, buffer) {
            Poll::Ready(Ok(())) => {
                if buffer.filled().len() > before {
                    let deadline = Instant::now() + this.idle_timeout;
                    this.quiet.as_mut().reset(deadline);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.quiet.as_mut().poll(context) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer sent nothing for the header or idle timeout",
                ))),
                Poll::Pending => Poll::Pending,
            },
            failed => failed,
        }
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(context, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(context)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Admitted {
    type ConnectInfo = <TcpStream as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// A connection, in TLS or not, as the listener's [`Guard`] says.
pub enum Connection {
    Plain(Admitted),
    Tls(Box<tokio_rustls::server::TlsStream<Admitted>>),
}

/// The connection after its TLS handshake, when the listener speaks TLS. A handshake that
/// fails (plain text sent to a TLS port, an untrusted client certificate) or takes longer
/// than the header timeout ends the connection here; it is counted by the guard and logged
/// at debug level.
async fn secure(
    connection: Admitted,
    guard: Arc<Guard>,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<Connection> {
    let Some(acceptor) = guard.acceptor() else {
        return Some(Connection::Plain(connection));
    };
    match tokio::time::timeout(timeout, acceptor.accept(connection)).await {
        Ok(Ok(mut stream)) => {
            stream.get_mut().0.await_first_request();
            Some(Connection::Tls(Box::new(stream)))
        }
        Ok(Err(error)) => {
            guard.handshake_failed();
            tracing::debug!(%peer, %error, "TLS handshake failed");
            None
        }
        Err(_) => {
            guard.handshake_failed();
            tracing::debug!(%peer, ?timeout, "TLS handshake did not finish in time");
            None
        }
    }
}

impl Connection {
    fn admitted(&self) -> &Admitted {
        match self {
            Connection::Plain(connection) => connection,
            Connection::Tls(stream) => stream.get_ref().0,
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(connection) => Pin::new(connection).poll_read(context, buffer),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_read(context, buffer),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(connection) => Pin::new(connection).poll_write(context, data),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_write(context, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(connection) => Pin::new(connection).poll_flush(context),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(context),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(connection) => Pin::new(connection).poll_shutdown(context),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(context),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(connection) => {
                Pin::new(connection).poll_write_vectored(context, buffers)
            }
            Connection::Tls(stream) => {
                Pin::new(stream.as_mut()).poll_write_vectored(context, buffers)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Connection::Plain(connection) => connection.is_write_vectored(),
            Connection::Tls(stream) => stream.is_write_vectored(),
        }
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = <Admitted as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.admitted().connect_info()
    }
}

/// The gate's connections as a stream, for tonic's `serve_with_incoming_shutdown`, each
/// through its TLS handshake when the guard has TLS. Handshakes run side by side (at most
/// `max_connections`, which the gate bounds anyway), so a slow one holds up no other.
pub fn incoming(
    gate: Gate,
    guard: Arc<Guard>,
    settings: ConnectionSettings,
) -> impl futures_util::Stream<Item = io::Result<Connection>> {
    use futures_util::StreamExt;
    futures_util::stream::unfold(gate, |mut gate| async move {
        let accepted = gate.accept().await;
        Some((accepted, gate))
    })
    .map(move |(connection, peer)| {
        secure(
            connection,
            Arc::clone(&guard),
            peer,
            settings.header_timeout,
        )
    })
    .buffer_unordered(settings.max_connections)
    .filter_map(|connection| std::future::ready(connection.map(Ok)))
}

/// Serves `router` on the gate's connections until `shutdown`, then lets the connections
/// finish what they are doing (the caller bounds how long with its grace period). Requests
/// carry the peer's address as axum's `ConnectInfo`. Each connection goes through its TLS
/// handshake, when the guard has TLS, on a task of its own.
pub async fn serve_http(
    mut gate: Gate,
    guard: Arc<Guard>,
    router: Router,
    settings: ConnectionSettings,
    shutdown: CancellationToken,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    loop {
        let (connection, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = gate.accept() => accepted,
        };
        let service =
            router
                .clone()
                .map_request(move |mut request: http::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request.map(axum::body::Body::new)
                });
        let (guard, builder, watcher) =
            (Arc::clone(&guard), Arc::clone(&builder), graceful.watcher());
        tokio::spawn(async move {
            let Some(connection) = secure(connection, guard, peer, settings.header_timeout).await
            else {
                return;
            };
            let served = builder
                .serve_connection_with_upgrades(
                    TokioIo::new(connection),
                    TowerToHyperService::new(service),
                )
                .into_owned();
            if let Err(error) = watcher.watch(served).await {
                tracing::trace!(%error, "Connection ended with an error");
            }
        });
    }
    drop(gate);
    graceful.shutdown().await;
}
