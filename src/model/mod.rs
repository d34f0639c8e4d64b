//! The vocabulary of fanin: attributes, instances, streams and points.
//!
//! Everything between the receivers and the query API speaks these types. They know nothing
//! about protobuf, JSON or sockets: `receiver::otlp` converts wire messages into them, the
//! store keeps them, and the query API renders them.
//!
//! Identity is exact (DESIGN.md, "Identity"): attribute collections compare as sets of typed
//! key/value pairs, doubles compare by their bits, and nothing is ever merged because two
//! hashes agree.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

mod histogram;

pub use histogram::{BoundsMismatch, StreamValue};

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

impl PartialEq for AttrValue {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (AttrValue::Empty, AttrValue::Empty) => true,
            (AttrValue::Str(a), AttrValue::Str(b)) => a == b,
            (AttrValue::Bool(a), AttrValue::Bool(b)) => a == b,
            (AttrValue::Int(a), AttrValue::Int(b)) => a == b,
            (AttrValue::Double(a), AttrValue::Double(b)) => a.to_bits() == b.to_bits(),
            (AttrValue::Bytes(a), AttrValue::Bytes(b)) => a == b,
            (AttrValue::Array(a), AttrValue::Array(b)) => a == b,
            (AttrValue::Map(a), AttrValue::Map(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for AttrValue {}

impl Hash for AttrValue {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            AttrValue::Empty => {}
            AttrValue::Str(value) => value.hash(state),
            AttrValue::Bool(value) => value.hash(state),
            AttrValue::Int(value) => value.hash(state),
            AttrValue::Double(value) => value.to_bits().hash(state),
            AttrValue::Bytes(value) => value.hash(state),
            AttrValue::Array(values) => values.hash(state),
            AttrValue::Map(attributes) => attributes.hash(state),
        }
    }
}

/// A set of attributes, kept sorted by key so that order never changes identity.
///
/// Keys are unique: OTLP forbids duplicates, and when a sender repeats a key anyway the last
/// occurrence wins, as it would in a map.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Attributes(Vec<(String, AttrValue)>);

impl Attributes {
    /// Builds the set from pairs in any order.
    pub fn new(mut pairs: Vec<(String, AttrValue)>) -> Attributes {
        // A stable sort keeps duplicates in arrival order, so keeping the last of each run
        // implements "last occurrence wins".
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut unique: Vec<(String, AttrValue)> = Vec::with_capacity(pairs.len());
        for pair in pairs {
            match unique.last_mut() {
                Some(last) if last.0 == pair.0 => *last = pair,
                _ => unique.push(pair),
            }
        }
        Attributes(unique)
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

    /// Both sets in one; where a key is in both, `other`'s value wins. Both are sorted, so
    /// this is a linear merge.
    pub fn merged(&self, other: &Attributes) -> Attributes {
        if other.is_empty() {
            return self.clone();
        }
        if self.is_empty() {
            return other.clone();
        }
        let mut pairs = Vec::with_capacity(self.0.len() + other.0.len());
        let (mut left, mut right) = (self.0.iter().peekable(), other.0.iter().peekable());
        loop {
            let next = match (left.peek(), right.peek()) {
                (Some(a), Some(b)) => match a.0.cmp(&b.0) {
                    std::cmp::Ordering::Less => left.next(),
                    std::cmp::Ordering::Greater => right.next(),
                    std::cmp::Ordering::Equal => {
                        left.next();
                        right.next()
                    }
                },
                (Some(_), None) => left.next(),
                (None, Some(_)) => right.next(),
                (None, None) => break,
            };
            if let Some(pair) = next {
                pairs.push(pair.clone());
            }
        }
        Attributes(pairs)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An instance: one process's resource, exactly as sent (DESIGN.md, "Identity").
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

impl MetricId {
    /// Whether this metric counts events, so that its totals keep what retired instances
    /// counted: counters (monotonic sums), histograms and summaries. Gauges and up-down
    /// counters describe the present, and a retired instance's share leaves with it.
    pub fn counts_events(&self) -> bool {
        match self.kind {
            Kind::Sum => self.monotonic,
            Kind::Gauge => false,
            Kind::Histogram | Kind::ExponentialHistogram | Kind::Summary => true,
        }
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
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub scope: Arc<Scope>,
    pub metric: Arc<MetricId>,
    pub attributes: Attributes,
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
    /// Gauges and sums. Integers are converted to `f64`, exact up to 2^53.
    Number(f64),
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

/// A point together with the stream it belongs to (within one instance).
#[derive(Clone, Debug)]
pub struct StreamPoint {
    pub key: StreamKey,
    pub point: Point,
    /// Not identifying; kept for the metric listing.
    pub description: Arc<str>,
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
    fn merged_prefers_the_second_set() {
        let resource = attrs(&[("a", AttrValue::Int(1)), ("b", AttrValue::Int(1))]);
        let point = attrs(&[("b", AttrValue::Int(2)), ("c", AttrValue::Int(3))]);
        assert_eq!(
            resource.merged(&point),
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
