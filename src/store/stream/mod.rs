//! One stream's state: the accounting rules of `docs/design.md`, "Accounting within a
//! stream".
//!
//! A stream may be written by one process that restarts, retries and reconnects, or by
//! several processes at once when workers share a resource. The unit of accounting is
//! therefore the writer's part of the stream, not the stream:
//!
//! - cumulative points (counters, up-down counters, histograms, summaries) belong to the
//!   **run** named by their start time (and, over the unix socket, by the peer pid); the
//!   stream's value is the sum of its runs' latest values ([`runs`]);
//! - delta points form **chains** of adjacent intervals; the stream's value is the sum of
//!   every interval applied once ([`chains`]);
//! - gauges carry no start time: one run per pid when the pid is known, else one run.
//!
//! Applying a point also finds evidence that more than one process writes the stream
//! ([`Evidence`]). Runs or chains advancing side by side tell the writers apart, so the
//! total stays exact ("repaired"); a value going down within one start time, one timestamp
//! with two values, or two connections taking turns on one run do not, and the stream is
//! marked unreliable, which every answer that includes it says. One worker that retries,
//! reconnects, restarts or exports at exit on a new connection shows none of these.

mod chains;
mod persist;
mod runs;

use std::sync::Arc;

use crate::model::{
    BoundsMismatch, ExpHistogram, Histogram, Kind, MetricId, Number, Point, StreamValue, Summary,
    Temporality, Value, ValueRef,
};
use crate::outcome::DropReason;

use super::collision::PID_WRITER;
use chains::Chains;
pub(super) use persist::{Persist, evidence_from_proto, evidence_to_proto};
use runs::{Rule, Runs};

/// Why a point was not applied to its stream.
#[derive(Debug, PartialEq)]
pub enum Refusal {
    /// Counted, not reported to the sender.
    Drop(DropReason),
    /// The histogram's bounds differ from the stream's (boxed: rare, and large).
    Bounds(Box<BoundsMismatch>),
    /// The point is evidence of a second writer, and the policy is to refuse it.
    Collision(Evidence),
}

/// Evidence that more than one process writes a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Evidence {
    /// Unix socket peers with different pids write the stream at the same time.
    DifferentProcesses,
    /// Runs with different start times advance side by side: one process never goes back
    /// to an earlier start time.
    RunsOverlap,
    /// Delta chains advance side by side.
    ChainsOverlap,
    /// A cumulative value went down without a new start time: writers share one.
    WentDownWithoutNewStart,
    /// A point with a run's latest timestamp but another value, from another connection.
    SameTimeOtherValue,
    /// Two connections take turns writing one run.
    ConnectionsAlternate,
    /// More writers than a stream keeps runs for wrote at the same time.
    TooManyWriters,
}

impl Evidence {
    pub fn as_str(self) -> &'static str {
        match self {
            Evidence::DifferentProcesses => "different_processes",
            Evidence::RunsOverlap => "runs_overlap",
            Evidence::ChainsOverlap => "chains_overlap",
            Evidence::WentDownWithoutNewStart => "went_down_without_new_start",
            Evidence::SameTimeOtherValue => "same_time_other_value",
            Evidence::ConnectionsAlternate => "connections_alternate",
            Evidence::TooManyWriters => "too_many_writers",
        }
    }

    /// What was seen, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Evidence::DifferentProcesses => "processes with different pids write it at once",
            Evidence::RunsOverlap => "runs with different start times advance side by side",
            Evidence::ChainsOverlap => "delta intervals from several writers overlap",
            Evidence::WentDownWithoutNewStart => {
                "a cumulative value went down without a new start time"
            }
            Evidence::SameTimeOtherValue => {
                "two connections sent different values for the same timestamp"
            }
            Evidence::ConnectionsAlternate => "two connections take turns writing it",
            Evidence::TooManyWriters => {
                "more writers than fanin keeps apart per stream write it at once"
            }
        }
    }

    /// Whether the store still tells the writers apart under this evidence, so that the
    /// stream's total stays exact: distinct start times, pids, or delta chains.
    pub fn repairable(self) -> bool {
        matches!(
            self,
            Evidence::DifferentProcesses | Evidence::RunsOverlap | Evidence::ChainsOverlap
        )
    }
}

/// A point that is evidence of a collision, and the writer it conflicts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finding {
    pub evidence: Evidence,
    /// The other writer's id (`collision::writer_id`; 0 unknown).
    pub other_writer: u64,
}

/// What to do with a point that is evidence of a collision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CollisionPolicy {
    /// Keep the writers apart where runs or chains allow, accept, and report.
    #[default]
    Report,
    /// Refuse the second writer's points through partial_success, and report.
    Reject,
}

/// A value that can be accumulated across points.
trait Additive: Clone {
    /// Whether values may disagree on their bounds, so that [`Additive::check_bounds`]
    /// must run (explicit-bucket histograms).
    const HAS_BOUNDS: bool = false;
    /// Whether this value carries a number at all (NaN does not).
    fn has_number(&self) -> bool;
    /// Whether this cumulative value is lower than `previous`: a reset.
    fn is_below(&self, previous: &Self) -> bool;
    /// Checks that `other` can be added, before anything is changed.
    fn check_bounds(&self, other: &Self) -> Result<(), BoundsMismatch>;
    /// Adds `other`; only called after `check_bounds` passed.
    fn accumulate(&mut self, other: &Self);
    /// Whether a resent point carries this very value.
    fn same_as(&self, other: &Self) -> bool;
    fn into_stream_value(self) -> StreamValue;
    /// The value borrowed, as [`Additive::into_stream_value`] would give it.
    fn as_value_ref(&self) -> ValueRef<'_>;
}

impl Additive for Number {
    fn has_number(&self) -> bool {
        !self.is_nan()
    }
    fn is_below(&self, previous: &Self) -> bool {
        Number::is_below(*self, *previous)
    }
    fn check_bounds(&self, _: &Self) -> Result<(), BoundsMismatch> {
        Ok(())
    }
    fn accumulate(&mut self, other: &Self) {
        *self = self.plus(*other);
    }
    fn same_as(&self, other: &Self) -> bool {
        self.same(*other)
    }
    fn into_stream_value(self) -> StreamValue {
        StreamValue::Number(self)
    }
    fn as_value_ref(&self) -> ValueRef<'_> {
        ValueRef::Number(*self)
    }
}

impl Additive for Histogram {
    const HAS_BOUNDS: bool = true;
    fn has_number(&self) -> bool {
        true
    }
    fn is_below(&self, previous: &Self) -> bool {
        self.count < previous.count
    }
    fn check_bounds(&self, other: &Self) -> Result<(), BoundsMismatch> {
        Histogram::check_bounds(self, other)
    }
    fn accumulate(&mut self, other: &Self) {
        // `check_bounds` ran first, so the bounds agree and this cannot fail.
        let _ = Histogram::add(self, other);
    }
    fn same_as(&self, other: &Self) -> bool {
        self == other
    }
    fn into_stream_value(self) -> StreamValue {
        StreamValue::Histogram(self)
    }
    fn as_value_ref(&self) -> ValueRef<'_> {
        ValueRef::Histogram(self)
    }
}

impl Additive for ExpHistogram {
    fn has_number(&self) -> bool {
        true
    }
    fn is_below(&self, previous: &Self) -> bool {
        self.count < previous.count
    }
    fn check_bounds(&self, _: &Self) -> Result<(), BoundsMismatch> {
        Ok(())
    }
    fn accumulate(&mut self, other: &Self) {
        ExpHistogram::add(self, other);
    }
    fn same_as(&self, other: &Self) -> bool {
        self == other
    }
    fn into_stream_value(self) -> StreamValue {
        StreamValue::ExpHistogram(self)
    }
    fn as_value_ref(&self) -> ValueRef<'_> {
        ValueRef::ExpHistogram(self)
    }
}

impl Additive for Summary {
    fn has_number(&self) -> bool {
        !self.sum.is_nan()
    }
    fn is_below(&self, previous: &Self) -> bool {
        self.count < previous.count
    }
    fn check_bounds(&self, _: &Self) -> Result<(), BoundsMismatch> {
        Ok(())
    }
    fn accumulate(&mut self, other: &Self) {
        Summary::add(self, other);
    }
    fn same_as(&self, other: &Self) -> bool {
        self == other
    }
    fn into_stream_value(self) -> StreamValue {
        StreamValue::Summary(self)
    }
    fn as_value_ref(&self) -> ValueRef<'_> {
        ValueRef::Summary(self)
    }
}

/// Whether every stored value (a base, then each run's or chain's) takes `value`: histogram
/// bounds must agree, checked before anything changes.
fn check_stored<'v, T: Additive + 'v>(
    value: &T,
    base: &'v Option<T>,
    stored: impl Iterator<Item = &'v T>,
) -> Result<(), BoundsMismatch> {
    if !T::HAS_BOUNDS {
        return Ok(());
    }
    for existing in base.iter().chain(stored) {
        existing.check_bounds(value)?;
    }
    Ok(())
}

/// Adds `value` to an optional total (the first value becomes the total).
fn add_into<T: Additive>(total: &mut Option<T>, value: &T) {
    match total {
        Some(total) => total.accumulate(value),
        None => *total = Some(value.clone()),
    }
}

/// What applying one point did, as runs and chains report it.
struct Step {
    result: Result<(), Refusal>,
    finding: Option<Finding>,
    /// A run's value went down and was folded into the base.
    reset: bool,
}

impl Step {
    fn applied(finding: Option<Finding>) -> Step {
        Step {
            result: Ok(()),
            finding,
            reset: false,
        }
    }

    fn dropped(reason: DropReason) -> Step {
        Step {
            result: Err(Refusal::Drop(reason)),
            finding: None,
            reset: false,
        }
    }

    fn refused(refusal: Refusal) -> Step {
        Step {
            result: Err(refusal),
            finding: None,
            reset: false,
        }
    }

    /// A point that is `finding`: refused under `reject`, else refused with `otherwise`
    /// (a duplicate that happens to be evidence too).
    fn evidence(finding: Finding, policy: CollisionPolicy, otherwise: Refusal) -> Step {
        let refusal = match policy {
            CollisionPolicy::Report => otherwise,
            CollisionPolicy::Reject => Refusal::Collision(finding.evidence),
        };
        Step {
            result: Err(refusal),
            finding: Some(finding),
            reset: false,
        }
    }

    /// A point that is `finding`, refused because the policy is `reject`.
    fn rejected(finding: Finding) -> Step {
        Step::evidence(
            finding,
            CollisionPolicy::Reject,
            Refusal::Collision(finding.evidence),
        )
    }
}

/// The part of a writer id that names a run: the pid of a unix socket peer, else 0 (a
/// connection does not name a run: one process reconnects).
fn pid_key(writer: u64) -> u64 {
    if writer & PID_WRITER != 0 { writer } else { 0 }
}

/// Time in milliseconds, saturating: precise enough to compare export intervals.
fn millis(nanos: u64) -> u32 {
    u32::try_from(nanos / 1_000_000).unwrap_or(u32::MAX)
}

/// How a stream accumulates, decided by its metric identity. Histogram, summary and delta
/// state is boxed: every stream pays for the largest variant, and most streams are
/// cumulative numbers.
#[derive(Clone, Debug)]
enum Accumulator {
    Numbers(Runs<Number>),
    DeltaNumbers(Box<Chains<Number>>),
    Histograms(Box<Runs<Histogram>>),
    DeltaHistograms(Box<Chains<Histogram>>),
    ExpHistograms(Box<Runs<ExpHistogram>>),
    DeltaExpHistograms(Box<Chains<ExpHistogram>>),
    Summaries(Box<Runs<Summary>>),
}

/// One stream's state.
#[derive(Clone, Debug)]
pub struct Stream {
    description: Arc<str>,
    /// Values that went down within a run and were folded.
    resets: u32,
    /// The latest point had NO_RECORDED_VALUE: the sender removed the stream.
    stale: bool,
    rule: Rule,
    /// Set by the first point that shows writers the store cannot tell apart: from then on
    /// the stream's total is unreliable, and answers that include it say so.
    unreliable: Option<Evidence>,
    accumulator: Accumulator,
}

/// One writer's part of a stream (a run, or a delta chain), for queries.
#[derive(Clone, Debug, PartialEq)]
pub struct RunState {
    /// The run's start time; a chain's earliest remembered start; 0 for gauges.
    pub start: u64,
    pub last_time: u64,
    /// The writer's pid, when it wrote over the unix socket.
    pub pid: Option<u32>,
    /// Counted in the stream's current value: false for a gauge or up-down counter run
    /// that stopped while others went on, which leaves the total like a dead instance.
    pub live: bool,
    /// Its points are refused (`collisions.policy: reject`).
    pub refused: bool,
    pub value: Option<StreamValue>,
}

/// An owned copy of a stream's state, for queries.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamState {
    /// Start time of the most recently written run (0 for gauges and unknown starts).
    pub start: u64,
    pub last_time: u64,
    pub resets: u64,
    pub stale: bool,
    /// `None` until a point with a number arrives, and for a stale gauge.
    pub value: Option<StreamValue>,
    /// The writers' runs or chains, when there is more than one; empty otherwise.
    pub runs: Vec<RunState>,
    /// Evidence that the writers cannot be told apart: the value is unreliable.
    pub unreliable: Option<Evidence>,
}

impl Stream {
    /// An empty stream for `metric`; the first point is applied with [`Stream::apply`].
    pub fn new(metric: &MetricId, description: Arc<str>) -> Stream {
        let delta = metric.temporality == Some(Temporality::Delta);
        let rule = Rule {
            counting: metric.counts_events(),
            by_start: metric.kind != Kind::Gauge,
        };
        let accumulator = match (metric.kind, delta) {
            (Kind::Gauge | Kind::Sum, false) => Accumulator::Numbers(Runs::default()),
            (Kind::Gauge | Kind::Sum, true) => Accumulator::DeltaNumbers(Box::default()),
            (Kind::Histogram, false) => Accumulator::Histograms(Box::default()),
            (Kind::Histogram, true) => Accumulator::DeltaHistograms(Box::default()),
            (Kind::ExponentialHistogram, false) => Accumulator::ExpHistograms(Box::default()),
            (Kind::ExponentialHistogram, true) => Accumulator::DeltaExpHistograms(Box::default()),
            (Kind::Summary, _) => Accumulator::Summaries(Box::default()),
        };
        Stream {
            description,
            resets: 0,
            stale: false,
            rule,
            unreliable: None,
            accumulator,
        }
    }

    pub fn description(&self) -> &Arc<str> {
        &self.description
    }

    /// Applies one point written by `writer` (`collision::writer_id`: a pid for unix socket
    /// peers, else a hash of the connection; 0 if unknown) and says whether it is evidence
    /// of a second writer.
    ///
    /// # Errors
    /// `Refusal` when the point is a duplicate, out of order, an overlapping delta from
    /// its own writer, a histogram with other bounds, or (with [`CollisionPolicy::Reject`])
    /// evidence of a collision; the stream is unchanged then.
    pub fn apply(
        &mut self,
        point: Point,
        writer: u64,
        policy: CollisionPolicy,
    ) -> (Result<(), Refusal>, Option<Finding>) {
        let Point { start, time, value } = point;
        let removed = matches!(value, Value::NoRecordedValue);
        let context = runs::Context {
            writer,
            policy,
            rule: self.rule,
        };
        let step = match (&mut self.accumulator, value) {
            (Accumulator::Numbers(runs), Value::Number(number)) => {
                runs.apply(start, time, Some(number), context)
            }
            (Accumulator::Numbers(runs), Value::NoRecordedValue) => {
                runs.apply(start, time, None, context)
            }
            (Accumulator::DeltaNumbers(chains), Value::Number(number)) => {
                chains.apply(start, time, Some(number), context)
            }
            (Accumulator::DeltaNumbers(chains), Value::NoRecordedValue) => {
                chains.apply(start, time, None, context)
            }
            (Accumulator::Histograms(runs), Value::Histogram(histogram)) => {
                runs.apply(start, time, Some(histogram), context)
            }
            (Accumulator::Histograms(runs), Value::NoRecordedValue) => {
                runs.apply(start, time, None, context)
            }
            (Accumulator::DeltaHistograms(chains), Value::Histogram(histogram)) => {
                chains.apply(start, time, Some(histogram), context)
            }
            (Accumulator::DeltaHistograms(chains), Value::NoRecordedValue) => {
                chains.apply(start, time, None, context)
            }
            (Accumulator::ExpHistograms(runs), Value::ExpHistogram(histogram)) => {
                runs.apply(start, time, Some(histogram), context)
            }
            (Accumulator::ExpHistograms(runs), Value::NoRecordedValue) => {
                runs.apply(start, time, None, context)
            }
            (Accumulator::DeltaExpHistograms(chains), Value::ExpHistogram(histogram)) => {
                chains.apply(start, time, Some(histogram), context)
            }
            (Accumulator::DeltaExpHistograms(chains), Value::NoRecordedValue) => {
                chains.apply(start, time, None, context)
            }
            (Accumulator::Summaries(runs), Value::Summary(summary)) => {
                runs.apply(start, time, Some(summary), context)
            }
            (Accumulator::Summaries(runs), Value::NoRecordedValue) => {
                runs.apply(start, time, None, context)
            }
            // A value of the wrong shape for the stream cannot happen: the kind is part of
            // the stream's identity. It is ignored rather than trusted.
            _ => Step::applied(None),
        };
        if step.result.is_ok() {
            self.stale = removed;
        }
        if step.reset {
            self.resets = self.resets.saturating_add(1);
        }
        if let Some(finding) = step.finding
            && !finding.evidence.repairable()
            && self.unreliable.is_none()
        {
            self.unreliable = Some(finding.evidence);
        }
        (step.result, step.finding)
    }

    /// Whether the writers of this stream cannot be told apart.
    pub fn is_unreliable(&self) -> bool {
        self.unreliable.is_some()
    }

    /// What the stream adds to an answer: its value borrowed where one run or chain holds
    /// it all, else the state [`Stream::state`] works out.
    pub fn current(&self) -> Current<'_> {
        fn borrowed<T: Additive>(one: Option<Option<&T>>) -> Option<Option<ValueRef<'_>>> {
            one.map(|value| value.map(Additive::as_value_ref))
        }
        let one = match &self.accumulator {
            Accumulator::Numbers(runs) => borrowed(runs.single()),
            Accumulator::DeltaNumbers(chains) => borrowed(chains.single()),
            Accumulator::Histograms(runs) => borrowed(runs.single()),
            Accumulator::DeltaHistograms(chains) => borrowed(chains.single()),
            Accumulator::ExpHistograms(runs) => borrowed(runs.single()),
            Accumulator::DeltaExpHistograms(chains) => borrowed(chains.single()),
            Accumulator::Summaries(runs) => borrowed(runs.single()),
        };
        match one {
            Some(value) => Current::One(value),
            None => Current::Worked(self.state()),
        }
    }

    /// The evidence that its writers cannot be told apart, if any.
    pub fn unreliable(&self) -> Option<Evidence> {
        self.unreliable
    }

    /// An owned copy of the stream's state.
    pub fn state(&self) -> StreamState {
        let rule = self.rule;
        let summary = match &self.accumulator {
            Accumulator::Numbers(runs) => runs.state(rule),
            Accumulator::DeltaNumbers(chains) => chains.state(),
            Accumulator::Histograms(runs) => runs.state(rule),
            Accumulator::DeltaHistograms(chains) => chains.state(),
            Accumulator::ExpHistograms(runs) => runs.state(rule),
            Accumulator::DeltaExpHistograms(chains) => chains.state(),
            Accumulator::Summaries(runs) => runs.state(rule),
        };
        StreamState {
            start: summary.start,
            last_time: summary.last_time,
            resets: u64::from(self.resets),
            stale: self.stale,
            value: summary.value,
            runs: summary.parts,
            unreliable: self.unreliable,
        }
    }
}

/// What a stream adds to an answer ([`Stream::current`]).
#[derive(Debug)]
pub enum Current<'s> {
    /// One run or chain, nothing folded: its value as kept (`None` before a number).
    One(Option<ValueRef<'s>>),
    /// Several, or folded ones: the value and the parts worked out.
    Worked(StreamState),
}

impl Current<'_> {
    /// The value, and each writer's part when there is more than one.
    pub fn parts(&self) -> (Option<ValueRef<'_>>, &[RunState]) {
        match self {
            Current::One(value) => (*value, &[]),
            Current::Worked(state) => (
                state.value.as_ref().map(StreamValue::as_value_ref),
                &state.runs,
            ),
        }
    }
}

/// Where a stream's runs or chains stand, for [`StreamState`].
struct PartsSummary {
    value: Option<StreamValue>,
    start: u64,
    last_time: u64,
    /// Empty when there is one part.
    parts: Vec<RunState>,
}

#[cfg(test)]
mod tests;
