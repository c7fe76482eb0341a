//! One owner per state dir: a running agent, or one `gearmq local` command, holds an
//! exclusive `flock` on `STATE/agent.lock` (with its pid inside, for the message) so
//! that two never write the same replay store, records and audit log at once.

use crate::identity::io_reason;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The lock file's name inside the state dir.
pub const LOCK_FILE: &str = "agent.lock";

/// Why a state dir could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum StateLockError {
    /// Another process holds it.
    #[error(
        "{dir} is in use by another gearmq process{}: stop it, or use another state dir",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Held {
        /// The state dir.
        dir: PathBuf,
        /// The holder's pid, as it wrote it.
        pid: Option<u32>,
    },
    /// The lock file could not be used.
    #[error("cannot lock {path}: {reason}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The system's reason.
        reason: String,
    },
}

/// The held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateLock {
    /// Takes `dir`'s lock without waiting (the dir must exist).
    pub fn acquire(dir: &Path) -> Result<StateLock, StateLockError> {
        let path = dir.join(LOCK_FILE);
        let io = |e: std::io::Error| StateLockError::Io {
            path: path.clone(),
            reason: io_reason(&e),
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(StateLockError::Held {
                    dir: dir.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err(e) => return Err(io(e.into())),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(StateLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_owner_is_refused_naming_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let held = StateLock::acquire(dir.path()).unwrap();
        // flock locks are per open file description: a second open in this process
        // conflicts like another process would.
        let e = StateLock::acquire(dir.path()).unwrap_err();
        assert!(
            matches!(&e, StateLockError::Held { pid: Some(p), .. } if *p == std::process::id()),
            "{e}"
        );
        assert!(
            e.to_string().contains("in use by another gearmq process"),
            "{e}"
        );
        drop(held);
        assert!(StateLock::acquire(dir.path()).is_ok());
    }
}
