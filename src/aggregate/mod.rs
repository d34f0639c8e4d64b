//! Space aggregation: the streams of many instances folded into one value per group
//! (`docs/design.md`, "Space aggregation").
//!
//! Pure: the query layer hands a [`Space`] contributions one at a time as it reads them
//! (each stream's value, its attributes with the instance attributes already removed,
//! whether its instance is live, all borrowed), and gets groups back. No I/O, no locks.
//!
//! What counts, by kind:
//! - counters (monotonic sums), histograms, summaries count events: `sum` adds live and
//!   retired instances, so a total never goes down because a worker died or restarted;
//! - gauges and up-down counters describe the present: `sum` adds live instances only;
//! - `max`, `min`, `avg` and `count` look at live instances' current values, for any numeric
//!   kind; histograms and summaries only merge (`sum`).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

pub use crate::model::Shape;
use crate::model::{
    AttrValue, Attributes, ExpBuckets, ExpHistogram, Histogram, Number, Total, ValueRef,
};

/// A space aggregation function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Agg {
    Sum,
    Max,
    Min,
    Avg,
    Count,
}

impl Agg {
    pub fn as_str(self) -> &'static str {
        match self {
            Agg::Sum => "sum",
            Agg::Max => "max",
            Agg::Min => "min",
            Agg::Avg => "avg",
            Agg::Count => "count",
        }
    }
}

impl std::str::FromStr for Agg {
    type Err = String;
    fn from_str(text: &str) -> Result<Agg, String> {
        match text {
            "sum" => Ok(Agg::Sum),
            "max" => Ok(Agg::Max),
            "min" => Ok(Agg::Min),
            "avg" => Ok(Agg::Avg),
            "count" => Ok(Agg::Count),
            other => Err(format!(
                "{other:?} is not an aggregation; use sum, max, min, avg or count"
            )),
        }
    }
}

/// Where a value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A stream of a stored instance; the number tells instances apart within one query.
    Instance(usize),
    /// The retired totals of evicted instances, folded per key.
    Retired { instances: u64 },
}

/// One value going into the aggregation. Its attributes are the resource's (without instance
/// attributes) and the point's together, the point's winning where both have a key; they are
/// borrowed, and copied only into the groups they create.
#[derive(Debug, Clone, Copy)]
pub struct Contribution<'a> {
    /// The resource without instance attributes.
    pub resource: &'a Attributes,
    /// The point attributes.
    pub attributes: &'a Attributes,
    pub source: Source,
    /// Whether the instance is live; retired instances count only for counting kinds.
    pub live: bool,
    pub value: ValueRef<'a>,
}

/// Where a contribution's attributes are kept: a number the caller gives its resource (one
/// number always names the same pairs within one [`Space`]) and the shared set of point
/// attributes. Contributions at one place belong to one group, found without hashing a
/// string.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub resource: usize,
    pub attributes: &'a Arc<Attributes>,
}

/// The aggregated value of one group.
#[derive(Debug, Clone, PartialEq)]
pub enum Aggregated {
    /// Exact while every part is an integer (`sum`, `max`, `min`, `count`); `avg` is a
    /// double.
    Number(Total),
    /// Merged explicit-bucket histogram. With `bounds_differ`, instances disagreed on the
    /// bucket bounds: count, sum, min and max are merged, the buckets are not.
    Histogram {
        histogram: Histogram,
        bounds_differ: bool,
    },
    ExpHistogram(ExpHistogram),
    /// Count and sum only: quantiles cannot be merged.
    Summary {
        count: u64,
        sum: f64,
    },
}

/// One group of the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub attributes: Attributes,
    pub value: Aggregated,
    /// Instances that contributed. Evicted instances are known only per folded key, so they
    /// add the largest count among the group's keys: a lower bound.
    pub instances: u64,
}

/// Why an aggregation cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AggregateError {
    #[error("agg={agg} is defined for numeric metrics only; {kind} metrics merge with agg=sum")]
    NotNumeric {
        agg: &'static str,
        kind: &'static str,
    },
}

#[derive(Default)]
struct Accumulator {
    sum: Total,
    min: Option<Number>,
    max: Option<Number>,
    values: u64,
    histogram: Option<Histogram>,
    bounds_differ: bool,
    exp_histogram: Option<ExpHistogram>,
    summary: (u64, f64),
    /// Distinct instances seen: contributions of one instance arrive together (see
    /// [`Space::new`]), so a new instance is a change of index.
    instances: u64,
    last_instance: Option<usize>,
    retired_instances: u64,
}

impl Accumulator {
    fn add(&mut self, contribution: &Contribution) {
        match contribution.source {
            Source::Instance(index) => {
                if self.last_instance != Some(index) {
                    self.instances += 1;
                    self.last_instance = Some(index);
                }
            }
            Source::Retired { instances } => {
                self.retired_instances = self.retired_instances.max(instances);
            }
        }
        match contribution.value {
            ValueRef::Number(value) => {
                if self.min.is_none_or(|min| value.is_below(min)) {
                    self.min = Some(value);
                }
                if self.max.is_none_or(|max| max.is_below(value)) {
                    self.max = Some(value);
                }
                self.sum.add(value);
                self.values += 1;
            }
            ValueRef::Histogram(value) => match &mut self.histogram {
                None => self.histogram = Some(value.clone()),
                Some(total) => {
                    if total.add(value).is_err() {
                        // Keep what still adds up; the buckets no longer mean anything.
                        self.bounds_differ = true;
                        total.count = total.count.saturating_add(value.count);
                        total.sum = total.sum.zip(value.sum).map(|(a, b)| a + b);
                        total.min = total.min.zip(value.min).map(|(a, b)| a.min(b));
                        total.max = total.max.zip(value.max).map(|(a, b)| a.max(b));
                    }
                }
            },
            ValueRef::ExpHistogram(value) => match &mut self.exp_histogram {
                None => self.exp_histogram = Some(value.clone()),
                Some(total) => total.add(value),
            },
            ValueRef::Summary(value) => {
                self.summary.0 = self.summary.0.saturating_add(value.count);
                self.summary.1 += value.sum;
            }
        }
    }

    fn finish(self, shape: Shape, agg: Agg) -> (Aggregated, u64) {
        let instances = self.instances + self.retired_instances;
        let value = match shape {
            Shape::Counter | Shape::Current => Aggregated::Number(match agg {
                Agg::Sum => self.sum,
                Agg::Max => self.max.map_or(Total::default(), Total::from),
                Agg::Min => self.min.map_or(Total::default(), Total::from),
                Agg::Avg => Total::Double(self.sum.as_f64() / self.values as f64),
                Agg::Count => Total::Int(i128::from(self.values)),
            }),
            Shape::Histogram => {
                let histogram = self.histogram.unwrap_or(Histogram {
                    count: 0,
                    sum: None,
                    min: None,
                    max: None,
                    bounds: Vec::new(),
                    bucket_counts: vec![0],
                });
                Aggregated::Histogram {
                    histogram,
                    bounds_differ: self.bounds_differ,
                }
            }
            Shape::ExpHistogram => {
                Aggregated::ExpHistogram(self.exp_histogram.unwrap_or(ExpHistogram {
                    count: 0,
                    sum: None,
                    min: None,
                    max: None,
                    scale: 0,
                    zero_count: 0,
                    zero_threshold: 0.0,
                    positive: ExpBuckets::default(),
                    negative: ExpBuckets::default(),
                }))
            }
            Shape::Summary => Aggregated::Summary {
                count: self.summary.0,
                sum: self.summary.1,
            },
        };
        (value, instances)
    }
}

/// One aggregation in progress: contributions go in with [`Space::add`] as they are read,
/// groups come out of [`Space::finish`].
pub struct Space<'q> {
    shape: Shape,
    agg: Agg,
    by: Option<&'q [String]>,
    include_retired: bool,
    build: foldhash::fast::RandomState,
    groups: Vec<(Attributes, Accumulator)>,
    /// Groups by their pairs: a contribution that joins an existing group allocates nothing.
    by_pairs: HashTable<(u64, usize)>,
    /// Groups by [`Place`], before any pairs are hashed. The point attributes of every place
    /// in it are held in `held`, so their address cannot name another set while the space
    /// lives.
    by_place: HashMap<(usize, *const Attributes), usize, foldhash::fast::RandomState>,
    held: Vec<Arc<Attributes>>,
}

impl<'q> Space<'q> {
    /// Aggregates with `agg`, grouping by all the contributions' attributes or only the
    /// keys in `by`.
    ///
    /// The contributions of one instance must be added one after another (a read of the
    /// store meets each instance's streams together): that is how `instances` counts
    /// distinct instances without a set per group.
    ///
    /// # Errors
    /// [`AggregateError::NotNumeric`] when `max`, `min`, `avg` or `count` is asked of a
    /// histogram or summary.
    pub fn new(
        shape: Shape,
        agg: Agg,
        by: Option<&'q [String]>,
    ) -> Result<Space<'q>, AggregateError> {
        if agg != Agg::Sum && !shape.is_numeric() {
            let kind = match shape {
                Shape::Histogram => "histogram",
                Shape::ExpHistogram => "exponential histogram",
                _ => "summary",
            };
            return Err(AggregateError::NotNumeric {
                agg: agg.as_str(),
                kind,
            });
        }
        let build = foldhash::fast::RandomState::default();
        Ok(Space {
            shape,
            agg,
            by,
            include_retired: agg == Agg::Sum && shape.counts_events(),
            by_place: HashMap::with_hasher(build.clone()),
            build,
            groups: Vec::new(),
            by_pairs: HashTable::new(),
            held: Vec::new(),
        })
    }

    /// Adds one contribution to its group; with its `place`, most contributions find the
    /// group by two numbers.
    pub fn add(&mut self, contribution: &Contribution<'_>, place: Option<Place<'_>>) {
        if !contribution.live && !self.include_retired {
            return;
        }
        let slot = match place {
            None => self.group_of(contribution),
            Some(place) => {
                let at = (place.resource, Arc::as_ptr(place.attributes));
                match self.by_place.get(&at) {
                    Some(&slot) => slot,
                    None => {
                        let slot = self.group_of(contribution);
                        self.by_place.insert(at, slot);
                        self.held.push(Arc::clone(place.attributes));
                        slot
                    }
                }
            }
        };
        self.groups[slot].1.add(contribution);
    }

    /// The groups, in a stable order: by their attributes.
    pub fn finish(self) -> Vec<Group> {
        let (shape, agg) = (self.shape, self.agg);
        let mut groups: Vec<Group> = self
            .groups
            .into_iter()
            .map(|(attributes, accumulator)| {
                let (value, instances) = accumulator.finish(shape, agg);
                Group {
                    attributes,
                    value,
                    instances,
                }
            })
            .collect();
        // No two groups have the same attributes.
        groups.sort_unstable_by(|a, b| a.attributes.cmp(&b.attributes));
        groups
    }

    /// The index in `groups` of the group `contribution` belongs to (its merged pairs, only
    /// the keys in `by` when given), a new one if none has its pairs yet.
    fn group_of(&mut self, contribution: &Contribution<'_>) -> usize {
        let by = self.by;
        let pairs = contribution
            .resource
            .merged_iter(contribution.attributes)
            .filter(|(key, _)| by.is_none_or(|keys| keys.iter().any(|wanted| wanted == key)));
        let hash = {
            let mut hasher = self.build.build_hasher();
            for (key, value) in pairs.clone() {
                key.hash(&mut hasher);
                value.hash(&mut hasher);
            }
            hasher.finish()
        };
        let groups = &mut self.groups;
        let entry = self.by_pairs.entry(
            hash,
            |&(_, slot)| same_pairs(groups[slot].0.iter(), pairs.clone()),
            |&(hash, _)| hash,
        );
        match entry {
            Entry::Occupied(found) => found.get().1,
            Entry::Vacant(vacant) => {
                groups.push((Attributes::from_sorted(pairs), Accumulator::default()));
                vacant.insert((hash, groups.len() - 1));
                groups.len() - 1
            }
        }
    }
}

/// Whether two pair sequences are equal, pair by pair.
fn same_pairs<'x, 'y>(
    mut left: impl Iterator<Item = (&'x str, &'x AttrValue)>,
    mut right: impl Iterator<Item = (&'y str, &'y AttrValue)>,
) -> bool {
    loop {
        match (left.next(), right.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests;
