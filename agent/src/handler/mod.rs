//! Handling of one delivery: receive → verify → authorize → act → sign → record →
//! publish → ack, in the order of docs/DESIGN.md, Request lifecycle steps 2 and 3.
//!
//! Two halves. [`Handler::decide`] is the agent's core and knows no broker: it takes a
//! message's bytes and returns a [`Decision`] — a signed reply to publish (already on
//! record), what becomes of the delivery (ack, requeue, dead-letter), and a log stream
//! to start once the first reply is out. [`Handler::handle`] applies a decision on a
//! broker session. So every refusal path, redelivery case and token use is tested on
//! the core with no RabbitMQ, and another transport can reuse it.
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

use crate::actions::logs::{FollowStart, Position};
use crate::actions::{ActionContext, RequestInfo, Services};
use crate::config::MAX_REPLY_BYTES;
use crate::dispatch::{self, Execution, Outcome};
use crate::fault::Fault;
use crate::identity::HostIdentity;
use crate::records::{Before, Desired, Previous};
use crate::repeats::Repeats;
use crate::replay::{Begin, ReplayStore, RequestKey, Reservation, Seen, SpendError, StoredReply};
use crate::session::{Published, ReplyPublisher};
use crate::stats::{Reason, Stats};
use crate::streams::{FollowStream, StreamTicket};
use crate::verifier::{
    Refusal, ReplyAddress, RequestVerifier, Screened, duration_ms, now_ms, rfc3339, token_refusal,
};
use gearmq_schemas::audit::{AuditSink, Done, Entry, SinkError};
use gearmq_schemas::time::Millis;
use gearmq_schemas::token::{TokenError, Unsealed};
use gearmq_schemas::{Reply, Signed, Status, codec};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

/// Extra time, beyond the action timeout, that a redelivered copy of a request waits
/// for the copy being handled.
const BUSY_WAIT_GRACE: Duration = Duration::from_secs(10);
/// Where a reply stands among the replies to its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Part {
    pub(crate) seq: u32,
    pub(crate) is_final: bool,
}

impl Part {
    const ONLY: Part = Part {
        seq: 0,
        is_final: true,
    };
}

/// What to do with one delivery, decided from its bytes alone ([`Handler::decide`]).
#[derive(Debug)]
pub struct Decision {
    /// A signed reply to publish with a confirm, already on record in the audit log
    /// (and in the replay store, except a stream's first reply), before `then`.
    pub reply: Option<OutgoingReply>,
    /// What becomes of the delivery once the reply is out (or at once, without one).
    pub then: Disposition,
    /// A `logs --follow` stream to start once `reply`, its seq 0, is published.
    pub stream: Option<Box<PendingStream>>,
}

/// A signed reply to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingReply {
    /// The reply queue (routing key on `gearmq.replies`).
    pub reply_to: String,
    /// The request answered (the AMQP `correlation_id`).
    pub request_id: Uuid,
    /// The signed reply.
    pub bytes: Vec<u8>,
    /// Until when a reply the broker refuses (a full reply queue) is tried again: the
    /// request's expiry.
    pub until: Millis,
}

/// What becomes of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Ack: answered, or not for this host.
    Ack,
    /// Back to the queue for a later delivery (the same request is being handled, or
    /// its record could not be written).
    Requeue,
    /// Nack without requeue, so the queue dead-letters it: its sender is not proven.
    DeadLetter,
}

/// A log stream whose first reply is decided; it starts once that reply is delivered.
#[derive(Debug)]
pub struct PendingStream {
    addr: ReplyAddress,
    unit: String,
    position: Position,
    ticket: StreamTicket,
    reservation: Reservation,
    started: Millis,
}

impl PendingStream {
    /// The unit followed.
    pub fn unit(&self) -> &str {
        &self.unit
    }

    /// Where the unit's output continues after the first reply's lines.
    pub fn position(&self) -> &Position {
        &self.position
    }

    /// The request it answers.
    pub fn addr(&self) -> &ReplyAddress {
        &self.addr
    }
}

impl Decision {
    fn just(then: Disposition) -> Decision {
        Decision {
            reply: None,
            then,
            stream: None,
        }
    }

    fn answer(addr: &ReplyAddress, reply_to: &str, bytes: Vec<u8>) -> Decision {
        Decision {
            reply: Some(OutgoingReply {
                reply_to: reply_to.to_string(),
                request_id: addr.request_id,
                bytes,
                until: addr.expires_at,
            }),
            then: Disposition::Ack,
            stream: None,
        }
    }
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
    repeats: Repeats,
    /// The publisher of the current broker session, for streams that outlive the
    /// session they started on.
    sessions: tokio::sync::watch::Sender<Option<ReplyPublisher>>,
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
        stats.attach_replay_store(store.clone());
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
            repeats: Repeats::default(),
            sessions: tokio::sync::watch::Sender::new(None),
        }
    }

    /// The handler of the host `identity` under `limits`: its request verifier (its
    /// anchors, name, labels, sealing key and the revocation list `services` holds),
    /// the counters `services` keeps, `store` and `audit`. The agent, `gearmq local`
    /// and each emulated host are built here alike.
    pub fn for_host(
        identity: HostIdentity,
        store: ReplayStore,
        services: Arc<Services>,
        audit: Arc<AuditSink>,
        limits: &crate::config::Limits,
        fault: Fault,
    ) -> Self {
        let verifier = RequestVerifier::for_host(&identity, limits, services.revocations.clone());
        let stats = services.stats.clone();
        Handler::new(
            identity,
            verifier,
            store,
            stats,
            services,
            audit,
            limits.action_timeout,
            limits.clock_skew,
            fault,
        )
    }

    /// A broker session started: streams cut by the last one's end go on on this one.
    pub fn session_started(&self, publisher: &ReplyPublisher) {
        self.sessions.send_replace(Some(publisher.clone()));
    }

    /// The broker sessions as they start, for streams that outlive theirs.
    pub(crate) fn subscribe_sessions(
        &self,
    ) -> tokio::sync::watch::Receiver<Option<ReplyPublisher>> {
        self.sessions.subscribe()
    }

    /// What actions use (systemd, unit files, streams…).
    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }

    /// The agent's counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Handles one delivery from the host queue, answering on `publisher`: decides,
    /// then applies the decision. A follow stream goes on in a task of its own after
    /// this returns.
    pub async fn handle(self: &Arc<Self>, delivery: Delivery, publisher: &ReplyPublisher) {
        let decision = self.decide(&delivery.data).await;
        self.apply(decision, &delivery, publisher).await;
    }

    /// The core: what to do with the request message `message`, from its bytes alone.
    /// Verifies, checks, reserves, acts, signs and records (audit log, replay store);
    /// publishes nothing and touches no broker.
    pub async fn decide(&self, message: &[u8]) -> Decision {
        self.stats.received();
        // Steps 1–2: size, envelope, credential chain, signature, body.
        let opened = match self.verifier.open(message) {
            Ok(o) => o,
            Err(u) => {
                warn!(
                    reason = u.reason.as_str(),
                    error = %u.detail,
                    bytes = message.len(),
                    "request dead-lettered: its sender is not proven"
                );
                self.stats.refused(u.reason);
                self.stats.dead_lettered();
                return Decision::just(Disposition::DeadLetter);
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
                return Decision::just(Disposition::Ack);
            }
            Screened::Refused(r) => {
                return self.answer(message, &addr, Err(r), started, None).await;
            }
        };
        // Step 6: a byte-identical redelivery of a request this caller had answered gets
        // its stored reply (it was authorized then); its id with other bytes is a replay.
        let key = RequestKey::new(addr.caller.as_str(), addr.request_id);
        match self.store.seen(&key, &addr.digest) {
            Seen::Answered(stored) => {
                return self.resend(message, &addr, &stored).await;
            }
            Seen::Replayed => {
                let r = replayed_refusal(&addr);
                return self.answer(message, &addr, Err(r), started, None).await;
            }
            Seen::New => {}
        }
        // Steps 7–8: role and policy, then action and arguments; for a delegated request
        // the token's own checks. All before the replay store reserves anything, so a
        // signer without the right to the action can neither fill it nor hold an id.
        let issued_at = checked.issued_at();
        let authorized = self.verifier.authorize(checked).and_then(|verified| {
            let call = dispatch::parse(&verified)?;
            self.verifier
                .check_token(&verified, call.unit(), now_ms())?;
            Ok((verified, call))
        });
        let (verified, call) = match authorized {
            Ok(v) => v,
            Err(r) => {
                return self.answer(message, &addr, Err(r), started, None).await;
            }
        };
        // Step 9: reserve (caller, id) in the replay store.
        let begin = self
            .store
            .begin_or_wait(
                &key,
                &addr.digest,
                issued_at,
                self.action_timeout + BUSY_WAIT_GRACE,
            )
            .await;
        let refusal = match begin {
            Begin::Fresh(r) => Ok(r),
            Begin::Answered(stored) => {
                // Another copy finished while this one was being checked.
                return self.resend(message, &addr, &stored).await;
            }
            Begin::Busy => {
                warn!(request_id = %addr.request_id, "the same request is still being handled; requeued");
                return Decision::just(Disposition::Requeue);
            }
            Begin::Replayed => Err(replayed_refusal(&addr)),
            Begin::BeforeState { created_at } => Err(Refusal::new(
                Status::Replayed,
                Reason::BeforeReplayState,
                format!(
                    "request issued at {} is older than this agent's replay state, which starts at {}; it cannot be told apart from a replay",
                    rfc3339(issued_at),
                    rfc3339(created_at)
                ),
            )),
            Begin::Unwritable { reason } => Err(Refusal::new(
                Status::UnknownError,
                Reason::StateUnwritable,
                reason,
            )),
            Begin::Full { stored, max } => Err(Refusal::new(
                Status::UnknownError,
                Reason::StoreFull,
                format!(
                    "replay store full ({stored} of {max} bytes); retry after older requests expire"
                ),
            )),
        };
        // One use of a delegated request's token, journaled before the action runs.
        let spent = match (refusal, verified.token()) {
            (Ok(reservation), Some(t)) => {
                self.spend_token_use(&addr, t).await.map(|()| reservation)
            }
            (other, _) => other,
        };
        let reservation = match spent {
            Ok(reservation) => reservation,
            Err(r) => {
                // A refusal keeps nothing in the store (the reservation is dropped).
                return self.answer(message, &addr, Err(r), started, None).await;
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
                return self
                    .answer(message, &addr, Ok(o), started, Some(reservation))
                    .await;
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
                return self
                    .start_stream(message, &addr, *start, &ctx, started, reservation)
                    .await;
            }
        };
        self.stats.executed();
        if ctx.intent_written() {
            self.fault.after_execute();
            self.record_outcome(&addr, &outcome).await;
        }
        self.answer(message, &addr, Ok(outcome), started, Some(reservation))
            .await
    }

    /// Applies `decision` to `delivery` on `publisher`'s session: publishes the reply
    /// (a refused one is tried again until the request expires), then acks, requeues or
    /// dead-letters; a stream starts once its first reply is out. If the publish fails
    /// the session is broken: the delivery is left unacked and comes back on the next
    /// session, where the stored reply (if any) is sent again.
    async fn apply(
        self: &Arc<Self>,
        decision: Decision,
        delivery: &Delivery,
        publisher: &ReplyPublisher,
    ) {
        let Decision {
            reply,
            then,
            stream,
        } = decision;
        if let Some(r) = reply {
            let published = publisher
                .publish_reply_until(&r.reply_to, r.request_id, &r.bytes, r.until)
                .await;
            let delivered = match published {
                Ok(Published::Delivered) => true,
                Ok(Published::Unroutable) => {
                    warn!(request_id = %r.request_id, reply_to = %r.reply_to, "reply unroutable: the caller's reply queue is gone");
                    self.stats.unroutable_reply();
                    false
                }
                Ok(Published::Refused) => {
                    warn!(request_id = %r.request_id, reply_to = %r.reply_to, "reply refused by the broker until the request expired: the caller's reply queue stayed full");
                    self.stats.unroutable_reply();
                    false
                }
                Err(e) => {
                    warn!(request_id = %r.request_id, reply_to = %r.reply_to, error = %e, "reply not published; the request will be redelivered");
                    return;
                }
            };
            if let Some(s) = stream {
                // Stored once published: a stream changes nothing, so if the session
                // broke before, the redelivered request simply starts it again.
                let s = *s;
                self.keep_reply(&s.addr, s.reservation, r.bytes).await;
                if delivered {
                    info!(request_id = %s.addr.request_id, caller = %s.addr.caller, unit = %s.unit, "log stream started");
                    let stream = FollowStream::new(
                        self.clone(),
                        publisher.clone(),
                        s.addr,
                        s.unit,
                        s.position,
                        s.ticket,
                        s.started,
                    );
                    self.services.streams.spawn(stream.run());
                } else {
                    warn!(request_id = %s.addr.request_id, "follow stream not started: the caller's reply queue is gone or full");
                }
            }
        }
        match then {
            Disposition::Ack => ack(delivery).await,
            Disposition::Requeue => requeue(delivery).await,
            Disposition::DeadLetter => nack_to_dead_letters(delivery).await,
        }
    }

    /// Sends the stored reply of an identical redelivery again (on record first: the
    /// log must show this delivery answered too).
    async fn resend(&self, message: &[u8], addr: &ReplyAddress, stored: &StoredReply) -> Decision {
        info!(request_id = %addr.request_id, caller = %addr.caller, "identical redelivery; sending the stored reply again");
        self.stats.resent();
        if !self.audit(message, addr, &stored.bytes, None).await {
            return Decision::just(Disposition::Requeue);
        }
        Decision::answer(addr, &stored.reply_to, stored.bytes.to_vec())
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

    pub(crate) async fn record_outcome(&self, addr: &ReplyAddress, outcome: &Outcome) {
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
    /// signs and records seq 0 with the last lines; the stream itself starts once seq 0
    /// is published ([`Handler::apply`]).
    async fn start_stream(
        &self,
        message: &[u8],
        addr: &ReplyAddress,
        start: FollowStart,
        ctx: &ActionContext,
        started: Millis,
        reservation: Reservation,
    ) -> Decision {
        let ticket = match self
            .services
            .streams
            .register(addr.request_id, &addr.caller)
        {
            Ok(t) => t,
            Err(e) => {
                let o = Outcome::error(Status::Conflict, e.to_string());
                return self
                    .answer(message, addr, Ok(o), started, Some(reservation))
                    .await;
            }
        };
        if let Err(e) = ctx
            .record_intent(&start.unit, Desired::Streaming, Before::default())
            .await
        {
            let o = Outcome::error(e.status, e.message);
            return self
                .answer(message, addr, Ok(o), started, Some(reservation))
                .await;
        }
        self.stats.executed();
        let first = Outcome::ok(codec::encode(&start.initial));
        let part = Part {
            seq: 0,
            is_final: false,
        };
        let bytes = self.sign_reply(addr, first, part, started, now_ms().max(started));
        if !self.audit(message, addr, &bytes, None).await {
            return Decision::just(Disposition::Requeue);
        }
        let mut decision = Decision::answer(addr, &addr.reply_to, bytes);
        decision.stream = Some(Box::new(PendingStream {
            addr: addr.clone(),
            unit: start.unit,
            position: start.position,
            ticket,
            reservation,
            started,
        }));
        decision
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

    /// Signs the reply for `outcome` (or refusal), records it in the audit log and,
    /// when `reservation` is given, in the replay store (both fsync'd), and decides to
    /// publish it and ack.
    async fn answer(
        &self,
        message: &[u8],
        addr: &ReplyAddress,
        outcome: Result<Outcome, Refusal>,
        started: Millis,
        reservation: Option<Reservation>,
    ) -> Decision {
        let request_digest = gearmq_schemas::sha256(message);
        let mut refused = None;
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
                refused = Some((r.status, r.reason));
                // The same bytes refused the same way before: that answer again.
                if let Some(before) =
                    self.repeats
                        .refusal_reply(&request_digest, r.status, r.reason)
                {
                    if !self.audit(message, addr, &before, refused).await {
                        return Decision::just(Disposition::Requeue);
                    }
                    return Decision::answer(addr, &addr.reply_to, before.to_vec());
                }
                Outcome::from(r)
            }
        };
        let finished = now_ms().max(started);
        let bytes = self.sign_reply(addr, outcome, Part::ONLY, started, finished);
        // The reply is kept for redeliveries and put on record in the audit log at the
        // same time: two files, two fsyncs, both done before it is published.
        let audited = match reservation {
            None => self.audit(message, addr, &bytes, refused).await,
            Some(reservation) => {
                let stored = self.keep_reply(addr, reservation, bytes.clone());
                let audited = self.audit(message, addr, &bytes, refused);
                tokio::join!(stored, audited).1
            }
        };
        if !audited {
            return Decision::just(Disposition::Requeue);
        }
        Decision::answer(addr, &addr.reply_to, bytes)
    }

    pub(crate) fn sign_reply(
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
        let bytes = Signed::seal(&reply, &self.identity.key, &self.identity.credential_bytes);
        if bytes.len() <= MAX_REPLY_BYTES {
            return bytes;
        }
        // Too big for orchestrators (and for the audit record beside its request): the
        // action's outcome stands, its result is not sent.
        warn!(request_id = %addr.request_id, bytes = bytes.len(), "reply over the largest reply; answering with an error instead");
        reply.status = Status::UnknownError;
        reply.data = None;
        reply.error = Some(format!(
            "the result makes a reply of {} bytes, over the largest reply ({MAX_REPLY_BYTES} bytes); it was not sent",
            bytes.len()
        ));
        Signed::seal(&reply, &self.identity.key, &self.identity.credential_bytes)
    }

    /// Records the request with `reply` in the audit log and waits until the record
    /// is durable. `false` when it could not be written: the reply must not go out
    /// unrecorded, so the caller requeues the request to answer it again.
    ///
    /// A request whose very bytes were recorded in full before, answered with the very
    /// same reply, is recorded by the two digests (`request_repeated`): a flood of one
    /// captured request costs the log ~150 bytes a copy. `refused` says why the reply
    /// refuses the request, if it does, so that the same refusal can be sent again.
    async fn audit(
        &self,
        message: &[u8],
        addr: &ReplyAddress,
        reply: &[u8],
        refused: Option<(Status, Reason)>,
    ) -> bool {
        let request_digest = gearmq_schemas::sha256(message);
        let repeat = self
            .repeats
            .is_repeat(&request_digest, &gearmq_schemas::sha256(reply));
        let entry = if repeat {
            Entry::request_repeated(message, reply)
        } else {
            Entry::request_handled(message, Some(reply))
        };
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
                if repeat {
                    self.stats.audited_repeat();
                } else {
                    self.repeats.remember(request_digest, reply, refused);
                }
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
}

/// The refusal of a request whose id its caller used before for other bytes.
fn replayed_refusal(addr: &ReplyAddress) -> Refusal {
    Refusal::new(
        Status::Replayed,
        Reason::Replayed,
        format!(
            "request id {} was already used by {} for a different request",
            addr.request_id, addr.caller
        ),
    )
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

#[cfg(test)]
mod tests;
