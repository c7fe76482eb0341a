//! Appending to an audit log: one chain however many processes write it.
//!
//! Every append takes an exclusive `flock` on `.<name>.lock` beside the log, re-reads the tail of
//! `<path>` (the last record's hash and index) if anyone else wrote since, appends, and
//! fsyncs before unlocking. What one call appends (a record, or a batch) is signed
//! once: its last record, whose signature covers the others through the chain; they
//! are written with a zero signature. So two writers on one path (two CLIs at once)
//! interleave into one valid chain. The lock file never moves, so rotation (which renames the log)
//! cannot split writers onto two inodes.
//!
//! Files are created and rotated through `.<name>.tmp` and renames, so a crash leaves
//! either the old state or the new one; `open` and `append` finish or undo a half-done
//! rotation. A record torn by a crash mid-write, with the unsigned records of its
//! batch before it, is cut off (its bytes saved to
//! `.<name>.torn`) and reported through [`AuditOptions::on_repair`]; anything else that
//! does not read as records stops the writer rather than be extended past.

use super::{AuditRecord, Entry, MAX_RECORD_BYTES, frame, frames, is_unsigned, read_record};
use crate::codec;
use crate::credential::{Credential, MAX_CREDENTIAL_BYTES};
use crate::envelope::{Context, IssuerSigned, Signed, decode_body};
use crate::keys::SigningKey;
use crate::time::{Millis, now_ms};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How a log is written.
#[derive(Clone)]
pub struct AuditOptions {
    /// Rotate when appending would grow the file past this many bytes. Default 64 MiB.
    pub max_bytes: u64,
    /// fsync after every append call (one record or one batch). Default true; when
    /// false, records are durable only after [`AuditLog::flush`].
    pub sync_on_append: bool,
    /// How long to wait for another writer's lock before giving up. Default 10 s.
    pub lock_timeout: Duration,
    /// The time written into records. Default: the system clock.
    pub clock: fn() -> Millis,
    /// Called when a torn tail is cut off (log it as a warning).
    pub on_repair: Option<OnRepair>,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            max_bytes: 64 * 1024 * 1024,
            sync_on_append: true,
            lock_timeout: Duration::from_secs(10),
            clock: now_ms,
            on_repair: None,
        }
    }
}

impl std::fmt::Debug for AuditOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditOptions")
            .field("max_bytes", &self.max_bytes)
            .field("sync_on_append", &self.sync_on_append)
            .field("lock_timeout", &self.lock_timeout)
            .finish_non_exhaustive()
    }
}

/// A callback told of each [`Repair`].
pub type OnRepair = Arc<dyn Fn(&Repair) + Send + Sync>;

/// A torn tail that was cut off a log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    /// The log file.
    pub path: PathBuf,
    /// Where the torn record started; the file now ends here.
    pub offset: u64,
    /// How many bytes were cut.
    pub removed: u64,
    /// Where the cut bytes were saved.
    pub saved_to: PathBuf,
}

/// Where an appended record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Its index in the chain.
    pub index: u64,
    /// SHA-256 of its envelope: the log's head after it.
    pub hash: [u8; 32],
}

/// Why a log could not be opened or appended to.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file operation failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another writer held the lock for longer than the timeout.
    #[error("timed out after {waited:?} waiting for the lock on {path}")]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
    /// The file holds bytes that are not records and not a torn tail.
    #[error(
        "{path} is corrupt at byte {offset}: {reason} (not appending; run gearmq audit verify)"
    )]
    Corrupt {
        /// The log file.
        path: PathBuf,
        /// Where reading stopped.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The log belongs to another writer.
    #[error("{path} is written by {log_writer}, not by {writer}")]
    WrongWriter {
        /// The log file.
        path: PathBuf,
        /// Who writes it (name and role of its last record's writer).
        log_writer: String,
        /// Who tried to.
        writer: String,
    },
    /// The credential given does not hold the key given.
    #[error("the writer credential of {name} is for another key than the signing key")]
    KeyMismatch {
        /// The credential's name.
        name: String,
    },
    /// The credential given does not decode.
    #[error("the writer credential does not decode: {0}")]
    Credential(crate::DecodeError),
    /// An entry breaks the rules a verifier would hold it to.
    #[error("invalid audit entry: {reason}")]
    InvalidEntry {
        /// What is wrong.
        reason: String,
    },
    /// A record would be larger than [`MAX_RECORD_BYTES`].
    #[error("audit record of about {size} bytes is over the limit of {max}")]
    RecordTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Rotated files exist but the live file is gone: starting a new chain would fork.
    #[error(
        "{path} is missing or empty but rotated files of it exist; restore it or move them away"
    )]
    MissingLog {
        /// The log file.
        path: PathBuf,
    },
}

type Result<T> = std::result::Result<T, AuditError>;

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AuditError {
    let path = path.to_path_buf();
    move |source| AuditError::Io {
        action,
        path,
        source,
    }
}

/// What the writer knows of the live file: which inode, how long, and its last record.
struct Tail {
    file: File,
    id: (u64, u64),
    len: u64,
    next_index: u64,
    last_hash: [u8; 32],
    log_id: [u8; 16],
}

/// An audit log open for appending. See the module doc for the locking and recovery
/// rules.
pub struct AuditLog {
    path: PathBuf,
    lock: File,
    key: SigningKey,
    credential: Vec<u8>,
    writer: Credential,
    options: AuditOptions,
    tail: Option<Tail>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .field("writer", &self.writer.name)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (or starts, with a genesis record) the log at `path`, written with `key`
    /// and its encoded credential. Repairs a torn tail, finishes a half-done rotation,
    /// and refuses a log whose records were written by another name or role.
    pub fn open(
        path: impl Into<PathBuf>,
        key: SigningKey,
        credential: &[u8],
        options: AuditOptions,
    ) -> Result<AuditLog> {
        let path = path.into();
        let env: IssuerSigned =
            codec::decode("credential envelope", credential, MAX_CREDENTIAL_BYTES)
                .map_err(AuditError::Credential)?;
        let writer = decode_body::<Credential>(&env.body, MAX_CREDENTIAL_BYTES)
            .map_err(AuditError::Credential)?;
        if writer.public_key != key.public_key() {
            return Err(AuditError::KeyMismatch {
                name: writer.name.to_string(),
            });
        }
        let lock_path = hidden_sibling(&path, ".lock");
        let lock = create_options()
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        let mut log = AuditLog {
            path,
            lock,
            key,
            credential: credential.to_vec(),
            writer,
            options,
            tail: None,
        };
        log.with_lock(|log| log.refresh())?;
        Ok(log)
    }

    /// The live file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record (durable on return unless `sync_on_append` is off).
    pub fn append(&mut self, entry: Entry) -> Result<Appended> {
        let mut out = self.append_batch(vec![entry])?;
        // append_batch returns one result per entry.
        out.pop().ok_or_else(|| AuditError::Corrupt {
            path: self.path.clone(),
            offset: 0,
            reason: "append wrote nothing".into(),
        })
    }

    /// Appends records in order under one lock and one fsync (a request and its
    /// replies, a burst of replies).
    pub fn append_batch(&mut self, entries: Vec<Entry>) -> Result<Vec<Appended>> {
        for e in &entries {
            self.check_entry(e)?;
        }
        self.append_checked(entries)
    }

    /// Whether `entry` can be appended: valid, and its record within
    /// [`MAX_RECORD_BYTES`]. [`AuditLog::append_batch`] checks every entry so before
    /// anything is written, so a batch is never cut in half by one bad entry.
    pub fn check_entry(&self, entry: &Entry) -> Result<()> {
        entry
            .validate()
            .map_err(|reason| AuditError::InvalidEntry { reason })?;
        // The envelope adds the credential, the signature and a few bytes of framing
        // to the encoded record.
        let size = codec::encode(entry).len() + record_overhead() + self.credential.len() + 128;
        if size > MAX_RECORD_BYTES {
            return Err(AuditError::RecordTooLarge {
                size,
                max: MAX_RECORD_BYTES,
            });
        }
        Ok(())
    }

    /// [`AuditLog::append_batch`] of entries that passed [`AuditLog::check_entry`].
    pub(crate) fn append_checked(&mut self, entries: Vec<Entry>) -> Result<Vec<Appended>> {
        self.with_lock(|log| {
            log.refresh()?;
            let result = log.write_entries(entries);
            if result.is_err() {
                // Whatever was half-written is found (and repaired) on the next read.
                log.tail = None;
            }
            result
        })
    }

    /// fsyncs the live file: everything appended so far is durable.
    pub fn flush(&mut self) -> Result<()> {
        if let Some(t) = &self.tail {
            t.file.sync_data().map_err(io_err("sync", &self.path))?;
        }
        Ok(())
    }

    /// The head of the log as this writer last saw it: (next index, last record's hash).
    pub fn head(&self) -> Option<(u64, [u8; 32])> {
        self.tail.as_ref().map(|t| (t.next_index, t.last_hash))
    }

    fn with_lock<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let start = Instant::now();
        let lock_path = hidden_sibling(&self.path, ".lock");
        loop {
            match rustix::fs::flock(
                &self.lock,
                rustix::fs::FlockOperation::NonBlockingLockExclusive,
            ) {
                Ok(()) => break,
                Err(e) if e == rustix::io::Errno::WOULDBLOCK || e == rustix::io::Errno::INTR => {
                    if start.elapsed() >= self.options.lock_timeout {
                        return Err(AuditError::LockTimeout {
                            path: lock_path,
                            waited: start.elapsed(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(io_err("lock", &lock_path)(e.into())),
            }
        }
        let result = f(self);
        // Closing the descriptor would release the lock too; an unlock failure leaves
        // nothing to clean up.
        let _ = rustix::fs::flock(&self.lock, rustix::fs::FlockOperation::Unlock);
        result
    }

    /// Brings `self.tail` up to date with the live file. Holds the lock.
    fn refresh(&mut self) -> Result<()> {
        self.recover_rotation()?;
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return self.start_chain(),
            Err(e) => return Err(io_err("read", &self.path)(e)),
        };
        let id = file_id(&meta);
        match &self.tail {
            Some(t) if t.id == id && t.len == meta.len() => return Ok(()),
            Some(t) if t.id == id && t.len < meta.len() => {
                let start = t.len;
                return self.scan(start);
            }
            _ => {}
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(io_err("open", &self.path))?;
        let id = file_id(&file.metadata().map_err(io_err("read", &self.path))?);
        self.tail = Some(Tail {
            file,
            id,
            len: 0,
            next_index: 0,
            last_hash: [0; 32],
            log_id: [0; 16],
        });
        self.scan(0)?;
        if self.tail.as_ref().is_some_and(|t| t.len == 0) {
            self.tail = None;
            return self.start_chain();
        }
        Ok(())
    }

    /// Reads records from `start` to the end of the live file into `self.tail`.
    fn scan(&mut self, start: u64) -> Result<()> {
        let path = self.path.clone();
        let Some(tail) = self.tail.as_mut() else {
            return Ok(());
        };
        let mut buf = Vec::new();
        tail.file
            .seek(SeekFrom::Start(start))
            .map_err(io_err("read", &path))?;
        (&tail.file)
            .read_to_end(&mut buf)
            .map_err(io_err("read", &path))?;
        let mut complete = Vec::new();
        let mut torn_at = None;
        for f in frames(&buf) {
            match f {
                Ok(f) => complete.push(f),
                Err(e) => {
                    let off = match e {
                        super::FrameError::Truncated { offset, .. }
                        | super::FrameError::BadLength { offset, .. } => offset,
                    };
                    let rest = &buf[off..];
                    let torn = rest.iter().all(|&b| b == 0)
                        || matches!(e, super::FrameError::Truncated { .. });
                    if !torn {
                        return Err(AuditError::Corrupt {
                            path,
                            offset: start + off as u64,
                            reason: e.to_string(),
                        });
                    }
                    torn_at = Some(off);
                }
            }
        }
        // A complete last frame that does not decode and ends in zeros is a write the
        // file system extended but never filled: torn too. (A record that decodes may
        // end in zeros: one left unsigned, below.)
        if torn_at.is_none()
            && let Some(f) = complete.last()
            && read_record(f.bytes).is_err()
            && f.bytes.len() >= 16
            && f.bytes[f.bytes.len() - 16..].iter().all(|&b| b == 0)
        {
            torn_at = Some(f.offset);
            complete.pop();
        }
        // A batch is written with its last record signed and the others not: whole
        // records after the last signed one are a batch whose signed record was torn
        // off or never reached the disk (the batch was not yet durable), so torn too.
        let signed = |f: &super::Frame<'_>| {
            Signed::decode(f.bytes, MAX_RECORD_BYTES).map_or(true, |e| !is_unsigned(&e))
        };
        let keep = complete.iter().rposition(signed).map_or(0, |i| i + 1);
        if let Some(f) = complete.get(keep) {
            torn_at = Some(f.offset);
            complete.truncate(keep);
        }
        if let Some(f) = complete.last().copied() {
            let view = read_record(f.bytes).map_err(|e| AuditError::Corrupt {
                path: path.clone(),
                offset: start + f.offset as u64,
                reason: format!("last record does not decode: {e}"),
            })?;
            if view.writer.name != self.writer.name || view.writer.role != self.writer.role {
                return Err(AuditError::WrongWriter {
                    path,
                    log_writer: format!("{} ({})", view.writer.name, view.writer.role),
                    writer: format!("{} ({})", self.writer.name, self.writer.role),
                });
            }
            tail.next_index = view.record.index.saturating_add(1);
            tail.last_hash = view.hash;
            tail.log_id = *view.record.log_id;
        }
        let end = match torn_at {
            Some(off) => {
                let offset = start + off as u64;
                let saved_to = hidden_sibling(&path, ".torn");
                let mut saved = create_options()
                    .append(true)
                    .open(&saved_to)
                    .map_err(io_err("write", &saved_to))?;
                saved
                    .write_all(&buf[off..])
                    .and_then(|()| saved.sync_all())
                    .map_err(io_err("write", &saved_to))?;
                tail.file
                    .set_len(offset)
                    .and_then(|()| tail.file.sync_all())
                    .map_err(io_err("truncate", &path))?;
                let repair = Repair {
                    path: path.clone(),
                    offset,
                    removed: (buf.len() - off) as u64,
                    saved_to,
                };
                if let Some(cb) = &self.options.on_repair {
                    cb(&repair);
                }
                offset
            }
            None => start + buf.len() as u64,
        };
        tail.len = end;
        Ok(())
    }

    /// Starts a new chain with a genesis record. Holds the lock.
    fn start_chain(&mut self) -> Result<()> {
        if has_rotated_files(&self.path)? {
            return Err(AuditError::MissingLog {
                path: self.path.clone(),
            });
        }
        let mut log_id = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut log_id).map_err(
            |_| io_err("create", &self.path)(std::io::Error::other("no system randomness")),
        )?;
        let time = (self.options.clock)();
        let record = AuditRecord::new(log_id, 0, [0; 32], time, Entry::Genesis {});
        self.install_new_file(record, None)
    }

    /// Moves the full live file to `<path>.<n>` and continues the chain in a new one
    /// that starts with a rotation record. Holds the lock.
    fn rotate(&mut self) -> Result<()> {
        let Some(t) = &self.tail else {
            return Ok(());
        };
        t.file.sync_data().map_err(io_err("sync", &self.path))?;
        let time = (self.options.clock)();
        let record = AuditRecord::new(
            t.log_id,
            t.next_index,
            t.last_hash,
            time,
            Entry::Rotation {
                previous_file_head: serde_bytes::ByteArray::new(t.last_hash),
            },
        );
        let n = next_rotation_number(&self.path)?;
        self.install_new_file(record, Some(n))
    }

    /// Writes `first` to `.<name>.tmp`, fsyncs it, moves the live file to `<path>.<n>`
    /// (when rotating) and the new file into place.
    fn install_new_file(&mut self, first: AuditRecord, rotate_to: Option<u64>) -> Result<()> {
        let env = Signed::seal(&first, &self.key, &self.credential);
        let tmp = hidden_sibling(&self.path, ".tmp");
        let mut f = create_options()
            .write(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        f.write_all(&frame(&env))
            .and_then(|()| f.sync_all())
            .map_err(io_err("write", &tmp))?;
        drop(f);
        if let Some(n) = rotate_to {
            let to = sibling(&self.path, &format!(".{n}"));
            std::fs::rename(&self.path, &to).map_err(io_err("rotate", &self.path))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io_err("create", &self.path))?;
        sync_dir(&self.path)?;
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(io_err("open", &self.path))?;
        let meta = file.metadata().map_err(io_err("read", &self.path))?;
        self.tail = Some(Tail {
            id: file_id(&meta),
            len: meta.len(),
            file,
            next_index: first.index + 1,
            last_hash: crate::sha256(&env),
            log_id: *first.log_id,
        });
        Ok(())
    }

    /// Undoes or finishes a rotation (or creation) a crash left half-done. Holds the
    /// lock.
    fn recover_rotation(&mut self) -> Result<()> {
        let tmp = hidden_sibling(&self.path, ".tmp");
        if !tmp.exists() {
            return Ok(());
        }
        if self.path.exists() {
            // The crash came before the live file was moved: the old state stands.
            std::fs::remove_file(&tmp).map_err(io_err("remove", &tmp))?;
        } else {
            // The live file was moved away; the new one (fsynced first) takes its place.
            std::fs::rename(&tmp, &self.path).map_err(io_err("create", &self.path))?;
            sync_dir(&self.path)?;
        }
        self.tail = None;
        Ok(())
    }

    /// Signs and writes `entries`, rotating when the file would grow past `max_bytes`
    /// (at most once per record, so a record bigger than `max_bytes` still lands).
    fn write_entries(&mut self, entries: Vec<Entry>) -> Result<Vec<Appended>> {
        let mut out = Vec::with_capacity(entries.len());
        let mut pending = Pending::default();
        for mut entry in entries {
            let mut rotated = false;
            loop {
                let Some(t) = &self.tail else {
                    return Err(AuditError::Corrupt {
                        path: self.path.clone(),
                        offset: 0,
                        reason: "log has no tail".into(),
                    });
                };
                let time = (self.options.clock)();
                let record = AuditRecord::new(t.log_id, t.next_index, t.last_hash, time, entry);
                // Unsigned for now: only the last record of what is written at once is
                // signed (`write_pending`), and its signature covers the others through
                // the chain (PROTOCOL.md, Audit log).
                let unsigned = Signed {
                    body: codec::encode(&record),
                    signer: self.credential.clone(),
                    sig: serde_bytes::ByteArray::new([0; 64]),
                };
                let env = codec::encode(&unsigned);
                let framed = frame(&env);
                if !rotated
                    && t.len + (pending.bytes.len() + framed.len()) as u64 > self.options.max_bytes
                {
                    self.write_pending(&mut pending, &mut out)?;
                    self.rotate()?;
                    rotated = true;
                    // Re-chain the same entry to the rotation record.
                    entry = record.entry;
                    continue;
                }
                let hash = crate::sha256(&env);
                pending.last = Some((unsigned.body, pending.bytes.len(), out.len()));
                pending.bytes.extend_from_slice(&framed);
                if let Some(t) = self.tail.as_mut() {
                    t.next_index += 1;
                    t.last_hash = hash;
                }
                out.push(Appended {
                    index: record.index,
                    hash,
                });
                break;
            }
        }
        self.write_pending(&mut pending, &mut out)?;
        Ok(out)
    }

    /// Signs the last pending record (sealing those before it), writes them all, and
    /// syncs.
    fn write_pending(&mut self, pending: &mut Pending, out: &mut [Appended]) -> Result<()> {
        let Some(t) = self.tail.as_mut() else {
            return Ok(());
        };
        if let Some((body, at, slot)) = pending.last.take() {
            let env = Signed::seal_bytes(Context::Audit, body, &self.key, &self.credential);
            let hash = crate::sha256(&env);
            pending.bytes.truncate(at);
            pending.bytes.extend_from_slice(&frame(&env));
            t.last_hash = hash;
            if let Some(a) = out.get_mut(slot) {
                a.hash = hash;
            }
        }
        if !pending.bytes.is_empty() {
            t.file
                .write_all(&pending.bytes)
                .map_err(io_err("append to", &self.path))?;
            t.len += pending.bytes.len() as u64;
            pending.bytes.clear();
        }
        if self.options.sync_on_append {
            t.file.sync_data().map_err(io_err("sync", &self.path))?;
        }
        Ok(())
    }
}

fn create_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Audit logs hold request arguments and replies: owner only.
        o.mode(0o600);
    }
    o
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// `<dir>/.<name><suffix>`: the writer's own files, hidden so that `audit.log*` names
/// exactly the log's chain.
fn hidden_sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(suffix);
    path.with_file_name(name)
}

#[cfg(unix)]
fn file_id(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

fn sync_dir(path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

/// The numbers `n` of the rotated files `<path>.<n>` next to `path`.
fn rotated_numbers(path: &Path) -> Result<Vec<u64>> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{name}.");
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err("list", dir))? {
        let e = e.map_err(io_err("list", dir))?;
        if let Some(n) = e
            .file_name()
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .filter(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push(n);
        }
    }
    Ok(out)
}

/// Records framed but not yet written: the bytes, and the last record's body, its
/// place in the bytes and in the results (it is signed before the bytes are written).
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    last: Option<(Vec<u8>, usize, usize)>,
}

/// The files of the log at `path`, oldest first: the rotated files `<path>.<n>` by
/// `n`, then `path` itself if it exists. What to hand [`super::verify_log`] for a
/// whole chain.
pub fn log_files(path: &Path) -> Result<Vec<PathBuf>> {
    let mut numbers = rotated_numbers(path)?;
    numbers.sort_unstable();
    let mut out: Vec<PathBuf> = numbers
        .into_iter()
        .map(|n| sibling(path, &format!(".{n}")))
        .collect();
    if path.exists() {
        out.push(path.to_path_buf());
    }
    Ok(out)
}

fn has_rotated_files(path: &Path) -> Result<bool> {
    Ok(!rotated_numbers(path)?.is_empty())
}

fn next_rotation_number(path: &Path) -> Result<u64> {
    Ok(rotated_numbers(path)?.into_iter().max().unwrap_or(0) + 1)
}

/// What a record's fields other than its entry add to the encoding of the entry, at
/// their widest (`index` and `time` at their maximum): the entry is one field of the
/// record, encoded the same inside it as alone.
fn record_overhead() -> usize {
    static OVERHEAD: OnceLock<usize> = OnceLock::new();
    *OVERHEAD.get_or_init(|| {
        let entry = Entry::reply_accepted(&[]);
        let alone = codec::encode(&entry).len();
        let record = AuditRecord::new([0; 16], u64::MAX, [0; 32], Millis::MAX, entry);
        codec::encode(&record).len() - alone
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_encodes_as_its_entry_plus_the_overhead_at_most() {
        let entries = [
            Entry::reply_accepted(&[]),
            Entry::reply_accepted(&[7; 700]),
            Entry::request_sent(&[1; 70_000]),
            Entry::reply_rejected(&[2; 300], "forged", Some("web1")),
            Entry::request_handled(&[3; 500], Some(&[4; 600])),
        ];
        for e in entries {
            let alone = codec::encode(&e).len();
            let widest = AuditRecord::new([9; 16], u64::MAX, [9; 32], Millis::MAX, e.clone());
            assert_eq!(codec::encode(&widest).len(), alone + record_overhead());
            let narrow = AuditRecord::new([9; 16], 1, [9; 32], 1, e);
            assert!(codec::encode(&narrow).len() <= alone + record_overhead());
        }
    }
}
