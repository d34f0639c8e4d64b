//! The store: one entry per stream, grouped by instance.
//!
//! Layout: a [`DashMap`] from instance (resource attributes) to an `Instance`, and inside
//! each instance its streams (`ingest::Streams`: a `Vec` of them in the order they were
//! created, and a `hashbrown::HashTable` of their places in it, found by a hash computed
//! from borrowed parts) behind a `std::sync::Mutex`. One export request
//! carries one worker's resource, so it takes its instance's lock once and applies every
//! point under it; different workers lock different instances and never wait for each other.
//! A std mutex rather than tokio's: it is never held across `.await`, only for the
//! synchronous work of applying points or copying state.
//!
//! Hashing uses foldhash (randomly seeded per map) instead of std's SipHash: stream keys are
//! long (scope, metric, attributes) and hashed once per point, so the hasher is a visible
//! share of the receive path. Growth is bounded by `limits.max_series` either way.
//!
//! Point attribute sets are shared: the store keeps one copy of each distinct set
//! (`attribute_sets`), and every stream with that set points at it, so 64 workers reporting
//! the same routes store the routes once.
//!
//! Lock order, to stay deadlock-free: a DashMap guard is never held while taking an instance
//! lock (the `Arc<Instance>` is cloned out first). Under an instance lock the code may take,
//! briefly: a `metrics` registry entry and the `attribute_sets` mutex (stream creation), the
//! `collisions` mutex (evidence), and during eviction the `retired` mutex, the `evicted` list
//! and the `instances` shard (removal). None of these is ever held while waiting for an
//! instance lock. The `known_blocks` read guard is the exception the other way round: a
//! receiver takes it before any instance lock and holds it across them for one request, so
//! its write lock is only ever taken with no instance lock held (after a request, and by the
//! sweep once it has let go of every instance).

mod blocks;
mod clock;
mod collision;
mod ingest;
mod limits;
mod liveness;
mod page;
mod process;
mod snapshot;
mod stats;
mod stream;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Instant, SystemTime};

use dashmap::DashMap;
use foldhash::fast::RandomState;

use crate::model::{AttrRef, Attributes, InstanceAttributes, InstanceKey, MetricId, StreamKey};
use crate::outcome::{Outcome, RejectReason};

pub use crate::model::StreamValue;
pub use blocks::{KnownBlock, KnownBlocks, MAX_BLOCK_BYTES, MAX_BLOCKS, NewBlock, NewBlocks};
pub use clock::Clock;
pub use collision::{CollisionView, FIX, InheritedState};
pub use ingest::{Ingest, InstanceWriter, MetricKey, PointAttributes};
pub use limits::Limits;
pub use liveness::{Liveness, RetireReason, Retirement, SweepReport};
pub use page::{Cursor, CursorError, Page};
pub use snapshot::{Restored, SnapshotBody};
pub use stats::{
    ExporterFigures, ExporterKind, ExporterSnapshot, Listener, RequestError, Stats, StatsSnapshot,
    StorageFigures, StorageSnapshot,
};
pub use stream::{CollisionPolicy, Current, Evidence, RunState, Stream, StreamState};

use ingest::Streams;
use stream::Refusal;

/// Which transport a request came over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Grpc,
    Http,
    /// OTLP/gRPC over the unix socket: the writer is on this host and its pid is known.
    Unix,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Http => "http",
            Transport::Unix => "unix",
        }
    }
}

/// Who sent a request: the transport, the peer's address for TCP, and the peer's pid for
/// the unix socket (from the kernel, `SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Writer {
    pub transport: Transport,
    pub peer: Option<SocketAddr>,
    pub pid: Option<i32>,
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
    /// Streams kept; with the retired totals, against `limits.max_series`.
    n_streams: AtomicUsize,
    /// Retired totals kept (the length of `retired`, readable without its lock).
    n_retired: AtomicUsize,
    /// Instances in the map, against `limits.max_instances`.
    n_instances: AtomicUsize,
    limits: Limits,
    stats: Stats,
    /// Decides which resource attributes a retired accumulator's key leaves out.
    instance_attributes: InstanceAttributes,
    /// What evicted instances counted, per aggregated key (`docs/design.md`, "Liveness and
    /// retirement"). Its size follows the number of distinct keys, not of workers ever seen.
    retired: Mutex<HashMap<RetiredKey, RetiredTotal, RandomState>>,
    /// Instances evicted so far, raised under `retired`'s lock as an eviction folds an
    /// instance's streams into it ([`Store::retired_unless_evicted_since`]).
    evictions: AtomicU64,
    /// Called between two instances of [`Store::read_streams`], no lock held: a test puts
    /// a sweep there to evict while a read walks.
    #[cfg(test)]
    between_instances: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// The most recently evicted instances, for `/api/v1/instances`.
    evicted: Mutex<VecDeque<InstanceView>>,
    /// Colliding streams, by instance and stream; touched only when a point is evidence.
    collisions: Mutex<HashMap<(InstanceKey, StreamKey), collision::CollisionRecord>>,
    collision_policy: CollisionPolicy,
    /// This host's name when pids may be checked here.
    local_host: Option<String>,
    verify_unix_pids: bool,
    clock: Clock,
    /// Seeds the stream hashes of every instance (see `ingest::MetricKey`) and the hashes of
    /// `attribute_sets`.
    stream_hasher: RandomState,
    /// One copy of each distinct point attribute set, shared by every stream that has it.
    /// Touched only when a stream is created, and by the sweep after evictions.
    attribute_sets: Mutex<hashbrown::HashTable<Arc<Attributes>>>,
    /// Point attribute blocks read before, by their bytes (`blocks`): read-locked by a
    /// receiver for a whole request, write-locked to learn new ones after it.
    known_blocks: RwLock<KnownBlocks>,
    /// Held while a snapshot walks the store, or a read that must not meet an eviction
    /// ([`Store::holding_evictions`]): no instance is evicted meanwhile, so the walk never
    /// meets an instance's streams and, in the retired totals, their fold.
    snapshot_gate: Mutex<()>,
    /// The latest version any metric was raised to ([`tick`]).
    changed: AtomicU64,
    /// Streams marked unreliable ([`Store::unreliable_stream_count`]): raised when a stream
    /// is marked (which happens once to a stream) or restored marked, lowered when its
    /// instance is evicted.
    unreliable: AtomicUsize,
}

/// How many evicted instances `/api/v1/instances` still lists.
const EVICTED_LISTED: usize = 1024;

/// Where an evicted instance's counting streams are folded: the metric, the resource without
/// its instance attributes, the point attributes, and for explicit-bucket histograms the
/// bounds (by their bits), since totals with other bounds cannot be added bucket-wise.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RetiredKey {
    metric: Arc<MetricId>,
    resource: Attributes,
    attributes: Arc<Attributes>,
    bounds: Vec<u64>,
}

#[derive(Clone, Debug)]
struct RetiredTotal {
    value: StreamValue,
    instances: u64,
}

/// What evicted instances counted for one aggregated key, for queries.
#[derive(Clone, Debug)]
pub struct RetiredView {
    pub metric: Arc<MetricId>,
    /// The resource without instance attributes.
    pub resource: Attributes,
    pub attributes: Arc<Attributes>,
    pub value: StreamValue,
    /// How many evicted instances are folded in.
    pub instances: u64,
}

/// One metric name's first identity, and how much the store holds of it.
#[derive(Clone, Debug)]
pub struct MetricIdentity {
    pub metric: Arc<MetricId>,
    pub description: Arc<str>,
    /// Streams and retired totals of the name, of any identity.
    pub held: usize,
    /// Changes whenever what an answer for the name aggregates may have changed (a point
    /// written, a stream created, an instance retired, revived or evicted); the same number
    /// means the same answer. Read before the streams are, so an answer built after reading
    /// it may be kept under it (`docs/design.md`, "Query API").
    pub version: u64,
}

/// One metric name, for `/api/v1/metrics`.
#[derive(Clone, Debug)]
pub struct MetricSummary {
    /// The identity first seen for the name; conflicting identities are listed apart.
    pub metric: Arc<MetricId>,
    pub description: Arc<str>,
    pub live_instances: u64,
    pub retired_instances: u64,
}

struct Instance {
    key: InstanceKey,
    state: Mutex<InstanceState>,
}

struct InstanceState {
    streams: Streams,
    first_seen: SystemTime,
    last_seen: SystemTime,
    /// Monotonic time of the last export, for `instance_ttl`.
    last_export: Instant,
    last_writer: Writer,
    exports: u64,
    retired: Option<Retirement>,
    /// Removed from the map; a writer holding this handle must look the instance up again.
    evicted: bool,
}

struct MetricEntry {
    first: Arc<MetricId>,
    /// The longest description seen (descriptions are not identifying).
    description: Arc<str>,
    conflicts: Vec<TypeConflict>,
    /// A stream was refused past `limits.max_type_conflicts` (logged once).
    conflicts_refused: bool,
    /// Instances with streams of this metric that were evicted.
    evicted_instances: u64,
    /// Streams and retired totals of this name: at 0 the sweep forgets the name.
    streams: usize,
    /// [`MetricIdentity::version`]: the [`tick`] of the last change, raised after it.
    changed: AtomicU64,
}

impl MetricEntry {
    /// A name first seen with `metric`, holding nothing yet.
    fn new(metric: &Arc<MetricId>, description: &Arc<str>) -> MetricEntry {
        MetricEntry {
            first: Arc::clone(metric),
            description: Arc::clone(description),
            conflicts: Vec::new(),
            conflicts_refused: false,
            evicted_instances: 0,
            streams: 0,
            changed: AtomicU64::new(tick()),
        }
    }
}

/// The source of [`MetricIdentity::version`]s, shared by every store in the process, so a
/// version is never the same in two stores.
static TICKS: AtomicU64 = AtomicU64::new(0);

/// A number larger than every one handed out before.
///
/// Why a kept answer is never stale: a writer takes its tick after changing the streams
/// (under the instance lock, or the retired totals' lock) and raises the metric's version
/// to it. A reader reads the version before it locks anything to copy. If the copy missed
/// the change, the reader locked first, so its read of the version came before the
/// writer's tick was taken, and that tick is larger than anything the reader read: the
/// version the next reader sees differs. SeqCst keeps the argument free of subtleties.
fn tick() -> u64 {
    TICKS.fetch_add(1, Ordering::SeqCst) + 1
}

impl RetiredKey {
    /// The bounds part of a retired key for `value`: a histogram's bounds by their bits.
    fn bounds_of(value: &StreamValue) -> Vec<u64> {
        match value {
            StreamValue::Histogram(histogram) => histogram
                .bounds
                .iter()
                .map(|bound| bound.to_bits())
                .collect(),
            _ => Vec::new(),
        }
    }
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
    /// `None` while live.
    pub retired: Option<Retirement>,
    /// Its streams were folded into the retired totals and dropped.
    pub evicted: bool,
}

/// An owned copy of one stream, for `/api/v1/series`.
#[derive(Clone, Debug)]
pub struct StreamView {
    pub instance: InstanceKey,
    /// Whether the instance is live (not retired).
    pub live: bool,
    pub key: StreamKey,
    pub description: Arc<str>,
    pub state: StreamState,
}

/// One instance's streams, read where they are kept ([`Store::read_streams`]).
pub struct InstanceStreams<'s> {
    pub key: &'s InstanceKey,
    /// Whether the instance is live (not retired).
    pub live: bool,
    streams: &'s Streams,
}

impl<'s> InstanceStreams<'s> {
    /// Each stream with its key, in the order the streams were created.
    pub fn iter(&self) -> impl Iterator<Item = (&'s StreamKey, &'s Stream)> + use<'s> {
        self.streams.iter()
    }
}

/// How a store is set up.
#[derive(Clone, Debug)]
pub struct StoreSettings {
    /// What one client may make the store keep.
    pub limits: Limits,
    /// Which resource attributes name a worker; retired totals and aggregation leave them out.
    pub instance_attributes: InstanceAttributes,
    pub collision_policy: CollisionPolicy,
    /// This host's name, when pids may be checked here (`aggregation.pid_check`): a resource
    /// whose `host.name` is this one names a process the store can look at.
    pub local_host: Option<String>,
    /// Over the unix socket, refuse a resource whose `process.pid` is not the peer's pid
    /// (`receivers.otlp.unix.verify_pid`).
    pub verify_unix_pids: bool,
    /// The monotonic time exports and retirements are stamped with.
    pub clock: Clock,
}

#[cfg(test)]
impl StoreSettings {
    /// For unit tests: room for `max_series` streams, `service.instance.id` the only
    /// instance attribute, collisions reported, no pid checks, the real clock.
    pub(crate) fn for_tests(max_series: usize) -> StoreSettings {
        StoreSettings {
            limits: Limits::with_max_series(max_series),
            instance_attributes: InstanceAttributes::new(["service.instance.id"])
                .expect("a literal glob"),
            collision_policy: CollisionPolicy::Report,
            local_host: None,
            verify_unix_pids: true,
            clock: Clock::system(),
        }
    }
}

impl Store {
    /// An empty store.
    pub fn new(settings: StoreSettings) -> Store {
        let StoreSettings {
            limits,
            instance_attributes,
            collision_policy,
            local_host,
            verify_unix_pids,
            clock,
        } = settings;
        Store {
            shared: Arc::new(Shared {
                instances: DashMap::with_hasher(RandomState::default()),
                metrics: DashMap::with_hasher(RandomState::default()),
                n_streams: AtomicUsize::new(0),
                n_retired: AtomicUsize::new(0),
                n_instances: AtomicUsize::new(0),
                limits,
                stats: Stats::default(),
                instance_attributes,
                retired: Mutex::new(HashMap::with_hasher(RandomState::default())),
                evictions: AtomicU64::new(0),
                #[cfg(test)]
                between_instances: Mutex::new(None),
                evicted: Mutex::new(VecDeque::new()),
                collisions: Mutex::new(HashMap::new()),
                collision_policy,
                local_host,
                verify_unix_pids,
                clock,
                stream_hasher: RandomState::default(),
                attribute_sets: Mutex::new(hashbrown::HashTable::new()),
                known_blocks: RwLock::default(),
                snapshot_gate: Mutex::new(()),
                changed: AtomicU64::new(tick()),
                unreliable: AtomicUsize::new(0),
            }),
        }
    }

    /// What one client may make the store keep.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// Over the unix socket, why a resource may not be written by `writer`: it names a
    /// `process.pid` other than the kernel's pid of the process that connected, or the
    /// kernel named none (`docs/design.md`, "Who may write and read"). `resource` is in wire
    /// order; every `process.pid` pair must be the peer's pid as an integer. Other
    /// transports return at the first comparison.
    pub fn pid_mismatch(
        &self,
        writer: &Writer,
        resource: &[(&str, AttrRef<'_>)],
    ) -> Option<String> {
        if writer.transport != Transport::Unix || !self.shared.verify_unix_pids {
            return None;
        }
        let peer = writer.pid;
        let (_, claimed) = resource.iter().find(|(key, value)| {
            *key == "process.pid" && peer.is_none_or(|peer| *value != AttrRef::Int(i64::from(peer)))
        })?;
        let claimed = match claimed {
            AttrRef::Int(pid) => pid.to_string(),
            other => format!("{:?} (not an integer)", other.to_owned_value()),
        };
        Some(match peer {
            Some(peer) => format!(
                "the resource says process.pid {claimed}, but the process that connected to \
                 the unix socket is pid {peer}: each process must open its own connection (as \
                 fanin's shim does after fork), so a child exporting over its parent's \
                 connection is refused too; none of the resource's points is stored"
            ),
            None => format!(
                "the resource says process.pid {claimed}, but the kernel did not name the \
                 process that connected to the unix socket, so the pid cannot be verified; \
                 none of the resource's points is stored"
            ),
        })
    }

    /// The clock liveness is measured with.
    pub fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    /// Which resource attributes name a worker.
    pub fn instance_attributes(&self) -> &InstanceAttributes {
        &self.shared.instance_attributes
    }

    /// Counters of what was received, accepted, rejected and dropped.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
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

    /// Number of retired totals kept (each takes a slot under `limits.max_series`).
    pub fn retired_total_count(&self) -> usize {
        self.shared.n_retired.load(Ordering::Relaxed)
    }

    /// Number of instances seen.
    pub fn instance_count(&self) -> usize {
        self.shared.instances.len()
    }

    /// Every instance, live and retired, and the most recently evicted ones, as owned copies.
    pub fn instances(&self) -> Vec<InstanceView> {
        let mut views: Vec<InstanceView> = self
            .all_instances()
            .into_iter()
            .map(|instance| view_of(&instance, &lock(&instance.state)))
            .collect();
        views.extend(lock_any(&self.shared.evicted).iter().cloned());
        views
    }

    /// `(live, retired)` instance counts; evicted instances are not counted.
    pub fn instance_counts(&self) -> (usize, usize) {
        let mut counts = (0, 0);
        for instance in self.all_instances() {
            match lock(&instance.state).retired {
                None => counts.0 += 1,
                Some(_) => counts.1 += 1,
            }
        }
        counts
    }

    /// The identity first seen for `metric` (the one queries aggregate), if any.
    pub fn metric_identity(&self, metric: &str) -> Option<(Arc<MetricId>, Arc<str>)> {
        self.shared
            .metrics
            .get(metric)
            .map(|entry| (Arc::clone(&entry.first), Arc::clone(&entry.description)))
    }

    /// Every metric name's first identity and description, without the instance counts of
    /// [`Store::metrics`] (which cost a pass over every stream).
    pub fn metric_identities(&self) -> Vec<MetricIdentity> {
        self.shared
            .metrics
            .iter()
            .map(|entry| MetricIdentity {
                metric: Arc::clone(&entry.first),
                description: Arc::clone(&entry.description),
                held: entry.streams,
                version: entry.changed.load(Ordering::SeqCst),
            })
            .collect()
    }

    /// Raises the versions of the metrics named `names`, after they changed (see [`tick`]).
    fn changed<'n>(&self, names: impl IntoIterator<Item = &'n str>) {
        let tick = tick();
        for name in names {
            if let Some(entry) = self.shared.metrics.get(name) {
                entry.changed.fetch_max(tick, Ordering::SeqCst);
            }
        }
        self.shared.changed.fetch_max(tick, Ordering::SeqCst);
    }

    /// Raises the versions of every metric an instance has streams of: it was retired or
    /// revived, which every one of them shows.
    fn changed_all_of(&self, state: &InstanceState) {
        self.changed(metric_names(state));
    }

    /// Every metric name with its first identity and how many instances report it.
    pub fn metrics(&self) -> Vec<MetricSummary> {
        let mut live: HashMap<String, u64> = HashMap::new();
        let mut retired: HashMap<String, u64> = HashMap::new();
        for instance in self.all_instances() {
            let state = lock(&instance.state);
            let names = metric_names(&state);
            let tally = if state.retired.is_some() {
                &mut retired
            } else {
                &mut live
            };
            for name in names {
                *tally.entry(name.to_string()).or_default() += 1;
            }
        }
        self.shared
            .metrics
            .iter()
            .map(|entry| MetricSummary {
                metric: Arc::clone(&entry.first),
                description: Arc::clone(&entry.description),
                live_instances: live.get(entry.key()).copied().unwrap_or(0),
                retired_instances: retired.get(entry.key()).copied().unwrap_or(0)
                    + entry.evicted_instances,
            })
            .collect()
    }

    /// What evicted instances counted for `metric`, per aggregated key.
    pub fn retired_totals(&self, metric: &str) -> Vec<RetiredView> {
        self.retired_where(|name| name == metric)
    }

    /// What evicted instances counted for the metrics whose names are `wanted`.
    pub fn retired_where(&self, wanted: impl Fn(&str) -> bool) -> Vec<RetiredView> {
        let retired = lock_any(&self.shared.retired);
        retired_views(&retired, wanted)
    }

    /// How many instances have been evicted so far: read before [`Store::read_streams`],
    /// for [`Store::retired_unless_evicted_since`] after it.
    pub fn evictions(&self) -> u64 {
        self.shared.evictions.load(Ordering::SeqCst)
    }

    /// What evicted instances counted for the metrics `wanted`, if no instance was evicted
    /// since [`Store::evictions`] said `since`. `None` means one was: an instance the
    /// caller's read of the streams met may be in these totals too, so a caller that adds
    /// both reads again, or it counts that instance twice.
    pub fn retired_unless_evicted_since(
        &self,
        since: u64,
        wanted: impl Fn(&str) -> bool,
    ) -> Option<Vec<RetiredView>> {
        let retired = lock_any(&self.shared.retired);
        (self.shared.evictions.load(Ordering::SeqCst) == since)
            .then(|| retired_views(&retired, wanted))
    }

    /// Every stream of the metric named `metric`, across all instances, as owned copies.
    pub fn streams(&self, metric: &str) -> Vec<StreamView> {
        self.streams_where(|name| name == metric)
    }

    /// Every stream of every metric, as owned copies, in one pass over the instances.
    pub fn all_streams(&self) -> Vec<StreamView> {
        self.streams_where(|_| true)
    }

    /// How many streams are marked unreliable: kept as streams are marked, restored and
    /// evicted, so no read walks the streams for it.
    pub fn unreliable_stream_count(&self) -> usize {
        self.shared.unreliable.load(Ordering::Relaxed)
    }

    /// The streams of the metrics whose names are `wanted`, across all instances, each
    /// instance's together.
    pub fn streams_where(&self, wanted: impl Fn(&str) -> bool) -> Vec<StreamView> {
        let mut views = Vec::new();
        for instance in self.all_instances() {
            let state = lock(&instance.state);
            for (key, stream) in state.streams.iter() {
                if wanted(&key.metric.name) {
                    views.push(StreamView {
                        instance: Arc::clone(&instance.key),
                        live: state.retired.is_none(),
                        key: key.clone(),
                        description: Arc::clone(stream.description()),
                        state: stream.state(),
                    });
                }
            }
        }
        views
    }

    /// Hands each instance's streams to `each`, one instance at a time, under its lock:
    /// nothing is copied, so `each` should be quick (the instance's writers wait for it).
    /// An instance evicted since the map was read is passed over: its streams are in the
    /// retired totals now. One evicted after `each` met it is in both: a caller that also
    /// reads the totals does so through `query::answer::read_with_retired`.
    pub fn read_streams(&self, mut each: impl FnMut(InstanceStreams<'_>)) {
        for instance in self.all_instances() {
            {
                let state = lock(&instance.state);
                if state.evicted {
                    continue;
                }
                each(InstanceStreams {
                    key: &instance.key,
                    live: state.retired.is_none(),
                    streams: &state.streams,
                });
            }
            #[cfg(test)]
            if let Some(between) = lock_any(&self.shared.between_instances).take() {
                between();
            }
        }
    }

    /// Runs `read` with no instance evicted meanwhile (the sweep leaves evictions to its
    /// next round while this runs, as while a snapshot walks).
    pub fn holding_evictions<R>(&self, read: impl FnOnce() -> R) -> R {
        let _gate = lock_any(&self.shared.snapshot_gate);
        read()
    }

    /// Runs `between` once, after the next instance a read of the streams meets.
    #[cfg(test)]
    pub(crate) fn between_instances_once(&self, between: impl FnOnce() + Send + 'static) {
        *lock_any(&self.shared.between_instances) = Some(Box::new(between));
    }

    /// One point of `metric` (default scope, no description) from the instance `resource`
    /// names, over HTTP, as a request of its own: for tests.
    #[cfg(test)]
    pub(crate) fn write_point(
        &self,
        resource: &Attributes,
        metric: &Arc<MetricId>,
        attributes: &[(&str, AttrRef<'_>)],
        point: crate::model::Point,
    ) {
        let (scope, description) = (Arc::new(crate::model::Scope::default()), Arc::from(""));
        let writer = Writer {
            transport: Transport::Http,
            peer: None,
            pid: None,
        };
        let mut ingest = self.begin(writer, Outcome::default());
        ingest.instance(resource, |instance| {
            let key = instance.metric(&scope, metric, &description);
            instance.point(&key, attributes, point);
        });
        ingest.finish();
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

fn retired_views(
    retired: &HashMap<RetiredKey, RetiredTotal, RandomState>,
    wanted: impl Fn(&str) -> bool,
) -> Vec<RetiredView> {
    retired
        .iter()
        .filter(|(key, _)| wanted(&key.metric.name))
        .map(|(key, total)| RetiredView {
            metric: Arc::clone(&key.metric),
            resource: key.resource.clone(),
            attributes: key.attributes.clone(),
            value: total.value.clone(),
            instances: total.instances,
        })
        .collect()
}

/// Counts one applied or refused point in the request's outcome.
fn count(outcome: &mut Outcome, result: Result<(), Refusal>, metric: &MetricId) {
    match result {
        Ok(()) => outcome.accepted += 1,
        Err(Refusal::Drop(reason)) => outcome.drop_point(reason),
        Err(Refusal::Collision(evidence)) => outcome.reject(RejectReason::Collision, 1, || {
            format!(
                "metric {:?}: another process writes this stream ({}); {}",
                metric.name,
                evidence.describe(),
                collision::FIX
            )
        }),
        Err(Refusal::Bounds(mismatch)) => outcome.reject(RejectReason::BoundsChanged, 1, || {
            format!(
                "metric {:?}: a histogram point's {mismatch}; keep one set of bounds per stream",
                metric.name
            )
        }),
    }
}

/// Locks an instance. A panic while holding the lock cannot leave a stream half-updated in a
/// way later points would trip over (each point is applied or refused as a whole), so a
/// poisoned lock is used as is rather than taking the whole store down.
fn lock(state: &Mutex<InstanceState>) -> MutexGuard<'_, InstanceState> {
    lock_any(state)
}

/// Locks one of the store's other mutexes, on the same reasoning as [`lock`].
fn lock_any<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The names of the metrics an instance has streams of, each once.
fn metric_names(state: &InstanceState) -> Vec<&str> {
    let mut names: Vec<&str> = state
        .streams
        .iter()
        .map(|(key, _)| key.metric.name.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

fn view_of(instance: &Instance, state: &InstanceState) -> InstanceView {
    InstanceView {
        attributes: Arc::clone(&instance.key),
        first_seen: state.first_seen,
        last_seen: state.last_seen,
        last_writer: state.last_writer,
        exports: state.exports,
        streams: state.streams.len(),
        retired: state.retired,
        evicted: state.evicted,
    }
}
