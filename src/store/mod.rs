//! The store: one entry per stream, grouped by instance.
//!
//! Layout: a [`DashMap`] from instance (resource attributes) to an [`Instance`], and inside
//! each instance a `HashMap` of its streams behind a `std::sync::Mutex`. One export request
//! carries one worker's resource, so it takes its instance's lock once and applies every
//! point under it; different workers lock different instances and never wait for each other.
//! A std mutex rather than tokio's: it is never held across `.await`, only for the
//! synchronous work of applying points or copying state.
//!
//! Hashing uses foldhash (randomly seeded per map) instead of std's SipHash: stream keys are
//! long (scope, metric, attributes) and hashed once per point, so the hasher is a visible
//! share of the receive path. Growth is bounded by `limits.max_series` either way.
//!
//! Lock order, to stay deadlock-free: a DashMap guard is never held while taking an instance
//! lock (the `Arc<Instance>` is cloned out first); under an instance lock only the metric
//! registry (`metrics`) is touched, briefly, when a new stream is created.

mod stats;
mod stream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use dashmap::DashMap;
use foldhash::fast::RandomState;

use crate::model::{Attributes, InstanceKey, MetricId, StreamKey, StreamPoint};
use crate::outcome::{Outcome, RejectReason};

pub use stats::{RequestError, Stats, StatsSnapshot};
pub use stream::{StreamState, StreamValue};

use stream::{Refusal, Stream};

/// Which transport a request came over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Grpc,
    Http,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Http => "http",
        }
    }
}

/// Who sent a request: the transport and the peer's address, when known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Writer {
    pub transport: Transport,
    pub peer: Option<SocketAddr>,
}

/// A batch of points from one instance, as produced by `receiver::otlp`.
pub struct InstancePoints {
    pub resource: Attributes,
    pub points: Vec<StreamPoint>,
}

/// The stream store. Cheap to clone: every clone shares the same state.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

struct Shared {
    instances: DashMap<InstanceKey, Arc<Instance>, RandomState>,
    /// The first identity seen for each metric name, and any that conflicted with it.
    metrics: DashMap<String, MetricEntry, RandomState>,
    n_streams: AtomicUsize,
    max_series: usize,
    stats: Stats,
}

struct Instance {
    key: InstanceKey,
    state: Mutex<InstanceState>,
}

struct InstanceState {
    streams: HashMap<StreamKey, Stream, RandomState>,
    first_seen: SystemTime,
    last_seen: SystemTime,
    last_writer: Writer,
    exports: u64,
}

struct MetricEntry {
    first: Arc<MetricId>,
    conflicts: Vec<TypeConflict>,
}

/// A metric name seen with a different kind, unit or monotonicity than it was first seen
/// with. Both are stored as separate streams; this records that they disagree.
#[derive(Clone, Debug, PartialEq)]
pub struct TypeConflict {
    pub metric: String,
    /// The identity first seen for the name, described ("sum (monotonic, cumulative, unit \"1\")").
    pub first: String,
    /// The conflicting identity, described the same way.
    pub conflicting: String,
    pub first_seen: SystemTime,
    /// Streams created with the conflicting identity.
    pub streams: u64,
}

/// An owned copy of one instance's summary, for `/api/v1/instances`.
#[derive(Clone, Debug)]
pub struct InstanceView {
    pub attributes: InstanceKey,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    pub last_writer: Writer,
    pub exports: u64,
    pub streams: usize,
}

/// An owned copy of one stream, for `/api/v1/series`.
#[derive(Clone, Debug)]
pub struct StreamView {
    pub instance: InstanceKey,
    pub key: StreamKey,
    pub description: Arc<str>,
    pub state: StreamState,
}

impl Store {
    /// An empty store that keeps at most `max_series` streams.
    pub fn new(max_series: NonZeroUsize) -> Store {
        Store {
            shared: Arc::new(Shared {
                instances: DashMap::with_hasher(RandomState::default()),
                metrics: DashMap::with_hasher(RandomState::default()),
                n_streams: AtomicUsize::new(0),
                max_series: max_series.get(),
                stats: Stats::default(),
            }),
        }
    }

    /// Counters of what was received, accepted, rejected and dropped.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Applies every point of one request. `outcome` already holds what the conversion
    /// rejected; this adds what was stored, refused or dropped here, and records the whole
    /// outcome in the counters.
    pub fn ingest(
        &self,
        batches: Vec<InstancePoints>,
        writer: Writer,
        mut outcome: Outcome,
    ) -> Outcome {
        let now = SystemTime::now();
        for batch in batches {
            let instance = self.instance(batch.resource, writer, now);
            let mut state = lock(&instance.state);
            state.last_seen = now;
            state.last_writer = writer;
            state.exports += 1;
            for point in batch.points {
                self.apply(&mut state, point, now, &mut outcome);
            }
        }
        self.shared.stats.record(&outcome);
        outcome
    }

    /// The instance for `resource`, created on first sight.
    fn instance(&self, resource: Attributes, writer: Writer, now: SystemTime) -> Arc<Instance> {
        if let Some(existing) = self.shared.instances.get(&resource) {
            return Arc::clone(existing.value());
        }
        let key = Arc::new(resource);
        let entry = self
            .shared
            .instances
            .entry(Arc::clone(&key))
            .or_insert_with(|| {
                Arc::new(Instance {
                    key,
                    state: Mutex::new(InstanceState {
                        streams: HashMap::with_hasher(RandomState::default()),
                        first_seen: now,
                        last_seen: now,
                        last_writer: writer,
                        exports: 0,
                    }),
                })
            });
        Arc::clone(entry.value())
    }

    fn apply(
        &self,
        state: &mut InstanceState,
        point: StreamPoint,
        now: SystemTime,
        outcome: &mut Outcome,
    ) {
        // Taken apart so the point's value moves into the stream instead of being copied.
        let StreamPoint {
            key,
            point,
            description,
        } = point;
        let metric = Arc::clone(&key.metric);
        let result = match state.streams.get_mut(&key) {
            Some(stream) => stream.apply(point),
            None => {
                if !self.reserve_stream() {
                    outcome.reject(RejectReason::SeriesLimit, 1, || {
                        format!(
                            "metric {:?}: the store is full ({} streams, limits.max_series); existing streams keep updating",
                            metric.name, self.shared.max_series
                        )
                    });
                    return;
                }
                let mut stream = Stream::new(Arc::clone(&metric), description);
                let result = stream.apply(point);
                self.register_metric(&metric, now);
                state.streams.insert(key, stream);
                result
            }
        };
        match result {
            Ok(()) => outcome.accepted += 1,
            Err(Refusal::Drop(reason)) => outcome.drop_point(reason),
            Err(Refusal::Bounds(mismatch)) => outcome.reject(RejectReason::BoundsChanged, 1, || {
                format!(
                    "metric {:?}: a histogram point's {mismatch}; keep one set of bounds per stream",
                    metric.name
                )
            }),
        }
    }

    /// Takes one slot under `limits.max_series`; false when the store is full.
    fn reserve_stream(&self) -> bool {
        let max = self.shared.max_series;
        self.shared
            .n_streams
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Notes a new stream's metric identity and reports a type conflict the first time a
    /// name arrives with another kind, unit or monotonicity.
    fn register_metric(&self, metric: &Arc<MetricId>, now: SystemTime) {
        let mut entry = self
            .shared
            .metrics
            .entry(metric.name.clone())
            .or_insert_with(|| MetricEntry {
                first: Arc::clone(metric),
                conflicts: Vec::new(),
            });
        let first = &entry.first;
        let same_type = first.kind == metric.kind
            && first.unit == metric.unit
            && first.monotonic == metric.monotonic;
        if same_type {
            return;
        }
        let first_description = first.describe();
        let conflicting = metric.describe();
        match entry
            .conflicts
            .iter_mut()
            .find(|conflict| conflict.conflicting == conflicting)
        {
            Some(conflict) => conflict.streams += 1,
            None => {
                tracing::warn!(
                    metric = %metric.name,
                    first = %first_description,
                    conflicting = %conflicting,
                    "Metric name arrives with two types; both are kept as separate streams. Give them different names"
                );
                self.shared.stats.type_conflict();
                entry.conflicts.push(TypeConflict {
                    metric: metric.name.clone(),
                    first: first_description,
                    conflicting,
                    first_seen: now,
                    streams: 1,
                });
            }
        }
    }

    /// Every type conflict seen so far.
    pub fn type_conflicts(&self) -> Vec<TypeConflict> {
        self.shared
            .metrics
            .iter()
            .flat_map(|entry| entry.value().conflicts.clone())
            .collect()
    }

    /// Whether any stream of `metric` exists.
    pub fn has_metric(&self, metric: &str) -> bool {
        self.shared.metrics.contains_key(metric)
    }

    /// Number of streams stored.
    pub fn stream_count(&self) -> usize {
        self.shared.n_streams.load(Ordering::Relaxed)
    }

    /// Number of instances seen.
    pub fn instance_count(&self) -> usize {
        self.shared.instances.len()
    }

    /// Every instance, as owned copies.
    pub fn instances(&self) -> Vec<InstanceView> {
        self.all_instances()
            .into_iter()
            .map(|instance| {
                let state = lock(&instance.state);
                InstanceView {
                    attributes: Arc::clone(&instance.key),
                    first_seen: state.first_seen,
                    last_seen: state.last_seen,
                    last_writer: state.last_writer,
                    exports: state.exports,
                    streams: state.streams.len(),
                }
            })
            .collect()
    }

    /// Every stream of the metric named `metric`, across all instances, as owned copies.
    pub fn streams(&self, metric: &str) -> Vec<StreamView> {
        let mut views = Vec::new();
        for instance in self.all_instances() {
            let state = lock(&instance.state);
            for (key, stream) in &state.streams {
                if key.metric.name == metric {
                    views.push(StreamView {
                        instance: Arc::clone(&instance.key),
                        key: key.clone(),
                        description: Arc::clone(stream.description()),
                        state: stream.state(),
                    });
                }
            }
        }
        views
    }

    /// Clones every instance handle out of the map, so no map guard is held afterwards.
    fn all_instances(&self) -> Vec<Arc<Instance>> {
        self.shared
            .instances
            .iter()
            .map(|entry| Arc::clone(entry.value()))
            .collect()
    }
}

/// Locks an instance. A panic while holding the lock cannot leave a stream half-updated in a
/// way later points would trip over (each point is applied or refused as a whole), so a
/// poisoned lock is used as is rather than taking the whole store down.
fn lock(state: &Mutex<InstanceState>) -> MutexGuard<'_, InstanceState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}
