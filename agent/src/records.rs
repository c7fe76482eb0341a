//! Intent and outcome records (docs/DESIGN.md, Request lifecycle step 3).
//!
//! Before an action changes anything it writes an intent record — request id, digest,
//! action, unit, the state it wants and the state it found — and after it has acted
//! the handler writes the outcome. Both are atomic files in `state_dir/requests/`.
//! When a request comes back after a crash (the broker redelivers what was not acked),
//! an outcome means "done: answer this"; an intent alone means "maybe done": the
//! action compares the recorded before-state with systemd's real state and does only
//! what is left, so an effect is not applied twice.
//!
//! Records are needed only while their request can still be redelivered and pass the
//! window checks, so files older than the longest request lifetime plus twice the
//! clock skew are pruned.

use crate::dispatch::Outcome;
use crate::identity::io_reason;
use crate::unit_files::{UnitFileError, write_atomic};
use gearmq_schemas::Status;
use gearmq_schemas::codec;
use gearmq_schemas::time::Millis;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use uuid::Uuid;

/// Largest record read back.
const MAX_RECORD_BYTES: usize = 1024 * 1024;

/// The state an action wants a unit in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    /// Running (start, install with start).
    Active,
    /// Running again, with a new main process (restart).
    Restarted,
    /// Not running (stop).
    Inactive,
    /// Gone (delete).
    Absent,
    /// Installed as given, running or not as it was (install without start).
    Installed,
    /// A log stream (logs --follow): nothing changes.
    Streaming,
}

/// What an action found before acting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Before {
    /// Whether the unit file existed.
    pub file_present: bool,
    /// SHA-256 of the unit file text, when present.
    pub file_digest: Option<serde_bytes::ByteArray<32>>,
    /// Whether the unit was active.
    pub active: bool,
    /// Its MainPID (0: none).
    pub main_pid: u32,
    /// Its ActiveEnterTimestamp (µs).
    pub active_enter_us: u64,
}

/// Written before acting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// The request.
    pub request_id: Uuid,
    /// Its body digest: a record is only used for the very same request bytes.
    pub digest: serde_bytes::ByteArray<32>,
    /// The action name.
    pub action: String,
    /// The unit acted on.
    pub unit: String,
    /// What the action wants.
    pub desired: Desired,
    /// What it found.
    pub before: Before,
    /// When the intent was written (ms since epoch).
    pub at: Millis,
}

/// Written after acting: the reply's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    /// The request.
    pub request_id: Uuid,
    /// Its body digest.
    pub digest: serde_bytes::ByteArray<32>,
    /// The reply status code.
    pub status: u8,
    /// The encoded result.
    pub data: Option<serde_bytes::ByteBuf>,
    /// The error message.
    pub error: Option<String>,
    /// When it was written (ms since epoch).
    pub at: Millis,
}

/// What the records say about a request that arrives (again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Previous {
    /// Nothing recorded: a new request.
    None,
    /// Acted on before, maybe completely: resolve against the real state.
    Intent(Intent),
    /// Finished before: answer with this.
    Outcome(Outcome),
}

/// Why a record could not be written.
#[derive(Debug, thiserror::Error)]
#[error("request record: {0}")]
pub struct RecordError(#[from] UnitFileError);

/// The records directory.
#[derive(Debug, Clone)]
pub struct Records {
    dir: PathBuf,
    keep: Duration,
}

impl Records {
    /// Records in `state_dir/requests`, kept for `keep` (the longest request lifetime
    /// plus twice the clock skew).
    pub fn new(state_dir: &Path, keep: Duration) -> Self {
        Records {
            dir: state_dir.join("requests"),
            keep,
        }
    }

    fn path(&self, id: Uuid, ext: &str) -> PathBuf {
        self.dir.join(format!("{}.{ext}", id.hyphenated()))
    }

    fn write<T: Serialize>(&self, id: Uuid, ext: &str, value: &T) -> Result<(), RecordError> {
        fs::create_dir_all(&self.dir).map_err(|e| UnitFileError::Io {
            op: "create directory",
            path: self.dir.clone(),
            reason: io_reason(&e),
        })?;
        write_atomic(&self.path(id, ext), &codec::encode(value), 0o600)?;
        Ok(())
    }

    /// Records the intent (fsync'd before returning).
    pub fn write_intent(&self, intent: &Intent) -> Result<(), RecordError> {
        self.write(intent.request_id, "intent", intent)
    }

    /// Records the outcome of request `id` with `digest`.
    pub fn write_outcome(
        &self,
        id: Uuid,
        digest: &[u8; 32],
        outcome: &Outcome,
        now: Millis,
    ) -> Result<(), RecordError> {
        let record = OutcomeRecord {
            request_id: id,
            digest: serde_bytes::ByteArray::new(*digest),
            status: outcome.status.code(),
            data: outcome.data.clone().map(serde_bytes::ByteBuf::from),
            error: outcome.error.clone(),
            at: now,
        };
        self.write(id, "outcome", &record)
    }

    /// What is recorded for request `id` with `digest`. Records of other bytes under
    /// the same id are ignored (the replay store refuses those requests anyway).
    pub fn previous(&self, id: Uuid, digest: &[u8; 32]) -> Previous {
        if let Some(o) = self.read::<OutcomeRecord>(id, "outcome")
            && o.digest.into_array() == *digest
            && let Ok(status) = Status::try_from(o.status)
        {
            return Previous::Outcome(Outcome {
                status,
                data: o.data.map(|d| d.into_vec()),
                error: o.error,
            });
        }
        match self.read::<Intent>(id, "intent") {
            Some(i) if i.digest.into_array() == *digest => Previous::Intent(i),
            _ => Previous::None,
        }
    }

    fn read<T: Serialize + serde::de::DeserializeOwned>(&self, id: Uuid, ext: &str) -> Option<T> {
        let bytes = fs::read(self.path(id, ext)).ok()?;
        codec::decode("record", &bytes, MAX_RECORD_BYTES).ok()
    }

    /// Removes records older than the keep time; returns how many.
    pub fn prune(&self, now: SystemTime) -> usize {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > self.keep);
            if old && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(id: Uuid, digest: [u8; 32]) -> Intent {
        Intent {
            request_id: id,
            digest: serde_bytes::ByteArray::new(digest),
            action: "start".into(),
            unit: "web".into(),
            desired: Desired::Active,
            before: Before::default(),
            at: 1,
        }
    }

    #[test]
    fn intent_then_outcome_for_the_same_bytes_only() {
        let d = tempfile::tempdir().unwrap();
        let r = Records::new(d.path(), Duration::from_secs(3600));
        let id = Uuid::now_v7();
        assert_eq!(r.previous(id, &[1; 32]), Previous::None);
        r.write_intent(&intent(id, [1; 32])).unwrap();
        assert_eq!(
            r.previous(id, &[1; 32]),
            Previous::Intent(intent(id, [1; 32]))
        );
        assert_eq!(r.previous(id, &[2; 32]), Previous::None);
        let o = Outcome::ok(vec![0x80]);
        r.write_outcome(id, &[1; 32], &o, 5).unwrap();
        assert_eq!(r.previous(id, &[1; 32]), Previous::Outcome(o));
        assert_eq!(r.previous(id, &[2; 32]), Previous::None);
    }

    #[test]
    fn old_records_are_pruned() {
        let d = tempfile::tempdir().unwrap();
        let r = Records::new(d.path(), Duration::from_secs(60));
        let id = Uuid::now_v7();
        r.write_intent(&intent(id, [1; 32])).unwrap();
        assert_eq!(r.prune(SystemTime::now()), 0);
        assert_eq!(r.prune(SystemTime::now() + Duration::from_secs(61)), 1);
        assert_eq!(r.previous(id, &[1; 32]), Previous::None);
    }
}
