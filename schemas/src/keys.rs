//! Ed25519 keys (ring) and their file formats.
//!
//! Private keys are PKCS#8 v2 documents in PEM (`-----BEGIN PRIVATE KEY-----`), public
//! keys one line of lower-case hex (64 characters). Both formats are read by the agent,
//! the orchestrator and the auditor alike, so they live here.

use crate::envelope::Context;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a key could not be made, read or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The PEM text is not a PRIVATE KEY block.
    #[error("not a PEM private key (expected a -----BEGIN PRIVATE KEY----- block)")]
    NotPem,
    /// The base64 inside the PEM block is invalid.
    #[error("the PEM private key is not valid base64")]
    BadBase64,
    /// ring refused the PKCS#8 document.
    #[error("not an Ed25519 PKCS#8 key: {0}")]
    Rejected(String),
    /// A public key is not 64 hex characters.
    #[error("not an Ed25519 public key (expected 64 hex characters)")]
    BadPublicKey,
    /// The system random generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PublicKey(pub serde_bytes::ByteArray<32>);

/// A signature was not valid for the key and message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("signature invalid")]
pub struct BadSignature;

impl PublicKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        PublicKey(serde_bytes::ByteArray::new(b))
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Verifies `sig` over `context ‖ body`, strictly (PROTOCOL.md, "Signing"): the key
    /// must not be [weak](PublicKey::is_weak), `R` (the signature's first half) must not
    /// encode a point of small order, and then *ring* checks `S < L`, decodes the key and
    /// compares `R` byte for byte with the encoding of `[S]B − [h]A` (cofactorless).
    pub fn verify(&self, ctx: Context, body: &[u8], sig: &[u8]) -> Result<(), BadSignature> {
        if self.is_weak() {
            return Err(BadSignature);
        }
        if sig.first_chunk::<32>().is_some_and(is_small_order_encoding) {
            return Err(BadSignature);
        }
        let msg = signed_message(ctx, body);
        UnparsedPublicKey::new(&ED25519, self.as_bytes())
            .verify(&msg, sig)
            .map_err(|_| BadSignature)
    }

    /// Whether the key is one no gearmq signature may be checked against: not a
    /// canonical encoding (its `y`, the low 255 bits, is `p = 2^255 − 19` or more), or the
    /// encoding of a point of small order (order 1, 2, 4 or 8), whatever its sign bit.
    /// *ring* would accept signatures under such keys that anyone can make; credentials
    /// holding one do not decode. A key that is no point at all is not weak by this
    /// test: it verifies no signature.
    pub fn is_weak(&self) -> bool {
        !is_canonical_encoding(self.as_bytes()) || is_small_order_encoding(self.as_bytes())
    }

    /// Lower-case hex, the public key file format (without the newline).
    pub fn to_hex(&self) -> String {
        hex::encode(self.as_bytes())
    }

    /// Parses the public key file format (surrounding white space ignored).
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut b).map_err(|_| KeyError::BadPublicKey)?;
        Ok(PublicKey::from_bytes(b))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The `y` coordinates, little-endian with the sign bit clear, of the Edwards25519
/// points of small order — `0` (order 4), `1` (order 1), the two of order 8, `p − 1`
/// (order 2) — and the non-canonical `p` and `p + 1`, which decode as `0` and `1`.
const SMALL_ORDER_Y: [[u8; 32]; 7] = [
    [0; 32],
    {
        let mut one = [0; 32];
        one[0] = 1;
        one
    },
    [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x05,
    ],
    [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ],
    field_element(0xec),
    field_element(0xed),
    field_element(0xee),
];

/// `p − 19 + low`: the 32 little-endian bytes `low, ff × 30, 7f` (`p` for `low` = `ed`).
const fn field_element(low: u8) -> [u8; 32] {
    let mut b = [0xff; 32];
    b[0] = low;
    b[31] = 0x7f;
    b
}

/// Whether `encoded` (a point, sign bit ignored) is one of [`SMALL_ORDER_Y`].
fn is_small_order_encoding(encoded: &[u8; 32]) -> bool {
    let mut y = *encoded;
    y[31] &= 0x7f;
    SMALL_ORDER_Y.contains(&y)
}

/// Whether the `y` of `encoded` (its low 255 bits) is below `p = 2^255 − 19`.
fn is_canonical_encoding(encoded: &[u8; 32]) -> bool {
    let at_least_p = encoded[0] >= 0xed
        && encoded[1..31].iter().all(|b| *b == 0xff)
        && encoded[31] & 0x7f == 0x7f;
    !at_least_p
}

fn signed_message(ctx: Context, body: &[u8]) -> Vec<u8> {
    let tag = ctx.tag();
    let mut msg = Vec::with_capacity(tag.len() + body.len());
    msg.extend_from_slice(tag);
    msg.extend_from_slice(body);
    msg
}

/// An Ed25519 private key that signs gearmq messages.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(public {})", self.public_key())
    }
}

impl SigningKey {
    /// A new random key, with its PKCS#8 document (to be written to a 0600 file).
    pub fn generate() -> Result<(SigningKey, Vec<u8>), KeyError> {
        let rng = SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Random)?;
        let key = SigningKey::from_pkcs8(doc.as_ref())?;
        Ok((key, doc.as_ref().to_vec()))
    }

    /// A key from a PKCS#8 document.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, KeyError> {
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map(|pair| SigningKey { pair })
            .map_err(|e| KeyError::Rejected(e.to_string()))
    }

    /// A key from a 32-byte seed. For test vectors and tests: real keys come from
    /// [`SigningKey::generate`].
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        // A 32-byte seed is always a valid Ed25519 private key; ring only rejects
        // wrong lengths here.
        let pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .unwrap_or_else(|_| unreachable!("32-byte seed"));
        SigningKey { pair }
    }

    /// A key from the PEM private key file format.
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        SigningKey::from_pkcs8(&pem_to_der(text)?)
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        let mut b = [0u8; 32];
        b.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey::from_bytes(b)
    }

    /// Signs `context ‖ body`.
    pub fn sign(&self, ctx: Context, body: &[u8]) -> [u8; 64] {
        let sig = self.pair.sign(&signed_message(ctx, body));
        let mut out = [0u8; 64];
        out.copy_from_slice(sig.as_ref());
        out
    }
}

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// Wraps a PKCS#8 document in the PEM private key file format.
pub fn der_to_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from(PEM_BEGIN);
    out.push('\n');
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(PEM_END);
    out.push('\n');
    out
}

fn pem_to_der(text: &str) -> Result<Vec<u8>, KeyError> {
    let start = text.find(PEM_BEGIN).ok_or(KeyError::NotPem)? + PEM_BEGIN.len();
    let end = text[start..].find(PEM_END).ok_or(KeyError::NotPem)? + start;
    let b64: String = text[start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| KeyError::BadBase64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_keeps_the_key() {
        let (k, der) = SigningKey::generate().unwrap();
        let pem = der_to_pem(&der);
        let k2 = SigningKey::from_pem(&pem).unwrap();
        assert_eq!(k.public_key(), k2.public_key());
    }

    #[test]
    fn signature_is_bound_to_its_context() {
        let k = SigningKey::from_seed(&[7; 32]);
        let sig = k.sign(Context::Request, b"body");
        assert!(
            k.public_key()
                .verify(Context::Request, b"body", &sig)
                .is_ok()
        );
        assert!(
            k.public_key()
                .verify(Context::Reply, b"body", &sig)
                .is_err()
        );
        assert!(
            k.public_key()
                .verify(Context::Request, b"bodY", &sig)
                .is_err()
        );
    }

    #[test]
    fn weak_keys_are_the_small_order_and_non_canonical_encodings() {
        let key = |b: [u8; 32]| PublicKey::from_bytes(b);
        for y in SMALL_ORDER_Y {
            let mut negative = y;
            negative[31] |= 0x80;
            assert!(key(y).is_weak() && key(negative).is_weak(), "{y:02x?}");
        }
        // y = p + 3 (3 is on the curve, of large order): not canonical.
        assert!(key(field_element(0xf0)).is_weak());
        let mut two = [0; 32];
        two[0] = 2;
        assert!(
            !key(two).is_weak(),
            "y = 2 is canonical; no point, but not weak"
        );
        assert!(!SigningKey::from_seed(&[1; 32]).public_key().is_weak());
    }

    #[test]
    fn small_order_r_is_refused_before_ring() {
        let k = SigningKey::from_seed(&[7; 32]);
        let mut sig = k.sign(Context::Request, b"body");
        assert!(
            k.public_key()
                .verify(Context::Request, b"body", &sig)
                .is_ok()
        );
        sig[..32].copy_from_slice(&SMALL_ORDER_Y[1]);
        assert!(
            k.public_key()
                .verify(Context::Request, b"body", &sig)
                .is_err()
        );
    }

    #[test]
    fn public_key_hex_round_trips() {
        let k = SigningKey::from_seed(&[1; 32]).public_key();
        assert_eq!(
            PublicKey::from_hex(&format!("{}\n", k.to_hex())).unwrap(),
            k
        );
        assert!(PublicKey::from_hex("abcd").is_err());
    }

    #[test]
    fn garbage_pem_is_an_error() {
        assert!(SigningKey::from_pem("hello").is_err());
        assert!(SigningKey::from_pem(&format!("{PEM_BEGIN}\n!!!\n{PEM_END}")).is_err());
        assert!(SigningKey::from_pem(&der_to_pem(b"not pkcs8")).is_err());
    }
}
