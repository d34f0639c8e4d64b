//! Pages of the long listings, `/api/v1/instances` and `/api/v1/series`: a page holds at
//! most `limit` items, and building it holds at most `limit + 1` of them at a time, however
//! many the store has (`docs/design.md`, "Query API").
//!
//! Items are listed in the order of a [`Cursor`], a key each item keeps for as long as it is
//! stored; a page ends with the key of its last item, and the next page starts after it. An
//! item stored meanwhile appears on a later page if its key sorts after the cursor, and an
//! item removed meanwhile is not listed; nothing is listed twice.

use std::collections::BinaryHeap;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{InstanceView, Store, StreamView, lock, lock_any, view_of};
use crate::model::Attributes;

/// Where a page of a listing ends: the key of its last item. Written as 64 hex digits.
///
/// Instances sort by when they were first seen (then by a hash of their resource), so pages
/// of instances follow their arrival; streams sort by a hash of their instance, then of
/// their own key, so that the streams of one instance stay together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor(u128, u128);

/// A cursor that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a cursor: pass back the next_cursor of the previous page")]
pub struct CursorError(String);

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}{:032x}", self.0, self.1)
    }
}

impl FromStr for Cursor {
    type Err = CursorError;

    fn from_str(text: &str) -> Result<Cursor, CursorError> {
        let invalid = || CursorError(text.chars().take(80).collect());
        if text.len() != 64 || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return Err(invalid());
        }
        let (high, low) = text.split_at(32);
        let parse = |half| u128::from_str_radix(half, 16).map_err(|_| invalid());
        Ok(Cursor(parse(high)?, parse(low)?))
    }
}

/// At most `limit` items of a listing, in cursor order, and where the next page starts
/// (`None` on the last page).
#[derive(Clone, Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Cursor>,
}

/// Collects the `limit` items with the smallest keys after a cursor from items offered in
/// any order, building an item only while it may still be on the page.
struct PageBuilder<T> {
    after: Option<Cursor>,
    limit: usize,
    /// The smallest keys offered so far, one more than `limit` so that the builder knows
    /// whether a next page exists; the largest on top.
    kept: BinaryHeap<Kept<T>>,
}

struct Kept<T> {
    key: Cursor,
    item: T,
}

impl<T> PartialEq for Kept<T> {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl<T> Eq for Kept<T> {}

impl<T> PartialOrd for Kept<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Kept<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key.cmp(&other.key)
    }
}

impl<T> PageBuilder<T> {
    fn new(after: Option<Cursor>, limit: usize) -> PageBuilder<T> {
        PageBuilder {
            after,
            limit,
            kept: BinaryHeap::new(),
        }
    }

    /// Offers the item whose key is `key`; `make` builds it only if it may be on the page.
    fn offer(&mut self, key: Cursor, make: impl FnOnce() -> T) {
        if self.after.is_some_and(|after| key <= after) {
            return;
        }
        let full = self.kept.len() > self.limit;
        if full && self.kept.peek().is_some_and(|largest| largest.key <= key) {
            return;
        }
        self.kept.push(Kept { key, item: make() });
        if full {
            self.kept.pop();
        }
    }

    fn finish(self) -> Page<T> {
        let mut kept = self.kept.into_sorted_vec();
        let more = kept.len() > self.limit;
        kept.truncate(self.limit);
        let next = if more {
            kept.last().map(|last| last.key)
        } else {
            None
        };
        Page {
            items: kept.into_iter().map(|kept| kept.item).collect(),
            next,
        }
    }
}

/// A 128-bit hash that is the same in every run of this build, so that a cursor keeps its
/// meaning. Two finishes of one SipHash state: they differ unless the whole state collides.
fn stable_hash(value: &impl Hash) -> u128 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    let high = hasher.finish();
    hasher.write_u8(0xff);
    (u128::from(high) << 64) | u128::from(hasher.finish())
}

fn instance_cursor(first_seen: SystemTime, resource: &Attributes) -> Cursor {
    let since_epoch = first_seen
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    Cursor(since_epoch, stable_hash(resource))
}

impl Store {
    /// One page of the instances: live, retired and the most recently evicted, in the order
    /// they were first seen.
    pub fn instances_page(&self, after: Option<Cursor>, limit: usize) -> Page<InstanceView> {
        let mut page = PageBuilder::new(after, limit);
        for instance in self.all_instances() {
            let state = lock(&instance.state);
            let key = instance_cursor(state.first_seen, &instance.key);
            page.offer(key, || view_of(&instance, &state));
        }
        for view in lock_any(&self.shared.evicted).iter() {
            let key = instance_cursor(view.first_seen, &view.attributes);
            page.offer(key, || view.clone());
        }
        page.finish()
    }

    /// One page of the streams of the metric named `metric`, across all instances.
    pub fn streams_page(
        &self,
        metric: &str,
        after: Option<Cursor>,
        limit: usize,
    ) -> Page<StreamView> {
        let mut page = PageBuilder::new(after, limit);
        for instance in self.all_instances() {
            let state = lock(&instance.state);
            let instance_hash = stable_hash(&*instance.key);
            for (key, stream) in state.streams.iter() {
                if key.metric.name != metric {
                    continue;
                }
                let cursor = Cursor(instance_hash, stable_hash(key));
                page.offer(cursor, || StreamView {
                    instance: Arc::clone(&instance.key),
                    live: state.retired.is_none(),
                    key: key.clone(),
                    description: Arc::clone(stream.description()),
                    state: stream.state(),
                });
            }
        }
        page.finish()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn page_of(keys: &[(u128, u128)], after: Option<Cursor>, limit: usize) -> Page<Cursor> {
        let mut page = PageBuilder::new(after, limit);
        for &(a, b) in keys {
            page.offer(Cursor(a, b), || Cursor(a, b));
        }
        page.finish()
    }

    #[test]
    fn cursors_read_back_and_bad_ones_are_refused() {
        let cursor = Cursor(u128::MAX - 7, 42);
        assert_eq!(cursor.to_string().len(), 64);
        assert_eq!(cursor.to_string().parse::<Cursor>(), Ok(cursor));
        for bad in [
            "",
            "zz",
            &"g".repeat(64),
            &"0".repeat(63),
            &"0".repeat(65),
            "+1",
        ] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad:?}");
        }
        assert_eq!(
            "x".repeat(1000)
                .parse::<Cursor>()
                .map_err(|error| error.to_string().len() < 200),
            Err(true),
            "the message quotes a bounded prefix"
        );
    }

    proptest! {
        /// Following next cursors from the start lists every key once, in order, each page
        /// at most `limit` long, whatever order the keys are offered in.
        #[test]
        fn pages_list_every_item_once_in_order(
            keys in proptest::collection::hash_set((0u128..50, 0u128..4), 0..120),
            limit in 1usize..20,
        ) {
            let keys: Vec<_> = keys.into_iter().collect();
            let mut listed = Vec::new();
            let mut after = None;
            loop {
                let page = page_of(&keys, after, limit);
                prop_assert!(page.items.len() <= limit);
                listed.extend(page.items.iter().copied());
                match page.next {
                    Some(next) => {
                        prop_assert_eq!(page.items.len(), limit);
                        prop_assert_eq!(page.items.last().copied(), Some(next));
                        after = Some(next);
                    }
                    None => break,
                }
            }
            let mut expected: Vec<_> = keys.iter().map(|&(a, b)| Cursor(a, b)).collect();
            expected.sort();
            prop_assert_eq!(listed, expected);
        }
    }
}
