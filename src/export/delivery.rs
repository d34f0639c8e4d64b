//! Getting batches upstream: a bounded queue per exporter, retry with exponential back-off
//! on what the protocol calls retryable, no retry on permanent errors.
//!
//! Each interval's batch holds every series' latest cumulative total (or live value), so
//! a later batch supersedes an earlier one: when the queue holds `queue_size` batches or
//! `max_queue_bytes` the oldest batch is dropped (the newest is always kept), so while
//! upstream is down the queue holds the newest batches, which are sent oldest first when
//! it is back, the newest totals last.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::store::{ExporterKind, Stats};

/// One interval's series, encoded for the wire.
#[derive(Clone, Debug)]
pub struct Batch {
    pub body: Bytes,
    /// Data points (OTLP) or samples (remote-write) in it.
    pub points: u64,
}

/// What became of one attempt.
#[derive(Debug)]
pub enum Attempt {
    /// Delivered; `rejected` points were refused by upstream through `partial_success`,
    /// with its message.
    Delivered { rejected: u64, message: String },
    /// Worth trying again, after `after` when upstream said (Retry-After, RetryInfo).
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Upstream refused the batch for good (a bad request, no permission): dropped.
    Permanent { reason: String },
}

/// First and longest pause between attempts of one batch.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The queue and the back-off state of one exporter.
pub struct Queue {
    kind: ExporterKind,
    batches: VecDeque<Batch>,
    capacity: usize,
    /// Most bytes of bodies held; the newest batch is kept even alone over it.
    max_bytes: usize,
    bytes: usize,
    backoff: Duration,
    /// When the head may be tried again.
    retry_at: Option<Instant>,
    /// Whether the last attempt failed, so an outage is logged when it starts and ends.
    failing: bool,
}

impl Queue {
    pub fn new(kind: ExporterKind, capacity: usize, max_bytes: usize) -> Queue {
        Queue {
            kind,
            batches: VecDeque::with_capacity(capacity.min(1024)),
            capacity: capacity.max(1),
            max_bytes,
            bytes: 0,
            backoff: FIRST_BACKOFF,
            retry_at: None,
            failing: false,
        }
    }

    /// Adds a batch, dropping the oldest while the queue holds too many or too many bytes.
    pub fn push(&mut self, batch: Batch, stats: &Stats) {
        self.bytes += batch.body.len();
        self.batches.push_back(batch);
        while self.batches.len() > 1
            && (self.batches.len() > self.capacity || self.bytes > self.max_bytes)
        {
            self.pop();
            stats.exporter(self.kind).dropped(1);
        }
        stats.exporter(self.kind).queued(self.batches.len());
    }

    fn pop(&mut self) -> Option<Batch> {
        let batch = self.batches.pop_front()?;
        self.bytes -= batch.body.len();
        Some(batch)
    }

    /// The batch to send now, if any and if the back-off allows.
    pub fn ready(&self, now: Instant) -> Option<&Batch> {
        match self.retry_at {
            Some(at) if now < at => None,
            _ => self.batches.front(),
        }
    }

    /// When the head may next be tried (`None`: nothing waits, or it may be tried now).
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at.filter(|_| !self.batches.is_empty())
    }

    pub fn len(&self) -> usize {
        self.batches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Records what became of the head's attempt at `now`.
    pub fn settle(&mut self, attempt: Attempt, now: Instant, stats: &Stats) {
        let figures = stats.exporter(self.kind);
        let name = self.kind.as_str();
        match attempt {
            Attempt::Delivered { rejected, message } => {
                if let Some(batch) = self.pop() {
                    figures.sent(batch.points);
                }
                if rejected > 0 || !message.is_empty() {
                    figures.rejected(rejected);
                    tracing::warn!(
                        exporter = name,
                        rejected,
                        message,
                        "Upstream refused part of a batch (partial_success)"
                    );
                }
                if self.failing {
                    tracing::info!(exporter = name, "Upstream takes batches again");
                }
                self.failing = false;
                self.backoff = FIRST_BACKOFF;
                self.retry_at = None;
            }
            Attempt::Retry { reason, after } => {
                figures.retried();
                // Upstream may ask for a longer pause, never a shorter one: a Retry-After
                // of 0 must not turn the back-off into a loop.
                let pause = after.map_or(self.backoff, |after| after.max(self.backoff));
                let pause = pause.min(MAX_BACKOFF);
                if !self.failing {
                    tracing::warn!(exporter = name, %reason, "Upstream does not take batches; retrying with back-off");
                }
                tracing::debug!(exporter = name, %reason, ?pause, queued = self.batches.len(), "Retrying later");
                self.failing = true;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                self.retry_at = Some(now + pause);
            }
            Attempt::Permanent { reason } => {
                self.pop();
                figures.failed(1);
                self.failing = false;
                tracing::warn!(exporter = name, %reason, "Upstream refused a batch for good; dropped it");
                self.backoff = FIRST_BACKOFF;
                self.retry_at = None;
            }
        }
        figures.queued(self.batches.len());
    }

    /// Drops every waiting batch (counted as dropped): a newer one supersedes them.
    pub fn supersede(&mut self, stats: &Stats) {
        let dropped = self.batches.len() as u64;
        self.batches.clear();
        self.bytes = 0;
        stats.exporter(self.kind).dropped(dropped);
        stats.exporter(self.kind).queued(0);
        self.retry_at = None;
    }

    /// The pause the next retry waits (for tests and logs).
    pub fn backoff(&self) -> Duration {
        self.backoff
    }
}

/// `Retry-After` as seconds (the HTTP-date form is not used by OTLP receivers).
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(points: u64) -> Batch {
        Batch {
            body: Bytes::from_static(b"x"),
            points,
        }
    }

    fn retry(after: Option<Duration>) -> Attempt {
        Attempt::Retry {
            reason: "down".into(),
            after,
        }
    }

    #[test]
    fn the_queue_is_bounded_backs_off_and_resets_when_upstream_is_back() {
        let stats = Stats::default();
        let mut queue = Queue::new(ExporterKind::Otlp, 3, usize::MAX);
        let now = Instant::now();
        for points in 1..=5 {
            queue.push(batch(points), &stats);
        }
        assert_eq!(queue.len(), 3, "the oldest are dropped");
        assert_eq!(queue.ready(now).map(|batch| batch.points), Some(3));

        queue.settle(retry(None), now, &stats);
        assert!(queue.ready(now).is_none(), "backing off");
        assert_eq!(queue.retry_at(), Some(now + FIRST_BACKOFF));
        let later = now + FIRST_BACKOFF;
        assert!(queue.ready(later).is_some());
        queue.settle(retry(None), later, &stats);
        assert_eq!(queue.retry_at(), Some(later + FIRST_BACKOFF * 2), "doubled");
        // Upstream's own pause wins when longer, capped; a shorter one does not.
        queue.settle(retry(Some(Duration::from_secs(7))), later, &stats);
        assert_eq!(queue.retry_at(), Some(later + Duration::from_secs(7)));
        queue.settle(retry(Some(Duration::ZERO)), later, &stats);
        assert_eq!(queue.retry_at(), Some(later + FIRST_BACKOFF * 8));
        queue.settle(retry(Some(Duration::from_secs(3600))), later, &stats);
        assert_eq!(queue.retry_at(), Some(later + MAX_BACKOFF));

        let back = later + MAX_BACKOFF;
        queue.settle(
            Attempt::Delivered {
                rejected: 0,
                message: String::new(),
            },
            back,
            &stats,
        );
        assert_eq!(queue.backoff(), FIRST_BACKOFF);
        assert_eq!(queue.ready(back).map(|batch| batch.points), Some(4));
        queue.settle(
            Attempt::Permanent {
                reason: "bad request".into(),
            },
            back,
            &stats,
        );
        let (_, figures) = &stats.snapshot().exporters[0];
        assert_eq!(
            (
                figures.batches_dropped,
                figures.retries,
                figures.batches_sent
            ),
            (2, 5, 1)
        );
        assert_eq!(
            (figures.points_sent, figures.batches_failed, figures.queued),
            (3, 1, 1)
        );
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_and_keeps_the_newest() {
        let stats = Stats::default();
        let mut queue = Queue::new(ExporterKind::RemoteWrite, 100, 10);
        let sized = |len: usize, points: u64| Batch {
            body: Bytes::from(vec![0; len]),
            points,
        };
        queue.push(sized(4, 1), &stats);
        queue.push(sized(4, 2), &stats);
        queue.push(sized(4, 3), &stats);
        assert_eq!(queue.len(), 2, "12 bytes > 10: the oldest goes");
        queue.push(sized(50, 4), &stats);
        assert_eq!(queue.len(), 1, "the newest stays even alone over the bound");
        assert_eq!(
            queue.ready(Instant::now()).map(|batch| batch.points),
            Some(4)
        );
    }

    #[test]
    fn retry_after_is_read_as_seconds() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(http::header::RETRY_AFTER, "12".parse().expect("value"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(12)));
        headers.insert(http::header::RETRY_AFTER, "soon".parse().expect("value"));
        assert_eq!(retry_after(&headers), None);
    }
}
