//! Runs: cumulative points grouped by the writer's run they belong to.
//!
//! A run is named by its points' start time, and over the unix socket by the peer pid too;
//! gauges carry no start time, so their runs are named by the pid alone (one run when it is
//! unknown). One process keeps one start time while it lives and takes a newer one when it
//! restarts, so:
//!
//! - one writer that restarts opens a new run, and its old run keeps its last value: the
//!   total of a folded reset, without folding;
//! - several writers sharing a resource keep one run each, side by side, and the stream's
//!   value is their sum. Two runs alive at the same time (each began before the other's
//!   latest point) are two processes: evidence, but the total stays exact;
//! - within a run, a point not newer than the run's latest is a duplicate or out of order;
//!   a counting value that goes down is a reset of that run (its value is folded into the
//!   base) and evidence of writers sharing one start time, which no run can tell apart.
//!
//! Counting kinds (counters, histograms, summaries) keep every run's count. For gauges and
//! up-down counters, which describe the present, a run that stays silent for a few export
//! intervals while others advance leaves the total, as a dead instance's share would.
//! Runs are bounded per stream; past the bound the oldest ended run is folded into the base.

use smallvec::SmallVec;

use super::{
    Additive, CollisionPolicy, Evidence, Finding, PartsSummary, Refusal, RunState, Step, add_into,
    check_stored, millis, pid_key,
};
use crate::model::BoundsMismatch;
use crate::outcome::DropReason;
use crate::store::collision::pid_of;

/// Most runs one stream keeps apart: more than the writers of any pre-fork server that
/// shares one resource, with room for the runs of recycled workers.
pub(super) const MAX_RUNS: usize = 32;

/// How many of the longest export interval a gauge or up-down counter run may stay silent
/// while other runs advance before it leaves the total.
const SILENT_INTERVALS: u64 = 3;

/// What a stream's kind makes of its runs.
#[derive(Clone, Copy, Debug)]
pub(super) struct Rule {
    /// The kind counts events (counters, histograms, summaries): a value that goes down is a
    /// reset, and a run that ends keeps its count. Otherwise (gauges, up-down counters) the
    /// value is the present, and a run that ends leaves the total.
    pub counting: bool,
    /// Runs are named by start time (every cumulative kind); gauges have none.
    pub by_start: bool,
}

/// Who wrote a point, under which policy, into which kind of stream.
#[derive(Clone, Copy)]
pub(super) struct Context {
    pub writer: u64,
    pub policy: CollisionPolicy,
    pub rule: Rule,
}

#[derive(Clone, Debug)]
pub(super) struct Run<T> {
    /// The start time that names the run; for gauges, the time of its first point.
    pub(super) start: u64,
    /// Time of the run's latest point.
    pub(super) last: u64,
    /// Time between the run's latest two points (0 while it has one).
    pub(super) gap_ms: u32,
    /// The latest point had NO_RECORDED_VALUE.
    pub(super) stale: bool,
    /// Under `collisions.policy: reject`, the second writer's run: its points are refused.
    pub(super) refused: Option<Evidence>,
    /// Who wrote the latest point, and who wrote before that one changed.
    pub(super) writer: u64,
    pub(super) previous_writer: u64,
    /// The latest value with a number.
    pub(super) value: Option<T>,
}

impl<T: Additive> Run<T> {
    fn is_named(&self, start: u64, pid: u64, rule: Rule) -> bool {
        pid_key(self.writer) == pid && (!rule.by_start || self.start == start)
    }

    /// When the run began, as far as its points tell; `None` for an unknown start time.
    fn began(&self, rule: Rule) -> Option<u64> {
        began(self.start, rule)
    }

    /// Whether `value` (`None`: NO_RECORDED_VALUE) is what the run's latest point carried.
    fn holds(&self, value: &Option<T>) -> bool {
        match (value, &self.value) {
            (None, _) => self.stale,
            (Some(value), Some(current)) => !self.stale && value.same_as(current),
            (Some(value), None) => !value.has_number(),
        }
    }

    fn state(&self, rule: Rule, live: bool) -> RunState {
        RunState {
            start: if rule.by_start { self.start } else { 0 },
            last_time: self.last,
            pid: pid_of(self.writer),
            live,
            refused: self.refused.is_some(),
            value: self.value.clone().map(Additive::into_stream_value),
        }
    }
}

/// When a run named `start` began; gauge runs are named by their first point's time.
fn began(start: u64, rule: Rule) -> Option<u64> {
    (start != 0 || !rule.by_start).then_some(start)
}

/// Which runs have stopped: the newest point of the stream, and how long a run may stay
/// silent (a few times the longest export interval any run shows).
struct Clock {
    newest: u64,
    silence: Option<u64>,
}

impl Clock {
    fn of<T>(runs: &[Run<T>]) -> Clock {
        let newest = runs.iter().map(|run| run.last).max().unwrap_or(0);
        let gap = runs.iter().map(|run| run.gap_ms).max().unwrap_or(0);
        Clock {
            newest,
            silence: (gap > 0).then(|| u64::from(gap) * 1_000_000 * SILENT_INTERVALS),
        }
    }

    fn ended<T>(&self, run: &Run<T>) -> bool {
        self.silence
            .is_some_and(|silence| self.newest > run.last.saturating_add(silence))
    }
}

/// A stream's runs.
#[derive(Clone, Debug)]
pub(super) struct Runs<T> {
    /// Counting kinds: what runs counted before a reset, and what folded runs counted.
    pub(super) base: Option<T>,
    /// In the order they were opened.
    pub(super) runs: SmallVec<[Run<T>; 1]>,
}

impl<T> Default for Runs<T> {
    fn default() -> Self {
        Runs {
            base: None,
            runs: SmallVec::new(),
        }
    }
}

impl<T: Additive> Runs<T> {
    /// Applies a point (`value` `None`: NO_RECORDED_VALUE) to the run it names.
    pub(super) fn apply(
        &mut self,
        start: u64,
        time: u64,
        value: Option<T>,
        context: Context,
    ) -> Step {
        let rule = context.rule;
        let pid = pid_key(context.writer);
        let name = if rule.by_start { start } else { 0 };
        match self
            .runs
            .iter()
            .position(|run| run.is_named(name, pid, rule))
        {
            Some(index) => self.continue_run(index, time, value, context),
            None => {
                let start = if rule.by_start { start } else { time };
                self.open_run(start, time, value, context)
            }
        }
    }

    fn continue_run(
        &mut self,
        index: usize,
        time: u64,
        value: Option<T>,
        context: Context,
    ) -> Step {
        let Context {
            writer,
            policy,
            rule,
        } = context;
        let run = &self.runs[index];
        if let Some(evidence) = run.refused {
            return Step::refused(Refusal::Collision(evidence));
        }
        if time < run.last {
            return Step::dropped(DropReason::OutOfOrder);
        }
        if time == run.last {
            let other_writer = writer != 0 && run.writer != 0 && writer != run.writer;
            if other_writer && !run.holds(&value) {
                let finding = Finding {
                    evidence: Evidence::SameTimeOtherValue,
                    other_writer: run.writer,
                };
                return Step::evidence(finding, policy, Refusal::Drop(DropReason::Duplicate));
            }
            return Step::dropped(DropReason::Duplicate);
        }
        if let Some(value) = &value
            && let Err(mismatch) = self.check_bounds(value)
        {
            return Step::refused(Refusal::Bounds(Box::new(mismatch)));
        }
        let went_down = rule.counting
            && matches!((&value, &run.value), (Some(value), Some(current))
                if value.has_number() && value.is_below(current));
        let alternates = writer != 0 && writer != run.writer && writer == run.previous_writer;
        let mut finding = if went_down {
            Some(Evidence::WentDownWithoutNewStart)
        } else if alternates {
            Some(Evidence::ConnectionsAlternate)
        } else {
            None
        }
        .map(|evidence| Finding {
            evidence,
            other_writer: run.writer,
        });
        if let (Some(found), CollisionPolicy::Reject) = (finding, policy) {
            return Step::rejected(found);
        }
        if finding.is_none()
            && let Some((other, evidence)) =
                self.overlap(Some(index), run.began(rule), time, writer, rule)
        {
            let found = Finding {
                evidence,
                other_writer: self.runs[other].writer,
            };
            finding = Some(found);
            if policy == CollisionPolicy::Reject {
                // The run opened later is the second writer: its points are refused from
                // now on, and what it counted so far stays (totals never go back).
                if other > index {
                    self.runs[other].refused = Some(evidence);
                } else {
                    self.runs[index].refused = Some(evidence);
                    return Step::rejected(found);
                }
            }
        }
        let Runs { base, runs } = self;
        let run = &mut runs[index];
        if went_down && let Some(previous) = run.value.take() {
            add_into(base, &previous);
        }
        match value {
            None => {
                run.stale = true;
                if !rule.counting {
                    run.value = None;
                }
            }
            Some(value) => {
                run.stale = false;
                if value.has_number() {
                    run.value = Some(value);
                }
            }
        }
        run.gap_ms = millis(time - run.last);
        run.last = time;
        if writer != run.writer {
            run.previous_writer = run.writer;
            run.writer = writer;
        }
        Step {
            result: Ok(()),
            finding,
            reset: went_down,
        }
    }

    fn open_run(&mut self, start: u64, time: u64, value: Option<T>, context: Context) -> Step {
        let Context {
            writer,
            policy,
            rule,
        } = context;
        if let Some(value) = &value
            && let Err(mismatch) = self.check_bounds(value)
        {
            return Step::refused(Refusal::Bounds(Box::new(mismatch)));
        }
        let mut finding = self
            .overlap(None, began(start, rule), time, writer, rule)
            .map(|(other, evidence)| Finding {
                evidence,
                other_writer: self.runs[other].writer,
            });
        if let (Some(found), CollisionPolicy::Reject) = (finding, policy) {
            // A new run alive beside another is the second writer.
            return Step::rejected(found);
        }
        self.runs.push(Run {
            start,
            last: time,
            gap_ms: 0,
            stale: value.is_none(),
            refused: None,
            writer,
            previous_writer: 0,
            value: value.filter(Additive::has_number),
        });
        if let Some(folded) = self.shrink(rule) {
            // Writers the store could not keep apart outweigh ones it could.
            finding = Some(folded);
        }
        Step::applied(finding)
    }

    /// The first other run alive at the same time as one that began at `began` and has a
    /// point at `last`: one process never has two runs of a stream at once.
    fn overlap(
        &self,
        own: Option<usize>,
        began: Option<u64>,
        last: u64,
        writer: u64,
        rule: Rule,
    ) -> Option<(usize, Evidence)> {
        if self.runs.len() < 1 + usize::from(own.is_some()) {
            return None;
        }
        let began = began?;
        self.runs.iter().enumerate().find_map(|(index, run)| {
            if Some(index) == own || run.refused.is_some() {
                return None;
            }
            let other_began = run.began(rule)?;
            (began < run.last && other_began < last).then(|| {
                let pids = pid_key(writer) != 0 && pid_key(run.writer) != 0;
                let evidence = if pids {
                    Evidence::DifferentProcesses
                } else {
                    Evidence::RunsOverlap
                };
                (index, evidence)
            })
        })
    }

    /// Keeps the runs within [`MAX_RUNS`]: the oldest run that has ended is folded into the
    /// base (counting kinds) or dropped. When none has ended, more writers than the bound
    /// are alive, and folding the oldest live one is reported: if it writes again it counts
    /// as a new run.
    fn shrink(&mut self, rule: Rule) -> Option<Finding> {
        if self.runs.len() <= MAX_RUNS {
            return None;
        }
        let clock = Clock::of(&self.runs);
        let oldest = |ended: bool| {
            self.runs
                .iter()
                .enumerate()
                .filter(|(_, run)| !ended || clock.ended(run))
                .min_by_key(|(_, run)| run.last)
                .map(|(index, _)| index)
        };
        let (index, forced) = match oldest(true) {
            Some(index) => (index, false),
            None => (oldest(false)?, true),
        };
        let run = self.runs.remove(index);
        if rule.counting
            && let Some(value) = &run.value
        {
            add_into(&mut self.base, value);
        }
        forced.then_some(Finding {
            evidence: Evidence::TooManyWriters,
            other_writer: run.writer,
        })
    }

    /// Every stored value must take `value` (histogram bounds), before anything changes.
    fn check_bounds(&self, value: &T) -> Result<(), BoundsMismatch> {
        let stored = self.runs.iter().filter_map(|run| run.value.as_ref());
        check_stored(value, &self.base, stored)
    }

    /// The one run's value when there is one run and nothing folded: what [`Runs::state`]
    /// gives as the value then, borrowed.
    pub(super) fn single(&self) -> Option<Option<&T>> {
        match (&self.runs[..], &self.base) {
            ([run], None) => Some(run.value.as_ref()),
            _ => None,
        }
    }

    /// The value (counting kinds: base and every run; otherwise the runs still writing),
    /// and the runs when there is more than one.
    pub(super) fn state(&self, rule: Rule) -> PartsSummary {
        if let ([run], None) = (&self.runs[..], &self.base) {
            return PartsSummary {
                start: if rule.by_start { run.start } else { 0 },
                last_time: run.last,
                value: run.value.clone().map(Additive::into_stream_value),
                parts: Vec::new(),
            };
        }
        let clock = Clock::of(&self.runs);
        let mut total = if rule.counting {
            self.base.clone()
        } else {
            None
        };
        let mut parts = Vec::new();
        let mut latest: Option<&Run<T>> = None;
        for run in &self.runs {
            let live = !clock.ended(run);
            if (rule.counting || live)
                && let Some(value) = &run.value
            {
                add_into(&mut total, value);
            }
            if latest.is_none_or(|latest| run.last > latest.last) {
                latest = Some(run);
            }
            if self.runs.len() > 1 {
                parts.push(run.state(rule, live));
            }
        }
        PartsSummary {
            start: latest.map_or(0, |run| if rule.by_start { run.start } else { 0 }),
            last_time: latest.map_or(0, |run| run.last),
            value: total.map(Additive::into_stream_value),
            parts,
        }
    }
}
