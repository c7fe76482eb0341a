//! A shared handle on an audit log with a writer thread that appends in batches: one
//! file lock and one fsync per batch, however many callers wait on it.
//!
//! Three ways in, for the three kinds of caller:
//! - [`AuditSink::record_now`] appends under the caller's thread and returns once the
//!   record is durable (the orchestrator's requests, logged before publishing);
//! - [`AuditSink::record_durable`] queues the record and waits until the batch it went
//!   into is synced (an agent's requests, logged before acking: concurrent handlers
//!   share one fsync); [`AuditSink::try_record_then`] does the same without blocking,
//!   calling back when the batch is synced (async callers wrap it in a oneshot, so no
//!   thread waits);
//! - [`AuditSink::record_later`] queues the record and returns at once, dropping (and
//!   counting) it when the queue is full (the orchestrator's replies, so a flood never
//!   blocks the consumer).
//!
//! [`AuditSink::flush`] waits until everything queued before it is synced
//! ([`AuditSink::try_flush_then`]: calls back instead). Every call that waits blocks
//! its thread: async callers use the `_then` forms, or run it on a blocking thread
//! (`tokio::task::spawn_blocking`). Std only, so both sides share it whatever their
//! runtime; failures the writer thread meets are handed to an error callback.

use super::{Appended, AuditError, AuditLog, AuditOptions, Entry};
use crate::keys::SigningKey;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard};

/// A callback told of every failure the writer thread meets (log it).
pub type OnError = Arc<dyn Fn(&AuditError) + Send + Sync>;

/// How a sink queues and batches.
#[derive(Clone)]
pub struct SinkOptions {
    /// Most records waiting for the writer thread. Default 65,536.
    pub queue: usize,
    /// Most records appended in one batch (one lock, one fsync). Default 1024.
    pub batch: usize,
    /// Told of every failed write of the writer thread. Default: none.
    pub on_error: Option<OnError>,
}

impl Default for SinkOptions {
    fn default() -> Self {
        SinkOptions {
            queue: 65_536,
            batch: 1024,
            on_error: None,
        }
    }
}

impl std::fmt::Debug for SinkOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkOptions")
            .field("queue", &self.queue)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

/// Why a record did not reach the log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// The log could not be written (or refused the entry); the error is shared by
    /// every waiter of the batch it was in.
    #[error("{0}")]
    Write(Arc<AuditError>),
    /// The writer thread is gone (it panicked, or the sink is being dropped).
    #[error("the audit log writer thread has stopped")]
    Stopped,
}

impl SinkError {
    /// Whether the entry itself was refused (too large, or breaking a verifier's
    /// rules): writing it again cannot succeed, unlike an I/O or lock failure.
    pub fn entry_refused(&self) -> bool {
        matches!(self, SinkError::Write(e) if is_entry_refused(e))
    }
}

fn is_entry_refused(e: &AuditError) -> bool {
    matches!(
        e,
        AuditError::RecordTooLarge { .. } | AuditError::InvalidEntry { .. }
    )
}

/// Told once what became of a record (or a flush): called on the writer thread, so it
/// must be quick (send on a channel).
pub type Done = Box<dyn FnOnce(Result<(), SinkError>) + Send>;

type Waiter = Done;

/// The sink's queue was full: the record (or flush) was not queued. Gives the record
/// (none for a flush) and the callback back, uncalled.
pub struct QueueFull {
    /// The record that was not queued.
    pub entry: Option<Entry>,
    /// Its callback, not called.
    pub done: Done,
}

impl std::fmt::Debug for QueueFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueFull")
    }
}

fn waiter_of(tx: SyncSender<Result<(), SinkError>>) -> Waiter {
    Box::new(move |r| {
        let _ = tx.try_send(r);
    })
}

enum Job {
    /// A record, with whoever waits for it to be durable.
    Record(Entry, Option<Waiter>),
    /// Someone waiting for everything queued before.
    Flush(Waiter),
}

/// One log as its writer thread sees it.
struct Target {
    log: Arc<Mutex<AuditLog>>,
    on_error: Option<OnError>,
}

/// A job and the log it is for: a writer thread may serve several logs.
type Routed = (Arc<Target>, Job);

/// A shared audit log with a batching writer thread (its own, or one of an
/// [`AuditWriters`] pool's). Dropping the last handle lets the thread write what is
/// queued and end.
pub struct AuditSink {
    target: Arc<Target>,
    path: PathBuf,
    tx: SyncSender<Routed>,
    dropped: AtomicU64,
}

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSink")
            .field("path", &self.path)
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<AuditLog>) -> MutexGuard<'_, AuditLog> {
    // The log's own state is consistent between calls (it re-reads the tail under its
    // file lock), so a poisoned mutex is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AuditSink {
    /// Opens (or starts) the log at `path`, written with `key` and its encoded
    /// `credential` (see [`AuditLog::open`]), and starts the writer thread.
    pub fn open(
        path: &Path,
        key: SigningKey,
        credential: &[u8],
        log_options: AuditOptions,
        options: SinkOptions,
    ) -> Result<AuditSink, AuditError> {
        let log = AuditLog::open(path, key, credential, log_options)?;
        let tx = start_writer(options.queue, options.batch).map_err(|source| AuditError::Io {
            action: "start the writer thread for",
            path: path.to_path_buf(),
            source,
        })?;
        Ok(AuditSink::on(tx, log, path, options.on_error))
    }

    fn on(
        tx: SyncSender<Routed>,
        log: AuditLog,
        path: &Path,
        on_error: Option<OnError>,
    ) -> AuditSink {
        AuditSink {
            target: Arc::new(Target {
                log: Arc::new(Mutex::new(log)),
                on_error,
            }),
            path: path.to_path_buf(),
            tx,
            dropped: AtomicU64::new(0),
        }
    }

    fn send(&self, job: Job) -> Result<(), SinkError> {
        self.tx
            .send((self.target.clone(), job))
            .map_err(|_| SinkError::Stopped)
    }

    // The job comes back whole so that its callback can be handed back or told.
    #[allow(clippy::result_large_err)]
    fn try_send(&self, job: Job) -> Result<(), TrySendError<Job>> {
        self.tx
            .try_send((self.target.clone(), job))
            .map_err(|e| match e {
                TrySendError::Full((_, j)) => TrySendError::Full(j),
                TrySendError::Disconnected((_, j)) => TrySendError::Disconnected(j),
            })
    }

    /// The live file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `entry` on this thread (taking the file lock, then one fsync) and
    /// returns once it is durable. Blocks.
    pub fn record_now(&self, entry: Entry) -> Result<Appended, AuditError> {
        lock(&self.target.log).append(entry)
    }

    /// Queues `entry` and waits until the batch it went into is written and synced
    /// (or failed). Waits for room when the queue is full. Blocks.
    pub fn record_durable(&self, entry: Entry) -> Result<(), SinkError> {
        let (tx, rx) = sync_channel(1);
        self.send(Job::Record(entry, Some(waiter_of(tx))))?;
        rx.recv().unwrap_or(Err(SinkError::Stopped))
    }

    /// Queues `entry` without blocking; `done` is called (on the writer thread) once
    /// the batch it went into is written and synced, or failed. If the queue is full
    /// nothing is queued and `done` comes back uncalled in [`QueueFull`]; if the writer
    /// has stopped, `done` is called at once with [`SinkError::Stopped`].
    pub fn try_record_then(&self, entry: Entry, done: Done) -> Result<(), Box<QueueFull>> {
        match self.try_send(Job::Record(entry, Some(done))) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(Job::Record(entry, Some(done)))) => Err(Box::new(QueueFull {
                entry: Some(entry),
                done,
            })),
            Err(TrySendError::Disconnected(Job::Record(_, Some(done)))) => {
                done(Err(SinkError::Stopped));
                Ok(())
            }
            Err(_) => Ok(()),
        }
    }

    /// Like [`AuditSink::flush`] without blocking: `done` is called once everything
    /// queued before is synced. A full queue gives `done` back in [`QueueFull`].
    pub fn try_flush_then(&self, done: Done) -> Result<(), Box<QueueFull>> {
        match self.try_send(Job::Flush(done)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(Job::Flush(done))) => {
                Err(Box::new(QueueFull { entry: None, done }))
            }
            Err(TrySendError::Disconnected(Job::Flush(done))) => {
                done(Err(SinkError::Stopped));
                Ok(())
            }
            Err(_) => Ok(()),
        }
    }

    /// Queues `entry` for the writer thread and returns at once. If the queue is full
    /// (records coming faster than the disk takes them) the record is dropped and
    /// counted ([`AuditSink::dropped`]); returns whether it was queued.
    pub fn record_later(&self, entry: Entry) -> bool {
        match self.try_send(Job::Record(entry, None)) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Waits until every record queued before this call is written and synced. The
    /// error is that of the last batch, if it failed. Blocks.
    pub fn flush(&self) -> Result<(), SinkError> {
        let (tx, rx) = sync_channel(1);
        self.send(Job::Flush(waiter_of(tx)))?;
        rx.recv().unwrap_or(Err(SinkError::Stopped))
    }

    /// Records dropped by [`AuditSink::record_later`] because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Starts a writer thread with a queue of `queue` jobs, appending up to `batch`
/// records per log per fsync; it ends when every sender is gone.
fn start_writer(queue: usize, batch: usize) -> std::io::Result<SyncSender<Routed>> {
    let (tx, rx) = sync_channel(queue.max(1));
    let batch = batch.max(1);
    std::thread::Builder::new()
        .name("gearmq-audit".into())
        .spawn(move || write_batches(&rx, batch))?;
    Ok(tx)
}

/// A pool of audit writer threads shared by many logs (the emulator's virtual hosts):
/// each log is served by one thread, so its records keep their order, and a thread
/// writes each of its logs' queued records with one fsync per log. Threads end once
/// the pool and every sink opened on it are dropped.
pub struct AuditWriters {
    txs: Vec<SyncSender<Routed>>,
    next: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for AuditWriters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditWriters")
            .field("threads", &self.txs.len())
            .finish_non_exhaustive()
    }
}

impl AuditWriters {
    /// Starts `threads` writer threads, each with a queue of `queue` jobs and up to
    /// `batch` records per batch.
    pub fn start(threads: usize, queue: usize, batch: usize) -> std::io::Result<AuditWriters> {
        let txs = (0..threads.max(1))
            .map(|_| start_writer(queue, batch))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(AuditWriters {
            txs,
            next: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Opens (or starts) the log at `path` as [`AuditSink::open`] does, served by the
    /// next thread of the pool, round robin.
    pub fn open(
        &self,
        path: &Path,
        key: SigningKey,
        credential: &[u8],
        log_options: AuditOptions,
        on_error: Option<OnError>,
    ) -> Result<AuditSink, AuditError> {
        let log = AuditLog::open(path, key, credential, log_options)?;
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.txs.len();
        Ok(AuditSink::on(self.txs[i].clone(), log, path, on_error))
    }
}

/// The writer thread: takes what is queued (up to `batch` records), appends each log's
/// share under one lock and one fsync, answers the waiters, and goes on until every
/// sender is gone.
fn write_batches(rx: &Receiver<Routed>, batch: usize) {
    while let Ok(first) = rx.recv() {
        // Jobs grouped by log, in the order the logs first appear; within a log, in
        // the order they were queued.
        let mut groups: Vec<(Arc<Target>, Vec<Job>)> = Vec::new();
        let mut records = 0;
        let mut next = Some(first);
        while let Some((target, job)) = next.take() {
            if matches!(job, Job::Record(..)) {
                records += 1;
            }
            match groups.iter_mut().find(|(t, _)| Arc::ptr_eq(t, &target)) {
                Some((_, jobs)) => jobs.push(job),
                None => groups.push((target, vec![job])),
            }
            if records < batch {
                next = rx.try_recv().ok();
            }
        }
        for (target, jobs) in groups {
            write_jobs(&target, jobs);
        }
    }
}

/// Appends one log's records under one lock and one fsync and answers its waiters.
fn write_jobs(target: &Target, jobs: Vec<Job>) {
    let mut entries = Vec::new();
    let mut record_waiters: Vec<(usize, Waiter)> = Vec::new();
    let mut flush_waiters = Vec::new();
    for job in jobs {
        match job {
            Job::Record(e, waiter) => {
                if let Some(w) = waiter {
                    record_waiters.push((entries.len(), w));
                }
                entries.push(e);
            }
            Job::Flush(w) => flush_waiters.push(w),
        }
    }
    let results = write(&target.log, entries, target.on_error.as_ref());
    let last = results
        .iter()
        .rev()
        .find_map(|r| r.as_ref().err().cloned())
        .map_or(Ok(()), Err);
    for (i, w) in record_waiters {
        let r = results.get(i).cloned().unwrap_or(Err(SinkError::Stopped));
        w(r);
    }
    for w in flush_waiters {
        w(last.clone());
    }
}

/// Appends `entries` as one batch, under one lock, one signature and one fsync. An
/// entry the log refuses (too large, invalid) is checked out first and fails alone.
/// Returns one result per entry (an fsync result alone when there are none).
fn write(
    log: &Mutex<AuditLog>,
    entries: Vec<Entry>,
    on_error: Option<&OnError>,
) -> Vec<Result<(), SinkError>> {
    let fail = |e: AuditError| {
        if let Some(cb) = on_error {
            cb(&e);
        }
        Err(SinkError::Write(Arc::new(e)))
    };
    if entries.is_empty() {
        return vec![lock(log).flush().or_else(fail)];
    }
    let mut log = lock(log);
    // An entry the log refuses (invalid, too large) fails alone; the others are
    // appended together.
    let mut results = Vec::with_capacity(entries.len());
    let mut batch = Vec::with_capacity(entries.len());
    for entry in entries {
        match log.check_entry(&entry) {
            Ok(()) => {
                results.push(None);
                batch.push(entry);
            }
            Err(e) => results.push(Some(fail(e))),
        }
    }
    let shared = if batch.is_empty() {
        Ok(())
    } else {
        log.append_checked(batch).map(|_| ()).or_else(fail)
    };
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| shared.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{MAX_RECORD_BYTES, VerifyOptions, log_files, verify_log};
    use crate::credential::{Credential, Role};
    use crate::names::Name;
    use crate::time::now_ms;
    use crate::trust::TrustAnchors;

    fn writer() -> (SigningKey, Vec<u8>, SigningKey) {
        let issuer = SigningKey::from_seed(&[1; 32]);
        let key = SigningKey::from_seed(&[2; 32]);
        let now = now_ms();
        let cred = Credential::new(
            1,
            Name::new("ops").unwrap(),
            Role::Operator,
            key.public_key(),
            now - 1000,
            now + 3_600_000,
        )
        .issue(&issuer);
        (key, cred, issuer)
    }

    /// A sink on a new log at `path` with `options`, and the issuer of its writer.
    fn sink_at(path: &Path, options: SinkOptions) -> (AuditSink, SigningKey) {
        let (key, cred, issuer) = writer();
        let sink = AuditSink::open(path, key, &cred, AuditOptions::default(), options).unwrap();
        (sink, issuer)
    }

    fn verify(path: &Path, issuer: &SigningKey) -> crate::audit::Summary {
        let files: Vec<(String, Vec<u8>)> = log_files(path)
            .unwrap()
            .into_iter()
            .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
            .collect();
        verify_log(
            &files,
            &TrustAnchors::new(vec![issuer.public_key()]),
            &VerifyOptions::default(),
        )
        .unwrap()
    }

    #[test]
    fn concurrent_durable_records_share_batches_and_make_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (sink, issuer) = sink_at(&path, SinkOptions::default());
        let sink = Arc::new(sink);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let s = sink.clone();
                std::thread::spawn(move || {
                    for _ in 0..10 {
                        s.record_durable(Entry::reply_rejected(b"x", "forged", None))
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for _ in 0..5 {
            assert!(sink.record_later(Entry::reply_rejected(b"y", "late", None)));
        }
        sink.flush().unwrap();
        sink.record_now(Entry::reply_rejected(b"z", "late", None))
            .unwrap();
        assert_eq!(sink.dropped(), 0);
        let s = verify(&path, &issuer);
        assert_eq!(s.records, 1 + 80 + 5 + 1);
        assert_eq!(s.replies_rejected, 86);
    }

    #[test]
    fn a_writer_pool_serves_many_logs_each_in_its_own_order() {
        let dir = tempfile::tempdir().unwrap();
        let pool = AuditWriters::start(2, 64, 1024).unwrap();
        let logs: Vec<_> = (0..5)
            .map(|i| {
                let path = dir.path().join(format!("audit-{i}.log"));
                let (key, cred, issuer) = writer();
                let sink = pool
                    .open(&path, key, &cred, AuditOptions::default(), None)
                    .unwrap();
                (path, Arc::new(sink), issuer)
            })
            .collect();
        let threads: Vec<_> = logs
            .iter()
            .enumerate()
            .map(|(i, (_, sink, _))| {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    for _ in 0..(10 + i) {
                        sink.record_durable(Entry::reply_rejected(b"x", "forged", None))
                            .unwrap();
                    }
                    assert!(sink.record_later(Entry::reply_rejected(b"y", "late", None)));
                    sink.flush().unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for (i, (path, _, issuer)) in logs.iter().enumerate() {
            let s = verify(path, issuer);
            assert_eq!(s.records as usize, 1 + 10 + i + 1, "{}", path.display());
            assert_eq!(s.replies_rejected as usize, 10 + i + 1);
        }
    }

    #[test]
    fn an_oversize_entry_fails_alone_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (sink, issuer) = sink_at(
            &path,
            SinkOptions {
                batch: 64,
                ..SinkOptions::default()
            },
        );
        let sink = Arc::new(sink);
        let big = Entry::request_handled(&vec![0; MAX_RECORD_BYTES], None);
        let s2 = sink.clone();
        let small = std::thread::spawn(move || {
            (0..20)
                .map(|_| s2.record_durable(Entry::reply_rejected(b"x", "forged", None)))
                .collect::<Vec<_>>()
        });
        let e = sink.record_durable(big).unwrap_err();
        assert!(e.entry_refused(), "{e}");
        assert!(small.join().unwrap().iter().all(Result::is_ok));
        assert_eq!(verify(&path, &issuer).replies_rejected, 20);
    }

    #[test]
    fn a_refused_entry_in_a_batch_fails_alone_and_the_others_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (key, cred, issuer) = writer();
        let log = Mutex::new(AuditLog::open(&path, key, &cred, AuditOptions::default()).unwrap());
        let small = || Entry::reply_rejected(b"x", "forged", None);
        let big = Entry::request_handled(&vec![0; MAX_RECORD_BYTES], None);
        let told = Arc::new(AtomicU64::new(0));
        let counter = told.clone();
        let on_error: OnError = Arc::new(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        let results = write(&log, vec![small(), big, small(), small()], Some(&on_error));
        assert_eq!(results.len(), 4);
        assert!(results[1].as_ref().unwrap_err().entry_refused());
        for i in [0, 2, 3] {
            assert!(results[i].is_ok(), "entry {i}: {:?}", results[i]);
        }
        assert_eq!(told.load(Ordering::Relaxed), 1);
        drop(log);
        assert_eq!(verify(&path, &issuer).replies_rejected, 3);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (sink, _) = sink_at(
            &path,
            SinkOptions {
                queue: 1,
                batch: 1,
                on_error: None,
            },
        );
        // Hold the log so the writer thread cannot take anything off the queue.
        let guard = lock(&sink.target.log);
        let mut queued = 0;
        for _ in 0..10 {
            if sink.record_later(Entry::reply_rejected(b"x", "forged", None)) {
                queued += 1;
            }
        }
        drop(guard);
        assert!(queued <= 2, "{queued}");
        assert_eq!(sink.dropped(), 10 - queued);
        sink.flush().unwrap();
    }

    #[test]
    fn callbacks_are_told_once_their_batch_is_synced_and_a_full_queue_gives_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (sink, issuer) = sink_at(
            &path,
            SinkOptions {
                queue: 2,
                batch: 1,
                on_error: None,
            },
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let guard = lock(&sink.target.log);
        let mut given_back = 0;
        for i in 0..5 {
            let tx = tx.clone();
            let done: Done = Box::new(move |r| tx.send((i, r.is_ok())).unwrap());
            match sink.try_record_then(Entry::reply_rejected(b"x", "forged", None), done) {
                Ok(()) => {}
                Err(full) => {
                    let done = full.done;
                    given_back += 1;
                    // Handed back uncalled: the caller may still use it.
                    done(Ok(()));
                }
            }
        }
        // The writer may hold one job while it waits for the log: 2 or 3 fit.
        assert!((2..=3).contains(&given_back), "{given_back}");
        let queued = 5 - given_back;
        let tx2 = tx.clone();
        let flushed: Done = Box::new(move |r| tx2.send((99, r.is_ok())).unwrap());
        drop(guard);
        let mut flush = Some(flushed);
        while let Some(f) = flush.take() {
            if let Err(full) = sink.try_flush_then(f) {
                let f = full.done;
                std::thread::sleep(std::time::Duration::from_millis(1));
                flush = Some(f);
            }
        }
        drop(tx);
        let told: Vec<(i32, bool)> = rx.iter().collect();
        assert_eq!(told.len(), 6, "{told:?}");
        assert!(told.iter().all(|(_, ok)| *ok));
        assert_eq!(told.last().unwrap().0, 99, "the flush is told last");
        assert_eq!(verify(&path, &issuer).replies_rejected, queued as u64);
    }
}
