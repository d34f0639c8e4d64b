//! `/api/v1/query` and `/metrics`: one metric's streams and retired totals, filtered with
//! `match`, handed to `aggregate::space`. [`answer`] gathers them from the store for one
//! query; [`build`] works on a snapshot, so `/metrics` can take one for every metric.

use std::collections::HashMap;
use std::sync::Arc;

use crate::aggregate::{self, Agg, AggregateError, Aggregated, Contribution, Group, Shape, Source};
use crate::config::AggregationRule;
use crate::model::{Attributes, InstanceAttributes, MetricId, StreamValue};
use crate::store::{RetiredView, Store, StreamView};

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
    let streams = store.streams(&params.metric);
    let retired = store.retired_totals(&params.metric);
    let selection = Selection {
        by: params.by.as_deref(),
        matches: &params.matches,
    };
    Ok(build(
        metric,
        agg,
        &streams,
        &retired,
        store.instance_attributes(),
        selection,
    )?)
}

/// How the streams of one answer are chosen and grouped.
#[derive(Clone, Copy, Default)]
pub struct Selection<'a> {
    pub by: Option<&'a [String]>,
    pub matches: &'a [(String, String)],
}

/// Aggregates one metric from a snapshot of its streams and retired totals.
///
/// # Errors
/// [`AggregateError`] for an aggregation the metric's kind does not have.
pub fn build<'s>(
    metric: Arc<MetricId>,
    agg: Agg,
    streams: impl IntoIterator<Item = &'s StreamView>,
    retired: &'s [RetiredView],
    instance_attributes: &InstanceAttributes,
    selection: Selection,
) -> Result<Answer, AggregateError> {
    let shape = Shape::of(&metric);
    // Only the identity first seen for the name is aggregated; others are type conflicts.
    let mut other_types: Vec<String> = Vec::new();
    let mut keep = |candidate: &MetricId| {
        let same = candidate.same_type(&metric);
        if !same {
            let description = candidate.describe();
            if !other_types.contains(&description) {
                other_types.push(description);
            }
        }
        same
    };

    // Each instance's resource without its instance attributes, computed once, and kept
    // once however many instances share it (workers of one service usually do): streams
    // refer to their instance by index, and contributions borrow the shared resource, which
    // lets `aggregate::space` find most groups by where their parts are.
    let mut index_of: HashMap<*const Attributes, usize, foldhash::fast::RandomState> =
        HashMap::default();
    let mut distinct: HashMap<Attributes, usize, foldhash::fast::RandomState> = HashMap::default();
    let mut resource_of: Vec<usize> = Vec::new();
    let mut kept: Vec<(usize, &StreamView, &StreamValue)> = Vec::new();
    for view in streams {
        let Some(value) = &view.state.value else {
            continue;
        };
        if !keep(&view.key.metric) {
            continue;
        }
        let index = *index_of
            .entry(Arc::as_ptr(&view.instance))
            .or_insert_with(|| {
                let resource = instance_attributes.strip(&view.instance);
                let next = distinct.len();
                resource_of.push(*distinct.entry(resource).or_insert(next));
                resource_of.len() - 1
            });
        kept.push((index, view, value));
    }
    let mut resources: Vec<Attributes> = vec![Attributes::default(); distinct.len()];
    for (resource, at) in distinct {
        resources[at] = resource;
    }
    let mut contributions = Vec::with_capacity(kept.len() + retired.len());
    let mut unreliable: Vec<&StreamView> = Vec::new();
    // max, min, avg and count look at each writer's current value: a stream several
    // processes write (one run each) contributes each live run.
    let by_run = agg != Agg::Sum && shape.is_numeric();
    for (index, view, value) in kept {
        let contribution = Contribution {
            resource: &resources[resource_of[index]],
            attributes: &view.key.attributes,
            source: Source::Instance(index),
            live: view.live,
            value,
        };
        if !selected(&contribution, selection.matches) {
            continue;
        }
        if view.state.unreliable.is_some() {
            unreliable.push(view);
        }
        if by_run && !view.state.runs.is_empty() {
            let runs = view.state.runs.iter().filter(|run| run.live);
            for value in runs.filter_map(|run| run.value.as_ref()) {
                contributions.push(Contribution {
                    value,
                    ..contribution.clone()
                });
            }
        } else {
            contributions.push(contribution);
        }
    }
    for total in retired {
        if !keep(&total.metric) {
            continue;
        }
        let contribution = Contribution {
            resource: &total.resource,
            attributes: &total.attributes,
            source: Source::Retired {
                instances: total.instances,
            },
            live: false,
            value: &total.value,
        };
        if selected(&contribution, selection.matches) {
            contributions.push(contribution);
        }
    }
    let groups = aggregate::space(contributions, shape, agg, selection.by)?;

    let mut notes = Vec::new();
    if !unreliable.is_empty() {
        // The same streams named on every read while they are stored, whatever the order
        // of the tables they were copied from (which changes as a table grows): by where
        // their instance, attributes and scope are kept, which stays put, and costs no copy.
        unreliable.sort_unstable_by_key(|view| {
            (
                Arc::as_ptr(&view.instance),
                Arc::as_ptr(&view.key.attributes),
                Arc::as_ptr(&view.key.scope),
            )
        });
        notes.push(unreliable_note(&unreliable));
    }
    let too_large = |group: &Group| matches!(group.value, Aggregated::Number(total) if total.to_number().is_none());
    if groups.iter().any(too_large) {
        notes.push(
            "an integer total is outside the 64-bit range and is given as the nearest double"
                .to_string(),
        );
    }
    if shape == Shape::Summary {
        notes.push(format!(
            "summary quantiles cannot be merged across instances: each instance's are at /api/v1/series?metric={}",
            metric.name
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
    if !other_types.is_empty() {
        notes.push(format!(
            "streams of this name with another type ({}) are left out; see type_conflicts at /api/v1/stats",
            other_types.join("; ")
        ));
    }
    Ok(Answer {
        metric,
        agg,
        groups,
        notes,
    })
}

/// Most unreliable streams a note names; the rest are counted.
const NAMED_STREAMS: usize = 3;

/// The note for streams whose writers cannot be told apart: which, why, and the fix.
fn unreliable_note(streams: &[&StreamView]) -> String {
    let named: Vec<String> = streams
        .iter()
        .take(NAMED_STREAMS)
        .map(|view| {
            let evidence = view
                .state
                .unreliable
                .map_or("", |evidence| evidence.describe());
            format!(
                "{} of instance {} ({evidence})",
                pairs(&view.key.attributes),
                instance_name(&view.instance)
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
