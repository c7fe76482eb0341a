//! `vectors/enroll-request.bin`, `vectors/enroll-reply.bin` and `vectors/enroll.json`:
//! host `web1` asks to enroll holding a bootstrap secret, and the issuer approves it with
//! the credential of `credential-host.bin`; the proof input, the digests and the
//! messages a receiver must refuse.

use super::{
    HOST_SEED, ISSUER_SEED, SEALING_KEY, T0, check_file, check_json, host_key, issuer_key,
    key_json, name, operator_key, read_vector, signed_message,
};
use gearmq_schemas::enroll::{
    EnrollOutcome, EnrollReply, EnrollRequest, open_reply, open_request, secret_proof_holds,
};
use gearmq_schemas::envelope::{Context, IssuerSigned};
use gearmq_schemas::{codec, sha256};
use serde_json::{Value, json};

/// 2026-01-01T00:00:30Z: when web1 sent its request.
const SENT_AT: u64 = T0 + 30_000;
/// 2026-01-01T00:00:40Z: when the issuer answered.
const ANSWERED_AT: u64 = T0 + 40_000;
/// 2026-01-01T00:02:30Z: when the host opens the answer.
const NOW: u64 = T0 + 150_000;
const REPLY_ID: &str = "00112233445566778899aabbccddeeff";
const SECRET_ID: &str = "0123456789abcdef";
const SECRET: [u8; 32] = [5; 32];

fn request() -> EnrollRequest {
    let mut r = EnrollRequest::new(
        name("web1"),
        host_key().public_key(),
        SEALING_KEY,
        Vec::new(),
        REPLY_ID.into(),
        SENT_AT,
    );
    r.labels.insert("role".into(), "web".into());
    r.prove_secret(SECRET_ID, &SECRET);
    r
}

fn seal(body: Vec<u8>, key: &gearmq_schemas::SigningKey, ctx: Context) -> Vec<u8> {
    let sig = key.sign(ctx, &body);
    codec::encode(&IssuerSigned {
        body,
        issuer: key.public_key(),
        sig: serde_bytes::ByteArray::new(sig),
    })
}

fn reply(request_bytes: &[u8]) -> EnrollReply {
    EnrollReply::approved(
        request_bytes,
        name("web1"),
        read_vector("credential-host.bin"),
        String::new(),
        String::new(),
        ANSWERED_AT,
    )
}

fn refuse_requests(file: &[u8]) -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut flipped = file.to_vec();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    let with = |f: &dyn Fn(&mut EnrollRequest)| {
        let mut r = request();
        f(&mut r);
        seal(codec::encode(&r), &host_key(), Context::EnrollRequest)
    };
    vec![
        (
            "the request signed by the operator key ops, not by the key it names",
            "not_self_signed",
            seal(
                codec::encode(&request()),
                &operator_key(),
                Context::EnrollRequest,
            ),
        ),
        ("last signature bit flipped", "signature", flipped),
        (
            "the request signed under gearmq/v1/request",
            "signature",
            seal(codec::encode(&request()), &host_key(), Context::Request),
        ),
        (
            "reply_id \"../etc\", re-signed",
            "body/malformed",
            with(&|r| r.reply_id = "../etc".into()),
        ),
        (
            "secret_id without secret_proof, re-signed",
            "body/malformed",
            with(&|r| r.secret_proof = None),
        ),
    ]
}

fn refuse_replies(request_bytes: &[u8], file: &[u8]) -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut flipped = file.to_vec();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    let mut other = request();
    other.reply_id = "ffeeddccbbaa99887766554433221100".into();
    let other_bytes = other.seal(&host_key());
    let mut wrong_host = reply(request_bytes);
    wrong_host.host = name("web2");
    vec![
        (
            "the approval signed by the host key web1, which is not the issuer",
            "untrusted_issuer",
            reply(request_bytes).seal(&host_key()),
        ),
        ("last signature bit flipped", "signature", flipped),
        (
            "an approval of another request of web1 (another reply_id)",
            "other_request",
            reply(&other_bytes).seal(&issuer_key()),
        ),
        (
            "the approval naming host web2",
            "other_request",
            wrong_host.seal(&issuer_key()),
        ),
        (
            "an approval carrying credential-operator.bin",
            "credential",
            EnrollReply::approved(
                request_bytes,
                name("web1"),
                read_vector("credential-operator.bin"),
                String::new(),
                String::new(),
                ANSWERED_AT,
            )
            .seal(&issuer_key()),
        ),
    ]
}

fn listing(req_file: &[u8], reply_file: &[u8]) -> Value {
    let req_env: IssuerSigned = codec::decode("envelope", req_file, 1 << 16).unwrap();
    let rep_env: IssuerSigned = codec::decode("envelope", reply_file, 1 << 16).unwrap();
    let r = request();
    let cases = |v: Vec<(&str, &str, Vec<u8>)>| {
        v.into_iter()
            .map(|(what, refused_at, bytes)| {
                json!({"what": what, "refused_at": refused_at, "hex": hex::encode(bytes)})
            })
            .collect::<Vec<_>>()
    };
    json!({
        "about": "Enrollment over the broker (schemas/PROTOCOL.md, Enrollment), built by schemas/tests/vectors/enroll.rs. The request is signed by the key it names (web1's) and proves the bootstrap secret SECRET_ID/SECRET; the reply is the issuer's approval carrying credential-host.bin. must_refuse_request: open as a request; must_refuse_reply: open as web1 would, having sent enroll-request.bin, trusting the issuer key, at now_ms.",
        "now_ms": NOW,
        "request": {
            "file": "enroll-request.bin",
            "hex": hex::encode(req_file),
            "sha256": hex::encode(sha256(req_file)),
            "context": "gearmq/v1/enroll-request",
            "signed_by": key_json("host web1", &HOST_SEED),
            "body_hex": hex::encode(&req_env.body),
            "signed_message_hex": hex::encode(signed_message(Context::EnrollRequest, &req_env.body)),
            "sig": hex::encode(req_env.sig.as_slice()),
            "body": {
                "kind": r.kind, "version": r.version, "host": "web1",
                "signing_key": hex::encode(r.signing_key.0.as_slice()),
                "sealing_key": hex::encode(SEALING_KEY),
                "csr": "", "labels": {"role": "web"}, "reply_id": REPLY_ID,
                "sent_at": SENT_AT, "secret_id": SECRET_ID,
                "secret_proof": hex::encode(r.secret_proof.unwrap().as_slice()),
            },
            "secret": {"id": SECRET_ID, "secret_hex": hex::encode(SECRET),
                       "proof_input_hex": hex::encode(r.proof_input())},
        },
        "reply": {
            "file": "enroll-reply.bin",
            "hex": hex::encode(reply_file),
            "context": "gearmq/v1/enroll-reply",
            "signed_by": key_json("issuer", &ISSUER_SEED),
            "body_hex": hex::encode(&rep_env.body),
            "sig": hex::encode(rep_env.sig.as_slice()),
            "body": {
                "kind": "enroll-reply", "version": 1, "host": "web1",
                "request": hex::encode(sha256(req_file)), "outcome": "approved",
                "credential": "credential-host.bin", "certificate": "",
                "ca_certificate": "", "reason": "", "issued_at": ANSWERED_AT,
            },
        },
        "must_refuse_request": cases(refuse_requests(req_file)),
        "must_refuse_reply": cases(refuse_replies(req_file, reply_file)),
    })
}

#[test]
fn enrollment_vectors_rebuild_and_open() {
    let req_file = request().seal(&host_key());
    check_file("enroll-request.bin", &req_file);
    let reply_file = reply(&req_file).seal(&issuer_key());
    check_file("enroll-reply.bin", &reply_file);
    check_json("enroll.json", &listing(&req_file, &reply_file));

    let req_file = read_vector("enroll-request.bin");
    let r = open_request(&req_file).unwrap();
    assert_eq!(r, request());
    let proof = r.secret_proof.unwrap();
    assert!(secret_proof_holds(&SECRET, &r.proof_input(), &proof));
    assert!(!secret_proof_holds(&[6; 32], &r.proof_input(), &proof));
    let issuer = issuer_key().public_key();
    let ok = open_reply(
        &read_vector("enroll-reply.bin"),
        &issuer,
        &req_file,
        &r,
        NOW,
    )
    .unwrap();
    assert_eq!(ok.outcome, EnrollOutcome::Approved);
    assert_eq!(ok.credential, read_vector("credential-host.bin"));
}

#[test]
fn enrollment_must_refuse_vectors_are_refused_at_the_stated_step() {
    let listing: Value = serde_json::from_slice(&read_vector("enroll.json")).unwrap();
    for case in listing["must_refuse_request"].as_array().unwrap() {
        let what = case["what"].as_str().unwrap();
        let bytes = hex::decode(case["hex"].as_str().unwrap()).unwrap();
        let err = open_request(&bytes)
            .err()
            .unwrap_or_else(|| panic!("{what}: opened, but must be refused"));
        assert_eq!(err.label(), case["refused_at"].as_str().unwrap(), "{what}");
    }
    let req_file = read_vector("enroll-request.bin");
    let r = open_request(&req_file).unwrap();
    let issuer = issuer_key().public_key();
    for case in listing["must_refuse_reply"].as_array().unwrap() {
        let what = case["what"].as_str().unwrap();
        let bytes = hex::decode(case["hex"].as_str().unwrap()).unwrap();
        let err = open_reply(&bytes, &issuer, &req_file, &r, NOW)
            .err()
            .unwrap_or_else(|| panic!("{what}: opened, but must be refused"));
        assert_eq!(err.label(), case["refused_at"].as_str().unwrap(), "{what}");
    }
}
