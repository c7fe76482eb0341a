//! Delegation tokens: a short-lived, sealed permission for host A to call named
//! actions on host B.
//!
//! A token is three layers, each checked strictly:
//!
//! 1. **Claims** ([`Token`]): `{kind, version, id, issuer, subject, audience, actions,
//!    units, not_before, not_after, uses}`, MessagePack like every body.
//! 2. **Signature** ([`Minted`]): the claims signed in context `gearmq/v1/token`, either
//!    directly by a trusted issuer key ([`IssuerSigned`]) or by an operator whose
//!    credential has `may_delegate` ([`Signed`], carrying that credential).
//! 3. **Seal** ([`SealedToken`]): the signed bytes encrypted to the audience host's
//!    X25519 sealing key with HPKE (RFC 9180, base mode, DHKEM(X25519, HKDF-SHA256),
//!    HKDF-SHA256, ChaCha20-Poly1305). The encoded [`TokenHeader`] (audience and
//!    recipient key) is the associated data, so it cannot be altered either.
//!
//! The carrier (host A) cannot read or change a token; only B can open it, and B
//! accepts it only on a request signed by the token's subject ([`Unsealed::check`]).
//! Counting uses is the receiver's job (its replay store).

use crate::codec::{self, DecodeError};
use crate::credential::Credential;
use crate::envelope::{self, Body, Context, IssuerSigned, IssuerSignedError, OpenError, Signed};
use crate::keys::{KeyError, PublicKey, SigningKey};
use crate::names::{ActionName, Name};
use crate::time::Millis;
use crate::trust::CredentialVerifier;
use crate::units::check_unit_name;
use base64::Engine;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

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

/// PKCS#8 v1 prefix of an X25519 private key (RFC 8410): the 32 key bytes follow.
const X25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20,
];

/// The claims of a delegation token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    /// Always `"token"`.
    pub kind: String,
    /// Protocol version.
    pub version: u16,
    /// Unique per token; the receiver counts uses under it.
    pub id: Uuid,
    /// The public key that signed these claims (a trusted issuer, or the minting
    /// operator's own key).
    pub issuer: PublicKey,
    /// The host that may present it: the request's signer must be this host.
    pub subject: Name,
    /// The host that accepts it.
    pub audience: Name,
    /// The actions it allows (at least one).
    pub actions: Vec<ActionName>,
    /// The units it allows; empty means any unit. When set, the request must name one.
    pub units: Vec<String>,
    /// Valid from (ms since epoch).
    pub not_before: Millis,
    /// Valid until (ms since epoch).
    pub not_after: Millis,
    /// How many requests it allows.
    pub uses: u32,
}

impl Body for Token {
    const CONTEXT: Context = Context::Token;
    fn kind(&self) -> &str {
        &self.kind
    }
    fn version(&self) -> u16 {
        self.version
    }
    fn validate(&self) -> Result<(), String> {
        if self.actions.is_empty() {
            return Err("names no action".into());
        }
        if self.actions.len() > MAX_TOKEN_ACTIONS {
            return Err(format!("names more than {MAX_TOKEN_ACTIONS} actions"));
        }
        for (i, a) in self.actions.iter().enumerate() {
            if self.actions[..i].contains(a) {
                return Err(format!("names action {a} twice"));
            }
        }
        if self.units.len() > MAX_TOKEN_UNITS {
            return Err(format!("names more than {MAX_TOKEN_UNITS} units"));
        }
        for (i, u) in self.units.iter().enumerate() {
            check_unit_name(u).map_err(|e| format!("unit scope: {e}"))?;
            if self.units[..i].contains(u) {
                return Err(format!("names unit {u} twice"));
            }
        }
        if self.not_after <= self.not_before {
            return Err("not_after is not after not_before".into());
        }
        if self.uses == 0 || self.uses > MAX_TOKEN_USES {
            return Err(format!("uses must be 1 to {MAX_TOKEN_USES}"));
        }
        if self.subject == self.audience {
            return Err("subject and audience are the same host".into());
        }
        Ok(())
    }
}

impl Token {
    /// New claims with protocol fields filled in and a fresh UUIDv7 id.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        issuer: PublicKey,
        subject: Name,
        audience: Name,
        actions: Vec<ActionName>,
        units: Vec<String>,
        not_before: Millis,
        not_after: Millis,
        uses: u32,
    ) -> Self {
        Token {
            kind: Context::Token.kind().to_string(),
            version: crate::VERSION,
            id: Uuid::now_v7(),
            issuer,
            subject,
            audience,
            actions,
            units,
            not_before,
            not_after,
            uses,
        }
    }

    /// Whether the token allows `action`.
    pub fn allows_action(&self, action: &ActionName) -> bool {
        self.actions.iter().any(|a| a == action)
    }
}

/// Who signed a token's claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MinterKind {
    /// A trusted issuer key: `signed` is an [`IssuerSigned`] envelope.
    Issuer,
    /// An operator with `may_delegate`: `signed` is a [`Signed`] envelope.
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
    /// Always [`SUITE`].
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

/// A host's X25519 sealing key pair (the private half stays on the host).
pub struct SealingKey {
    private: <SealKem as hpke::Kem>::PrivateKey,
    public: [u8; 32],
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

fn to_array(b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&b[..32]);
    out
}

/// How a token is signed at minting.
#[derive(Debug, Clone, Copy)]
pub enum Minter<'a> {
    /// Directly with a trusted issuer key.
    Issuer(&'a SigningKey),
    /// By an operator with `may_delegate`, carrying its encoded credential.
    Operator {
        /// The operator's key.
        key: &'a SigningKey,
        /// The operator's encoded credential (a `.cred` file's bytes).
        credential: &'a [u8],
    },
}

/// Why a token was refused. Each variant has a stable [`TokenError::reason`] label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Over [`MAX_TOKEN_BYTES`].
    #[error("token is {size} bytes, over the limit of {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The sealed form or its header does not decode.
    #[error("token is malformed: {0}")]
    Malformed(String),
    /// Sealed for another host.
    #[error("token is for host {audience}, not {host}")]
    WrongAudience {
        /// Who it is for.
        audience: Name,
        /// Who was asked.
        host: Name,
    },
    /// Sealed to another sealing key of this host (rotated or re-enrolled).
    #[error("token is sealed to sealing key {got}, not this host's {have}")]
    WrongRecipient {
        /// The key in the header (hex).
        got: String,
        /// This host's key (hex).
        have: String,
    },
    /// HPKE open failed: altered bytes or a different key.
    #[error("token does not open with this host's sealing key (altered or not sealed to it)")]
    CannotOpen,
    /// Opened, but the signature layer or the claims do not decode.
    #[error("token contents are malformed: {0}")]
    MalformedClaims(String),
    /// Signed by a key that is not a trusted issuer.
    #[error("token is signed by {0}, which is not a trusted issuer")]
    UntrustedIssuer(String),
    /// The minter's credential is not valid or not from a trusted issuer.
    #[error("token minter credential: {0}")]
    MinterCredential(String),
    /// The signature does not match.
    #[error("token signature invalid")]
    BadSignature,
    /// Minted by a credential without `may_delegate` (or not an operator).
    #[error("token was minted by {minter}, whose credential may not delegate")]
    NotDelegator {
        /// The minter's name.
        minter: Name,
    },
    /// The minter's credential was not valid at the time of the check.
    #[error("token minter {minter}: {reason}")]
    MinterNotValid {
        /// The minter's name.
        minter: Name,
        /// Expired or not yet valid, with times.
        reason: String,
    },
    /// The claims name an issuer key other than the one that signed them.
    #[error("token claims issuer {claimed} but was signed by {signed}")]
    IssuerMismatch {
        /// The claimed key (hex).
        claimed: String,
        /// The signing key (hex).
        signed: String,
    },
    /// The claims grant more than the minter may do itself.
    #[error("token grants action {action}, which its minter {minter} may not do itself")]
    WiderThanMinter {
        /// The minter's name.
        minter: Name,
        /// The first action beyond its rights.
        action: ActionName,
    },
    /// Presented in a request signed by someone else than its subject.
    #[error("token is for subject {subject}, but the request is signed by {signer}")]
    WrongSubject {
        /// Who may present it.
        subject: Name,
        /// Who presented it.
        signer: Name,
    },
    /// The action is not among the token's actions.
    #[error("token does not allow action {action} (it allows {allowed})")]
    ActionNotAllowed {
        /// What was asked.
        action: ActionName,
        /// What it allows, comma-separated.
        allowed: String,
    },
    /// The unit is not in the token's unit scope (or none was named).
    #[error("token is limited to units {allowed}; the request names {asked}")]
    UnitNotAllowed {
        /// What the request names (or "no unit").
        asked: String,
        /// The scope, comma-separated.
        allowed: String,
    },
    /// Before `not_before` (beyond the skew).
    #[error(
        "token is not valid before {not_before} ms, now {now} ms (allowed clock skew {skew_ms} ms)"
    )]
    NotYetValid {
        /// Start of validity.
        not_before: Millis,
        /// Time of the check.
        now: Millis,
        /// Skew allowed.
        skew_ms: Millis,
    },
    /// After `not_after` (beyond the skew).
    #[error("token expired at {not_after} ms, now {now} ms (allowed clock skew {skew_ms} ms)")]
    Expired {
        /// End of validity.
        not_after: Millis,
        /// Time of the check.
        now: Millis,
        /// Skew allowed.
        skew_ms: Millis,
    },
    /// Its validity is longer than the receiver accepts.
    #[error("token is valid for {ttl_ms} ms, over this host's cap of {max_ms} ms")]
    TtlTooLong {
        /// `not_after - not_before`.
        ttl_ms: Millis,
        /// The cap.
        max_ms: Millis,
    },
    /// Every use was spent.
    #[error("token {id} is used up ({uses} of {uses} uses spent)")]
    UsedUp {
        /// The token id.
        id: Uuid,
        /// How many it had.
        uses: u32,
    },
    /// The minter's credential is revoked.
    #[error("token minter is revoked: {0}")]
    MinterRevoked(String),
    /// This host has no sealing key, so it accepts no token.
    #[error("this host has no sealing key configured; it accepts no delegation token")]
    NoSealingKey,
    /// Minting could not seal (bad recipient key).
    #[error("cannot seal the token: {0}")]
    Seal(String),
}

impl TokenError {
    /// A short stable label for counters and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::TooLarge { .. } => "token_oversize",
            TokenError::Malformed(_) | TokenError::MalformedClaims(_) => "token_malformed",
            TokenError::WrongAudience { .. } => "token_wrong_audience",
            TokenError::WrongRecipient { .. } => "token_wrong_recipient",
            TokenError::CannotOpen => "token_cannot_open",
            TokenError::UntrustedIssuer(_) | TokenError::MinterCredential(_) => {
                "token_untrusted_minter"
            }
            TokenError::BadSignature | TokenError::IssuerMismatch { .. } => "token_bad_signature",
            TokenError::NotDelegator { .. } => "token_not_delegator",
            TokenError::MinterNotValid { .. } => "token_minter_not_valid",
            TokenError::WiderThanMinter { .. } => "token_wider_than_minter",
            TokenError::WrongSubject { .. } => "token_wrong_subject",
            TokenError::ActionNotAllowed { .. } => "token_action_not_allowed",
            TokenError::UnitNotAllowed { .. } => "token_unit_not_allowed",
            TokenError::NotYetValid { .. } => "token_not_yet_valid",
            TokenError::Expired { .. } => "token_expired",
            TokenError::TtlTooLong { .. } => "token_ttl_too_long",
            TokenError::UsedUp { .. } => "token_used_up",
            TokenError::MinterRevoked(_) => "token_minter_revoked",
            TokenError::NoSealingKey => "token_no_sealing_key",
            TokenError::Seal(_) => "token_seal",
        }
    }
}

/// Signs `claims` as `minter` and seals them to `recipient` (the audience's sealing
/// public key). Checks that the claims decode back (so a minter cannot make a token
/// its receiver would refuse as malformed) but not the minter's rights: see
/// [`check_minter_rights`].
pub fn seal(
    claims: &Token,
    minter: Minter<'_>,
    recipient: &[u8; 32],
) -> Result<Vec<u8>, TokenError> {
    seal_inner(claims, minter, recipient, None)
}

/// [`seal`] with the HPKE ephemeral key drawn from `ephemeral_seed`: reproducible
/// bytes for the protocol's test vectors. Never for real tokens (a reused ephemeral
/// key makes two tokens' seals related).
#[doc(hidden)]
pub fn seal_for_vectors(
    claims: &Token,
    minter: Minter<'_>,
    recipient: &[u8; 32],
    ephemeral_seed: &[u8; 32],
) -> Result<Vec<u8>, TokenError> {
    seal_inner(claims, minter, recipient, Some(ephemeral_seed))
}

/// A deterministic byte stream: SHA-256(seed ‖ counter) blocks.
struct SeededRng {
    seed: [u8; 32],
    counter: u64,
}

impl hpke::rand_core::TryRng for SeededRng {
    type Error = core::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(32) {
            let mut input = self.seed.to_vec();
            input.extend_from_slice(&self.counter.to_be_bytes());
            self.counter += 1;
            let block = crate::sha256(&input);
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
        Ok(())
    }
}

impl hpke::rand_core::TryCryptoRng for SeededRng {}

fn seal_inner(
    claims: &Token,
    minter: Minter<'_>,
    recipient: &[u8; 32],
    ephemeral_seed: Option<&[u8; 32]>,
) -> Result<Vec<u8>, TokenError> {
    claims.validate().map_err(TokenError::MalformedClaims)?;
    let minted = match minter {
        Minter::Issuer(key) => Minted {
            by: MinterKind::Issuer,
            signed: IssuerSigned::seal(claims, key),
        },
        Minter::Operator { key, credential } => Minted {
            by: MinterKind::Operator,
            signed: Signed::seal(claims, key, credential),
        },
    };
    let header = codec::encode(&TokenHeader {
        kind: SEALED_KIND.to_string(),
        version: crate::VERSION,
        suite: SUITE.to_string(),
        audience: claims.audience.clone(),
        recipient: serde_bytes::ByteArray::new(*recipient),
    });
    let pk = <SealKem as hpke::Kem>::PublicKey::from_bytes(recipient)
        .map_err(|_| TokenError::Seal("not an X25519 public key".into()))?;
    let plaintext = codec::encode(&minted);
    let sealed = match ephemeral_seed {
        None => hpke::single_shot_seal::<SealAead, SealKdf, SealKem>(
            &OpModeS::Base,
            &pk,
            HPKE_INFO,
            &plaintext,
            &header,
        ),
        Some(seed) => hpke::single_shot_seal_with_rng::<SealAead, SealKdf, SealKem>(
            &OpModeS::Base,
            &pk,
            HPKE_INFO,
            &plaintext,
            &header,
            &mut SeededRng {
                seed: *seed,
                counter: 0,
            },
        ),
    };
    let (enc, ciphertext) = sealed.map_err(|e| TokenError::Seal(e.to_string()))?;
    let sealed = SealedToken {
        header,
        enc: serde_bytes::ByteArray::new(to_array(&enc.to_bytes())),
        ciphertext,
    };
    let bytes = codec::encode(&sealed);
    if bytes.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLarge {
            size: bytes.len(),
            max: MAX_TOKEN_BYTES,
        });
    }
    Ok(bytes)
}

/// Checks that `claims` grant nothing beyond `minter`'s own rights (an operator
/// credential's actions; an issuer may grant any action).
pub fn check_minter_rights(claims: &Token, minter: &MintedBy) -> Result<(), TokenError> {
    if let MintedBy::Operator(cred) = minter
        && let Some(a) = claims.actions.iter().find(|a| !cred.allows(a))
    {
        return Err(TokenError::WiderThanMinter {
            minter: cred.name.clone(),
            action: a.clone(),
        });
    }
    Ok(())
}

/// Who minted an opened token.
#[derive(Debug, Clone)]
pub enum MintedBy {
    /// A trusted issuer key.
    Issuer(PublicKey),
    /// An operator with `may_delegate` (credential verified against the trust anchors;
    /// its window and revocation are the caller's checks).
    Operator(Arc<Credential>),
}

impl MintedBy {
    /// A name for logs: the operator's name, or `issuer:<hex prefix>`.
    pub fn describe(&self) -> String {
        match self {
            MintedBy::Issuer(k) => format!("issuer:{}", &k.to_hex()[..16]),
            MintedBy::Operator(c) => c.name.to_string(),
        }
    }
}

/// A token opened and its signature proven; not yet judged for a request.
#[derive(Debug, Clone)]
pub struct Unsealed {
    /// The claims.
    pub claims: Token,
    /// Who signed them.
    pub minted_by: MintedBy,
}

/// What a request asks, as the token checks need it.
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    /// The request signer's name (must be the subject).
    pub signer: &'a Name,
    /// The action asked.
    pub action: &'a ActionName,
    /// The unit the request names, if any.
    pub unit: Option<&'a str>,
    /// The time of the check.
    pub now: Millis,
    /// Clock skew allowed on the window.
    pub skew_ms: Millis,
    /// The receiver's cap on `not_after - not_before`.
    pub max_ttl_ms: Millis,
}

impl Unsealed {
    /// Judges the token for one request: minter rights and window, subject, action,
    /// unit scope, validity window with skew, and the receiver's TTL cap. Uses and the
    /// minter's revocation are the receiver's checks.
    pub fn check(&self, p: &Presented<'_>) -> Result<(), TokenError> {
        let c = &self.claims;
        check_minter_rights(c, &self.minted_by)?;
        if let MintedBy::Operator(cred) = &self.minted_by {
            cred.check_window(p.now, p.skew_ms)
                .map_err(|e| TokenError::MinterNotValid {
                    minter: cred.name.clone(),
                    reason: e.to_string(),
                })?;
        }
        if &c.subject != p.signer {
            return Err(TokenError::WrongSubject {
                subject: c.subject.clone(),
                signer: p.signer.clone(),
            });
        }
        if !c.allows_action(p.action) {
            return Err(TokenError::ActionNotAllowed {
                action: p.action.clone(),
                allowed: join(c.actions.iter().map(ActionName::as_str)),
            });
        }
        if !c.units.is_empty() && !p.unit.is_some_and(|u| c.units.iter().any(|x| x == u)) {
            return Err(TokenError::UnitNotAllowed {
                asked: p
                    .unit
                    .map_or_else(|| "no unit".to_string(), |u| format!("unit {u}")),
                allowed: join(c.units.iter().map(String::as_str)),
            });
        }
        let ttl = c.not_after.saturating_sub(c.not_before);
        if ttl > p.max_ttl_ms {
            return Err(TokenError::TtlTooLong {
                ttl_ms: ttl,
                max_ms: p.max_ttl_ms,
            });
        }
        if p.now.saturating_add(p.skew_ms) < c.not_before {
            return Err(TokenError::NotYetValid {
                not_before: c.not_before,
                now: p.now,
                skew_ms: p.skew_ms,
            });
        }
        if p.now.saturating_sub(p.skew_ms) > c.not_after {
            return Err(TokenError::Expired {
                not_after: c.not_after,
                now: p.now,
                skew_ms: p.skew_ms,
            });
        }
        Ok(())
    }
}

fn join<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(",")
}

/// Decodes a sealed token's outer layer and header only (no key needed): what a
/// carrier or an auditor can see.
pub fn peek(bytes: &[u8]) -> Result<(SealedToken, TokenHeader), TokenError> {
    if bytes.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLarge {
            size: bytes.len(),
            max: MAX_TOKEN_BYTES,
        });
    }
    let sealed: SealedToken = codec::decode("sealed token", bytes, MAX_TOKEN_BYTES)
        .map_err(|e| TokenError::Malformed(e.to_string()))?;
    let header: TokenHeader = codec::decode("token header", &sealed.header, MAX_TOKEN_BYTES)
        .map_err(|e| TokenError::Malformed(e.to_string()))?;
    if header.kind != SEALED_KIND {
        return Err(TokenError::Malformed(format!(
            "header kind is {:?}, expected {SEALED_KIND:?}",
            header.kind
        )));
    }
    if header.version != crate::VERSION {
        return Err(TokenError::Malformed(format!(
            "header version {} is not supported (this build speaks {})",
            header.version,
            crate::VERSION
        )));
    }
    if header.suite != SUITE {
        return Err(TokenError::Malformed(format!(
            "unsupported suite {:?}",
            header.suite
        )));
    }
    Ok((sealed, header))
}

/// Opens a token presented to host `host` holding `key`: size, outer decoding,
/// audience and recipient, HPKE open, signature (issuer or `may_delegate` operator,
/// chained to `verifier`'s trust anchors), claims decoding, and that the claims
/// agree with the header and the signer.
pub fn open(
    bytes: &[u8],
    host: &Name,
    key: &SealingKey,
    verifier: &CredentialVerifier,
) -> Result<Unsealed, TokenError> {
    let (sealed, header) = peek(bytes)?;
    if &header.audience != host {
        return Err(TokenError::WrongAudience {
            audience: header.audience,
            host: host.clone(),
        });
    }
    if header.recipient.as_slice() != key.public {
        return Err(TokenError::WrongRecipient {
            got: hex::encode(header.recipient.as_slice()),
            have: hex::encode(key.public),
        });
    }
    let enc = <SealKem as hpke::Kem>::EncappedKey::from_bytes(sealed.enc.as_slice())
        .map_err(|_| TokenError::CannotOpen)?;
    let plaintext = hpke::single_shot_open::<SealAead, SealKdf, SealKem>(
        &OpModeR::Base,
        &key.private,
        &enc,
        HPKE_INFO,
        &sealed.ciphertext,
        &sealed.header,
    )
    .map_err(|_| TokenError::CannotOpen)?;
    let minted: Minted = codec::decode("minted token", &plaintext, MAX_TOKEN_BYTES)
        .map_err(|e| TokenError::MalformedClaims(e.to_string()))?;
    let (claims, minted_by, signer_key) = match minted.by {
        MinterKind::Issuer => {
            let claims = IssuerSigned::open::<Token>(
                &minted.signed,
                MAX_TOKEN_BYTES,
                verifier.anchors().issuers(),
            )
            .map_err(|e| match e {
                IssuerSignedError::Decode(d) => TokenError::MalformedClaims(d.to_string()),
                IssuerSignedError::UntrustedIssuer(k) => TokenError::UntrustedIssuer(k.to_hex()),
                IssuerSignedError::BadSignature => TokenError::BadSignature,
            })?;
            // The issuer key is inside the envelope just checked; read it back.
            let env: IssuerSigned =
                codec::decode("issuer-signed envelope", &minted.signed, MAX_TOKEN_BYTES)
                    .map_err(|e| TokenError::MalformedClaims(e.to_string()))?;
            (claims, MintedBy::Issuer(env.issuer), env.issuer)
        }
        MinterKind::Operator => {
            let opened = envelope::open::<Token>(&minted.signed, MAX_TOKEN_BYTES, verifier)
                .map_err(|e| match e {
                    OpenError::Envelope(d) | OpenError::Body(d) => {
                        TokenError::MalformedClaims(d.to_string())
                    }
                    OpenError::Credential(c) => TokenError::MinterCredential(c.to_string()),
                    OpenError::BadSignature { .. } => TokenError::BadSignature,
                })?;
            let cred = opened.signer().clone();
            if cred.role != crate::Role::Operator || !cred.may_delegate {
                return Err(TokenError::NotDelegator {
                    minter: cred.name.clone(),
                });
            }
            let key = cred.public_key;
            (opened.body().clone(), MintedBy::Operator(cred), key)
        }
    };
    if claims.issuer != signer_key {
        return Err(TokenError::IssuerMismatch {
            claimed: claims.issuer.to_hex(),
            signed: signer_key.to_hex(),
        });
    }
    if claims.audience != header.audience {
        return Err(TokenError::WrongAudience {
            audience: claims.audience,
            host: host.clone(),
        });
    }
    Ok(Unsealed { claims, minted_by })
}

impl From<DecodeError> for TokenError {
    fn from(e: DecodeError) -> Self {
        TokenError::Malformed(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::Role;
    use crate::trust::TrustAnchors;

    const T: Millis = 1_795_608_000_000;

    struct World {
        issuer: SigningKey,
        op: SigningKey,
        op_cred: Vec<u8>,
        b_seal: SealingKey,
        verifier: CredentialVerifier,
    }

    fn world(may_delegate: bool, op_actions: &[&str]) -> World {
        let issuer = SigningKey::from_seed(&[1; 32]);
        let op = SigningKey::from_seed(&[2; 32]);
        let mut c = Credential::new(
            7,
            Name::new("ops").unwrap(),
            Role::Operator,
            op.public_key(),
            T - 1000,
            T + 86_400_000,
        );
        c.may_delegate = may_delegate;
        c.actions = op_actions
            .iter()
            .map(|a| ActionName::new(*a).unwrap())
            .collect();
        let op_cred = c.issue(&issuer);
        World {
            verifier: CredentialVerifier::new(TrustAnchors::new(vec![issuer.public_key()]), 8),
            issuer,
            op,
            op_cred,
            b_seal: SealingKey::derive(&[3; 32]),
        }
    }

    impl World {
        /// `c` signed by the world's operator and sealed to b.
        fn seal_by_op(&self, c: &Token) -> Vec<u8> {
            let m = Minter::Operator {
                key: &self.op,
                credential: &self.op_cred,
            };
            seal(c, m, &self.b_seal.public()).unwrap()
        }
    }

    fn claims(issuer: PublicKey, actions: &[&str]) -> Token {
        Token::new(
            issuer,
            Name::new("a").unwrap(),
            Name::new("b").unwrap(),
            actions
                .iter()
                .map(|a| ActionName::new(*a).unwrap())
                .collect(),
            vec![],
            T,
            T + 300_000,
            1,
        )
    }

    fn presented<'a>(signer: &'a Name, action: &'a ActionName) -> Presented<'a> {
        Presented {
            signer,
            action,
            unit: Some("web"),
            now: T + 1000,
            skew_ms: 30_000,
            max_ttl_ms: 3_600_000,
        }
    }

    #[test]
    fn operator_token_round_trips_and_checks() {
        let w = world(true, &["status", "logs"]);
        let c = claims(w.op.public_key(), &["status"]);
        let bytes = w.seal_by_op(&c);
        let u = open(&bytes, &Name::new("b").unwrap(), &w.b_seal, &w.verifier).unwrap();
        assert_eq!(u.claims, c);
        let a = Name::new("a").unwrap();
        let status = ActionName::new("status").unwrap();
        u.check(&presented(&a, &status)).unwrap();
        let stop = ActionName::new("stop").unwrap();
        assert_eq!(
            u.check(&presented(&a, &stop)).unwrap_err().reason(),
            "token_action_not_allowed"
        );
        let cc = Name::new("c").unwrap();
        assert_eq!(
            u.check(&presented(&cc, &status)).unwrap_err().reason(),
            "token_wrong_subject"
        );
    }

    #[test]
    fn issuer_token_opens() {
        let w = world(false, &[]);
        let c = claims(w.issuer.public_key(), &["restart"]);
        let bytes = seal(&c, Minter::Issuer(&w.issuer), &w.b_seal.public()).unwrap();
        let u = open(&bytes, &Name::new("b").unwrap(), &w.b_seal, &w.verifier).unwrap();
        assert!(matches!(u.minted_by, MintedBy::Issuer(_)));
    }

    #[test]
    fn every_flipped_byte_is_refused_without_panic() {
        let w = world(true, &["status"]);
        let c = claims(w.op.public_key(), &["status"]);
        let bytes = w.seal_by_op(&c);
        let b = Name::new("b").unwrap();
        for i in 0..bytes.len() {
            let mut x = bytes.clone();
            x[i] ^= 0x01;
            assert!(open(&x, &b, &w.b_seal, &w.verifier).is_err(), "byte {i}");
        }
    }

    #[test]
    fn refusals_have_their_own_reasons() {
        let b = Name::new("b").unwrap();
        // Minter without may_delegate.
        let w = world(false, &["status"]);
        let c = claims(w.op.public_key(), &["status"]);
        let bytes = w.seal_by_op(&c);
        let e = open(&bytes, &b, &w.b_seal, &w.verifier).unwrap_err();
        assert_eq!(e.reason(), "token_not_delegator");
        // Wider than the minter.
        let w = world(true, &["status"]);
        let c = claims(w.op.public_key(), &["status", "stop"]);
        let bytes = w.seal_by_op(&c);
        let u = open(&bytes, &b, &w.b_seal, &w.verifier).unwrap();
        let a = Name::new("a").unwrap();
        let status = ActionName::new("status").unwrap();
        assert_eq!(
            u.check(&presented(&a, &status)).unwrap_err().reason(),
            "token_wider_than_minter"
        );
        // Another audience, another key, random bytes.
        let d = Name::new("d").unwrap();
        assert_eq!(
            open(&bytes, &d, &w.b_seal, &w.verifier)
                .unwrap_err()
                .reason(),
            "token_wrong_audience"
        );
        let other = SealingKey::derive(&[9; 32]);
        assert_eq!(
            open(&bytes, &b, &other, &w.verifier).unwrap_err().reason(),
            "token_wrong_recipient"
        );
        assert_eq!(
            open(&[0xde, 0xad], &b, &w.b_seal, &w.verifier)
                .unwrap_err()
                .reason(),
            "token_malformed"
        );
        assert_eq!(
            open(&vec![0; MAX_TOKEN_BYTES + 1], &b, &w.b_seal, &w.verifier)
                .unwrap_err()
                .reason(),
            "token_oversize"
        );
    }

    #[test]
    fn window_and_ttl_edges() {
        let w = world(true, &["status"]);
        let c = claims(w.op.public_key(), &["status"]);
        let bytes = w.seal_by_op(&c);
        let u = open(&bytes, &Name::new("b").unwrap(), &w.b_seal, &w.verifier).unwrap();
        let a = Name::new("a").unwrap();
        let status = ActionName::new("status").unwrap();
        let at = |now| Presented {
            now,
            ..presented(&a, &status)
        };
        assert!(u.check(&at(T - 30_000)).is_ok());
        assert_eq!(
            u.check(&at(T - 30_001)).unwrap_err().reason(),
            "token_not_yet_valid"
        );
        assert!(u.check(&at(T + 330_000)).is_ok());
        assert_eq!(
            u.check(&at(T + 330_001)).unwrap_err().reason(),
            "token_expired"
        );
        let capped = Presented {
            max_ttl_ms: 299_999,
            ..presented(&a, &status)
        };
        assert_eq!(u.check(&capped).unwrap_err().reason(), "token_ttl_too_long");
    }

    #[test]
    fn unit_scope_requires_a_named_unit_in_scope() {
        let w = world(true, &["status"]);
        let mut c = claims(w.op.public_key(), &["status"]);
        c.units = vec!["web".into()];
        let bytes = w.seal_by_op(&c);
        let u = open(&bytes, &Name::new("b").unwrap(), &w.b_seal, &w.verifier).unwrap();
        let a = Name::new("a").unwrap();
        let status = ActionName::new("status").unwrap();
        assert!(u.check(&presented(&a, &status)).is_ok());
        let none = Presented {
            unit: None,
            ..presented(&a, &status)
        };
        assert_eq!(
            u.check(&none).unwrap_err().reason(),
            "token_unit_not_allowed"
        );
        let db = Presented {
            unit: Some("db"),
            ..presented(&a, &status)
        };
        assert_eq!(u.check(&db).unwrap_err().reason(), "token_unit_not_allowed");
    }

    #[test]
    fn sealing_key_pem_round_trips() {
        let k = SealingKey::derive(&[4; 32]);
        let back = SealingKey::from_pem(&k.to_pem()).unwrap();
        assert_eq!(back.public(), k.public());
        assert!(SealingKey::from_pem("nope").is_err());
        assert!(SealingKey::from_pkcs8(&[0; 48]).is_err());
    }
}
