//! What one client may make the store keep (`limits` in the config): nothing that grows
//! with input grows without a bound, and every bound that bites is a `partial_success`
//! reason the sender is told, never a silent drop.
//!
//! The defaults are far above what a real application sends (an SDK's histograms have
//! fewer than 20 bounds and 160 exponential buckets; a worker has hundreds of streams, not
//! a hundred thousand), so that only a broken or hostile client meets them.

use std::num::NonZeroUsize;

use serde::Deserialize;

use crate::model::AttrRef;

/// The bounds, one per config key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Streams kept at once across all instances, retired totals included.
    pub max_series: NonZeroUsize,
    /// Streams one instance may create: one sender's flood cannot keep a new worker out.
    pub max_series_per_instance: NonZeroUsize,
    /// Instances kept at once (live, retired and not yet evicted).
    pub max_instances: NonZeroUsize,
    /// Attributes of one point, one resource or one scope.
    pub max_attributes: NonZeroUsize,
    /// Bytes of one attribute key.
    pub max_attribute_key_bytes: NonZeroUsize,
    /// Bytes of one attribute value (an array's or a map's contents together).
    pub max_attribute_value_bytes: NonZeroUsize,
    /// Explicit bounds of one histogram point.
    pub max_histogram_bounds: NonZeroUsize,
    /// Buckets of one side of an exponential histogram point.
    pub max_exponential_buckets: NonZeroUsize,
    /// Identities other than the first that one metric name may take (type conflicts).
    pub max_type_conflicts: NonZeroUsize,
}

impl Limits {
    /// Why `pairs` (one point's, resource's or scope's attributes, as sent) break a limit,
    /// or `None`. Checked for every point: the common case (within every limit) is a few
    /// comparisons per attribute, and only a problem is described.
    #[inline]
    pub fn attribute_problem(&self, pairs: &[(&str, AttrRef<'_>)]) -> Option<String> {
        let (max_key, max_value) = (
            self.max_attribute_key_bytes.get(),
            self.max_attribute_value_bytes.get(),
        );
        let fits = pairs.len() <= self.max_attributes.get()
            && pairs.iter().all(|(key, value)| {
                key.len() <= max_key
                    && match value {
                        AttrRef::Str(text) => text.len() <= max_value,
                        AttrRef::Bytes(bytes) => bytes.len() <= max_value,
                        AttrRef::Array(_) | AttrRef::Map(_) => {
                            value_bytes(*value, max_value) <= max_value
                        }
                        AttrRef::Empty
                        | AttrRef::Bool(_)
                        | AttrRef::Int(_)
                        | AttrRef::Double(_) => true,
                    }
            });
        if fits {
            None
        } else {
            self.describe_problem(pairs)
        }
    }

    #[cold]
    fn describe_problem(&self, pairs: &[(&str, AttrRef<'_>)]) -> Option<String> {
        if pairs.len() > self.max_attributes.get() {
            return Some(format!(
                "{} attributes, more than limits.max_attributes ({})",
                pairs.len(),
                self.max_attributes
            ));
        }
        for (key, value) in pairs {
            if key.len() > self.max_attribute_key_bytes.get() {
                return Some(format!(
                    "an attribute key of {} bytes, more than limits.max_attribute_key_bytes ({})",
                    key.len(),
                    self.max_attribute_key_bytes
                ));
            }
            let bytes = value_bytes(*value, self.max_attribute_value_bytes.get());
            if bytes > self.max_attribute_value_bytes.get() {
                return Some(format!(
                    "attribute {:?} has a value of more than limits.max_attribute_value_bytes ({}) bytes",
                    truncated(key),
                    self.max_attribute_value_bytes
                ));
            }
        }
        None
    }
}

/// The bytes a value holds (strings and bytes by length, scalars 8, arrays and maps their
/// contents), counted only up to just past `limit`: a hostile nesting is not walked whole.
fn value_bytes(value: AttrRef<'_>, limit: usize) -> usize {
    match value {
        AttrRef::Empty | AttrRef::Bool(_) | AttrRef::Int(_) | AttrRef::Double(_) => 8,
        AttrRef::Str(text) => text.len(),
        AttrRef::Bytes(bytes) => bytes.len(),
        AttrRef::Array(values) => {
            let mut total = 0;
            for value in values {
                total += value_bytes(value.as_ref(), limit);
                if total > limit {
                    break;
                }
            }
            total
        }
        AttrRef::Map(attributes) => {
            let mut total = 0;
            for (key, value) in attributes.iter() {
                total += key.len() + value_bytes(value.as_ref(), limit);
                if total > limit {
                    break;
                }
            }
            total
        }
    }
}

/// A key short enough to quote in a message.
fn truncated(key: &str) -> &str {
    let mut end = key.len().min(64);
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    &key[..end]
}

#[cfg(test)]
impl Limits {
    /// Generous limits for unit tests, with `max_series` streams in all.
    pub(crate) fn with_max_series(max_series: usize) -> Limits {
        let big = NonZeroUsize::new(1 << 20).unwrap_or(NonZeroUsize::MIN);
        Limits {
            max_series: NonZeroUsize::new(max_series).unwrap_or(NonZeroUsize::MIN),
            max_series_per_instance: big,
            max_instances: big,
            max_attributes: big,
            max_attribute_key_bytes: big,
            max_attribute_value_bytes: big,
            max_histogram_bounds: big,
            max_exponential_buckets: big,
            max_type_conflicts: big,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AttrValue, Attributes};

    fn limits() -> Limits {
        let n = |n| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
        Limits {
            max_attributes: n(2),
            max_attribute_key_bytes: n(4),
            max_attribute_value_bytes: n(10),
            ..Limits::with_max_series(10)
        }
    }

    #[track_caller]
    fn check(pairs: &[(&str, AttrRef<'_>)], expected: Option<&str>) {
        let problem = limits().attribute_problem(pairs);
        match (problem, expected) {
            (None, None) => {}
            (Some(problem), Some(expected)) => assert!(problem.contains(expected), "{problem}"),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn attribute_limits() {
        check(&[("a", AttrRef::Str("0123456789"))], None);
        check(
            &[
                ("a", AttrRef::Int(1)),
                ("b", AttrRef::Int(2)),
                ("c", AttrRef::Int(3)),
            ],
            Some("3 attributes, more than limits.max_attributes (2)"),
        );
        check(
            &[("long.key", AttrRef::Int(1))],
            Some("key of 8 bytes, more than limits.max_attribute_key_bytes (4)"),
        );
        check(
            &[("a", AttrRef::Str("0123456789x"))],
            Some("\"a\" has a value of more than limits.max_attribute_value_bytes (10)"),
        );
        let nested = vec![AttrValue::Str("012345".into()); 1000];
        check(
            &[("a", AttrRef::Array(&nested))],
            Some("limits.max_attribute_value_bytes"),
        );
        let map = Attributes::new(vec![("k".into(), AttrValue::Str("0123456789".into()))]);
        check(
            &[("a", AttrRef::Map(&map))],
            Some("limits.max_attribute_value_bytes"),
        );
    }
}
