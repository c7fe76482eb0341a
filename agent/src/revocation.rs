//! Revoked credentials: the issuer-signed revocation list the verifier checks every
//! signer against (docs/DESIGN.md, Request lifecycle step 2, check 7: right after
//! "am I a target").
//!
//! A list comes from three places: `revocation_file` (read at start and on SIGHUP),
//! `state_dir/revocations.bin` (the last list pushed by a `revocation` request, kept
//! across restarts), and a `revocation` request itself. Only a list signed by a
//! trusted issuer with a higher sequence than the one held is ever taken, so an older
//! list — replayed, or a stale file — never undoes a revocation.

use gearmq_schemas::revocation::{self, RevocationError};
use gearmq_schemas::{Credential, PublicKey};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

/// The file in `state_dir` holding the last list taken from a `revocation` request.
pub const STATE_FILE: &str = "revocations.bin";

/// A credential is on the held revocation list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("credential serial {serial} of {name} is revoked (revocation list {sequence})")]
pub struct Revoked {
    /// The revoked credential's serial.
    pub serial: u64,
    /// Its holder.
    pub name: String,
    /// The sequence of the list that revokes it.
    pub sequence: u64,
}

/// Why a list was not taken.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The file could not be read.
    #[error("cannot read revocation list {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not a list of a trusted issuer (or not a list at all).
    #[error("{0}")]
    Invalid(RevocationError),
}

/// What came of offering a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// It was newer and is now held.
    Taken {
        /// Its sequence.
        sequence: u64,
    },
    /// It was not newer than the list held (equal or older): ignored.
    NotNewer {
        /// Its sequence.
        offered: u64,
        /// The sequence held.
        held: u64,
    },
}

/// A pushed list was taken but could not be written to the state dir.
#[derive(Debug, thiserror::Error)]
#[error(
    "revocation list {sequence} is in force but was not saved to {path} ({source}); it is lost at restart unless revocation_file holds it"
)]
pub struct NotPersisted {
    /// The sequence taken.
    pub sequence: u64,
    /// The state file.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// What [`Revocations::load`] found at start.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadReport {
    /// The sequence in `revocation_file`, if it was read.
    pub file: Option<u64>,
    /// The sequence in the state dir's copy, if there was one.
    pub state: Option<u64>,
    /// Lists that could not be used, with why (logged as warnings).
    pub ignored: Vec<String>,
}

/// The revocation list the agent holds, shared by the verifier (reads on every
/// request) and the updaters (SIGHUP, `revocation` requests).
#[derive(Debug)]
pub struct Revocations {
    held: RwLock<revocation::Revocations>,
    trusted: Vec<PublicKey>,
    file: Option<PathBuf>,
    state_copy: Option<PathBuf>,
    // Serialises updates, so that a newer list persisted is never overwritten by an
    // older one taken at the same moment.
    updating: Mutex<()>,
}

impl Revocations {
    /// Nothing revoked, no files (for tests and tools).
    pub fn none() -> Self {
        Revocations {
            held: RwLock::new(revocation::Revocations::new()),
            trusted: Vec::new(),
            file: None,
            state_copy: None,
            updating: Mutex::new(()),
        }
    }

    /// Loads the newest of `file` and `state_dir/revocations.bin`, each verified
    /// against `trusted`. A configured `file` that cannot be read or does not verify is
    /// an error (the agent does not start without the revocations it was told to
    /// hold); a bad state copy is reported and ignored.
    pub fn load(
        file: Option<&Path>,
        state_dir: &Path,
        trusted: &[PublicKey],
    ) -> Result<(Self, LoadReport), UpdateError> {
        let r = Revocations {
            held: RwLock::new(revocation::Revocations::new()),
            trusted: trusted.to_vec(),
            file: file.map(Path::to_path_buf),
            state_copy: Some(state_dir.join(STATE_FILE)),
            updating: Mutex::new(()),
        };
        let mut report = LoadReport::default();
        if let Some(f) = file {
            let bytes = read(f)?;
            report.file = Some(r.take(&bytes)?.sequence());
        }
        let state = state_dir.join(STATE_FILE);
        match std::fs::read(&state) {
            Ok(bytes) => match r.take(&bytes) {
                Ok(u) => report.state = Some(u.sequence()),
                Err(e) => report.ignored.push(format!("{}: {e}", state.display())),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => report.ignored.push(format!(
                "cannot read {}: {}",
                state.display(),
                crate::identity::io_reason(&e)
            )),
        }
        Ok((r, report))
    }

    /// Whether a list is held (else nothing is revoked).
    pub fn has_list(&self) -> bool {
        self.sequence().is_some()
    }

    /// The sequence of the list held.
    pub fn sequence(&self) -> Option<u64> {
        self.read().sequence()
    }

    /// The configured `revocation_file`.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Refuses `credential` if the held list revokes it (by serial, or by name as of
    /// a time before the credential became valid).
    pub fn check(&self, credential: &Credential) -> Result<(), Revoked> {
        let held = self.read();
        if held.revokes(credential) {
            return Err(Revoked {
                serial: credential.serial,
                name: credential.name.to_string(),
                sequence: held.sequence().unwrap_or(0),
            });
        }
        Ok(())
    }

    /// Reads `revocation_file` again (SIGHUP) and takes it if newer. `None` when no
    /// file is configured.
    pub fn reload_file(&self) -> Option<Result<Update, UpdateError>> {
        let f = self.file.as_ref()?;
        Some(read(f).and_then(|bytes| self.take(&bytes)))
    }

    /// Takes a list pushed by a `revocation` request if newer, and saves it to the
    /// state dir (atomically) so it survives a restart. Blocks on file I/O.
    pub fn push(&self, bytes: &[u8]) -> Result<Update, PushError> {
        let _updating = self.updating.lock().unwrap_or_else(|p| p.into_inner());
        let update = self.offer(bytes).map_err(PushError::Invalid)?;
        if let (Update::Taken { sequence }, Some(path)) = (update, &self.state_copy) {
            // In force already; a failed save is reported but does not undo it.
            write_atomically(path, bytes).map_err(|source| {
                PushError::NotPersisted(NotPersisted {
                    sequence,
                    path: path.clone(),
                    source,
                })
            })?;
        }
        Ok(update)
    }

    /// Verifies `bytes` and takes the list if it is newer than the one held.
    fn take(&self, bytes: &[u8]) -> Result<Update, UpdateError> {
        let _updating = self.updating.lock().unwrap_or_else(|p| p.into_inner());
        self.offer(bytes).map_err(UpdateError::Invalid)
    }

    /// Verifies `bytes` against the trusted issuers and replaces the held list with it
    /// if it is newer. The caller holds `updating`.
    fn offer(&self, bytes: &[u8]) -> Result<Update, RevocationError> {
        // Verified on a copy, so readers never wait on a signature check.
        let mut next = self.read().clone();
        match next.update(bytes, &self.trusted) {
            Ok(sequence) => {
                *self.held.write().unwrap_or_else(|p| p.into_inner()) = next;
                Ok(Update::Taken { sequence })
            }
            Err(RevocationError::Stale { got, held }) => {
                Ok(Update::NotNewer { offered: got, held })
            }
            Err(e) => Err(e),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, revocation::Revocations> {
        // The holder is replaced whole, never left half-updated: a poisoned lock still
        // holds a consistent list.
        self.held.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a pushed list was refused or not saved.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Not a list of a trusted issuer.
    #[error("{0}")]
    Invalid(RevocationError),
    /// Taken, but not saved.
    #[error("{0}")]
    NotPersisted(NotPersisted),
}

impl Update {
    /// The sequence held after the update.
    pub fn sequence(self) -> u64 {
        match self {
            Update::Taken { sequence } => sequence,
            Update::NotNewer { held, .. } => held,
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, UpdateError> {
    std::fs::read(path).map_err(|source| UpdateError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename, then fsyncs
/// the directory: a crash leaves the old list or the new one.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(path.file_name().unwrap_or_default());
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gearmq_schemas::revocation::RevocationList;
    use gearmq_schemas::{Name, Role, SigningKey};

    fn cred(serial: u64) -> Credential {
        Credential::new(
            serial,
            Name::new("ops").unwrap(),
            Role::Operator,
            SigningKey::from_seed(&[9; 32]).public_key(),
            0,
            10,
        )
    }

    #[test]
    fn newest_of_file_and_state_copy_is_taken_and_only_newer_lists_after() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = SigningKey::from_seed(&[1; 32]);
        let trusted = [issuer.public_key()];
        let l1 = RevocationList::empty(0).with(&[1], &[], 1);
        let l2 = l1.with(&[2], &[], 2);
        let l3 = l2.with(&[3], &[], 3);
        let file = dir.path().join("list.bin");
        std::fs::write(&file, l1.issue(&issuer)).unwrap();
        std::fs::write(dir.path().join(STATE_FILE), l2.issue(&issuer)).unwrap();
        let (r, report) = Revocations::load(Some(&file), dir.path(), &trusted).unwrap();
        assert_eq!((report.file, report.state), (Some(1), Some(2)));
        assert_eq!(r.sequence(), Some(2));
        let e = r.check(&cred(2)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "credential serial 2 of ops is revoked (revocation list 2)"
        );
        assert!(r.check(&cred(3)).is_ok());

        // An older file on SIGHUP is ignored; a newer one is taken.
        assert_eq!(
            r.reload_file().unwrap().unwrap(),
            Update::NotNewer {
                offered: 1,
                held: 2
            }
        );
        std::fs::write(&file, l3.issue(&issuer)).unwrap();
        assert_eq!(
            r.reload_file().unwrap().unwrap(),
            Update::Taken { sequence: 3 }
        );
        assert!(r.check(&cred(3)).is_err());

        // Pushed: older ignored, newer taken and saved.
        assert!(matches!(
            r.push(&l2.issue(&issuer)).unwrap(),
            Update::NotNewer { held: 3, .. }
        ));
        let l4 = l3.with(&[4], &[], 4).issue(&issuer);
        assert_eq!(r.push(&l4).unwrap(), Update::Taken { sequence: 4 });
        assert_eq!(std::fs::read(dir.path().join(STATE_FILE)).unwrap(), l4);
        // Another issuer's list, or a damaged one, is refused.
        let other = SigningKey::from_seed(&[2; 32]);
        assert!(matches!(
            r.push(&l3.with(&[5], &[], 5).issue(&other)),
            Err(PushError::Invalid(_))
        ));
        assert_eq!(r.sequence(), Some(4));
    }

    #[test]
    fn a_bad_configured_file_is_an_error_and_a_bad_state_copy_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = SigningKey::from_seed(&[1; 32]);
        let trusted = [issuer.public_key()];
        let file = dir.path().join("list.bin");
        std::fs::write(&file, b"junk").unwrap();
        assert!(Revocations::load(Some(&file), dir.path(), &trusted).is_err());
        assert!(
            Revocations::load(Some(&dir.path().join("missing")), dir.path(), &trusted).is_err()
        );
        std::fs::write(dir.path().join(STATE_FILE), b"junk").unwrap();
        let (r, report) = Revocations::load(None, dir.path(), &trusted).unwrap();
        assert!(!r.has_list());
        assert_eq!(report.ignored.len(), 1);
    }
}
