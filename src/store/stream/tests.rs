use super::*;
use crate::model::Number;

mod properties;

fn metric(kind: Kind, temporality: Option<Temporality>, monotonic: bool) -> MetricId {
    MetricId {
        name: "m".into(),
        kind,
        unit: String::new(),
        monotonic,
        temporality,
    }
}

fn counter() -> Stream {
    Stream::new(
        &metric(Kind::Sum, Some(Temporality::Cumulative), true),
        "".into(),
    )
}

fn up_down() -> Stream {
    Stream::new(
        &metric(Kind::Sum, Some(Temporality::Cumulative), false),
        "".into(),
    )
}

fn gauge() -> Stream {
    Stream::new(&metric(Kind::Gauge, None, false), "".into())
}

fn delta() -> Stream {
    Stream::new(
        &metric(Kind::Sum, Some(Temporality::Delta), true),
        "".into(),
    )
}

fn number(start: u64, time: u64, value: f64) -> Point {
    Point {
        start,
        time,
        value: Value::Number(Number::Double(value)),
    }
}

fn int(start: u64, time: u64, value: i64) -> Point {
    Point {
        start,
        time,
        value: Value::Number(Number::Int(value)),
    }
}

/// One second in nanoseconds: export intervals in these tests are seconds, as SDKs' are.
const S: u64 = 1_000_000_000;

/// A connection id (`collision::writer_id` of a TCP peer).
fn conn(n: u64) -> u64 {
    n * 2 + 1
}

/// A unix socket peer's id.
fn pid(n: u32) -> u64 {
    PID_WRITER | u64::from(n)
}

/// Applies `(start, time, value)` points from one writer; returns the final value and the
/// refusals.
#[track_caller]
fn run(mut stream: Stream, points: &[(u64, u64, f64)]) -> (Option<f64>, Vec<Option<DropReason>>) {
    let refusals = points
        .iter()
        .map(|&(start, time, value)| {
            match stream
                .apply(number(start, time, value), conn(1), CollisionPolicy::Report)
                .0
            {
                Ok(()) => None,
                Err(Refusal::Drop(reason)) => Some(reason),
                Err(other) => panic!("unexpected {other:?}"),
            }
        })
        .collect();
    (value_of(&stream), refusals)
}

fn value_of(stream: &Stream) -> Option<f64> {
    match stream.state().value {
        Some(StreamValue::Number(value)) => Some(value.as_f64()),
        None => None,
        other => panic!("not a number: {other:?}"),
    }
}

#[track_caller]
fn check(stream: Stream, points: &[(u64, u64, f64)], expected: f64) {
    assert_eq!(run(stream, points).0, Some(expected));
}

/// Applies `(writer, start, time, value)` integer points; returns the evidence each found.
fn feed(stream: &mut Stream, points: &[(u64, u64, u64, i64)]) -> Vec<Option<Evidence>> {
    points
        .iter()
        .map(|&(writer, start, time, value)| {
            stream
                .apply(int(start, time, value), writer, CollisionPolicy::Report)
                .1
                .map(|finding| finding.evidence)
        })
        .collect()
}

#[test]
fn counter_keeps_latest_cumulative_value() {
    check(counter(), &[(1, 10, 5.0), (1, 20, 8.0)], 8.0);
}

#[test]
fn a_restart_opens_a_run_and_the_old_one_keeps_its_count() {
    check(
        counter(),
        &[(1, 10, 5.0), (1, 20, 8.0), (25, 30, 2.0)],
        10.0,
    );
}

#[test]
fn counter_drop_without_new_start_is_a_reset() {
    let mut stream = counter();
    let found = feed(&mut stream, &[(conn(1), 1, 10, 5), (conn(1), 1, 20, 3)]);
    assert_eq!(found, vec![None, Some(Evidence::WentDownWithoutNewStart)]);
    feed(&mut stream, &[(conn(1), 1, 30, 4)]);
    let state = stream.state();
    assert_eq!(state.value, Some(StreamValue::Number(Number::Int(9))));
    assert_eq!(state.resets, 1);
    assert_eq!(state.unreliable, Some(Evidence::WentDownWithoutNewStart));
}

#[test]
fn duplicates_and_out_of_order_are_dropped() {
    let (value, refusals) = run(counter(), &[(1, 10, 5.0), (1, 10, 5.0), (1, 5, 1.0)]);
    assert_eq!(value, Some(5.0));
    assert_eq!(
        refusals,
        vec![
            None,
            Some(DropReason::Duplicate),
            Some(DropReason::OutOfOrder)
        ]
    );
}

#[test]
fn nan_carries_no_number() {
    check(counter(), &[(1, 10, 5.0), (1, 20, f64::NAN)], 5.0);
    check(gauge(), &[(0, 10, 3.0), (0, 20, f64::NAN)], 3.0);
}

#[test]
fn up_down_counter_keeps_latest_even_when_lower() {
    check(up_down(), &[(1, 10, 5.0), (1, 20, 2.0)], 2.0);
}

#[test]
fn integers_stay_exact() {
    let mut stream = counter();
    let big = (1 << 53) + 1;
    feed(&mut stream, &[(conn(1), 1, 10, big)]);
    assert_eq!(
        stream.state().value,
        Some(StreamValue::Number(Number::Int(big)))
    );
    // Two runs of i64::MAX no longer fit an i64: the stream's own total is the nearest
    // double, never a wrapped integer.
    let mut stream = counter();
    feed(
        &mut stream,
        &[(conn(1), 1, 10, i64::MAX), (conn(1), 20, 30, i64::MAX)],
    );
    assert_eq!(
        stream.state().value,
        Some(StreamValue::Number(Number::Double(2.0 * i64::MAX as f64)))
    );
}

#[test]
fn no_recorded_value_marks_stale_and_keeps_counter_total() {
    let marker = Point {
        start: 1,
        time: 20,
        value: Value::NoRecordedValue,
    };
    let mut stream = counter();
    for point in [number(1, 10, 5.0), marker.clone()] {
        stream
            .apply(point, conn(1), CollisionPolicy::Report)
            .0
            .expect("accepted");
    }
    let state = stream.state();
    assert!(state.stale);
    assert_eq!(state.value, Some(StreamValue::Number(Number::Double(5.0))));
    let mut gauge = gauge();
    for point in [number(0, 10, 5.0), marker] {
        gauge
            .apply(point, conn(1), CollisionPolicy::Report)
            .0
            .expect("accepted");
    }
    assert_eq!(gauge.state().value, None);
}

#[test]
fn writers_with_their_own_start_times_add_up_in_any_order() {
    // Four workers sharing one resource, each with its own start time, exporting in a
    // rotation A, B, C, D, A, ...: each keeps a run, and the total is their sum.
    let mut stream = counter();
    let mut found = Vec::new();
    for round in 1..=3u64 {
        for worker in 1..=4u64 {
            let time = round * 10 * S + worker * S;
            let value = (round * worker) as i64;
            found.extend(feed(&mut stream, &[(conn(worker), worker, time, value)]));
        }
    }
    let state = stream.state();
    assert_eq!(
        state.value,
        Some(StreamValue::Number(Number::Int(3 * (1 + 2 + 3 + 4))))
    );
    assert_eq!(state.runs.len(), 4);
    assert_eq!(state.unreliable, None, "the runs tell the writers apart");
    assert!(
        found[..5].contains(&Some(Evidence::RunsOverlap)),
        "found by the second round's first export: {found:?}"
    );
}

#[test]
fn one_writer_restarting_reconnecting_and_retrying_is_no_collision() {
    let mut stream = counter();
    let found = feed(
        &mut stream,
        &[
            (conn(1), 100, 110, 5),
            (conn(2), 100, 110, 5), // retried on a new connection
            (conn(2), 100, 120, 9),
            (conn(3), 100, 125, 10), // final export at exit, on a connection of its own
            (conn(4), 130, 140, 1),  // restarted
            (conn(4), 130, 150, 4),
            (conn(3), 100, 125, 10), // a late copy of the old run's last export
        ],
    );
    assert_eq!(found, vec![None; 7]);
    assert_eq!(
        stream.state().value,
        Some(StreamValue::Number(Number::Int(14)))
    );
}

#[test]
fn two_pids_on_one_start_time_are_two_runs() {
    let mut stream = counter();
    let found = feed(&mut stream, &[(pid(10), 1, 10, 5), (pid(11), 1, 20, 6)]);
    assert_eq!(found, vec![None, Some(Evidence::DifferentProcesses)]);
    assert_eq!(
        stream.state().value,
        Some(StreamValue::Number(Number::Int(11)))
    );
    assert_eq!(stream.state().unreliable, None);
}

#[test]
fn a_restart_with_a_new_pid_and_start_is_not_a_collision() {
    let found = feed(
        &mut counter(),
        &[
            (pid(10), 1, 10, 5),
            (pid(11), 30, 40, 1),
            (pid(11), 30, 50, 2),
        ],
    );
    assert_eq!(found, vec![None, None, None]);
}

#[test]
fn gauge_pids_alive_at_once_are_two_processes_and_add_up() {
    let mut stream = gauge();
    let found = feed(
        &mut stream,
        &[
            (pid(10), 0, 10, 1),
            (pid(11), 0, 20, 2),
            (pid(10), 0, 30, 3),
        ],
    );
    assert_eq!(found, vec![None, None, Some(Evidence::DifferentProcesses)]);
    assert_eq!(
        stream.state().value,
        Some(StreamValue::Number(Number::Int(5)))
    );
}

#[test]
fn a_gauge_two_connections_take_turns_on_is_unreliable() {
    let mut stream = gauge();
    let found = feed(
        &mut stream,
        &[
            (conn(1), 0, S, 1),
            (conn(2), 0, 2 * S, 2),
            (conn(1), 0, 3 * S, 3),
        ],
    );
    assert_eq!(
        found,
        vec![None, None, Some(Evidence::ConnectionsAlternate)]
    );
    assert_eq!(
        stream.state().unreliable,
        Some(Evidence::ConnectionsAlternate)
    );
}

#[test]
fn same_timestamp_with_another_value_from_another_connection_is_evidence() {
    let mut stream = up_down();
    let found = feed(&mut stream, &[(conn(1), 1, 10, 128), (conn(2), 1, 10, 64)]);
    assert_eq!(found, vec![None, Some(Evidence::SameTimeOtherValue)]);
    let found = feed(&mut stream, &[(conn(3), 1, 10, 128)]);
    assert_eq!(found, vec![None], "the same value resent is a retry");
}

#[test]
fn an_up_down_run_that_stops_while_others_go_on_leaves_the_total() {
    // Two workers report in-flight requests every second; worker 1 dies holding 5.
    let mut stream = up_down();
    for second in 1..=3u64 {
        feed(
            &mut stream,
            &[(conn(1), 1, second * S, 5), (conn(2), 2, second * S + 1, 2)],
        );
    }
    assert_eq!(value_of(&stream), Some(7.0));
    for second in 4..=5u64 {
        feed(&mut stream, &[(conn(2), 2, second * S + 1, 3)]);
    }
    assert_eq!(
        value_of(&stream),
        Some(3.0 + 5.0),
        "silent for two intervals only"
    );
    feed(&mut stream, &[(conn(2), 2, 6 * S + 1, 0)]);
    assert_eq!(
        value_of(&stream),
        Some(0.0),
        "worker 1's share left with it"
    );
    let runs = stream.state().runs;
    assert_eq!(
        runs.iter().map(|run| run.live).collect::<Vec<_>>(),
        [false, true]
    );
}

#[test]
fn runs_are_bounded_and_ended_runs_fold_into_the_base() {
    // A worker recycled 40 times, one export a second.
    let mut stream = counter();
    let mut found = Vec::new();
    for life in 0..40u64 {
        let start = life * 10 * S + 1;
        found.extend(feed(
            &mut stream,
            &[
                (conn(life), start, start + S, 1),
                (conn(life), start, start + 2 * S, 2),
            ],
        ));
    }
    assert!(found.iter().all(Option::is_none), "{found:?}");
    let state = stream.state();
    assert_eq!(state.value, Some(StreamValue::Number(Number::Int(80))));
    assert_eq!(state.runs.len(), runs::MAX_RUNS);
}

#[test]
fn more_live_writers_than_the_bound_are_reported() {
    let mut stream = counter();
    let mut found = Vec::new();
    for writer in 0..=runs::MAX_RUNS as u64 {
        found.extend(feed(&mut stream, &[(conn(writer), writer + 1, 100 * S, 1)]));
    }
    assert_eq!(found.last(), Some(&Some(Evidence::TooManyWriters)));
    assert_eq!(stream.state().unreliable, Some(Evidence::TooManyWriters));
}

#[test]
fn reject_refuses_the_run_opened_second() {
    let mut stream = counter();
    let apply = |stream: &mut Stream, writer, start, time, value| {
        stream
            .apply(int(start, time, value), writer, CollisionPolicy::Reject)
            .0
    };
    assert_eq!(apply(&mut stream, conn(1), 100, 10 * S, 5), Ok(()));
    // The second writer's first export comes before the first writer's next one: the
    // overlap shows only then, and it is the second run that is refused from then on.
    assert_eq!(apply(&mut stream, conn(2), 10 * S + 500, 11 * S, 7), Ok(()));
    assert_eq!(apply(&mut stream, conn(1), 100, 12 * S, 6), Ok(()));
    assert_eq!(
        apply(&mut stream, conn(2), 10 * S + 500, 13 * S, 9),
        Err(Refusal::Collision(Evidence::RunsOverlap))
    );
    assert_eq!(value_of(&stream), Some(6.0 + 7.0));
}

#[test]
fn delta_points_add_up_along_a_chain_and_retries_count_once() {
    let (value, refusals) = run(
        delta(),
        &[(5, 10, 2.0), (10, 20, 3.0), (10, 20, 3.0), (20, 30, 1.0)],
    );
    assert_eq!(value, Some(6.0));
    assert_eq!(refusals[2], Some(DropReason::Duplicate));
}

#[test]
fn a_delta_overlapping_its_own_chain_is_dropped() {
    let (value, refusals) = run(delta(), &[(5, 10, 2.0), (10, 20, 3.0), (10, 25, 100.0)]);
    assert_eq!(value, Some(5.0));
    assert_eq!(refusals[2], Some(DropReason::OverlappingDelta));
}

#[test]
fn delta_chains_from_several_writers_all_count() {
    let mut stream = delta();
    let found = feed(
        &mut stream,
        &[
            (conn(1), 5, 10, 2),
            (conn(2), 7, 15, 4),
            (conn(1), 10, 20, 3),
            (conn(2), 15, 25, 1),
        ],
    );
    assert_eq!(found[1], Some(Evidence::ChainsOverlap));
    let state = stream.state();
    assert_eq!(state.value, Some(StreamValue::Number(Number::Int(10))));
    assert_eq!(state.unreliable, None);
    assert_eq!(state.runs.len(), 2);
}

#[test]
fn a_millisecond_pair_counts_both_points() {
    // JavaScript stamps whole milliseconds: two collections in one millisecond.
    let t = 1_700_000_000_000 * 1_000_000;
    let ms = 1_000_000;
    check(
        delta(),
        &[
            (t - 60_000 * ms, t - ms, 4.0),
            (t - ms, t, 1.0),
            (t, t, 2.0),
        ],
        7.0,
    );
}

#[test]
fn delta_points_out_of_order_join_their_chain() {
    let mut stream = delta();
    let found = feed(
        &mut stream,
        &[
            (conn(1), 5, 10, 1),
            (conn(1), 20, 30, 4),
            (conn(1), 10, 20, 2),
            (conn(1), 30, 40, 8),
            (conn(1), 20, 30, 4), // retried
        ],
    );
    assert_eq!(found, vec![None; 5]);
    let state = stream.state();
    assert_eq!(state.value, Some(StreamValue::Number(Number::Int(15))));
    assert!(state.runs.is_empty(), "one chain again: {:?}", state.runs);
}

fn histogram_point(start: u64, time: u64, bounds: &[f64], counts: &[u64]) -> Point {
    Point {
        start,
        time,
        value: Value::Histogram(Histogram {
            count: counts.iter().sum(),
            sum: Some(counts.iter().sum::<u64>() as f64),
            min: None,
            max: None,
            bounds: bounds.to_vec(),
            bucket_counts: counts.to_vec(),
        }),
    }
}

#[test]
fn cumulative_histogram_runs_add_bucket_wise() {
    let mut stream = Stream::new(
        &metric(Kind::Histogram, Some(Temporality::Cumulative), false),
        "".into(),
    );
    for point in [
        histogram_point(1, 10, &[1.0], &[1, 1]),
        histogram_point(1, 20, &[1.0], &[2, 3]),
        histogram_point(30, 40, &[1.0], &[1, 0]),
    ] {
        stream
            .apply(point, conn(1), CollisionPolicy::Report)
            .0
            .expect("accepted");
    }
    let state = stream.state();
    assert_eq!(state.runs.len(), 2);
    match state.value {
        Some(StreamValue::Histogram(total)) => {
            assert_eq!(total.bucket_counts, vec![3, 3]);
            assert_eq!(total.count, 6);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn histogram_with_other_bounds_is_refused_and_changes_nothing() {
    for temporality in [Temporality::Delta, Temporality::Cumulative] {
        let mut stream = Stream::new(
            &metric(Kind::Histogram, Some(temporality), false),
            "".into(),
        );
        stream
            .apply(
                histogram_point(5, 10, &[1.0], &[1, 1]),
                conn(1),
                CollisionPolicy::Report,
            )
            .0
            .expect("first");
        let before = stream.state();
        let refusal = stream
            .apply(
                histogram_point(10, 20, &[2.0], &[1, 1]),
                conn(1),
                CollisionPolicy::Report,
            )
            .0;
        assert!(matches!(refusal, Err(Refusal::Bounds(_))), "{refusal:?}");
        assert_eq!(stream.state(), before);
    }
}
