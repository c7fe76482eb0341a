//! Fuzz entry points: one per decoder of untrusted bytes.
//!
//! Each takes arbitrary bytes, runs them through a decoder the way a receiver would
//! (with the vector issuer, seed `[1; 32]`, trusted) and throws the result away. None
//! may panic. `schemas/fuzz` drives them with libFuzzer on nightly, and
//! `tests/fuzz_corpus.rs` replays the checked-in corpus on stable.

use crate::actions::{InstallArgs, MAX_ARGS_BYTES};
use crate::audit::{self, AuditRecord, VerifyOptions};
use crate::credential::verify_credential;
use crate::envelope::{self, IssuerSigned, Signed};
use crate::event::{Event, event_route};
use crate::revocation::verify_revocation;
use crate::{
    CredentialVerifier, DEFAULT_MAX_MESSAGE_BYTES, PublicKey, Reply, Request, SigningKey,
    TrustAnchors, codec,
};

/// The seed of the trusted issuer: the one the test vectors are signed with.
pub const ISSUER_SEED: [u8; 32] = [1; 32];

fn issuer() -> PublicKey {
    SigningKey::from_seed(&ISSUER_SEED).public_key()
}

fn anchors() -> TrustAnchors {
    TrustAnchors::new(vec![issuer()])
}

/// A fresh verifier per input, so no input's outcome depends on an earlier one's cache.
fn verifier() -> CredentialVerifier {
    CredentialVerifier::new(anchors(), 16)
}

/// Opens `data` as a signed request, as an agent does with what its queue delivers.
pub fn request(data: &[u8]) {
    let _ = envelope::open::<Request>(data, DEFAULT_MAX_MESSAGE_BYTES, &verifier());
}

/// Opens `data` as a signed reply, as the orchestrator does on its reply queue.
pub fn reply(data: &[u8]) {
    let _ = envelope::open::<Reply>(data, DEFAULT_MAX_MESSAGE_BYTES, &verifier());
}

/// Opens `data` as a signed event, as an orchestrator does with what the events stream
/// delivers, and derives the routing key it must have come with.
pub fn event(data: &[u8]) {
    if let Ok(e) = envelope::open::<Event>(data, DEFAULT_MAX_MESSAGE_BYTES, &verifier()) {
        let _ = event_route(&e.body().host, &e.body().what);
    }
}

/// Verifies `data` as an issuer-signed credential (a `.cred` file or a signer field).
pub fn credential(data: &[u8]) {
    let _ = verify_credential(data, &[issuer()]);
    let _ = verifier().verify(data);
}

/// The X25519 private key the token target opens with: RFC 7748 §6.1 Alice, whose
/// public key is `web1`'s sealing key in the vectors.
pub const SEALING_PRIVATE: [u8; 32] = [
    0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2, 0x66, 0x45,
    0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5, 0x1d, 0xb9, 0x2c, 0x2a,
];

/// Opens `data` as a delegation token presented to host `web1` (with its sealing key),
/// then judges it for a `status` request, as an agent does with `Request.token`.
pub fn token(data: &[u8]) {
    let Ok(key) = crate::token::SealingKey::from_bytes(&SEALING_PRIVATE) else {
        return;
    };
    let Ok(host) = crate::Name::new("web1") else {
        return;
    };
    if let Ok(u) = crate::token::open(data, &host, &key, &verifier()) {
        let signer = u.claims.subject.clone();
        let _ = u.check(&crate::token::Presented {
            signer: &signer,
            action: &u.claims.actions[0],
            unit: u.claims.units.first().map(String::as_str),
            now: u.claims.not_before,
            skew_ms: 30_000,
            max_ttl_ms: 3_600_000,
        });
    }
}

/// Verifies `data` as an issuer-signed revocation list.
pub fn revocation(data: &[u8]) {
    let _ = verify_revocation(data, &[issuer()]);
}

/// Reads `data` as one audit log file: its frames, each record unverified (as
/// `gearmq audit show` does), then the whole chain verified (as `gearmq audit verify`).
pub fn audit_log(data: &[u8]) {
    for frame in audit::frames(data) {
        match frame {
            Ok(frame) => {
                let _ = audit::read_record(frame.bytes);
            }
            Err(_) => break,
        }
    }
    let _ = audit::verify_log(&[("fuzz.log", data)], &anchors(), &VerifyOptions::default());
}

/// Decodes `data` as `install` arguments and validates the unit spec, as the agent
/// does before it writes a unit file.
pub fn unit_spec(data: &[u8]) {
    if let Ok(args) = codec::decode::<InstallArgs>("install args", data, MAX_ARGS_BYTES) {
        let _ = args.spec.validate();
    }
}

/// Decodes `data` as the outer envelopes alone and peeks inside without checking
/// signatures, as the audit tools do when they display embedded messages.
pub fn envelope(data: &[u8]) {
    let _ = Signed::decode(data, DEFAULT_MAX_MESSAGE_BYTES);
    let _ =
        codec::decode::<IssuerSigned>("issuer-signed envelope", data, DEFAULT_MAX_MESSAGE_BYTES);
    let _ = audit::peek_signed::<Request>(data, DEFAULT_MAX_MESSAGE_BYTES);
    let _ = audit::peek_signed::<Reply>(data, DEFAULT_MAX_MESSAGE_BYTES);
    let _ = audit::peek_signed::<Event>(data, DEFAULT_MAX_MESSAGE_BYTES);
    let _ = audit::peek_signed::<AuditRecord>(data, audit::MAX_RECORD_BYTES);
}
