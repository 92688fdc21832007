//! [`SearchThreads`]: the fixed set of threads queries run on, fed from one queue.
//!
//! A query is CPU-bound. Run more at once than there are cores and the kernel
//! time-slices them, so every query takes as long as the several it shares a core with
//! (8 clients on 2 cores: a 3 ms query answered in ~25 ms at p99). Here a query waits
//! in line instead, first come first served, and once started runs at full speed on one
//! of `n` threads, which take the next query the moment they finish one — no hand-off
//! through the async runtime between two queries, so the cores stay busy. A query whose
//! caller gave up while it waited (the API's timeout) is skipped, not run.
//!
//! Metrics: `souk_search_queue_seconds` (how long each query waited for a thread) and
//! `souk_search_queued` (queries waiting now): a queue that grows is search saturated.

use crate::search::SearchError;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

type Job = Box<dyn FnOnce() + Send>;

/// The threads and their queue; the threads end when this is dropped (once the queue
/// is empty).
pub struct SearchThreads {
    queue: crossbeam_channel::Sender<Job>,
    load: Arc<Load>,
}

/// Queries running now, and the most seen at once.
#[derive(Default)]
struct Load {
    running: AtomicUsize,
    peak: AtomicUsize,
}

impl SearchThreads {
    /// Starts `n` (at least one) threads named `souk-search-<i>`.
    pub fn start(n: usize) -> std::io::Result<SearchThreads> {
        let (queue, jobs) = crossbeam_channel::unbounded::<Job>();
        for i in 0..n.max(1) {
            let jobs = jobs.clone();
            std::thread::Builder::new().name(format!("souk-search-{i}")).spawn(move || {
                while let Ok(job) = jobs.recv() {
                    job();
                }
            })?;
        }
        Ok(SearchThreads { queue, load: Arc::default() })
    }

    /// Runs `query` on the next free thread; a panic is an internal error, and the
    /// thread lives on.
    pub fn run<T, Q>(&self, query: Q) -> impl Future<Output = Result<T, SearchError>> + use<T, Q>
    where
        T: Send + 'static,
        Q: FnOnce() -> Result<T, SearchError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let load = self.load.clone();
        let queued_at = std::time::Instant::now();
        metrics::gauge!("souk_search_queued").increment(1.0);
        let job: Job = Box::new(move || {
            metrics::gauge!("souk_search_queued").decrement(1.0);
            if reply.is_closed() {
                return;
            }
            metrics::histogram!("souk_search_queue_seconds").record(queued_at.elapsed().as_secs_f64());
            let now = load.running.fetch_add(1, Ordering::Relaxed) + 1;
            load.peak.fetch_max(now, Ordering::Relaxed);
            let result = catch_unwind(AssertUnwindSafe(query))
                .unwrap_or_else(|_| Err(SearchError::Internal("a search query panicked".into())));
            load.running.fetch_sub(1, Ordering::Relaxed);
            let _ = reply.send(result);
        });
        let queued = self.queue.send(job).is_ok();
        if !queued {
            metrics::gauge!("souk_search_queued").decrement(1.0);
        }
        async move {
            if !queued {
                return Err(SearchError::Internal("the search threads are gone".into()));
            }
            answer.await.map_err(|_| SearchError::Internal("a search thread ended mid-query".into()))?
        }
    }

    /// The most queries that ran at once so far.
    pub fn peak(&self) -> usize {
        self.load.peak.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_query_is_an_error_and_its_thread_lives_on() {
        let threads = SearchThreads::start(1).expect("threads");
        let failed = threads.run(|| -> Result<(), SearchError> { panic!("boom") }).await;
        assert!(matches!(failed, Err(SearchError::Internal(_))), "{failed:?}");
        assert_eq!(threads.run(|| Ok(7)).await.expect("answered"), 7);
    }

    #[tokio::test]
    async fn a_query_whose_caller_gave_up_while_it_waited_is_not_run() {
        let threads = SearchThreads::start(1).expect("threads");
        let (hold, held) = std::sync::mpsc::channel::<()>();
        // The one thread is busy until `hold` is sent to (or dropped).
        let busy = threads.run(move || {
            let _ = held.recv();
            Ok(())
        });
        let ran = Arc::new(AtomicUsize::new(0));
        let counted = ran.clone();
        let abandoned = threads.run(move || {
            counted.fetch_add(1, Ordering::Relaxed);
            Ok(())
        });
        drop(abandoned);
        drop(hold);
        busy.await.expect("the busy query answers");
        // Queued after the abandoned one: it has run once this answers.
        threads.run(|| Ok(())).await.expect("a later query answers");
        assert_eq!(ran.load(Ordering::Relaxed), 0);
    }
}
