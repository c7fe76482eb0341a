//! A host's X25519 sealing key pair, with its PKCS#8 and PEM forms.

use super::SealKem;
use crate::keys::KeyError;
use base64::Engine;
use hpke::{Deserializable, Kem as _, Serializable};

/// PKCS#8 v1 prefix of an X25519 private key (RFC 8410): the 32 key bytes follow.
const X25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20,
];

/// A host's X25519 sealing key pair (the private half stays on the host).
pub struct SealingKey {
    pub(super) private: <SealKem as hpke::Kem>::PrivateKey,
    pub(super) public: [u8; 32],
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealingKey({})", hex::encode(self.public))
    }
}

impl SealingKey {
    /// A new random key pair (from the system random generator).
    pub fn generate() -> Result<SealingKey, KeyError> {
        let mut ikm = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut ikm)
            .map_err(|_| KeyError::Random)?;
        Ok(SealingKey::derive(&ikm))
    }

    /// The key pair derived from `ikm` (RFC 9180 DeriveKeyPair); for tests and vectors.
    pub fn derive(ikm: &[u8; 32]) -> SealingKey {
        let (private, public) = SealKem::derive_keypair(ikm);
        SealingKey {
            private,
            public: to_array(&public.to_bytes()),
        }
    }

    /// From the 32 raw private key bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<SealingKey, KeyError> {
        let private = <SealKem as hpke::Kem>::PrivateKey::from_bytes(bytes)
            .map_err(|_| KeyError::Rejected("not an X25519 private key".into()))?;
        let public = to_array(&SealKem::sk_to_pk(&private).to_bytes());
        Ok(SealingKey { private, public })
    }

    /// The public half, as put in the host's credential.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// PKCS#8 (RFC 8410) DER of the private key.
    pub fn to_pkcs8(&self) -> Vec<u8> {
        let mut der = X25519_PKCS8_PREFIX.to_vec();
        der.extend_from_slice(&self.private.to_bytes());
        der
    }

    /// From PKCS#8 DER (the exact 48-byte RFC 8410 form).
    pub fn from_pkcs8(der: &[u8]) -> Result<SealingKey, KeyError> {
        match der.split_at_checked(X25519_PKCS8_PREFIX.len()) {
            Some((prefix, key)) if prefix == X25519_PKCS8_PREFIX && key.len() == 32 => {
                SealingKey::from_bytes(&to_array(key))
            }
            _ => Err(KeyError::Rejected(
                "not an X25519 PKCS#8 private key (RFC 8410)".into(),
            )),
        }
    }

    /// PEM text (`-----BEGIN PRIVATE KEY-----`), readable by common tools.
    pub fn to_pem(&self) -> String {
        crate::keys::der_to_pem(&self.to_pkcs8())
    }

    /// From PEM text as written by [`SealingKey::to_pem`].
    pub fn from_pem(text: &str) -> Result<SealingKey, KeyError> {
        let body: String = text
            .lines()
            .map(str::trim)
            .skip_while(|l| *l != "-----BEGIN PRIVATE KEY-----")
            .skip(1)
            .take_while(|l| *l != "-----END PRIVATE KEY-----")
            .collect();
        if body.is_empty() {
            return Err(KeyError::NotPem);
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| KeyError::BadBase64)?;
        SealingKey::from_pkcs8(&der)
    }
}

/// The first 32 bytes of `b` (callers pass HPKE keys, which are 32 bytes).
pub(super) fn to_array(b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&b[..32]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealing_key_pem_round_trips() {
        let k = SealingKey::derive(&[4; 32]);
        let back = SealingKey::from_pem(&k.to_pem()).unwrap();
        assert_eq!(back.public(), k.public());
        assert!(SealingKey::from_pem("nope").is_err());
        assert!(SealingKey::from_pkcs8(&[0; 48]).is_err());
    }
}
