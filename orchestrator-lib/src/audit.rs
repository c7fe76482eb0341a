//! The orchestrator's audit log: every request it signed and every reply it received,
//! accepted or rejected, in a signed hash chain (`gearmq_schemas::audit`).
//!
//! A request is recorded durably before it is published. Replies are recorded by a
//! writer thread in batches (one lock and one fsync per batch), so a flood of replies
//! does not serialise the reply consumer on the disk.

use gearmq_schemas::SigningKey;
use gearmq_schemas::audit::{AuditError, AuditLog, AuditOptions, Entry};
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

/// How many reply records may wait for the writer thread.
const QUEUE: usize = 65_536;
/// Most records written in one batch.
const BATCH: usize = 1024;

enum Job {
    Record(Entry),
    Flush(tokio::sync::oneshot::Sender<Result<(), String>>),
}

/// A handle on the audit log, shared by the calls and the reply consumer.
pub struct AuditSink {
    log: Arc<Mutex<AuditLog>>,
    tx: SyncSender<Job>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

fn lock(m: &Mutex<AuditLog>) -> std::sync::MutexGuard<'_, AuditLog> {
    // The log's own state is consistent between calls (it re-reads the tail under its
    // file lock), so a poisoned mutex is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AuditSink {
    /// Opens (or starts) the log at `path`, written with `key` and `credential`.
    pub fn open(
        path: &Path,
        key: SigningKey,
        credential: &[u8],
        max_bytes: u64,
    ) -> Result<AuditSink, AuditError> {
        let options = AuditOptions {
            max_bytes,
            on_repair: Some(Arc::new(
                |r| tracing::warn!(repair = ?r, "audit log: a torn tail was cut off"),
            )),
            ..AuditOptions::default()
        };
        let log = Arc::new(Mutex::new(AuditLog::open(path, key, credential, options)?));
        let (tx, rx) = sync_channel(QUEUE);
        let writer = log.clone();
        std::thread::Builder::new()
            .name("gearmq-audit".into())
            .spawn(move || write_batches(writer, rx))
            .map_err(|e| AuditError::Io {
                action: "start the writer thread for",
                path: path.to_path_buf(),
                source: e,
            })?;
        Ok(AuditSink {
            log,
            tx,
            dropped: Arc::default(),
        })
    }

    /// Records `entry` durably before returning (for requests, before publishing).
    pub async fn record_now(&self, entry: Entry) -> Result<(), AuditError> {
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || lock(&log).append(entry).map(|_| ()))
            .await
            .unwrap_or_else(|e| {
                Err(AuditError::Io {
                    action: "append to",
                    path: Default::default(),
                    source: std::io::Error::other(e.to_string()),
                })
            })
    }

    /// Queues `entry` for the writer thread. If the queue is full (a flood of replies
    /// faster than the disk) the record is dropped and counted, never blocking the
    /// consumer.
    pub fn record_later(&self, entry: Entry) {
        match self.tx.try_send(Job::Record(entry)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let n = self
                    .dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n.is_power_of_two() {
                    tracing::error!(dropped = n + 1, "audit log queue full: records dropped");
                }
            }
        }
    }

    /// Waits until every queued record is written and synced.
    pub async fn flush(&self) -> Result<(), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx_job = self.tx.clone();
        tokio::task::spawn_blocking(move || tx_job.send(Job::Flush(tx)))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|_| "audit writer stopped".to_string())?;
        rx.await.map_err(|_| "audit writer stopped".to_string())?
    }

    /// Records dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn write_batches(log: Arc<Mutex<AuditLog>>, rx: Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut entries = Vec::new();
        let mut waiters = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Record(e) => entries.push(e),
                Job::Flush(w) => waiters.push(w),
            }
            if entries.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        let result = if entries.is_empty() {
            lock(&log).flush()
        } else {
            lock(&log).append_batch(entries).map(|_| ())
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "audit log: cannot write");
        }
        for w in waiters {
            let _ = w.send(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        }
    }
}
