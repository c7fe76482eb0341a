//! Trusted issuers and a cache of verified credentials.

use crate::credential::{Credential, CredentialError, verify_credential};
use crate::keys::PublicKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The issuer public keys a receiver trusts. Several at once, so the issuer can be
/// rotated without downtime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustAnchors {
    issuers: Vec<PublicKey>,
}

impl TrustAnchors {
    /// Trusts exactly these issuer keys.
    pub fn new(issuers: Vec<PublicKey>) -> Self {
        TrustAnchors { issuers }
    }

    /// The trusted keys.
    pub fn issuers(&self) -> &[PublicKey] {
        &self.issuers
    }
}

/// Verifies credentials against trust anchors and caches the result by the SHA-256 of
/// the credential bytes, so a credential that travels with every message is checked
/// once. The cache is bounded; when full it starts over.
#[derive(Debug)]
pub struct CredentialVerifier {
    anchors: TrustAnchors,
    cache: Mutex<HashMap<[u8; 32], Arc<Credential>>>,
    capacity: usize,
}

impl CredentialVerifier {
    /// A verifier for `anchors` caching up to `capacity` credentials.
    pub fn new(anchors: TrustAnchors, capacity: usize) -> Self {
        CredentialVerifier {
            anchors,
            cache: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// The anchors this verifier trusts.
    pub fn anchors(&self) -> &TrustAnchors {
        &self.anchors
    }

    /// Decodes `bytes` as a credential and checks it chains to a trusted issuer.
    pub fn verify(&self, bytes: &[u8]) -> Result<Arc<Credential>, CredentialError> {
        if bytes.len() > crate::credential::MAX_CREDENTIAL_BYTES {
            return Err(CredentialError::Envelope(crate::DecodeError::TooLarge {
                what: "credential",
                size: bytes.len(),
                max: crate::credential::MAX_CREDENTIAL_BYTES,
            }));
        }
        let digest = crate::sha256(bytes);
        if let Some(c) = self.lock().get(&digest) {
            return Ok(c.clone());
        }
        let cred = Arc::new(verify_credential(bytes, self.anchors.issuers())?);
        let mut cache = self.lock();
        if cache.len() >= self.capacity {
            cache.clear();
        }
        cache.insert(digest, cred.clone());
        Ok(cred)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Arc<Credential>>> {
        // A panic while holding this lock cannot leave the map half-updated (insert and
        // clear are atomic from our side), so a poisoned lock is still usable.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Name, Role, SigningKey};

    #[test]
    fn cache_returns_the_same_credential_and_stays_bounded() {
        let issuer = SigningKey::from_seed(&[1; 32]);
        let v = CredentialVerifier::new(TrustAnchors::new(vec![issuer.public_key()]), 2);
        let mut creds = Vec::new();
        for i in 0..3u8 {
            let k = SigningKey::from_seed(&[i + 10; 32]);
            let c = Credential::new(
                u64::from(i),
                Name::new(format!("h{i}")).unwrap(),
                Role::Host,
                k.public_key(),
                0,
                10,
            );
            creds.push(c.issue(&issuer));
        }
        let a = v.verify(&creds[0]).unwrap();
        let b = v.verify(&creds[0]).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        v.verify(&creds[1]).unwrap();
        v.verify(&creds[2]).unwrap();
        assert!(v.lock().len() <= 2);
    }
}
