//! Signed envelopes and the opening of signed messages.
//!
//! A message on the wire is a [`Signed`] envelope: the body bytes, the signer's whole
//! credential (itself an [`IssuerSigned`] envelope, as bytes) and an Ed25519 signature
//! over `context ‖ body`. The context is a fixed ASCII tag per message kind and every
//! body also carries its `kind`, so no signed bytes can be read as another kind. The
//! signature covers the exact body bytes; nothing is ever re-encoded before checking.

use crate::codec::{self, DecodeError};
use crate::credential::{Credential, CredentialError};
use crate::keys::PublicKey;
use crate::names::Name;
use crate::trust::CredentialVerifier;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::sync::Arc;

/// The kinds of signed things, each with its own signing context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Context {
    /// An issuer-signed credential.
    Credential,
    /// A request from an operator (or a delegating host).
    Request,
    /// A reply from a host.
    Reply,
    /// A delegation token's claims.
    Token,
    /// An issuer-signed revocation list.
    Revocation,
    /// An audit log record.
    Audit,
    /// A host's request to enroll, signed by the key it asks a credential for.
    EnrollRequest,
    /// The issuer's answer to an enrollment request.
    EnrollReply,
    /// An event a host publishes of itself (started, alive, stopping, unit).
    Event,
}

/// Alias kept for readers who think of the body's `kind` field.
pub type Kind = Context;

impl Context {
    /// The ASCII tag prefixed to the body before signing. No tag is a prefix of another.
    pub fn tag(self) -> &'static [u8] {
        match self {
            Context::Credential => b"gearmq/v1/credential",
            Context::Request => b"gearmq/v1/request",
            Context::Reply => b"gearmq/v1/reply",
            Context::Token => b"gearmq/v1/token",
            Context::Revocation => b"gearmq/v1/revocation",
            Context::Audit => b"gearmq/v1/audit",
            Context::EnrollRequest => b"gearmq/v1/enroll-request",
            Context::EnrollReply => b"gearmq/v1/enroll-reply",
            Context::Event => b"gearmq/v1/event",
        }
    }

    /// The value of the body's `kind` field.
    pub fn kind(self) -> &'static str {
        match self {
            Context::Credential => "credential",
            Context::Request => "request",
            Context::Reply => "reply",
            Context::Token => "token",
            Context::Revocation => "revocation",
            Context::Audit => "audit",
            Context::EnrollRequest => "enroll-request",
            Context::EnrollReply => "enroll-reply",
            Context::Event => "event",
        }
    }
}

/// A body type that travels signed.
pub trait Body: Serialize + DeserializeOwned {
    /// Its signing context.
    const CONTEXT: Context;
    /// The `kind` field as decoded.
    fn kind(&self) -> &str;
    /// The `version` field as decoded.
    fn version(&self) -> u16;
    /// Checks beyond the types (field relations, formats). Called after decoding.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Decodes a body strictly and checks its kind, version and own rules.
pub fn decode_body<B: Body>(bytes: &[u8], max: usize) -> Result<B, DecodeError> {
    let what = B::CONTEXT.kind();
    let body: B = codec::decode(what, bytes, max)?;
    if body.kind() != what {
        return Err(DecodeError::WrongKind {
            expected: what,
            got: body.kind().to_string(),
        });
    }
    if body.version() != crate::VERSION {
        return Err(DecodeError::UnsupportedVersion {
            got: body.version(),
            supported: crate::VERSION,
        });
    }
    body.validate()
        .map_err(|reason| DecodeError::Malformed { what, reason })?;
    Ok(body)
}

/// A message signed by the holder of a credential (requests, replies, audit records).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    /// The encoded body; the signature covers exactly these bytes.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// The signer's credential: an encoded [`IssuerSigned`] envelope.
    #[serde(with = "serde_bytes")]
    pub signer: Vec<u8>,
    /// Ed25519 signature over `context ‖ body`.
    pub sig: serde_bytes::ByteArray<64>,
}

/// Something signed directly by an issuer key (credentials, revocation lists).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSigned {
    /// The encoded body.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// The issuer's public key; must be one of the receiver's trusted issuers.
    pub issuer: PublicKey,
    /// Ed25519 signature over `context ‖ body`.
    pub sig: serde_bytes::ByteArray<64>,
}

impl Signed {
    /// Signs `body` with `key` and wraps it with the signer's encoded credential.
    pub fn seal<B: Body>(body: &B, key: &crate::SigningKey, credential: &[u8]) -> Vec<u8> {
        Signed::seal_bytes(B::CONTEXT, codec::encode(body), key, credential)
    }

    /// Signs already-encoded body bytes (for tests and tools that build odd messages).
    pub fn seal_bytes(
        ctx: Context,
        body: Vec<u8>,
        key: &crate::SigningKey,
        credential: &[u8],
    ) -> Vec<u8> {
        let sig = key.sign(ctx, &body);
        codec::encode(&Signed {
            body,
            signer: credential.to_vec(),
            sig: serde_bytes::ByteArray::new(sig),
        })
    }

    /// Decodes the envelope only (no signature checked).
    pub fn decode(bytes: &[u8], max: usize) -> Result<Signed, DecodeError> {
        codec::decode("envelope", bytes, max)
    }
}

/// Why an issuer-signed body (credential, revocation list) was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssuerSignedError {
    /// The `IssuerSigned` envelope did not decode.
    Envelope(DecodeError),
    /// Signed by a key that is not a trusted issuer.
    UntrustedIssuer(PublicKey),
    /// The issuer signature does not match.
    BadSignature,
    /// The signature holds but the body does not decode.
    Body(DecodeError),
}

impl IssuerSignedError {
    /// The protocol's refusal label: `envelope/<decode label>`, `untrusted_issuer`,
    /// `signature` or `body/<decode label>`.
    pub fn label(&self) -> String {
        match self {
            IssuerSignedError::Envelope(d) => format!("envelope/{}", d.label()),
            IssuerSignedError::UntrustedIssuer(_) => "untrusted_issuer".into(),
            IssuerSignedError::BadSignature => "signature".into(),
            IssuerSignedError::Body(d) => format!("body/{}", d.label()),
        }
    }
}

impl IssuerSigned {
    /// Signs `body` with the issuer key: the bytes of a `.cred` or revocation file.
    pub fn seal<B: Body>(body: &B, issuer: &crate::SigningKey) -> Vec<u8> {
        let body = codec::encode(body);
        let sig = issuer.sign(B::CONTEXT, &body);
        codec::encode(&IssuerSigned {
            body,
            issuer: issuer.public_key(),
            sig: serde_bytes::ByteArray::new(sig),
        })
    }

    /// Decodes an issuer-signed `B`, checking the issuer is one of `trusted` and the
    /// signature holds, then decoding the body strictly.
    pub fn open<B: Body>(
        bytes: &[u8],
        max: usize,
        trusted: &[PublicKey],
    ) -> Result<B, IssuerSignedError> {
        let env: IssuerSigned = codec::decode("issuer-signed envelope", bytes, max)
            .map_err(IssuerSignedError::Envelope)?;
        if !trusted.contains(&env.issuer) {
            return Err(IssuerSignedError::UntrustedIssuer(env.issuer));
        }
        env.issuer
            .verify(B::CONTEXT, &env.body, env.sig.as_slice())
            .map_err(|_| IssuerSignedError::BadSignature)?;
        decode_body::<B>(&env.body, max).map_err(IssuerSignedError::Body)
    }
}

/// Why a signed message could not be opened. Every variant means the sender is not
/// proven, so none of them may be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The envelope did not decode (size, format).
    #[error("envelope: {0}")]
    Envelope(DecodeError),
    /// The signer's credential is not valid or not from a trusted issuer.
    #[error("signer credential: {0}")]
    Credential(CredentialError),
    /// The signature does not match the body and the signer's key.
    #[error("signature invalid (claimed signer {signer})")]
    BadSignature {
        /// The name in the credential that failed to sign.
        signer: Name,
    },
    /// The signature holds but the body does not decode.
    #[error("body: {0}")]
    Body(DecodeError),
}

impl OpenError {
    /// The protocol's refusal label, naming the step that refused: `envelope/<decode
    /// label>`, `credential/<credential label>`, `signature` or `body/<decode label>`
    /// (PROTOCOL.md, "Refusal labels").
    pub fn label(&self) -> String {
        match self {
            OpenError::Envelope(d) => format!("envelope/{}", d.label()),
            OpenError::Credential(c) => format!("credential/{}", c.label()),
            OpenError::BadSignature { .. } => "signature".into(),
            OpenError::Body(d) => format!("body/{}", d.label()),
        }
    }

    /// A short stable label for counters and logs (an agent's dead-letter reason).
    pub fn reason(&self) -> &'static str {
        match self {
            OpenError::Envelope(DecodeError::TooLarge { .. }) => "oversize",
            OpenError::Envelope(_) => "malformed",
            OpenError::Credential(_) => "bad_credential",
            OpenError::BadSignature { .. } => "bad_signature",
            OpenError::Body(_) => "malformed_body",
        }
    }
}

/// A message whose signature was checked against a credential that chains to a trusted
/// issuer. Only [`open`] builds one. Time windows, revocation, roles and replay are the
/// receiver's next checks.
#[derive(Debug, Clone)]
pub struct Opened<B> {
    body: B,
    body_bytes: Vec<u8>,
    digest: [u8; 32],
    signer: Arc<Credential>,
}

impl<B> Opened<B> {
    /// The decoded body.
    pub fn body(&self) -> &B {
        &self.body
    }

    /// The exact body bytes the signature covers.
    pub fn body_bytes(&self) -> &[u8] {
        &self.body_bytes
    }

    /// SHA-256 of the body bytes (a reply's `request_digest` for requests).
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// The signer's verified credential (signature and issuer checked, window not).
    pub fn signer(&self) -> &Arc<Credential> {
        &self.signer
    }
}

/// Opens a signed message: size, envelope, credential chain, signature, then body.
pub fn open<B: Body>(
    bytes: &[u8],
    max: usize,
    verifier: &CredentialVerifier,
) -> Result<Opened<B>, OpenError> {
    let env = Signed::decode(bytes, max).map_err(OpenError::Envelope)?;
    let signer = verifier
        .verify(&env.signer)
        .map_err(OpenError::Credential)?;
    signer
        .public_key
        .verify(B::CONTEXT, &env.body, env.sig.as_slice())
        .map_err(|_| OpenError::BadSignature {
            signer: signer.name.clone(),
        })?;
    let body = decode_body::<B>(&env.body, max).map_err(OpenError::Body)?;
    let digest = crate::sha256(&env.body);
    Ok(Opened {
        body,
        body_bytes: env.body,
        digest,
        signer,
    })
}
