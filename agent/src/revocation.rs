//! Revoked credentials: the hook where issuer-signed revocation lists will be checked.
//!
//! NOT DONE YET. Revocation lists (loading from a file, SIGHUP reload, push by signed
//! request, never going back to an older sequence) come in a later issue. Until then
//! no list is loaded and [`Revocations::check`] refuses nothing. The verifier already
//! calls it at the place DESIGN.md gives it (after the target check, before the time
//! windows), so adding lists changes this file only.

use gearmq_schemas::Credential;

/// The revocation state the agent checks signer credentials against.
#[derive(Debug, Default)]
pub struct Revocations {
    // No list is loaded: revocation lists arrive in a later issue.
    _no_list_yet: (),
}

/// A credential is on a loaded revocation list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("credential serial {serial} of {name} is revoked")]
pub struct Revoked {
    /// The revoked serial.
    pub serial: u64,
    /// Its holder.
    pub name: String,
}

impl Revocations {
    /// No revocation list: nothing is revoked (see the module docs).
    pub fn none() -> Self {
        Revocations::default()
    }

    /// Whether a revocation list is loaded (never, for now).
    pub fn has_list(&self) -> bool {
        false
    }

    /// Refuses `credential` if a loaded list revokes its serial. With no list loaded,
    /// nothing is refused.
    pub fn check(&self, credential: &Credential) -> Result<(), Revoked> {
        let _ = credential;
        Ok(())
    }
}
