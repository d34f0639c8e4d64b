//! Counters of what the receivers saw: requests, points accepted, rejected and dropped by
//! reason, whole requests refused by reason, and type conflicts. Lock-free atomics, updated
//! once per request.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::outcome::{DropReason, Outcome, RejectReason};

/// Why a whole request was refused before any point was looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// Not decodable as protobuf or OTLP/JSON.
    Decode,
    /// Over the size limit, before or after decompression.
    TooLarge,
    /// A content type or content encoding fanin does not read.
    Unsupported,
    /// The memory budget for requests in flight had no room: told to retry.
    Busy,
    /// The body did not arrive within `receivers.otlp.body_timeout`.
    Timeout,
}

impl RequestError {
    pub const ALL: [RequestError; 5] = [
        RequestError::Decode,
        RequestError::TooLarge,
        RequestError::Unsupported,
        RequestError::Busy,
        RequestError::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestError::Decode => "decode",
            RequestError::TooLarge => "too_large",
            RequestError::Unsupported => "unsupported",
            RequestError::Busy => "busy",
            RequestError::Timeout => "timeout",
        }
    }
}

/// A TCP listener, for the requests refused before they reach a receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Grpc,
    Http,
    Query,
}

impl Listener {
    pub const ALL: [Listener; 3] = [Listener::Grpc, Listener::Http, Listener::Query];

    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Grpc => "grpc",
            Listener::Http => "http",
            Listener::Query => "query",
        }
    }
}

/// An exporter that sends the totals upstream (`export`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExporterKind {
    Otlp,
    RemoteWrite,
}

impl ExporterKind {
    pub const ALL: [ExporterKind; 2] = [ExporterKind::Otlp, ExporterKind::RemoteWrite];

    pub fn as_str(self) -> &'static str {
        match self {
            ExporterKind::Otlp => "otlp",
            ExporterKind::RemoteWrite => "prometheus_remote_write",
        }
    }
}

/// One exporter's figures.
#[derive(Debug, Default)]
pub struct ExporterFigures {
    batches_sent: AtomicU64,
    points_sent: AtomicU64,
    batches_failed: AtomicU64,
    batches_dropped: AtomicU64,
    retries: AtomicU64,
    points_rejected: AtomicU64,
    queued: AtomicU64,
}

/// A copy of one exporter's figures.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ExporterSnapshot {
    /// Batches upstream took, and the points (samples) in them.
    pub batches_sent: u64,
    pub points_sent: u64,
    /// Batches upstream refused for good.
    pub batches_failed: u64,
    /// Batches dropped from a full queue (a newer one superseded them).
    pub batches_dropped: u64,
    /// Attempts that failed and were retried later.
    pub retries: u64,
    /// Points upstream refused through `partial_success`.
    pub points_rejected: u64,
    /// Batches waiting now.
    pub queued: u64,
}

impl ExporterFigures {
    pub fn sent(&self, points: u64) {
        add(&self.batches_sent, 1);
        add(&self.points_sent, points);
    }

    pub fn failed(&self, batches: u64) {
        add(&self.batches_failed, batches);
    }

    pub fn dropped(&self, batches: u64) {
        add(&self.batches_dropped, batches);
    }

    pub fn retried(&self) {
        add(&self.retries, 1);
    }

    pub fn rejected(&self, points: u64) {
        add(&self.points_rejected, points);
    }

    pub fn queued(&self, batches: usize) {
        self.queued.store(batches as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> ExporterSnapshot {
        ExporterSnapshot {
            batches_sent: read(&self.batches_sent),
            points_sent: read(&self.points_sent),
            batches_failed: read(&self.batches_failed),
            batches_dropped: read(&self.batches_dropped),
            retries: read(&self.retries),
            points_rejected: read(&self.points_rejected),
            queued: read(&self.queued),
        }
    }
}

/// What the snapshot under `storage.path` did.
#[derive(Debug, Default)]
pub struct StorageFigures {
    written: AtomicU64,
    failed: AtomicU64,
    last_bytes: AtomicU64,
    last_micros: AtomicU64,
    last_written_unix_nano: AtomicU64,
}

/// A copy of the snapshot's figures.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct StorageSnapshot {
    /// Snapshots written since start, and attempts that failed.
    pub snapshots_written: u64,
    pub snapshots_failed: u64,
    /// The latest snapshot's size, how long it took to build and write, and when it was
    /// written (0: none yet).
    pub last_bytes: u64,
    pub last_micros: u64,
    pub last_written_unix_nano: u64,
}

impl StorageFigures {
    pub fn written(&self, bytes: u64, took: std::time::Duration, at_unix_nano: u64) {
        self.last_bytes.store(bytes, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.last_micros.store(micros, Ordering::Relaxed);
        self.last_written_unix_nano
            .store(at_unix_nano, Ordering::Relaxed);
        add(&self.written, 1);
    }

    pub fn failed(&self) {
        add(&self.failed, 1);
    }

    fn snapshot(&self) -> StorageSnapshot {
        StorageSnapshot {
            snapshots_written: read(&self.written),
            snapshots_failed: read(&self.failed),
            last_bytes: read(&self.last_bytes),
            last_micros: read(&self.last_micros),
            last_written_unix_nano: read(&self.last_written_unix_nano),
        }
    }
}

/// The counters. All updates are relaxed: they are statistics, not synchronisation.
#[derive(Debug, Default)]
pub struct Stats {
    requests_grpc: AtomicU64,
    requests_http: AtomicU64,
    requests_unix: AtomicU64,
    request_errors: [AtomicU64; RequestError::ALL.len()],
    unauthenticated: [AtomicU64; Listener::ALL.len()],
    tls_handshake_failures: [AtomicU64; Listener::ALL.len()],
    exporters: [ExporterFigures; ExporterKind::ALL.len()],
    storage: StorageFigures,
    points_accepted: AtomicU64,
    points_rejected: [AtomicU64; RejectReason::ALL.len()],
    points_dropped: [AtomicU64; DropReason::ALL.len()],
    type_conflicts: AtomicU64,
    instances_retired: AtomicU64,
    collisions: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StatsSnapshot {
    pub requests: Vec<(&'static str, u64)>,
    pub request_errors: Vec<(&'static str, u64)>,
    /// Requests refused for a missing or wrong bearer token, by listener.
    pub unauthenticated: Vec<(&'static str, u64)>,
    /// TLS handshakes that failed or did not finish in time, by listener.
    pub tls_handshake_failures: Vec<(&'static str, u64)>,
    /// Each exporter's figures (zero for one that is off).
    pub exporters: Vec<(&'static str, ExporterSnapshot)>,
    pub storage: StorageSnapshot,
    pub points_received: u64,
    pub points_accepted: u64,
    pub points_rejected: Vec<(&'static str, u64)>,
    pub points_dropped: Vec<(&'static str, u64)>,
    pub type_conflicts: u64,
    /// Instances retired since start (by TTL or a gone pid).
    pub instances_retired: u64,
    /// Streams found written by more than one process.
    pub collisions: u64,
}

fn add(counter: &AtomicU64, count: u64) {
    if count > 0 {
        counter.fetch_add(count, Ordering::Relaxed);
    }
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Stats {
    /// Counts one request that reached a receiver, whatever became of it.
    pub fn request(&self, transport: super::Transport) {
        match transport {
            super::Transport::Grpc => add(&self.requests_grpc, 1),
            super::Transport::Http => add(&self.requests_http, 1),
            super::Transport::Unix => add(&self.requests_unix, 1),
        }
    }

    /// Counts a request refused as a whole.
    pub fn request_error(&self, error: RequestError) {
        add(&self.request_errors[error as usize], 1);
    }

    /// Counts a request refused for a missing or wrong bearer token.
    pub fn unauthenticated(&self, listener: Listener) {
        add(&self.unauthenticated[listener as usize], 1);
    }

    /// Counts a TLS handshake that failed or did not finish in time.
    pub fn tls_handshake_failed(&self, listener: Listener) {
        add(&self.tls_handshake_failures[listener as usize], 1);
    }

    /// One exporter's figures, to update.
    pub fn exporter(&self, kind: ExporterKind) -> &ExporterFigures {
        &self.exporters[kind as usize]
    }

    /// The snapshot's figures, to update.
    pub fn storage(&self) -> &StorageFigures {
        &self.storage
    }

    /// Counts the points of one request by what became of them.
    pub(super) fn record(&self, outcome: &Outcome) {
        add(&self.points_accepted, outcome.accepted);
        for (index, reason) in RejectReason::ALL.iter().enumerate() {
            add(&self.points_rejected[index], outcome.rejected(*reason));
        }
        for (index, reason) in DropReason::ALL.iter().enumerate() {
            add(&self.points_dropped[index], outcome.dropped(*reason));
        }
    }

    pub(super) fn type_conflict(&self) {
        add(&self.type_conflicts, 1);
    }

    pub(super) fn collision(&self) {
        add(&self.collisions, 1);
    }

    pub(super) fn instance_retired(&self) {
        add(&self.instances_retired, 1);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let points_rejected: Vec<_> = RejectReason::ALL
            .iter()
            .zip(&self.points_rejected)
            .map(|(reason, counter)| (reason.as_str(), read(counter)))
            .collect();
        let points_dropped: Vec<_> = DropReason::ALL
            .iter()
            .zip(&self.points_dropped)
            .map(|(reason, counter)| (reason.as_str(), read(counter)))
            .collect();
        let points_accepted = read(&self.points_accepted);
        let points_received = points_accepted
            + points_rejected.iter().map(|(_, count)| count).sum::<u64>()
            + points_dropped.iter().map(|(_, count)| count).sum::<u64>();
        StatsSnapshot {
            requests: vec![
                ("grpc", read(&self.requests_grpc)),
                ("http", read(&self.requests_http)),
                ("unix", read(&self.requests_unix)),
            ],
            request_errors: RequestError::ALL
                .iter()
                .zip(&self.request_errors)
                .map(|(error, counter)| (error.as_str(), read(counter)))
                .collect(),
            unauthenticated: Listener::ALL
                .iter()
                .zip(&self.unauthenticated)
                .map(|(listener, counter)| (listener.as_str(), read(counter)))
                .collect(),
            tls_handshake_failures: Listener::ALL
                .iter()
                .zip(&self.tls_handshake_failures)
                .map(|(listener, counter)| (listener.as_str(), read(counter)))
                .collect(),
            exporters: ExporterKind::ALL
                .iter()
                .zip(&self.exporters)
                .map(|(kind, figures)| (kind.as_str(), figures.snapshot()))
                .collect(),
            storage: self.storage.snapshot(),
            points_received,
            points_accepted,
            points_rejected,
            points_dropped,
            type_conflicts: read(&self.type_conflicts),
            instances_retired: read(&self.instances_retired),
            collisions: read(&self.collisions),
        }
    }
}
