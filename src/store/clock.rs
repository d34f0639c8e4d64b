//! The monotonic clock the store reads for liveness: when an instance last exported, when
//! it was retired. The real clock in production; a clock that only moves when told in tests,
//! so that retirement and eviction after `instance_ttl` need no real waiting.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A source of monotonic time. Cheap to clone; clones share the time.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// `None`: the real clock. Otherwise a fixed origin and how far the clock was moved.
    manual: Option<(Instant, Arc<AtomicU64>)>,
}

impl Clock {
    /// The real monotonic clock.
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// A clock that stands still until [`Clock::advance`] moves it.
    pub fn manual() -> Clock {
        Clock {
            manual: Some((Instant::now(), Arc::new(AtomicU64::new(0)))),
        }
    }

    pub fn now(&self) -> Instant {
        match &self.manual {
            None => Instant::now(),
            Some((origin, moved)) => *origin + Duration::from_nanos(moved.load(Ordering::SeqCst)),
        }
    }

    /// Moves a manual clock forward; the real clock moves by itself and is left alone.
    pub fn advance(&self, by: Duration) {
        if let Some((_, moved)) = &self.manual {
            let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
            moved.fetch_add(nanos, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_clones_share_it() {
        let clock = Clock::manual();
        let shared = clock.clone();
        let start = clock.now();
        assert_eq!(shared.now(), start);
        clock.advance(Duration::from_secs(600));
        assert_eq!(shared.now(), start + Duration::from_secs(600));
    }
}
