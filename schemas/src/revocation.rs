//! Revocation lists: issuer-signed lists of credentials that must no longer be trusted.
//!
//! A list names serials, and names revoked as of a time (every credential of that name
//! that became valid before then, so a re-enrolled holder is trusted again). Lists carry
//! a rising sequence number: a newer list replaces an older one, never the reverse.

use crate::codec::DecodeError;
use crate::credential::Credential;
use crate::envelope::{Body, Context, IssuerSigned, IssuerSignedError};
use crate::keys::{PublicKey, SigningKey};
use crate::names::Name;
use crate::time::Millis;
use serde::{Deserialize, Serialize};

/// Largest revocation list accepted, in bytes.
pub const MAX_REVOCATION_BYTES: usize = 1024 * 1024;

/// The body of a revocation list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationList {
    /// Always `"revocation"`.
    pub kind: String,
    /// Protocol version.
    pub version: u16,
    /// Rises by one with every list; a receiver keeps the highest it has seen.
    pub sequence: u64,
    /// When it was signed (ms since epoch).
    pub issued_at: Millis,
    /// Revoked credential serials, ascending.
    pub serials: Vec<u64>,
    /// Revoked names, strictly ascending by name (each at most once): every credential
    /// of the name valid from before `before`.
    pub names: Vec<RevokedName>,
}

/// A name revoked as of a time.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedName {
    /// The name.
    pub name: Name,
    /// Credentials of this name with `not_before` earlier than this are revoked.
    pub before: Millis,
}

impl Body for RevocationList {
    const CONTEXT: Context = Context::Revocation;
    fn kind(&self) -> &str {
        &self.kind
    }
    fn version(&self) -> u16 {
        self.version
    }
    fn validate(&self) -> Result<(), String> {
        if !self.serials.windows(2).all(|w| w[0] < w[1]) {
            return Err("serials are not strictly ascending".into());
        }
        // By name alone: one `before` per name, so no list says two things of a name.
        if !self.names.windows(2).all(|w| w[0].name < w[1].name) {
            return Err("names are not strictly ascending (each name at most once)".into());
        }
        Ok(())
    }
}

/// Why a revocation list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevocationError {
    /// Its `IssuerSigned` envelope did not decode.
    #[error("revocation list: {0}")]
    Envelope(DecodeError),
    /// Its body did not decode (checked after the issuer signature).
    #[error("revocation list: {0}")]
    Body(DecodeError),
    /// Not signed by a trusted issuer.
    #[error("revocation list signed by {issuer}, which is not a trusted issuer")]
    UntrustedIssuer {
        /// The key found.
        issuer: PublicKey,
    },
    /// The signature does not match.
    #[error("revocation list signature invalid")]
    BadSignature,
    /// Older than (or as old as) the list already held.
    #[error("revocation list {got} is not newer than the list held ({held})")]
    Stale {
        /// Its sequence.
        got: u64,
        /// The held list's sequence.
        held: u64,
    },
}

impl RevocationError {
    /// The protocol's refusal label: `envelope/<decode label>`, `untrusted_issuer`,
    /// `signature`, `body/<decode label>` or `stale`.
    pub fn label(&self) -> String {
        match self {
            RevocationError::Envelope(d) => format!("envelope/{}", d.label()),
            RevocationError::Body(d) => format!("body/{}", d.label()),
            RevocationError::UntrustedIssuer { .. } => "untrusted_issuer".into(),
            RevocationError::BadSignature => "signature".into(),
            RevocationError::Stale { .. } => "stale".into(),
        }
    }
}

impl RevocationList {
    /// An empty list with sequence 0.
    pub fn empty(issued_at: Millis) -> Self {
        RevocationList {
            kind: Context::Revocation.kind().to_string(),
            version: crate::VERSION,
            sequence: 0,
            issued_at,
            serials: Vec::new(),
            names: Vec::new(),
        }
    }

    /// The next list: this one plus `serials` and `names`, sequence + 1.
    pub fn with(&self, serials: &[u64], names: &[RevokedName], issued_at: Millis) -> Self {
        let mut next = self.clone();
        next.sequence = self.sequence.saturating_add(1);
        next.issued_at = issued_at;
        next.serials.extend_from_slice(serials);
        next.serials.sort_unstable();
        next.serials.dedup();
        for n in names {
            // A later revocation of the same name supersedes the earlier one.
            next.names.retain(|x| x.name != n.name);
            next.names.push(n.clone());
        }
        next.names.sort();
        next
    }

    /// Whether `cred` is revoked by this list.
    pub fn revokes(&self, cred: &Credential) -> bool {
        self.serials.binary_search(&cred.serial).is_ok()
            || self
                .names
                .iter()
                .any(|n| n.name == cred.name && cred.not_before < n.before)
    }

    /// Signs the list with the issuer key: the bytes of a revocation file.
    pub fn issue(&self, issuer: &SigningKey) -> Vec<u8> {
        IssuerSigned::seal(self, issuer)
    }
}

/// Decodes a revocation list and checks it is signed by one of `trusted`.
pub fn verify_revocation(
    bytes: &[u8],
    trusted: &[PublicKey],
) -> Result<RevocationList, RevocationError> {
    IssuerSigned::open::<RevocationList>(bytes, MAX_REVOCATION_BYTES, trusted).map_err(
        |e| match e {
            IssuerSignedError::Envelope(d) => RevocationError::Envelope(d),
            IssuerSignedError::Body(d) => RevocationError::Body(d),
            IssuerSignedError::UntrustedIssuer(issuer) => {
                RevocationError::UntrustedIssuer { issuer }
            }
            IssuerSignedError::BadSignature => RevocationError::BadSignature,
        },
    )
}

/// The newest verified list a receiver holds. Replacing it with an older or equal
/// sequence is refused.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    list: Option<RevocationList>,
}

impl Revocations {
    /// Holds nothing (nothing is revoked).
    pub fn new() -> Self {
        Revocations::default()
    }

    /// Verifies `bytes` and takes the list if it is newer than the one held.
    pub fn update(&mut self, bytes: &[u8], trusted: &[PublicKey]) -> Result<u64, RevocationError> {
        let list = verify_revocation(bytes, trusted)?;
        if let Some(held) = self.list.as_ref().filter(|h| list.sequence <= h.sequence) {
            return Err(RevocationError::Stale {
                got: list.sequence,
                held: held.sequence,
            });
        }
        let seq = list.sequence;
        self.list = Some(list);
        Ok(seq)
    }

    /// The sequence held, if any.
    pub fn sequence(&self) -> Option<u64> {
        self.list.as_ref().map(|l| l.sequence)
    }

    /// Whether `cred` is revoked.
    pub fn revokes(&self, cred: &Credential) -> bool {
        self.list.as_ref().is_some_and(|l| l.revokes(cred))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;

    fn cred(serial: u64, name: &str, not_before: Millis) -> Credential {
        Credential::new(
            serial,
            Name::new(name).unwrap(),
            Role::Operator,
            SigningKey::from_seed(&[5; 32]).public_key(),
            not_before,
            not_before + 1000,
        )
    }

    #[test]
    fn serials_and_names_revoke_and_reenrolment_is_trusted_again() {
        let l = RevocationList::empty(0).with(
            &[7, 3],
            &[RevokedName {
                name: Name::new("mallory").unwrap(),
                before: 500,
            }],
            10,
        );
        assert_eq!(l.sequence, 1);
        assert_eq!(l.serials, [3, 7]);
        assert!(l.revokes(&cred(7, "alice", 0)));
        assert!(!l.revokes(&cred(8, "alice", 0)));
        assert!(l.revokes(&cred(9, "mallory", 100)));
        assert!(!l.revokes(&cred(10, "mallory", 600)), "re-enrolled after");
    }

    #[test]
    fn only_newer_trusted_lists_replace_the_held_one() {
        let issuer = SigningKey::from_seed(&[1; 32]);
        let other = SigningKey::from_seed(&[2; 32]);
        let trusted = [issuer.public_key()];
        let l1 = RevocationList::empty(0).with(&[1], &[], 1);
        let l2 = l1.with(&[2], &[], 2);
        let mut r = Revocations::new();
        assert_eq!(r.update(&l2.issue(&issuer), &trusted), Ok(2));
        assert!(matches!(
            r.update(&l1.issue(&issuer), &trusted),
            Err(RevocationError::Stale { got: 1, held: 2 })
        ));
        assert!(matches!(
            r.update(&l2.with(&[3], &[], 3).issue(&other), &trusted),
            Err(RevocationError::UntrustedIssuer { .. })
        ));
        assert!(r.revokes(&cred(2, "a", 0)));
        let mut bytes = l2.with(&[3], &[], 3).issue(&issuer);
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        assert!(r.update(&bytes, &trusted).is_err());
    }
}
