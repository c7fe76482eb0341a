//! Open `logs --follow` streams: bounded in number, ended by their deadline, by a
//! `cancel` from the caller that started them, or by the agent shutting down.

use gearmq_schemas::Name;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// Why a stream could not be registered or cancelled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// `limits.max_streams` streams are open.
    #[error("{max} log streams are open already (limits.max_streams); try again later")]
    TooMany {
        /// The limit.
        max: usize,
    },
    /// No open stream has that request id.
    #[error("no open stream for request {id} on this host")]
    NotFound {
        /// The request id asked for.
        id: Uuid,
    },
    /// The stream belongs to another caller.
    #[error("the stream of request {id} was started by another caller")]
    OtherCaller {
        /// The request id asked for.
        id: Uuid,
    },
}

/// Why a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// Its deadline passed.
    Deadline,
    /// Its caller cancelled it.
    Cancelled,
    /// The agent is shutting down.
    Shutdown,
}

#[derive(Debug)]
struct Open {
    caller: Name,
    cancel: CancellationToken,
}

#[derive(Debug)]
struct Inner {
    max: usize,
    open: Mutex<HashMap<Uuid, Open>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// The registry of open streams. Cheap to clone; clones share it.
#[derive(Debug, Clone)]
pub struct Streams {
    inner: Arc<Inner>,
}

/// A registered stream; unregistered when dropped.
#[derive(Debug)]
pub struct StreamTicket {
    inner: Arc<Inner>,
    id: Uuid,
    cancel: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section is one map operation; a poisoned map is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Streams {
    /// A registry allowing `max` streams at once.
    pub fn new(max: usize) -> Self {
        Streams {
            inner: Arc::new(Inner {
                max,
                open: Mutex::new(HashMap::new()),
                shutdown: CancellationToken::new(),
                tracker: TaskTracker::new(),
            }),
        }
    }

    /// Registers the stream of request `id` started by `caller`.
    pub fn register(&self, id: Uuid, caller: &Name) -> Result<StreamTicket, StreamError> {
        let mut open = lock(&self.inner.open);
        if open.len() >= self.inner.max {
            return Err(StreamError::TooMany {
                max: self.inner.max,
            });
        }
        let cancel = self.inner.shutdown.child_token();
        open.insert(
            id,
            Open {
                caller: caller.clone(),
                cancel: cancel.clone(),
            },
        );
        Ok(StreamTicket {
            inner: self.inner.clone(),
            id,
            cancel,
        })
    }

    /// Ends the stream of request `id` if `caller` started it.
    pub fn cancel(&self, id: Uuid, caller: &Name) -> Result<(), StreamError> {
        let open = lock(&self.inner.open);
        match open.get(&id) {
            None => Err(StreamError::NotFound { id }),
            Some(o) if &o.caller != caller => Err(StreamError::OtherCaller { id }),
            Some(o) => {
                o.cancel.cancel();
                Ok(())
            }
        }
    }

    /// How many streams are open.
    pub fn len(&self) -> usize {
        lock(&self.inner.open).len()
    }

    /// Whether no stream is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs a stream's task, tracked so shutdown can wait for it.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.inner.tracker.spawn(task);
    }

    /// Ends every stream (they send their final reply) and waits up to `timeout`.
    /// Returns whether all finished.
    pub async fn shut_down(&self, timeout: Duration) -> bool {
        self.inner.shutdown.cancel();
        self.inner.tracker.close();
        tokio::time::timeout(timeout, self.inner.tracker.wait())
            .await
            .is_ok()
    }
}

impl StreamTicket {
    /// Waits for the end of the stream by cancel or shutdown (the deadline is the
    /// stream's own).
    pub async fn ended(&self) -> StreamEnd {
        self.cancel.cancelled().await;
        if self.inner.shutdown.is_cancelled() {
            StreamEnd::Shutdown
        } else {
            StreamEnd::Cancelled
        }
    }
}

impl Drop for StreamTicket {
    fn drop(&mut self) {
        lock(&self.inner.open).remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> Name {
        Name::new(n).unwrap()
    }

    #[tokio::test]
    async fn bounded_cancelled_by_the_same_caller_only() {
        let s = Streams::new(2);
        let a = Uuid::now_v7();
        let t1 = s.register(a, &name("ops")).unwrap();
        let t2 = s.register(Uuid::now_v7(), &name("ops")).unwrap();
        assert_eq!(
            s.register(Uuid::now_v7(), &name("ops")).unwrap_err(),
            StreamError::TooMany { max: 2 }
        );
        drop(t2);
        assert_eq!(s.len(), 1);
        assert_eq!(
            s.cancel(a, &name("eve")).unwrap_err(),
            StreamError::OtherCaller { id: a }
        );
        let other = Uuid::now_v7();
        assert_eq!(
            s.cancel(other, &name("ops")).unwrap_err(),
            StreamError::NotFound { id: other }
        );
        s.cancel(a, &name("ops")).unwrap();
        assert_eq!(t1.ended().await, StreamEnd::Cancelled);
        drop(t1);
        assert!(s.is_empty());
    }

    #[tokio::test]
    async fn shutdown_ends_every_stream_and_waits() {
        let s = Streams::new(4);
        let t = s.register(Uuid::now_v7(), &name("ops")).unwrap();
        s.spawn(async move {
            assert_eq!(t.ended().await, StreamEnd::Shutdown);
        });
        assert!(s.shut_down(Duration::from_secs(5)).await);
        assert!(s.is_empty());
    }
}
