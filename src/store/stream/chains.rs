//! Chains: delta points grouped into chains of adjacent intervals.
//!
//! A delta point `[start, time]` counts what happened in that interval. One writer's points
//! follow each other: each starts where the one before ended, so they form a chain. A point
//! extends the chain whose latest end is its start, or starts a chain of its own; the
//! stream's value is the sum over every interval applied, whichever chain it is in, so
//! several writers sharing a resource all count.
//!
//! - A point is a duplicate only when its exact interval was applied already (a retry).
//!   Each chain remembers its latest [`BOUNDS`] boundaries, so a retry of any of its latest
//!   intervals is recognised.
//! - A point from a chain's own writer that starts at one of the chain's earlier boundaries
//!   overlaps an interval already applied: dropped and counted.
//! - An SDK that stamps milliseconds may send `[t-1ms, t]` then `[t, t]`: the second starts
//!   where the first ended and counts.
//! - Chains advancing side by side (their intervals overlap in time) are several writers:
//!   evidence of a collision, repaired, since every interval counts once.
//!
//! Points without a start time form one chain of their own, ordered by time.

use smallvec::SmallVec;

use super::runs::Context;
use super::{
    Additive, CollisionPolicy, Evidence, Finding, PartsSummary, Refusal, RunState, Step, add_into,
    check_stored, pid_key,
};
use crate::model::BoundsMismatch;
use crate::outcome::DropReason;
use crate::store::collision::pid_of;

/// Most chains one stream keeps; past it the chain that ended first is folded into the
/// base (its intervals still count; only their retries are no longer recognised).
pub(super) const MAX_CHAINS: usize = 32;

/// Boundaries each chain remembers: its latest seven intervals.
pub(super) const BOUNDS: usize = 8;

#[derive(Clone, Debug)]
pub(super) struct Chain<T> {
    /// The latest boundaries, oldest first: the intervals between neighbours were applied.
    /// For a chain of points without start times, their times.
    pub(super) bounds: [u64; BOUNDS],
    pub(super) len: u8,
    pub(super) startless: bool,
    /// Under `collisions.policy: reject`, the second writer's chain: its points are refused.
    pub(super) refused: Option<Evidence>,
    /// Who wrote the latest point.
    pub(super) writer: u64,
    pub(super) total: Option<T>,
}

impl<T: Additive> Chain<T> {
    pub(super) fn new(bounds: &[u64], startless: bool, writer: u64, value: Option<T>) -> Chain<T> {
        let mut chain = Chain {
            bounds: [0; BOUNDS],
            len: 0,
            startless,
            refused: None,
            writer,
            total: value.filter(Additive::has_number),
        };
        for bound in bounds {
            chain.push(*bound);
        }
        chain
    }

    fn bounds(&self) -> &[u64] {
        &self.bounds[..usize::from(self.len)]
    }

    fn first(&self) -> u64 {
        self.bounds[0]
    }

    fn end(&self) -> u64 {
        self.bounds[usize::from(self.len).saturating_sub(1)]
    }

    fn push(&mut self, bound: u64) {
        if usize::from(self.len) == BOUNDS {
            self.bounds.copy_within(1.., 0);
            self.len -= 1;
        }
        self.bounds[usize::from(self.len)] = bound;
        self.len += 1;
    }

    /// Whether `[start, end]` is one of the intervals applied.
    fn applied(&self, start: u64, end: u64) -> bool {
        !self.startless
            && self
                .bounds()
                .windows(2)
                .any(|pair| pair[0] == start && pair[1] == end)
    }

    /// Whether an interval from `start` overlaps one applied: `start` is a boundary before
    /// the chain's end.
    fn passed(&self, start: u64) -> bool {
        let bounds = self.bounds();
        !self.startless && bounds[..bounds.len() - 1].contains(&start)
    }

    fn add(&mut self, value: Option<T>, writer: u64) {
        if let Some(value) = value.filter(Additive::has_number) {
            add_into(&mut self.total, &value);
        }
        self.writer = writer;
    }

    fn state(&self) -> RunState {
        RunState {
            start: self.first(),
            last_time: self.end(),
            pid: pid_of(self.writer),
            live: true,
            refused: self.refused.is_some(),
            value: self.total.clone().map(Additive::into_stream_value),
        }
    }
}

/// A stream's delta chains.
#[derive(Clone, Debug)]
pub(super) struct Chains<T> {
    /// What folded chains counted.
    pub(super) base: Option<T>,
    /// In the order they were started.
    pub(super) chains: SmallVec<[Chain<T>; 1]>,
}

impl<T> Default for Chains<T> {
    fn default() -> Self {
        Chains {
            base: None,
            chains: SmallVec::new(),
        }
    }
}

impl<T: Additive> Chains<T> {
    /// Applies a delta point (`value` `None`: NO_RECORDED_VALUE).
    pub(super) fn apply(
        &mut self,
        start: u64,
        time: u64,
        value: Option<T>,
        context: Context,
    ) -> Step {
        let Context { writer, policy, .. } = context;
        if start == 0 {
            return self.apply_startless(time, value, writer);
        }
        if self.chains.iter().any(|chain| chain.applied(start, time)) {
            return Step::dropped(DropReason::Duplicate);
        }
        let own_overlap = writer != 0
            && self
                .chains
                .iter()
                .any(|chain| chain.writer == writer && chain.passed(start));
        if own_overlap {
            return Step::dropped(DropReason::OverlappingDelta);
        }
        if let Some(value) = &value
            && let Err(mismatch) = self.check_bounds(value)
        {
            return Step::refused(Refusal::Bounds(Box::new(mismatch)));
        }
        let pid = pid_key(writer);
        let extended = self.chains.iter().position(|chain| {
            !chain.startless && chain.end() == start && pid_key(chain.writer) == pid
        });
        let overlap = self.overlap(extended, start, time, writer);
        let finding = overlap.map(|(other, evidence)| Finding {
            evidence,
            other_writer: self.chains[other].writer,
        });
        let Some(index) = extended else {
            if let (Some(found), CollisionPolicy::Reject) = (finding, policy) {
                // A new chain beside another is the second writer.
                return Step::rejected(found);
            }
            self.chains
                .push(Chain::new(&[start, time], false, writer, value));
            self.shrink();
            return Step::applied(finding);
        };
        if let Some(evidence) = self.chains[index].refused {
            return Step::refused(Refusal::Collision(evidence));
        }
        if let (Some((other, evidence)), Some(found), CollisionPolicy::Reject) =
            (overlap, finding, policy)
        {
            // The chain started later is the second writer: refused from now on.
            if other > index {
                self.chains[other].refused = Some(evidence);
            } else {
                self.chains[index].refused = Some(evidence);
                return Step::rejected(found);
            }
        }
        let chain = &mut self.chains[index];
        chain.push(time);
        chain.add(value, writer);
        self.join(index);
        Step::applied(finding)
    }

    /// Points without a start time: one chain, in time order.
    fn apply_startless(&mut self, time: u64, value: Option<T>, writer: u64) -> Step {
        let Some(index) = self.chains.iter().position(|chain| chain.startless) else {
            self.chains.push(Chain::new(&[time], true, writer, value));
            self.shrink();
            return Step::applied(None);
        };
        let chain = &self.chains[index];
        if chain.bounds().contains(&time) {
            return Step::dropped(DropReason::Duplicate);
        }
        if time < chain.end() {
            return Step::dropped(DropReason::OutOfOrder);
        }
        if let Some(value) = &value
            && let Err(mismatch) = self.check_bounds(value)
        {
            return Step::refused(Refusal::Bounds(Box::new(mismatch)));
        }
        let chain = &mut self.chains[index];
        chain.push(time);
        chain.add(value, writer);
        Step::applied(None)
    }

    /// The first other chain whose remembered intervals overlap `[start, time]`.
    fn overlap(
        &self,
        own: Option<usize>,
        start: u64,
        time: u64,
        writer: u64,
    ) -> Option<(usize, Evidence)> {
        self.chains.iter().enumerate().find_map(|(index, chain)| {
            if Some(index) == own || chain.refused.is_some() || chain.startless {
                return None;
            }
            (chain.first() < time && start < chain.end()).then(|| {
                let pids = pid_key(writer) != 0 && pid_key(chain.writer) != 0;
                let evidence = if pids {
                    Evidence::DifferentProcesses
                } else {
                    Evidence::ChainsOverlap
                };
                (index, evidence)
            })
        })
    }

    /// Joins the chain at `index` with one that starts where it now ends (points that
    /// arrived out of order started it).
    fn join(&mut self, index: usize) {
        let end = self.chains[index].end();
        let pid = pid_key(self.chains[index].writer);
        let next = self.chains.iter().position(|chain| {
            !chain.startless
                && chain.refused.is_none()
                && chain.first() == end
                && pid_key(chain.writer) == pid
        });
        let Some(position) = next.filter(|next| *next != index) else {
            return;
        };
        let next = self.chains.remove(position);
        let index = if position < index { index - 1 } else { index };
        let chain = &mut self.chains[index];
        for bound in &next.bounds()[1..] {
            chain.push(*bound);
        }
        chain.writer = next.writer;
        if let Some(total) = &next.total {
            add_into(&mut chain.total, total);
        }
    }

    /// Keeps the chains within [`MAX_CHAINS`] by folding the one that ended first.
    fn shrink(&mut self) {
        if self.chains.len() <= MAX_CHAINS {
            return;
        }
        let oldest = self
            .chains
            .iter()
            .enumerate()
            .min_by_key(|(_, chain)| chain.end())
            .map(|(index, _)| index);
        if let Some(oldest) = oldest {
            let chain = self.chains.remove(oldest);
            if let Some(total) = &chain.total {
                add_into(&mut self.base, total);
            }
        }
    }

    fn check_bounds(&self, value: &T) -> Result<(), BoundsMismatch> {
        let stored = self.chains.iter().filter_map(|chain| chain.total.as_ref());
        check_stored(value, &self.base, stored)
    }

    /// The one chain's total when there is one chain and nothing folded: what
    /// [`Chains::state`] gives as the value then, borrowed.
    pub(super) fn single(&self) -> Option<Option<&T>> {
        match (&self.chains[..], &self.base) {
            ([chain], None) => Some(chain.total.as_ref()),
            _ => None,
        }
    }

    /// The sum of every interval applied, and the chains when there is more than one.
    pub(super) fn state(&self) -> PartsSummary {
        let mut total = self.base.clone();
        let mut parts = Vec::new();
        let mut latest: Option<&Chain<T>> = None;
        for chain in &self.chains {
            if let Some(value) = &chain.total {
                add_into(&mut total, value);
            }
            if latest.is_none_or(|latest| chain.end() > latest.end()) {
                latest = Some(chain);
            }
            if self.chains.len() > 1 {
                parts.push(chain.state());
            }
        }
        let start = latest.map_or(0, |chain| {
            let bounds = chain.bounds();
            if chain.startless || bounds.len() < 2 {
                0
            } else {
                bounds[bounds.len() - 2]
            }
        });
        PartsSummary {
            start,
            last_time: latest.map_or(0, Chain::end),
            value: total.map(Additive::into_stream_value),
            parts,
        }
    }
}
