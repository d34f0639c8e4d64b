//! Where query work runs: never on the tokio threads that receive exports.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::QueryError;

/// Where query work runs: on tokio's blocking pool, at most `max` requests at once, never
/// on the threads that receive exports. A query over a million streams then delays other
/// queries, not ingest or `/healthz`.
#[derive(Clone, Debug)]
pub struct Workers {
    permits: Arc<Semaphore>,
}

impl Workers {
    pub fn new(max: usize) -> Workers {
        Workers {
            permits: Arc::new(Semaphore::new(max.max(1))),
        }
    }

    /// Runs `work` on the blocking pool once one of the `max` places is free.
    ///
    /// # Errors
    /// [`QueryError::Failed`] when the work panicked.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, QueryError> {
        // The semaphore is never closed, so acquiring only waits. The place moves into the
        // task: a client that hangs up does not free it while its work still runs.
        let place = Arc::clone(&self.permits).acquire_owned().await;
        let work = move || {
            let _place = place;
            work()
        };
        tokio::task::spawn_blocking(work).await.map_err(|error| {
            tracing::error!(%error, "A query failed unexpectedly");
            QueryError::Failed
        })
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
