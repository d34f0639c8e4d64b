//! One memory budget for requests in flight, shared by every listener
//! (`receivers.otlp.max_inflight_bytes`).
//!
//! A request takes budget for each piece of its body as it arrives, and for what inflating
//! it produces, and gives it all back when it has been stored and answered. When the budget
//! has no room, the request is refused at once with a code OTLP exporters retry (HTTP 503
//! with `Retry-After`, gRPC `UNAVAILABLE`): memory then follows the budget, not the number
//! of slow or concurrent senders, and nothing stored changes.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget, in bytes. Cheap to clone: clones share it.
#[derive(Clone, Debug)]
pub struct Budget {
    bytes: Arc<Semaphore>,
    total: usize,
}

/// What one request holds of the budget; given back when dropped.
#[derive(Debug, Default)]
pub struct Held {
    permit: Option<OwnedSemaphorePermit>,
}

/// The budget has no room for a request's next bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "fanin is holding {total} bytes of requests in flight (receivers.otlp.max_inflight_bytes); retry later"
)]
pub struct Exhausted {
    pub total: usize,
}

impl Budget {
    pub fn new(total: usize) -> Budget {
        // tokio's semaphore counts at most `usize::MAX >> 3` permits.
        let total = total.min(Semaphore::MAX_PERMITS);
        Budget {
            bytes: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Takes `n` more bytes for `held`, without waiting.
    ///
    /// # Errors
    /// [`Exhausted`] when the budget has no room for them; `held` is unchanged then.
    pub fn take(&self, held: &mut Held, n: usize) -> Result<(), Exhausted> {
        if n == 0 {
            return Ok(());
        }
        let exhausted = Exhausted { total: self.total };
        let n = u32::try_from(n).map_err(|_| exhausted)?;
        let permit = Arc::clone(&self.bytes)
            .try_acquire_many_owned(n)
            .map_err(|_| exhausted)?;
        match &mut held.permit {
            Some(held) => held.merge(permit),
            None => held.permit = Some(permit),
        }
        Ok(())
    }

    /// Bytes free right now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

impl Held {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.permit
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits)
    }
}

/// A [`Held`] that the parts of one request share (the body being read, the handler that
/// stores it), given back when the last part lets go.
#[derive(Clone, Debug, Default)]
pub struct SharedHeld(Arc<Mutex<Held>>);

impl SharedHeld {
    /// Takes `n` more bytes of `budget` for this request.
    ///
    /// # Errors
    /// [`Exhausted`] when the budget has no room.
    pub fn take(&self, budget: &Budget, n: usize) -> Result<(), Exhausted> {
        let mut held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        budget.take(&mut held, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_held_until_dropped_and_a_request_past_the_budget_holds_nothing_more() {
        let budget = Budget::new(100);
        let mut first = Held::default();
        budget.take(&mut first, 60).expect("room");
        budget.take(&mut first, 30).expect("room");
        assert_eq!(first.bytes(), 90);
        let mut second = Held::default();
        assert_eq!(budget.take(&mut second, 20), Err(Exhausted { total: 100 }));
        assert_eq!(second.bytes(), 0);
        drop(first);
        assert_eq!(budget.available(), 100);
        budget.take(&mut second, 100).expect("room again");
    }

    #[test]
    fn parts_of_one_request_share_what_it_holds() {
        let budget = Budget::new(10);
        let held = SharedHeld::default();
        let body = held.clone();
        body.take(&budget, 6).expect("room");
        held.take(&budget, 4).expect("room");
        assert_eq!(budget.available(), 0);
        drop(body);
        assert_eq!(budget.available(), 0, "the handler still holds the request");
        drop(held);
        assert_eq!(budget.available(), 10);
    }
}
