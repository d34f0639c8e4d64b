//! One stream's state: the per-stream rules of DESIGN.md, "Cumulative correctness".
//!
//! - A point not newer than the last accepted one is a duplicate or out of order: dropped.
//! - Cumulative kinds: a new start time, or a value that goes down, is a reset; the previous
//!   value is folded into a base so the stream's total never goes down.
//! - Delta kinds: points add to a running total; one whose interval overlaps the previous
//!   point's is dropped.
//! - Gauges and up-down counters (non-monotonic cumulative sums) keep their latest value.
//! - NO_RECORDED_VALUE marks the stream stale; NaN carries no number. Neither changes totals.
//!
//! Applying a point also looks for evidence that a second process writes the stream
//! (DESIGN.md, "Collisions"): a cumulative value that goes down without a new start time, a
//! start time that goes back to the one before, an overlapping delta, or a point with the
//! latest timestamp but another value from another connection. A single worker that
//! retries, reconnects or restarts shows none of these.

use std::sync::Arc;

use crate::model::{
    BoundsMismatch, ExpHistogram, Histogram, Kind, MetricId, Point, StreamValue, Summary,
    Temporality, Value,
};
use crate::outcome::DropReason;

use super::collision::PID_WRITER;

/// Why a point was not applied to its stream.
#[derive(Debug, PartialEq)]
pub enum Refusal {
    /// Counted, not reported to the sender.
    Drop(DropReason),
    /// The histogram's bounds differ from the stream's.
    Bounds(BoundsMismatch),
    /// The point is evidence of a second writer, and the policy is to refuse it.
    Collision(Evidence),
}

/// Evidence that more than one process writes a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Evidence {
    /// Unix socket peers with different pids write one sequence of the stream.
    DifferentProcesses,
    /// A point with the stream's latest timestamp but another value, from another connection.
    SameTimeOtherValue,
    /// A cumulative value went down without a new start time.
    WentDownWithoutNewStart,
    /// The start time went back to the one before the current one: writers interleaving.
    StartTimeAlternates,
    /// A delta point's interval overlaps the previous one.
    OverlappingDelta,
}

impl Evidence {
    pub fn as_str(self) -> &'static str {
        match self {
            Evidence::DifferentProcesses => "different_processes",
            Evidence::SameTimeOtherValue => "same_time_other_value",
            Evidence::WentDownWithoutNewStart => "went_down_without_new_start",
            Evidence::StartTimeAlternates => "start_time_alternates",
            Evidence::OverlappingDelta => "overlapping_delta",
        }
    }

    /// What was seen, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Evidence::DifferentProcesses => "processes with different pids write it",
            Evidence::SameTimeOtherValue => {
                "two connections sent different values for the same timestamp"
            }
            Evidence::WentDownWithoutNewStart => {
                "a cumulative value went down without a new start time"
            }
            Evidence::StartTimeAlternates => "the start time switches back and forth",
            Evidence::OverlappingDelta => "delta intervals overlap",
        }
    }
}

/// What to do with a point that is evidence of a collision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CollisionPolicy {
    /// Apply it as the per-stream rules say, and report the collision.
    #[default]
    Report,
    /// Refuse it through partial_success, and report the collision.
    Reject,
}

/// A value that can be accumulated across points.
trait Additive: Clone {
    /// Whether this value carries a number at all (NaN does not).
    fn has_number(&self) -> bool;
    /// Whether this cumulative value is lower than `previous`: a reset.
    fn went_down(&self, previous: &Self) -> bool;
    /// Checks that `other` can be added, before anything is changed.
    fn check(&self, other: &Self) -> Result<(), BoundsMismatch>;
    /// Adds `other`; only called after `check` passed.
    fn add(&mut self, other: &Self);
}

impl Additive for f64 {
    fn has_number(&self) -> bool {
        !self.is_nan()
    }
    fn went_down(&self, previous: &Self) -> bool {
        self < previous
    }
    fn check(&self, _: &Self) -> Result<(), BoundsMismatch> {
        Ok(())
    }
    fn add(&mut self, other: &Self) {
        *self += other;
    }
}

impl Additive for Histogram {
    fn has_number(&self) -> bool {
        true
    }
    fn went_down(&self, previous: &Self) -> bool {
        self.count < previous.count
    }
    fn check(&self, other: &Self) -> Result<(), BoundsMismatch> {
        self.check_bounds(other)
    }
    fn add(&mut self, other: &Self) {
        // `check` ran first, so the bounds agree and this cannot fail.
        let _ = Histogram::add(self, other);
    }
}

impl Additive for ExpHistogram {
    fn has_number(&self) -> bool {
        true
    }
    fn went_down(&self, previous: &Self) -> bool {
        self.count < previous.count
    }
    fn check(&self, _: &Self) -> Result<(), BoundsMismatch> {
        Ok(())
    }
    fn add(&mut self, other: &Self) {
        ExpHistogram::add(self, other);
    }
}

impl Additive for Summary {
    fn has_number(&self) -> bool {
        !self.sum.is_nan()
    }
    fn went_down(&self, previous: &Self) -> bool {
        self.count < previous.count
    }
    fn check(&self, _: &Self) -> Result<(), BoundsMismatch> {
        Ok(())
    }
    fn add(&mut self, other: &Self) {
        Summary::add(self, other);
    }
}

/// Accumulation for a cumulative stream that must stay monotonic.
#[derive(Clone, Debug)]
struct Cumulative<T> {
    /// Everything counted before the last reset.
    base: Option<T>,
    /// The latest point's value.
    current: Option<T>,
}

impl<T: Additive> Cumulative<T> {
    fn new() -> Self {
        Cumulative {
            base: None,
            current: None,
        }
    }

    /// Whether `value` is lower than the latest one: a reset, or a second writer.
    fn went_down(&self, value: &T) -> bool {
        self.current
            .as_ref()
            .is_some_and(|current| value.went_down(current))
    }

    /// Applies a value; `reset` says a new sequence starts (a new start time, or a value that
    /// [went down](Cumulative::went_down)). Returns whether it was a reset.
    fn apply(&mut self, value: T, reset: bool) -> Result<bool, BoundsMismatch> {
        for existing in [&self.base, &self.current].into_iter().flatten() {
            existing.check(&value)?;
        }
        let Some(current) = self.current.take() else {
            self.current = Some(value);
            return Ok(false);
        };
        if reset {
            match &mut self.base {
                Some(base) => base.add(&current),
                None => self.base = Some(current),
            }
        }
        self.current = Some(value);
        Ok(reset)
    }

    /// Base plus current: everything this stream ever counted.
    fn total(&self) -> Option<T> {
        match (&self.base, &self.current) {
            (Some(base), Some(current)) => {
                let mut total = base.clone();
                total.add(current);
                Some(total)
            }
            (base, current) => current.clone().or_else(|| base.clone()),
        }
    }
}

/// Accumulation for a delta stream: a running total.
#[derive(Clone, Debug)]
struct Delta<T> {
    total: Option<T>,
}

impl<T: Additive> Delta<T> {
    fn apply(&mut self, value: T) -> Result<(), BoundsMismatch> {
        match &mut self.total {
            Some(total) => {
                total.check(&value)?;
                total.add(&value);
            }
            None => self.total = Some(value),
        }
        Ok(())
    }
}

/// How a stream accumulates, decided by its metric identity. Histogram and summary state
/// is boxed: every stream pays for the largest variant, and most streams are numbers (this
/// keeps a stream at about 100 bytes instead of about 350).
#[derive(Clone, Debug)]
enum Accumulator {
    /// Gauges and non-monotonic cumulative sums: the latest value.
    Latest(Option<f64>),
    Counter(Cumulative<f64>),
    DeltaSum(Delta<f64>),
    Histogram(Box<Cumulative<Histogram>>),
    DeltaHistogram(Box<Delta<Histogram>>),
    ExpHistogram(Box<Cumulative<ExpHistogram>>),
    DeltaExpHistogram(Box<Delta<ExpHistogram>>),
    Summary(Box<Cumulative<Summary>>),
}

/// One stream's state.
#[derive(Clone, Debug)]
pub struct Stream {
    metric: Arc<MetricId>,
    description: Arc<str>,
    /// Start time of the latest accepted point (0 if the sender gives none).
    start: u64,
    /// The start time before the current one, to see writers alternating.
    previous_start: u64,
    /// Who wrote the latest accepted point (`collision::writer_id`; 0 unknown).
    last_writer: u64,
    /// Who wrote before `last_writer`, when it changed.
    previous_writer: u64,
    /// Time of the latest accepted point; 0 before the first.
    last_time: u64,
    resets: u64,
    /// The latest point had NO_RECORDED_VALUE: the sender removed the stream.
    stale: bool,
    accumulator: Accumulator,
}

/// An owned copy of a stream's state, for queries.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamState {
    pub start: u64,
    pub last_time: u64,
    pub resets: u64,
    pub stale: bool,
    /// `None` until a point with a number arrives, and for a stale gauge.
    pub value: Option<StreamValue>,
}

impl Stream {
    /// An empty stream for `metric`; the first point is applied with [`Stream::apply`].
    pub fn new(metric: Arc<MetricId>, description: Arc<str>) -> Stream {
        let accumulator = match (metric.kind, metric.temporality, metric.monotonic) {
            (Kind::Gauge, _, _) => Accumulator::Latest(None),
            (Kind::Sum, Some(Temporality::Delta), _) => {
                Accumulator::DeltaSum(Delta { total: None })
            }
            (Kind::Sum, _, true) => Accumulator::Counter(Cumulative::new()),
            (Kind::Sum, _, false) => Accumulator::Latest(None),
            (Kind::Histogram, Some(Temporality::Delta), _) => {
                Accumulator::DeltaHistogram(Box::new(Delta { total: None }))
            }
            (Kind::Histogram, _, _) => Accumulator::Histogram(Box::new(Cumulative::new())),
            (Kind::ExponentialHistogram, Some(Temporality::Delta), _) => {
                Accumulator::DeltaExpHistogram(Box::new(Delta { total: None }))
            }
            (Kind::ExponentialHistogram, _, _) => {
                Accumulator::ExpHistogram(Box::new(Cumulative::new()))
            }
            (Kind::Summary, _, _) => Accumulator::Summary(Box::new(Cumulative::new())),
        };
        Stream {
            metric,
            description,
            start: 0,
            previous_start: 0,
            last_writer: 0,
            previous_writer: 0,
            last_time: 0,
            resets: 0,
            stale: false,
            accumulator,
        }
    }

    pub fn description(&self) -> &Arc<str> {
        &self.description
    }

    /// Applies one point written by `writer` (a hash of its connection; 0 if unknown) and
    /// says whether it is evidence of a second writer.
    ///
    /// # Errors
    /// [`Refusal`] when the point is a duplicate, out of order, an overlapping delta, a
    /// histogram with other bounds, or (with [`CollisionPolicy::Reject`]) evidence of a
    /// collision; the stream is unchanged then.
    pub fn apply(
        &mut self,
        point: Point,
        writer: u64,
        policy: CollisionPolicy,
    ) -> (Result<(), Refusal>, Option<Evidence>) {
        let refuse = |evidence: Evidence, otherwise: Refusal| match policy {
            CollisionPolicy::Report => (Err(otherwise), Some(evidence)),
            CollisionPolicy::Reject => (Err(Refusal::Collision(evidence)), Some(evidence)),
        };
        if self.last_time != 0 {
            if point.time == self.last_time {
                let other_writer =
                    writer != 0 && self.last_writer != 0 && writer != self.last_writer;
                if other_writer && !self.holds(&point.value) {
                    return refuse(
                        Evidence::SameTimeOtherValue,
                        Refusal::Drop(DropReason::Duplicate),
                    );
                }
                return (Err(Refusal::Drop(DropReason::Duplicate)), None);
            }
            if point.time < self.last_time {
                return (Err(Refusal::Drop(DropReason::OutOfOrder)), None);
            }
            let delta = self.metric.temporality == Some(Temporality::Delta);
            if delta && point.start != 0 && point.start < self.last_time {
                return refuse(
                    Evidence::OverlappingDelta,
                    Refusal::Drop(DropReason::OverlappingDelta),
                );
            }
        }
        // A start time that changes between two known values marks a new sequence.
        let new_start =
            self.last_time != 0 && self.start != 0 && point.start != 0 && point.start != self.start;
        // Two pids on one sequence (no new start time) are two processes: a restarted worker
        // starts a new sequence. For kinds without start times, a pid that comes back after
        // another one is the sign.
        let pids = writer & PID_WRITER != 0 && self.last_writer & PID_WRITER != 0;
        let other_process = pids && writer != self.last_writer && self.last_time != 0;
        // Computed once: it is both a reset for the accumulator and, without a new start
        // time, evidence of a second writer.
        let went_down = self.goes_down(&point.value);
        let evidence = if other_process
            && ((self.start != 0 && !new_start)
                || (self.start == 0 && writer == self.previous_writer))
        {
            Some(Evidence::DifferentProcesses)
        } else if new_start && point.start == self.previous_start {
            Some(Evidence::StartTimeAlternates)
        } else if !new_start && went_down {
            Some(Evidence::WentDownWithoutNewStart)
        } else {
            None
        };
        if let (Some(evidence), CollisionPolicy::Reject) = (evidence, policy) {
            return (Err(Refusal::Collision(evidence)), Some(evidence));
        }
        let reset = match point.value {
            Value::NoRecordedValue => {
                if let Accumulator::Latest(value) = &mut self.accumulator {
                    *value = None;
                }
                self.stale = true;
                self.last_time = point.time;
                self.last_writer = writer;
                return (Ok(()), evidence);
            }
            value => match self.accumulate(value, new_start || went_down) {
                Ok(reset) => reset,
                Err(mismatch) => return (Err(Refusal::Bounds(mismatch)), evidence),
            },
        };
        if reset {
            self.resets += 1;
        }
        if new_start {
            self.previous_start = self.start;
        }
        self.stale = false;
        self.start = point.start;
        self.last_time = point.time;
        if writer != self.last_writer {
            self.previous_writer = self.last_writer;
        }
        self.last_writer = writer;
        (Ok(()), evidence)
    }

    /// Who wrote the latest accepted point (`collision::writer_id`; 0 unknown).
    pub(super) fn last_writer(&self) -> u64 {
        self.last_writer
    }

    /// Whether the stream's latest value is `value` (for delta sums, whose latest point is
    /// not kept, always true).
    fn holds(&self, value: &Value) -> bool {
        let same = |a: f64, b: f64| a == b || (a.is_nan() && b.is_nan());
        match (&self.accumulator, value) {
            (Accumulator::Latest(Some(latest)), Value::Number(number)) => same(*latest, *number),
            (Accumulator::Counter(counter), Value::Number(number)) => {
                counter.current.is_none_or(|current| same(current, *number))
            }
            (Accumulator::Histogram(cumulative), Value::Histogram(histogram)) => cumulative
                .current
                .as_ref()
                .is_none_or(|current| current == histogram),
            (Accumulator::ExpHistogram(cumulative), Value::ExpHistogram(histogram)) => cumulative
                .current
                .as_ref()
                .is_none_or(|current| current == histogram),
            (Accumulator::Summary(cumulative), Value::Summary(summary)) => cumulative
                .current
                .as_ref()
                .is_none_or(|current| current == summary),
            (_, Value::NoRecordedValue) => self.stale,
            _ => true,
        }
    }

    /// Whether a cumulative `value` is lower than the stream's latest.
    fn goes_down(&self, value: &Value) -> bool {
        match (&self.accumulator, value) {
            (Accumulator::Counter(counter), Value::Number(number)) => counter.went_down(number),
            (Accumulator::Histogram(cumulative), Value::Histogram(histogram)) => {
                cumulative.went_down(histogram)
            }
            (Accumulator::ExpHistogram(cumulative), Value::ExpHistogram(histogram)) => {
                cumulative.went_down(histogram)
            }
            (Accumulator::Summary(cumulative), Value::Summary(summary)) => {
                cumulative.went_down(summary)
            }
            _ => false,
        }
    }

    /// Adds a value to the accumulator; `reset` says a new sequence starts. Returns whether
    /// it was a reset.
    fn accumulate(&mut self, value: Value, reset: bool) -> Result<bool, BoundsMismatch> {
        // A value of the wrong shape for the stream cannot happen: the kind is part of the
        // stream's identity. It is ignored rather than trusted.
        match (&mut self.accumulator, value) {
            (Accumulator::Latest(latest), Value::Number(number)) => {
                if number.has_number() {
                    *latest = Some(number);
                }
                Ok(reset)
            }
            (Accumulator::Counter(counter), Value::Number(number)) => {
                if number.has_number() {
                    counter.apply(number, reset)
                } else {
                    Ok(false)
                }
            }
            (Accumulator::DeltaSum(delta), Value::Number(number)) => {
                if number.has_number() {
                    delta.apply(number)?;
                }
                Ok(false)
            }
            (Accumulator::Histogram(cumulative), Value::Histogram(histogram)) => {
                cumulative.apply(histogram, reset)
            }
            (Accumulator::DeltaHistogram(delta), Value::Histogram(histogram)) => {
                delta.apply(histogram).map(|()| false)
            }
            (Accumulator::ExpHistogram(cumulative), Value::ExpHistogram(histogram)) => {
                cumulative.apply(histogram, reset)
            }
            (Accumulator::DeltaExpHistogram(delta), Value::ExpHistogram(histogram)) => {
                delta.apply(histogram).map(|()| false)
            }
            (Accumulator::Summary(cumulative), Value::Summary(summary)) => {
                if summary.has_number() {
                    cumulative.apply(summary, reset)
                } else {
                    Ok(false)
                }
            }
            _ => Ok(false),
        }
    }

    /// An owned copy of the stream's state.
    pub fn state(&self) -> StreamState {
        let value = match &self.accumulator {
            Accumulator::Latest(value) => value.map(StreamValue::Number),
            Accumulator::Counter(counter) => counter.total().map(StreamValue::Number),
            Accumulator::DeltaSum(delta) => delta.total.map(StreamValue::Number),
            Accumulator::Histogram(cumulative) => cumulative.total().map(StreamValue::Histogram),
            Accumulator::DeltaHistogram(delta) => delta.total.clone().map(StreamValue::Histogram),
            Accumulator::ExpHistogram(cumulative) => {
                cumulative.total().map(StreamValue::ExpHistogram)
            }
            Accumulator::DeltaExpHistogram(delta) => {
                delta.total.clone().map(StreamValue::ExpHistogram)
            }
            Accumulator::Summary(cumulative) => cumulative.total().map(StreamValue::Summary),
        };
        StreamState {
            start: self.start,
            last_time: self.last_time,
            resets: self.resets,
            stale: self.stale,
            value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(kind: Kind, temporality: Option<Temporality>, monotonic: bool) -> Arc<MetricId> {
        Arc::new(MetricId {
            name: "m".into(),
            kind,
            unit: String::new(),
            monotonic,
            temporality,
        })
    }

    fn counter() -> Stream {
        Stream::new(
            metric(Kind::Sum, Some(Temporality::Cumulative), true),
            "".into(),
        )
    }

    fn number(start: u64, time: u64, value: f64) -> Point {
        Point {
            start,
            time,
            value: Value::Number(value),
        }
    }

    /// Applies `(start, time, value)` points; returns the final value and the refusals.
    #[track_caller]
    fn run(
        mut stream: Stream,
        points: &[(u64, u64, f64)],
    ) -> (Option<f64>, Vec<Option<DropReason>>) {
        let refusals = points
            .iter()
            .map(|&(start, time, value)| {
                match stream
                    .apply(number(start, time, value), 0, CollisionPolicy::Report)
                    .0
                {
                    Ok(()) => None,
                    Err(Refusal::Drop(reason)) => Some(reason),
                    Err(other) => panic!("unexpected {other:?}"),
                }
            })
            .collect();
        let value = match stream.state().value {
            Some(StreamValue::Number(value)) => Some(value),
            None => None,
            other => panic!("not a number: {other:?}"),
        };
        (value, refusals)
    }

    #[track_caller]
    fn check(stream: Stream, points: &[(u64, u64, f64)], expected: f64) {
        assert_eq!(run(stream, points).0, Some(expected));
    }

    #[test]
    fn counter_keeps_latest_cumulative_value() {
        check(counter(), &[(1, 10, 5.0), (1, 20, 8.0)], 8.0);
    }

    #[test]
    fn counter_restart_with_new_start_folds_into_base() {
        check(
            counter(),
            &[(1, 10, 5.0), (1, 20, 8.0), (25, 30, 2.0)],
            10.0,
        );
    }

    #[test]
    fn counter_drop_without_new_start_is_a_reset() {
        check(counter(), &[(1, 10, 5.0), (1, 20, 3.0), (1, 30, 4.0)], 9.0);
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
        let gauge = Stream::new(metric(Kind::Gauge, None, false), "".into());
        check(gauge, &[(0, 10, 3.0), (0, 20, f64::NAN)], 3.0);
    }

    #[test]
    fn delta_points_add_up_and_overlaps_are_dropped() {
        let delta = Stream::new(metric(Kind::Sum, Some(Temporality::Delta), true), "".into());
        let (value, refusals) = run(
            delta,
            &[(0, 10, 2.0), (10, 20, 3.0), (15, 25, 100.0), (20, 30, 1.0)],
        );
        assert_eq!(value, Some(6.0));
        assert_eq!(refusals[2], Some(DropReason::OverlappingDelta));
    }

    #[test]
    fn up_down_counter_keeps_latest_even_when_lower() {
        let up_down = Stream::new(
            metric(Kind::Sum, Some(Temporality::Cumulative), false),
            "".into(),
        );
        check(up_down, &[(1, 10, 5.0), (1, 20, 2.0)], 2.0);
    }

    #[test]
    fn no_recorded_value_marks_stale_and_keeps_counter_total() {
        let mut stream = counter();
        stream
            .apply(number(1, 10, 5.0), 0, CollisionPolicy::Report)
            .0
            .expect("first point");
        let marker = Point {
            start: 1,
            time: 20,
            value: Value::NoRecordedValue,
        };
        stream
            .apply(marker.clone(), 0, CollisionPolicy::Report)
            .0
            .expect("marker");
        let state = stream.state();
        assert!(state.stale);
        assert_eq!(state.value, Some(StreamValue::Number(5.0)));
        let mut gauge = Stream::new(metric(Kind::Gauge, None, false), "".into());
        gauge
            .apply(number(0, 10, 5.0), 0, CollisionPolicy::Report)
            .0
            .expect("first point");
        gauge
            .apply(marker, 0, CollisionPolicy::Report)
            .0
            .expect("marker");
        assert_eq!(gauge.state().value, None);
    }

    /// Applies `(writer pid, start, time, value)` counter points; returns the evidence found.
    fn evidence_for(stream: &mut Stream, points: &[(u32, u64, u64, f64)]) -> Vec<Option<Evidence>> {
        points
            .iter()
            .map(|&(pid, start, time, value)| {
                let writer = PID_WRITER | u64::from(pid);
                stream
                    .apply(number(start, time, value), writer, CollisionPolicy::Report)
                    .1
            })
            .collect()
    }

    #[test]
    fn two_pids_on_one_sequence_are_two_processes() {
        let found = evidence_for(&mut counter(), &[(10, 1, 10, 5.0), (11, 1, 20, 6.0)]);
        assert_eq!(found, vec![None, Some(Evidence::DifferentProcesses)]);
    }

    #[test]
    fn a_restart_with_a_new_pid_and_start_is_not_a_collision() {
        let found = evidence_for(
            &mut counter(),
            &[(10, 1, 10, 5.0), (11, 30, 40, 1.0), (11, 30, 50, 2.0)],
        );
        assert_eq!(found, vec![None, None, None]);
    }

    #[test]
    fn gauge_pids_coming_back_are_two_processes() {
        let mut gauge = Stream::new(metric(Kind::Gauge, None, false), "".into());
        let found = evidence_for(
            &mut gauge,
            &[(10, 0, 10, 1.0), (11, 0, 20, 2.0), (10, 0, 30, 3.0)],
        );
        assert_eq!(found, vec![None, None, Some(Evidence::DifferentProcesses)]);
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
    fn cumulative_histogram_reset_keeps_earlier_buckets() {
        let mut stream = Stream::new(
            metric(Kind::Histogram, Some(Temporality::Cumulative), false),
            "".into(),
        );
        for point in [
            histogram_point(1, 10, &[1.0], &[1, 1]),
            histogram_point(1, 20, &[1.0], &[2, 3]),
            histogram_point(30, 40, &[1.0], &[1, 0]),
        ] {
            stream
                .apply(point, 0, CollisionPolicy::Report)
                .0
                .expect("accepted");
        }
        let state = stream.state();
        assert_eq!(state.resets, 1);
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
        let mut stream = Stream::new(
            metric(Kind::Histogram, Some(Temporality::Delta), false),
            "".into(),
        );
        stream
            .apply(
                histogram_point(0, 10, &[1.0], &[1, 1]),
                0,
                CollisionPolicy::Report,
            )
            .0
            .expect("first");
        let before = stream.state();
        let refusal = stream
            .apply(
                histogram_point(10, 20, &[2.0], &[1, 1]),
                0,
                CollisionPolicy::Report,
            )
            .0;
        assert!(matches!(refusal, Err(Refusal::Bounds(_))));
        assert_eq!(stream.state(), before);
    }
}
