//! Liveness: which instances still export, and what becomes of those that stopped
//! (`docs/design.md`, "Liveness and retirement").
//!
//! A sweep, run periodically by the app, does two things:
//!
//! 1. **Retire** a live instance that has not exported for `instance_ttl`, or whose
//!    `process.pid` is gone while its `host.name` is this host (signal 0 through `nix`).
//!    A retired instance's gauges and up-down counters leave the live totals at once; its
//!    counters, histograms and summaries keep counting. If it exports again it is live again,
//!    with its streams intact, so nothing is counted twice.
//! 2. **Evict** an instance that has been retired for another `instance_ttl`: its counting
//!    streams are folded into the retired totals, one per aggregated key (metric, resource
//!    without instance attributes, point attributes), and its streams are dropped. Memory then
//!    follows the number of keys, not the number of workers ever seen.
//!
//! The pid check is `process.rs`'s; with `aggregation.pid_check` off, `instance_ttl` alone
//! decides.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use super::{
    EVICTED_LISTED, Instance, InstanceState, RetiredKey, RetiredTotal, Store, Transport, lock,
    lock_any, process, view_of,
};

/// Why an instance was retired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetireReason {
    /// No export for `instance_ttl`.
    Expired,
    /// Its `process.pid` on this host no longer exists.
    ProcessGone,
}

impl RetireReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RetireReason::Expired => "instance_ttl",
            RetireReason::ProcessGone => "process_gone",
        }
    }
}

/// When and why an instance was retired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retirement {
    pub at: SystemTime,
    /// Monotonic time of the retirement, for eviction.
    pub since: Instant,
    pub reason: RetireReason,
}

/// How liveness is decided.
#[derive(Clone, Debug)]
pub struct Liveness {
    /// Retire after this long without an export; evict after as long again.
    pub ttl: Duration,
}

impl Liveness {
    /// How often the app should sweep: often enough that a dead pid is noticed within about
    /// a second, and a TTL within half of itself.
    pub fn sweep_interval(&self) -> Duration {
        (self.ttl / 2).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub retired: usize,
    pub evicted: usize,
}

impl Store {
    /// Retires and evicts instances as of now, by the store's [`Clock`](super::Clock).
    pub fn sweep(&self, liveness: &Liveness) -> SweepReport {
        self.sweep_at(self.shared.clock.now(), liveness)
    }

    /// Retires and evicts instances as of `now`.
    pub fn sweep_at(&self, now: Instant, liveness: &Liveness) -> SweepReport {
        let mut report = SweepReport::default();
        // While a snapshot walks the store nothing is evicted: the next sweep does it.
        let may_evict = match self.shared.snapshot_gate.try_lock() {
            Ok(gate) => Some(gate),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        for instance in self.all_instances() {
            let mut state = lock(&instance.state);
            if state.evicted {
                continue;
            }
            match state.retired {
                None => {
                    let reason = if now.saturating_duration_since(state.last_export) >= liveness.ttl
                    {
                        Some(RetireReason::Expired)
                    } else if self.shared.local_host.as_deref().is_some_and(|host| {
                        let local = state.last_writer.transport == Transport::Unix;
                        process::local_pid(&instance.key, host, local).is_some_and(process::is_gone)
                    }) {
                        Some(RetireReason::ProcessGone)
                    } else {
                        None
                    };
                    if let Some(reason) = reason {
                        tracing::debug!(instance = ?instance.key, reason = reason.as_str(), "Retired instance");
                        state.retired = Some(Retirement {
                            at: SystemTime::now(),
                            since: now,
                            reason,
                        });
                        self.shared.stats.instance_retired();
                        self.changed_all_of(&state);
                        report.retired += 1;
                    }
                }
                Some(retirement) => {
                    if may_evict.is_some()
                        && now.saturating_duration_since(retirement.since) >= liveness.ttl
                    {
                        self.evict(&instance, &mut state);
                        report.evicted += 1;
                    }
                }
            }
        }
        if report.evicted > 0 {
            self.forget_unused_attribute_sets();
            self.forget_unused_metrics();
        } else {
            self.forget_known_blocks_if_full();
        }
        report
    }

    /// Folds a retired instance's counting streams into the retired totals and removes it.
    /// A retired total takes a slot under `limits.max_series` as a stream does.
    fn evict(&self, instance: &Instance, state: &mut InstanceState) {
        let resource = self.shared.instance_attributes.strip(&instance.key);
        let n_streams = state.streams.len();
        // Per metric name: streams dropped, and retired totals created.
        let mut names: HashMap<String, (usize, usize)> = HashMap::new();
        let mut new_totals = 0;
        {
            let mut retired = lock_any(&self.shared.retired);
            // Under the lock: a reader that sees the totals below sees this too.
            self.shared.evictions.fetch_add(1, Ordering::SeqCst);
            for (key, stream) in state.streams.drain() {
                if stream.is_unreliable() {
                    self.shared.unreliable.fetch_sub(1, Ordering::Relaxed);
                }
                let tally = names.entry(key.metric.name.clone()).or_default();
                tally.0 += 1;
                if !key.metric.counts_events() {
                    continue;
                }
                let Some(value) = stream.state().value else {
                    continue;
                };
                let bounds = RetiredKey::bounds_of(&value);
                let retired_key = RetiredKey {
                    metric: Arc::clone(&key.metric),
                    resource: resource.clone(),
                    attributes: key.attributes,
                    bounds,
                };
                match retired.get_mut(&retired_key) {
                    Some(total) => {
                        // Same key, same bounds: the values always add.
                        let added = total.value.add(&value);
                        debug_assert!(added, "retired totals of one key add up");
                        total.instances += 1;
                    }
                    None => {
                        retired.insert(
                            retired_key,
                            RetiredTotal {
                                value,
                                instances: 1,
                            },
                        );
                        tally.1 += 1;
                        new_totals += 1;
                    }
                }
            }
        }
        for (name, (dropped, created)) in &names {
            if let Some(mut entry) = self.shared.metrics.get_mut(name) {
                entry.evicted_instances += 1;
                entry.streams = entry.streams.saturating_sub(*dropped) + created;
            }
        }
        // After the streams moved to the retired totals (see `store::tick`).
        self.changed(names.keys().map(String::as_str));
        self.shared
            .n_streams
            .fetch_sub(n_streams, Ordering::Relaxed);
        self.shared
            .n_retired
            .fetch_add(new_totals, Ordering::Relaxed);
        self.remove_instance(instance, state);
        let mut evicted = lock_any(&self.shared.evicted);
        if evicted.len() == EVICTED_LISTED {
            evicted.pop_front();
        }
        evicted.push_back(view_of(instance, state));
        tracing::debug!(instance = ?instance.key, streams = n_streams, "Evicted retired instance");
    }

    /// Forgets metric names that have neither streams nor retired totals left.
    pub(super) fn forget_unused_metrics(&self) {
        self.shared.metrics.retain(|_, entry| entry.streams > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_interval_is_bounded() {
        let at = |ttl| Liveness { ttl }.sweep_interval();
        assert_eq!(at(Duration::from_secs(300)), Duration::from_secs(1));
        assert_eq!(at(Duration::from_millis(200)), Duration::from_millis(100));
        assert_eq!(at(Duration::ZERO), Duration::from_millis(10));
    }
}

#[cfg(test)]
mod eviction_tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::model::{
        AttrValue, Attributes, Histogram, Kind, MetricId, Point, Scope, StreamValue, Temporality,
        Value,
    };
    use crate::outcome::Outcome;
    use crate::store::{StoreSettings, Writer};

    fn histogram(bounds: &[f64], counts: &[u64]) -> Value {
        Value::Histogram(Histogram {
            count: counts.iter().sum(),
            sum: Some(1.0),
            min: None,
            max: None,
            bounds: bounds.to_vec(),
            bucket_counts: counts.to_vec(),
        })
    }

    #[test]
    fn evicted_histograms_with_other_bounds_keep_their_counts() {
        let store = Store::new(StoreSettings::for_tests(100));
        let metric = Arc::new(MetricId {
            name: "latency".into(),
            kind: Kind::Histogram,
            unit: "s".into(),
            monotonic: false,
            temporality: Some(Temporality::Cumulative),
        });
        let (scope, description) = (Arc::new(Scope::default()), Arc::<str>::from(""));
        let writer = Writer {
            transport: Transport::Http,
            peer: None,
            pid: None,
        };
        for (worker, bounds, counts) in [
            ("w1", &[1.0][..], &[4, 6][..]),
            ("w2", &[2.0][..], &[15, 5][..]),
        ] {
            let resource = Attributes::new(vec![(
                "service.instance.id".into(),
                AttrValue::Str(worker.into()),
            )]);
            let mut ingest = store.begin(writer, Outcome::default());
            ingest.instance(&resource, |instance| {
                let key = instance.metric(&scope, &metric, &description);
                let point = Point {
                    start: 1,
                    time: 2,
                    value: histogram(bounds, counts),
                };
                instance.point(&key, &[], point);
            });
            assert_eq!(ingest.finish().accepted, 1);
        }
        let liveness = Liveness {
            ttl: Duration::from_secs(1),
        };
        let later = store.clock().now() + Duration::from_secs(10);
        store.sweep_at(later, &liveness);
        assert_eq!(
            store
                .sweep_at(later + Duration::from_secs(10), &liveness)
                .evicted,
            2
        );
        let counts: u64 = store
            .retired_totals("latency")
            .iter()
            .map(|total| match &total.value {
                StreamValue::Histogram(histogram) => histogram.count,
                other => panic!("not a histogram: {other:?}"),
            })
            .sum();
        assert_eq!(counts, 30, "both instances' observations are kept");
    }
}
