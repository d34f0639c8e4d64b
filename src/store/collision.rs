//! Collisions: one stream written by more than one process (`docs/design.md`, "Collisions"), and
//! the related inherited-state finding.
//!
//! `stream.rs` decides, point by point, whether a point is evidence of a second writer; this
//! module keeps what was found per stream (evidence kinds, the writers seen, first and last
//! time, a count), logs each colliding stream once with the fix, and counts it. The registry
//! is bounded: past [`MAX_COLLISIONS`] streams, new ones are counted and logged but not
//! listed.
//!
//! A collision is *repaired* when every piece of evidence is of a kind the store's runs,
//! pids or delta chains separate (the stream's total stays exact); otherwise the stream is
//! marked unreliable and every answer that includes it says so.
//!
//! Inherited state is computed on demand: several instances reporting one counting stream
//! with the same start time carry counts their parent recorded before forking, and summing
//! them over-counts.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::SystemTime;

use super::stream::Evidence;
use super::{Store, StreamView, Transport, Writer, lock_any, process};
use crate::model::{Attributes, InstanceKey, MetricId, StreamKey};

/// Most colliding streams listed at once.
pub(super) const MAX_COLLISIONS: usize = 10_000;
/// Most writers listed per colliding stream.
const MAX_WRITERS: usize = 16;

/// What the store knows about one colliding stream.
#[derive(Clone, Debug)]
pub(super) struct CollisionRecord {
    pub(super) evidence: Vec<Evidence>,
    pub(super) writers: Vec<String>,
    pub(super) first_seen: SystemTime,
    pub(super) last_seen: SystemTime,
    pub(super) count: u64,
}

/// A colliding stream, for `/api/v1/collisions`.
#[derive(Clone, Debug)]
pub struct CollisionView {
    pub instance: InstanceKey,
    pub key: StreamKey,
    pub evidence: Vec<Evidence>,
    /// Runs, pids or delta chains tell the writers apart, so the stream's total is exact.
    pub repaired: bool,
    /// Peer addresses (and transport) of the writers seen sending evidence.
    pub writers: Vec<String>,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    /// Points that were evidence.
    pub count: u64,
}

/// Several instances reporting one counting stream with the same start time.
#[derive(Clone, Debug)]
pub struct InheritedState {
    pub metric: Arc<MetricId>,
    /// The resource without instance attributes.
    pub resource: Attributes,
    pub attributes: Arc<Attributes>,
    pub start: u64,
    pub instances: Vec<InstanceKey>,
}

/// The fix, said once per colliding stream.
pub const FIX: &str =
    "give each worker its own service.instance.id, set after fork (the fanin shim does this)";

const NANOS_PER_MILLI: u64 = 1_000_000;

/// How far a start time must be from a process's start, as `/proc` gives it, to say which
/// came first: several times the error of that reading.
const START_MARGIN: u64 = 100 * NANOS_PER_MILLI;

/// A start time against the start of the process that reported it (from `/proc`).
enum Recorded {
    /// Earlier by more than [`START_MARGIN`]: the value was inherited.
    Before,
    /// Later by more than the margin: the process's own.
    After,
    /// Within the margin of it, or the instance is retired (its process may be gone and
    /// the pid another's): the pid is this host's and proves nothing either way.
    Near,
    /// This host cannot tell: no pid, another host, pid checks off, or no such process.
    Unknown,
}

/// Marks a writer id that is a process id (unix socket peers) rather than a connection.
pub(super) const PID_WRITER: u64 = 1 << 63;

/// The pid a writer id names, when it names one.
pub(super) fn pid_of(writer: u64) -> Option<u32> {
    (writer & PID_WRITER != 0).then_some((writer & !PID_WRITER) as u32)
}

/// A stable number for a writer, so a stream can tell writers apart: the peer's pid when the
/// kernel told us (`PID_WRITER` set), else a hash of its connection; 0 when neither is known.
pub(super) fn writer_id(writer: &Writer) -> u64 {
    if let Some(pid) = writer.pid {
        return PID_WRITER | u64::from(pid.unsigned_abs());
    }
    match writer.peer {
        None => 0,
        Some(peer) => {
            let mut hasher = std::hash::DefaultHasher::new();
            peer.hash(&mut hasher);
            writer.transport.hash(&mut hasher);
            (hasher.finish() | 1) & !PID_WRITER
        }
    }
}

/// Logs a colliding stream: once when found, and again if its total turns unreliable.
fn log_collision(instance: &InstanceKey, key: &StreamKey, evidence: Evidence, writer: &str) {
    let effect = if evidence.repairable() {
        "fanin keeps the writers apart and the total is exact, but"
    } else {
        "fanin cannot tell the writers apart and the total is unreliable:"
    };
    tracing::warn!(
        metric = %key.metric.name,
        instance = ?instance,
        attributes = ?key.attributes,
        evidence = evidence.as_str(),
        writer = %writer,
        "More than one process writes this stream ({}); {effect} {FIX}",
        evidence.describe()
    );
}

fn describe(writer: &Writer) -> String {
    match (writer.pid, writer.peer) {
        (Some(pid), _) => format!("pid {pid} ({})", writer.transport.as_str()),
        (None, Some(peer)) => format!("{peer} ({})", writer.transport.as_str()),
        (None, None) => format!("unknown peer ({})", writer.transport.as_str()),
    }
}

impl Store {
    /// Notes a point from `writer` that is evidence of a collision on `key` of `instance`.
    /// `writer_ids` are the ids of the stream's previous writer and of this one: a previous
    /// writer known by its pid is listed too, so that both processes are named.
    pub(super) fn record_collision(
        &self,
        instance: &InstanceKey,
        key: &StreamKey,
        evidence: Evidence,
        writer: &Writer,
        writer_ids: [u64; 2],
        now: SystemTime,
    ) {
        let mut collisions = lock_any(&self.shared.collisions);
        let writer_text = describe(writer);
        let [earlier, current] = writer_ids;
        // Only unix socket peers are known by pid.
        let earlier_text = pid_of(earlier)
            .filter(|_| earlier != current)
            .map(|pid| format!("pid {pid} ({})", Transport::Unix.as_str()));
        let seen = earlier_text.into_iter().chain([writer_text.clone()]);
        if let Some(record) = collisions.get_mut(&(Arc::clone(instance), key.clone())) {
            record.count += 1;
            record.last_seen = now;
            if !record.evidence.contains(&evidence) {
                let was_repaired = record.evidence.iter().all(|known| known.repairable());
                if was_repaired && !evidence.repairable() {
                    log_collision(instance, key, evidence, &writer_text);
                }
                record.evidence.push(evidence);
            }
            for text in seen {
                if record.writers.len() < MAX_WRITERS && !record.writers.contains(&text) {
                    record.writers.push(text);
                }
            }
            return;
        }
        self.shared.stats.collision();
        log_collision(instance, key, evidence, &writer_text);
        if collisions.len() >= MAX_COLLISIONS {
            return;
        }
        collisions.insert(
            (Arc::clone(instance), key.clone()),
            CollisionRecord {
                evidence: vec![evidence],
                writers: seen.collect(),
                first_seen: now,
                last_seen: now,
                count: 1,
            },
        );
    }

    /// Every colliding stream found so far.
    pub fn collisions(&self) -> Vec<CollisionView> {
        lock_any(&self.shared.collisions)
            .iter()
            .map(|((instance, key), record)| CollisionView {
                instance: Arc::clone(instance),
                key: key.clone(),
                evidence: record.evidence.clone(),
                repaired: record.evidence.iter().all(|evidence| evidence.repairable()),
                writers: record.writers.clone(),
                first_seen: record.first_seen,
                last_seen: record.last_seen,
                count: record.count,
            })
            .collect()
    }

    /// Counting streams that several instances report with one start time that they did
    /// not each record on their own.
    ///
    /// An equal start time alone is not proof: two independent workers whose first
    /// measurement fell in the same millisecond share one too. The proof, where the pid and
    /// host are known and the instance is live, is a start time earlier than the process's
    /// own start (from `/proc`); a start time later than it clears that instance, and one
    /// within the margin of it proves nothing (two workers forked together and scheduled at
    /// once run in step and can read the clock in the same nanosecond), nor does a retired
    /// instance's pid (its process may be gone and the pid another's). Only where none of
    /// the instances left was checked must the start time have sub-millisecond precision
    /// instead: independent processes rarely meet to the nanosecond, and SDKs that stamp
    /// whole milliseconds run where no memory is inherited (Node's `cluster` starts new
    /// processes). Values recorded less than the margin before fork therefore go unreported
    /// where pids are known: `/proc` cannot tell them from a worker's own.
    pub fn inherited_state(&self) -> Vec<InheritedState> {
        let streams: Vec<StreamView> = self.all_streams();
        // Metric, resource without instance attributes, point attributes, start time.
        type Key = (Arc<MetricId>, Attributes, Arc<Attributes>, u64);
        let mut groups: HashMap<Key, Vec<InstanceKey>> = HashMap::new();
        let mut stripped: HashMap<*const Attributes, Attributes> = HashMap::new();
        let mut retired: HashSet<*const Attributes> = HashSet::new();
        for view in streams {
            if !view.key.metric.counts_events() {
                continue;
            }
            if !view.live {
                retired.insert(Arc::as_ptr(&view.instance));
            }
            let resource = stripped
                .entry(Arc::as_ptr(&view.instance))
                .or_insert_with(|| self.shared.instance_attributes.strip(&view.instance))
                .clone();
            let starts = std::iter::once(view.state.start)
                .chain(view.state.runs.iter().map(|run| run.start))
                .filter(|start| *start != 0);
            for start in starts {
                let key = (
                    Arc::clone(&view.key.metric),
                    resource.clone(),
                    Arc::clone(&view.key.attributes),
                    start,
                );
                let instances = groups.entry(key).or_default();
                if !instances
                    .iter()
                    .any(|known| Arc::ptr_eq(known, &view.instance))
                {
                    instances.push(Arc::clone(&view.instance));
                }
            }
        }
        let mut started: HashMap<i32, Option<u64>> = HashMap::new();
        groups
            .into_iter()
            .filter(|(_, instances)| instances.len() > 1)
            .filter_map(|((metric, resource, attributes, start), instances)| {
                let (mut proven, mut checked) = (false, false);
                let mut kept = Vec::with_capacity(instances.len());
                for instance in instances {
                    let live = !retired.contains(&Arc::as_ptr(&instance));
                    match self.recorded_against_start(&instance, live, start, &mut started) {
                        Recorded::Before => {
                            proven = true;
                            kept.push(instance);
                        }
                        Recorded::After => {}
                        Recorded::Near => {
                            checked = true;
                            kept.push(instance);
                        }
                        Recorded::Unknown => kept.push(instance),
                    }
                }
                let precise = start % NANOS_PER_MILLI != 0 && !checked;
                (kept.len() > 1 && (proven || precise)).then_some(InheritedState {
                    metric,
                    resource,
                    attributes,
                    start,
                    instances: kept,
                })
            })
            .collect()
    }

    /// When `start` was recorded against the start of the process `instance` names (if
    /// it is `live`). `started` caches process start times.
    fn recorded_against_start(
        &self,
        instance: &Attributes,
        live: bool,
        start: u64,
        started: &mut HashMap<i32, Option<u64>>,
    ) -> Recorded {
        let Some(host) = self.shared.local_host.as_deref() else {
            return Recorded::Unknown;
        };
        let Some(pid) = process::local_pid(instance, host, false) else {
            return Recorded::Unknown;
        };
        if !live {
            // Its process may be gone and the pid another's by now.
            return Recorded::Near;
        }
        let Some(process_start) = *started
            .entry(pid)
            .or_insert_with(|| process::started_at(pid))
        else {
            return Recorded::Unknown;
        };
        if start.saturating_add(START_MARGIN) < process_start {
            Recorded::Before
        } else if start > process_start.saturating_add(START_MARGIN) {
            Recorded::After
        } else {
            Recorded::Near
        }
    }
}
