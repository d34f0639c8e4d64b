//! Where query work runs: on threads of its own, never on the tokio threads that receive
//! exports, and in the background of them.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};

use super::QueryError;

type Job = Box<dyn FnOnce() + Send>;

/// `max` threads that run query work one job each at a time, in the order asked, in the
/// background (`SCHED_IDLE`, see [`crate::sys::run_in_background`]): when queries and
/// ingest compete for a core, ingest wins at once, and a query over a million streams
/// delays other queries, not exports or `/healthz`. Under an ingest load that keeps every
/// core busy, queries slow down instead of exports. The threads end when the last
/// clone of `Workers` is dropped.
#[derive(Clone, Debug)]
pub struct Workers {
    jobs: mpsc::Sender<Job>,
}

impl Workers {
    /// Starts `max` (at least one) query threads.
    pub fn new(max: usize) -> Workers {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..max.max(1) {
            let queue = Arc::clone(&queue);
            let started = std::thread::Builder::new()
                .name(format!("fanin-query-{index}"))
                .spawn(move || {
                    if let Err(error) = crate::sys::run_in_background() {
                        // Said once, not once per thread.
                        if index == 0 {
                            tracing::warn!(%error, "Query threads are not in the background");
                        }
                    }
                    loop {
                        // Hold the queue's lock only to take a job.
                        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        match job {
                            Ok(job) => job(),
                            Err(mpsc::RecvError) => return,
                        }
                    }
                });
            if let Err(error) = started {
                tracing::error!(%error, "Cannot start a query thread");
            }
        }
        Workers { jobs }
    }

    /// Runs `work` on a query thread once one is free.
    ///
    /// # Errors
    /// [`QueryError::Failed`] when the work panicked or no query thread runs.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, QueryError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // A panic is this query's failure, not the thread's: it goes on to the next.
            let _ = reply.send(catch_unwind(AssertUnwindSafe(work)));
        });
        if self.jobs.send(job).is_err() {
            tracing::error!("No query thread is running");
            return Err(QueryError::Failed);
        }
        match answer.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) | Err(_) => {
                tracing::error!("A query failed unexpectedly");
                Err(QueryError::Failed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::*;

    /// Waits up to a deadline for the next query to start; none starting fails the test.
    async fn next(starts: &mut tokio::sync::mpsc::UnboundedReceiver<usize>) -> usize {
        let start = tokio::time::timeout(Duration::from_secs(10), starts.recv()).await;
        start
            .ok()
            .flatten()
            .expect("a query started before the deadline")
    }

    /// Two queries block (each until the test lets it go): a third waits for a place, and the
    /// runtime, a single thread, keeps running other tasks all the while.
    #[test]
    fn blocked_queries_hold_places_not_the_runtime() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let workers = Workers::new(2);
        let (started, mut starts) = tokio::sync::mpsc::unbounded_channel();
        let mut releases = Vec::new();
        let mut queries = Vec::new();
        for query in 0..3 {
            let (release, released) = mpsc::channel::<()>();
            releases.push(release);
            let (workers, started) = (workers.clone(), started.clone());
            queries.push(runtime.spawn(async move {
                workers
                    .run(move || {
                        let _ = started.send(query);
                        let _ = released.recv();
                        query
                    })
                    .await
            }));
        }
        runtime.block_on(async {
            let first_two = [next(&mut starts).await, next(&mut starts).await];
            // The runtime thread is free: a task spawned now runs to its end.
            let other = tokio::spawn(async { 7 });
            assert_eq!(other.await.ok(), Some(7));
            assert!(
                starts.try_recv().is_err(),
                "a third query started while two held both places"
            );
            let waiting = (0..3)
                .find(|query| !first_two.contains(query))
                .expect("one query is waiting");
            let _ = releases[first_two[0]].send(());
            assert_eq!(
                next(&mut starts).await,
                waiting,
                "a freed place goes to the waiting query"
            );
            for release in &releases {
                let _ = release.send(());
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            for (query, handle) in queries.into_iter().enumerate() {
                let answer = tokio::time::timeout_at(deadline.into(), handle).await;
                assert!(matches!(answer, Ok(Ok(Ok(got))) if got == query));
            }
        });
    }

    #[test]
    fn a_query_that_panics_is_an_error_not_a_crash() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let workers = Workers::new(1);
        let failed = runtime.block_on(workers.run(|| -> u8 { panic!("a bug") }));
        assert!(matches!(failed, Err(QueryError::Failed)));
        let after = runtime.block_on(workers.run(|| 1));
        assert!(matches!(after, Ok(1)), "the place is given back");
    }
}
