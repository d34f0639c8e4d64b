//! The store to and from a snapshot (`docs/design.md`, "Surviving a restart"): what makes
//! totals monotonic across a restart of fanin. Instances (resource, last writer, first and
//! last seen, live or retired) with every stream's runs or chains, bases and latest values;
//! the retired totals; each metric name's first identity and type conflicts; the collisions
//! found. Counters of requests (`Stats`) start again from zero, as a process's counters do.
//!
//! Writing takes one instance at a time: its streams are cloned under its lock, and the lock
//! is let go before anything is encoded, so ingest into that instance waits for a copy only.
//! Scopes, metric identities, point attribute sets and descriptions go into tables, written
//! once however many streams use them. The file around the body is `storage.rs`'s.
//!
//! Reading builds a new store and checks what it reads as it goes: a table index out of
//! range, a stream whose parts do not fit its metric, a key twice. The first such error
//! refuses the whole snapshot; a store is never half-trusted. What the limits in force have
//! no room for (they may have been lowered) is left out and counted.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message;

use super::collision::{CollisionRecord, MAX_COLLISIONS};
use super::ingest::Streams;
use super::stream::{Persist, Stream, evidence_from_proto, evidence_to_proto};
use super::{
    EVICTED_LISTED, Instance, InstanceState, InstanceView, MetricEntry, RetireReason, RetiredKey,
    RetiredTotal, Retirement, Store, StoreSettings, Transport, TypeConflict, Writer, lock,
    lock_any, tick,
};
use crate::model::{
    AttrValue, Attributes, Kind, MetricId, Scope, StreamKey, StreamValue, Temporality, unix_nanos,
};
use crate::proto::v1::snapshot as pb;

/// An encoded [`pb::Snapshot`] and what it holds.
pub struct SnapshotBody {
    pub bytes: Vec<u8>,
    pub instances: u64,
    pub streams: u64,
}

/// What a restore put back, for the log line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub instances: usize,
    pub streams: usize,
    pub retired_totals: usize,
    /// Streams and retired totals the limits in force had no room for.
    pub left_out: usize,
}

type Checked<T> = Result<T, String>;

fn system_time(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

/// The monotonic time that was `wall` ago when it is `wall_now`; the nearest the monotonic
/// clock can say when it began later.
fn monotonic_of(wall: SystemTime, wall_now: SystemTime, now: Instant) -> Instant {
    let age = wall_now.duration_since(wall).unwrap_or_default();
    now.checked_sub(age).unwrap_or(now)
}

fn value_to_proto(value: &AttrValue) -> pb::Value {
    use pb::value::Value as V;
    let value = match value {
        AttrValue::Empty => V::Empty(true),
        AttrValue::Str(string) => V::String(string.clone()),
        AttrValue::Bool(boolean) => V::Bool(*boolean),
        AttrValue::Int(int) => V::Int(*int),
        AttrValue::Double(double) => V::Double(*double),
        AttrValue::Bytes(bytes) => V::Bytes(bytes.clone()),
        AttrValue::Array(values) => V::Array(pb::Array {
            values: values.iter().map(value_to_proto).collect(),
        }),
        AttrValue::Map(map) => V::Map(attributes_to_proto(map)),
    };
    pb::Value { value: Some(value) }
}

fn value_from_proto(value: &pb::Value) -> Checked<AttrValue> {
    use pb::value::Value as V;
    Ok(match &value.value {
        None | Some(V::Empty(_)) => AttrValue::Empty,
        Some(V::String(string)) => AttrValue::Str(string.clone()),
        Some(V::Bool(boolean)) => AttrValue::Bool(*boolean),
        Some(V::Int(int)) => AttrValue::Int(*int),
        Some(V::Double(double)) => AttrValue::Double(*double),
        Some(V::Bytes(bytes)) => AttrValue::Bytes(bytes.clone()),
        Some(V::Array(array)) => AttrValue::Array(
            array
                .values
                .iter()
                .map(value_from_proto)
                .collect::<Checked<_>>()?,
        ),
        Some(V::Map(map)) => AttrValue::Map(attributes_from_proto(Some(map))?),
    })
}

fn attributes_to_proto(attributes: &Attributes) -> pb::Attributes {
    pb::Attributes {
        pairs: attributes
            .iter()
            .map(|(key, value)| pb::Attribute {
                key: key.to_string(),
                value: Some(value_to_proto(value)),
            })
            .collect(),
    }
}

fn attributes_from_proto(attributes: Option<&pb::Attributes>) -> Checked<Attributes> {
    let Some(attributes) = attributes else {
        return Ok(Attributes::default());
    };
    let pairs = attributes
        .pairs
        .iter()
        .map(|pair| {
            let value = pair.value.as_ref().map(value_from_proto).transpose()?;
            Ok((pair.key.clone(), value.unwrap_or(AttrValue::Empty)))
        })
        .collect::<Checked<Vec<_>>>()?;
    let count = pairs.len();
    let attributes = Attributes::new(pairs);
    if attributes.len() != count {
        return Err("an attribute set names one key twice".into());
    }
    Ok(attributes)
}

fn metric_to_proto(metric: &MetricId) -> pb::Metric {
    let kind = match metric.kind {
        Kind::Gauge => pb::Kind::Gauge,
        Kind::Sum => pb::Kind::Sum,
        Kind::Histogram => pb::Kind::Histogram,
        Kind::ExponentialHistogram => pb::Kind::ExponentialHistogram,
        Kind::Summary => pb::Kind::Summary,
    };
    let temporality = match metric.temporality {
        None => pb::Temporality::None,
        Some(Temporality::Delta) => pb::Temporality::Delta,
        Some(Temporality::Cumulative) => pb::Temporality::Cumulative,
    };
    pb::Metric {
        name: metric.name.clone(),
        kind: kind as i32,
        unit: metric.unit.clone(),
        monotonic: metric.monotonic,
        temporality: temporality as i32,
    }
}

fn metric_from_proto(metric: &pb::Metric) -> Checked<MetricId> {
    let kind = match pb::Kind::try_from(metric.kind) {
        Ok(pb::Kind::Gauge) => Kind::Gauge,
        Ok(pb::Kind::Sum) => Kind::Sum,
        Ok(pb::Kind::Histogram) => Kind::Histogram,
        Ok(pb::Kind::ExponentialHistogram) => Kind::ExponentialHistogram,
        Ok(pb::Kind::Summary) => Kind::Summary,
        Ok(pb::Kind::Unspecified) | Err(_) => {
            return Err(format!("metric {:?} has no kind fanin knows", metric.name));
        }
    };
    let temporality = match pb::Temporality::try_from(metric.temporality) {
        Ok(pb::Temporality::None) => None,
        Ok(pb::Temporality::Delta) => Some(Temporality::Delta),
        Ok(pb::Temporality::Cumulative) => Some(Temporality::Cumulative),
        Err(_) => {
            return Err(format!(
                "metric {:?} has an unknown temporality",
                metric.name
            ));
        }
    };
    if kind.has_temporality() != temporality.is_some() {
        return Err(format!(
            "metric {:?}: a {} {} a temporality",
            metric.name,
            kind.as_str(),
            if temporality.is_some() {
                "has"
            } else {
                "lacks"
            }
        ));
    }
    Ok(MetricId {
        name: metric.name.clone(),
        kind,
        unit: metric.unit.clone(),
        monotonic: metric.monotonic && kind == Kind::Sum,
        temporality,
    })
}

fn writer_to_proto(writer: &Writer) -> pb::Writer {
    let transport = match writer.transport {
        Transport::Grpc => pb::Transport::Grpc,
        Transport::Http => pb::Transport::Http,
        Transport::Unix => pb::Transport::Unix,
    };
    pb::Writer {
        transport: transport as i32,
        peer: writer.peer.map(|peer| peer.to_string()).unwrap_or_default(),
        pid: writer.pid,
    }
}

fn writer_from_proto(writer: Option<&pb::Writer>) -> Checked<Writer> {
    let writer = writer.ok_or("an instance has no last writer")?;
    let transport = match pb::Transport::try_from(writer.transport) {
        Ok(pb::Transport::Grpc) => Transport::Grpc,
        Ok(pb::Transport::Http) => Transport::Http,
        Ok(pb::Transport::Unix) => Transport::Unix,
        Ok(pb::Transport::Unspecified) | Err(_) => {
            return Err("an instance's last writer has no transport fanin knows".into());
        }
    };
    let peer = match writer.peer.as_str() {
        "" => None,
        peer => Some(
            peer.parse()
                .map_err(|_| format!("{peer:?} is not a peer address"))?,
        ),
    };
    Ok(Writer {
        transport,
        peer,
        pid: writer.pid,
    })
}

/// Table entries by pointer (streams share them), then by value.
struct Table<T: ?Sized + Eq + Hash> {
    by_pointer: HashMap<usize, u32>,
    by_value: HashMap<Arc<T>, u32>,
    /// Every entry in index order; also keeps each pointer looked up alive, so an address
    /// in `by_pointer` is never reused by another value.
    entries: Vec<Arc<T>>,
    aliases: Vec<Arc<T>>,
}

impl<T: ?Sized + Eq + Hash> Default for Table<T> {
    fn default() -> Self {
        Table {
            by_pointer: HashMap::new(),
            by_value: HashMap::new(),
            entries: Vec::new(),
            aliases: Vec::new(),
        }
    }
}

impl<T: ?Sized + Eq + Hash> Table<T> {
    fn index(&mut self, value: &Arc<T>) -> u32 {
        let pointer = Arc::as_ptr(value).cast::<()>() as usize;
        if let Some(index) = self.by_pointer.get(&pointer) {
            return *index;
        }
        let index = match self.by_value.get(value) {
            Some(index) => {
                self.aliases.push(Arc::clone(value));
                *index
            }
            None => {
                // More than 2^32 distinct entries cannot be held by a store bounded by
                // `limits.max_series`.
                let index = u32::try_from(self.entries.len()).unwrap_or(u32::MAX);
                self.by_value.insert(Arc::clone(value), index);
                self.entries.push(Arc::clone(value));
                index
            }
        };
        self.by_pointer.insert(pointer, index);
        index
    }
}

#[derive(Default)]
struct Tables {
    scopes: Table<Scope>,
    metrics: Table<MetricId>,
    attributes: Table<Attributes>,
    descriptions: Table<str>,
}

/// One instance as copied under its lock.
struct InstanceCopy {
    key: Arc<Attributes>,
    first_seen: SystemTime,
    last_seen: SystemTime,
    last_writer: Writer,
    exports: u64,
    retired: Option<Retirement>,
    streams: Vec<(StreamKey, Stream)>,
}

fn retirement_to_proto(retirement: &Retirement) -> pb::Retirement {
    let reason = match retirement.reason {
        RetireReason::Expired => pb::RetireReason::Expired,
        RetireReason::ProcessGone => pb::RetireReason::ProcessGone,
    };
    pb::Retirement {
        at_unix_nano: unix_nanos(retirement.at),
        reason: reason as i32,
    }
}

fn retirement_from_proto(
    retirement: Option<&pb::Retirement>,
    (wall_now, now): (SystemTime, Instant),
) -> Checked<Option<Retirement>> {
    let Some(retirement) = retirement else {
        return Ok(None);
    };
    let at = system_time(retirement.at_unix_nano);
    let reason = match pb::RetireReason::try_from(retirement.reason) {
        Ok(pb::RetireReason::Expired) => RetireReason::Expired,
        Ok(pb::RetireReason::ProcessGone) => RetireReason::ProcessGone,
        _ => return Err("an instance was retired for no reason fanin knows".into()),
    };
    Ok(Some(Retirement {
        at,
        since: monotonic_of(at, wall_now, now),
        reason,
    }))
}

impl Store {
    /// The store as a snapshot body (`proto/fanin/v1/snapshot.proto`'s `Snapshot`). Each
    /// instance is copied under its lock and encoded after the lock is let go.
    pub fn snapshot(&self) -> SnapshotBody {
        // No eviction until the retired totals below are copied: an instance is in the
        // snapshot either with its streams or folded into the retired totals, never both.
        let _gate = lock_any(&self.shared.snapshot_gate);
        let mut tables = Tables::default();
        let mut bytes = Vec::new();
        let mut written: HashMap<Arc<Attributes>, u32> = HashMap::new();
        let mut streams = 0u64;
        for instance in self.all_instances() {
            let Some(copy) = copy_of(&instance) else {
                continue;
            };
            streams += copy.streams.len() as u64;
            let index = u32::try_from(written.len()).unwrap_or(u32::MAX);
            written.insert(Arc::clone(&copy.key), index);
            let message = instance_to_proto(&copy, &mut tables);
            drop(copy);
            prost::encoding::message::encode(5, &message, &mut bytes);
        }
        let rest = pb::Snapshot {
            retired: self.retired_to_proto(&mut tables),
            metric_names: self.metric_names_to_proto(&mut tables),
            collisions: self.collisions_to_proto(&written, &mut tables),
            scopes: tables
                .scopes
                .entries
                .iter()
                .map(|scope| pb::Scope {
                    name: scope.name.clone(),
                    version: scope.version.clone(),
                    attributes: Some(attributes_to_proto(&scope.attributes)),
                })
                .collect(),
            metrics: tables
                .metrics
                .entries
                .iter()
                .map(|metric| metric_to_proto(metric))
                .collect(),
            attribute_sets: tables
                .attributes
                .entries
                .iter()
                .map(|set| attributes_to_proto(set))
                .collect(),
            descriptions: tables
                .descriptions
                .entries
                .iter()
                .map(|description| description.to_string())
                .collect(),
            instances: Vec::new(),
            evicted: self.evicted_to_proto(),
            written_unix_nano: unix_nanos(SystemTime::now()),
            writer_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        // Encoded messages concatenate: the instances written above and these fields are
        // one Snapshot.
        rest.encode_raw(&mut bytes);
        SnapshotBody {
            bytes,
            instances: written.len() as u64,
            streams,
        }
    }

    fn evicted_to_proto(&self) -> Vec<pb::Instance> {
        lock_any(&self.shared.evicted)
            .iter()
            .map(|view| pb::Instance {
                resource: Some(attributes_to_proto(&view.attributes)),
                first_seen_unix_nano: unix_nanos(view.first_seen),
                last_seen_unix_nano: unix_nanos(view.last_seen),
                last_writer: Some(writer_to_proto(&view.last_writer)),
                exports: view.exports,
                retired: view.retired.as_ref().map(retirement_to_proto),
                streams: Vec::new(),
            })
            .collect()
    }

    fn retired_to_proto(&self, tables: &mut Tables) -> Vec<pb::RetiredTotal> {
        let copies: Vec<(RetiredKey, RetiredTotal)> = lock_any(&self.shared.retired)
            .iter()
            .map(|(key, total)| (key.clone(), total.clone()))
            .collect();
        copies
            .into_iter()
            .map(|(key, total)| pb::RetiredTotal {
                metric: tables.metrics.index(&key.metric),
                resource: Some(attributes_to_proto(&key.resource)),
                attributes: tables.attributes.index(&key.attributes),
                value: Some(total.value.to_proto()),
                instances: total.instances,
            })
            .collect()
    }

    fn metric_names_to_proto(&self, tables: &mut Tables) -> Vec<pb::MetricName> {
        self.shared
            .metrics
            .iter()
            .map(|entry| pb::MetricName {
                metric: tables.metrics.index(&entry.first),
                description: tables.descriptions.index(&entry.description),
                conflicts: entry
                    .conflicts
                    .iter()
                    .map(|conflict| pb::TypeConflict {
                        first: conflict.first.clone(),
                        conflicting: conflict.conflicting.clone(),
                        first_seen_unix_nano: unix_nanos(conflict.first_seen),
                        streams: conflict.streams,
                    })
                    .collect(),
                conflicts_refused: entry.conflicts_refused,
                evicted_instances: entry.evicted_instances,
            })
            .collect()
    }

    fn collisions_to_proto(
        &self,
        written: &HashMap<Arc<Attributes>, u32>,
        tables: &mut Tables,
    ) -> Vec<pb::Collision> {
        let copies: Vec<_> = lock_any(&self.shared.collisions)
            .iter()
            .map(|(key, record)| (key.clone(), record.clone()))
            .collect();
        copies
            .into_iter()
            .filter_map(|((instance, key), record)| {
                Some(pb::Collision {
                    // A collision of an instance evicted meanwhile is not kept.
                    instance: *written.get(&instance)?,
                    scope: tables.scopes.index(&key.scope),
                    metric: tables.metrics.index(&key.metric),
                    attributes: tables.attributes.index(&key.attributes),
                    evidence: record
                        .evidence
                        .iter()
                        .map(|evidence| evidence_to_proto(Some(*evidence)))
                        .collect(),
                    writers: record.writers.clone(),
                    first_seen_unix_nano: unix_nanos(record.first_seen),
                    last_seen_unix_nano: unix_nanos(record.last_seen),
                    count: record.count,
                })
            })
            .collect()
    }

    /// A new store holding what `snapshot` holds, as far as `settings`' limits allow.
    /// Instances' ages are measured on the wall clock (monotonic time does not survive a
    /// restart): one last seen 5 minutes ago is as close to `instance_ttl` as it was.
    ///
    /// # Errors
    /// What in the snapshot does not hold together; nothing is restored then.
    pub fn restored(
        settings: StoreSettings,
        snapshot: &pb::Snapshot,
    ) -> Result<(Store, Restored), String> {
        let store = Store::new(settings);
        let restored = store.restore(snapshot)?;
        // What the limits in force left without a stream is not kept (the tables that held
        // the attribute sets are gone by now).
        store.forget_unused_metrics();
        store.forget_unused_attribute_sets();
        Ok((store, restored))
    }

    fn restore(&self, snapshot: &pb::Snapshot) -> Checked<Restored> {
        let scopes = snapshot
            .scopes
            .iter()
            .map(|scope| {
                Ok(Arc::new(Scope {
                    name: scope.name.clone(),
                    version: scope.version.clone(),
                    attributes: attributes_from_proto(scope.attributes.as_ref())?,
                }))
            })
            .collect::<Checked<Vec<_>>>()?;
        let metrics = snapshot
            .metrics
            .iter()
            .map(|metric| metric_from_proto(metric).map(Arc::new))
            .collect::<Checked<Vec<_>>>()?;
        let sets = snapshot
            .attribute_sets
            .iter()
            .map(|set| Ok(self.shared_set(attributes_from_proto(Some(set))?)))
            .collect::<Checked<Vec<_>>>()?;
        let descriptions: Vec<Arc<str>> = snapshot
            .descriptions
            .iter()
            .map(|description| Arc::from(description.as_str()))
            .collect();
        let tables = Lookup {
            scopes: &scopes,
            metrics: &metrics,
            sets: &sets,
            descriptions: &descriptions,
        };
        self.restore_metric_names(&snapshot.metric_names, &tables)?;
        let mut restored = Restored::default();
        let wall_now = SystemTime::now();
        let now = self.shared.clock.now();
        let mut keys = Vec::with_capacity(snapshot.instances.len());
        for message in &snapshot.instances {
            keys.push(self.restore_instance(message, &tables, (wall_now, now), &mut restored)?);
        }
        self.restore_retired(&snapshot.retired, &tables, &mut restored)?;
        self.restore_evicted(&snapshot.evicted, (wall_now, now))?;
        self.restore_collisions(&snapshot.collisions, &keys, &tables)?;
        Ok(restored)
    }

    fn restore_metric_names(&self, names: &[pb::MetricName], tables: &Lookup<'_>) -> Checked<()> {
        for name in names {
            let first = Arc::clone(tables.metric(name.metric)?);
            let entry = MetricEntry {
                first: Arc::clone(&first),
                description: Arc::clone(tables.description(name.description)?),
                conflicts: name
                    .conflicts
                    .iter()
                    .map(|conflict| TypeConflict {
                        metric: first.name.clone(),
                        first: conflict.first.clone(),
                        conflicting: conflict.conflicting.clone(),
                        first_seen: system_time(conflict.first_seen_unix_nano),
                        streams: conflict.streams,
                    })
                    .collect(),
                conflicts_refused: name.conflicts_refused,
                evicted_instances: name.evicted_instances,
                changed: AtomicU64::new(tick()),
                streams: 0,
            };
            if self
                .shared
                .metrics
                .insert(first.name.clone(), entry)
                .is_some()
            {
                return Err(format!("metric name {:?} is listed twice", first.name));
            }
        }
        Ok(())
    }

    /// Notes one restored stream or retired total of `metric`'s name.
    fn count_held(&self, metric: &Arc<MetricId>, description: &Arc<str>) {
        self.shared
            .metrics
            .entry(metric.name.clone())
            .or_insert_with(|| MetricEntry::new(metric, description))
            .streams += 1;
    }

    /// Restores one instance; `None` when the limits leave no room for it.
    fn restore_instance(
        &self,
        message: &pb::Instance,
        tables: &Lookup<'_>,
        (wall_now, now): (SystemTime, Instant),
        restored: &mut Restored,
    ) -> Checked<Option<Arc<Attributes>>> {
        let key = Arc::new(attributes_from_proto(message.resource.as_ref())?);
        if self.shared.instances.contains_key(&key) {
            return Err("an instance is listed twice".into());
        }
        let limits = &self.shared.limits;
        if self.shared.n_instances.load(Ordering::Relaxed) >= limits.max_instances.get() {
            restored.left_out += message.streams.len();
            return Ok(None);
        }
        let last_seen = system_time(message.last_seen_unix_nano);
        let retired = retirement_from_proto(message.retired.as_ref(), (wall_now, now))?;
        let build = &self.shared.stream_hasher;
        let mut streams = Streams::default();
        let mut unreliable = 0;
        for stream in &message.streams {
            let stream_key = StreamKey {
                scope: Arc::clone(tables.scope(stream.scope)?),
                metric: Arc::clone(tables.metric(stream.metric)?),
                attributes: Arc::clone(tables.set(stream.attributes)?),
            };
            let description = tables.description(stream.description)?;
            let restored_stream =
                Stream::from_proto(&stream_key.metric, Arc::clone(description), stream)
                    .map_err(|error| format!("metric {:?}: {error}", stream_key.metric.name))?;
            if streams.len() >= limits.max_series_per_instance.get() || !self.reserve_stream() {
                restored.left_out += 1;
                continue;
            }
            let metric = Arc::clone(&stream_key.metric);
            unreliable += usize::from(restored_stream.is_unreliable());
            if !streams.restore(build, stream_key, restored_stream) {
                return Err(format!(
                    "metric {:?}: an instance lists one stream twice",
                    metric.name
                ));
            }
            self.count_held(&metric, description);
            restored.streams += 1;
        }
        let instance = Arc::new(Instance {
            key: Arc::clone(&key),
            state: std::sync::Mutex::new(InstanceState {
                streams,
                first_seen: system_time(message.first_seen_unix_nano),
                last_seen,
                last_export: monotonic_of(last_seen, wall_now, now),
                last_writer: writer_from_proto(message.last_writer.as_ref())?,
                exports: message.exports,
                retired,
                evicted: false,
            }),
        });
        self.shared.instances.insert(Arc::clone(&key), instance);
        self.shared.n_instances.fetch_add(1, Ordering::Relaxed);
        self.shared
            .unreliable
            .fetch_add(unreliable, Ordering::Relaxed);
        restored.instances += 1;
        Ok(Some(key))
    }

    fn restore_evicted(
        &self,
        evicted: &[pb::Instance],
        (wall_now, now): (SystemTime, Instant),
    ) -> Checked<()> {
        let mut listed = lock_any(&self.shared.evicted);
        let skip = evicted.len().saturating_sub(EVICTED_LISTED);
        for message in &evicted[skip..] {
            listed.push_back(InstanceView {
                attributes: Arc::new(attributes_from_proto(message.resource.as_ref())?),
                first_seen: system_time(message.first_seen_unix_nano),
                last_seen: system_time(message.last_seen_unix_nano),
                last_writer: writer_from_proto(message.last_writer.as_ref())?,
                exports: message.exports,
                streams: 0,
                retired: retirement_from_proto(message.retired.as_ref(), (wall_now, now))?,
                evicted: true,
            });
        }
        Ok(())
    }

    fn restore_retired(
        &self,
        totals: &[pb::RetiredTotal],
        tables: &Lookup<'_>,
        restored: &mut Restored,
    ) -> Checked<()> {
        let mut retired = lock_any(&self.shared.retired);
        // The keys as written, to tell a total listed twice from two that the instance
        // attributes in force now fold into one.
        let mut written: HashSet<RetiredKey> = HashSet::with_capacity(totals.len());
        for total in totals {
            let metric = tables.metric(total.metric)?;
            let value = StreamValue::from_proto(
                total.value.as_ref().ok_or("a retired total has no value")?,
            )?;
            let bounds = RetiredKey::bounds_of(&value);
            let as_written = RetiredKey {
                metric: Arc::clone(metric),
                resource: attributes_from_proto(total.resource.as_ref())?,
                attributes: Arc::clone(tables.set(total.attributes)?),
                bounds,
            };
            // Written without the instance attributes of then; these are the ones of now,
            // which may name more (fewer cannot be undone: what was left out is gone).
            let key = RetiredKey {
                resource: self.shared.instance_attributes.strip(&as_written.resource),
                ..as_written.clone()
            };
            if !written.insert(as_written) {
                return Err(format!(
                    "metric {:?}: a retired total is listed twice",
                    metric.name
                ));
            }
            if let Some(kept) = retired.get_mut(&key) {
                // Same key, same bounds: the values add.
                if !kept.value.add(&value) {
                    return Err(format!(
                        "metric {:?}: retired totals of one key do not add up",
                        metric.name
                    ));
                }
                kept.instances = kept.instances.saturating_add(total.instances);
                continue;
            }
            let max = self.shared.limits.max_series.get();
            let held = self.shared.n_streams.load(Ordering::Relaxed) + retired.len();
            if held >= max {
                restored.left_out += 1;
                continue;
            }
            let total = RetiredTotal {
                value,
                instances: total.instances,
            };
            retired.insert(key, total);
            let description = self
                .shared
                .metrics
                .get(&metric.name)
                .map_or_else(|| Arc::from(""), |entry| Arc::clone(&entry.description));
            self.count_held(metric, &description);
            restored.retired_totals += 1;
        }
        self.shared
            .n_retired
            .store(retired.len(), Ordering::Relaxed);
        Ok(())
    }

    fn restore_collisions(
        &self,
        collisions: &[pb::Collision],
        keys: &[Option<Arc<Attributes>>],
        tables: &Lookup<'_>,
    ) -> Checked<()> {
        let mut kept = lock_any(&self.shared.collisions);
        for collision in collisions {
            let index = usize::try_from(collision.instance).unwrap_or(usize::MAX);
            let instance = keys
                .get(index)
                .ok_or("a collision names an instance the snapshot does not hold")?;
            let Some(instance) = instance else {
                // Its instance was left out.
                continue;
            };
            if kept.len() >= MAX_COLLISIONS {
                break;
            }
            let key = StreamKey {
                scope: Arc::clone(tables.scope(collision.scope)?),
                metric: Arc::clone(tables.metric(collision.metric)?),
                attributes: Arc::clone(tables.set(collision.attributes)?),
            };
            let evidence = collision
                .evidence
                .iter()
                .map(|evidence| {
                    evidence_from_proto(*evidence)?
                        .ok_or_else(|| "a collision lists no evidence".to_string())
                })
                .collect::<Checked<Vec<_>>>()?;
            kept.insert(
                (Arc::clone(instance), key),
                CollisionRecord {
                    evidence,
                    writers: collision.writers.clone(),
                    first_seen: system_time(collision.first_seen_unix_nano),
                    last_seen: system_time(collision.last_seen_unix_nano),
                    count: collision.count,
                },
            );
        }
        Ok(())
    }
}

/// The snapshot's tables, read.
struct Lookup<'t> {
    scopes: &'t [Arc<Scope>],
    metrics: &'t [Arc<MetricId>],
    sets: &'t [Arc<Attributes>],
    descriptions: &'t [Arc<str>],
}

fn entry<'t, T: ?Sized>(table: &'t [Arc<T>], index: u32, what: &str) -> Checked<&'t Arc<T>> {
    usize::try_from(index)
        .ok()
        .and_then(|index| table.get(index))
        .ok_or_else(|| {
            format!(
                "{what} {index} is not in the snapshot's table of {}",
                table.len()
            )
        })
}

impl Lookup<'_> {
    fn scope(&self, index: u32) -> Checked<&Arc<Scope>> {
        entry(self.scopes, index, "scope")
    }
    fn metric(&self, index: u32) -> Checked<&Arc<MetricId>> {
        entry(self.metrics, index, "metric")
    }
    fn set(&self, index: u32) -> Checked<&Arc<Attributes>> {
        entry(self.sets, index, "attribute set")
    }
    fn description(&self, index: u32) -> Checked<&Arc<str>> {
        entry(self.descriptions, index, "description")
    }
}

/// Copies one instance under its lock; `None` once it was evicted.
fn copy_of(instance: &Instance) -> Option<InstanceCopy> {
    let state = lock(&instance.state);
    if state.evicted {
        return None;
    }
    Some(InstanceCopy {
        key: Arc::clone(&instance.key),
        first_seen: state.first_seen,
        last_seen: state.last_seen,
        last_writer: state.last_writer,
        exports: state.exports,
        retired: state.retired,
        streams: state
            .streams
            .iter()
            .map(|(key, stream)| (key.clone(), stream.clone()))
            .collect(),
    })
}

fn instance_to_proto(copy: &InstanceCopy, tables: &mut Tables) -> pb::Instance {
    pb::Instance {
        resource: Some(attributes_to_proto(&copy.key)),
        first_seen_unix_nano: unix_nanos(copy.first_seen),
        last_seen_unix_nano: unix_nanos(copy.last_seen),
        last_writer: Some(writer_to_proto(&copy.last_writer)),
        exports: copy.exports,
        retired: copy.retired.as_ref().map(retirement_to_proto),
        streams: copy
            .streams
            .iter()
            .map(|(key, stream)| pb::Stream {
                scope: tables.scopes.index(&key.scope),
                metric: tables.metrics.index(&key.metric),
                attributes: tables.attributes.index(&key.attributes),
                description: tables.descriptions.index(stream.description()),
                ..stream.to_proto()
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::model::{
        AttrRef, ExpBuckets, ExpHistogram, Histogram, Number, Point, Summary, Value,
    };
    use crate::outcome::Outcome;
    use crate::store::{Liveness, StoreSettings};

    const S: u64 = 1_000_000_000;

    fn metric(name: &str, kind: Kind, temporality: Option<Temporality>) -> Arc<MetricId> {
        Arc::new(MetricId {
            name: name.into(),
            kind,
            unit: "1".into(),
            monotonic: kind == Kind::Sum,
            temporality,
        })
    }

    /// One export from `instance` (over the unix socket as `pid`, else over TCP from
    /// `port`) of one point of every kind, at `time` seconds, `n` counting what happened.
    fn export(store: &Store, instance: &str, writer: (Option<i32>, u16), time: u64, n: i64) {
        let (pid, port) = writer;
        let writer = Writer {
            transport: if pid.is_some() {
                Transport::Unix
            } else {
                Transport::Grpc
            },
            peer: pid
                .is_none()
                .then(|| SocketAddr::from(([127, 0, 0, 1], port))),
            pid,
        };
        let resource = Attributes::new(vec![
            (
                "service.instance.id".into(),
                AttrValue::Str(instance.into()),
            ),
            ("service.name".into(), AttrValue::Str("shop".into())),
        ]);
        let scope = Arc::new(Scope {
            name: "shop.meter".into(),
            version: "1.0".into(),
            attributes: Attributes::new(vec![("tier".into(), AttrValue::Int(2))]),
        });
        let description: Arc<str> = "what it counts".into();
        let cumulative = Some(Temporality::Cumulative);
        let count = u64::try_from(n).unwrap_or(0);
        let values = [
            (
                metric("requests", Kind::Sum, cumulative),
                Value::Number(Number::Int(n)),
                100,
            ),
            (
                metric("jobs", Kind::Sum, Some(Temporality::Delta)),
                Value::Number(Number::Int(1)),
                time - 1,
            ),
            (
                metric("inflight", Kind::Gauge, None),
                Value::Number(Number::Double(0.5)),
                0,
            ),
            (
                metric("latency", Kind::Histogram, cumulative),
                Value::Histogram(Histogram {
                    count,
                    sum: Some(n as f64),
                    min: None,
                    max: Some(1.0),
                    bounds: vec![0.5, 1.0],
                    bucket_counts: vec![0, count, 0],
                }),
                100,
            ),
            (
                metric("sizes", Kind::ExponentialHistogram, cumulative),
                Value::ExpHistogram(ExpHistogram {
                    count,
                    sum: Some(1.5),
                    min: Some(1.5),
                    max: Some(1.5),
                    scale: 3,
                    zero_count: 0,
                    zero_threshold: 0.0,
                    positive: ExpBuckets {
                        offset: 4,
                        counts: vec![count],
                    },
                    negative: ExpBuckets::default(),
                }),
                100,
            ),
            (
                metric("durations", Kind::Summary, None),
                Value::Summary(Summary {
                    count,
                    sum: 2.0,
                    quantiles: vec![(0.5, 1.0), (1.0, 3.0)],
                }),
                100,
            ),
        ];
        let mut ingest = store.begin(writer, Outcome::default());
        ingest.instance(&resource, |instance| {
            for (metric, value, start) in values {
                let key = instance.metric(&scope, &metric, &description);
                let attributes: &[(&str, AttrRef<'_>)] =
                    &[("list", AttrRef::Str("[1]")), ("route", AttrRef::Str("/a"))];
                let point = Point {
                    start: start * S,
                    time: time * S,
                    value,
                };
                instance.point(&key, attributes, point);
            }
        });
        ingest.finish();
    }

    /// Every stream's and retired total's accounting, in an order that does not depend on
    /// hashing.
    fn accounting(store: &Store) -> Vec<String> {
        let mut seen: Vec<String> = store
            .all_streams()
            .iter()
            .map(|view| {
                format!(
                    "{:?} {} {:?} {:?}",
                    view.instance, view.live, view.key, view.state
                )
            })
            .collect();
        seen.extend(store.retired_where(|_| true).iter().map(|total| {
            format!(
                "{:?} {:?} {:?} {:?} {}",
                total.metric, total.resource, total.attributes, total.value, total.instances
            )
        }));
        seen.sort();
        seen
    }

    /// What queries can see of a store, in an order that does not depend on hashing.
    fn seen(store: &Store) -> Vec<String> {
        let mut seen = accounting(store);
        seen.extend(store.instances().iter().map(|view| {
            format!(
                "{:?} {:?} {:?} {} {} {:?} {:?}",
                view.attributes,
                view.first_seen,
                view.last_seen,
                view.exports,
                view.streams,
                view.last_writer,
                view.retired
                    .map(|retirement| (retirement.at, retirement.reason))
            )
        }));
        seen.extend(
            store
                .collisions()
                .iter()
                .map(|collision| format!("{collision:?}")),
        );
        seen.extend(
            store
                .metric_identities()
                .iter()
                // Versions are the process's, not the store's: a restored store's differ.
                .map(|identity| {
                    format!(
                        "{:?} {:?} {}",
                        identity.metric, identity.description, identity.held
                    )
                }),
        );
        seen.extend(
            store
                .type_conflicts()
                .iter()
                .map(|conflict| format!("{conflict:?}")),
        );
        seen.sort();
        seen
    }

    fn reread(store: &Store, settings: StoreSettings) -> (Store, Restored) {
        let body = store.snapshot();
        let snapshot = pb::Snapshot::decode(body.bytes.as_slice()).expect("decodes");
        assert_eq!(snapshot.instances.len() as u64, body.instances);
        Store::restored(settings, &snapshot).expect("a snapshot it wrote reads back")
    }

    #[test]
    fn a_restored_store_answers_and_goes_on_as_the_one_that_was_written() {
        let settings = StoreSettings::for_tests(1000);
        let store = Store::new(settings.clone());
        // w1 and w2 over TCP, two processes sharing "shared" over the unix socket (a
        // collision the pids repair), w3 retired then evicted into the retired totals.
        for (time, n) in [(110, 3), (120, 5)] {
            export(&store, "w1", (None, 4001), time, n);
            export(&store, "w2", (None, 4002), time, n * 2);
            export(&store, "shared", (Some(700), 0), time, n);
            export(&store, "shared", (Some(701), 0), time + 1, n + 1);
        }
        export(&store, "w3", (None, 4003), 110, 9);
        // A metric name that arrives with another type.
        let mut ingest = store.begin(
            Writer {
                transport: Transport::Http,
                peer: None,
                pid: None,
            },
            Outcome::default(),
        );
        let resource = Attributes::new(vec![(
            "service.instance.id".into(),
            AttrValue::Str("w4".into()),
        )]);
        ingest.instance(&resource, |instance| {
            let scope = Arc::new(Scope::default());
            let gauge = metric("requests", Kind::Gauge, None);
            let description: Arc<str> = "".into();
            let key = instance.metric(&scope, &gauge, &description);
            let point = Point {
                start: 0,
                time: 130 * S,
                value: Value::Number(Number::Int(1)),
            };
            instance.point(&key, &[], point);
        });
        ingest.finish();
        let liveness = Liveness {
            ttl: Duration::from_secs(60),
        };
        let now = store.clock().now();
        // Everyone is past the TTL: retired.
        assert_eq!(
            store
                .sweep_at(now + Duration::from_secs(61), &liveness)
                .retired,
            5
        );
        assert!(
            store
                .collisions()
                .iter()
                .any(|collision| collision.repaired)
        );
        assert!(!store.type_conflicts().is_empty());

        let (restored_store, restored) = reread(&store, settings.clone());
        assert_eq!(restored.instances, 5);
        assert_eq!(restored.streams, store.stream_count());
        assert_eq!(restored.left_out, 0);
        assert_eq!(seen(&restored_store), seen(&store));
        assert_eq!(restored_store.stream_count(), store.stream_count());
        assert_eq!(restored_store.instance_count(), store.instance_count());

        // w1, w2 and "shared" export again (live again); w3 and w4 stay retired and are
        // evicted, w3's counts into the retired totals.
        export(&store, "w1", (None, 4001), 125, 6);
        export(&store, "w2", (None, 4002), 125, 12);
        export(&store, "shared", (Some(701), 0), 126, 7);
        assert_eq!(
            store
                .sweep_at(now + Duration::from_secs(122), &liveness)
                .evicted,
            2
        );
        assert!(store.retired_total_count() > 0);
        let (after_eviction, _) = reread(&store, settings.clone());
        assert_eq!(seen(&after_eviction), seen(&store));

        // Both go on alike: the runs continue, a restarted worker opens a new run, nothing
        // is counted twice.
        for target in [&store, &after_eviction] {
            export(target, "w1", (None, 4011), 130, 8);
            export(target, "w2", (None, 4002), 120, 10);
            export(target, "shared", (Some(700), 0), 130, 9);
            export(target, "w9", (None, 4009), 130, 1);
        }
        assert_eq!(accounting(&after_eviction), accounting(&store));
    }

    #[test]
    fn streams_marked_unreliable_are_counted_after_a_restore() {
        let settings = StoreSettings::for_tests(1000);
        let store = Store::new(settings.clone());
        // One timestamp with two values from two connections: writers fanin cannot tell
        // apart.
        export(&store, "dup", (None, 4005), 110, 3);
        export(&store, "dup", (None, 4006), 110, 4);
        let marked = store.unreliable_stream_count();
        assert!(marked > 0);
        let (restored, _) = reread(&store, settings);
        assert_eq!(restored.unreliable_stream_count(), marked);
        let counted = restored
            .all_streams()
            .iter()
            .filter(|view| view.state.unreliable.is_some())
            .count();
        assert_eq!(counted, marked);
    }

    /// Gauges `m0`…`m{n-1}` from one instance, at `time` seconds.
    fn many_gauges(store: &Store, n: usize, time: u64) -> u64 {
        let writer = Writer {
            transport: Transport::Grpc,
            peer: None,
            pid: None,
        };
        let resource = Attributes::new(vec![(
            "service.instance.id".into(),
            AttrValue::Str("wide".into()),
        )]);
        let (scope, description) = (Arc::new(Scope::default()), "".into());
        let mut ingest = store.begin(writer, Outcome::default());
        ingest.instance(&resource, |instance| {
            for n in 0..n {
                let metric = metric(&format!("m{n}"), Kind::Gauge, None);
                let key = instance.metric(&scope, &metric, &description);
                let point = Point {
                    start: 0,
                    time: time * S,
                    value: Value::Number(Number::Int(1)),
                };
                instance.point(&key, &[("route", AttrRef::Str("/a"))], point);
            }
        });
        ingest.finish().accepted
    }

    /// Enough streams in one instance that the restored table of places grows many times:
    /// they come back in the order they were created, and later points find them.
    #[test]
    fn an_instance_of_thousands_of_streams_comes_back_in_order_and_is_found() {
        let settings = StoreSettings::for_tests(10_000);
        let store = Store::new(settings.clone());
        assert_eq!(many_gauges(&store, 3_000, 10), 3_000);
        let names = |store: &Store| -> Vec<String> {
            let streams = store.all_streams().into_iter();
            streams.map(|view| view.key.metric.name.clone()).collect()
        };
        let (restored, figures) = reread(&store, settings);
        assert_eq!(figures.streams, 3_000);
        assert_eq!(names(&restored), names(&store));
        assert_eq!(many_gauges(&restored, 3_000, 20), 3_000);
        assert_eq!(restored.stream_count(), 3_000);
    }

    #[test]
    fn limits_lower_than_the_snapshot_leave_streams_out_and_say_how_many() {
        let store = Store::new(StoreSettings::for_tests(1000));
        export(&store, "w1", (None, 4001), 110, 3);
        export(&store, "w2", (None, 4002), 110, 3);
        let (smaller, restored) = reread(&store, StoreSettings::for_tests(8));
        assert_eq!(restored.streams, 8);
        assert_eq!(restored.left_out, store.stream_count() - 8);
        assert_eq!(smaller.stream_count(), 8);
        // A name none of whose streams came back is not listed.
        let identities = smaller.metric_identities();
        assert!(
            identities.iter().all(|identity| identity.held > 0),
            "{identities:?}"
        );
    }

    #[test]
    fn retired_totals_come_back_keyed_by_the_instance_attributes_in_force() {
        // Two hosts' workers, evicted into one total per host; restored where host.name is
        // an instance attribute too, they are one total.
        let store = Store::new(StoreSettings::for_tests(1000));
        let requests = metric("requests", Kind::Sum, Some(Temporality::Cumulative));
        for (worker, host, n) in [("w1", "a", 3), ("w2", "b", 4), ("w3", "b", 5)] {
            let resource = Attributes::new(vec![
                ("service.instance.id".into(), AttrValue::Str(worker.into())),
                ("host.name".into(), AttrValue::Str(host.into())),
            ]);
            let point = Point {
                start: 1,
                time: 10,
                value: Value::Number(Number::Int(n)),
            };
            store.write_point(&resource, &requests, &[], point);
        }
        let liveness = Liveness {
            ttl: Duration::from_secs(60),
        };
        let now = store.clock().now();
        store.sweep_at(now + Duration::from_secs(61), &liveness);
        assert_eq!(
            store
                .sweep_at(now + Duration::from_secs(122), &liveness)
                .evicted,
            3
        );
        let totals = |store: &Store| -> Vec<(String, u64, String)> {
            let mut totals: Vec<_> = store
                .retired_totals("requests")
                .iter()
                .map(|total| {
                    let value = format!("{:?}", total.value);
                    (format!("{:?}", total.resource), total.instances, value)
                })
                .collect();
            totals.sort();
            totals
        };
        assert_eq!(totals(&store).len(), 2, "one per host");
        let settings = StoreSettings {
            instance_attributes: crate::model::InstanceAttributes::new([
                "service.instance.id",
                "host.name",
            ])
            .expect("literal globs"),
            ..StoreSettings::for_tests(1000)
        };
        let (restored, figures) = reread(&store, settings);
        assert_eq!(figures.retired_totals, 1);
        let expected = vec![(
            format!("{:?}", Attributes::default()),
            3,
            format!("{:?}", StreamValue::Number(Number::Int(12))),
        )];
        assert_eq!(totals(&restored), expected);
        // Kept as they were where the instance attributes did not change.
        let (same, _) = reread(&store, StoreSettings::for_tests(1000));
        assert_eq!(totals(&same), totals(&store));
    }

    #[test]
    fn nothing_is_evicted_while_a_snapshot_walks_the_store() {
        let store = Store::new(StoreSettings::for_tests(1000));
        export(&store, "w1", (None, 4001), 110, 3);
        let liveness = Liveness {
            ttl: Duration::from_secs(60),
        };
        let now = store.clock().now();
        assert_eq!(
            store
                .sweep_at(now + Duration::from_secs(61), &liveness)
                .retired,
            1
        );
        let walking = lock_any(&store.shared.snapshot_gate);
        let later = now + Duration::from_secs(122);
        assert_eq!(store.sweep_at(later, &liveness).evicted, 0);
        assert_eq!(store.instance_count(), 1);
        drop(walking);
        assert_eq!(store.sweep_at(later, &liveness).evicted, 1);
    }

    #[test]
    fn a_snapshot_that_does_not_hold_together_is_refused_whole() {
        let store = Store::new(StoreSettings::for_tests(1000));
        export(&store, "w1", (None, 4001), 110, 3);
        let body = store.snapshot();
        let good = pb::Snapshot::decode(body.bytes.as_slice()).expect("decodes");
        let mut cases: Vec<(&str, pb::Snapshot)> = Vec::new();
        let mut bad = good.clone();
        bad.instances[0].streams[0].metric = 99;
        cases.push(("metric 99 is not in the snapshot's table", bad));
        let mut bad = good.clone();
        bad.instances.push(bad.instances[0].clone());
        cases.push(("an instance is listed twice", bad));
        let mut bad = good.clone();
        let stream = bad.instances[0].streams[0].clone();
        bad.instances[0].streams.push(stream);
        cases.push(("one stream twice", bad));
        let mut bad = good.clone();
        for stream in &mut bad.instances[0].streams {
            stream.parts = Some(pb::stream::Parts::Chains(pb::Chains::default()));
        }
        cases.push(("holds no runs", bad));
        let mut bad = good.clone();
        bad.metrics[0].kind = 42;
        cases.push(("no kind fanin knows", bad));
        for (expected, snapshot) in cases {
            let error = Store::restored(StoreSettings::for_tests(1000), &snapshot)
                .err()
                .unwrap_or_else(|| panic!("{expected}: restored"));
            assert!(error.contains(expected), "{expected}: {error}");
        }
    }
}
