//! The store's memory: answered requests by (caller, id), ids being handled, token
//! uses, and the bytes held against the cap.

use gearmq_schemas::time::Millis;
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

/// Per-entry bookkeeping counted on top of the reply bytes (id, digest, reply_to, map).
const ENTRY_OVERHEAD: usize = 128;
/// How often expired entries are purged from memory.
pub(super) const PURGE_EVERY_MS: Millis = 10_000;

/// Who asked, and the request's id: what the store keys on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestKey {
    /// The request's `caller` (the signer's name). Empty only for entries from a
    /// journal written before entries were keyed by caller: those match every caller.
    pub caller: String,
    /// The request id.
    pub id: Uuid,
}

impl RequestKey {
    /// The key of request `id` from `caller`.
    pub fn new(caller: impl Into<String>, id: Uuid) -> Self {
        RequestKey {
            caller: caller.into(),
            id,
        }
    }

    fn legacy(&self) -> RequestKey {
        RequestKey::new(String::new(), self.id)
    }
}

/// A signed reply kept for redelivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReply {
    /// Where it was sent.
    pub reply_to: String,
    /// The signed reply, exactly as first published.
    pub bytes: Arc<[u8]>,
}

/// An answered request: its body digest, how long it is kept, its reply.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) digest: [u8; 32],
    pub(super) keep_until: Millis,
    pub(super) reply: StoredReply,
}

impl Entry {
    /// Bytes counted against the store's cap.
    pub(super) fn cost(&self) -> usize {
        self.reply.bytes.len() + self.reply.reply_to.len() + ENTRY_OVERHEAD
    }
}

/// Everything the store holds in memory, behind one lock.
#[derive(Debug)]
pub(super) struct Index {
    pub(super) entries: HashMap<RequestKey, Entry>,
    /// Token id → (uses spent, keep until).
    pub(super) token_uses: HashMap<Uuid, (u32, Millis)>,
    /// Reserved, not yet recorded: (caller, id) → body digest.
    pub(super) pending: HashMap<RequestKey, [u8; 32]>,
    pub(super) stored_bytes: usize,
    pub(super) next_purge: Millis,
}

/// What the index already knows of a request with given bytes.
#[derive(Debug)]
pub(super) enum Known {
    /// Answered before with the same bytes: this is the reply.
    Answered(StoredReply),
    /// Seen (answered or in progress) with other bytes.
    Replayed,
    /// In progress with the same bytes.
    Busy,
}

impl Index {
    /// What the index already says of `key` with `digest`, if anything. An entry of an
    /// older journal (no caller) stands for every caller.
    pub(super) fn find(&self, key: &RequestKey, digest: &[u8; 32]) -> Option<Known> {
        let legacy = key.legacy();
        let entry = self.entries.get(key).or_else(|| self.entries.get(&legacy));
        if let Some(e) = entry {
            return Some(if &e.digest == digest {
                Known::Answered(e.reply.clone())
            } else {
                Known::Replayed
            });
        }
        self.pending.get(key).map(|d| {
            if d == digest {
                Known::Busy
            } else {
                Known::Replayed
            }
        })
    }

    /// Forgets answered requests and token uses whose keep-until has passed.
    pub(super) fn purge(&mut self, now: Millis) {
        let mut freed = 0;
        self.entries.retain(|_, e| {
            let keep = e.keep_until >= now;
            if !keep {
                freed += e.cost();
            }
            keep
        });
        self.stored_bytes = self.stored_bytes.saturating_sub(freed);
        self.token_uses.retain(|_, t| t.1 >= now);
        self.next_purge = now.saturating_add(PURGE_EVERY_MS);
    }
}
