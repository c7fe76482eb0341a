//! Counters of what the agent did with the requests it received.
//!
//! Plain atomics, updated from every handler task without locks; read as a snapshot
//! for logs, the metrics endpoint and the status file ([`crate::metrics`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Why a request was refused. Labels are stable: they appear in logs and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Over `limits.max_message_bytes` (dead-lettered).
    Oversize,
    /// The envelope did not decode (dead-lettered).
    Malformed,
    /// The signer credential does not chain to a trusted issuer (dead-lettered).
    BadCredential,
    /// The signature does not verify (dead-lettered).
    BadSignature,
    /// Signed, but the body does not decode (dead-lettered).
    MalformedBody,
    /// The signer credential is revoked.
    Revoked,
    /// The signer credential is outside its validity window.
    CredentialExpired,
    /// The request is past `expires_at` (plus skew).
    Expired,
    /// The request was issued in the future (beyond skew).
    NotYetValid,
    /// `expires_at - issued_at` is over the configured cap.
    LifetimeTooLong,
    /// The id was seen with other bytes.
    Replayed,
    /// Issued before the replay store began (state was lost or is new).
    BeforeReplayState,
    /// The signer may not make this request.
    Unauthorized,
    /// The action is not known here.
    UnknownAction,
    /// The arguments do not decode.
    InvalidArgs,
    /// The replay store is at its byte cap.
    StoreFull,
    /// A delegation token was refused (the reply names the token's own reason).
    Token,
    /// The state directory cannot be written (disk full, read-only).
    StateUnwritable,
}

impl Reason {
    /// Every reason, in counter order.
    pub const ALL: [Reason; 18] = [
        Reason::Oversize,
        Reason::Malformed,
        Reason::BadCredential,
        Reason::BadSignature,
        Reason::MalformedBody,
        Reason::Revoked,
        Reason::CredentialExpired,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::LifetimeTooLong,
        Reason::Replayed,
        Reason::BeforeReplayState,
        Reason::Unauthorized,
        Reason::UnknownAction,
        Reason::InvalidArgs,
        Reason::StoreFull,
        Reason::Token,
        Reason::StateUnwritable,
    ];

    /// The stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Oversize => "oversize",
            Reason::Malformed => "malformed",
            Reason::BadCredential => "bad_credential",
            Reason::BadSignature => "bad_signature",
            Reason::MalformedBody => "malformed_body",
            Reason::Revoked => "revoked",
            Reason::CredentialExpired => "credential_expired",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::LifetimeTooLong => "lifetime_too_long",
            Reason::Replayed => "replayed",
            Reason::BeforeReplayState => "before_replay_state",
            Reason::Unauthorized => "unauthorized",
            Reason::UnknownAction => "unknown_action",
            Reason::InvalidArgs => "invalid_args",
            Reason::StoreFull => "store_full",
            Reason::Token => "token",
            Reason::StateUnwritable => "state_unwritable",
        }
    }

    /// The reason for an `OpenError::reason()` label (unknown labels count as
    /// malformed, so a new label in schemas is still counted).
    pub fn from_open_label(label: &str) -> Reason {
        match label {
            "oversize" => Reason::Oversize,
            "bad_credential" => Reason::BadCredential,
            "bad_signature" => Reason::BadSignature,
            "malformed_body" => Reason::MalformedBody,
            _ => Reason::Malformed,
        }
    }

    fn index(self) -> usize {
        // ALL lists every variant in declaration order.
        self as usize
    }
}

/// The agent's counters.
#[derive(Debug, Default)]
pub struct Stats {
    received: AtomicU64,
    verified: AtomicU64,
    not_target: AtomicU64,
    executed: AtomicU64,
    resent: AtomicU64,
    dead_lettered: AtomicU64,
    unroutable_replies: AtomicU64,
    reconnects: AtomicU64,
    audited: AtomicU64,
    not_audited: AtomicU64,
    audit_failures: AtomicU64,
    audited_repeats: AtomicU64,
    refused: [AtomicU64; Reason::ALL.len()],
    /// The replay store, for its size in snapshots.
    replay: std::sync::OnceLock<crate::replay::ReplayStore>,
    /// Whether a broker session is open and consuming.
    connected: AtomicBool,
    /// When `connected` last changed (ms since the epoch; 0: never connected).
    connection_since: AtomicU64,
    /// When the last delivery arrived (ms since the epoch; 0: none yet).
    last_request_at: AtomicU64,
    /// Attempts to open a broker session that failed.
    connect_failures: AtomicU64,
    /// Woken when the connection state changes (the status file is rewritten).
    changed: tokio::sync::Notify,
}

/// The broker connection as last seen, for health reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionHealth {
    /// A broker session is open and consuming.
    pub connected: bool,
    /// When `connected` last changed (ms since the epoch); `None` before the first
    /// attempt ended.
    pub since: Option<u64>,
    /// When the last delivery arrived (ms since the epoch); `None` if none did.
    pub last_request_at: Option<u64>,
    /// Broker sessions re-established after a loss.
    pub reconnects: u64,
    /// Attempts to open a broker session that failed.
    pub connect_failures: u64,
}

/// A point-in-time copy of [`Stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Deliveries received.
    pub received: u64,
    /// Requests whose signature verified.
    pub verified: u64,
    /// Verified requests not addressed to this host (acked silently).
    pub not_target: u64,
    /// Actions run.
    pub executed: u64,
    /// Stored replies sent again for byte-identical redeliveries.
    pub resent: u64,
    /// Deliveries dead-lettered (failed before the signature was proven).
    pub dead_lettered: u64,
    /// Replies the broker returned as unroutable (orchestrator gone).
    pub unroutable_replies: u64,
    /// Broker sessions re-established after a loss.
    pub reconnects: u64,
    /// Requests recorded in the audit log with their reply.
    pub audited: u64,
    /// Requests answered without an audit record: the record format cannot hold them
    /// (a non-operator's request) or the entry was refused (too large).
    pub not_audited: u64,
    /// Audit writes that failed (the request was requeued to be answered again).
    pub audit_failures: u64,
    /// Of `audited`, repeats of a request already on record, recorded by digest.
    pub audited_repeats: u64,
    /// Requests held in the replay store now.
    pub replay_entries: u64,
    /// Bytes the replay store holds now (what counts against its cap).
    pub replay_bytes: u64,
    /// Refusals by reason (only non-zero ones).
    pub refused: BTreeMap<&'static str, u64>,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    /// A delivery arrived (also the last request time).
    pub fn received(&self) {
        bump(&self.received);
        self.last_request_at
            .store(gearmq_schemas::time::now_ms(), Ordering::Relaxed);
    }
    /// A broker session is open and consuming.
    pub fn broker_connected(&self) {
        self.set_connected(true)
    }
    /// The broker session ended (lost, or closed at shutdown).
    pub fn broker_disconnected(&self) {
        self.set_connected(false)
    }
    /// An attempt to open a broker session failed.
    pub fn connect_failed(&self) {
        bump(&self.connect_failures);
        if self.connection_since.load(Ordering::Relaxed) == 0 {
            // Not connected since start: the state is known now.
            self.set_connected(false);
        } else {
            self.changed.notify_one();
        }
    }
    fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
        self.connection_since
            .store(gearmq_schemas::time::now_ms(), Ordering::Relaxed);
        // One waiter (the status file writer); a stored permit is not lost.
        self.changed.notify_one();
    }
    /// Resolves at the next connection state change (or at once if one happened since
    /// the last call returned).
    pub async fn connection_changed(&self) {
        self.changed.notified().await
    }
    /// The broker connection as last seen.
    pub fn connection(&self) -> ConnectionHealth {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let nonzero = |v: u64| (v != 0).then_some(v);
        ConnectionHealth {
            connected: self.connected.load(Ordering::Relaxed),
            since: nonzero(get(&self.connection_since)),
            last_request_at: nonzero(get(&self.last_request_at)),
            reconnects: get(&self.reconnects),
            connect_failures: get(&self.connect_failures),
        }
    }
    /// A request's signature verified.
    pub fn verified(&self) {
        bump(&self.verified)
    }
    /// A verified request was not for this host.
    pub fn not_target(&self) {
        bump(&self.not_target)
    }
    /// An action ran.
    pub fn executed(&self) {
        bump(&self.executed)
    }
    /// A stored reply was sent again.
    pub fn resent(&self) {
        bump(&self.resent)
    }
    /// A delivery was dead-lettered.
    pub fn dead_lettered(&self) {
        bump(&self.dead_lettered)
    }
    /// A reply came back unroutable.
    pub fn unroutable_reply(&self) {
        bump(&self.unroutable_replies)
    }
    /// A broker session was re-established.
    pub fn reconnected(&self) {
        bump(&self.reconnects)
    }
    /// A request and its reply were recorded in the audit log.
    pub fn audited(&self) {
        bump(&self.audited)
    }
    /// A repeated request was recorded by digest (also counted as audited).
    pub fn audited_repeat(&self) {
        bump(&self.audited_repeats)
    }
    /// Lets snapshots report the size of `store`.
    pub fn attach_replay_store(&self, store: crate::replay::ReplayStore) {
        let _ = self.replay.set(store);
    }
    /// A request was answered without an audit record.
    pub fn not_audited(&self) {
        bump(&self.not_audited)
    }
    /// An audit write failed.
    pub fn audit_failure(&self) {
        bump(&self.audit_failures)
    }
    /// A request was refused for `reason`.
    pub fn refused(&self, reason: Reason) {
        if let Some(c) = self.refused.get(reason.index()) {
            bump(c)
        }
    }

    /// Copies the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            received: get(&self.received),
            verified: get(&self.verified),
            not_target: get(&self.not_target),
            executed: get(&self.executed),
            resent: get(&self.resent),
            dead_lettered: get(&self.dead_lettered),
            unroutable_replies: get(&self.unroutable_replies),
            reconnects: get(&self.reconnects),
            audited: get(&self.audited),
            not_audited: get(&self.not_audited),
            audit_failures: get(&self.audit_failures),
            audited_repeats: get(&self.audited_repeats),
            replay_entries: self.replay.get().map_or(0, |s| s.len() as u64),
            replay_bytes: self.replay.get().map_or(0, |s| s.stored_bytes() as u64),
            refused: Reason::ALL
                .iter()
                .filter_map(|r| {
                    let n = self.refused.get(r.index()).map(get).unwrap_or(0);
                    (n > 0).then_some((r.as_str(), n))
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_indexed_in_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn snapshot_counts_refusals_by_reason() {
        let s = Stats::default();
        s.received();
        s.refused(Reason::Expired);
        s.refused(Reason::Expired);
        s.refused(Reason::from_open_label("bad_signature"));
        let snap = s.snapshot();
        assert_eq!(snap.received, 1);
        assert_eq!(snap.refused.get("expired"), Some(&2));
        assert_eq!(snap.refused.get("bad_signature"), Some(&1));
        assert_eq!(snap.refused.len(), 2);
    }

    #[test]
    fn connection_state_follows_the_session() {
        let s = Stats::default();
        assert_eq!(s.connection(), ConnectionHealth::default());
        s.connect_failed();
        let h = s.connection();
        assert!(!h.connected);
        assert!(h.since.is_some());
        assert_eq!(h.connect_failures, 1);
        s.broker_connected();
        s.received();
        let h = s.connection();
        assert!(h.connected);
        assert!(h.last_request_at.is_some());
        s.broker_disconnected();
        s.reconnected();
        assert!(!s.connection().connected);
        assert_eq!(s.connection().reconnects, 1);
    }
}
