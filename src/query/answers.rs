//! Every metric's default answer (its default aggregation across every attribute but the
//! instance attributes), as `/metrics`, the exporters and the history need them, kept
//! between readers: a metric is aggregated again only when its version
//! ([`MetricIdentity::version`]) says something it aggregates changed. A scrape of a store
//! where nothing changed renders the kept groups, in time proportional to them; a metric
//! that changed is aggregated from its streams as a first scrape would, so what is kept is
//! always what a full aggregation gives.
//!
//! The kept answers hold at most [`KEPT_GROUPS`] groups in all: past that, a metric's answer
//! is built for each reader and dropped, as it was before answers were kept, so a store of
//! a million distinct series does not hold a second copy of them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use foldhash::fast::RandomState;

use crate::config::AggregationRule;
use crate::model::MetricId;
use crate::store::{MetricIdentity, Store};

use super::answer::{Answer, Builder, Resources, Selection, default_agg, read_with_retired};

/// About how many groups one read of the store builds at a time. A metric counts as many as
/// its last answer had, plus the streams it gained since, or as many as it holds streams
/// when it has no answer kept; each read walks every stream, so fewer, larger batches are
/// cheaper, while the groups bound what they hold at once.
pub const BATCH_GROUPS: usize = 50_000;

/// The most groups the kept answers hold in all (a group costs about its attributes).
pub const KEPT_GROUPS: usize = 250_000;

/// The default answers, kept per metric name; one for the whole query side, shared.
pub struct Answers {
    rules: Arc<[AggregationRule]>,
    shelf: Mutex<Shelf>,
}

/// What is kept, and how many groups that is.
#[derive(Default)]
struct Shelf {
    kept: HashMap<String, Kept, RandomState>,
    groups: usize,
    room: usize,
}

impl Shelf {
    fn forget(&mut self, name: &str) {
        if let Some(kept) = self.kept.remove(name) {
            self.groups -= kept.groups();
        }
    }

    /// Keeps `answer` for `name` as of `version` if there is room; a newer one another
    /// reader kept meanwhile stays.
    fn keep(&mut self, name: &str, identity: (u64, usize), answer: &Option<Arc<Answer>>) {
        let (version, held) = identity;
        if self
            .kept
            .get(name)
            .is_some_and(|kept| kept.version > version)
        {
            return;
        }
        self.forget(name);
        let kept = Kept {
            version,
            held,
            answer: answer.clone(),
        };
        if self.groups + kept.groups() <= self.room {
            self.groups += kept.groups();
            self.kept.insert(name.to_string(), kept);
        }
    }
}

impl std::fmt::Debug for Answers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shelf = self.lock();
        f.debug_struct("Answers")
            .field("rules", &self.rules)
            .field("kept", &shelf.kept.len())
            .field("groups", &shelf.groups)
            .finish()
    }
}

/// A metric's answer when there is one to hand out without building it: `Some(None)` when
/// the metric has no default aggregation.
type Ready = Option<Option<Arc<Answer>>>;

/// One metric's answer as of `version`; `None` when the metric has no default aggregation
/// (a rule asking for `max` of a histogram).
struct Kept {
    version: u64,
    /// The streams the metric held when it was built.
    held: usize,
    answer: Option<Arc<Answer>>,
}

impl Kept {
    fn groups(&self) -> usize {
        self.answer.as_ref().map_or(0, |answer| answer.groups.len())
    }
}

impl Answers {
    /// No answer kept yet; metrics aggregate as `rules` say.
    pub fn new(rules: Arc<[AggregationRule]>) -> Answers {
        Answers::with_room(rules, KEPT_GROUPS)
    }

    /// The same, keeping at most `groups` groups.
    pub fn with_room(rules: Arc<[AggregationRule]>, groups: usize) -> Answers {
        Answers {
            rules,
            shelf: Mutex::new(Shelf {
                room: groups,
                ..Shelf::default()
            }),
        }
    }

    /// Each metric's default aggregation.
    pub fn rules(&self) -> &Arc<[AggregationRule]> {
        &self.rules
    }

    /// Hands each metric's default answer to `each`, in name order, until it answers
    /// `false`. Changed metrics are aggregated a batch of names at a time (about
    /// [`BATCH_GROUPS`] groups, or one metric if it alone has more), so the answers built at
    /// once stay bounded. Metrics without a default aggregation are left out.
    pub fn each(&self, store: &Store, each: &mut dyn FnMut(&MetricIdentity, &Arc<Answer>) -> bool) {
        // Versions are read before any stream is read.
        let mut identities = store.metric_identities();
        identities.sort_by(|a, b| a.metric.name.cmp(&b.metric.name));
        // Per metric: its kept answer when still current, else about how many groups
        // building it makes.
        let (mut ready, sizes): (Vec<Ready>, Vec<usize>) = {
            let mut shelf = self.lock();
            // Names the store forgot are forgotten here too.
            let names: HashSet<&str, RandomState> = identities
                .iter()
                .map(|identity| identity.metric.name.as_str())
                .collect();
            let Shelf { kept, groups, .. } = &mut *shelf;
            kept.retain(|name, kept| {
                let known = names.contains(name.as_str());
                if !known {
                    *groups -= kept.groups();
                }
                known
            });
            identities
                .iter()
                .map(|identity| match shelf.kept.get(&identity.metric.name) {
                    Some(kept) if kept.version == identity.version => {
                        (Some(kept.answer.clone()), 0)
                    }
                    kept => (None, groups_to_build(kept, identity)),
                })
                .unzip()
        };
        let stale: Vec<usize> = (0..identities.len())
            .filter(|&index| ready[index].is_none())
            .collect();
        let mut batches = batches(&sizes, &stale, BATCH_GROUPS).into_iter();
        for (index, identity) in identities.iter().enumerate() {
            if ready[index].is_none() {
                // The batch holding this metric is the next one: batches follow name order.
                if let Some(batch) = batches.next() {
                    for (at, answer) in self.aggregate(store, &identities, batch) {
                        ready[at] = Some(answer);
                    }
                }
            }
            let Some(Some(answer)) = ready[index].take() else {
                continue;
            };
            if !each(identity, &answer) {
                return;
            }
        }
    }

    /// Aggregates the metrics at `batch` (indices into `identities`) in one read of the
    /// store, keeps the answers, and returns them with their indices.
    fn aggregate(
        &self,
        store: &Store,
        identities: &[MetricIdentity],
        batch: &[usize],
    ) -> Vec<(usize, Option<Arc<Answer>>)> {
        let slots: HashMap<&str, usize, RandomState> = batch
            .iter()
            .enumerate()
            .map(|(slot, &index)| (identities[index].metric.name.as_str(), slot))
            .collect();
        let (mut builders, retired) = read_with_retired(
            store,
            |name| slots.contains_key(name),
            || self.read_batch(store, identities, batch, &slots),
        );
        for total in &retired {
            if let Some(Some(builder)) = slots
                .get(total.metric.name.as_str())
                .map(|&slot| &mut builders[slot])
            {
                builder.retired(total);
            }
        }
        let answers: Vec<(usize, Option<Arc<Answer>>)> = batch
            .iter()
            .zip(builders)
            .map(|(&index, builder)| (index, builder.map(|builder| Arc::new(builder.finish()))))
            .collect();
        let mut shelf = self.lock();
        for (index, answer) in &answers {
            let identity = &identities[*index];
            shelf.keep(
                &identity.metric.name,
                (identity.version, identity.held),
                answer,
            );
        }
        answers
    }

    /// One read of the streams for the metrics at `batch`, into a builder per metric (in
    /// `slots`' order); a metric whose default aggregation its kind does not have gets none.
    fn read_batch<'s>(
        &self,
        store: &Store,
        identities: &'s [MetricIdentity],
        batch: &[usize],
        slots: &HashMap<&str, usize, RandomState>,
    ) -> Vec<Option<Builder<'s>>> {
        let mut builders: Vec<Option<Builder<'s>>> = batch
            .iter()
            .map(|&index| {
                let metric = &identities[index].metric;
                let agg = default_agg(&self.rules, &metric.name);
                Builder::new(Arc::clone(metric), agg, Selection::default()).ok()
            })
            .collect();
        let mut resources = Resources::new(store.instance_attributes());
        // An instance's streams share a few metric identities: each is looked up by name
        // once per instance, then by address (which stays put while the instance is locked).
        let mut by_address: HashMap<*const MetricId, Option<usize>, RandomState> =
            HashMap::default();
        store.read_streams(|instance| {
            let entered = resources.enter(instance.key);
            let seen = resources.seen(entered, instance.key, instance.live);
            by_address.clear();
            for (key, stream) in instance.iter() {
                let slot = *by_address
                    .entry(Arc::as_ptr(&key.metric))
                    .or_insert_with(|| slots.get(key.metric.name.as_str()).copied());
                if let Some(Some(builder)) = slot.map(|slot| &mut builders[slot]) {
                    builder.stream(&seen, key, stream);
                }
            }
        });
        builders
    }

    /// The kept answers; a panic while they were held leaves each one whole (it is replaced,
    /// never edited), so a poisoned lock is used as is.
    fn lock(&self) -> std::sync::MutexGuard<'_, Shelf> {
        self.shelf.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How many groups building `identity`'s answer again will make, about: as many as its last
/// answer had, plus one for each stream gained since; as many as it has streams without one.
fn groups_to_build(kept: Option<&Kept>, identity: &MetricIdentity) -> usize {
    kept.map_or(identity.held, |kept| {
        kept.groups() + identity.held.saturating_sub(kept.held)
    })
}

/// The indices in `chosen` (ascending) as consecutive runs of about `size` in all, each
/// index counting `sizes[index]`; one larger alone has a batch of its own.
fn batches<'c>(sizes: &[usize], chosen: &'c [usize], size: usize) -> Vec<&'c [usize]> {
    let mut batches = Vec::new();
    let (mut start, mut held) = (0, 0usize);
    for (at, &index) in chosen.iter().enumerate() {
        let more = sizes[index];
        if at > start && held.saturating_add(more) > size {
            batches.push(&chosen[start..at]);
            (start, held) = (at, 0);
        }
        held = held.saturating_add(more);
    }
    if start < chosen.len() {
        batches.push(&chosen[start..]);
    }
    batches
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use proptest::prelude::*;

    use super::*;
    use crate::model::{
        AttrRef, AttrValue, Attributes, Histogram, Kind, MetricId, Number, Point, Temporality,
        Value,
    };
    use crate::store::{Liveness, StoreSettings};

    /// What the property test does to the store between reads.
    #[derive(Clone, Debug)]
    enum Step {
        /// One point from `instance` of metric `metric` with `route`.
        Write {
            instance: u8,
            metric: u8,
            route: u8,
            value: u8,
        },
        /// The instance restarts: its next points have a later start time.
        Restart { instance: u8 },
        /// The sweep runs `ttls` instance TTLs later than the last one: instances quiet
        /// that long are retired, and retired ones evicted.
        Sweep { ttls: u8 },
        /// Both readers read (the cached one twice).
        Read,
        /// Every instance is retired; then, while a read walks the store (after the first
        /// instance it meets), the sweep evicts them.
        ReadWhileEvicting,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (0u8..4, 0u8..6, 0u8..3, 0u8..20).prop_map(|(instance, metric, route, value)| {
                Step::Write { instance, metric, route, value }
            }),
            1 => (0u8..4).prop_map(|instance| Step::Restart { instance }),
            1 => (0u8..3).prop_map(|ttls| Step::Sweep { ttls }),
            2 => Just(Step::Read),
            1 => Just(Step::ReadWhileEvicting),
        ]
    }

    const TTL: Duration = Duration::from_secs(10);

    /// Counter, gauge, histogram, up-down counter, the counter's name as a gauge (a type
    /// conflict), and a delta counter (chains).
    fn metrics() -> Vec<Arc<MetricId>> {
        let metric = |name: &str, kind, monotonic, temporality| {
            Arc::new(MetricId {
                name: name.into(),
                kind,
                unit: String::new(),
                monotonic,
                temporality,
            })
        };
        let cumulative = Some(Temporality::Cumulative);
        vec![
            metric("requests", Kind::Sum, true, cumulative),
            metric("temperature", Kind::Gauge, false, None),
            metric("latency", Kind::Histogram, false, cumulative),
            metric("inflight", Kind::Sum, false, cumulative),
            metric("requests", Kind::Gauge, false, None),
            metric("deltas", Kind::Sum, true, Some(Temporality::Delta)),
        ]
    }

    fn value_of(metric: &MetricId, value: u8) -> Value {
        match metric.kind {
            Kind::Histogram => Value::Histogram(Histogram {
                count: u64::from(value),
                sum: Some(f64::from(value) * 0.1),
                min: None,
                max: None,
                bounds: vec![1.0, 5.0],
                bucket_counts: vec![u64::from(value), 0, 0],
            }),
            Kind::Gauge => Value::Number(Number::Double(f64::from(value) * 0.1)),
            _ => Value::Number(Number::Int(i64::from(value))),
        }
    }

    /// One point from worker `w{instance}` with `route` `/a`, `/b` or `/c`.
    fn write(store: &Store, instance: u8, metric: &Arc<MetricId>, route: u8, point: Point) {
        let resource = Attributes::new(vec![(
            "service.instance.id".into(),
            AttrValue::Str(format!("w{instance}")),
        )]);
        let route = ["/a", "/b", "/c"][usize::from(route)];
        store.write_point(&resource, metric, &[("route", AttrRef::Str(route))], point);
    }

    #[test]
    fn answers_past_the_room_are_built_for_each_reader() {
        let store = Store::new(StoreSettings::for_tests(100));
        let metrics = metrics();
        let (requests, temperature) = (&metrics[0], &metrics[1]);
        for route in 0..3 {
            let point = Point {
                start: 1,
                time: 10,
                value: value_of(requests, 5),
            };
            write(&store, 0, requests, route, point);
        }
        let point = Point {
            start: 0,
            time: 10,
            value: value_of(temperature, 5),
        };
        write(&store, 0, temperature, 0, point);
        let answers = Answers::with_room(Arc::from([]), 2);
        let first = read(&store, &answers);
        let again = read(&store, &answers);
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].metric.name, "requests");
        assert_eq!(first[0].groups.len(), 3);
        assert!(
            !Arc::ptr_eq(&first[0], &again[0]),
            "three groups do not fit in room for two: built again"
        );
        assert!(Arc::ptr_eq(&first[1], &again[1]), "one group fits: kept");
        assert!(same(&again, &read(&store, &Answers::new(Arc::from([])))));
        assert_eq!(
            format!("{answers:?}"),
            "Answers { rules: [], kept: 1, groups: 1 }"
        );
    }

    /// Every answer as a reader gets it: name, aggregation, groups, notes.
    fn read(store: &Store, answers: &Answers) -> Vec<Arc<Answer>> {
        let mut read = Vec::new();
        answers.each(store, &mut |_, answer| {
            read.push(Arc::clone(answer));
            true
        });
        read
    }

    /// Every default answer aggregated from owned copies of the streams, as
    /// [`Stream::state`](crate::store::Stream::state) works them out: what reading the
    /// streams in place must give.
    fn copied(store: &Store) -> Vec<Arc<Answer>> {
        let mut identities = store.metric_identities();
        identities.sort_by(|a, b| a.metric.name.cmp(&b.metric.name));
        identities
            .iter()
            .map(|identity| {
                let name = &identity.metric.name;
                let answer = crate::query::answer::build(
                    Arc::clone(&identity.metric),
                    default_agg(&[], name),
                    &store.streams(name),
                    &store.retired_totals(name),
                    store.instance_attributes(),
                    Selection::default(),
                );
                Arc::new(answer.expect("sum is defined for every kind"))
            })
            .collect()
    }

    fn with_groups(mut answers: Vec<Arc<Answer>>) -> Vec<Arc<Answer>> {
        answers.retain(|answer| !answer.groups.is_empty());
        answers
    }

    fn same(kept: &[Arc<Answer>], fresh: &[Arc<Answer>]) -> bool {
        kept.len() == fresh.len()
            && kept.iter().zip(fresh).all(|(kept, fresh)| {
                kept.metric == fresh.metric
                    && kept.agg == fresh.agg
                    && kept.groups == fresh.groups
                    && kept.notes == fresh.notes
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Kept answers are exactly what aggregating from scratch gives, after any writes,
        /// restarts, retirements, revivals and evictions; and with nothing written between
        /// two reads, the second is the kept one, not aggregated again.
        #[test]
        fn kept_answers_are_what_a_full_aggregation_gives(
            steps in prop::collection::vec(step(), 1..60)
        ) {
            let store = Store::new(StoreSettings::for_tests(10_000));
            let kept = Answers::new(Arc::from([]));
            let metrics = metrics();
            let liveness = Liveness { ttl: TTL };
            let base = Instant::now();
            let mut swept = Duration::ZERO;
            let mut time = 1_000_000_000u64;
            let mut starts = [1u64; 4];
            for step in steps {
                time += 1_000;
                match step {
                    Step::Write { instance, metric, route, value } => {
                        let metric = &metrics[usize::from(metric)];
                        let point = Point {
                            start: starts[usize::from(instance)],
                            time,
                            value: value_of(metric, value),
                        };
                        write(&store, instance, metric, route, point);
                    }
                    Step::Restart { instance } => starts[usize::from(instance)] = time,
                    Step::Sweep { ttls } => {
                        swept += TTL * u32::from(ttls);
                        store.sweep_at(base + swept, &liveness);
                    }
                    Step::ReadWhileEvicting => {
                        // Two TTLs on, every instance has been quiet for one: retired.
                        swept += TTL * 2;
                        store.sweep_at(base + swept, &liveness);
                        // One more, and the sweep has only evictions left to do.
                        swept += TTL;
                        let (sweeper, at) = (store.clone(), base + swept);
                        store.between_instances_once(move || {
                            sweeper.sweep_at(at, &Liveness { ttl: TTL });
                        });
                        // Fresh answers: kept ones may not read the streams at all.
                        let during = read(&store, &Answers::new(Arc::from([])));
                        // A store without instances never called it: it must not sweep
                        // later, when no step asked for it.
                        store.between_instances_once(|| {});
                        // A metric whose last instance went read as having no groups.
                        let during = with_groups(during);
                        let copied = with_groups(copied(&store));
                        prop_assert!(same(&during, &copied), "during {during:?}\ncopied {copied:?}");
                    }
                    Step::Read => {
                        let first = read(&store, &kept);
                        let fresh = read(&store, &Answers::new(Arc::from([])));
                        prop_assert!(same(&first, &fresh), "kept {first:?}\nfresh {fresh:?}");
                        let copied = copied(&store);
                        prop_assert!(same(&fresh, &copied), "in place {fresh:?}\ncopied {copied:?}");
                        // The store keeps its count of unreliable streams the same way.
                        let unreliable = store
                            .all_streams()
                            .iter()
                            .filter(|view| view.state.unreliable.is_some())
                            .count();
                        prop_assert_eq!(store.unreliable_stream_count(), unreliable);
                        let again = read(&store, &kept);
                        prop_assert!(
                            again.len() == first.len()
                                && again.iter().zip(&first).all(|(a, b)| Arc::ptr_eq(a, b)),
                            "nothing changed, so the second read is the kept answers"
                        );
                    }
                }
            }
            let last = read(&store, &kept);
            let fresh = read(&store, &Answers::new(Arc::from([])));
            prop_assert!(same(&last, &fresh), "kept {last:?}\nfresh {fresh:?}");
            let copied = copied(&store);
            prop_assert!(same(&fresh, &copied), "in place {fresh:?}\ncopied {copied:?}");
        }
    }

    /// Two retired workers' counters, and a read that meets their eviction after the
    /// first instance it reads: what it met of that one is in the retired totals too.
    fn evicted_while_read(read: impl FnOnce(&Store) -> Vec<Arc<Answer>>) {
        let store = Store::new(StoreSettings::for_tests(100));
        let requests = Arc::clone(&metrics()[0]);
        for (instance, value) in [(0, 5), (1, 7)] {
            let point = Point {
                start: 1,
                time: 10,
                value: value_of(&requests, value),
            };
            write(&store, instance, &requests, 0, point);
        }
        let base = Instant::now();
        store.sweep_at(base + TTL * 2, &Liveness { ttl: TTL });
        let sweeper = store.clone();
        store.between_instances_once(move || {
            sweeper.sweep_at(base + TTL * 4, &Liveness { ttl: TTL });
        });
        let answers = read(&store);
        assert_eq!(store.evictions(), 2, "both were evicted during the read");
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].groups.len(), 1);
        assert_eq!(
            answers[0].groups[0].value,
            crate::aggregate::Aggregated::Number(crate::model::Total::Int(12)),
            "each worker counted once"
        );
    }

    #[test]
    fn nothing_is_evicted_while_a_read_holds_evictions_off() {
        let store = Store::new(StoreSettings::for_tests(100));
        let requests = Arc::clone(&metrics()[0]);
        let point = Point {
            start: 1,
            time: 10,
            value: value_of(&requests, 5),
        };
        write(&store, 0, &requests, 0, point);
        let (base, liveness) = (Instant::now(), Liveness { ttl: TTL });
        store.sweep_at(base + TTL * 2, &liveness);
        let held = store.holding_evictions(|| store.sweep_at(base + TTL * 4, &liveness));
        assert_eq!((held.evicted, store.evictions()), (0, 0));
        let after = store.sweep_at(base + TTL * 4, &liveness);
        assert_eq!((after.evicted, store.evictions()), (1, 1));
    }

    #[test]
    fn a_read_that_evictions_keep_overlapping_holds_them_off_the_third_time() {
        let store = Store::new(StoreSettings::for_tests(100));
        let requests = Arc::clone(&metrics()[0]);
        let (base, liveness) = (Instant::now(), Liveness { ttl: TTL });
        let mut attempts = 0u8;
        let (evicted, retired) = crate::query::answer::read_with_retired(
            &store,
            |name| name == "requests",
            || {
                // Each attempt, a worker of its own exports, retires and is evicted.
                attempts += 1;
                let point = Point {
                    start: 1,
                    time: 10,
                    value: value_of(&requests, 5),
                };
                write(&store, attempts, &requests, 0, point);
                let at = base + TTL * (3 * u32::from(attempts));
                store.sweep_at(at, &liveness);
                store.sweep_at(at + TTL, &liveness).evicted
            },
        );
        assert_eq!(attempts, 3);
        assert_eq!(evicted, 0, "the third attempt holds evictions off");
        assert_eq!(store.evictions(), 2);
        let instances: u64 = retired.iter().map(|total| total.instances).sum();
        assert_eq!(instances, 2, "the first two workers' totals, once each");
    }

    #[test]
    fn an_instance_evicted_while_kept_answers_are_built_is_counted_once() {
        evicted_while_read(|store| read(store, &Answers::new(Arc::from([]))));
    }

    #[test]
    fn an_instance_evicted_while_a_query_reads_is_counted_once() {
        evicted_while_read(|store| {
            let params = crate::query::params::QueryParams {
                metric: "requests".into(),
                agg: None,
                by: None,
                matches: Vec::new(),
            };
            let answer = crate::query::answer::answer(store, &[], &params);
            vec![Arc::new(answer.expect("sum of a counter"))]
        });
    }

    #[test]
    fn batches_hold_about_a_batch_of_groups_and_big_metrics_alone() {
        let names = ["a", "b", "x", "c", "d", "e"];
        let sizes = [3, 4, 100, 20, 1, 9];
        // "x" is not chosen (its answer is kept): batches skip it.
        let chosen = [0, 1, 3, 4, 5];
        let batched: Vec<Vec<&str>> = batches(&sizes, &chosen, 10)
            .iter()
            .map(|batch| batch.iter().map(|&index| names[index]).collect())
            .collect();
        assert_eq!(batched, [vec!["a", "b"], vec!["c"], vec!["d", "e"]]);
        assert!(batches(&sizes, &[], 10).is_empty());

        // A metric of 1,000 streams whose last answer had 4 groups counts 4, and one more
        // for each stream it gained since; one never built counts its streams.
        let identity = MetricIdentity {
            metric: Arc::new(MetricId {
                name: "requests".into(),
                kind: Kind::Gauge,
                unit: String::new(),
                monotonic: false,
                temporality: None,
            }),
            description: Arc::from(""),
            held: 1_003,
            version: 0,
        };
        let store = Store::new(StoreSettings::for_tests(100));
        for route in 0..3 {
            let point = Point {
                start: 0,
                time: 10,
                value: value_of(&identity.metric, 5),
            };
            write(&store, 0, &identity.metric, route, point);
        }
        let answers = read(&store, &Answers::new(Arc::from([])));
        let kept = Kept {
            version: 0,
            held: 1_000,
            answer: Some(Arc::clone(&answers[0])),
        };
        assert_eq!(kept.groups(), 3);
        assert_eq!(groups_to_build(Some(&kept), &identity), 6);
        assert_eq!(groups_to_build(None, &identity), 1_003);
    }
}
