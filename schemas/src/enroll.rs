//! Enrollment over the broker: a host that holds nothing but the issuer's public key,
//! a broker URL for the bootstrap user and (optionally) a one-time bootstrap secret asks
//! to join; an operator approves or rejects; the answer comes back issuer-signed.
//!
//! The host makes every private key itself and sends only public halves: its Ed25519
//! signing key, its X25519 sealing key and a TLS certificate request. The request is
//! signed by the key it asks a credential for (proof of possession) in the context
//! `gearmq/v1/enroll-request`; a bootstrap secret, when one was given, is proven by an
//! HMAC-SHA256 over the request's keys ([`secret_proof`]) inside the signed body. The
//! answer is an [`EnrollReply`] signed by the issuer in `gearmq/v1/enroll-reply`,
//! bound to the request by its digest: a reply for another request, or signed by any
//! other key, is refused by the host.
//!
//! Nothing in either message is secret: a credential and a certificate are useless
//! without the private keys, which never leave the host.

use crate::codec::DecodeError;
use crate::envelope::{Body, Context, IssuerSigned, IssuerSignedError};
use crate::keys::{PublicKey, SigningKey};
use crate::names::Name;
use crate::time::Millis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Largest enrollment request accepted, in bytes (envelope included).
pub const MAX_ENROLL_REQUEST_BYTES: usize = 16 * 1024;
/// Largest certificate signing request (DER) in a request.
pub const MAX_CSR_BYTES: usize = 4096;
/// Largest enrollment reply accepted, in bytes.
pub const MAX_ENROLL_REPLY_BYTES: usize = 64 * 1024;
/// Most labels a host may ask for.
pub const MAX_LABELS: usize = 32;

/// The domain-separation prefix of a bootstrap secret's proof.
pub const SECRET_PROOF_TAG: &[u8] = b"gearmq/v1/enroll-secret";

/// A host's request to join, signed by the signing key it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// Always `"enroll-request"`.
    pub kind: String,
    /// Protocol version.
    pub version: u16,
    /// The name the host asks for.
    pub host: Name,
    /// The Ed25519 key the credential is to bind; the request is signed by it.
    pub signing_key: PublicKey,
    /// The X25519 key delegation tokens for the host are to be sealed to.
    pub sealing_key: serde_bytes::ByteArray<32>,
    /// A PKCS#10 certificate request (DER) for the host's TLS key, common name = `host`;
    /// empty when the host asks for no certificate.
    #[serde(with = "serde_bytes")]
    pub csr: Vec<u8>,
    /// Labels the host proposes (the operator decides).
    pub labels: BTreeMap<String, String>,
    /// The reply queue's suffix: 32 lowercase hex digits the host drew at random; the
    /// answer goes to `gearmq.enroll.reply.<reply_id>`.
    pub reply_id: String,
    /// When the host sent it (ms since epoch).
    pub sent_at: Millis,
    /// The id of the bootstrap secret the host holds, if any (16 lowercase hex).
    pub secret_id: Option<String>,
    /// HMAC-SHA256 of [`secret_proof_input`] under that secret; present exactly when
    /// `secret_id` is.
    pub secret_proof: Option<serde_bytes::ByteArray<32>>,
}

/// What the operator decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollOutcome {
    /// The host may join: `credential` (and `certificate` when a CSR was sent) hold it.
    Approved,
    /// The host may not join; `reason` says why.
    Rejected,
}

/// The issuer-signed answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollReply {
    /// Always `"enroll-reply"`.
    pub kind: String,
    /// Protocol version.
    pub version: u16,
    /// The host answered.
    pub host: Name,
    /// SHA-256 of the request's `IssuerSigned` envelope bytes, as received.
    pub request: serde_bytes::ByteArray<32>,
    /// Approved or rejected.
    pub outcome: EnrollOutcome,
    /// The host credential (an encoded `IssuerSigned` credential), when approved.
    #[serde(with = "serde_bytes")]
    pub credential: Vec<u8>,
    /// The host's TLS client certificate (PEM), when approved and a CSR was sent.
    pub certificate: String,
    /// The CA certificate that signed it (PEM): the broker's TLS trust anchor.
    pub ca_certificate: String,
    /// Why, when rejected (at most 256 bytes).
    pub reason: String,
    /// When the issuer signed it.
    pub issued_at: Millis,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && crate::names::is_lower_hex(s)
}

impl Body for EnrollRequest {
    const CONTEXT: Context = Context::EnrollRequest;
    fn kind(&self) -> &str {
        &self.kind
    }
    fn version(&self) -> u16 {
        self.version
    }
    fn validate(&self) -> Result<(), String> {
        if self.csr.len() > MAX_CSR_BYTES {
            return Err(format!("csr longer than {MAX_CSR_BYTES} bytes"));
        }
        if self.labels.len() > MAX_LABELS {
            return Err(format!("more than {MAX_LABELS} labels"));
        }
        for (k, v) in &self.labels {
            crate::names::check_label_key(k).map_err(|e| e.to_string())?;
            crate::names::check_label_value(v).map_err(|e| e.to_string())?;
        }
        if !is_hex(&self.reply_id, 32) {
            return Err("reply_id is not 32 lowercase hex digits".into());
        }
        match (&self.secret_id, &self.secret_proof) {
            (Some(id), Some(_)) if is_hex(id, 16) => Ok(()),
            (Some(_), Some(_)) => Err("secret_id is not 16 lowercase hex digits".into()),
            (None, None) => Ok(()),
            _ => Err("secret_id and secret_proof come together".into()),
        }
    }
}

impl Body for EnrollReply {
    const CONTEXT: Context = Context::EnrollReply;
    fn kind(&self) -> &str {
        &self.kind
    }
    fn version(&self) -> u16 {
        self.version
    }
    fn validate(&self) -> Result<(), String> {
        match self.outcome {
            EnrollOutcome::Approved if self.credential.is_empty() => {
                Err("approved without a credential".into())
            }
            EnrollOutcome::Rejected if !self.credential.is_empty() => {
                Err("rejected with a credential".into())
            }
            _ if self.reason.len() > 256 => Err("reason longer than 256 bytes".into()),
            _ => Ok(()),
        }
    }
}

/// The bytes a bootstrap secret's HMAC covers:
/// `"gearmq/v1/enroll-secret" ‖ 0x00 ‖ host ‖ 0x00 ‖ signing_key (32) ‖ sealing_key (32)
/// ‖ SHA-256(csr) (32) ‖ reply_id (32 ASCII)`. It binds the secret to the name, every
/// key asked for and the reply queue, so a copied proof is useless for other keys.
pub fn secret_proof_input(
    host: &Name,
    signing_key: &PublicKey,
    sealing_key: &[u8; 32],
    csr: &[u8],
    reply_id: &str,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(200);
    m.extend_from_slice(SECRET_PROOF_TAG);
    m.push(0);
    m.extend_from_slice(host.as_str().as_bytes());
    m.push(0);
    m.extend_from_slice(signing_key.0.as_slice());
    m.extend_from_slice(sealing_key);
    m.extend_from_slice(&crate::sha256(csr));
    m.extend_from_slice(reply_id.as_bytes());
    m
}

/// HMAC-SHA256 of `input` under `secret`.
pub fn secret_proof(secret: &[u8], input: &[u8]) -> [u8; 32] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, input);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Whether `proof` is the HMAC of `input` under `secret` (constant time).
pub fn secret_proof_holds(secret: &[u8], input: &[u8], proof: &[u8; 32]) -> bool {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::verify(&key, input, proof).is_ok()
}

impl EnrollRequest {
    /// A request for `host` with the given keys; [`EnrollRequest::prove_secret`] adds a
    /// bootstrap secret's proof.
    pub fn new(
        host: Name,
        signing_key: PublicKey,
        sealing_key: [u8; 32],
        csr: Vec<u8>,
        reply_id: String,
        sent_at: Millis,
    ) -> Self {
        EnrollRequest {
            kind: Context::EnrollRequest.kind().to_string(),
            version: crate::VERSION,
            host,
            signing_key,
            sealing_key: serde_bytes::ByteArray::new(sealing_key),
            csr,
            labels: BTreeMap::new(),
            reply_id,
            sent_at,
            secret_id: None,
            secret_proof: None,
        }
    }

    /// The bytes this request's secret proof covers.
    pub fn proof_input(&self) -> Vec<u8> {
        secret_proof_input(
            &self.host,
            &self.signing_key,
            &self.sealing_key,
            &self.csr,
            &self.reply_id,
        )
    }

    /// Adds the proof of holding bootstrap secret `id`.
    pub fn prove_secret(&mut self, id: &str, secret: &[u8]) {
        let proof = secret_proof(secret, &self.proof_input());
        self.secret_id = Some(id.to_string());
        self.secret_proof = Some(serde_bytes::ByteArray::new(proof));
    }

    /// Signs it with the host's new key, which must be the one it names: the bytes sent.
    pub fn seal(&self, key: &SigningKey) -> Vec<u8> {
        debug_assert_eq!(key.public_key(), self.signing_key);
        IssuerSigned::seal(self, key)
    }
}

/// Why an enrollment message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrollError {
    /// The envelope or the body did not decode, or the signature failed.
    #[error("{0}")]
    Signed(String),
    /// The request is signed by a key other than the one it asks a credential for.
    #[error("the request is signed by {signer}, not by the key it names ({named})")]
    NotSelfSigned {
        /// The envelope's key.
        signer: PublicKey,
        /// The body's `signing_key`.
        named: PublicKey,
    },
    /// The reply answers another request or another host.
    #[error("the reply answers another request")]
    OtherRequest,
    /// The reply's credential does not match what was asked.
    #[error("the credential in the reply {0}")]
    BadCredential(String),
}

impl EnrollError {
    /// The refusal label: `envelope/…`, `signature`, `body/…`, `untrusted_issuer`,
    /// `not_self_signed`, `other_request` or `credential`.
    pub fn label(&self) -> String {
        match self {
            EnrollError::Signed(l) => l.clone(),
            EnrollError::NotSelfSigned { .. } => "not_self_signed".into(),
            EnrollError::OtherRequest => "other_request".into(),
            EnrollError::BadCredential(_) => "credential".into(),
        }
    }
}

fn signed_error(e: IssuerSignedError) -> EnrollError {
    EnrollError::Signed(e.label())
}

/// Opens a request: decodes the envelope, checks the signature under the envelope's key,
/// decodes the body and checks that key is the one the body names. Says nothing about
/// the bootstrap secret (the operator's side holds those).
pub fn open_request(bytes: &[u8]) -> Result<EnrollRequest, EnrollError> {
    let env: IssuerSigned =
        crate::codec::decode("issuer-signed envelope", bytes, MAX_ENROLL_REQUEST_BYTES)
            .map_err(|e: DecodeError| EnrollError::Signed(format!("envelope/{}", e.label())))?;
    let req: EnrollRequest =
        IssuerSigned::open(bytes, MAX_ENROLL_REQUEST_BYTES, &[env.issuer]).map_err(signed_error)?;
    if req.signing_key != env.issuer {
        return Err(EnrollError::NotSelfSigned {
            signer: env.issuer,
            named: req.signing_key,
        });
    }
    Ok(req)
}

impl EnrollReply {
    /// An approval carrying `credential` and the TLS certificates.
    pub fn approved(
        request: &[u8],
        host: Name,
        credential: Vec<u8>,
        certificate: String,
        ca_certificate: String,
        issued_at: Millis,
    ) -> Self {
        EnrollReply {
            kind: Context::EnrollReply.kind().to_string(),
            version: crate::VERSION,
            host,
            request: serde_bytes::ByteArray::new(crate::sha256(request)),
            outcome: EnrollOutcome::Approved,
            credential,
            certificate,
            ca_certificate,
            reason: String::new(),
            issued_at,
        }
    }

    /// A rejection saying `reason`.
    pub fn rejected(request: &[u8], host: Name, reason: &str, issued_at: Millis) -> Self {
        let mut reason = reason.to_string();
        while reason.len() > 256 {
            reason.pop();
        }
        EnrollReply {
            kind: Context::EnrollReply.kind().to_string(),
            version: crate::VERSION,
            host,
            request: serde_bytes::ByteArray::new(crate::sha256(request)),
            outcome: EnrollOutcome::Rejected,
            credential: Vec::new(),
            certificate: String::new(),
            ca_certificate: String::new(),
            reason,
            issued_at,
        }
    }

    /// Signs it with the issuer key: the bytes sent.
    pub fn seal(&self, issuer: &SigningKey) -> Vec<u8> {
        IssuerSigned::seal(self, issuer)
    }
}

/// Opens a reply on the host: signed by `issuer`, answering exactly `request` (the
/// envelope bytes the host sent) for `host`; an approval's credential must be issued
/// by `issuer` to `host` as a host, for the signing and sealing keys the host asked.
pub fn open_reply(
    bytes: &[u8],
    issuer: &PublicKey,
    request: &[u8],
    asked: &EnrollRequest,
    now: Millis,
) -> Result<EnrollReply, EnrollError> {
    let reply: EnrollReply =
        IssuerSigned::open(bytes, MAX_ENROLL_REPLY_BYTES, &[*issuer]).map_err(signed_error)?;
    if reply.request.as_slice() != crate::sha256(request) || reply.host != asked.host {
        return Err(EnrollError::OtherRequest);
    }
    if reply.outcome == EnrollOutcome::Approved {
        let cred = crate::credential::verify_credential(&reply.credential, &[*issuer])
            .map_err(|e| EnrollError::BadCredential(e.to_string()))?;
        if now < cred.not_before || now >= cred.not_after {
            return Err(EnrollError::BadCredential("is not valid now".into()));
        }
        if cred.name != asked.host
            || cred.role != crate::Role::Host
            || cred.public_key != asked.signing_key
            || cred.sealing_key.as_ref().map(|k| **k) != Some(*asked.sealing_key)
        {
            return Err(EnrollError::BadCredential(
                "is not for this host's name, role and keys".into(),
            ));
        }
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(key: &SigningKey) -> EnrollRequest {
        EnrollRequest::new(
            Name::new("web1").unwrap(),
            key.public_key(),
            [7; 32],
            vec![1, 2, 3],
            "0123456789abcdef0123456789abcdef".into(),
            1_000,
        )
    }

    #[test]
    fn a_request_opens_only_when_signed_by_the_key_it_names() {
        let (k, _) = SigningKey::generate().unwrap();
        let (other, _) = SigningKey::generate().unwrap();
        let r = request(&k);
        assert_eq!(open_request(&r.seal(&k)).unwrap(), r);
        let forged = IssuerSigned::seal(&r, &other);
        assert_eq!(
            open_request(&forged).unwrap_err().label(),
            "not_self_signed"
        );
        let mut bytes = r.seal(&k);
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        assert_eq!(open_request(&bytes).unwrap_err().label(), "signature");
    }

    #[test]
    fn the_secret_proof_binds_name_keys_and_reply_queue() {
        let (k, _) = SigningKey::generate().unwrap();
        let mut r = request(&k);
        r.prove_secret("00112233445566ff", b"secret");
        let proof = *r.secret_proof.unwrap();
        assert!(secret_proof_holds(b"secret", &r.proof_input(), &proof));
        assert!(!secret_proof_holds(b"other", &r.proof_input(), &proof));
        let mut moved = r.clone();
        moved.reply_id = "f".repeat(32);
        assert!(!secret_proof_holds(b"secret", &moved.proof_input(), &proof));
        let mut renamed = r.clone();
        renamed.host = Name::new("web2").unwrap();
        assert!(!secret_proof_holds(
            b"secret",
            &renamed.proof_input(),
            &proof
        ));
    }

    #[test]
    fn bad_fields_are_refused() {
        let (k, _) = SigningKey::generate().unwrap();
        let mut r = request(&k);
        r.reply_id = "../x".into();
        assert!(open_request(&r.seal(&k)).is_err());
        let mut r = request(&k);
        r.secret_id = Some("00112233445566ff".into());
        assert!(open_request(&r.seal(&k)).is_err());
        let mut r = request(&k);
        r.csr = vec![0; MAX_CSR_BYTES + 1];
        assert!(open_request(&r.seal(&k)).is_err());
    }

    #[test]
    fn a_reply_must_answer_this_request_from_this_issuer() {
        let (host, _) = SigningKey::generate().unwrap();
        let (issuer, _) = SigningKey::generate().unwrap();
        let (other, _) = SigningKey::generate().unwrap();
        let r = request(&host);
        let sent = r.seal(&host);
        let mut cred = crate::Credential::new(
            1,
            r.host.clone(),
            crate::Role::Host,
            host.public_key(),
            0,
            u64::MAX / 2,
        );
        cred.sealing_key = Some(serde_bytes::ByteArray::new([7; 32]));
        let reply = EnrollReply::approved(
            &sent,
            r.host.clone(),
            cred.issue(&issuer),
            String::new(),
            String::new(),
            5,
        );
        let ok = open_reply(&reply.seal(&issuer), &issuer.public_key(), &sent, &r, 10).unwrap();
        assert_eq!(ok.outcome, EnrollOutcome::Approved);
        assert_eq!(
            open_reply(&reply.seal(&other), &issuer.public_key(), &sent, &r, 10)
                .unwrap_err()
                .label(),
            "untrusted_issuer"
        );
        let elsewhere = request(&other).seal(&other);
        assert_eq!(
            open_reply(
                &reply.seal(&issuer),
                &issuer.public_key(),
                &elsewhere,
                &r,
                10
            )
            .unwrap_err()
            .label(),
            "other_request"
        );
        // A credential for another key, even issuer-signed, is refused.
        let mut wrong = cred.clone();
        wrong.public_key = other.public_key();
        let bad = EnrollReply::approved(
            &sent,
            r.host.clone(),
            wrong.issue(&issuer),
            String::new(),
            String::new(),
            5,
        );
        assert_eq!(
            open_reply(&bad.seal(&issuer), &issuer.public_key(), &sent, &r, 10)
                .unwrap_err()
                .label(),
            "credential"
        );
    }
}
