//! The replay store and result store, one structure persisted in `state_dir`.
//!
//! Every request answered after its windows were checked is recorded under its id with
//! the request digest, the reply queue and the signed reply bytes, until the request's
//! `expires_at + skew`. A request with a known id is then either a byte-identical
//! redelivery (same digest: the stored reply is sent again) or a replay (other digest:
//! refused). Records are written before the reply is published, so a crash between
//! publish and ack still finds the reply on redelivery.
//!
//! Delegation tokens spend their uses here too: each use is a journal record (token id,
//! uses spent, kept until the token's `not_after + skew`), written and fsync'd before
//! the delegated action runs, so a restart cannot give a token its uses back.
//!
//! On disk: `replay.journal`, a sequence of records, each a 4-byte big-endian length
//! then a MessagePack [`Record`]. The first record is a header holding the store's
//! creation time: requests issued before it are refused, since a lost store cannot tell
//! which of them were answered. The journal is fsync'd after every append, loaded at
//! start with expired entries dropped, and rewritten compactly (temp file, fsync,
//! rename) at load and whenever it grows well past its live content.

use crate::identity::io_reason;
use gearmq_schemas::time::Millis;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

/// The journal's file name inside `state_dir`.
pub const JOURNAL_FILE: &str = "replay.journal";
/// Largest record accepted when loading; anything larger means a damaged journal.
const MAX_RECORD_BYTES: usize = 32 * 1024 * 1024;
/// Journal size below which no runtime compaction happens.
const COMPACT_MIN_BYTES: u64 = 1024 * 1024;
/// Per-entry bookkeeping counted on top of the reply bytes (id, digest, reply_to, map).
const ENTRY_OVERHEAD: usize = 128;
/// How often expired entries are purged from memory.
const PURGE_EVERY_MS: Millis = 10_000;

/// Why the store could not be opened or written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReplayError {
    /// The state directory could not be created or used.
    #[error("cannot create state directory {path}: {reason}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The system's reason.
        reason: String,
    },
    /// A journal file operation failed.
    #[error("replay journal {path}: cannot {op}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The system's reason.
        reason: String,
    },
}

/// One journal record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Record {
    /// First record: when this store began.
    Header { created_at: Millis },
    /// A request answered.
    Answer {
        id: Uuid,
        digest: serde_bytes::ByteArray<32>,
        keep_until: Millis,
        reply_to: String,
        #[serde(with = "serde_bytes")]
        reply: Vec<u8>,
    },
    /// A delegation token's uses spent so far.
    TokenUse {
        id: Uuid,
        spent: u32,
        keep_until: Millis,
    },
}

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

/// A signed reply kept for redelivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReply {
    /// Where it was sent.
    pub reply_to: String,
    /// The signed reply, exactly as first published.
    pub bytes: Arc<[u8]>,
}

#[derive(Debug, Clone)]
struct Entry {
    digest: [u8; 32],
    keep_until: Millis,
    reply: StoredReply,
}

impl Entry {
    fn cost(&self) -> usize {
        self.reply.bytes.len() + self.reply.reply_to.len() + ENTRY_OVERHEAD
    }
}

/// What the store says about a request that passed its window checks.
#[derive(Debug)]
pub enum Begin {
    /// Never seen: the id is now reserved until recorded or dropped.
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

/// The probe file written to see whether the state directory is writable again.
const PROBE_FILE: &str = ".write-probe";
/// Bytes the probe writes: enough for a typical journal record.
const PROBE_BYTES: usize = 16 * 1024;

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

#[derive(Debug)]
struct Index {
    entries: HashMap<Uuid, Entry>,
    /// Token id → (uses spent, keep until).
    token_uses: HashMap<Uuid, (u32, Millis)>,
    pending: HashMap<Uuid, [u8; 32]>,
    stored_bytes: usize,
    next_purge: Millis,
}

#[derive(Debug)]
struct Journal {
    file: File,
    bytes: u64,
}

/// What one journal write tells its records' callers.
type Slot = Arc<OnceLock<Result<(), ReplayError>>>;

/// Records waiting to be written: the group commit's queue.
#[derive(Debug, Default)]
struct Commit {
    /// Framed records, in order.
    queued: Vec<u8>,
    /// One slot per queued record, told the result of the write that carries it.
    slots: Vec<Slot>,
    /// A caller is writing a batch right now.
    writing: bool,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    created_at: Millis,
    max_bytes: usize,
    index: Mutex<Index>,
    journal: Mutex<Journal>,
    commit: Mutex<Commit>,
    committed: Condvar,
    changed: Notify,
    /// Why the last journal write failed, until a probe write succeeds.
    unwritable: Mutex<Option<String>>,
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
    id: Uuid,
    digest: [u8; 32],
    recorded: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent before anything that can
    // panic, so a poisoned lock still holds usable data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Creates `dir` (and parents) with mode 0700 if missing.
pub fn ensure_state_dir(dir: &Path) -> Result<(), ReplayError> {
    let err = |e: std::io::Error| ReplayError::StateDir {
        path: dir.to_path_buf(),
        reason: io_reason(&e),
    };
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
        // The umask may have narrowed it further; make it exactly 0700.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
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
                    } => {
                        if keep_until < now {
                            expired += 1;
                            continue;
                        }
                        entries.insert(
                            id,
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

    /// Whether no answered request is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Looks up request `id` with body digest `digest`, issued at `issued_at`, and
    /// reserves the id when it is new.
    pub fn begin(&self, id: Uuid, digest: &[u8; 32], issued_at: Millis, now: Millis) -> Begin {
        let unwritable = self.shared.still_unwritable();
        let mut index = lock(&self.shared.index);
        if now >= index.next_purge {
            purge(&mut index, now);
        }
        if let Some(e) = index.entries.get(&id) {
            return if &e.digest == digest {
                Begin::Answered(e.reply.clone())
            } else {
                Begin::Replayed
            };
        }
        if let Some(d) = index.pending.get(&id) {
            return if d == digest {
                Begin::Busy
            } else {
                Begin::Replayed
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
            purge(&mut index, now);
            if index.stored_bytes >= self.shared.max_bytes {
                return Begin::Full {
                    stored: index.stored_bytes,
                    max: self.shared.max_bytes,
                };
            }
        }
        index.pending.insert(id, *digest);
        Begin::Fresh(Reservation {
            shared: self.shared.clone(),
            id,
            digest: *digest,
            recorded: false,
        })
    }

    /// [`ReplayStore::begin`], but while the same request is busy in another task,
    /// waits (up to `wait`) for that task to record or drop it.
    pub async fn begin_or_wait(
        &self,
        id: Uuid,
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
            match self.begin(id, digest, issued_at, crate::verifier::now_ms()) {
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
        self.id
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
            id: self.id,
            digest: serde_bytes::ByteArray::new(self.digest),
            keep_until,
            reply_to: stored.reply_to.clone(),
            reply: stored.bytes.to_vec(),
        });
        {
            let mut index = lock(&self.shared.index);
            index.pending.remove(&self.id);
            let entry = Entry {
                digest: self.digest,
                keep_until,
                reply: stored.clone(),
            };
            index.stored_bytes += entry.cost();
            index.entries.insert(self.id, entry);
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
            lock(&self.shared.index).pending.remove(&self.id);
            self.shared.changed.notify_waiters();
        }
    }
}

impl Shared {
    /// Appends one encoded record and returns once it is fsync'd (or failed).
    ///
    /// Group commit: records appended while a write is under way queue up, and the
    /// first caller to find no write under way writes the whole queue with one fsync
    /// and tells every caller in it. Concurrent handlers thus share fsyncs instead of
    /// queueing one fsync each behind a lock.
    fn append(&self, record: &[u8]) -> Result<(), ReplayError> {
        let slot: Slot = Arc::default();
        let mut commit = lock(&self.commit);
        commit.queued.extend_from_slice(&frame(record));
        commit.slots.push(slot.clone());
        loop {
            if let Some(result) = slot.get() {
                return result.clone();
            }
            if commit.writing {
                commit = self
                    .committed
                    .wait(commit)
                    .unwrap_or_else(|p| p.into_inner());
                continue;
            }
            commit.writing = true;
            let batch = std::mem::take(&mut commit.queued);
            let slots = std::mem::take(&mut commit.slots);
            drop(commit);
            // Whatever happens to this write (even a panic), every caller in it is told
            // and the next caller can write.
            let turn = WriterTurn {
                shared: self,
                slots,
            };
            let result = self.write_batch(&batch);
            for s in &turn.slots {
                let _ = s.set(result.clone());
            }
            drop(turn);
            commit = lock(&self.commit);
        }
    }

    /// Writes framed records and fsyncs; compacts when the journal has grown well past
    /// its live content.
    fn write_batch(&self, framed: &[u8]) -> Result<(), ReplayError> {
        let path = self.dir.join(JOURNAL_FILE);
        let mut journal = lock(&self.journal);
        let written = journal
            .file
            .write_all(framed)
            .map_err(|e| io_err(&path, "append", &e))
            .and_then(|()| {
                journal
                    .file
                    .sync_data()
                    .map_err(|e| io_err(&path, "fsync", &e))
            });
        if let Err(e) = written {
            // A partial record would hide every later one at the next load: cut the
            // journal back to its last whole record (shrinking needs no free space).
            let _ = journal.file.set_len(journal.bytes);
            *lock(&self.unwritable) = Some(e.to_string());
            return Err(e);
        }
        journal.bytes += framed.len() as u64;
        let live = lock(&self.index).stored_bytes as u64;
        if journal.bytes > COMPACT_MIN_BYTES && journal.bytes > 2 * live {
            let (entries, tokens) = {
                let index = lock(&self.index);
                (index.entries.clone(), index.token_uses.clone())
            };
            *journal = write_compacted(&self.dir, self.created_at, &entries, &tokens)?;
        }
        Ok(())
    }
}

/// The turn of the caller writing a batch; ends when dropped, even by a panic: every
/// record of the batch not yet told is told it failed, and the waiting callers wake.
struct WriterTurn<'a> {
    shared: &'a Shared,
    slots: Vec<Slot>,
}

impl Drop for WriterTurn<'_> {
    fn drop(&mut self) {
        for s in &self.slots {
            let _ = s.set(Err(ReplayError::Io {
                path: self.shared.dir.join(JOURNAL_FILE),
                op: "append",
                reason: "the journal write was abandoned".into(),
            }));
        }
        lock(&self.shared.commit).writing = false;
        self.shared.committed.notify_all();
    }
}

impl Shared {
    /// After a failed journal write: whether the state directory is still unwritable
    /// (a probe file of a record's size cannot be written and synced), and why.
    fn still_unwritable(&self) -> Option<String> {
        let mut flag = lock(&self.unwritable);
        flag.as_ref()?;
        let probe = self.dir.join(PROBE_FILE);
        let written = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&probe)
            .and_then(|mut f| {
                f.write_all(&[0u8; PROBE_BYTES])?;
                f.sync_data()
            });
        let _ = fs::remove_file(&probe);
        match written {
            Ok(()) => {
                tracing::info!(dir = %self.dir.display(), "state directory writable again; taking new requests");
                *flag = None;
                None
            }
            Err(e) => Some(format!(
                "state directory {} is not writable ({}); refusing new requests until it is",
                self.dir.display(),
                e
            )),
        }
    }
}

fn purge(index: &mut Index, now: Millis) {
    let mut freed = 0;
    index.entries.retain(|_, e| {
        let keep = e.keep_until >= now;
        if !keep {
            freed += e.cost();
        }
        keep
    });
    index.stored_bytes = index.stored_bytes.saturating_sub(freed);
    index.token_uses.retain(|_, t| t.1 >= now);
    index.next_purge = now.saturating_add(PURGE_EVERY_MS);
}

fn io_err(path: &Path, op: &'static str, e: &std::io::Error) -> ReplayError {
    ReplayError::Io {
        path: path.to_path_buf(),
        op,
        reason: io_reason(e),
    }
}

fn frame(record: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(record.len() + 4);
    // Records are far below 4 GiB (replies are capped well under MAX_RECORD_BYTES).
    out.extend_from_slice(&(record.len() as u32).to_be_bytes());
    out.extend_from_slice(record);
    out
}

/// Splits a journal into its header time, its records, and whether it ended damaged.
fn parse_journal(bytes: &[u8]) -> (Option<Millis>, Vec<Record>, bool) {
    let mut rest = bytes;
    let mut header = None;
    let mut records = Vec::new();
    let mut first = true;
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return (header, records, true);
        };
        let len = u32::from_be_bytes(*len) as usize;
        if len > MAX_RECORD_BYTES || len > tail.len() {
            return (header, records, true);
        }
        let (body, tail) = tail.split_at(len);
        match rmp_serde::from_slice::<Record>(body) {
            Ok(Record::Header { created_at }) if first => header = Some(created_at),
            Ok(r @ (Record::Answer { .. } | Record::TokenUse { .. })) if !first => records.push(r),
            _ => return (header, records, true),
        }
        first = false;
        rest = tail;
    }
    (header, records, false)
}

/// Writes header + `entries` to a temp file, fsyncs, renames it over the journal,
/// fsyncs the directory, and returns the journal opened for appending.
fn write_compacted(
    dir: &Path,
    created_at: Millis,
    entries: &HashMap<Uuid, Entry>,
    token_uses: &HashMap<Uuid, (u32, Millis)>,
) -> Result<Journal, ReplayError> {
    let path = dir.join(JOURNAL_FILE);
    let tmp = dir.join(format!("{JOURNAL_FILE}.tmp"));
    let mut out = Vec::new();
    let enc = |r: &Record| {
        rmp_serde::to_vec_named(r).map_err(|e| ReplayError::Io {
            path: path.clone(),
            op: "encode a record",
            reason: e.to_string(),
        })
    };
    out.extend(frame(&enc(&Record::Header { created_at })?));
    for (id, e) in entries {
        out.extend(frame(&enc(&Record::Answer {
            id: *id,
            digest: serde_bytes::ByteArray::new(e.digest),
            keep_until: e.keep_until,
            reply_to: e.reply.reply_to.clone(),
            reply: e.reply.bytes.to_vec(),
        })?));
    }
    for (id, (spent, keep_until)) in token_uses {
        out.extend(frame(&enc(&Record::TokenUse {
            id: *id,
            spent: *spent,
            keep_until: *keep_until,
        })?));
    }
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io_err(&tmp, "create", &e))?;
        f.write_all(&out).map_err(|e| io_err(&tmp, "write", &e))?;
        f.sync_all().map_err(|e| io_err(&tmp, "fsync", &e))?;
    }
    fs::rename(&tmp, &path).map_err(|e| io_err(&path, "replace", &e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(&path, "fsync its directory", &e))?;
    let file = OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|e| io_err(&path, "open", &e))?;
    Ok(Journal {
        file,
        bytes: out.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_000_000;

    fn id(n: u8) -> Uuid {
        Uuid::from_bytes([n; 16])
    }

    fn fresh(b: Begin) -> Reservation {
        match b {
            Begin::Fresh(r) => r,
            other => panic!("expected Fresh, got {other:?}"),
        }
    }

    #[test]
    fn new_store_starts_now_and_refuses_older_requests() {
        let dir = tempfile::tempdir().unwrap();
        let (s, rep) = ReplayStore::open(dir.path(), 1 << 20, NOW).unwrap();
        assert_eq!(rep.created_at, NOW);
        assert!(!rep.resumed);
        assert!(matches!(
            s.begin(id(1), &[1; 32], NOW - 1, NOW),
            Begin::BeforeState { created_at: NOW }
        ));
        assert!(matches!(
            s.begin(id(1), &[1; 32], NOW, NOW),
            Begin::Fresh(_)
        ));
    }

    #[test]
    fn recorded_reply_is_found_by_id_and_digest_only() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = ReplayStore::open(dir.path(), 1 << 20, NOW).unwrap();
        let r = fresh(s.begin(id(1), &[1; 32], NOW, NOW));
        // While pending: same bytes are busy, other bytes a replay.
        assert!(matches!(s.begin(id(1), &[1; 32], NOW, NOW), Begin::Busy));
        assert!(matches!(
            s.begin(id(1), &[2; 32], NOW, NOW),
            Begin::Replayed
        ));
        let (_, written) = r.record(NOW + 100, "gearmq.reply.ops.a".into(), b"R1".to_vec());
        written.unwrap();
        match s.begin(id(1), &[1; 32], NOW, NOW) {
            Begin::Answered(st) => {
                assert_eq!(&*st.bytes, b"R1");
                assert_eq!(st.reply_to, "gearmq.reply.ops.a");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.begin(id(1), &[9; 32], NOW, NOW),
            Begin::Replayed
        ));
    }

    #[test]
    fn dropped_reservation_frees_the_id() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = ReplayStore::open(dir.path(), 1 << 20, NOW).unwrap();
        drop(fresh(s.begin(id(1), &[1; 32], NOW, NOW)));
        assert!(matches!(
            s.begin(id(1), &[1; 32], NOW, NOW),
            Begin::Fresh(_)
        ));
    }

    #[test]
    fn journal_survives_restart_and_drops_expired_entries() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (s, _) = ReplayStore::open(dir.path(), 1 << 20, NOW).unwrap();
            let (_, w) = fresh(s.begin(id(1), &[1; 32], NOW, NOW)).record(
                NOW + 100,
                "q".into(),
                b"short-lived".to_vec(),
            );
            w.unwrap();
            let (_, w) = fresh(s.begin(id(2), &[2; 32], NOW, NOW)).record(
                NOW + 10_000,
                "q".into(),
                b"long-lived".to_vec(),
            );
            w.unwrap();
        }
        let before = fs::metadata(dir.path().join(JOURNAL_FILE)).unwrap().len();
        let (s, rep) = ReplayStore::open(dir.path(), 1 << 20, NOW + 5_000).unwrap();
        assert_eq!(rep.created_at, NOW, "creation time survives restarts");
        assert!(rep.resumed);
        assert_eq!((rep.loaded, rep.expired, rep.damaged), (1, 1, false));
        assert_eq!(s.len(), 1);
        assert!(matches!(
            s.begin(id(2), &[2; 32], NOW, NOW + 5_000),
            Begin::Answered(_)
        ));
        let after = fs::metadata(dir.path().join(JOURNAL_FILE)).unwrap().len();
        assert!(after < before, "compacted on load: {after} < {before}");
    }

    #[test]
    fn concurrent_records_share_writes_and_all_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (s, _) = ReplayStore::open(dir.path(), 1 << 20, NOW).unwrap();
            let threads: Vec<_> = (0..16u8)
                .map(|t| {
                    let s = s.clone();
                    std::thread::spawn(move || {
                        for k in 0..8u8 {
                            let n = t * 8 + k;
                            let (_, w) = fresh(s.begin(id(n), &[n; 32], NOW, NOW)).record(
                                NOW + 10_000,
                                format!("q{n}"),
                                vec![n; 100],
                            );
                            w.unwrap();
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
        }
        let (s, rep) = ReplayStore::open(dir.path(), 1 << 20, NOW + 1).unwrap();
        assert_eq!((rep.loaded, rep.damaged), (128, false));
        for n in 0..128u8 {
            match s.begin(id(n), &[n; 32], NOW, NOW + 1) {
                Begin::Answered(r) => {
                    assert_eq!(r.reply_to, format!("q{n}"));
                    assert_eq!(&r.bytes[..], &vec![n; 100][..]);
                }
                other => panic!("{n}: {other:?}"),
            }
        }
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
    fn truncated_tail_is_ignored_and_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (s, _) = ReplayStore::open(dir.path(), 1 << 20, NOW).unwrap();
            let (_, w) = fresh(s.begin(id(1), &[1; 32], NOW, NOW)).record(
                NOW + 10_000,
                "q".into(),
                b"kept".to_vec(),
            );
            w.unwrap();
        }
        let path = dir.path().join(JOURNAL_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0, 0, 0, 50, 1, 2, 3]).unwrap();
        drop(f);
        let (s, rep) = ReplayStore::open(dir.path(), 1 << 20, NOW).unwrap();
        assert!(rep.damaged);
        assert_eq!(rep.loaded, 1);
        assert_eq!(s.len(), 1);
        // Rewritten clean.
        let (_, rep) = ReplayStore::open(dir.path(), 1 << 20, NOW).unwrap();
        assert!(!rep.damaged);
    }

    #[test]
    fn garbage_journal_starts_over_from_now() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(JOURNAL_FILE), b"\xff\xff\xff\xffgarbage").unwrap();
        let (s, rep) = ReplayStore::open(dir.path(), 1 << 20, NOW + 7).unwrap();
        assert!(rep.damaged);
        assert!(!rep.resumed);
        assert_eq!(s.created_at(), NOW + 7);
    }

    #[test]
    fn full_store_refuses_until_entries_expire() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = ReplayStore::open(dir.path(), 300, NOW).unwrap();
        let (_, w) =
            fresh(s.begin(id(1), &[1; 32], NOW, NOW)).record(NOW + 10, "q".into(), vec![0; 200]);
        w.unwrap();
        assert!(matches!(
            s.begin(id(2), &[2; 32], NOW, NOW),
            Begin::Full { .. }
        ));
        // Once the first entry's request has expired it is purged and room is back.
        assert!(matches!(
            s.begin(id(2), &[2; 32], NOW, NOW + 11),
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
        let r = fresh(s.begin(id(1), &[1; 32], now, now));
        let s2 = s.clone();
        let waiter = tokio::spawn(async move {
            s2.begin_or_wait(id(1), &[1; 32], now, Duration::from_secs(5))
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
