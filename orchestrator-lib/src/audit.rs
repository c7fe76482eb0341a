//! The orchestrator's audit log: every request it signed and every reply it received,
//! accepted or rejected, in a signed hash chain (`gearmq_schemas::audit`).
//!
//! A request is recorded durably before it is published. Replies are recorded by the
//! shared writer thread ([`gearmq_schemas::audit::AuditSink`]) in batches (one lock
//! and one fsync per batch), so a flood of replies does not serialise the reply
//! consumer on the disk. This wraps the blocking sink for async callers.

use gearmq_schemas::SigningKey;
use gearmq_schemas::audit::{self, AuditError, AuditOptions, Entry, SinkError, SinkOptions};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counts records that could not be written (the writer failed on them), for the call
/// they belong to.
pub type MissingCount = Arc<AtomicU64>;

fn count_failure(missing: Option<MissingCount>) -> audit::Done {
    Box::new(move |r| {
        if let (Err(e), Some(m)) = (r, &missing) {
            m.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "audit record not written");
        }
    })
}

/// A handle on the audit log, shared by the calls and the reply consumer.
#[derive(Clone)]
pub struct AuditSink {
    sink: Arc<audit::AuditSink>,
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
        let sink = SinkOptions {
            on_error: Some(Arc::new(
                |e| tracing::error!(error = %e, "audit log: cannot write"),
            )),
            ..SinkOptions::default()
        };
        Ok(AuditSink {
            sink: Arc::new(audit::AuditSink::open(
                path, key, credential, options, sink,
            )?),
        })
    }

    /// Records `entry` durably before returning (for requests, before publishing).
    /// The record joins the writer thread's next batch, so calls made at the same time
    /// share one fsync; no thread waits for it.
    pub async fn record_now(&self, entry: Entry) -> Result<(), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done: audit::Done = Box::new(move |r| {
            let _ = tx.send(r);
        });
        match self.sink.try_record_then(entry, done) {
            Ok(()) => rx
                .await
                .unwrap_or(Err(SinkError::Stopped))
                .map_err(|e| e.to_string()),
            // The queue is full of reply records: wait for room on a blocking thread.
            Err(full) => {
                let Some(entry) = full.entry else {
                    return Err("the audit log queue is full".into());
                };
                let sink = self.sink.clone();
                tokio::task::spawn_blocking(move || sink.record_durable(entry))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Queues `entry` for the writer thread, waiting for room if the queue is full: for
    /// accepted replies, which must not lose their record. The wait holds the reply
    /// consumer back, and with it the broker's deliveries (bounded by the prefetch).
    /// A record the writer then fails on is counted in `missing`.
    pub async fn record_waiting(&self, entry: Entry, missing: Option<MissingCount>) {
        if let Err(full) = self
            .sink
            .try_record_then(entry, count_failure(missing.clone()))
        {
            let Some(entry) = full.entry else { return };
            let sink = self.sink.clone();
            let written = tokio::task::spawn_blocking(move || sink.record_durable(entry)).await;
            if !matches!(written, Ok(Ok(()))) {
                if let Some(m) = missing {
                    m.fetch_add(1, Ordering::Relaxed);
                }
                tracing::error!("audit record not written: the writer is gone");
            }
        }
    }

    /// Queues `entry` for the writer thread if there is room; `false` (nothing queued)
    /// if the queue is full, so the caller counts it in a summary instead. A record the
    /// writer then fails on is counted in `missing`.
    pub fn try_record(&self, entry: Entry, missing: Option<MissingCount>) -> bool {
        self.sink
            .try_record_then(entry, count_failure(missing))
            .is_ok()
    }

    /// Queues `entry` for the writer thread. If the queue is full (a flood of replies
    /// faster than the disk) the record is dropped and counted, never blocking the
    /// consumer.
    pub fn record_later(&self, entry: Entry) {
        if !self.sink.record_later(entry) {
            let n = self.sink.dropped();
            if n.is_power_of_two() {
                tracing::error!(dropped = n, "audit log queue full: records dropped");
            }
        }
    }

    /// Waits until every queued record is written and synced.
    pub async fn flush(&self) -> Result<(), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut done: audit::Done = Box::new(move |r| {
            let _ = tx.send(r);
        });
        // A full queue (a reply flood) drains at disk speed: retry until there is room.
        loop {
            match self.sink.try_flush_then(done) {
                Ok(()) => break,
                Err(full) => {
                    done = full.done;
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
        }
        rx.await
            .unwrap_or(Err(SinkError::Stopped))
            .map_err(|e| e.to_string())
    }

    /// Records dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.sink.dropped()
    }
}
