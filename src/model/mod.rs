//! The vocabulary of fanin: attributes, instances, streams and points.
//!
//! Everything between the receivers and the query API speaks these types. They know nothing
//! about protobuf, JSON or sockets: `receiver::otlp` converts wire messages into them, the
//! store keeps them, and the query API renders them.
//!
//! Identity is exact (`docs/design.md`, "Identity"): attribute collections compare as sets of typed
//! key/value pairs, doubles compare by their bits, and nothing is ever merged because two
//! hashes agree.

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

mod histogram;
mod number;

pub use histogram::{BoundsMismatch, StreamValue, ValueRef};
pub use number::{Number, Total};

/// Nanoseconds since the Unix epoch, the unit OTLP uses for every timestamp (0 before it,
/// saturating far after).
pub fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |elapsed| {
        u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
    })
}

/// One attribute value, typed as OTLP's `AnyValue` is: `1` and `"1"` are different values.
#[derive(Clone, Debug)]
pub enum AttrValue {
    /// An `AnyValue` with no member set.
    Empty,
    Str(String),
    Bool(bool),
    Int(i64),
    /// Compared and hashed by its bits, so `NaN` equals itself and `0.0` differs from `-0.0`.
    Double(f64),
    Bytes(Vec<u8>),
    Array(Vec<AttrValue>),
    /// A key/value list; like every attribute collection its order does not matter.
    Map(Attributes),
}

impl AttrValue {
    /// The value seen through a borrowed view: how it is compared and hashed, so that an
    /// owned value and one still in a request buffer agree.
    pub fn as_ref(&self) -> AttrRef<'_> {
        match self {
            AttrValue::Empty => AttrRef::Empty,
            AttrValue::Str(value) => AttrRef::Str(value),
            AttrValue::Bool(value) => AttrRef::Bool(*value),
            AttrValue::Int(value) => AttrRef::Int(*value),
            AttrValue::Double(value) => AttrRef::Double(*value),
            AttrValue::Bytes(value) => AttrRef::Bytes(value),
            AttrValue::Array(values) => AttrRef::Array(values),
            AttrValue::Map(attributes) => AttrRef::Map(attributes),
        }
    }
}

impl PartialEq for AttrValue {
    fn eq(&self, other: &Self) -> bool {
        self.as_ref() == other.as_ref()
    }
}

impl Eq for AttrValue {}

impl Hash for AttrValue {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_ref().hash(state);
    }
}

/// A borrowed attribute value: scalars may point into a request buffer, so a stream can be
/// looked up without copying its attributes. Compares and hashes exactly as [`AttrValue`].
#[derive(Clone, Copy, Debug)]
pub enum AttrRef<'a> {
    Empty,
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(&'a [u8]),
    Array(&'a [AttrValue]),
    Map(&'a Attributes),
}

impl AttrRef<'_> {
    /// An owned copy.
    pub fn to_owned_value(self) -> AttrValue {
        match self {
            AttrRef::Empty => AttrValue::Empty,
            AttrRef::Str(value) => AttrValue::Str(value.to_owned()),
            AttrRef::Bool(value) => AttrValue::Bool(value),
            AttrRef::Int(value) => AttrValue::Int(value),
            AttrRef::Double(value) => AttrValue::Double(value),
            AttrRef::Bytes(value) => AttrValue::Bytes(value.to_vec()),
            AttrRef::Array(values) => AttrValue::Array(values.to_vec()),
            AttrRef::Map(attributes) => AttrValue::Map(attributes.clone()),
        }
    }

    fn tag(self) -> u8 {
        match self {
            AttrRef::Empty => 0,
            AttrRef::Str(_) => 1,
            AttrRef::Bool(_) => 2,
            AttrRef::Int(_) => 3,
            AttrRef::Double(_) => 4,
            AttrRef::Bytes(_) => 5,
            AttrRef::Array(_) => 6,
            AttrRef::Map(_) => 7,
        }
    }
}

impl PartialEq for AttrRef<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (*self, *other) {
            (AttrRef::Empty, AttrRef::Empty) => true,
            (AttrRef::Str(a), AttrRef::Str(b)) => a == b,
            (AttrRef::Bool(a), AttrRef::Bool(b)) => a == b,
            (AttrRef::Int(a), AttrRef::Int(b)) => a == b,
            (AttrRef::Double(a), AttrRef::Double(b)) => a.to_bits() == b.to_bits(),
            (AttrRef::Bytes(a), AttrRef::Bytes(b)) => a == b,
            (AttrRef::Array(a), AttrRef::Array(b)) => a == b,
            (AttrRef::Map(a), AttrRef::Map(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for AttrRef<'_> {}

impl Hash for AttrRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u8(self.tag());
        match *self {
            AttrRef::Empty => {}
            AttrRef::Str(value) => value.hash(state),
            AttrRef::Bool(value) => value.hash(state),
            AttrRef::Int(value) => value.hash(state),
            AttrRef::Double(value) => value.to_bits().hash(state),
            AttrRef::Bytes(value) => value.hash(state),
            AttrRef::Array(values) => values.hash(state),
            AttrRef::Map(attributes) => attributes.hash(state),
        }
    }
}

/// The order groups are listed in: by type (empty, string, bool, int, double, bytes, array,
/// map), then by value; doubles by [`f64::total_cmp`], which is equal exactly when the bits
/// are, as `==` is.
impl Ord for AttrRef<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        match (*self, *other) {
            (AttrRef::Str(a), AttrRef::Str(b)) => a.cmp(b),
            (AttrRef::Bool(a), AttrRef::Bool(b)) => a.cmp(&b),
            (AttrRef::Int(a), AttrRef::Int(b)) => a.cmp(&b),
            (AttrRef::Double(a), AttrRef::Double(b)) => a.total_cmp(&b),
            (AttrRef::Bytes(a), AttrRef::Bytes(b)) => a.cmp(b),
            (AttrRef::Array(a), AttrRef::Array(b)) => a.cmp(b),
            (AttrRef::Map(a), AttrRef::Map(b)) => a.cmp(b),
            (a, b) => a.tag().cmp(&b.tag()),
        }
    }
}

impl PartialOrd for AttrRef<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for AttrValue {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_ref().cmp(&other.as_ref())
    }
}

impl PartialOrd for AttrValue {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Sorts attribute pairs by key and keeps the last of each repeated key: the one rule by
/// which both [`Attributes::new`] and borrowed attribute lists become a set.
pub fn sort_unique<K: AsRef<str>, V>(pairs: &mut Vec<(K, V)>) {
    if pairs.len() < 2 {
        return;
    }
    // Reversed, a stable sort puts the last occurrence of a key first in its run, and
    // `dedup` keeps the first of a run.
    pairs.reverse();
    pairs.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
    pairs.dedup_by(|later, earlier| later.0.as_ref() == earlier.0.as_ref());
}

/// Hashes a sorted, duplicate-free attribute list. Owned [`Attributes`] and borrowed lists
/// of the same pairs hash alike.
pub fn hash_pairs<'a, H: Hasher>(
    state: &mut H,
    len: usize,
    pairs: impl Iterator<Item = (&'a str, AttrRef<'a>)>,
) {
    state.write_usize(len);
    for (key, value) in pairs {
        key.hash(state);
        value.hash(state);
    }
}

/// A set of attributes, kept sorted by key so that order never changes identity.
///
/// Keys are unique: OTLP forbids duplicates, and when a sender repeats a key anyway the last
/// occurrence wins, as it would in a map.
///
/// Sets are ordered pair by pair (key, then value), a shorter set before a longer one it
/// begins.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attributes(Vec<(String, AttrValue)>);

impl Hash for Attributes {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_pairs(
            state,
            self.0.len(),
            self.iter().map(|(key, value)| (key, value.as_ref())),
        );
    }
}

impl Attributes {
    /// Builds the set from pairs in any order.
    pub fn new(mut pairs: Vec<(String, AttrValue)>) -> Attributes {
        sort_unique(&mut pairs);
        Attributes(pairs)
    }

    /// Whether this set holds exactly `pairs`, which are sorted and duplicate-free.
    pub fn equals_pairs(&self, pairs: &[(&str, AttrRef<'_>)]) -> bool {
        self.0.len() == pairs.len()
            && self
                .0
                .iter()
                .zip(pairs)
                .all(|((key, value), (other_key, other_value))| {
                    key == other_key && value.as_ref() == *other_value
                })
    }

    /// An owned copy of borrowed pairs.
    pub fn from_pairs(pairs: &[(&str, AttrRef<'_>)]) -> Attributes {
        Attributes::new(
            pairs
                .iter()
                .map(|(key, value)| ((*key).to_owned(), value.to_owned_value()))
                .collect(),
        )
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&AttrValue> {
        self.0
            .binary_search_by(|(candidate, _)| candidate.as_str().cmp(key))
            .ok()
            .map(|index| &self.0[index].1)
    }

    /// Key/value pairs in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &AttrValue)> {
        self.0.iter().map(|(key, value)| (key.as_str(), value))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The attributes whose key `keep` accepts.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) -> Attributes {
        Attributes(
            self.0
                .iter()
                .filter(|(key, _)| keep(key))
                .cloned()
                .collect(),
        )
    }

    /// The pairs of both sets in key order, without building the union; where a key is in
    /// both, `other`'s value wins. Both are sorted, so this is a linear merge.
    pub fn merged_iter<'a>(
        &'a self,
        other: &'a Attributes,
    ) -> impl Iterator<Item = (&'a str, &'a AttrValue)> + Clone + 'a {
        MergedPairs {
            left: self.0.iter().peekable(),
            right: other.0.iter().peekable(),
        }
    }

    /// A set of pairs already in key order with no key twice (as [`Attributes::iter`] and
    /// [`Attributes::merged_iter`] give them).
    pub fn from_sorted<'a>(pairs: impl Iterator<Item = (&'a str, &'a AttrValue)>) -> Attributes {
        let pairs: Vec<(String, AttrValue)> = pairs
            .map(|(key, value)| (key.to_owned(), value.clone()))
            .collect();
        debug_assert!(pairs.windows(2).all(|pair| pair[0].0 < pair[1].0));
        Attributes(pairs)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Two sorted pair lists merged, the right one winning ties: [`Attributes::merged_iter`].
#[derive(Clone)]
struct MergedPairs<'a> {
    left: std::iter::Peekable<std::slice::Iter<'a, (String, AttrValue)>>,
    right: std::iter::Peekable<std::slice::Iter<'a, (String, AttrValue)>>,
}

impl<'a> Iterator for MergedPairs<'a> {
    type Item = (&'a str, &'a AttrValue);

    fn next(&mut self) -> Option<Self::Item> {
        let next = match (self.left.peek(), self.right.peek()) {
            (Some(a), Some(b)) => match a.0.cmp(&b.0) {
                std::cmp::Ordering::Less => self.left.next(),
                std::cmp::Ordering::Greater => self.right.next(),
                std::cmp::Ordering::Equal => {
                    self.left.next();
                    self.right.next()
                }
            },
            (Some(_), None) => self.left.next(),
            (None, _) => self.right.next(),
        };
        next.map(|(key, value)| (key.as_str(), value))
    }
}

/// An instance: one process's resource, exactly as sent (`docs/design.md`, "Identity").
pub type InstanceKey = Arc<Attributes>;

/// Which resource attributes name a worker rather than what it runs (config
/// `aggregation.instance_attributes`). Space aggregation drops them.
#[derive(Clone, Debug)]
pub struct InstanceAttributes {
    patterns: Vec<String>,
    globs: globset::GlobSet,
}

/// A glob over names, where `*` matches any run of characters, dots included: the one way
/// fanin reads a name pattern (instance attributes, metric rules).
///
/// # Errors
/// A message naming the pattern when it is not a valid glob.
pub fn name_glob(pattern: &str) -> Result<globset::Glob, String> {
    globset::GlobBuilder::new(pattern)
        .literal_separator(false)
        .build()
        .map_err(|error| format!("{pattern:?} is not a valid glob: {error}"))
}

impl InstanceAttributes {
    /// Builds the matcher from keys or globs such as `process.*`.
    ///
    /// # Errors
    /// The pattern that is not a valid glob.
    pub fn new<'a>(
        patterns: impl IntoIterator<Item = &'a str>,
    ) -> Result<InstanceAttributes, String> {
        let mut builder = globset::GlobSetBuilder::new();
        let mut kept = Vec::new();
        for pattern in patterns {
            builder.add(name_glob(pattern)?);
            kept.push(pattern.to_string());
        }
        let globs = builder.build().map_err(|error| error.to_string())?;
        Ok(InstanceAttributes {
            patterns: kept,
            globs,
        })
    }

    /// The patterns, as written.
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.patterns.iter().map(String::as_str)
    }

    pub fn is_instance_attribute(&self, key: &str) -> bool {
        self.globs.is_match(key)
    }

    /// The resource without the attributes that name the worker.
    pub fn strip(&self, resource: &Attributes) -> Attributes {
        resource.retain(|key| !self.is_instance_attribute(key))
    }
}

/// The instrumentation scope that produced a metric.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Scope {
    pub name: String,
    pub version: String,
    pub attributes: Attributes,
}

/// The five OTLP point kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Gauge,
    Sum,
    Histogram,
    ExponentialHistogram,
    Summary,
}

impl Kind {
    /// The name used in the query API and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Sum => "sum",
            Kind::Histogram => "histogram",
            Kind::ExponentialHistogram => "exponential_histogram",
            Kind::Summary => "summary",
        }
    }

    /// Whether points of this kind carry an aggregation temporality (gauges and summaries
    /// do not).
    pub fn has_temporality(self) -> bool {
        matches!(
            self,
            Kind::Sum | Kind::Histogram | Kind::ExponentialHistogram
        )
    }
}

/// How successive points of a stream relate. Gauges and summaries have none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Temporality {
    /// Each point counts what happened since the previous one.
    Delta,
    /// Each point counts everything since the stream's start time.
    Cumulative,
}

impl Temporality {
    pub fn as_str(self) -> &'static str {
        match self {
            Temporality::Delta => "delta",
            Temporality::Cumulative => "cumulative",
        }
    }
}

/// What identifies a metric besides the instance and scope: name, kind, unit, monotonicity
/// and temporality. The description is not part of it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MetricId {
    pub name: String,
    pub kind: Kind,
    pub unit: String,
    /// Only sums can be monotonic; false for every other kind.
    pub monotonic: bool,
    /// `None` for gauges and summaries.
    pub temporality: Option<Temporality>,
}

/// What a metric's values mean, from its identity: how they combine across instances and
/// what becomes of a writer's values when it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Monotonic sums: totals include retired instances.
    Counter,
    /// Gauges and non-monotonic sums: totals over live instances.
    Current,
    Histogram,
    ExpHistogram,
    /// Count and sum merge; quantiles do not.
    Summary,
}

impl Shape {
    pub fn of(metric: &MetricId) -> Shape {
        match metric.kind {
            Kind::Sum if metric.monotonic => Shape::Counter,
            Kind::Sum | Kind::Gauge => Shape::Current,
            Kind::Histogram => Shape::Histogram,
            Kind::ExponentialHistogram => Shape::ExpHistogram,
            Kind::Summary => Shape::Summary,
        }
    }

    /// Whether the values count events, so that totals keep what writers that stopped
    /// counted: counters, histograms and summaries. Gauges and up-down counters describe
    /// the present, and a stopped writer's share leaves with it.
    pub fn counts_events(self) -> bool {
        !matches!(self, Shape::Current)
    }

    /// Numbers rather than histograms or summaries: every aggregation applies.
    pub fn is_numeric(self) -> bool {
        matches!(self, Shape::Counter | Shape::Current)
    }
}

impl MetricId {
    /// Whether this metric counts events ([`Shape::counts_events`]).
    pub fn counts_events(&self) -> bool {
        Shape::of(self).counts_events()
    }

    /// Same kind, unit and monotonicity: the identities one metric name may take without a
    /// type conflict (temporality may differ: delta and cumulative workers add up).
    pub fn same_type(&self, other: &MetricId) -> bool {
        self.kind == other.kind && self.unit == other.unit && self.monotonic == other.monotonic
    }

    /// "sum (monotonic, cumulative, unit \"By\")": how type conflicts are described.
    pub fn describe(&self) -> String {
        let mut traits = Vec::new();
        if self.kind == Kind::Sum {
            traits.push(if self.monotonic {
                "monotonic"
            } else {
                "non-monotonic"
            });
        }
        if let Some(temporality) = self.temporality {
            traits.push(temporality.as_str());
        }
        let unit = format!("unit {:?}", self.unit);
        traits.push(&unit);
        format!("{} ({})", self.kind.as_str(), traits.join(", "))
    }
}

/// A stream within one instance: scope, metric and point attributes.
/// The full stream identity is this key plus the instance it is stored under.
///
/// The attribute set is shared: the store keeps one copy of each distinct set, however many
/// instances and metrics use it, so cloning a key copies three pointers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub scope: Arc<Scope>,
    pub metric: Arc<MetricId>,
    pub attributes: Arc<Attributes>,
}

/// An explicit-bucket histogram value.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    pub count: u64,
    pub sum: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Upper bounds, strictly increasing; empty means a single `(-Inf, +Inf)` bucket.
    pub bounds: Vec<f64>,
    /// One more than `bounds`; they add up to `count`.
    pub bucket_counts: Vec<u64>,
}

/// One side (positive or negative) of an exponential histogram.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExpBuckets {
    /// Index of the first bucket; bucket `i` covers `(base^i, base^(i+1)]`.
    pub offset: i32,
    pub counts: Vec<u64>,
}

/// An exponential histogram value.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpHistogram {
    pub count: u64,
    pub sum: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Resolution: `base = 2^(2^-scale)`.
    pub scale: i32,
    pub zero_count: u64,
    pub zero_threshold: f64,
    pub positive: ExpBuckets,
    pub negative: ExpBuckets,
}

/// A summary value: cumulative count and sum plus quantiles that cannot be merged.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub sum: f64,
    /// `(quantile, value)` pairs as sent.
    pub quantiles: Vec<(f64, f64)>,
}

/// What a point carries.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Gauges and sums, integer or double as sent.
    Number(Number),
    Histogram(Histogram),
    ExpHistogram(ExpHistogram),
    Summary(Summary),
    /// The point has the NO_RECORDED_VALUE flag: the stream was explicitly removed.
    NoRecordedValue,
}

/// One data point, already validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// `start_time_unix_nano`; 0 when the sender left it out.
    pub start: u64,
    /// `time_unix_nano`; never 0.
    pub time: u64,
    pub value: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, AttrValue)]) -> Attributes {
        Attributes::new(
            pairs
                .iter()
                .map(|(key, value)| (key.to_string(), value.clone()))
                .collect(),
        )
    }

    #[test]
    fn order_does_not_change_identity() {
        let a = attrs(&[("a", AttrValue::Int(1)), ("b", AttrValue::Bool(true))]);
        let b = attrs(&[("b", AttrValue::Bool(true)), ("a", AttrValue::Int(1))]);
        assert_eq!(a, b);
    }

    #[test]
    fn types_are_part_of_identity() {
        let int = attrs(&[("a", AttrValue::Int(1))]);
        let string = attrs(&[("a", AttrValue::Str("1".into()))]);
        let double = attrs(&[("a", AttrValue::Double(1.0))]);
        assert_ne!(int, string);
        assert_ne!(int, double);
    }

    #[test]
    fn doubles_compare_by_bits() {
        let nan = attrs(&[("a", AttrValue::Double(f64::NAN))]);
        assert_eq!(nan, nan.clone());
        let zero = attrs(&[("a", AttrValue::Double(0.0))]);
        let negative_zero = attrs(&[("a", AttrValue::Double(-0.0))]);
        assert_ne!(zero, negative_zero);
    }

    #[test]
    fn last_duplicate_key_wins() {
        let set = attrs(&[("a", AttrValue::Int(1)), ("a", AttrValue::Int(2))]);
        assert_eq!(set.len(), 1);
        assert_eq!(set.get("a"), Some(&AttrValue::Int(2)));
    }

    #[test]
    fn instance_attributes_are_stripped_by_glob() {
        let matcher = InstanceAttributes::new(["service.instance.id", "process.*"]).expect("valid");
        let resource = attrs(&[
            ("service.name", AttrValue::Str("app".into())),
            ("service.instance.id", AttrValue::Str("w1".into())),
            ("process.pid", AttrValue::Int(7)),
            ("process.runtime.name", AttrValue::Str("cpython".into())),
        ]);
        assert_eq!(
            matcher.strip(&resource),
            attrs(&[("service.name", AttrValue::Str("app".into()))])
        );
    }

    #[test]
    fn merged_pairs_prefer_the_second_set() {
        let resource = attrs(&[("a", AttrValue::Int(1)), ("b", AttrValue::Int(1))]);
        let point = attrs(&[("b", AttrValue::Int(2)), ("c", AttrValue::Int(3))]);
        assert_eq!(
            Attributes::from_sorted(resource.merged_iter(&point)),
            attrs(&[
                ("a", AttrValue::Int(1)),
                ("b", AttrValue::Int(2)),
                ("c", AttrValue::Int(3))
            ])
        );
    }

    #[test]
    fn describe_names_every_identifying_trait() {
        let metric = MetricId {
            name: "x".into(),
            kind: Kind::Sum,
            unit: "By".into(),
            monotonic: true,
            temporality: Some(Temporality::Cumulative),
        };
        assert_eq!(
            metric.describe(),
            "sum (monotonic, cumulative, unit \"By\")"
        );
    }
}
