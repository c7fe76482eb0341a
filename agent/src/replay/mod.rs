//! The replay store and result store, one structure persisted in `state_dir`.
//!
//! Every request executed after its signer was authorized is recorded under its caller
//! and id with the request digest, the reply queue and the signed reply bytes, until the
//! request's `expires_at + skew`. A request with a known (caller, id) is then either a
//! byte-identical redelivery (same digest: the stored reply is sent again) or a replay
//! (other digest: refused). Records are written before the reply is published, so a
//! crash between publish and ack still finds the reply on redelivery.
//!
//! Only authorized requests reserve anything here: a signer without the right to the
//! action is refused before the store is asked, so it can neither fill the store nor
//! reserve ids; and entries are keyed by caller, so one signer cannot squat another
//! signer's request id.
//!
//! Delegation tokens spend their uses here too: each use is a journal record (token id,
//! uses spent, kept until the token's `not_after + skew`), written and fsync'd before
//! the delegated action runs, so a restart cannot give a token its uses back.
//!
//! On disk (`journal.rs`): `replay.journal`, a sequence of records, each a 4-byte
//! big-endian length then a MessagePack record. The first record is a header holding
//! the store's creation time: requests issued before it are refused, since a lost store
//! cannot tell which of them were answered. The journal is fsync'd after every append, loaded at
//! start with expired entries dropped, and rewritten compactly (temp file, fsync,
//! rename) at load and whenever it grows well past its live content.

mod journal;
mod state;
mod store;

pub use journal::JOURNAL_FILE;
pub use state::{RequestKey, StoredReply};
pub use store::{Begin, LoadReport, ReplayStore, Reservation, Seen, SpendError};

use crate::identity::io_reason;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

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

#[cfg(test)]
mod test_support {
    use super::{Begin, RequestKey, Reservation};
    use gearmq_schemas::time::Millis;
    use uuid::Uuid;

    pub const NOW: Millis = 1_000_000;

    pub fn id(n: u8) -> Uuid {
        Uuid::from_bytes([n; 16])
    }

    /// Request `n` of the operator `ops`.
    pub fn k(n: u8) -> RequestKey {
        RequestKey::new("ops", id(n))
    }

    pub fn fresh(b: Begin) -> Reservation {
        match b {
            Begin::Fresh(r) => r,
            other => panic!("expected Fresh, got {other:?}"),
        }
    }
}
