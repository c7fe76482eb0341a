//! Handling of one delivery: receive → verify → authorize → act → sign → record →
//! publish → ack, in DESIGN.md's order ("Request lifecycle", step 2 and 3).
//!
//! Never panics on input and never leaves a delivery without an outcome: it is acked
//! (answered, or not for us), dead-lettered (sender not proven), or left unacked only
//! when the session broke, so the broker redelivers it to the next session.
//!
//! Actions that change a unit write an intent record before acting; the handler
//! writes the outcome record after, then signs, records the reply, publishes and acks.
//! A request that comes back with an outcome record is answered from it; with only an
//! intent, the action resolves it against systemd's real state.
//!
//! Every request answered with a signed reply is recorded in the audit log with that
//! reply (durable, one fsync shared by concurrent handlers) before the reply is
//! published and the request acked; a stream is recorded with its first reply. If the
//! record cannot be written, nothing is published and the request is requeued, to be
//! answered (and recorded) again.
//!
//! `logs --follow` answers with several replies: seq 0 (not final) carries the last
//! lines and is published before the request is acked; a stream task then sends new
//! lines as seq 1, 2, … (not final) and ends with a final reply at the deadline, on
//! `cancel`, or on shutdown.

use crate::actions::logs::FollowStart;
use crate::actions::{ActionContext, RequestInfo, Services};
use crate::dispatch::{self, Execution, Outcome};
use crate::fault::Fault;
use crate::identity::HostIdentity;
use crate::records::{Before, Desired, Previous};
use crate::replay::{Begin, ReplayStore, Reservation, SpendError};
use crate::session::{Published, ReplyPublisher};
use crate::stats::{Reason, Stats};
use crate::streams::{StreamEnd, StreamTicket};
use crate::verifier::{
    Refusal, ReplyAddress, RequestVerifier, Screened, duration_ms, now_ms, rfc3339, token_refusal,
};
use gearmq_schemas::actions::LogsResult;
use gearmq_schemas::audit::{AuditSink, Done, Entry, SinkError};
use gearmq_schemas::time::Millis;
use gearmq_schemas::token::{TokenError, Unsealed};
use gearmq_schemas::{Reply, Signed, Status, codec};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, error, info, warn};

/// Extra time, beyond the action timeout, that a redelivered copy of a request waits
/// for the copy being handled.
const BUSY_WAIT_GRACE: Duration = Duration::from_secs(10);
/// How often a follow stream looks for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Most replies a follow stream sends per poll (each at most `limits.max_log_bytes`).
const FOLLOW_REPLIES_PER_POLL: usize = 4;
/// A stream ends this long before its request expires, so that its final reply
/// reaches a caller that stops waiting at the expiry.
const FOLLOW_END_MARGIN: Duration = Duration::from_secs(2);

/// Where a reply stands among the replies to its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Part {
    seq: u32,
    is_final: bool,
}

impl Part {
    const ONLY: Part = Part {
        seq: 0,
        is_final: true,
    };
}

/// Everything needed to handle deliveries; shared by all handler tasks.
#[derive(Debug)]
pub struct Handler {
    identity: HostIdentity,
    verifier: RequestVerifier,
    store: ReplayStore,
    stats: Arc<Stats>,
    services: Arc<Services>,
    audit: Arc<AuditSink>,
    action_timeout: Duration,
    clock_skew: Duration,
    fault: Fault,
}

impl Handler {
    /// A handler for the host `identity`, recording what it answers in `audit`;
    /// `fault` is the test seam (see [`Fault`]).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        identity: HostIdentity,
        verifier: RequestVerifier,
        store: ReplayStore,
        stats: Arc<Stats>,
        services: Arc<Services>,
        audit: Arc<AuditSink>,
        action_timeout: Duration,
        clock_skew: Duration,
        fault: Fault,
    ) -> Self {
        Handler {
            identity,
            verifier,
            store,
            stats,
            services,
            audit,
            action_timeout,
            clock_skew,
            fault,
        }
    }

    /// What actions use (systemd, unit files, streams…).
    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }

    /// The agent's counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Handles one delivery from the host queue, answering on `publisher`. A follow
    /// stream goes on in a task of its own after this returns.
    pub async fn handle(self: &Arc<Self>, delivery: Delivery, publisher: &ReplyPublisher) {
        self.stats.received();
        // Steps 1–2: size, envelope, credential chain, signature, body.
        let opened = match self.verifier.open(&delivery.data) {
            Ok(o) => o,
            Err(u) => {
                warn!(
                    reason = u.reason.as_str(),
                    error = %u.detail,
                    bytes = delivery.data.len(),
                    redelivered = delivery.redelivered,
                    "request dead-lettered: its sender is not proven"
                );
                self.stats.refused(u.reason);
                self.stats.dead_lettered();
                nack_to_dead_letters(&delivery).await;
                return;
            }
        };
        self.stats.verified();
        let addr = opened.reply_address();
        let started = now_ms();
        // Steps 3–5: target, revocation, windows, lifetime.
        let checked = match self.verifier.screen(opened, started) {
            Screened::Checked(c) => c,
            Screened::NotTarget => {
                debug!(request_id = %addr.request_id, caller = %addr.caller, "request not for this host; acked");
                self.stats.not_target();
                ack(&delivery).await;
                return;
            }
            Screened::Refused(r) => {
                self.answer(&delivery, publisher, &addr, Err(r), started, None)
                    .await;
                return;
            }
        };
        // Steps 6–7: identical redelivery, replay.
        let issued_at = checked.issued_at();
        let begin = self
            .store
            .begin_or_wait(
                checked.id(),
                checked.digest(),
                issued_at,
                self.action_timeout + BUSY_WAIT_GRACE,
            )
            .await;
        let reservation = match begin {
            Begin::Fresh(r) => r,
            Begin::Answered(stored) => {
                info!(request_id = %addr.request_id, caller = %addr.caller, "identical redelivery; sending the stored reply again");
                self.stats.resent();
                // Audited again: this delivery is a request the log must show answered.
                if !self.audit(&delivery, &addr, &stored.bytes).await {
                    requeue(&delivery).await;
                    return;
                }
                self.publish_and_ack(&delivery, publisher, &addr, &stored.reply_to, &stored.bytes)
                    .await;
                return;
            }
            Begin::Busy => {
                warn!(request_id = %addr.request_id, "the same request is still being handled; requeued");
                requeue(&delivery).await;
                return;
            }
            Begin::Replayed => {
                let r = Refusal::new(
                    Status::Replayed,
                    Reason::Replayed,
                    format!(
                        "request id {} was already used for a different request",
                        addr.request_id
                    ),
                );
                self.answer(&delivery, publisher, &addr, Err(r), started, None)
                    .await;
                return;
            }
            Begin::BeforeState { created_at } => {
                let r = Refusal::new(
                    Status::Replayed,
                    Reason::BeforeReplayState,
                    format!(
                        "request issued at {} is older than this agent's replay state, which starts at {}; it cannot be told apart from a replay",
                        rfc3339(issued_at),
                        rfc3339(created_at)
                    ),
                );
                self.answer(&delivery, publisher, &addr, Err(r), started, None)
                    .await;
                return;
            }
            Begin::Unwritable { reason } => {
                let r = Refusal::new(Status::UnknownError, Reason::StateUnwritable, reason);
                self.answer(&delivery, publisher, &addr, Err(r), started, None)
                    .await;
                return;
            }
            Begin::Full { stored, max } => {
                let r = Refusal::new(
                    Status::UnknownError,
                    Reason::StoreFull,
                    format!(
                        "replay store full ({stored} of {max} bytes); retry after older requests expire"
                    ),
                );
                self.answer(&delivery, publisher, &addr, Err(r), started, None)
                    .await;
                return;
            }
        };
        // Steps 8–9: role and policy, then action and arguments; for a delegated
        // request the token's own checks, then one of its uses (journaled first).
        let call = self.verifier.authorize(checked).and_then(|verified| {
            let call = dispatch::parse(&verified)?;
            self.verifier
                .check_token(&verified, call.unit(), now_ms())?;
            Ok((verified, call))
        });
        let call = match call {
            Ok((verified, call)) => match verified.token() {
                None => Ok(call),
                Some(t) => self.spend_token_use(&addr, t).await.map(|()| call),
            },
            Err(r) => Err(r),
        };
        let call = match call {
            Ok(call) => call,
            Err(r) => {
                self.answer(
                    &delivery,
                    publisher,
                    &addr,
                    Err(r),
                    started,
                    Some(reservation),
                )
                .await;
                return;
            }
        };
        // Act: unless the records say an earlier run of these very bytes finished.
        let previous = self
            .services
            .records
            .previous(addr.request_id, &addr.digest);
        let intent = match previous {
            Previous::Outcome(o) => {
                info!(request_id = %addr.request_id, "redelivered request resolved from its outcome record");
                self.answer(
                    &delivery,
                    publisher,
                    &addr,
                    Ok(o),
                    started,
                    Some(reservation),
                )
                .await;
                return;
            }
            Previous::Intent(i) => {
                info!(request_id = %addr.request_id, unit = %i.unit, "redelivered request has an intent record; resolving against the unit's state");
                Some(i)
            }
            Previous::None => None,
        };
        let ctx = ActionContext::new(self.services.clone(), request_info(&addr), intent);
        let outcome = match dispatch::execute(call, &ctx, self.action_timeout).await {
            Execution::Done(o) => o,
            Execution::Stream(start) => {
                self.start_stream(
                    &delivery,
                    publisher,
                    &addr,
                    *start,
                    &ctx,
                    started,
                    reservation,
                )
                .await;
                return;
            }
        };
        self.stats.executed();
        if ctx.intent_written() {
            self.fault.after_execute();
            self.record_outcome(&addr, &outcome).await;
        }
        self.answer(
            &delivery,
            publisher,
            &addr,
            Ok(outcome),
            started,
            Some(reservation),
        )
        .await;
    }

    /// Spends one use of a delegated request's token; a refusal if none is left or
    /// the use cannot be made durable.
    async fn spend_token_use(&self, addr: &ReplyAddress, t: &Unsealed) -> Result<(), Refusal> {
        let store = self.store.clone();
        let id = t.claims.id;
        let uses = t.claims.uses;
        let keep_until = t
            .claims
            .not_after
            .saturating_add(duration_ms(self.clock_skew));
        let spent =
            tokio::task::spawn_blocking(move || store.spend_token(id, uses, keep_until)).await;
        match spent {
            Ok(Ok(left)) => {
                info!(
                    request_id = %addr.request_id,
                    caller = %addr.caller,
                    token = %id,
                    minter = %t.minted_by.describe(),
                    uses_left = left,
                    "delegated request accepted"
                );
                Ok(())
            }
            Ok(Err(SpendError::UsedUp { uses })) => {
                Err(token_refusal(&TokenError::UsedUp { id, uses }))
            }
            Ok(Err(SpendError::Journal(e))) => {
                error!(error = %e, token = %id, "cannot record a token use; refusing the delegated request");
                Err(Refusal::new(
                    Status::UnknownError,
                    Reason::Token,
                    format!("cannot record the delegation token's use ({e}); nothing was done"),
                ))
            }
            Err(e) => Err(Refusal::new(
                Status::UnknownError,
                Reason::Token,
                format!("token use check failed: {e}"),
            )),
        }
    }

    async fn record_outcome(&self, addr: &ReplyAddress, outcome: &Outcome) {
        let services = self.services.clone();
        let (id, digest, o) = (addr.request_id, addr.digest, outcome.clone());
        let written = tokio::task::spawn_blocking(move || {
            services.records.write_outcome(id, &digest, &o, now_ms())
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                error!(request_id = %addr.request_id, error = %e, "outcome not recorded; a redelivery will be resolved from the intent")
            }
            Err(e) => {
                error!(request_id = %addr.request_id, error = %e, "recording the outcome failed")
            }
        }
    }

    /// Starts a `logs --follow` stream: registers it (bounded), records the intent,
    /// publishes seq 0 with the last lines, acks, and leaves the rest to a task.
    #[allow(clippy::too_many_arguments)]
    async fn start_stream(
        self: &Arc<Self>,
        delivery: &Delivery,
        publisher: &ReplyPublisher,
        addr: &ReplyAddress,
        start: FollowStart,
        ctx: &ActionContext,
        started: Millis,
        reservation: Reservation,
    ) {
        let ticket = match self
            .services
            .streams
            .register(addr.request_id, &addr.caller)
        {
            Ok(t) => t,
            Err(e) => {
                let o = Outcome::error(Status::Conflict, e.to_string());
                self.answer(delivery, publisher, addr, Ok(o), started, Some(reservation))
                    .await;
                return;
            }
        };
        if let Err(e) = ctx
            .record_intent(&start.unit, Desired::Streaming, Before::default())
            .await
        {
            let o = Outcome::error(e.status, e.message);
            self.answer(delivery, publisher, addr, Ok(o), started, Some(reservation))
                .await;
            return;
        }
        self.stats.executed();
        let first = Outcome::ok(codec::encode(&start.initial));
        let part = Part {
            seq: 0,
            is_final: false,
        };
        let bytes = self.sign_reply(addr, first, part, started, now_ms().max(started));
        if !self.audit(delivery, addr, &bytes).await {
            drop(ticket);
            requeue(delivery).await;
            return;
        }
        // Published before it is stored: a stream changes nothing, so if the session
        // breaks here the redelivered request may simply start the stream again.
        match publisher
            .publish_reply(&addr.reply_to, addr.request_id, &bytes)
            .await
        {
            Ok(Published::Delivered) => {}
            Ok(Published::Unroutable) => {
                warn!(request_id = %addr.request_id, "follow stream not started: the caller's reply queue is gone");
                self.stats.unroutable_reply();
                self.keep_reply(addr, reservation, bytes).await;
                ack(delivery).await;
                return;
            }
            Err(e) => {
                warn!(request_id = %addr.request_id, error = %e, "follow stream not started: reply not published; the request will be redelivered");
                return;
            }
        }
        self.keep_reply(addr, reservation, bytes).await;
        ack(delivery).await;
        info!(request_id = %addr.request_id, caller = %addr.caller, unit = %start.unit, "log stream started");
        let now = now_ms();
        let until_expiry = Duration::from_millis(addr.expires_at.saturating_sub(now))
            .saturating_sub(FOLLOW_END_MARGIN);
        let deadline =
            tokio::time::Instant::now() + until_expiry.min(self.services.limits.max_follow);
        let stream = FollowStream {
            handler: self.clone(),
            publisher: publisher.clone(),
            addr: addr.clone(),
            unit: start.unit,
            offset: start.offset,
            ticket,
            deadline,
            started,
        };
        self.services.streams.spawn(stream.run());
    }

    /// Records a reply for redeliveries (blocking write, off the async threads).
    async fn keep_reply(&self, addr: &ReplyAddress, reservation: Reservation, bytes: Vec<u8>) {
        let keep_until = addr.expires_at.saturating_add(duration_ms(self.clock_skew));
        let reply_to = addr.reply_to.clone();
        let stored =
            tokio::task::spawn_blocking(move || reservation.record(keep_until, reply_to, bytes).1)
                .await;
        match stored {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                error!(request_id = %addr.request_id, error = %e, "reply not persisted; replay protection for this request lasts only while the agent runs")
            }
            Err(e) => {
                error!(request_id = %addr.request_id, error = %e, "recording the reply failed")
            }
        }
    }

    /// Signs the reply for `outcome` (or refusal), records it when `reservation` is
    /// given (fsync'd before publishing), publishes it and acks the request.
    async fn answer(
        &self,
        delivery: &Delivery,
        publisher: &ReplyPublisher,
        addr: &ReplyAddress,
        outcome: Result<Outcome, Refusal>,
        started: Millis,
        reservation: Option<Reservation>,
    ) {
        let outcome = match outcome {
            Ok(o) => {
                info!(
                    request_id = %addr.request_id,
                    caller = %addr.caller,
                    action = %addr.action,
                    status = o.status.as_str(),
                    "request executed"
                );
                o
            }
            Err(r) => {
                info!(
                    request_id = %addr.request_id,
                    caller = %addr.caller,
                    action = %addr.action,
                    status = r.status.as_str(),
                    reason = r.reason.as_str(),
                    "request refused: {}",
                    r.message
                );
                self.stats.refused(r.reason);
                Outcome::from(r)
            }
        };
        let finished = now_ms().max(started);
        let bytes = self.sign_reply(addr, outcome, Part::ONLY, started, finished);
        // The reply is kept for redeliveries and put on record in the audit log at the
        // same time: two files, two fsyncs, both done before it is published.
        let audited = match reservation {
            None => self.audit(delivery, addr, &bytes).await,
            Some(reservation) => {
                let stored = self.keep_reply(addr, reservation, bytes.clone());
                let audited = self.audit(delivery, addr, &bytes);
                tokio::join!(stored, audited).1
            }
        };
        if !audited {
            requeue(delivery).await;
            return;
        }
        self.publish_and_ack(delivery, publisher, addr, &addr.reply_to, &bytes)
            .await;
    }

    fn sign_reply(
        &self,
        addr: &ReplyAddress,
        outcome: Outcome,
        part: Part,
        started: Millis,
        finished: Millis,
    ) -> Vec<u8> {
        let mut reply = Reply::new(
            addr.request_id,
            addr.digest,
            self.identity.name.clone(),
            outcome.status,
            started,
            finished,
        );
        reply.seq = part.seq;
        reply.is_final = part.is_final;
        reply.data = outcome.data.map(serde_bytes::ByteBuf::from);
        reply.error = outcome.error;
        Signed::seal(&reply, &self.identity.key, &self.identity.credential_bytes)
    }

    /// Records the request with `reply` in the audit log and waits until the record
    /// is durable. `false` when it could not be written: the reply must not go out
    /// unrecorded, so the caller requeues the request to answer it again.
    async fn audit(&self, delivery: &Delivery, addr: &ReplyAddress, reply: &[u8]) -> bool {
        let entry = Entry::request_handled(&delivery.data, Some(reply));
        // Joins the writer thread's next batch (one fsync for every handler waiting);
        // no thread waits for it unless the queue is full.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done: Done = Box::new(move |r| {
            let _ = tx.send(r);
        });
        let written = match self.audit.try_record_then(entry, done) {
            Ok(()) => rx.await.unwrap_or(Err(SinkError::Stopped)),
            Err(full) => match full.entry {
                Some(entry) => {
                    let sink = self.audit.clone();
                    tokio::task::spawn_blocking(move || sink.record_durable(entry))
                        .await
                        .unwrap_or(Err(SinkError::Stopped))
                }
                None => Err(SinkError::Stopped),
            },
        };
        match written {
            Ok(()) => {
                self.stats.audited();
                true
            }
            Err(e) if e.entry_refused() => {
                error!(request_id = %addr.request_id, error = %e, "request answered but not audit-logged: the log refuses its record");
                self.stats.not_audited();
                true
            }
            Err(e) => {
                error!(request_id = %addr.request_id, error = %e, "audit log write failed; the request is requeued and will be answered again");
                self.stats.audit_failure();
                false
            }
        }
    }

    /// Publishes a reply already on record in the audit log, with a confirm, then acks
    /// the request. If the publish fails the session is broken: the request is left
    /// unacked and comes back on the next session, where the stored reply (if any) is
    /// sent again.
    async fn publish_and_ack(
        &self,
        delivery: &Delivery,
        publisher: &ReplyPublisher,
        addr: &ReplyAddress,
        reply_to: &str,
        bytes: &[u8],
    ) {
        match publisher
            .publish_reply(reply_to, addr.request_id, bytes)
            .await
        {
            Ok(Published::Delivered) => ack(delivery).await,
            Ok(Published::Unroutable) => {
                warn!(request_id = %addr.request_id, reply_to, "reply unroutable: the caller's reply queue is gone");
                self.stats.unroutable_reply();
                ack(delivery).await;
            }
            Err(e) => {
                warn!(request_id = %addr.request_id, reply_to, error = %e, "reply not published; the request will be redelivered");
            }
        }
    }
}

/// A running `logs --follow` stream.
struct FollowStream {
    handler: Arc<Handler>,
    publisher: ReplyPublisher,
    addr: ReplyAddress,
    unit: String,
    offset: u64,
    ticket: StreamTicket,
    deadline: tokio::time::Instant,
    started: Millis,
}

impl FollowStream {
    /// Polls the unit's output and sends new lines until the deadline, a cancel or
    /// shutdown; then the final reply and the outcome record.
    async fn run(mut self) {
        let mut seq = 1u32;
        let max_bytes = self.handler.services.limits.max_log_bytes;
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
    /// too), at most one reply's worth; `None` if the file cannot be read.
    async fn read(&mut self, partial: bool) -> Option<LogsResult> {
        let services = self.handler.services.clone();
        let unit = self.unit.clone();
        let offset = self.offset;
        let max = services.limits.max_log_bytes;
        let read = tokio::task::spawn_blocking(move || {
            services.output.read_from(&unit, offset, max, partial)
        })
        .await;
        match read {
            Ok(Ok(chunk)) => {
                self.offset = chunk.next_offset;
                Some(LogsResult {
                    lines: chunk.lines,
                    truncated: chunk.truncated,
                })
            }
            Ok(Err(e)) => {
                warn!(request_id = %self.addr.request_id, unit = %self.unit, error = %e, "cannot read unit output");
                None
            }
            Err(e) => {
                warn!(request_id = %self.addr.request_id, error = %e, "reading unit output failed");
                None
            }
        }
    }

    /// Signs and publishes one reply; `false` if the session is gone (the stream
    /// cannot go on: its request was acked and will not come back).
    async fn send(&self, seq: u32, is_final: bool, outcome: Outcome) -> bool {
        let part = Part { seq, is_final };
        let bytes = self.handler.sign_reply(
            &self.addr,
            outcome,
            part,
            self.started,
            now_ms().max(self.started),
        );
        match self
            .publisher
            .publish_reply(&self.addr.reply_to, self.addr.request_id, &bytes)
            .await
        {
            Ok(Published::Delivered) => true,
            Ok(Published::Unroutable) => {
                info!(request_id = %self.addr.request_id, "log stream ended: the caller's reply queue is gone");
                false
            }
            Err(e) => {
                warn!(request_id = %self.addr.request_id, error = %e, "log stream ended: reply not published");
                false
            }
        }
    }
}

fn request_info(addr: &ReplyAddress) -> RequestInfo {
    RequestInfo {
        id: addr.request_id,
        digest: addr.digest,
        caller: addr.caller.clone(),
        action: addr.action.to_string(),
        expires_at: addr.expires_at,
    }
}

async fn ack(delivery: &Delivery) {
    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
        debug!(error = %e, "ack failed (session gone; the broker will redeliver)");
    }
}

async fn nack_to_dead_letters(delivery: &Delivery) {
    let opts = BasicNackOptions {
        multiple: false,
        requeue: false,
    };
    if let Err(e) = delivery.acker.nack(opts).await {
        debug!(error = %e, "nack failed (session gone; the broker will redeliver)");
    }
}

async fn requeue(delivery: &Delivery) {
    // Give the first copy time to finish before this one comes back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let opts = BasicNackOptions {
        multiple: false,
        requeue: true,
    };
    if let Err(e) = delivery.acker.nack(opts).await {
        debug!(error = %e, "requeue failed (session gone; the broker will redeliver)");
    }
}
