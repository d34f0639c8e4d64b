//! The write path: one request's points into their instances' streams.
//!
//! A receiver opens an [`Ingest`] per request, takes each instance's lock once with
//! [`Ingest::instance`], and hands over points one at a time. A point's attributes point
//! into the request buffer ([`PointAttributes`], a sorted `&[(&str, AttrRef)]`): an
//! existing stream is found without copying them, and they are copied only when a new
//! stream is created. The stream hash is computed in two parts, scope and metric once per
//! metric ([`MetricKey`]), then the hash of the point's attribute set, so a point pays only
//! for its own attributes, and nothing for them when the receiver knows their block
//! ([`InstanceWriter::point_known`], `blocks.rs`): the set's hash is kept with it.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use foldhash::fast::{FoldHasher, RandomState};
use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use super::blocks::KnownBlock;
use super::stream::Stream;
use super::{
    Instance, InstanceState, Limits, MetricEntry, Store, TypeConflict, Writer, collision, count,
    lock, lock_any,
};
use crate::model::{AttrRef, Attributes, MetricId, Point, Scope, StreamKey, hash_pairs};
use crate::outcome::{Outcome, RejectReason};

/// One instance's streams, in the order they were created, found by a hash computed from
/// their parts (see [`MetricKey`]).
///
/// The hash table holds only each stream's place in `entries`: a slot of 4 bytes instead
/// of the whole key and stream (128 bytes), in a table that is between 44 % and 88 % full.
/// The streams themselves are packed in a `Vec`, which walks in order for a scrape.
/// Streams are never taken out one at a time: they go with their instance.
#[derive(Default)]
pub(super) struct Streams {
    /// Indexes into `entries`, each below its length: a place is added only with the
    /// stream pushed there, and both are only ever cleared together (`drain`).
    places: HashTable<u32>,
    entries: Vec<(StreamKey, Stream)>,
    /// One `Arc` of each scope and metric identity the streams' keys hold. A request's own
    /// copies are swapped for these ([`InstanceWriter::metric`]), so that finding a stream
    /// compares addresses instead of reading the stored names (a cache miss each, at many
    /// streams). They grow only with new streams, and go with the instance.
    scopes: HashTable<Arc<Scope>>,
    metrics: HashTable<Arc<MetricId>>,
}

impl Streams {
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&StreamKey, &Stream)> {
        self.entries.iter().map(|(key, stream)| (key, stream))
    }

    pub(super) fn drain(&mut self) -> impl Iterator<Item = (StreamKey, Stream)> + '_ {
        self.places.clear();
        self.entries.drain(..)
    }

    /// Adds a stream read from a snapshot; false (nothing added) when its key is there, or
    /// the instance has as many streams as a place can count.
    pub(super) fn restore(&mut self, build: &RandomState, key: StreamKey, stream: Stream) -> bool {
        let hash = stream_hash(build, &key);
        let entries = &self.entries;
        let entry = self.places.entry(
            hash,
            |&place| entries[place as usize].0 == key,
            |&place| stream_hash(build, &entries[place as usize].0),
        );
        let (Entry::Vacant(vacant), Ok(place)) = (entry, u32::try_from(entries.len())) else {
            return false;
        };
        keep_part(&mut self.scopes, build, &key.scope);
        keep_part(&mut self.metrics, build, &key.metric);
        self.entries.push((key, stream));
        vacant.insert(place);
        true
    }
}

/// The `Arc` of `part` that `table` holds, or `part` itself when there is none.
fn shared_part<T: Hash + Eq>(
    table: &HashTable<Arc<T>>,
    build: &RandomState,
    part: &Arc<T>,
) -> Arc<T> {
    let found = table.find(build.hash_one(&**part), |known| **known == **part);
    Arc::clone(found.unwrap_or(part))
}

/// Makes `part` the `Arc` `table` holds for its value, unless it holds one already.
fn keep_part<T: Hash + Eq>(table: &mut HashTable<Arc<T>>, build: &RandomState, part: &Arc<T>) {
    let hash = build.hash_one(&**part);
    if table.find(hash, |known| **known == **part).is_none() {
        table.insert_unique(hash, Arc::clone(part), |known| build.hash_one(&**known));
    }
}

/// Whether a stored key's part is `wanted`: by address first, as they are shared.
fn same<T: PartialEq>(stored: &Arc<T>, wanted: &Arc<T>) -> bool {
    Arc::ptr_eq(stored, wanted) || **stored == **wanted
}

/// A point's attributes as the store looks them up: borrowed from the request, sorted by key
/// with no key twice (`model::sort_unique`). They hash and compare as the [`Attributes`]
/// stored for them would, so an existing stream is found without copying them.
pub type PointAttributes<'p, 'a> = &'p [(&'a str, AttrRef<'a>)];

/// A point's attribute set as [`InstanceWriter`] finds its stream: borrowed pairs, or the
/// store's own copy of a set a known block names.
#[derive(Clone, Copy)]
enum SetRef<'p, 'a> {
    Pairs(PointAttributes<'p, 'a>),
    Shared(&'p Arc<Attributes>),
}

impl SetRef<'_, '_> {
    fn is(self, stored: &Arc<Attributes>) -> bool {
        match self {
            SetRef::Pairs(pairs) => stored.equals_pairs(pairs),
            // Sets are shared, so the address almost always decides; equal contents under
            // another address are the same set still.
            SetRef::Shared(set) => same(stored, set),
        }
    }
}

/// Scope, metric and description shared by the points of one metric, with the stream hash
/// already fed with scope and metric. Scope and metric are the instance's own `Arc`s of them
/// when it has streams of them.
pub struct MetricKey<'m> {
    scope: Arc<Scope>,
    metric: Arc<MetricId>,
    description: &'m Arc<str>,
    hasher: FoldHasher<'static>,
}

/// The hash of a stored stream's key; the same as [`MetricKey::stream_hash`] of its set's hash.
fn stream_hash(build: &RandomState, key: &StreamKey) -> u64 {
    let mut hasher = metric_hasher(build, &key.scope, &key.metric);
    hasher.write_u64(hash_of_set(build, &key.attributes));
    hasher.finish()
}

impl MetricKey<'_> {
    /// The hash of this metric's stream whose attribute set hashes to `set_hash`
    /// ([`hash_of`]).
    fn stream_hash(&self, set_hash: u64) -> u64 {
        let mut hasher = self.hasher.clone();
        hasher.write_u64(set_hash);
        hasher.finish()
    }
}

fn metric_hasher(build: &RandomState, scope: &Scope, metric: &MetricId) -> FoldHasher<'static> {
    let mut hasher = build.build_hasher();
    scope.hash(&mut hasher);
    metric.hash(&mut hasher);
    hasher
}

/// One request being written. [`Ingest::finish`] records its outcome in the counters.
pub struct Ingest<'s> {
    store: &'s Store,
    writer: Writer,
    writer_id: u64,
    now: SystemTime,
    now_monotonic: Instant,
    outcome: Outcome,
    /// The metrics the instance being written has been handed points of; kept between
    /// instances so a request allocates it once.
    touched: Vec<Arc<MetricId>>,
}

/// One instance, locked, while a request writes its points.
pub struct InstanceWriter<'i> {
    store: &'i Store,
    instance: &'i Instance,
    state: &'i mut InstanceState,
    writer: &'i Writer,
    writer_id: u64,
    now: SystemTime,
    outcome: &'i mut Outcome,
    touched: &'i mut Vec<Arc<MetricId>>,
}

impl Store {
    /// Starts writing one request. `outcome` holds what the receiver already refused.
    pub fn begin(&self, writer: Writer, outcome: Outcome) -> Ingest<'_> {
        Ingest {
            store: self,
            writer,
            writer_id: collision::writer_id(&writer),
            now: SystemTime::now(),
            now_monotonic: self.shared.clock.now(),
            outcome,
            // A request names a few dozen metrics: one allocation, not one per doubling.
            touched: Vec::with_capacity(64),
        }
    }
}

impl Ingest<'_> {
    /// What this request has led to so far; receivers add their own rejections here.
    pub fn outcome(&mut self) -> &mut Outcome {
        &mut self.outcome
    }

    /// Locks the instance for `resource` (creating it on first sight, reviving it if it was
    /// retired) and lets `write` apply its points. An instance is kept only once a point
    /// is stored in it: one this request created and left without a stream is removed
    /// again, so exports with no valid point leave nothing behind.
    ///
    /// `None` (and `write` is not called) when the instance would be new and the store holds
    /// `limits.max_instances` already; the caller refuses the resource's points.
    pub fn instance<R>(
        &mut self,
        resource: &Attributes,
        write: impl FnOnce(&mut InstanceWriter<'_>) -> R,
    ) -> Option<R> {
        loop {
            let (instance, created) =
                self.store
                    .instance(resource, self.writer, self.now, self.now_monotonic)?;
            let mut state = lock(&instance.state);
            if state.evicted {
                // Evicted between the lookup and the lock: it is gone from the map, and
                // looking it up again creates it afresh.
                continue;
            }
            let revived = state.retired.take().is_some();
            if revived {
                tracing::debug!(instance = ?instance.key, "Retired instance exported again; it is live");
            }
            state.last_seen = self.now;
            state.last_export = self.now_monotonic;
            state.last_writer = self.writer;
            state.exports += 1;
            let mut writer = InstanceWriter {
                store: self.store,
                instance: &instance,
                state: &mut state,
                writer: &self.writer,
                writer_id: self.writer_id,
                now: self.now,
                outcome: &mut self.outcome,
                touched: &mut self.touched,
            };
            let written = write(&mut writer);
            // After the change, under the lock still (see `store::tick`).
            if revived {
                self.store.changed_all_of(&state);
            }
            if !self.touched.is_empty() {
                self.store
                    .changed(self.touched.iter().map(|metric| metric.name.as_str()));
                self.touched.clear();
            }
            if created && state.streams.len() == 0 {
                self.store.remove_instance(&instance, &mut state);
            }
            return Some(written);
        }
    }

    /// Ends the request: records its outcome in the counters and returns it.
    pub fn finish(self) -> Outcome {
        self.store.shared.stats.record(&self.outcome);
        self.outcome
    }
}

impl InstanceWriter<'_> {
    /// What this request has led to so far.
    pub fn outcome(&mut self) -> &mut Outcome {
        self.outcome
    }

    /// The store's limits.
    pub fn limits(&self) -> Limits {
        self.store.shared.limits
    }

    /// The key shared by the points of one metric, whose answers change with them.
    pub fn metric<'m>(
        &mut self,
        scope: &'m Arc<Scope>,
        metric: &'m Arc<MetricId>,
        description: &'m Arc<str>,
    ) -> MetricKey<'m> {
        if !self
            .touched
            .last()
            .is_some_and(|last| Arc::ptr_eq(last, metric))
        {
            self.touched.push(Arc::clone(metric));
        }
        let build = &self.store.shared.stream_hasher;
        let streams = &self.state.streams;
        MetricKey {
            scope: shared_part(&streams.scopes, build, scope),
            metric: shared_part(&streams.metrics, build, metric),
            description,
            hasher: metric_hasher(build, scope, metric),
        }
    }

    /// Applies one point to its stream, creating the stream on first sight. The stream's
    /// attribute set, unless the point was refused.
    pub fn point(
        &mut self,
        metric: &MetricKey<'_>,
        attributes: PointAttributes<'_, '_>,
        point: Point,
    ) -> Option<&Arc<Attributes>> {
        let set_hash = hash_of(&self.store.shared.stream_hasher, attributes);
        self.apply(metric, SetRef::Pairs(attributes), set_hash, point)
    }

    /// [`InstanceWriter::point`] for a point whose attributes are a known block's: its set
    /// and the set's hash come with it, so they are neither hashed nor compared again.
    pub fn point_known(&mut self, metric: &MetricKey<'_>, block: &KnownBlock, point: Point) {
        self.apply(metric, SetRef::Shared(block.set()), block.set_hash, point);
    }

    fn apply(
        &mut self,
        metric: &MetricKey<'_>,
        attributes: SetRef<'_, '_>,
        set_hash: u64,
        point: Point,
    ) -> Option<&Arc<Attributes>> {
        let hash = metric.stream_hash(set_hash);
        let policy = self.store.shared.collision_policy;
        let build = &self.store.shared.stream_hasher;
        let streams = &mut self.state.streams;
        let held = streams.entries.len();
        let entries = &streams.entries;
        let entry = streams.places.entry(
            hash,
            |&place| {
                let key = &entries[place as usize].0;
                attributes.is(&key.attributes)
                    && same(&key.metric, &metric.metric)
                    && same(&key.scope, &metric.scope)
            },
            |&place| stream_hash(build, &entries[place as usize].0),
        );
        let vacant = match entry {
            Entry::Occupied(found) => {
                let (key, stream) = &mut streams.entries[*found.get() as usize];
                let was_unreliable = stream.is_unreliable();
                let (result, finding) = stream.apply(point, self.writer_id, policy);
                if !was_unreliable && stream.is_unreliable() {
                    self.store.shared.unreliable.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(finding) = finding {
                    let writers = [finding.other_writer, self.writer_id];
                    self.store.record_collision(
                        &self.instance.key,
                        key,
                        finding.evidence,
                        self.writer,
                        writers,
                        self.now,
                    );
                }
                count(self.outcome, result, &key.metric);
                return Some(&key.attributes);
            }
            Entry::Vacant(vacant) => vacant,
        };
        let limits = &self.store.shared.limits;
        let place = u32::try_from(held)
            .ok()
            .filter(|_| held < limits.max_series_per_instance.get());
        let Some(place) = place else {
            let max = limits.max_series_per_instance;
            self.outcome.reject(RejectReason::InstanceSeriesLimit, 1, || {
                format!(
                    "metric {:?}: this instance has {max} streams already (limits.max_series_per_instance); its existing streams keep updating",
                    metric.metric.name
                )
            });
            return None;
        };
        if !self.store.reserve_stream() {
            let max = limits.max_series;
            self.outcome.reject(RejectReason::SeriesLimit, 1, || {
                format!(
                    "metric {:?}: the store is full ({max} streams, limits.max_series); existing streams keep updating",
                    metric.metric.name
                )
            });
            return None;
        }
        if !self
            .store
            .register_metric(&metric.metric, metric.description, self.now)
        {
            self.store.shared.n_streams.fetch_sub(1, Ordering::Relaxed);
            let max = limits.max_type_conflicts;
            self.outcome.reject(RejectReason::TypeConflictLimit, 1, || {
                format!(
                    "metric {:?} arrives with more than {max} other types (limits.max_type_conflicts); give each type its own name",
                    metric.metric.name
                )
            });
            return None;
        }
        let mut stream = Stream::new(&metric.metric, Arc::clone(metric.description));
        // A stream's first point has nothing to contradict: no evidence to record.
        let (result, _) = stream.apply(point, self.writer_id, policy);
        count(self.outcome, result, &metric.metric);
        keep_part(&mut streams.scopes, build, &metric.scope);
        keep_part(&mut streams.metrics, build, &metric.metric);
        let key = StreamKey {
            scope: Arc::clone(&metric.scope),
            metric: Arc::clone(&metric.metric),
            attributes: match attributes {
                SetRef::Pairs(pairs) => self.store.shared_attributes(set_hash, pairs),
                SetRef::Shared(set) => Arc::clone(set),
            },
        };
        // The stream first: a place never points past the end, even if the push panicked.
        streams.entries.push((key, stream));
        vacant.insert(place);
        streams.entries.last().map(|(key, _)| &key.attributes)
    }
}

/// The hash of an attribute set alone, for [`Store::shared_attributes`]: the same for a
/// stored set and for the borrowed pairs it was made from.
fn hash_of(build: &RandomState, attributes: PointAttributes<'_, '_>) -> u64 {
    let mut hasher = build.build_hasher();
    hash_pairs(&mut hasher, attributes.len(), attributes.iter().copied());
    hasher.finish()
}

pub(super) fn hash_of_set(build: &RandomState, set: &Attributes) -> u64 {
    build.hash_one(set)
}

impl Store {
    /// The store's copy of an attribute set, made from `attributes` on first sight. `hash`
    /// is [`hash_of`] the set.
    fn shared_attributes(&self, hash: u64, attributes: PointAttributes<'_, '_>) -> Arc<Attributes> {
        let mut sets = lock_any(&self.shared.attribute_sets);
        if let Some(shared) = sets.find(hash, |set| set.equals_pairs(attributes)) {
            return Arc::clone(shared);
        }
        let shared = Arc::new(Attributes::from_pairs(attributes));
        let build = &self.shared.stream_hasher;
        sets.insert_unique(hash, Arc::clone(&shared), |set| hash_of_set(build, set));
        shared
    }

    /// The store's copy of `set`, which becomes it on first sight (a snapshot's sets).
    pub(super) fn shared_set(&self, set: Attributes) -> Arc<Attributes> {
        let build = &self.shared.stream_hasher;
        let hash = hash_of_set(build, &set);
        let mut sets = lock_any(&self.shared.attribute_sets);
        if let Some(shared) = sets.find(hash, |known| **known == set) {
            return Arc::clone(shared);
        }
        let shared = Arc::new(set);
        sets.insert_unique(hash, Arc::clone(&shared), |set| hash_of_set(build, set));
        shared
    }

    /// How many distinct point attribute sets the store holds.
    pub fn attribute_set_count(&self) -> usize {
        lock_any(&self.shared.attribute_sets).len()
    }

    /// Forgets the shared attribute sets no stream uses any more (after evictions).
    pub(super) fn forget_unused_attribute_sets(&self) {
        // The known blocks hold sets too; they are learnt again from the next requests.
        self.forget_known_blocks();
        lock_any(&self.shared.attribute_sets).retain(|set| Arc::strong_count(set) > 1);
    }

    /// The instance for `resource`, and whether this call created it; `None` when it is new
    /// and the store already holds `limits.max_instances`.
    fn instance(
        &self,
        resource: &Attributes,
        writer: Writer,
        now: SystemTime,
        now_monotonic: Instant,
    ) -> Option<(Arc<Instance>, bool)> {
        if let Some(existing) = self.shared.instances.get(resource) {
            return Some((Arc::clone(existing.value()), false));
        }
        let max = self.shared.limits.max_instances.get();
        let reserved = self
            .shared
            .n_instances
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if !reserved {
            return None;
        }
        let key = Arc::new(resource.clone());
        let mut created = false;
        let entry = self
            .shared
            .instances
            .entry(Arc::clone(&key))
            .or_insert_with(|| {
                created = true;
                Arc::new(Instance {
                    key,
                    state: std::sync::Mutex::new(InstanceState {
                        streams: Streams::default(),
                        first_seen: now,
                        last_seen: now,
                        last_export: now_monotonic,
                        last_writer: writer,
                        exports: 0,
                        retired: None,
                        evicted: false,
                    }),
                })
            });
        let instance = Arc::clone(entry.value());
        drop(entry);
        if !created {
            // Another request created it meanwhile: the slot taken for it goes back.
            self.shared.n_instances.fetch_sub(1, Ordering::Relaxed);
        }
        Some((instance, created))
    }

    /// Removes an instance with no streams from the map, under its lock, so that a writer
    /// that raced the removal looks it up again.
    pub(super) fn remove_instance(&self, instance: &Instance, state: &mut InstanceState) {
        state.evicted = true;
        // Removing from the map under the instance lock is safe: no one holds a map guard
        // while waiting for an instance lock.
        self.shared.instances.remove(&instance.key);
        self.shared.n_instances.fetch_sub(1, Ordering::Relaxed);
    }

    /// Takes one slot under `limits.max_series`, which streams and retired totals share;
    /// false when the store is full.
    pub(super) fn reserve_stream(&self) -> bool {
        let max = self.shared.limits.max_series.get();
        let retired = self.shared.n_retired.load(Ordering::Relaxed);
        self.shared
            .n_streams
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n + retired < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Notes a new stream's metric identity and reports a type conflict the first time a
    /// name arrives with another kind, unit or monotonicity. False (nothing noted) when the
    /// identity would be a conflict past `limits.max_type_conflicts`: the stream is refused,
    /// and that is logged once per metric.
    fn register_metric(
        &self,
        metric: &Arc<MetricId>,
        description: &Arc<str>,
        now: SystemTime,
    ) -> bool {
        let mut entry = self
            .shared
            .metrics
            .entry(metric.name.clone())
            .or_insert_with(|| MetricEntry::new(metric, description));
        if description.len() > entry.description.len() {
            entry.description = Arc::clone(description);
        }
        if entry.first.same_type(metric) {
            entry.streams += 1;
            return true;
        }
        let conflicting = metric.describe();
        if let Some(conflict) = entry
            .conflicts
            .iter_mut()
            .find(|conflict| conflict.conflicting == conflicting)
        {
            conflict.streams += 1;
            entry.streams += 1;
            return true;
        }
        if entry.conflicts.len() >= self.shared.limits.max_type_conflicts.get() {
            if !std::mem::replace(&mut entry.conflicts_refused, true) {
                tracing::warn!(
                    metric = %metric.name,
                    conflicting = %conflicting,
                    max = self.shared.limits.max_type_conflicts.get(),
                    "Metric name arrives with more types than limits.max_type_conflicts; streams of further types are refused"
                );
            }
            return false;
        }
        let first_description = entry.first.describe();
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
        entry.streams += 1;
        true
    }
}

#[cfg(test)]
mod tests {

    use std::time::Duration;

    use super::*;
    use crate::model::{AttrValue, Kind, Number, Temporality, Value};
    use crate::store::{Liveness, NewBlock, NewBlocks, StoreSettings, Transport};

    fn store() -> Store {
        Store::new(StoreSettings::for_tests(100))
    }

    fn metric(name: &str, kind: Kind, monotonic: bool) -> Arc<MetricId> {
        Arc::new(MetricId {
            name: name.into(),
            kind,
            unit: String::new(),
            monotonic,
            temporality: (kind == Kind::Sum).then_some(Temporality::Cumulative),
        })
    }

    /// One point of each metric from `instance`, all with the attributes `route=/a`.
    fn write(store: &Store, instance: &str, metrics: &[Arc<MetricId>]) {
        write_at(store, instance, metrics, 2);
    }

    /// [`write`] with points at `time`.
    fn write_at(store: &Store, instance: &str, metrics: &[Arc<MetricId>], time: u64) {
        let writer = Writer {
            transport: Transport::Http,
            peer: None,
            pid: None,
        };
        let resource = Attributes::new(vec![(
            "service.instance.id".into(),
            AttrValue::Str(instance.into()),
        )]);
        let scope = Arc::new(Scope::default());
        let description: Arc<str> = "".into();
        let mut ingest = store.begin(writer, Outcome::default());
        ingest.instance(&resource, |instance| {
            for metric in metrics {
                let key = instance.metric(&scope, metric, &description);
                let attributes: &[(&str, AttrRef<'_>)] = &[("route", AttrRef::Str("/a"))];
                let point = Point {
                    start: 1,
                    time,
                    value: Value::Number(Number::Double(1.0)),
                };
                instance.point(&key, attributes, point);
            }
        });
        assert_eq!(ingest.finish().accepted, metrics.len() as u64);
    }

    /// Thousands of streams in one instance, so its table of places grows many times: each
    /// is found again afterwards (no stream is created twice), and they are kept in the
    /// order they were created.
    #[test]
    fn every_stream_is_found_after_the_table_grows_and_kept_in_creation_order() {
        let store = Store::new(StoreSettings::for_tests(10_000));
        let metrics: Vec<_> = (0..3_000)
            .map(|n| metric(&format!("m{n}"), Kind::Gauge, false))
            .collect();
        write(&store, "w1", &metrics);
        assert_eq!(store.stream_count(), 3_000);
        let names: Vec<_> = store
            .all_streams()
            .into_iter()
            .map(|stream| stream.key.metric.name.clone())
            .collect();
        let created: Vec<_> = metrics.iter().map(|metric| metric.name.clone()).collect();
        assert_eq!(names, created);
        // Later points find the existing streams instead of creating new ones.
        write_at(&store, "w1", &metrics, 3);
        assert_eq!(store.stream_count(), 3_000);
    }

    #[test]
    fn streams_share_one_copy_of_an_attribute_set() {
        let store = store();
        let gauge = metric("inflight", Kind::Gauge, false);
        let counter = metric("requests", Kind::Sum, true);
        write(&store, "w1", &[Arc::clone(&gauge), Arc::clone(&counter)]);
        write(&store, "w2", &[Arc::clone(&gauge)]);
        let streams = store.all_streams();
        assert_eq!(streams.len(), 3);
        assert_eq!(store.attribute_set_count(), 1);
        assert!(
            streams
                .windows(2)
                .all(|pair| Arc::ptr_eq(&pair[0].key.attributes, &pair[1].key.attributes)),
            "every stream points at the one shared set"
        );

        // Evicted: the gauge streams are dropped, the counter's total is kept (and with it
        // the set); once w1 is gone too, nothing uses the set.
        let liveness = Liveness {
            ttl: Duration::from_secs(1),
        };
        let later = Instant::now() + Duration::from_secs(10);
        store.sweep_at(later, &liveness);
        let report = store.sweep_at(later + Duration::from_secs(10), &liveness);
        assert_eq!(report.evicted, 2);
        assert_eq!(store.stream_count(), 0);
        assert_eq!(
            store.attribute_set_count(),
            1,
            "the counter's retired total uses it"
        );

        write(&store, "w3", &[Arc::clone(&gauge)]);
        assert_eq!(store.attribute_set_count(), 1, "found again, not copied");
    }

    #[test]
    fn a_request_s_scope_and_metric_are_swapped_for_the_instance_s_own() {
        let store = store();
        let first = metric("inflight", Kind::Gauge, false);
        write(&store, "w1", &[Arc::clone(&first)]);
        let streams = store.all_streams();
        assert_eq!(streams.len(), 1);
        assert!(Arc::ptr_eq(&streams[0].key.metric, &first));

        let resource = Attributes::new(vec![(
            "service.instance.id".into(),
            AttrValue::Str("w1".into()),
        )]);
        let (copy, scope) = (
            metric("inflight", Kind::Gauge, false),
            Arc::new(Scope::default()),
        );
        let description: Arc<str> = "".into();
        let writer = Writer {
            transport: Transport::Http,
            peer: None,
            pid: None,
        };
        // A later request brings its own copies.
        let mut ingest = store.begin(writer, Outcome::default());
        ingest.instance(&resource, |instance| {
            let key = instance.metric(&scope, &copy, &description);
            assert!(
                Arc::ptr_eq(&key.metric, &first),
                "the instance's own metric"
            );
            assert!(Arc::ptr_eq(&key.scope, &streams[0].key.scope), "and scope");
            // A metric the instance has no stream of keeps the request's copy.
            let other = metric("requests", Kind::Sum, true);
            assert!(Arc::ptr_eq(
                &instance.metric(&scope, &other, &description).metric,
                &other
            ));
        });
    }

    #[test]
    fn sets_no_stream_uses_are_forgotten_after_eviction() {
        let store = store();
        write(&store, "w1", &[metric("inflight", Kind::Gauge, false)]);
        assert_eq!(store.attribute_set_count(), 1);
        // A known block names the set too; it must not keep the set alive.
        let set = Arc::clone(&store.all_streams()[0].key.attributes);
        let pairs = [("route", AttrRef::Str("/a"))];
        let mut new = NewBlocks::for_table(&store.known_blocks());
        new.extend(NewBlock::new(b"block", &pairs, &set));
        store.learn_blocks(new);
        drop(set);
        assert_eq!(store.known_blocks().len(), 1);
        let liveness = Liveness {
            ttl: Duration::from_secs(1),
        };
        let later = Instant::now() + Duration::from_secs(10);
        store.sweep_at(later, &liveness);
        store.sweep_at(later + Duration::from_secs(10), &liveness);
        assert_eq!(store.attribute_set_count(), 0);
        assert!(store.known_blocks().is_empty());
    }
}
