//! Recent history of each metric's aggregated totals, for sparklines
//! (`GET /api/v1/history`).
//!
//! Every `query.history.step` the app samples what `/metrics` shows: each metric under its
//! default aggregation, one group per distinct set of attributes left after the instance
//! attributes are dropped (`prometheus::Families`, the same loop the page and the exporters
//! use). Each group keeps its latest `query.history.points` values in a ring, aligned with
//! one ring of sample times shared by all; a group missing from a sample has a gap there,
//! and a group missing from every sample kept is forgotten. At most
//! `query.history.max_series` groups are kept; groups past that are counted and not kept.
//! Memory: about `points` × 8 bytes plus the group's attributes per group (90 points:
//! 720 bytes and the attributes).
//!
//! A histogram's or summary's sample is its count; a number's is its total.
//! `/api/v1/history` takes `/api/v1/query`'s selection: `match` keeps the groups whose
//! attributes render as asked (instance attributes are not in groups: matching one keeps
//! nothing), `by` adds the kept groups up by the keys named (for the aggregations that
//! regroup: sum and count add, max and min take theirs; avg cannot), and `agg` may only name
//! the metric's default aggregation, the one sampled.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde_json::{Value as Json, json};

use super::answer::default_agg;
use super::answers::Answers;
use super::json::attr_text;
use super::params::QueryParams;
use super::prometheus::Families;
use crate::aggregate::{Agg, Aggregated};
use crate::config::AggregationRule;
use crate::model::Attributes;
use crate::model::unix_nanos;
use crate::store::{StatsSnapshot, Store};

/// How history is kept (`query.history`).
#[derive(Clone, Copy, Debug)]
pub struct HistorySettings {
    pub step: Duration,
    pub points: usize,
    pub max_series: usize,
}

/// The rings of every metric's aggregated groups.
#[derive(Debug)]
pub struct History {
    settings: HistorySettings,
    state: Mutex<Rings>,
    /// The point counters at the latest two samples, for rates per second.
    counters: Mutex<VecDeque<(std::time::Instant, HashMap<String, u64>)>>,
}

/// Points by what became of them: `accepted`, `rejected:<reason>`, `dropped:<reason>`.
fn point_counters(stats: &StatsSnapshot) -> HashMap<String, u64> {
    let mut counters = HashMap::new();
    counters.insert("accepted".to_string(), stats.points_accepted);
    for (reason, count) in &stats.points_rejected {
        counters.insert(format!("rejected:{reason}"), *count);
    }
    for (reason, count) in &stats.points_dropped {
        counters.insert(format!("dropped:{reason}"), *count);
    }
    counters
}

#[derive(Debug, Default)]
struct Rings {
    /// Sample times, nanoseconds since the Unix epoch, oldest first.
    times: VecDeque<u64>,
    /// Per metric name, per group: one value per sample time (NaN: not in that sample).
    metrics: HashMap<String, Metric>,
    series: usize,
    /// Samples of groups not kept because `max_series` were (one per group per step).
    refused: u64,
}

#[derive(Debug, Default)]
struct Metric {
    agg: Option<Agg>,
    groups: HashMap<Attributes, VecDeque<f64>>,
}

/// Why a history cannot be answered as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("no history of metric {0:?} (yet): it is sampled every query.history.step")]
    Unknown(String),
    #[error(
        "history keeps each metric's default aggregation: agg={default} for {metric:?}, not agg={asked}"
    )]
    OtherAgg {
        metric: String,
        default: &'static str,
        asked: &'static str,
    },
    #[error("by cannot regroup averages (agg=avg); ask without by")]
    AvgBy,
}

/// One metric in one sample: its name, the aggregation sampled, and each group's value.
type MetricSample = (String, Agg, Vec<(Attributes, f64)>);

/// A sample's number for one group.
fn sampled(value: &Aggregated) -> f64 {
    match value {
        Aggregated::Number(total) => total.as_f64(),
        Aggregated::Histogram { histogram, .. } => histogram.count as f64,
        Aggregated::ExpHistogram(histogram) => histogram.count as f64,
        Aggregated::Summary { count, .. } => *count as f64,
    }
}

impl History {
    pub fn new(settings: HistorySettings) -> History {
        History {
            settings: HistorySettings {
                points: settings.points.max(1),
                ..settings
            },
            state: Mutex::new(Rings::default()),
            counters: Mutex::new(VecDeque::new()),
        }
    }

    /// Points per second by what became of them (`accepted`, `rejected:<reason>`,
    /// `dropped:<reason>`) between the latest two samples; `None` before there are two.
    pub fn rates(&self) -> Option<HashMap<String, f64>> {
        let counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        let (before, after) = (counters.front()?, counters.back()?);
        let seconds = after.0.duration_since(before.0).as_secs_f64();
        if seconds <= 0.0 {
            return None;
        }
        Some(
            after
                .1
                .iter()
                .map(|(key, count)| {
                    let earlier = before.1.get(key).copied().unwrap_or(0);
                    (key.clone(), count.saturating_sub(earlier) as f64 / seconds)
                })
                .collect(),
        )
    }

    pub fn settings(&self) -> HistorySettings {
        self.settings
    }

    /// Samples every metric's groups as of now.
    pub fn sample(&self, store: &Store, answers: &Answers) {
        {
            let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
            if counters.len() == 2 {
                counters.pop_front();
            }
            let stats = store.stats().snapshot();
            counters.push_back((std::time::Instant::now(), point_counters(&stats)));
        }
        let families = Families::collect(store, answers);
        let mut now = Vec::new();
        for family in families.iter() {
            let groups: Vec<(Attributes, f64)> = family
                .groups()
                .iter()
                .map(|group| (group.attributes.clone(), sampled(&group.value)))
                .collect();
            now.push((family.metric.name.clone(), family.agg, groups));
        }
        self.record(unix_nanos(SystemTime::now()), now);
    }

    /// Adds one sample taken at `time`: per metric, its aggregation and groups.
    fn record(&self, time: u64, sample: Vec<MetricSample>) {
        let mut rings = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let points = self.settings.points;
        let full = rings.times.len() == points;
        if full {
            rings.times.pop_front();
        }
        rings.times.push_back(time);
        let kept = rings.times.len();
        // Every group gets a gap for this sample, filled below if it is in it.
        for metric in rings.metrics.values_mut() {
            for values in metric.groups.values_mut() {
                if full {
                    values.pop_front();
                }
                values.push_back(f64::NAN);
            }
        }
        let Rings {
            metrics,
            series,
            refused,
            ..
        } = &mut *rings;
        // Values of the groups kept; the groups new in this sample wait until those gone
        // from every sample kept have made room.
        let mut new = Vec::new();
        for (name, agg, groups) in sample {
            let metric = metrics.entry(name.clone()).or_default();
            metric.agg = Some(agg);
            for (attributes, value) in groups {
                match metric.groups.get_mut(&attributes) {
                    Some(values) => {
                        if let Some(last) = values.back_mut() {
                            *last = value;
                        }
                    }
                    None => new.push((name.clone(), attributes, value)),
                }
            }
        }
        let mut forgotten = 0;
        for metric in metrics.values_mut() {
            metric.groups.retain(|_, values| {
                let keep = values.iter().any(|value| !value.is_nan());
                forgotten += usize::from(!keep);
                keep
            });
        }
        *series -= forgotten;
        for (name, attributes, value) in new {
            if *series >= self.settings.max_series {
                *refused += 1;
                continue;
            }
            let mut values: VecDeque<f64> = std::iter::repeat_n(f64::NAN, kept).collect();
            if let Some(last) = values.back_mut() {
                *last = value;
            }
            metrics
                .entry(name)
                .or_default()
                .groups
                .insert(attributes, values);
            *series += 1;
        }
        metrics.retain(|_, metric| !metric.groups.is_empty());
    }

    /// How many groups are kept, and how many samples of groups were not kept for
    /// `max_series`.
    pub fn counts(&self) -> (usize, u64) {
        let rings = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        (rings.series, rings.refused)
    }

    /// `GET /api/v1/history`'s answer for `params`.
    ///
    /// # Errors
    /// [`HistoryError`] for a metric without history, an `agg` other than the one sampled,
    /// or `by` on averages.
    pub fn answer(
        &self,
        params: &QueryParams,
        rules: &[AggregationRule],
    ) -> Result<Json, HistoryError> {
        let selected = self.select(params, rules)?;
        let series: Vec<Json> = selected
            .series
            .into_iter()
            .map(|(attributes, values)| {
                let attributes = super::json::attributes(&attributes);
                let values: Vec<Json> = values
                    .into_iter()
                    .map(|value| {
                        if value.is_nan() {
                            Json::Null
                        } else {
                            json!(value)
                        }
                    })
                    .collect();
                json!({"attributes": attributes, "values": values})
            })
            .collect();
        Ok(json!({
            "metric": params.metric,
            "agg": selected.agg.as_str(),
            "step_seconds": self.settings.step.as_secs_f64(),
            "times_unix_nano": selected.times,
            "series": series,
        }))
    }

    /// The series `params` select, in a stable order (by their attributes); values are
    /// NaN where a sample had none.
    ///
    /// # Errors
    /// As [`History::answer`].
    pub fn select(
        &self,
        params: &QueryParams,
        rules: &[AggregationRule],
    ) -> Result<Selected, HistoryError> {
        let rings = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(metric) = rings.metrics.get(&params.metric) else {
            return Err(HistoryError::Unknown(params.metric.clone()));
        };
        let default = metric
            .agg
            .unwrap_or_else(|| default_agg(rules, &params.metric));
        if let Some(asked) = params.agg
            && asked != default
        {
            return Err(HistoryError::OtherAgg {
                metric: params.metric.clone(),
                default: default.as_str(),
                asked: asked.as_str(),
            });
        }
        if params.by.is_some() && default == Agg::Avg {
            return Err(HistoryError::AvgBy);
        }
        let selected = metric.groups.iter().filter(|(attributes, _)| {
            params.matches.iter().all(|(key, wanted)| {
                attributes
                    .get(key)
                    .is_some_and(|value| attr_text(value) == *wanted)
            })
        });
        let mut series: Vec<(Attributes, Vec<f64>)> = match &params.by {
            None => selected
                .map(|(attributes, values)| (attributes.clone(), values.iter().copied().collect()))
                .collect(),
            Some(keys) => {
                let mut regrouped: HashMap<Attributes, Vec<f64>> = HashMap::new();
                for (attributes, values) in selected {
                    let key = attributes.retain(|key| keys.iter().any(|kept| kept == key));
                    let total = regrouped
                        .entry(key)
                        .or_insert_with(|| vec![f64::NAN; values.len()]);
                    for (total, value) in total.iter_mut().zip(values) {
                        *total = combine(default, *total, *value);
                    }
                }
                regrouped.into_iter().collect()
            }
        };
        series.sort_by_cached_key(|(attributes, _)| format!("{attributes:?}"));
        Ok(Selected {
            agg: default,
            times: rings.times.iter().copied().collect(),
            series,
        })
    }
}

/// What one selection of a metric's history holds.
#[derive(Debug)]
pub struct Selected {
    pub agg: Agg,
    pub times: Vec<u64>,
    pub series: Vec<(Attributes, Vec<f64>)>,
}

/// Two groups' values in one sample, as `agg` regroups them; NaN is a gap.
fn combine(agg: Agg, total: f64, value: f64) -> f64 {
    if value.is_nan() {
        return total;
    }
    if total.is_nan() {
        return value;
    }
    match agg {
        Agg::Sum | Agg::Count | Agg::Avg => total + value,
        Agg::Max => total.max(value),
        Agg::Min => total.min(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AttrValue;

    fn attributes(route: &str) -> Attributes {
        Attributes::new(vec![
            ("http.route".into(), AttrValue::Str(route.into())),
            ("service.name".into(), AttrValue::Str("shop".into())),
        ])
    }

    fn history(points: usize, max_series: usize) -> History {
        History::new(HistorySettings {
            step: Duration::from_secs(10),
            points,
            max_series,
        })
    }

    fn params(query: &str) -> QueryParams {
        QueryParams::parse(Some(query)).expect("parameters")
    }

    fn sample(history: &History, time: u64, groups: &[(&str, f64)]) {
        let groups = groups
            .iter()
            .map(|(route, value)| (attributes(route), *value))
            .collect();
        history.record(time, vec![("requests".into(), Agg::Sum, groups)]);
    }

    #[test]
    fn the_ring_keeps_the_latest_points_with_gaps_where_a_group_was_missing() {
        let history = history(3, 100);
        sample(&history, 10, &[("/a", 1.0)]);
        sample(&history, 20, &[("/a", 2.0), ("/b", 5.0)]);
        sample(&history, 30, &[("/b", 6.0)]);
        sample(&history, 40, &[("/a", 4.0), ("/b", 7.0)]);
        let answer = history
            .answer(&params("metric=requests"), &[])
            .expect("answer");
        assert_eq!(answer["times_unix_nano"], json!([20, 30, 40]));
        assert_eq!(answer["step_seconds"], json!(10.0));
        assert_eq!(answer["series"][0]["attributes"]["http.route"], json!("/a"));
        assert_eq!(answer["series"][0]["values"], json!([2.0, null, 4.0]));
        assert_eq!(answer["series"][1]["values"], json!([5.0, 6.0, 7.0]));
    }

    #[test]
    fn a_group_gone_from_every_sample_kept_is_forgotten_and_the_bound_holds() {
        let history = history(2, 2);
        sample(&history, 10, &[("/a", 1.0), ("/b", 1.0), ("/c", 1.0)]);
        assert_eq!(history.counts(), (2, 1), "the third group is not kept");
        sample(&history, 20, &[("/c", 2.0)]);
        sample(&history, 30, &[("/c", 3.0)]);
        // /a and /b have no value in the two samples kept: forgotten, room for /c.
        assert_eq!(history.counts().0, 1);
        let answer = history
            .answer(&params("metric=requests"), &[])
            .expect("answer");
        assert_eq!(answer["series"][0]["attributes"]["http.route"], json!("/c"));
        assert_eq!(answer["series"][0]["values"], json!([null, 3.0]));
    }

    #[test]
    fn match_by_and_agg_select_as_the_query_does() {
        let history = history(4, 100);
        sample(&history, 10, &[("/a", 1.0), ("/b", 2.0)]);
        sample(&history, 20, &[("/a", 3.0)]);
        let matched = history
            .answer(&params("metric=requests&match=http.route=/b"), &[])
            .expect("answer");
        assert_eq!(matched["series"].as_array().map(Vec::len), Some(1));
        assert_eq!(matched["series"][0]["values"], json!([2.0, null]));
        let one = history
            .answer(&params("metric=requests&by="), &[])
            .expect("answer");
        assert_eq!(one["series"][0]["attributes"], json!({}));
        assert_eq!(one["series"][0]["values"], json!([3.0, 3.0]));
        let by_service = history
            .answer(&params("metric=requests&by=service.name"), &[])
            .expect("answer");
        assert_eq!(
            by_service["series"][0]["attributes"],
            json!({"service.name": "shop"})
        );
        assert_eq!(by_service["series"][0]["values"], json!([3.0, 3.0]));
        let other = history.answer(&params("metric=requests&agg=max"), &[]);
        assert!(
            matches!(other, Err(HistoryError::OtherAgg { .. })),
            "{other:?}"
        );
        let unknown = history.answer(&params("metric=nothing"), &[]);
        assert_eq!(unknown, Err(HistoryError::Unknown("nothing".into())));
        let none = history
            .answer(&params("metric=requests&match=service.instance.id=w1"), &[])
            .expect("answer");
        assert_eq!(none["series"], json!([]));
    }
}
