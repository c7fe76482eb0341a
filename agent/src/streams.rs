//! `logs --follow` streams, all of them here: the registry of open streams (bounded in
//! number, ended by their deadline, by a `cancel` from the caller that started them, or
//! by the agent shutting down) and the stream task itself, which outlives the broker
//! session it started on.

use crate::actions::logs::{Position, read_more};
use crate::dispatch::Outcome;
use crate::handler::{Handler, Part};
use crate::session::{Published, ReplyPublisher};
use crate::verifier::{ReplyAddress, now_ms};
use gearmq_schemas::actions::LogsResult;
use gearmq_schemas::time::Millis;
use gearmq_schemas::{Name, Status, codec};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use uuid::Uuid;

/// How long a stream keeps trying a caller whose reply queue is gone (it may be
/// reconnecting, and declares its queue again) before it ends.
const CALLER_GONE_GRACE: Duration = Duration::from_secs(5);
/// How often a follow stream looks for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Most replies a follow stream sends per poll (each at most `limits.max_log_bytes`).
const FOLLOW_REPLIES_PER_POLL: usize = 4;
/// A stream ends this long before its request expires, so that its final reply
/// reaches a caller that stops waiting at the expiry.
const FOLLOW_END_MARGIN: Duration = Duration::from_secs(2);

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

/// A running `logs --follow` stream: polls the unit's output and sends new lines as
/// replies seq 1, 2, … until its deadline, a cancel or shutdown, then a final reply.
pub struct FollowStream {
    handler: Arc<Handler>,
    publisher: ReplyPublisher,
    addr: ReplyAddress,
    unit: String,
    position: Position,
    ticket: StreamTicket,
    deadline: tokio::time::Instant,
    started: Millis,
}

impl FollowStream {
    /// A stream for the request at `addr` whose seq 0 is published: it follows `unit`'s
    /// output from `position` on, until the request's expiry (less a margin) or
    /// `limits.max_follow`, whichever comes first.
    pub fn new(
        handler: Arc<Handler>,
        publisher: ReplyPublisher,
        addr: ReplyAddress,
        unit: String,
        position: Position,
        ticket: StreamTicket,
        started: Millis,
    ) -> FollowStream {
        let now = now_ms();
        let until_expiry = Duration::from_millis(addr.expires_at.saturating_sub(now))
            .saturating_sub(FOLLOW_END_MARGIN);
        let deadline =
            tokio::time::Instant::now() + until_expiry.min(handler.services().limits.max_follow);
        FollowStream {
            handler,
            publisher,
            addr,
            unit,
            position,
            ticket,
            deadline,
            started,
        }
    }

    /// Polls the unit's output and sends new lines until the deadline, a cancel or
    /// shutdown; then the final reply and the outcome record.
    pub async fn run(mut self) {
        let mut seq = 1u32;
        let max_bytes = self.handler.services().limits.max_log_bytes;
        let end = loop {
            tokio::select! {
                biased;
                e = self.ticket.ended() => break e,
                _ = tokio::time::sleep_until(self.deadline) => break StreamEnd::Deadline,
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
            }
            for _ in 0..FOLLOW_REPLIES_PER_POLL {
                let Some(chunk) = self.read(false).await else {
                    break;
                };
                if chunk.lines.is_empty() {
                    break;
                }
                let caught_up = chunk.lines.iter().map(String::len).sum::<usize>() < max_bytes / 2;
                if !self
                    .send(seq, false, Outcome::ok(codec::encode(&chunk)))
                    .await
                {
                    return;
                }
                seq = seq.saturating_add(1);
                if caught_up {
                    break;
                }
            }
        };
        let outcome = match end {
            StreamEnd::Shutdown => Outcome::error(
                Status::Aborted,
                "the agent is shutting down; the log stream ended early",
            ),
            StreamEnd::Deadline | StreamEnd::Cancelled => {
                let rest = self.read(true).await.unwrap_or_default();
                Outcome::ok(codec::encode(&rest))
            }
        };
        info!(request_id = %self.addr.request_id, end = ?end, replies = seq + 1, "log stream ended");
        if self.send(seq, true, outcome.clone()).await {
            self.handler.record_outcome(&self.addr, &outcome).await;
        }
    }

    /// New lines since the last read (with `partial`, a last line without newline
    /// too), at most one reply's worth; `None` if the output cannot be read.
    async fn read(&mut self, partial: bool) -> Option<LogsResult> {
        let services = self.handler.services().clone();
        match read_more(&services, &mut self.position, partial).await {
            Ok(chunk) => Some(chunk),
            Err(e) => {
                warn!(request_id = %self.addr.request_id, unit = %self.unit, error = %e, "cannot read unit output");
                None
            }
        }
    }

    /// Signs and publishes one reply; `false` if it cannot be delivered. A broken broker
    /// session does not end the stream: the same reply goes out on the next session
    /// (the caller's `seq` check drops nothing it has not seen), until the stream's
    /// deadline. A reply queue that is gone is tried again for [`CALLER_GONE_GRACE`],
    /// since a caller that lost its connection declares it again.
    async fn send(&mut self, seq: u32, is_final: bool, outcome: Outcome) -> bool {
        let part = Part { seq, is_final };
        let bytes = self.handler.sign_reply(
            &self.addr,
            outcome,
            part,
            self.started,
            now_ms().max(self.started),
        );
        let mut gone_since: Option<tokio::time::Instant> = None;
        loop {
            match self
                .publisher
                .publish_reply(&self.addr.reply_to, self.addr.request_id, &bytes)
                .await
            {
                Ok(Published::Delivered) => return true,
                Ok(Published::Unroutable | Published::Refused) => {
                    let since = *gone_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= CALLER_GONE_GRACE {
                        info!(request_id = %self.addr.request_id, "log stream ended: the caller's reply queue is gone or full");
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => {
                    warn!(request_id = %self.addr.request_id, seq, error = %e, "log stream reply not published; waiting for the broker session to come back");
                    match self.next_session().await {
                        Some(p) => self.publisher = p,
                        None => {
                            info!(request_id = %self.addr.request_id, "log stream ended: no broker session before its end");
                            return false;
                        }
                    }
                }
            }
        }
    }

    /// The next unbroken broker session's publisher; `None` if the stream ends first.
    async fn next_session(&self) -> Option<ReplyPublisher> {
        let mut sessions = self.handler.subscribe_sessions();
        let until = self.deadline + FOLLOW_END_MARGIN;
        loop {
            if let Some(p) = sessions.borrow_and_update().clone()
                && !p.is_broken()
            {
                return Some(p);
            }
            tokio::select! {
                changed = sessions.changed() => changed.ok()?,
                _ = tokio::time::sleep_until(until) => return None,
                _ = self.ticket.ended() => return None,
            }
        }
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
