//! Rejected replies on record without letting a flood fill the disk: the first ones of
//! a call (or of a window, for those tied to no call) each get a `reply_rejected`
//! record with their digest and an excerpt; past [`RECORDED_PER_CALL`] they are only
//! counted, by reason, and summed up in one `replies_rejected` record when the call
//! ends (or the window closes). Nothing refused goes unrecorded: it is either a record
//! of its own or part of a summary.

use gearmq_schemas::audit::Entry;
use gearmq_schemas::time::Millis;
use std::collections::BTreeMap;
use uuid::Uuid;

/// Rejected replies recorded one by one per call (and per window of replies tied to no
/// call) before the rest are only counted.
pub const RECORDED_PER_CALL: u64 = 64;

/// How long replies tied to no call are counted before their summary is written.
pub const UNTIED_WINDOW_MS: Millis = 60_000;

/// The rejected replies of one call (or of one window) not recorded one by one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RejectTally {
    /// When the first rejected reply of this tally came (its window's start).
    opened: Option<Millis>,
    recorded: u64,
    counts: BTreeMap<String, u64>,
    bytes: u64,
    first: Option<Millis>,
    last: Millis,
}

impl RejectTally {
    /// Whether the next rejected reply, at `now`, gets a record of its own (and counts
    /// it as one).
    pub fn admit(&mut self, now: Millis) -> bool {
        self.opened.get_or_insert(now);
        if self.recorded < RECORDED_PER_CALL {
            self.recorded += 1;
            true
        } else {
            false
        }
    }

    /// Counts a rejected reply of `size` bytes refused for `reason` at `now`, to be
    /// summed up later.
    pub fn count(&mut self, reason: &str, size: usize, now: Millis) {
        *self.counts.entry(reason.to_string()).or_default() += 1;
        self.bytes = self.bytes.saturating_add(size as u64);
        self.first.get_or_insert(now);
        self.last = self.last.max(now);
    }

    /// How many were counted and not recorded one by one.
    pub fn counted(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Whether the window this tally opened with its first reply is over at `now`
    /// (for replies tied to no call: then its summary is written and it starts over).
    pub fn window_over(&self, now: Millis) -> bool {
        self.opened
            .is_some_and(|t| now.saturating_sub(t) >= UNTIED_WINDOW_MS)
    }

    /// The `replies_rejected` record of what was counted, if anything was (for the
    /// call `request_id`, or `None` for replies tied to no call); the tally starts over.
    pub fn summary(&mut self, request_id: Option<Uuid>) -> Option<Entry> {
        let done = std::mem::take(self);
        let first = done.first?;
        Entry::replies_rejected(request_id, &done.counts, done.bytes, first, done.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_are_recorded_the_rest_counted_and_summed_once() {
        let mut t = RejectTally::default();
        let mut own = 0;
        for i in 0..1000u64 {
            if t.admit(5 + i) {
                own += 1;
            } else {
                t.count(if i % 2 == 0 { "forged" } else { "malformed" }, 100, 5 + i);
            }
        }
        assert_eq!(own, RECORDED_PER_CALL);
        assert_eq!(t.counted(), 1000 - RECORDED_PER_CALL);
        let id = Uuid::now_v7();
        let entry = t.summary(Some(id)).expect("a summary");
        let s = entry.as_summary().expect("a replies_rejected entry");
        assert_eq!(s.request_id, Some(id));
        assert_eq!(s.messages, 1000 - RECORDED_PER_CALL);
        assert_eq!(s.counts.values().sum::<u64>(), s.messages);
        assert_eq!(s.bytes, 100 * s.messages);
        assert_eq!(
            (s.first_time, s.last_time),
            (5 + RECORDED_PER_CALL, 5 + 999)
        );
        assert!(t.summary(Some(id)).is_none(), "nothing twice");
    }

    #[test]
    fn a_window_opens_with_its_first_reply_and_starts_over_after_its_summary() {
        let mut t = RejectTally::default();
        assert!(!t.window_over(1_000_000));
        assert!(t.admit(1000));
        assert!(!t.window_over(1000 + UNTIED_WINDOW_MS - 1));
        assert!(t.window_over(1000 + UNTIED_WINDOW_MS));
        // Only records of their own: no summary, but the window starts over.
        assert!(t.summary(None).is_none());
        assert!(!t.window_over(1000 + UNTIED_WINDOW_MS));
    }
}
