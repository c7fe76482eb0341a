//! Credentials: issuer-signed statements of who holds a key and what it may do.

use crate::codec::DecodeError;
use crate::envelope::{Body, Context, IssuerSigned, IssuerSignedError};
use crate::keys::{PublicKey, SigningKey};
use crate::names::{ActionName, Name, check_label_key, check_label_value};
use crate::time::Millis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Largest credential accepted, in bytes (envelope included).
pub const MAX_CREDENTIAL_BYTES: usize = 16 * 1024;

/// What a credential's holder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A host running `gearmq-agent`: signs replies.
    Host,
    /// An operator or orchestrator: signs requests.
    Operator,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Host => "host",
            Role::Operator => "operator",
        })
    }
}

/// The body of a credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// Always `"credential"`.
    pub kind: String,
    /// Protocol version.
    pub version: u16,
    /// Issuer-chosen serial, unique per issuer; revocation lists name serials.
    pub serial: u64,
    /// The holder's name (host name or operator name).
    pub name: Name,
    /// Host or operator.
    pub role: Role,
    /// The holder's Ed25519 public key; never [weak](PublicKey::is_weak).
    pub public_key: PublicKey,
    /// Valid from (ms since epoch).
    pub not_before: Millis,
    /// Valid until (ms since epoch).
    pub not_after: Millis,
    /// Labels, matched by target selectors (hosts).
    pub labels: BTreeMap<String, String>,
    /// Actions the holder may request (operators); empty means none.
    pub actions: Vec<ActionName>,
    /// Whether the holder may mint delegation tokens.
    pub may_delegate: bool,
    /// X25519 public key tokens are sealed to (hosts).
    pub sealing_key: Option<serde_bytes::ByteArray<32>>,
}

impl Body for Credential {
    const CONTEXT: Context = Context::Credential;
    fn kind(&self) -> &str {
        &self.kind
    }
    fn version(&self) -> u16 {
        self.version
    }
    fn validate(&self) -> Result<(), String> {
        if self.not_after < self.not_before {
            return Err("not_after is before not_before".into());
        }
        if self.public_key.is_weak() {
            return Err(format!(
                "public_key {} is not a canonical encoding of a point of large order",
                self.public_key
            ));
        }
        if self.labels.len() > 64 {
            return Err("more than 64 labels".into());
        }
        for (k, v) in &self.labels {
            check_label_key(k).map_err(|e| e.to_string())?;
            check_label_value(v).map_err(|e| e.to_string())?;
        }
        if self.actions.len() > 64 {
            return Err("more than 64 actions".into());
        }
        Ok(())
    }
}

/// Why a credential was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// Its `IssuerSigned` envelope did not decode (or it is over
    /// [`MAX_CREDENTIAL_BYTES`]).
    #[error("{0}")]
    Envelope(DecodeError),
    /// Its body did not decode (checked after the issuer signature).
    #[error("{0}")]
    Body(DecodeError),
    /// It was signed by a key that is not a trusted issuer.
    #[error("issued by {issuer}, which is not a trusted issuer")]
    UntrustedIssuer {
        /// The issuer key found.
        issuer: PublicKey,
    },
    /// The issuer's signature does not match.
    #[error("issuer signature invalid")]
    BadSignature,
    /// Not valid yet at the time of the check.
    #[error("credential of {name} is not valid before {not_before} (now {now})")]
    NotYetValid {
        /// Holder.
        name: Name,
        /// Start of validity.
        not_before: Millis,
        /// Time of the check.
        now: Millis,
    },
    /// Expired at the time of the check.
    #[error("credential of {name} expired at {not_after} (now {now})")]
    Expired {
        /// Holder.
        name: Name,
        /// End of validity.
        not_after: Millis,
        /// Time of the check.
        now: Millis,
    },
}

impl CredentialError {
    /// The protocol's refusal label: `envelope/<decode label>`, `untrusted_issuer`,
    /// `signature`, `body/<decode label>`, `not_yet_valid` or `expired`.
    pub fn label(&self) -> String {
        match self {
            CredentialError::Envelope(d) => format!("envelope/{}", d.label()),
            CredentialError::Body(d) => format!("body/{}", d.label()),
            CredentialError::UntrustedIssuer { .. } => "untrusted_issuer".into(),
            CredentialError::BadSignature => "signature".into(),
            CredentialError::NotYetValid { .. } => "not_yet_valid".into(),
            CredentialError::Expired { .. } => "expired".into(),
        }
    }
}

impl Credential {
    /// A new credential body with protocol fields filled in.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        serial: u64,
        name: Name,
        role: Role,
        public_key: PublicKey,
        not_before: Millis,
        not_after: Millis,
    ) -> Self {
        Credential {
            kind: Context::Credential.kind().to_string(),
            version: crate::VERSION,
            serial,
            name,
            role,
            public_key,
            not_before,
            not_after,
            labels: BTreeMap::new(),
            actions: Vec::new(),
            may_delegate: false,
            sealing_key: None,
        }
    }

    /// Signs this credential with the issuer key: the bytes of a `.cred` file.
    pub fn issue(&self, issuer: &SigningKey) -> Vec<u8> {
        IssuerSigned::seal(self, issuer)
    }

    /// Checks the validity window at `now`, allowing `skew` ms either side.
    pub fn check_window(&self, now: Millis, skew: Millis) -> Result<(), CredentialError> {
        if now.saturating_add(skew) < self.not_before {
            return Err(CredentialError::NotYetValid {
                name: self.name.clone(),
                not_before: self.not_before,
                now,
            });
        }
        if now.saturating_sub(skew) > self.not_after {
            return Err(CredentialError::Expired {
                name: self.name.clone(),
                not_after: self.not_after,
                now,
            });
        }
        Ok(())
    }

    /// Whether the credential allows `action` (operators; hosts allow none).
    pub fn allows(&self, action: &ActionName) -> bool {
        self.role == Role::Operator && self.actions.iter().any(|a| a == action)
    }
}

/// Decodes a credential and checks its issuer signature against `trusted` keys.
///
/// The validity window is not checked here: whoever judges the credential knows the
/// time that counts (now for live messages, the record's time for audit logs).
pub fn verify_credential(
    bytes: &[u8],
    trusted: &[PublicKey],
) -> Result<Credential, CredentialError> {
    IssuerSigned::open::<Credential>(bytes, MAX_CREDENTIAL_BYTES, trusted).map_err(|e| match e {
        IssuerSignedError::Envelope(d) => CredentialError::Envelope(d),
        IssuerSignedError::UntrustedIssuer(issuer) => CredentialError::UntrustedIssuer { issuer },
        IssuerSignedError::BadSignature => CredentialError::BadSignature,
        IssuerSignedError::Body(d) => CredentialError::Body(d),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    fn sample(issuer: &SigningKey) -> (Credential, Vec<u8>) {
        let holder = SigningKey::from_seed(&[2; 32]);
        let mut c = Credential::new(
            1,
            Name::new("web1").unwrap(),
            Role::Host,
            holder.public_key(),
            1000,
            2000,
        );
        c.labels.insert("role".into(), "web".into());
        let bytes = c.issue(issuer);
        (c, bytes)
    }

    #[test]
    fn issued_credential_verifies_against_its_issuer_only() {
        let issuer = SigningKey::from_seed(&[1; 32]);
        let other = SigningKey::from_seed(&[9; 32]);
        let (c, bytes) = sample(&issuer);
        assert_eq!(
            verify_credential(&bytes, &[issuer.public_key()]).unwrap(),
            c
        );
        assert!(matches!(
            verify_credential(&bytes, &[other.public_key()]),
            Err(CredentialError::UntrustedIssuer { .. })
        ));
        // Rotation: either of two trusted issuers will do.
        assert!(verify_credential(&bytes, &[other.public_key(), issuer.public_key()]).is_ok());
    }

    #[test]
    fn altered_credential_is_refused() {
        let issuer = SigningKey::from_seed(&[1; 32]);
        let (_, bytes) = sample(&issuer);
        let mut env: IssuerSigned = codec::decode("e", &bytes, 10_000).unwrap();
        let i = env.body.len() - 3;
        env.body[i] ^= 1;
        let forged = codec::encode(&env);
        assert!(verify_credential(&forged, &[issuer.public_key()]).is_err());
    }

    #[test]
    fn window_is_checked_with_skew() {
        let issuer = SigningKey::from_seed(&[1; 32]);
        let (c, _) = sample(&issuer);
        assert!(c.check_window(1500, 0).is_ok());
        assert!(matches!(
            c.check_window(900, 0),
            Err(CredentialError::NotYetValid { .. })
        ));
        assert!(c.check_window(900, 100).is_ok());
        assert!(matches!(
            c.check_window(2101, 100),
            Err(CredentialError::Expired { .. })
        ));
    }
}
