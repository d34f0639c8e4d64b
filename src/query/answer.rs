//! `/api/v1/query` and `/metrics`: one metric's streams and retired totals, filtered with
//! `match`, folded by an `aggregate::Space`. A [`Builder`] takes each stream where a read of
//! the store meets it (`Store::read_streams`), so no stream is copied first; [`answer`]
//! reads the store for one query, `answers` once for many metrics.

use std::collections::HashMap;
use std::sync::Arc;

use crate::aggregate::{
    Agg, AggregateError, Aggregated, Contribution, Group, Place, Shape, Source, Space,
};
use crate::config::AggregationRule;
use crate::model::{
    Attributes, InstanceAttributes, InstanceKey, MetricId, Scope, StreamKey, ValueRef,
};
use crate::store::{Evidence, RetiredView, RunState, Store, Stream};
#[cfg(test)]
use crate::{model::StreamValue, store::StreamView};

use super::QueryError;
use super::json::attr_text;
use super::params::QueryParams;

/// An aggregated answer, ready to render.
#[derive(Debug)]
pub struct Answer {
    pub metric: Arc<MetricId>,
    pub agg: Agg,
    pub groups: Vec<Group>,
    /// What the reader must know to read the numbers right.
    pub notes: Vec<String>,
}

/// The aggregation a metric gets when none is asked for: the first matching rule, else sum.
pub fn default_agg(rules: &[AggregationRule], metric: &str) -> Agg {
    rules
        .iter()
        .find(|rule| rule.metric.is_match(metric))
        .map_or(Agg::Sum, |rule| rule.agg)
}

/// Aggregates `params.metric` as the parameters say.
///
/// # Errors
/// [`QueryError::UnknownMetric`], or [`QueryError::Aggregate`] for an aggregation the
/// metric's kind does not have.
pub fn answer(
    store: &Store,
    rules: &[AggregationRule],
    params: &QueryParams,
) -> Result<Answer, QueryError> {
    let (metric, _) = store
        .metric_identity(&params.metric)
        .ok_or_else(|| QueryError::UnknownMetric(params.metric.clone()))?;
    let agg = params
        .agg
        .unwrap_or_else(|| default_agg(rules, &metric.name));
    let selection = Selection {
        by: params.by.as_deref(),
        matches: &params.matches,
    };
    let (builder, retired) = read_with_retired(
        store,
        |name| name == params.metric,
        || {
            let mut builder = Builder::new(Arc::clone(&metric), agg, selection)?;
            let mut resources = Resources::new(store.instance_attributes());
            store.read_streams(|instance| {
                // Only an instance with streams of the metric is numbered.
                let mut entered = None;
                for (key, stream) in instance.iter() {
                    if key.metric.name == params.metric {
                        let entered = *entered.get_or_insert_with(|| resources.enter(instance.key));
                        builder.stream(
                            &resources.seen(entered, instance.key, instance.live),
                            key,
                            stream,
                        );
                    }
                }
            });
            Ok::<_, AggregateError>(builder)
        },
    );
    let mut builder = builder?;
    for total in &retired {
        builder.retired(total);
    }
    Ok(builder.finish())
}

/// At most this many reads of the streams for one answer; the last holds evictions off.
/// Evictions come a sweep at a time (a second apart at the default `instance_ttl`), so a
/// read meets one in both of the first two attempts only when it is slow.
const READ_ATTEMPTS: usize = 3;

/// `read` (a read of the streams) and then the retired totals of the metrics `wanted`, as
/// one state of the store. An instance evicted while `read` walked may have been met by it
/// and be in the totals as well: then `read` runs again, the last time with evictions held
/// off ([`Store::holding_evictions`]), so no instance is counted twice.
pub fn read_with_retired<T>(
    store: &Store,
    wanted: impl Fn(&str) -> bool,
    mut read: impl FnMut() -> T,
) -> (T, Vec<RetiredView>) {
    for _ in 1..READ_ATTEMPTS {
        let evictions = store.evictions();
        let streams = read();
        if let Some(retired) = store.retired_unless_evicted_since(evictions, &wanted) {
            return (streams, retired);
        }
    }
    store.holding_evictions(|| {
        let streams = read();
        (streams, store.retired_where(&wanted))
    })
}

/// How the streams of one answer are chosen and grouped.
#[derive(Clone, Copy, Default)]
pub struct Selection<'a> {
    pub by: Option<&'a [String]>,
    pub matches: &'a [(String, String)],
}

/// The instances one read of the store meets, numbered in the order met, and their
/// resources without the instance attributes: each distinct one is kept once (workers of
/// one service usually share theirs), so contributions find their group by its number.
pub struct Resources<'a> {
    instance_attributes: &'a InstanceAttributes,
    distinct: HashMap<Attributes, usize, foldhash::fast::RandomState>,
    resources: Vec<Attributes>,
    instances: usize,
}

/// An instance as [`Resources::enter`] numbered it: itself, and its resource.
#[derive(Clone, Copy, Debug)]
pub struct Entered {
    instance: usize,
    resource: usize,
}

/// An instance as a [`Builder`] takes its streams.
pub struct Seen<'r> {
    entered: Entered,
    resource: &'r Attributes,
    key: &'r InstanceKey,
    live: bool,
}

impl<'a> Resources<'a> {
    pub fn new(instance_attributes: &'a InstanceAttributes) -> Resources<'a> {
        Resources {
            instance_attributes,
            distinct: HashMap::default(),
            resources: Vec::new(),
            instances: 0,
        }
    }

    /// Numbers the next instance met, and its resource.
    pub fn enter(&mut self, instance: &Attributes) -> Entered {
        let resource = self.instance_attributes.strip(instance);
        let next = self.resources.len();
        let resource = *self
            .distinct
            .entry(resource)
            .or_insert_with_key(|resource| {
                self.resources.push(resource.clone());
                next
            });
        self.instances += 1;
        Entered {
            instance: self.instances - 1,
            resource,
        }
    }

    /// The instance `entered` names, for a builder.
    pub fn seen<'r>(&'r self, entered: Entered, key: &'r InstanceKey, live: bool) -> Seen<'r> {
        Seen {
            entered,
            resource: &self.resources[entered.resource],
            key,
            live,
        }
    }
}

/// A stream whose writers cannot be told apart, for the answer's note.
struct Unreliable {
    instance: InstanceKey,
    attributes: Arc<Attributes>,
    scope: Arc<Scope>,
    evidence: Evidence,
}

/// One metric's answer, built as its streams are met.
pub struct Builder<'q> {
    metric: Arc<MetricId>,
    agg: Agg,
    shape: Shape,
    matches: &'q [(String, String)],
    /// max, min, avg and count look at each writer's current value: a stream several
    /// processes write (one run each) contributes each live run.
    by_run: bool,
    space: Space<'q>,
    /// Whether groups are found by [`Place`] first (always, but in the test reference,
    /// which finds every one by its pairs).
    by_place: bool,
    /// Only the identity first seen for the name is aggregated; others are type conflicts.
    other_types: Vec<String>,
    unreliable: Vec<Unreliable>,
}

impl<'q> Builder<'q> {
    /// An empty answer for `metric`, aggregated with `agg` as `selection` says.
    ///
    /// # Errors
    /// [`AggregateError`] for an aggregation the metric's kind does not have.
    pub fn new(
        metric: Arc<MetricId>,
        agg: Agg,
        selection: Selection<'q>,
    ) -> Result<Builder<'q>, AggregateError> {
        let shape = Shape::of(&metric);
        Ok(Builder {
            space: Space::new(shape, agg, selection.by)?,
            by_run: agg != Agg::Sum && shape.is_numeric(),
            by_place: true,
            metric,
            agg,
            shape,
            matches: selection.matches,
            other_types: Vec::new(),
            unreliable: Vec::new(),
        })
    }

    /// Adds a stream of `instance` read in place.
    pub fn stream(&mut self, instance: &Seen<'_>, key: &StreamKey, stream: &Stream) {
        let current = stream.current();
        let (value, runs) = current.parts();
        self.add(instance, key, value, runs, stream.unreliable());
    }

    /// Adds a stream: its value (none yet: left out), each writer's part when there are
    /// several, and whether they can be told apart.
    fn add(
        &mut self,
        instance: &Seen<'_>,
        key: &StreamKey,
        value: Option<ValueRef<'_>>,
        runs: &[RunState],
        unreliable: Option<Evidence>,
    ) {
        let Some(value) = value else {
            return;
        };
        if !self.keep(&key.metric) {
            return;
        }
        let contribution = Contribution {
            resource: instance.resource,
            attributes: &key.attributes,
            source: Source::Instance(instance.entered.instance),
            live: instance.live,
            value,
        };
        if !selected(&contribution, self.matches) {
            return;
        }
        if let Some(evidence) = unreliable {
            self.unreliable.push(Unreliable {
                instance: Arc::clone(instance.key),
                attributes: Arc::clone(&key.attributes),
                scope: Arc::clone(&key.scope),
                evidence,
            });
        }
        let place = self.by_place.then_some(Place {
            resource: instance.entered.resource,
            attributes: &key.attributes,
        });
        if self.by_run && !runs.is_empty() {
            let runs = runs.iter().filter(|run| run.live);
            for value in runs.filter_map(|run| run.value.as_ref()) {
                let contribution = Contribution {
                    value: value.as_value_ref(),
                    ..contribution
                };
                self.space.add(&contribution, place);
            }
        } else {
            self.space.add(&contribution, place);
        }
    }

    /// Adds the retired totals of one key.
    pub fn retired(&mut self, total: &RetiredView) {
        if !self.keep(&total.metric) {
            return;
        }
        let contribution = Contribution {
            resource: &total.resource,
            attributes: &total.attributes,
            source: Source::Retired {
                instances: total.instances,
            },
            live: false,
            value: total.value.as_value_ref(),
        };
        if selected(&contribution, self.matches) {
            self.space.add(&contribution, None);
        }
    }

    /// Whether a stream of `candidate` is aggregated: of the metric's type, else noted.
    fn keep(&mut self, candidate: &MetricId) -> bool {
        let same = std::ptr::eq(candidate, &*self.metric) || candidate.same_type(&self.metric);
        if !same {
            let description = candidate.describe();
            if !self.other_types.contains(&description) {
                self.other_types.push(description);
            }
        }
        same
    }

    /// The answer, with the notes its groups need.
    pub fn finish(mut self) -> Answer {
        let groups = self.space.finish();
        let mut notes = Vec::new();
        if !self.unreliable.is_empty() {
            // The same streams named on every read while they are stored, whatever the
            // order of the tables they were read from (which changes as a table grows): by
            // where their instance, attributes and scope are kept, which stays put.
            self.unreliable.sort_unstable_by_key(|stream| {
                (
                    Arc::as_ptr(&stream.instance),
                    Arc::as_ptr(&stream.attributes),
                    Arc::as_ptr(&stream.scope),
                )
            });
            notes.push(unreliable_note(&self.unreliable));
        }
        let too_large = |group: &Group| matches!(group.value, Aggregated::Number(total) if total.to_number().is_none());
        if groups.iter().any(too_large) {
            notes.push(
                "an integer total is outside the 64-bit range and is given as the nearest double"
                    .to_string(),
            );
        }
        if self.shape == Shape::Summary {
            notes.push(format!(
                "summary quantiles cannot be merged across instances: each instance's are at /api/v1/series?metric={}",
                self.metric.name
            ));
        }
        if groups.iter().any(|group| {
            matches!(
                group.value,
                Aggregated::Histogram {
                    bounds_differ: true,
                    ..
                }
            )
        }) {
            notes.push(
                "instances disagree on this histogram's bucket bounds: count, sum, min and max are merged, buckets are not"
                    .to_string(),
            );
        }
        if !self.other_types.is_empty() {
            notes.push(format!(
                "streams of this name with another type ({}) are left out; see type_conflicts at /api/v1/stats",
                self.other_types.join("; ")
            ));
        }
        Answer {
            metric: self.metric,
            agg: self.agg,
            groups,
            notes,
        }
    }
}

/// Aggregates one metric from owned copies of its streams (each instance's together), as
/// the store's `state` works them out, finding every group by its pairs: what reading in
/// place, and finding groups by place, must give.
#[cfg(test)]
pub fn build<'s>(
    metric: Arc<MetricId>,
    agg: Agg,
    streams: impl IntoIterator<Item = &'s StreamView>,
    retired: &[RetiredView],
    instance_attributes: &InstanceAttributes,
    selection: Selection,
) -> Result<Answer, AggregateError> {
    let mut builder = Builder::new(metric, agg, selection)?;
    builder.by_place = false;
    let mut resources = Resources::new(instance_attributes);
    let mut last: Option<(&InstanceKey, Entered)> = None;
    for view in streams {
        let entered = match last {
            Some((instance, entered)) if Arc::ptr_eq(instance, &view.instance) => entered,
            _ => resources.enter(&view.instance),
        };
        last = Some((&view.instance, entered));
        let value = view.state.value.as_ref().map(StreamValue::as_value_ref);
        builder.add(
            &resources.seen(entered, &view.instance, view.live),
            &view.key,
            value,
            &view.state.runs,
            view.state.unreliable,
        );
    }
    for total in retired {
        builder.retired(total);
    }
    Ok(builder.finish())
}

/// Most unreliable streams a note names; the rest are counted.
const NAMED_STREAMS: usize = 3;

/// The note for streams whose writers cannot be told apart: which, why, and the fix.
fn unreliable_note(streams: &[Unreliable]) -> String {
    let named: Vec<String> = streams
        .iter()
        .take(NAMED_STREAMS)
        .map(|stream| {
            format!(
                "{} of instance {} ({})",
                pairs(&stream.attributes),
                instance_name(&stream.instance),
                stream.evidence.describe()
            )
        })
        .collect();
    let more = match streams.len().saturating_sub(NAMED_STREAMS) {
        0 => String::new(),
        more => format!(" and {more} more"),
    };
    format!(
        "unreliable total: {} stream(s) in this answer are written by several processes that fanin cannot tell apart: {}{more}. Fix: {}; see /api/v1/collisions",
        streams.len(),
        named.join("; "),
        crate::store::FIX
    )
}

/// An instance as a reader knows it: its `service.instance.id`, else its whole resource.
fn instance_name(resource: &Attributes) -> String {
    match resource.get("service.instance.id") {
        Some(id) => format!("service.instance.id={}", attr_text(id)),
        None => pairs(resource),
    }
}

/// `{key=value, ...}`, values as `match` compares them.
fn pairs(attributes: &Attributes) -> String {
    let pairs: Vec<String> = attributes
        .iter()
        .map(|(key, value)| format!("{key}={}", attr_text(value)))
        .collect();
    format!("{{{}}}", pairs.join(", "))
}

/// Whether every `match` holds: the attribute exists and renders as the wanted text. A point
/// attribute hides a resource attribute of the same key.
fn selected(contribution: &Contribution<'_>, matches: &[(String, String)]) -> bool {
    matches.iter().all(|(key, wanted)| {
        contribution
            .attributes
            .get(key)
            .or_else(|| contribution.resource.get(key))
            .is_some_and(|value| attr_text(value) == *wanted)
    })
}
