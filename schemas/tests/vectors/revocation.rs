//! `vectors/revocation-list.bin` and `vectors/revocation.json`: an issuer-signed
//! revocation list, which credentials it revokes, the lists a receiver must refuse, and
//! the sequence rule.

use super::{
    DAY_MS, ISSUER_SEED, T0, check_file, check_json, host_key, issuer_key, key_json, name,
    read_vector, signed_message,
};
use gearmq_schemas::credential::{Credential, Role};
use gearmq_schemas::envelope::{Context, IssuerSigned};
use gearmq_schemas::revocation::{RevocationList, Revocations, RevokedName, verify_revocation};
use gearmq_schemas::time::Millis;
use gearmq_schemas::{SigningKey, VERSION, codec, sha256};
use serde_json::{Value, json};

/// 2026-01-01T00:02:00Z: when the list was signed.
const ISSUED_AT: Millis = T0 + 120_000;
const SEQUENCE: u64 = 2;
/// Credentials of the revoked names valid from before this are revoked.
const BEFORE: Millis = T0 + DAY_MS;

fn list() -> RevocationList {
    RevocationList {
        kind: "revocation".into(),
        version: VERSION,
        sequence: SEQUENCE,
        issued_at: ISSUED_AT,
        serials: vec![7, 9],
        names: vec![
            RevokedName {
                name: name("db3"),
                before: BEFORE,
            },
            RevokedName {
                name: name("web9"),
                before: BEFORE,
            },
        ],
    }
}

/// `body` signed by `key` under `ctx`, as an `IssuerSigned` envelope.
fn seal(body: Vec<u8>, key: &SigningKey, ctx: Context) -> Vec<u8> {
    let sig = key.sign(ctx, &body);
    codec::encode(&IssuerSigned {
        body,
        issuer: key.public_key(),
        sig: serde_bytes::ByteArray::new(sig),
    })
}

fn with(f: impl FnOnce(&mut RevocationList)) -> Vec<u8> {
    let mut l = list();
    f(&mut l);
    seal(codec::encode(&l), &issuer_key(), Context::Revocation)
}

fn must_refuse(file: &[u8]) -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut flipped = file.to_vec();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    let mut trailing = file.to_vec();
    trailing.push(0xc0);
    vec![
        (
            "the list signed by the host key web1, which is no trusted issuer",
            "untrusted_issuer",
            seal(codec::encode(&list()), &host_key(), Context::Revocation),
        ),
        ("last signature bit flipped", "signature", flipped),
        (
            "the list signed under the context tag gearmq/v1/credential",
            "signature",
            seal(codec::encode(&list()), &issuer_key(), Context::Credential),
        ),
        (
            "credential-host.bin opened as a revocation list",
            "signature",
            read_vector("credential-host.bin"),
        ),
        (
            "revocation-list.bin followed by one byte 0xc0",
            "envelope/trailing_bytes",
            trailing,
        ),
        (
            "serials [9, 7], re-signed",
            "body/malformed",
            with(|l| l.serials = vec![9, 7]),
        ),
        (
            "serials [7, 7], re-signed",
            "body/malformed",
            with(|l| l.serials = vec![7, 7]),
        ),
        (
            "names in the order web9, db3, re-signed",
            "body/malformed",
            with(|l| l.names.reverse()),
        ),
        (
            "web9 named twice, with two `before` times, re-signed",
            "body/malformed",
            with(|l| {
                l.names = vec![
                    RevokedName {
                        name: name("web9"),
                        before: BEFORE,
                    },
                    RevokedName {
                        name: name("web9"),
                        before: BEFORE + 1,
                    },
                ]
            }),
        ),
        (
            "`kind` \"credential\", signed under gearmq/v1/revocation",
            "body/wrong_kind",
            with(|l| l.kind = "credential".into()),
        ),
    ]
}

/// Credentials the list is judged on: (serial, name, not_before, revoked, why).
fn judgements() -> Vec<(u64, &'static str, Millis, bool, &'static str)> {
    vec![
        (
            1,
            "web1",
            T0,
            false,
            "credential-host.bin: serial and name not listed",
        ),
        (
            2,
            "ops",
            T0,
            false,
            "credential-operator.bin: serial and name not listed",
        ),
        (7, "web7", T0, true, "serial 7 is listed"),
        (
            9,
            "ops",
            T0 + 2 * DAY_MS,
            true,
            "serial 9 is listed, whatever the name and times",
        ),
        (
            12,
            "web9",
            T0,
            true,
            "web9 is listed and not_before < before",
        ),
        (
            14,
            "web9",
            BEFORE - 1,
            true,
            "web9, not_before one ms before `before`",
        ),
        (
            13,
            "web9",
            BEFORE,
            false,
            "web9 re-enrolled: not_before = before is not before it",
        ),
        (
            15,
            "db3",
            BEFORE + 1,
            false,
            "db3 re-enrolled after `before`",
        ),
    ]
}

fn credential(serial: u64, holder: &str, not_before: Millis) -> Credential {
    Credential::new(
        serial,
        name(holder),
        Role::Host,
        SigningKey::from_seed(&[9; 32]).public_key(),
        not_before,
        not_before + DAY_MS,
    )
}

fn listing(file: &[u8]) -> Value {
    let env: IssuerSigned = codec::decode("revocation envelope", file, 1 << 20).unwrap();
    let l = list();
    json!({
        "about": "An issuer-signed revocation list (schemas/PROTOCOL.md, Revocation list), built by schemas/tests/vectors/revocation.rs. judgements: whether the list revokes a credential with that serial, name and not_before. must_refuse: lists to open with the issuer below trusted; refused_at: envelope/<decode label>, untrusted_issuer, signature, body/<decode label>.",
        "file": "revocation-list.bin",
        "len": file.len(),
        "hex": hex::encode(file),
        "sha256": hex::encode(sha256(file)),
        "envelope": "IssuerSigned {body, issuer, sig}",
        "context": "gearmq/v1/revocation",
        "signed_by": key_json("issuer", &ISSUER_SEED),
        "body_hex": hex::encode(&env.body),
        "signed_message_hex": hex::encode(signed_message(Context::Revocation, &env.body)),
        "sig": hex::encode(env.sig.as_slice()),
        "body": {
            "kind": l.kind,
            "version": l.version,
            "sequence": l.sequence,
            "issued_at": l.issued_at,
            "serials": l.serials,
            "names": l.names.iter().map(|n| json!({"name": n.name.as_str(), "before": n.before})).collect::<Vec<_>>(),
        },
        "judgements": judgements().into_iter().map(|(serial, holder, not_before, revoked, why)| json!({
            "serial": serial,
            "name": holder,
            "not_before": not_before,
            "revoked": revoked,
            "why": why,
        })).collect::<Vec<_>>(),
        "sequence_rule": "A receiver holding this list (sequence 2) takes a verified list with sequence 3 or more and ignores one with sequence 2 or less (stale).",
        "must_refuse": must_refuse(file).into_iter().map(|(what, refused_at, bytes)| json!({
            "what": what,
            "refused_at": refused_at,
            "hex": hex::encode(bytes),
        })).collect::<Vec<_>>(),
    })
}

#[test]
fn revocation_vector_rebuilds_and_judges_credentials() {
    let issuer = issuer_key();
    let file = list().issue(&issuer);
    check_file("revocation-list.bin", &file);
    check_json("revocation.json", &listing(&file));

    let l = verify_revocation(&read_vector("revocation-list.bin"), &[issuer.public_key()]).unwrap();
    assert_eq!(l, list());
    for (serial, holder, not_before, revoked, why) in judgements() {
        assert_eq!(
            l.revokes(&credential(serial, holder, not_before)),
            revoked,
            "{why}"
        );
    }
    // The vector credentials are judged as listed, from their own files.
    let trusted = [issuer.public_key()];
    for file in ["credential-host.bin", "credential-operator.bin"] {
        let c =
            gearmq_schemas::credential::verify_credential(&read_vector(file), &trusted).unwrap();
        assert!(!l.revokes(&c), "{file}");
    }
}

#[test]
fn revocation_must_refuse_vectors_are_refused_at_the_stated_step() {
    let trusted = [issuer_key().public_key()];
    let listing: Value = serde_json::from_slice(&read_vector("revocation.json")).unwrap();
    for case in listing["must_refuse"].as_array().unwrap() {
        let what = case["what"].as_str().unwrap();
        let bytes = hex::decode(case["hex"].as_str().unwrap()).unwrap();
        let err = verify_revocation(&bytes, &trusted)
            .err()
            .unwrap_or_else(|| panic!("{what}: verified, but must be refused"));
        assert_eq!(err.label(), case["refused_at"].as_str().unwrap(), "{what}");
    }
}

#[test]
fn only_a_higher_sequence_replaces_the_held_list() {
    let issuer = issuer_key();
    let trusted = [issuer.public_key()];
    let mut held = Revocations::new();
    assert_eq!(
        held.update(&read_vector("revocation-list.bin"), &trusted),
        Ok(SEQUENCE)
    );
    for sequence in [1, 2] {
        let older = with(|l| l.sequence = sequence);
        assert_eq!(
            held.update(&older, &trusted).unwrap_err().label(),
            "stale",
            "sequence {sequence}"
        );
    }
    let newer = RevocationList {
        sequence: SEQUENCE + 1,
        serials: vec![],
        names: vec![],
        ..list()
    };
    assert_eq!(held.update(&newer.issue(&issuer), &trusted), Ok(3));
    // The newer list replaces the held one whole: serial 7 is trusted again.
    assert!(!held.revokes(&credential(7, "web7", T0)));
}
