//! The host's identity: its key, its issuer-signed credential and the issuers it trusts.
//!
//! Loaded once at start and checked against each other, so the agent refuses to start
//! with a credential that no receiver would accept for its replies.

use crate::config::AgentConfig;
use gearmq_io::files::{self, NamedFileError};
use gearmq_schemas::credential::{CredentialError, verify_credential};
use gearmq_schemas::token::SealingKey;
use gearmq_schemas::{Credential, Name, PublicKey, Role, SigningKey, TrustAnchors};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the identity could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A key or credential file could not be read, is open to others, or holds
    /// something else.
    #[error(transparent)]
    File(#[from] NamedFileError),
    /// The credential does not chain to a trusted issuer.
    #[error("host credential {path} does not verify against the trusted issuers: {source}")]
    Untrusted {
        /// The credential file.
        path: PathBuf,
        /// Why.
        source: CredentialError,
    },
    /// The credential verifies but does not fit this host.
    #[error("host credential {path} {reason}")]
    Mismatch {
        /// The credential file.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
}

/// The host's verified identity.
#[derive(Debug)]
pub struct HostIdentity {
    /// The host name (config and credential agree).
    pub name: Name,
    /// The private key that signs replies.
    pub key: SigningKey,
    /// The decoded host credential.
    pub credential: Credential,
    /// The credential as issued; travels in every reply.
    pub credential_bytes: Vec<u8>,
    /// The issuer keys trusted for requests.
    pub anchors: TrustAnchors,
    /// The X25519 key delegation tokens for this host are sealed to, when configured
    /// (its public half matches the credential's `sealing_key`).
    pub sealing: Option<Arc<SealingKey>>,
}

impl HostIdentity {
    /// Loads and cross-checks key, credential and trusted issuers named in `cfg`.
    pub fn load(cfg: &AgentConfig) -> Result<Self, IdentityError> {
        let key = load_host_key(&cfg.key_file)?;
        let mut issuers = Vec::with_capacity(cfg.trusted_issuers.len());
        for path in &cfg.trusted_issuers {
            let text = read_text("trusted issuer key", path)?;
            let pk = PublicKey::from_hex(&text)
                .map_err(|e| NamedFileError::invalid("trusted issuer key", path, e.to_string()))?;
            issuers.push(pk);
        }
        let credential_bytes = read_bytes("host credential", &cfg.credential_file)?;
        let credential = verify_credential(&credential_bytes, &issuers).map_err(|source| {
            IdentityError::Untrusted {
                path: cfg.credential_file.clone(),
                source,
            }
        })?;
        check_fits(&credential, &cfg.name, &key.public_key()).map_err(|reason| {
            IdentityError::Mismatch {
                path: cfg.credential_file.clone(),
                reason,
            }
        })?;
        let sealing = match &cfg.sealing_key_file {
            None => None,
            Some(path) => load_sealing_key(path, &credential)?.map(Arc::new),
        };
        Ok(HostIdentity {
            name: cfg.name.clone(),
            key,
            credential,
            credential_bytes,
            anchors: TrustAnchors::new(issuers),
            sealing,
        })
    }
}

/// Reads the sealing key (through the shared private key loader, which refuses a
/// file group or others can read) and checks it is the one the credential publishes.
/// A credential that publishes none (re-enrolled without `--sealing-pubkey`) gives
/// `None`: the agent runs and refuses every token, rather than not starting.
fn load_sealing_key(
    path: &Path,
    credential: &Credential,
) -> Result<Option<SealingKey>, IdentityError> {
    let key = files::load_sealing_key(path).map_err(|e| e.named("sealing key"))?;
    match credential.sealing_key {
        None => Ok(None),
        Some(pk) if pk.into_array() != key.public() => Err(IdentityError::Mismatch {
            path: path.to_path_buf(),
            reason: "does not match the sealing key published in the host credential".into(),
        }),
        Some(_) => Ok(Some(key)),
    }
}

/// Reads the host's private key (PEM PKCS#8) through the shared private key loader,
/// which refuses a file group or others can read. The audit log writer gets a key of
/// its own this way (a key pair cannot be copied).
pub fn load_host_key(path: &Path) -> Result<SigningKey, IdentityError> {
    Ok(files::load_signing_key(path).map_err(|e| e.named("host key"))?)
}

/// How close the host credential is to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Past `not_after`: orchestrators refuse its replies.
    Expired,
    /// Ends within [`EXPIRY_WARNING`]; `left_ms` to go.
    Soon {
        /// Milliseconds until `not_after`.
        left_ms: u64,
    },
    /// Further off.
    Later,
}

/// How long before its credential ends the agent starts warning (daily).
pub const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(14 * 86_400);

/// Where a credential ending at `not_after` stands at `now` (ms).
pub fn expiry(not_after: u64, now: u64) -> Expiry {
    if now > not_after {
        Expiry::Expired
    } else {
        let left_ms = not_after - now;
        if u128::from(left_ms) <= EXPIRY_WARNING.as_millis() {
            Expiry::Soon { left_ms }
        } else {
            Expiry::Later
        }
    }
}

/// Checks that a verified credential is a host credential for `name` and `key`.
fn check_fits(credential: &Credential, name: &Name, key: &PublicKey) -> Result<(), String> {
    if credential.role != Role::Host {
        return Err(format!(
            "is a {} credential; the agent needs a host credential",
            credential.role
        ));
    }
    if &credential.name != name {
        return Err(format!(
            "is for host {}, but the configured name is {name}",
            credential.name
        ));
    }
    if &credential.public_key != key {
        return Err(format!(
            "is for public key {}, but the host key's public key is {key}",
            credential.public_key
        ));
    }
    Ok(())
}

fn read_text(what: &'static str, path: &Path) -> Result<String, IdentityError> {
    Ok(std::fs::read_to_string(path).map_err(|e| NamedFileError::read(what, path, &e))?)
}

fn read_bytes(what: &'static str, path: &Path) -> Result<Vec<u8>, IdentityError> {
    Ok(std::fs::read(path).map_err(|e| NamedFileError::read(what, path, &e))?)
}

pub use gearmq_io::io_reason;

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(role: Role, name: &str, key: &SigningKey) -> Credential {
        Credential::new(1, Name::new(name).unwrap(), role, key.public_key(), 0, 10)
    }

    #[test]
    fn credential_must_fit_the_host() {
        let k = SigningKey::from_seed(&[3; 32]);
        let other = SigningKey::from_seed(&[4; 32]);
        let web1 = Name::new("web1").unwrap();
        assert!(check_fits(&cred(Role::Host, "web1", &k), &web1, &k.public_key()).is_ok());
        let e = check_fits(&cred(Role::Operator, "web1", &k), &web1, &k.public_key());
        assert!(e.unwrap_err().contains("operator credential"));
        let e = check_fits(&cred(Role::Host, "web2", &k), &web1, &k.public_key());
        assert!(e.unwrap_err().contains("web2"));
        let e = check_fits(&cred(Role::Host, "web1", &other), &web1, &k.public_key());
        assert!(e.unwrap_err().contains("public key"));
    }

    #[test]
    fn expiry_warns_within_fourteen_days() {
        let day = 86_400_000;
        let c = 100 * day;
        assert_eq!(expiry(c, 0), Expiry::Later);
        assert_eq!(expiry(c, 86 * day - 1), Expiry::Later);
        assert_eq!(expiry(c, 86 * day), Expiry::Soon { left_ms: 14 * day });
        assert_eq!(expiry(c, 100 * day), Expiry::Soon { left_ms: 0 });
        assert_eq!(expiry(c, 100 * day + 1), Expiry::Expired);
    }

    #[test]
    fn io_reason_drops_the_os_error_number() {
        let e = std::fs::read("/nonexistent/x").unwrap_err();
        assert_eq!(io_reason(&e), "No such file or directory");
    }

    #[test]
    fn host_and_sealing_keys_open_to_others_are_refused_naming_the_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (k, der) = SigningKey::generate().unwrap();
        let host = dir.path().join("host.key");
        files::write_signing_key(&host, &der, false).unwrap();
        let sealing = dir.path().join("sealing.key");
        let public =
            files::make_sealing_key_pair(&sealing, &dir.path().join("s.pub"), false).unwrap();
        let mut cred = cred(Role::Host, "web1", &k);
        cred.sealing_key = Some(serde_bytes::ByteArray::new(public));
        assert_eq!(load_host_key(&host).unwrap().public_key(), k.public_key());
        assert!(load_sealing_key(&sealing, &cred).unwrap().is_some());
        for p in [&host, &sealing] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let e = load_host_key(&host).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "refusing host key {p}: mode 0644 lets other users read or change it (chmod 600 {p})",
                p = host.display()
            )
        );
        let e = load_sealing_key(&sealing, &cred).unwrap_err().to_string();
        assert!(e.starts_with("refusing sealing key "), "{e}");
        assert!(
            e.contains(&format!("chmod 600 {}", sealing.display())),
            "{e}"
        );
        let e = load_host_key(&dir.path().join("none.key"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot read host key "), "{e}");
        assert!(e.ends_with("none.key: No such file or directory"), "{e}");
    }
}
