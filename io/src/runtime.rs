//! Running a program's main future on the runtime's workers.
//!
//! A future passed to `block_on` runs on the calling thread, outside the runtime's
//! workers. Whatever a worker hands it through a channel — a reply to a call, a
//! delivery to the agent's consumer loop — then wakes that thread from outside the
//! runtime: a futex wake and a context switch each time. Spawned onto a worker, the
//! same hand-over stays inside the runtime (BENCHMARKS.md, run K: 12 % less
//! orchestrator CPU per reply in a 1,000-host fan-out).

use std::future::Future;
use tokio::runtime::Runtime;
use tokio::task::JoinError;

/// Runs `work` as a task on `rt`'s worker threads and waits for it on this thread. The
/// error is the task's panic (or its cancellation, which only a runtime shutting down
/// under it would cause).
pub fn block_on_worker<F>(rt: &Runtime, work: F) -> Result<F::Output, JoinError>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    rt.block_on(rt.spawn(work))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_runs_on_a_worker_and_its_panic_comes_back_as_an_error() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("worker-under-test")
            .build()
            .unwrap();
        let name = block_on_worker(&rt, async {
            std::thread::current().name().map(str::to_string)
        })
        .unwrap();
        assert_eq!(name.as_deref(), Some("worker-under-test"));
        let panicked = block_on_worker(&rt, async { panic!("boom") }).unwrap_err();
        assert!(panicked.is_panic());
    }
}
