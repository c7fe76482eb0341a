//! The store's API: open, look a request up and reserve it, record its reply, spend a
//! token's use.

use super::journal::{
    Commit, JOURNAL_FILE, Journal, Record, io_err, parse_journal, write_compacted,
};
use super::state::{Entry, Index, Known, PURGE_EVERY_MS, RequestKey, StoredReply};
use super::{ReplayError, ensure_state_dir, lock};
use gearmq_schemas::time::Millis;
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

/// Why a token use was not granted.
#[derive(Debug, thiserror::Error)]
pub enum SpendError {
    /// Every use is spent.
    #[error("all {uses} uses are spent")]
    UsedUp {
        /// How many the token had.
        uses: u32,
    },
    /// The use could not be made durable, so it was not granted.
    #[error("{0}")]
    Journal(ReplayError),
}

/// What the store already knows of a request, asked without reserving anything.
#[derive(Debug)]
pub enum Seen {
    /// Answered before with the same bytes: send this again.
    Answered(StoredReply),
    /// The caller used the id before with other bytes.
    Replayed,
    /// Neither answered nor in progress with other bytes.
    New,
}

/// What the store says about an authorized request that passed its window checks.
#[derive(Debug)]
pub enum Begin {
    /// Never seen: the (caller, id) is now reserved until recorded or dropped.
    Fresh(Reservation),
    /// Answered before with the same bytes: send this again.
    Answered(StoredReply),
    /// The id was seen with other bytes.
    Replayed,
    /// Issued before this store began: it may have been answered by a lost store.
    BeforeState {
        /// When the store began.
        created_at: Millis,
    },
    /// The same request is being handled right now by another task.
    Busy,
    /// At its byte cap: refuse rather than forget.
    Full {
        /// Bytes held.
        stored: usize,
        /// The cap.
        max: usize,
    },
    /// The state directory cannot be written (disk full, read-only): a reply could not
    /// be kept, so new work is refused until a write succeeds again.
    Unwritable {
        /// The system's reason, naming the path.
        reason: String,
    },
}

/// What loading found, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadReport {
    /// When the store began (now, for a new or unreadable journal).
    pub created_at: Millis,
    /// Whether a journal existed with a valid header.
    pub resumed: bool,
    /// Entries kept.
    pub loaded: usize,
    /// Entries dropped because their request expired.
    pub expired: usize,
    /// Whether the journal ended in a damaged or truncated record (ignored from there).
    pub damaged: bool,
}

/// One store: its memory, its journal, and what waiting callers wait on.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) dir: PathBuf,
    pub(super) created_at: Millis,
    max_bytes: usize,
    pub(super) index: Mutex<Index>,
    pub(super) journal: Mutex<Journal>,
    pub(super) commit: Mutex<Commit>,
    pub(super) committed: Condvar,
    changed: Notify,
    /// Why the last journal write failed, until a probe write succeeds.
    pub(super) unwritable: Mutex<Option<String>>,
}

/// The replay and result store. Cheap to clone; clones share one store.
#[derive(Debug, Clone)]
pub struct ReplayStore {
    shared: Arc<Shared>,
}

/// An id reserved by [`ReplayStore::begin`]; released if dropped without recording.
#[derive(Debug)]
pub struct Reservation {
    shared: Arc<Shared>,
    key: RequestKey,
    digest: [u8; 32],
    recorded: bool,
}

impl ReplayStore {
    /// Opens (or creates) the store in `dir`, dropping entries expired at `now` and
    /// compacting the journal. `max_bytes` caps the stored replies.
    pub fn open(
        dir: &Path,
        max_bytes: usize,
        now: Millis,
    ) -> Result<(ReplayStore, LoadReport), ReplayError> {
        ensure_state_dir(dir)?;
        let path = dir.join(JOURNAL_FILE);
        let (header, records, damaged) = match fs::read(&path) {
            Ok(bytes) => parse_journal(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, Vec::new(), false),
            Err(e) => return Err(io_err(&path, "read", &e)),
        };
        let created_at = header.unwrap_or(now);
        let mut entries = HashMap::new();
        let mut token_uses = HashMap::new();
        let mut expired = 0;
        // Without a header the journal cannot say since when it is complete: start
        // over (everything issued before now is refused anyway).
        if header.is_some() {
            for r in records {
                match r {
                    Record::Answer {
                        id,
                        digest,
                        keep_until,
                        reply_to,
                        reply,
                        caller,
                    } => {
                        if keep_until < now {
                            expired += 1;
                            continue;
                        }
                        entries.insert(
                            RequestKey::new(caller, id),
                            Entry {
                                digest: digest.into_array(),
                                keep_until,
                                reply: StoredReply {
                                    reply_to,
                                    bytes: reply.into(),
                                },
                            },
                        );
                    }
                    Record::TokenUse {
                        id,
                        spent,
                        keep_until,
                    } => {
                        if keep_until >= now {
                            let e = token_uses.entry(id).or_insert((0, keep_until));
                            e.0 = e.0.max(spent);
                            e.1 = e.1.max(keep_until);
                        }
                    }
                    Record::Header { .. } => {}
                }
            }
        }
        let stored_bytes = entries.values().map(Entry::cost).sum();
        let report = LoadReport {
            created_at,
            resumed: header.is_some(),
            loaded: entries.len(),
            expired,
            damaged,
        };
        let journal = write_compacted(dir, created_at, &entries, &token_uses)?;
        let store = ReplayStore {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                created_at,
                max_bytes,
                index: Mutex::new(Index {
                    entries,
                    token_uses,
                    pending: HashMap::new(),
                    stored_bytes,
                    next_purge: now.saturating_add(PURGE_EVERY_MS),
                }),
                journal: Mutex::new(journal),
                commit: Mutex::new(Commit::default()),
                committed: Condvar::new(),
                changed: Notify::new(),
                unwritable: Mutex::new(None),
            }),
        };
        Ok((store, report))
    }

    /// When this store began; requests issued before it are refused as replays.
    pub fn created_at(&self) -> Millis {
        self.shared.created_at
    }

    /// How many answered requests are held.
    pub fn len(&self) -> usize {
        lock(&self.shared.index).entries.len()
    }

    /// Bytes held, as counted against the store's cap.
    pub fn stored_bytes(&self) -> usize {
        lock(&self.shared.index).stored_bytes
    }

    /// Whether no answered request is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the store holds for `key` with body digest `digest`, reserving nothing:
    /// asked before authorization, so that a byte-identical redelivery of an answered
    /// request gets its stored reply whatever has changed since.
    pub fn seen(&self, key: &RequestKey, digest: &[u8; 32]) -> Seen {
        match lock(&self.shared.index).find(key, digest) {
            Some(Known::Answered(r)) => Seen::Answered(r),
            Some(Known::Replayed) => Seen::Replayed,
            Some(Known::Busy) | None => Seen::New,
        }
    }

    /// Looks up request `key` with body digest `digest`, issued at `issued_at`, and
    /// reserves it when it is new. Only for requests whose signer is authorized.
    pub fn begin(
        &self,
        key: &RequestKey,
        digest: &[u8; 32],
        issued_at: Millis,
        now: Millis,
    ) -> Begin {
        let unwritable = self.shared.still_unwritable();
        let mut index = lock(&self.shared.index);
        if now >= index.next_purge {
            index.purge(now);
        }
        if let Some(known) = index.find(key, digest) {
            return match known {
                Known::Answered(r) => Begin::Answered(r),
                Known::Replayed => Begin::Replayed,
                Known::Busy => Begin::Busy,
            };
        }
        if let Some(reason) = unwritable {
            return Begin::Unwritable { reason };
        }
        if issued_at < self.shared.created_at {
            return Begin::BeforeState {
                created_at: self.shared.created_at,
            };
        }
        if index.stored_bytes >= self.shared.max_bytes {
            index.purge(now);
            if index.stored_bytes >= self.shared.max_bytes {
                return Begin::Full {
                    stored: index.stored_bytes,
                    max: self.shared.max_bytes,
                };
            }
        }
        index.pending.insert(key.clone(), *digest);
        Begin::Fresh(Reservation {
            shared: self.shared.clone(),
            key: key.clone(),
            digest: *digest,
            recorded: false,
        })
    }

    /// [`ReplayStore::begin`], but while the same request is busy in another task,
    /// waits (up to `wait`) for that task to record or drop it.
    pub async fn begin_or_wait(
        &self,
        key: &RequestKey,
        digest: &[u8; 32],
        issued_at: Millis,
        wait: Duration,
    ) -> Begin {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            // Register before looking, so a change between the look and the wait is
            // not missed.
            changed.as_mut().enable();
            match self.begin(key, digest, issued_at, crate::verifier::now_ms()) {
                Begin::Busy => {}
                other => return other,
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Begin::Busy;
            }
        }
    }
}

impl ReplayStore {
    /// Spends one use of delegation token `id` (which grants `uses`), remembered until
    /// `keep_until`. The use is journaled and fsync'd before this returns `Ok`; if that
    /// fails the use is given back and an error returned, so the caller must refuse.
    /// Returns the uses left. Blocking: call from a blocking context.
    pub fn spend_token(&self, id: Uuid, uses: u32, keep_until: Millis) -> Result<u32, SpendError> {
        let spent = {
            let mut index = lock(&self.shared.index);
            let e = index.token_uses.entry(id).or_insert((0, keep_until));
            if e.0 >= uses {
                return Err(SpendError::UsedUp { uses });
            }
            e.0 += 1;
            e.1 = e.1.max(keep_until);
            e.0
        };
        let record = rmp_serde::to_vec_named(&Record::TokenUse {
            id,
            spent,
            keep_until,
        })
        .map_err(|e| ReplayError::Io {
            path: self.shared.dir.join(JOURNAL_FILE),
            op: "encode a record",
            reason: e.to_string(),
        });
        match record.and_then(|r| self.shared.append(&r)) {
            Ok(()) => Ok(uses - spent),
            Err(e) => {
                let mut index = lock(&self.shared.index);
                if let Some(t) = index.token_uses.get_mut(&id) {
                    t.0 = t.0.saturating_sub(1);
                }
                Err(SpendError::Journal(e))
            }
        }
    }

    /// Uses of token `id` spent so far (0 if never seen or forgotten after expiry).
    pub fn token_uses_spent(&self, id: Uuid) -> u32 {
        lock(&self.shared.index)
            .token_uses
            .get(&id)
            .map_or(0, |t| t.0)
    }
}

impl Reservation {
    /// The reserved request id.
    pub fn id(&self) -> Uuid {
        self.key.id
    }

    /// Records the signed reply for this request, kept until `keep_until`, and returns
    /// it as stored. Blocking (writes and fsyncs the journal): call from a blocking
    /// context. The entry is kept in memory even if the journal write fails, so the
    /// request is still not run twice while this process lives; the error is returned
    /// for the caller to log.
    pub fn record(
        mut self,
        keep_until: Millis,
        reply_to: String,
        reply: Vec<u8>,
    ) -> (StoredReply, Result<(), ReplayError>) {
        let stored = StoredReply {
            reply_to,
            bytes: reply.into(),
        };
        let encoded = rmp_serde::to_vec_named(&Record::Answer {
            id: self.key.id,
            digest: serde_bytes::ByteArray::new(self.digest),
            keep_until,
            reply_to: stored.reply_to.clone(),
            reply: stored.bytes.to_vec(),
            caller: self.key.caller.clone(),
        });
        {
            let mut index = lock(&self.shared.index);
            index.pending.remove(&self.key);
            let entry = Entry {
                digest: self.digest,
                keep_until,
                reply: stored.clone(),
            };
            index.stored_bytes += entry.cost();
            index.entries.insert(self.key.clone(), entry);
        }
        self.recorded = true;
        self.shared.changed.notify_waiters();
        let path = self.shared.dir.join(JOURNAL_FILE);
        let written = match encoded {
            Ok(bytes) => self.shared.append(&bytes),
            Err(e) => Err(ReplayError::Io {
                path,
                op: "encode a record",
                reason: e.to_string(),
            }),
        };
        (stored, written)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.recorded {
            lock(&self.shared.index).pending.remove(&self.key);
            self.shared.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::test_support::{NOW, fresh, id, k};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn new_store_starts_now_and_refuses_older_requests() {
        let dir = tempfile::tempdir().unwrap();
        let (s, rep) = ReplayStore::open(dir.path(), 1 << 20, NOW).unwrap();
        assert_eq!(rep.created_at, NOW);
        assert!(!rep.resumed);
        assert!(matches!(
            s.begin(&k(1), &[1; 32], NOW - 1, NOW),
            Begin::BeforeState { created_at: NOW }
        ));
        assert!(matches!(
            s.begin(&k(1), &[1; 32], NOW, NOW),
            Begin::Fresh(_)
        ));
    }

    #[test]
    fn recorded_reply_is_found_by_id_and_digest_only() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = ReplayStore::open(dir.path(), 1 << 20, NOW).unwrap();
        let r = fresh(s.begin(&k(1), &[1; 32], NOW, NOW));
        // While pending: same bytes are busy, other bytes a replay.
        assert!(matches!(s.begin(&k(1), &[1; 32], NOW, NOW), Begin::Busy));
        assert!(matches!(
            s.begin(&k(1), &[2; 32], NOW, NOW),
            Begin::Replayed
        ));
        let (_, written) = r.record(NOW + 100, "gearmq.reply.ops.a".into(), b"R1".to_vec());
        written.unwrap();
        match s.begin(&k(1), &[1; 32], NOW, NOW) {
            Begin::Answered(st) => {
                assert_eq!(&*st.bytes, b"R1");
                assert_eq!(st.reply_to, "gearmq.reply.ops.a");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.begin(&k(1), &[9; 32], NOW, NOW),
            Begin::Replayed
        ));
    }

    #[test]
    fn one_callers_id_does_not_squat_another_callers_request() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = ReplayStore::open(dir.path(), 1 << 20, NOW).unwrap();
        let squat = RequestKey::new("web2", id(1));
        let (_, w) =
            fresh(s.begin(&squat, &[7; 32], NOW, NOW)).record(NOW + 100, "q".into(), b"R".to_vec());
        w.unwrap();
        // The operator's request with the same id and other bytes is its own.
        assert!(matches!(s.seen(&k(1), &[1; 32]), Seen::New));
        assert!(matches!(
            s.begin(&k(1), &[1; 32], NOW, NOW),
            Begin::Fresh(_)
        ));
        // The squatter's own id with other bytes is still a replay.
        assert!(matches!(s.seen(&squat, &[8; 32]), Seen::Replayed));
    }

    #[test]
    fn seen_reserves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = ReplayStore::open(dir.path(), 1 << 20, NOW).unwrap();
        for _ in 0..3 {
            assert!(matches!(s.seen(&k(1), &[1; 32]), Seen::New));
        }
        assert!(s.is_empty());
        assert!(matches!(
            s.begin(&k(1), &[1; 32], NOW, NOW),
            Begin::Fresh(_)
        ));
    }

    #[test]
    fn dropped_reservation_frees_the_id() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = ReplayStore::open(dir.path(), 1 << 20, NOW).unwrap();
        drop(fresh(s.begin(&k(1), &[1; 32], NOW, NOW)));
        assert!(matches!(
            s.begin(&k(1), &[1; 32], NOW, NOW),
            Begin::Fresh(_)
        ));
    }

    #[test]
    fn token_uses_are_spent_once_each_and_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (s, _) = ReplayStore::open(dir.path(), 1 << 20, NOW).unwrap();
            assert_eq!(s.spend_token(id(7), 2, NOW + 60_000).unwrap(), 1);
            assert_eq!(s.spend_token(id(8), 1, NOW + 100).unwrap(), 0);
            assert!(matches!(
                s.spend_token(id(8), 1, NOW + 100),
                Err(SpendError::UsedUp { uses: 1 })
            ));
        }
        // Reopened (compacted on load): token 7 has one use left, token 8 none; after
        // token 8's keep_until it is forgotten.
        let (s, _) = ReplayStore::open(dir.path(), 1 << 20, NOW + 50).unwrap();
        assert_eq!(s.token_uses_spent(id(7)), 1);
        assert_eq!(s.token_uses_spent(id(8)), 1);
        assert_eq!(s.spend_token(id(7), 2, NOW + 60_000).unwrap(), 0);
        assert!(matches!(
            s.spend_token(id(7), 2, NOW + 60_000),
            Err(SpendError::UsedUp { .. })
        ));
        drop(s);
        let (s, _) = ReplayStore::open(dir.path(), 1 << 20, NOW + 1_000).unwrap();
        assert_eq!(s.token_uses_spent(id(7)), 2);
        assert_eq!(s.token_uses_spent(id(8)), 0);
    }

    #[test]
    fn full_store_refuses_until_entries_expire() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = ReplayStore::open(dir.path(), 300, NOW).unwrap();
        let (_, w) =
            fresh(s.begin(&k(1), &[1; 32], NOW, NOW)).record(NOW + 10, "q".into(), vec![0; 200]);
        w.unwrap();
        assert!(matches!(
            s.begin(&k(2), &[2; 32], NOW, NOW),
            Begin::Full { .. }
        ));
        // Once the first entry's request has expired it is purged and room is back.
        assert!(matches!(
            s.begin(&k(2), &[2; 32], NOW, NOW + 11),
            Begin::Fresh(_)
        ));
    }

    #[test]
    fn state_dir_is_created_private() {
        let dir = tempfile::tempdir().unwrap();
        let sd = dir.path().join("a/b/state");
        let _ = ReplayStore::open(&sd, 1 << 20, NOW).unwrap();
        let mode = fs::metadata(&sd).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[tokio::test]
    async fn busy_request_waits_for_the_first_handler() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = ReplayStore::open(dir.path(), 1 << 20, NOW).unwrap();
        let now = crate::verifier::now_ms();
        let r = fresh(s.begin(&k(1), &[1; 32], now, now));
        let s2 = s.clone();
        let waiter = tokio::spawn(async move {
            s2.begin_or_wait(&k(1), &[1; 32], now, Duration::from_secs(5))
                .await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (_, w) = tokio::task::spawn_blocking(move || {
            r.record(now + 60_000, "q".into(), b"first".to_vec())
        })
        .await
        .unwrap();
        w.unwrap();
        match waiter.await.unwrap() {
            Begin::Answered(st) => assert_eq!(&*st.bytes, b"first"),
            other => panic!("{other:?}"),
        }
    }
}
