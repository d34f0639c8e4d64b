//! Property tests of the accounting rules: random writers sharing one stream, each living
//! one or more lives (restarts), exporting over connections that change (reconnects),
//! with retries, duplicates and out-of-order delivery, in any interleaving of the writers.
//! The total must be what every life counted; one writer alone must never be a collision.

use proptest::prelude::*;

use super::*;

/// One process's life: what each of its exports added.
type Life = Vec<u8>;

/// How one writer behaves: its lives, and for each export whether it reconnects first,
/// retries (the copy goes out on a new connection), and how late its copies arrive.
#[derive(Clone, Debug)]
struct WriterPlan {
    lives: Vec<Life>,
    reconnects: Vec<bool>,
    retries: Vec<bool>,
    delays: Vec<u8>,
}

fn writer_plan(max_lives: usize) -> impl Strategy<Value = WriterPlan> {
    (
        prop::collection::vec(prop::collection::vec(0u8..=5, 1..=6), 1..=max_lives),
        prop::collection::vec(any::<bool>(), 16),
        prop::collection::vec(prop::bool::weighted(0.3), 16),
        prop::collection::vec(0u8..=2, 16),
    )
        .prop_map(|(lives, reconnects, retries, delays)| WriterPlan {
            lives,
            reconnects,
            retries,
            delays,
        })
}

/// One copy of one export as it reaches the store.
#[derive(Clone, Copy, Debug)]
struct Delivery {
    start: u64,
    time: u64,
    /// The cumulative value, or for delta streams what the interval added.
    value: i64,
    writer: u64,
}

const INTERVAL: u64 = 10 * S;

impl WriterPlan {
    /// This writer's deliveries in the order they arrive, and what it counted in all.
    /// Writer `index` offsets every time by `index` nanoseconds, so no two writers share a
    /// start time or an interval boundary (clocks with nanosecond resolution).
    fn deliveries(&self, index: u64, delta: bool) -> (Vec<Delivery>, i64) {
        let mut sends = Vec::new();
        let mut time = 1_000 * S + index;
        let mut epoch = 0u64;
        let mut counted = 0i64;
        for life in &self.lives {
            // A restarted process is a new process: a new connection, a new start time.
            epoch += 1;
            let start = time + S;
            let mut previous = start;
            let mut cumulative = 0i64;
            for (export, added) in life.iter().enumerate() {
                let at = start + (export as u64 + 1) * INTERVAL;
                cumulative += i64::from(*added);
                let n = sends.len() % 16;
                if self.reconnects[n] {
                    epoch += 1;
                }
                let (point_start, value) = if delta {
                    (previous, i64::from(*added))
                } else {
                    (start, cumulative)
                };
                sends.push((point_start, at, value, epoch));
                if self.retries[n] {
                    // The retry goes out on a new connection, which later exports use.
                    epoch += 1;
                }
                previous = at;
                time = at;
            }
            counted += cumulative;
        }
        // Each export arrives once, maybe again as a retry on the next connection, and
        // either copy may arrive up to two exports late.
        let mut copies = Vec::new();
        for (n, &(start, time, value, epoch)) in sends.iter().enumerate() {
            let writer = |epoch: u64| conn(index << 16 | epoch);
            let delay = usize::from(self.delays[n % 16]);
            copies.push((n + delay, start, time, value, writer(epoch)));
            if self.retries[n % 16] {
                copies.push((n + 2 - delay.min(2), start, time, value, writer(epoch + 1)));
            }
        }
        copies.sort_by_key(|copy| copy.0);
        let deliveries = copies
            .into_iter()
            .map(|(_, start, time, value, writer)| Delivery {
                start,
                time,
                value,
                writer,
            })
            .collect();
        (deliveries, counted)
    }
}

/// Interleaves the writers' deliveries, keeping each writer's own order, as `choices` pick.
fn interleave(mut queues: Vec<Vec<Delivery>>, choices: &[u8]) -> Vec<Delivery> {
    for queue in &mut queues {
        queue.reverse();
    }
    let mut merged = Vec::new();
    let mut choice = choices.iter().cycle();
    while queues.iter().any(|queue| !queue.is_empty()) {
        let waiting: Vec<usize> = (0..queues.len())
            .filter(|index| !queues[*index].is_empty())
            .collect();
        let pick = waiting[usize::from(*choice.next().unwrap_or(&0)) % waiting.len()];
        merged.extend(queues[pick].pop());
    }
    merged
}

/// Feeds `plans` into a fresh stream; returns its integer total, what the writers counted,
/// and every finding.
fn play(
    mut stream: Stream,
    plans: &[WriterPlan],
    choices: &[u8],
    delta: bool,
) -> (Option<Number>, i64, Vec<Evidence>) {
    let mut queues = Vec::new();
    let mut counted = 0;
    for (index, plan) in plans.iter().enumerate() {
        let (deliveries, writer_counted) = plan.deliveries(index as u64, delta);
        queues.push(deliveries);
        counted += writer_counted;
    }
    let mut findings = Vec::new();
    for delivery in interleave(queues, choices) {
        let point = int(delivery.start, delivery.time, delivery.value);
        let (_, finding) = stream.apply(point, delivery.writer, CollisionPolicy::Report);
        findings.extend(finding.map(|finding| finding.evidence));
    }
    let state = stream.state();
    // What a query reads in place is what the state works out.
    let current = stream.current();
    let (value, runs) = current.parts();
    assert_eq!(value, state.value.as_ref().map(StreamValue::as_value_ref));
    assert_eq!(runs, &state.runs[..]);
    let total = match state.value {
        Some(StreamValue::Number(number)) => Some(number),
        None => None,
        other => panic!("not a number: {other:?}"),
    };
    (total, counted, findings)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn cumulative_writers_add_up_to_what_each_counted(
        plans in prop::collection::vec(writer_plan(2), 1..=16),
        choices in prop::collection::vec(any::<u8>(), 1..64),
    ) {
        let (total, counted, findings) = play(counter(), &plans, &choices, false);
        prop_assert_eq!(total, Some(Number::Int(counted)));
        prop_assert!(
            findings.iter().all(|evidence| evidence.repairable()),
            "{:?}", findings
        );
    }

    #[test]
    fn one_cumulative_writer_is_never_a_collision(
        plan in writer_plan(4),
        choices in prop::collection::vec(any::<u8>(), 1..8),
    ) {
        let (total, counted, findings) = play(counter(), &[plan], &choices, false);
        prop_assert_eq!(total, Some(Number::Int(counted)));
        prop_assert!(findings.is_empty(), "{:?}", findings);
    }

    #[test]
    fn delta_writers_add_up_to_every_interval_once(
        plans in prop::collection::vec(writer_plan(2), 1..=16),
        choices in prop::collection::vec(any::<u8>(), 1..64),
    ) {
        let (total, counted, findings) = play(delta(), &plans, &choices, true);
        prop_assert_eq!(total.unwrap_or(Number::Int(0)), Number::Int(counted));
        prop_assert!(
            findings.iter().all(|evidence| evidence.repairable()),
            "{:?}", findings
        );
    }

    #[test]
    fn one_delta_writer_is_never_a_collision(
        plan in writer_plan(4),
        choices in prop::collection::vec(any::<u8>(), 1..8),
    ) {
        let (total, counted, findings) = play(delta(), &[plan], &choices, true);
        prop_assert_eq!(total.unwrap_or(Number::Int(0)), Number::Int(counted));
        prop_assert!(findings.is_empty(), "{:?}", findings);
    }

    #[test]
    fn several_writers_are_found_whatever_the_order(
        plans in prop::collection::vec(writer_plan(1), 2..=16),
        choices in prop::collection::vec(any::<u8>(), 1..64),
    ) {
        // Each writer exports at least twice while the others live: they overlap.
        let plans: Vec<WriterPlan> = plans
            .into_iter()
            .map(|mut plan| {
                let exports = plan.lives[0].len().max(2);
                plan.lives[0].resize(exports, 1);
                plan
            })
            .collect();
        let (_, _, findings) = play(counter(), &plans, &choices, false);
        prop_assert!(findings.contains(&Evidence::RunsOverlap), "{:?}", findings);
    }
}

/// Writers that export every [`INTERVAL`] from their own start, delivered in time order
/// each up to an interval late; the first delivery that is evidence, and when it arrived.
fn first_finding(starts: &[u64], phases: &[u64], delays: &[u64]) -> Option<(u64, Evidence)> {
    let end = starts.iter().max().copied().unwrap_or(0) + 10 * INTERVAL;
    let mut deliveries = Vec::new();
    for (writer, (&start, &phase)) in starts.iter().zip(phases).enumerate() {
        let mut time = start + phase;
        let mut value = 0;
        while time < end {
            value += 1;
            let delay = delays[deliveries.len() % delays.len()];
            deliveries.push((time + delay, start, time, value, conn(writer as u64)));
            time += INTERVAL;
        }
    }
    deliveries.sort_by_key(|delivery| delivery.0);
    let mut stream = counter();
    deliveries
        .into_iter()
        .find_map(|(arrived, start, time, value, writer)| {
            let (_, finding) =
                stream.apply(int(start, time, value), writer, CollisionPolicy::Report);
            finding.map(|finding| (arrived, finding.evidence))
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_collision_is_found_within_three_export_intervals_of_its_start(
        offsets in prop::collection::vec(0u64..5 * INTERVAL, 2..=16),
        phases in prop::collection::vec(0u64..INTERVAL, 16),
        delays in prop::collection::vec(0u64..INTERVAL, 1..64),
    ) {
        // Each writer's start time is its own (nanosecond clocks); the collision starts when
        // the second writer does.
        let starts: Vec<u64> = offsets
            .iter()
            .enumerate()
            .map(|(writer, offset)| 1_000 * S + offset + writer as u64)
            .collect();
        let mut sorted = starts.clone();
        sorted.sort_unstable();
        let collision_start = sorted[1];
        let found = first_finding(&starts, &phases, &delays);
        prop_assert!(
            matches!(found, Some((arrived, Evidence::RunsOverlap)) if arrived <= collision_start + 3 * INTERVAL),
            "found {:?}, collision from {}", found, collision_start
        );
    }
}

/// A stream through a snapshot and back, as a restarted fanin reads it.
fn restarted(stream: &Stream, metric: &MetricId) -> Stream {
    use prost::Message;
    let bytes = stream.to_proto().encode_to_vec();
    let message = crate::proto::v1::snapshot::Stream::decode(bytes.as_slice()).expect("decodes");
    Stream::from_proto(metric, "".into(), &message).expect("a stream it wrote reads back")
}

/// Plays `deliveries` into `stream`, collecting the findings.
fn feed(stream: &mut Stream, deliveries: &[Delivery], findings: &mut Vec<Evidence>) {
    for delivery in deliveries {
        let point = int(delivery.start, delivery.time, delivery.value);
        let (_, finding) = stream.apply(point, delivery.writer, CollisionPolicy::Report);
        findings.extend(finding.map(|finding| finding.evidence));
    }
}

/// fanin snapshots after delivery `snapshot_at`, keeps applying until `crash_at`, dies, and
/// restarts from the snapshot: what it applied after the snapshot is lost. The restarted
/// stream must behave exactly as one that never saw the lost deliveries, and (cumulative)
/// count every writer's life up to its latest delivery it kept: nothing twice, nothing lost
/// that a later cumulative export carried again.
fn crash_and_restore(
    plans: &[WriterPlan],
    choices: &[u8],
    (kind, delta): (Kind, bool),
    cuts: (usize, usize),
) -> Result<(), TestCaseError> {
    let metric = match kind {
        Kind::Gauge => metric(Kind::Gauge, None, false),
        _ => metric(
            Kind::Sum,
            Some(if delta {
                Temporality::Delta
            } else {
                Temporality::Cumulative
            }),
            true,
        ),
    };
    let queues = plans
        .iter()
        .enumerate()
        .map(|(index, plan)| plan.deliveries(index as u64, delta).0)
        .collect();
    let deliveries = interleave(queues, choices);
    let snapshot_at = cuts.0 % (deliveries.len() + 1);
    let crash_at = snapshot_at + cuts.1 % (deliveries.len() - snapshot_at + 1);
    let (before, rest) = deliveries.split_at(snapshot_at);
    // Applied by the fanin that died, after its snapshot: gone with it.
    let (_lost, after) = rest.split_at(crash_at - snapshot_at);

    let mut restarted_findings = Vec::new();
    let mut subject = Stream::new(&metric, "".into());
    feed(&mut subject, before, &mut restarted_findings);
    let mut subject = restarted(&subject, &metric);
    feed(&mut subject, after, &mut restarted_findings);

    let mut twin_findings = Vec::new();
    let mut twin = Stream::new(&metric, "".into());
    feed(&mut twin, before, &mut twin_findings);
    feed(&mut twin, after, &mut twin_findings);

    prop_assert_eq!(subject.state(), twin.state());
    prop_assert_eq!(&restarted_findings, &twin_findings);
    if kind == Kind::Sum && !delta {
        // Per life (a writer's start time), its latest value kept is what it counted.
        let mut lives: std::collections::HashMap<u64, i64> = std::collections::HashMap::new();
        for delivery in before.iter().chain(after) {
            let value = lives.entry(delivery.start).or_default();
            *value = (*value).max(delivery.value);
        }
        let expected: i64 = lives.values().sum();
        let total = match subject.state().value {
            Some(StreamValue::Number(Number::Int(total))) => total,
            None => 0,
            other => panic!("not an integer: {other:?}"),
        };
        prop_assert_eq!(total, expected);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn cumulative_runs_go_on_after_fanin_restarts_from_a_snapshot(
        plans in prop::collection::vec(writer_plan(2), 1..=16),
        choices in prop::collection::vec(any::<u8>(), 1..64),
        cuts in (any::<usize>(), any::<usize>()),
    ) {
        crash_and_restore(&plans, &choices, (Kind::Sum, false), cuts)?;
    }

    #[test]
    fn delta_chains_go_on_after_fanin_restarts_from_a_snapshot(
        plans in prop::collection::vec(writer_plan(2), 1..=16),
        choices in prop::collection::vec(any::<u8>(), 1..64),
        cuts in (any::<usize>(), any::<usize>()),
    ) {
        crash_and_restore(&plans, &choices, (Kind::Sum, true), cuts)?;
    }

    #[test]
    fn gauge_runs_go_on_after_fanin_restarts_from_a_snapshot(
        plans in prop::collection::vec(writer_plan(2), 1..=16),
        choices in prop::collection::vec(any::<u8>(), 1..64),
        cuts in (any::<usize>(), any::<usize>()),
    ) {
        crash_and_restore(&plans, &choices, (Kind::Gauge, false), cuts)?;
    }
}
