//! The sealed layers as they travel: the signed claims ([`Minted`]), the cleartext
//! header that is the HPKE associated data ([`TokenHeader`]), and the whole
//! [`SealedToken`].

use crate::names::Name;
use serde::{Deserialize, Serialize};

/// Who signed a token's claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MinterKind {
    /// A trusted issuer key: `signed` is an [`IssuerSigned`](crate::envelope::IssuerSigned) envelope.
    Issuer,
    /// An operator with `may_delegate`: `signed` is a [`Signed`](crate::envelope::Signed) envelope.
    Operator,
}

/// The sealed plaintext: the signed claims and how they were signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Minted {
    /// Which envelope `signed` is.
    pub by: MinterKind,
    /// The signed claims.
    #[serde(with = "serde_bytes")]
    pub signed: Vec<u8>,
}

/// The cleartext header of a sealed token; the HPKE associated data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenHeader {
    /// Always `"sealed_token"`.
    pub kind: String,
    /// Protocol version.
    pub version: u16,
    /// Always [`SUITE`](super::SUITE).
    pub suite: String,
    /// The host it is sealed for.
    pub audience: Name,
    /// That host's X25519 sealing public key.
    pub recipient: serde_bytes::ByteArray<32>,
}

/// A sealed token as carried in a request's `token` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedToken {
    /// The encoded [`TokenHeader`]; authenticated as associated data.
    #[serde(with = "serde_bytes")]
    pub header: Vec<u8>,
    /// The HPKE encapsulated key.
    pub enc: serde_bytes::ByteArray<32>,
    /// The encrypted [`Minted`], with its 16-byte tag.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}
