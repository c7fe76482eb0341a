//! Delegation tokens: a short-lived, sealed permission for host A to call named
//! actions on host B.
//!
//! A token is three layers, each checked strictly:
//!
//! 1. **Claims** ([`Token`]): `{kind, version, id, issuer, subject, audience, actions,
//!    units, not_before, not_after, uses}`, MessagePack like every body.
//! 2. **Signature** ([`Minted`]): the claims signed in context `gearmq/v1/token`, either
//!    directly by a trusted issuer key ([`IssuerSigned`](crate::envelope::IssuerSigned)) or by an operator whose
//!    credential has `may_delegate` ([`Signed`](crate::envelope::Signed), carrying that credential).
//! 3. **Seal** ([`SealedToken`]): the signed bytes encrypted to the audience host's
//!    X25519 sealing key with HPKE (RFC 9180, base mode, DHKEM(X25519, HKDF-SHA256),
//!    HKDF-SHA256, ChaCha20-Poly1305). The encoded [`TokenHeader`] (audience and
//!    recipient key) is the associated data, so it cannot be altered either.
//!
//! The carrier (host A) cannot read or change a token; only B can open it, and B
//! accepts it only on a request signed by the token's subject ([`Unsealed::check`]).
//! Counting uses is the receiver's job (its replay store).
//!
//! One concern a file: `claims` (the claims and their rules), `wire` (the sealed
//! layers as they travel), `sealing_key` (the host's X25519 key), `minting` (sign and
//! seal), `opening` (peek and open), `checks` (judging a token for one request) and
//! `error`.

mod checks;
mod claims;
mod error;
mod minting;
mod opening;
mod sealing_key;
#[cfg(test)]
mod test_world;
mod wire;

pub use checks::{Presented, check_minter_rights};
pub use claims::Token;
pub use error::TokenError;
pub use minting::{Minter, seal, seal_for_vectors};
pub use opening::{MintedBy, Unsealed, open, peek};
pub use sealing_key::SealingKey;
pub use wire::{Minted, MinterKind, SealedToken, TokenHeader};

use std::time::Duration;

/// Largest sealed token accepted, in bytes (everything, before any decoding).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Most actions one token may name.
pub const MAX_TOKEN_ACTIONS: usize = 16;
/// Most units one token may name.
pub const MAX_TOKEN_UNITS: usize = 16;
/// Most uses one token may grant.
pub const MAX_TOKEN_USES: u32 = 1000;
/// Longest validity a minter grants unless told otherwise (and the default cap of a
/// receiving agent).
pub const DEFAULT_MAX_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// The `kind` of a sealed token's header.
pub const SEALED_KIND: &str = "sealed_token";
/// The HPKE suite, named in every header.
pub const SUITE: &str = "DHKEM(X25519,HKDF-SHA256)/HKDF-SHA256/ChaCha20Poly1305";
/// The HPKE `info` string: binds the seal to this protocol and version.
pub const HPKE_INFO: &[u8] = b"gearmq/v1/token-seal";

type SealKem = hpke::kem::X25519HkdfSha256;
type SealKdf = hpke::kdf::HkdfSha256;
type SealAead = hpke::aead::ChaCha20Poly1305;
