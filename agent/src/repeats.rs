//! What this agent put on record recently, so that a request arriving again with the
//! same bytes costs its audit log a digest, not another full copy.
//!
//! A hostile broker user can publish one captured request (expired, revoked, or already
//! answered) to a host's queue over and over; each copy used to append the whole request
//! and a new reply to the audit log. Now the first copy is recorded in full
//! (`request_handled`) and remembered here; a later copy answered with the very same
//! reply bytes (the stored reply of an answered request, or the earlier refusal when it
//! is refused again for the same reason) is recorded as `request_repeated`: the two
//! digests, which an auditor matches against the full record earlier in the chain.
//!
//! Held in memory only: after a restart the next copy is recorded in full again, which is
//! always correct. Bounded by [`MAX_REMEMBERED`] entries, oldest forgotten first.

use crate::stats::Reason;
use gearmq_schemas::Status;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Most requests remembered (each a few hundred bytes at most: two digests, and for a
/// refusal its signed reply).
pub const MAX_REMEMBERED: usize = 4096;

/// A request recorded in full, by the SHA-256 of its whole message.
#[derive(Debug, Clone)]
struct Recorded {
    reply_digest: [u8; 32],
    /// For a refusal: its status, reason and signed reply, to send again unchanged.
    refusal: Option<(Status, Reason, Arc<[u8]>)>,
}

#[derive(Debug, Default)]
struct Inner {
    by_request: HashMap<[u8; 32], Recorded>,
    order: VecDeque<[u8; 32]>,
}

/// Requests recorded in full by this process, newest [`MAX_REMEMBERED`].
#[derive(Debug, Default)]
pub struct Repeats {
    inner: Mutex<Inner>,
}

impl Repeats {
    /// Whether the request message with digest `request` was recorded in full with the
    /// reply whose digest is `reply`: then a repeat is recorded by digests.
    pub fn is_repeat(&self, request: &[u8; 32], reply: &[u8; 32]) -> bool {
        self.lock()
            .by_request
            .get(request)
            .is_some_and(|r| &r.reply_digest == reply)
    }

    /// The reply sent when the request message with digest `request` was refused with
    /// `status` for `reason`, to send again when it is refused the same way.
    pub fn refusal_reply(
        &self,
        request: &[u8; 32],
        status: Status,
        reason: Reason,
    ) -> Option<Arc<[u8]>> {
        match &self.lock().by_request.get(request)?.refusal {
            Some((s, r, bytes)) if *s == status && *r == reason => Some(bytes.clone()),
            _ => None,
        }
    }

    /// Remembers that the request message with digest `request` was recorded in full
    /// with `reply` (and, for a refusal, why).
    pub fn remember(&self, request: [u8; 32], reply: &[u8], refusal: Option<(Status, Reason)>) {
        let recorded = Recorded {
            reply_digest: gearmq_schemas::sha256(reply),
            refusal: refusal.map(|(s, r)| (s, r, Arc::from(reply))),
        };
        let mut inner = self.lock();
        if inner.by_request.insert(request, recorded).is_none() {
            inner.order.push_back(request);
        }
        while inner.order.len() > MAX_REMEMBERED {
            if let Some(old) = inner.order.pop_front() {
                inner.by_request.remove(&old);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Each critical section is a few map operations; a poisoned lock is consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeat_needs_the_same_request_and_reply() {
        let r = Repeats::default();
        r.remember([1; 32], b"reply", None);
        let reply = gearmq_schemas::sha256(b"reply");
        assert!(r.is_repeat(&[1; 32], &reply));
        assert!(!r.is_repeat(&[1; 32], &gearmq_schemas::sha256(b"other")));
        assert!(!r.is_repeat(&[2; 32], &reply));
    }

    #[test]
    fn a_refusal_is_sent_again_only_for_the_same_status_and_reason() {
        let r = Repeats::default();
        r.remember(
            [1; 32],
            b"expired-reply",
            Some((Status::Expired, Reason::Expired)),
        );
        assert_eq!(
            r.refusal_reply(&[1; 32], Status::Expired, Reason::Expired)
                .as_deref(),
            Some(&b"expired-reply"[..])
        );
        assert!(
            r.refusal_reply(&[1; 32], Status::Unauthorized, Reason::Revoked)
                .is_none()
        );
        r.remember([2; 32], b"ok", None);
        assert!(
            r.refusal_reply(&[2; 32], Status::Expired, Reason::Expired)
                .is_none()
        );
    }

    #[test]
    fn oldest_entries_are_forgotten_past_the_bound() {
        let r = Repeats::default();
        for i in 0..(MAX_REMEMBERED + 10) as u32 {
            let mut d = [0u8; 32];
            d[..4].copy_from_slice(&i.to_be_bytes());
            r.remember(d, b"x", None);
        }
        let x = gearmq_schemas::sha256(b"x");
        assert!(!r.is_repeat(&[0; 32], &x));
        let mut last = [0u8; 32];
        last[..4].copy_from_slice(&((MAX_REMEMBERED + 9) as u32).to_be_bytes());
        assert!(r.is_repeat(&last, &x));
        assert_eq!(r.lock().by_request.len(), MAX_REMEMBERED);
    }
}
