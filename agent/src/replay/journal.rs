//! The store on disk: `replay.journal`, framed MessagePack records appended with
//! group commit and fsync, loaded and compacted (temp file, fsync, rename).

use super::ReplayError;
use super::lock;
use super::state::{Entry, RequestKey};
use super::store::Shared;
use crate::identity::io_reason;
use gearmq_schemas::time::Millis;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use uuid::Uuid;

/// The journal's file name inside `state_dir`.
pub const JOURNAL_FILE: &str = "replay.journal";
/// Largest record accepted when loading; anything larger means a damaged journal.
const MAX_RECORD_BYTES: usize = 32 * 1024 * 1024;
/// Journal size below which no runtime compaction happens.
const COMPACT_MIN_BYTES: u64 = 1024 * 1024;
/// The probe file written to see whether the state directory is writable again.
const PROBE_FILE: &str = ".write-probe";
/// Bytes the probe writes: enough for a typical journal record.
const PROBE_BYTES: usize = 16 * 1024;

/// One journal record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Record {
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
        /// The request's caller; absent (empty) in journals of older agents.
        #[serde(default)]
        caller: String,
    },
    /// A delegation token's uses spent so far.
    TokenUse {
        id: Uuid,
        spent: u32,
        keep_until: Millis,
    },
}

/// The journal open for appending, and its length.
#[derive(Debug)]
pub(super) struct Journal {
    file: File,
    bytes: u64,
}

/// What one journal write tells its records' callers.
type Slot = Arc<OnceLock<Result<(), ReplayError>>>;

/// Records waiting to be written: the group commit's queue.
#[derive(Debug, Default)]
pub(super) struct Commit {
    /// Framed records, in order.
    queued: Vec<u8>,
    /// One slot per queued record, told the result of the write that carries it.
    slots: Vec<Slot>,
    /// A caller is writing a batch right now.
    writing: bool,
}

impl Shared {
    /// Appends one encoded record and returns once it is fsync'd (or failed).
    ///
    /// Group commit: records appended while a write is under way queue up, and the
    /// first caller to find no write under way writes the whole queue with one fsync
    /// and tells every caller in it. Concurrent handlers thus share fsyncs instead of
    /// queueing one fsync each behind a lock.
    pub(super) fn append(&self, record: &[u8]) -> Result<(), ReplayError> {
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
    pub(super) fn still_unwritable(&self) -> Option<String> {
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

pub(super) fn io_err(path: &Path, op: &'static str, e: &std::io::Error) -> ReplayError {
    ReplayError::Io {
        path: path.to_path_buf(),
        op,
        reason: io_reason(e),
    }
}

/// A record with its 4-byte big-endian length before it.
fn frame(record: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(record.len() + 4);
    // Records are far below 4 GiB (replies are capped well under MAX_RECORD_BYTES).
    out.extend_from_slice(&(record.len() as u32).to_be_bytes());
    out.extend_from_slice(record);
    out
}

/// Splits a journal into its header time, its records, and whether it ended damaged.
pub(super) fn parse_journal(bytes: &[u8]) -> (Option<Millis>, Vec<Record>, bool) {
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
pub(super) fn write_compacted(
    dir: &Path,
    created_at: Millis,
    entries: &HashMap<RequestKey, Entry>,
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
    for (key, e) in entries {
        out.extend(frame(&enc(&Record::Answer {
            id: key.id,
            digest: serde_bytes::ByteArray::new(e.digest),
            keep_until: e.keep_until,
            reply_to: e.reply.reply_to.clone(),
            reply: e.reply.bytes.to_vec(),
            caller: key.caller.clone(),
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
    use crate::replay::test_support::{NOW, fresh, id, k};
    use crate::replay::{Begin, ReplayStore, Seen};

    #[test]
    fn entries_of_an_older_journal_without_callers_stand_for_every_caller() {
        #[derive(Serialize)]
        enum OldRecord {
            Header {
                created_at: Millis,
            },
            Answer {
                id: Uuid,
                digest: serde_bytes::ByteArray<32>,
                keep_until: Millis,
                reply_to: String,
                #[serde(with = "serde_bytes")]
                reply: Vec<u8>,
            },
        }
        let dir = tempfile::tempdir().unwrap();
        let mut journal =
            frame(&rmp_serde::to_vec_named(&OldRecord::Header { created_at: NOW }).unwrap());
        journal.extend(frame(
            &rmp_serde::to_vec_named(&OldRecord::Answer {
                id: id(1),
                digest: serde_bytes::ByteArray::new([1; 32]),
                keep_until: NOW + 10_000,
                reply_to: "q".into(),
                reply: b"old".to_vec(),
            })
            .unwrap(),
        ));
        fs::write(dir.path().join(JOURNAL_FILE), journal).unwrap();
        let (s, rep) = ReplayStore::open(dir.path(), 1 << 20, NOW).unwrap();
        assert_eq!((rep.loaded, rep.damaged), (1, false));
        match s.seen(&k(1), &[1; 32]) {
            Seen::Answered(r) => assert_eq!(&*r.bytes, b"old"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.begin(&RequestKey::new("anyone", id(1)), &[2; 32], NOW, NOW),
            Begin::Replayed
        ));
    }

    #[test]
    fn journal_survives_restart_and_drops_expired_entries() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (s, _) = ReplayStore::open(dir.path(), 1 << 20, NOW).unwrap();
            let (_, w) = fresh(s.begin(&k(1), &[1; 32], NOW, NOW)).record(
                NOW + 100,
                "q".into(),
                b"short-lived".to_vec(),
            );
            w.unwrap();
            let (_, w) = fresh(s.begin(&k(2), &[2; 32], NOW, NOW)).record(
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
            s.begin(&k(2), &[2; 32], NOW, NOW + 5_000),
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
                        for j in 0..8u8 {
                            let n = t * 8 + j;
                            let (_, w) = fresh(s.begin(&k(n), &[n; 32], NOW, NOW)).record(
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
            match s.begin(&k(n), &[n; 32], NOW, NOW + 1) {
                Begin::Answered(r) => {
                    assert_eq!(r.reply_to, format!("q{n}"));
                    assert_eq!(&r.bytes[..], &vec![n; 100][..]);
                }
                other => panic!("{n}: {other:?}"),
            }
        }
    }

    #[test]
    fn truncated_tail_is_ignored_and_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (s, _) = ReplayStore::open(dir.path(), 1 << 20, NOW).unwrap();
            let (_, w) = fresh(s.begin(&k(1), &[1; 32], NOW, NOW)).record(
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
}
