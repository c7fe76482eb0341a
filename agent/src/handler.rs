//! Handling of one delivery: receive → verify → authorize → act → sign → record →
//! publish → ack, in DESIGN.md's order ("Request lifecycle", step 2 and 3).
//!
//! Never panics on input and never leaves a delivery without an outcome: it is acked
//! (answered, or not for us), dead-lettered (sender not proven), or left unacked only
//! when the session broke, so the broker redelivers it to the next session.

use crate::actions::ActionContext;
use crate::dispatch::{self, Outcome};
use crate::identity::HostIdentity;
use crate::replay::{Begin, ReplayStore, Reservation};
use crate::session::{Published, ReplyPublisher};
use crate::stats::{Reason, Stats};
use crate::verifier::{
    Refusal, ReplyAddress, RequestVerifier, Screened, duration_ms, now_ms, rfc3339,
};
use gearmq_schemas::time::Millis;
use gearmq_schemas::{Reply, Signed, Status};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, error, info, warn};

/// Extra time, beyond the action timeout, that a redelivered copy of a request waits
/// for the copy being handled.
const BUSY_WAIT_GRACE: Duration = Duration::from_secs(10);

/// Everything needed to handle deliveries; shared by all handler tasks.
#[derive(Debug)]
pub struct Handler {
    identity: HostIdentity,
    verifier: RequestVerifier,
    store: ReplayStore,
    stats: Arc<Stats>,
    action_ctx: ActionContext,
    action_timeout: Duration,
    clock_skew: Duration,
}

impl Handler {
    /// A handler for the host `identity`.
    pub fn new(
        identity: HostIdentity,
        verifier: RequestVerifier,
        store: ReplayStore,
        stats: Arc<Stats>,
        action_ctx: ActionContext,
        action_timeout: Duration,
        clock_skew: Duration,
    ) -> Self {
        Handler {
            identity,
            verifier,
            store,
            stats,
            action_ctx,
            action_timeout,
            clock_skew,
        }
    }

    /// The agent's counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Handles one delivery from the host queue, answering on `publisher`.
    pub async fn handle(&self, delivery: Delivery, publisher: &ReplyPublisher) {
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
        // Steps 8–9: role and policy, then action and arguments.
        let call = self
            .verifier
            .authorize(checked)
            .and_then(|verified| dispatch::parse(&verified));
        let outcome = match call {
            Ok(call) => {
                let o = dispatch::execute(call, &self.action_ctx, self.action_timeout).await;
                self.stats.executed();
                Ok(o)
            }
            Err(r) => Err(r),
        };
        self.answer(
            &delivery,
            publisher,
            &addr,
            outcome,
            started,
            Some(reservation),
        )
        .await;
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
        let bytes = self.sign_reply(addr, outcome, started, finished);
        let bytes: Arc<[u8]> = match reservation {
            None => bytes.into(),
            Some(reservation) => {
                let keep_until = addr.expires_at.saturating_add(duration_ms(self.clock_skew));
                let reply_to = addr.reply_to.clone();
                let copy = bytes.clone();
                match tokio::task::spawn_blocking(move || {
                    reservation.record(keep_until, reply_to, copy)
                })
                .await
                {
                    Ok((stored, Ok(()))) => stored.bytes,
                    Ok((stored, Err(e))) => {
                        error!(request_id = %addr.request_id, error = %e, "reply not persisted; replay protection for this request lasts only while the agent runs");
                        stored.bytes
                    }
                    Err(e) => {
                        error!(request_id = %addr.request_id, error = %e, "recording the reply failed");
                        bytes.into()
                    }
                }
            }
        };
        self.publish_and_ack(delivery, publisher, addr, &addr.reply_to, &bytes)
            .await;
    }

    fn sign_reply(
        &self,
        addr: &ReplyAddress,
        outcome: Outcome,
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
        reply.data = outcome.data.map(serde_bytes::ByteBuf::from);
        reply.error = outcome.error;
        Signed::seal(&reply, &self.identity.key, &self.identity.credential_bytes)
    }

    /// Publishes with confirms, then acks. If the publish fails the session is broken:
    /// the request is left unacked and comes back on the next session, where the
    /// stored reply (if any) is sent again.
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
