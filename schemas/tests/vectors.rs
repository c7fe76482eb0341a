//! The protocol's test vectors under `schemas/vectors/`, built from fixed seeds, one
//! module per area.
//!
//! Ed25519 is deterministic, so the same seeds, times and ids always give the same
//! bytes. These tests rebuild every vector and compare it byte for byte with the
//! checked-in file (a changed wire format shows up here first), then open the files with
//! the schemas API and check every field and every refusal, so another implementation
//! can check itself against the same files and their JSON listings.
//!
//! After an intended wire change: `GEARMQ_REGEN_VECTORS=1 cargo test -p gearmq-schemas
//! --test vectors`, review the diff, run the tests again without the variable.

// One file per area under `tests/vectors/`, sharing the fixtures of this root.
#[path = "vectors/audit.rs"]
mod audit;
#[path = "vectors/decode.rs"]
mod decode;
#[path = "vectors/ed25519.rs"]
mod ed25519;
#[path = "vectors/enroll.rs"]
mod enroll;
#[path = "vectors/revocation.rs"]
mod revocation;
#[path = "vectors/selector.rs"]
mod selector;
#[path = "vectors/spec.rs"]
mod spec;
#[path = "vectors/token.rs"]
mod token;

use gearmq_schemas::actions::{PingArgs, PingResult};
use gearmq_schemas::codec;
use gearmq_schemas::credential::{Credential, Role, verify_credential};
use gearmq_schemas::envelope::{self, Context, IssuerSigned, OpenError, Signed};
use gearmq_schemas::event::{Event, UnitChange, What, event_route};
use gearmq_schemas::request::{Request, Targets, is_reply_queue_of};
use gearmq_schemas::{
    ActionName, CredentialVerifier, DEFAULT_MAX_MESSAGE_BYTES, Name, Reply, SigningKey, Status,
    TrustAnchors, VERSION, sha256,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use uuid::Uuid;

const ISSUER_SEED: [u8; 32] = [1; 32];
const HOST_SEED: [u8; 32] = [2; 32];
const OPERATOR_SEED: [u8; 32] = [3; 32];

const DAY_MS: u64 = 86_400_000;
/// 2026-01-01T00:00:00Z: start of both credentials' validity.
const T0: u64 = 1_767_225_600_000;
const HOST_SERIAL: u64 = 1;
const HOST_NOT_AFTER: u64 = T0 + 365 * DAY_MS;
const OPERATOR_SERIAL: u64 = 2;
const OPERATOR_NOT_AFTER: u64 = T0 + 30 * DAY_MS;
/// The X25519 public key of RFC 7748 §6.1 (Alice), as the host's sealing key.
const SEALING_KEY: [u8; 32] = [
    0x85, 0x20, 0xf0, 0x09, 0x89, 0x30, 0xa7, 0x54, 0x74, 0x8b, 0x7d, 0xdc, 0xb4, 0x3e, 0xf7, 0x5a,
    0x0d, 0xbf, 0x3a, 0x0d, 0x26, 0x38, 0x1a, 0xf4, 0xeb, 0xa4, 0xa9, 0x8e, 0xaa, 0x9b, 0x4e, 0x6a,
];

/// 2026-01-01T00:02:30Z: the time every vector is judged at (credential and request
/// windows, tokens), unless its listing says otherwise.
const NOW: u64 = T0 + 150_000;
/// 2026-01-01T00:01:00Z: when the ping request was signed.
const ISSUED_AT: u64 = T0 + 60_000;
const EXPIRES_AT: u64 = ISSUED_AT + 300_000;
/// UUIDv7 whose 48-bit timestamp is `ISSUED_AT`, version 7, variant 0b10, fixed rest.
const REQUEST_ID: u128 = 0x019b76db_9260_7abc_8def_0123456789ab;
const REPLY_TO: &str = "gearmq.reply.ops.0001";
const STARTED_AT: u64 = ISSUED_AT + 150;
const FINISHED_AT: u64 = ISSUED_AT + 152;
const AGENT_VERSION: &str = "0.1.0";
const UPTIME_MS: u64 = DAY_MS;
/// The boot id of web1's agent run that signed the event vector.
const EVENT_BOOT: u128 = 0x7a1c3e5f_0b2d_4f61_8a9c_e0f2143658ba;
/// The event vector's number in its boot.
const EVENT_SEQ: u64 = 5;
/// 2026-01-01T00:02:28Z: when web1 signed the event vector, 2 s before [`NOW`].
const EVENT_TIME: u64 = NOW - 2_000;

const MAX: usize = DEFAULT_MAX_MESSAGE_BYTES;

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn action(s: &str) -> ActionName {
    ActionName::new(s).unwrap()
}

fn issuer_key() -> SigningKey {
    SigningKey::from_seed(&ISSUER_SEED)
}

fn host_key() -> SigningKey {
    SigningKey::from_seed(&HOST_SEED)
}

fn operator_key() -> SigningKey {
    SigningKey::from_seed(&OPERATOR_SEED)
}

fn host_labels() -> BTreeMap<String, String> {
    [("role", "web"), ("zone", "eu-1")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn operator_actions() -> Vec<ActionName> {
    vec![action("ping"), action("status"), action("list")]
}

fn host_credential() -> Credential {
    Credential {
        kind: "credential".into(),
        version: VERSION,
        serial: HOST_SERIAL,
        name: name("web1"),
        role: Role::Host,
        public_key: host_key().public_key(),
        not_before: T0,
        not_after: HOST_NOT_AFTER,
        labels: host_labels(),
        actions: vec![],
        may_delegate: false,
        sealing_key: Some(serde_bytes::ByteArray::new(SEALING_KEY)),
    }
}

fn operator_credential() -> Credential {
    Credential {
        kind: "credential".into(),
        version: VERSION,
        serial: OPERATOR_SERIAL,
        name: name("ops"),
        role: Role::Operator,
        public_key: operator_key().public_key(),
        not_before: T0,
        not_after: OPERATOR_NOT_AFTER,
        labels: BTreeMap::new(),
        actions: operator_actions(),
        may_delegate: true,
        sealing_key: None,
    }
}

fn ping_request() -> Request {
    Request {
        kind: "request".into(),
        version: VERSION,
        id: Uuid::from_u128(REQUEST_ID),
        caller: name("ops"),
        issued_at: ISSUED_AT,
        expires_at: EXPIRES_AT,
        targets: Targets::Hosts(vec![name("web1")]),
        reply_to: REPLY_TO.into(),
        action: action("ping"),
        args: codec::encode(&PingArgs {}),
        token: None,
    }
}

fn ping_result() -> PingResult {
    PingResult {
        agent_version: AGENT_VERSION.into(),
        uptime_ms: UPTIME_MS,
    }
}

fn ping_reply(request_body: &[u8]) -> Reply {
    Reply {
        kind: "reply".into(),
        version: VERSION,
        request_id: Uuid::from_u128(REQUEST_ID),
        request_digest: serde_bytes::ByteArray::new(sha256(request_body)),
        host: name("web1"),
        seq: 0,
        is_final: true,
        status: Status::Ok,
        data: Some(serde_bytes::ByteBuf::from(codec::encode(&ping_result()))),
        error: None,
        started_at: STARTED_AT,
        finished_at: FINISHED_AT,
    }
}

/// The `unit` event: web1's unit `web` exited with an error and systemd started it
/// again (its second restart).
fn unit_event() -> Event {
    Event {
        kind: "event".into(),
        version: VERSION,
        host: name("web1"),
        boot: serde_bytes::ByteArray::new(EVENT_BOOT.to_be_bytes()),
        seq: EVENT_SEQ,
        time: EVENT_TIME,
        what: What::Unit {
            unit: "web".into(),
            change: UnitChange::Restarted,
            active_state: "activating".into(),
            sub_state: "auto-restart".into(),
            result: "exit-code".into(),
            restarts: 2,
        },
    }
}

/// Every vector, as built from the seeds.
struct Built {
    host_credential: Vec<u8>,
    operator_credential: Vec<u8>,
    request: Vec<u8>,
    reply: Vec<u8>,
    event: Vec<u8>,
}

impl Built {
    fn new() -> Self {
        let issuer = issuer_key();
        let host_credential = host_credential().issue(&issuer);
        let operator_credential = operator_credential().issue(&issuer);
        let request_body = ping_request();
        let request = Signed::seal(&request_body, &operator_key(), &operator_credential);
        let reply = Signed::seal(
            &ping_reply(&codec::encode(&request_body)),
            &host_key(),
            &host_credential,
        );
        let event = Signed::seal(&unit_event(), &host_key(), &host_credential);
        Built {
            host_credential,
            operator_credential,
            request,
            reply,
            event,
        }
    }

    fn files(&self) -> [(&'static str, &[u8]); 5] {
        [
            ("credential-host.bin", &self.host_credential),
            ("credential-operator.bin", &self.operator_credential),
            ("request-ping.bin", &self.request),
            ("reply-ping.bin", &self.reply),
            ("event-unit.bin", &self.event),
        ]
    }
}

fn read_vector(file: &str) -> Vec<u8> {
    let path = vectors_dir().join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn signed_message(ctx: Context, body: &[u8]) -> Vec<u8> {
    [ctx.tag(), body].concat()
}

fn key_json(role: &str, seed: &[u8; 32]) -> Value {
    json!({
        "role": role,
        "seed": hex::encode(seed),
        "public_key": SigningKey::from_seed(seed).public_key().to_hex(),
    })
}

fn credential_json(c: &Credential) -> Value {
    json!({
        "kind": c.kind,
        "version": c.version,
        "serial": c.serial,
        "name": c.name.as_str(),
        "role": c.role.to_string(),
        "public_key": c.public_key.to_hex(),
        "not_before": c.not_before,
        "not_after": c.not_after,
        "labels": c.labels,
        "actions": c.actions.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
        "may_delegate": c.may_delegate,
        "sealing_key": c.sealing_key.as_ref().map(|k| hex::encode(k.as_slice())),
    })
}

fn request_json(r: &Request) -> Value {
    let targets = match &r.targets {
        Targets::Hosts(h) => json!({"hosts": h.iter().map(|n| n.as_str()).collect::<Vec<_>>()}),
        Targets::All => json!("all"),
        Targets::Selector(_) => unreachable!("the vectors use a host list"),
    };
    json!({
        "kind": r.kind,
        "version": r.version,
        "id": r.id.to_string(),
        "id_hex": hex::encode(r.id.as_bytes()),
        "caller": r.caller.as_str(),
        "issued_at": r.issued_at,
        "expires_at": r.expires_at,
        "targets": targets,
        "targets_hex": hex::encode(codec::encode(&r.targets)),
        "reply_to": r.reply_to,
        "action": r.action.as_str(),
        "args_hex": hex::encode(&r.args),
        "args": {},
        "token": null,
    })
}

fn reply_json(r: &Reply) -> Value {
    json!({
        "kind": r.kind,
        "version": r.version,
        "request_id": r.request_id.to_string(),
        "request_digest": hex::encode(r.request_digest.as_slice()),
        "host": r.host.as_str(),
        "seq": r.seq,
        "final": r.is_final,
        "status": r.status.code(),
        "status_name": r.status.as_str(),
        "data_hex": r.data.as_ref().map(|d| hex::encode(d.as_slice())),
        "data": {"agent_version": AGENT_VERSION, "uptime_ms": UPTIME_MS},
        "error": r.error,
        "started_at": r.started_at,
        "finished_at": r.finished_at,
    })
}

fn event_json(e: &Event) -> Value {
    let what = match &e.what {
        What::Unit {
            unit,
            change,
            active_state,
            sub_state,
            result,
            restarts,
        } => json!({"unit": {
            "unit": unit,
            "change": change.as_str(),
            "active_state": active_state,
            "sub_state": sub_state,
            "result": result,
            "restarts": restarts,
        }}),
        _ => unreachable!("the vector is a unit event"),
    };
    json!({
        "kind": e.kind,
        "version": e.version,
        "host": e.host.as_str(),
        "boot": hex::encode(e.boot.as_slice()),
        "seq": e.seq,
        "time": e.time,
        "what": what,
        "what_hex": hex::encode(codec::encode(&e.what)),
        "routing_key": event_route(&e.host, &e.what),
    })
}

fn file_json(file: &str, bytes: &[u8]) -> Value {
    json!({
        "file": file,
        "len": bytes.len(),
        "hex": hex::encode(bytes),
        "sha256": hex::encode(sha256(bytes)),
    })
}

fn issuer_signed_json(file: &str, bytes: &[u8], c: &Credential) -> Value {
    let env: IssuerSigned = codec::decode("credential envelope", bytes, MAX).unwrap();
    let mut v = file_json(file, bytes);
    let extra = json!({
        "envelope": "IssuerSigned {body, issuer, sig}",
        "context": "gearmq/v1/credential",
        "signed_by": key_json("issuer", &ISSUER_SEED),
        "body_hex": hex::encode(&env.body),
        "body_sha256": hex::encode(sha256(&env.body)),
        "signed_message_hex": hex::encode(signed_message(Context::Credential, &env.body)),
        "sig": hex::encode(env.sig.as_slice()),
        "body": credential_json(c),
    });
    merge(&mut v, extra);
    v
}

fn signed_json(
    file: &str,
    bytes: &[u8],
    ctx: Context,
    signer_file: &str,
    signed_by: Value,
    body: Value,
) -> Value {
    let env = Signed::decode(bytes, MAX).unwrap();
    let mut v = file_json(file, bytes);
    let extra = json!({
        "envelope": "Signed {body, signer, sig}",
        "context": String::from_utf8(ctx.tag().to_vec()).unwrap(),
        "signer": signer_file,
        "signed_by": signed_by,
        "body_hex": hex::encode(&env.body),
        "body_sha256": hex::encode(sha256(&env.body)),
        "signed_message_hex": hex::encode(signed_message(ctx, &env.body)),
        "sig": hex::encode(env.sig.as_slice()),
        "body": body,
    });
    merge(&mut v, extra);
    v
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(a), Value::Object(b)) = (into, from) {
        a.extend(b);
    }
}

/// Messages a receiver must refuse, each derived from the ping request, with the step
/// that refuses it. Signature-valid ones are re-signed by the operator, so only the
/// body rule can refuse them.
fn must_refuse(b: &Built) -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let op = operator_key();
    let cred = &b.operator_credential;
    let body = codec::encode(&ping_request());
    let reseal = |body: Vec<u8>| Signed::seal_bytes(Context::Request, body, &op, cred);

    let mut trailing = b.request.clone();
    trailing.push(0xc0);

    // The envelope with `body` as bin16 instead of bin8: same value, longer header.
    let env = Signed::decode(&b.request, MAX).unwrap();
    assert!(env.body.len() < 256);
    let mut long_header = vec![0x83, 0xa4, b'b', b'o', b'd', b'y', 0xc5, 0x00];
    long_header.push(env.body.len() as u8);
    long_header.extend_from_slice(&env.body);
    long_header.extend_from_slice(&b.request[8 + env.body.len()..]);
    assert_eq!(
        &b.request[..8],
        &[
            0x83,
            0xa4,
            b'b',
            b'o',
            b'd',
            b'y',
            0xc4,
            env.body.len() as u8
        ]
    );

    let mut flipped_sig = b.request.clone();
    let last = flipped_sig.len() - 1;
    flipped_sig[last] ^= 0x01;

    let wrong_context = codec::encode(&Signed {
        body: body.clone(),
        signer: cred.clone(),
        sig: serde_bytes::ByteArray::new(op.sign(Context::Reply, &body)),
    });

    let kind_entry = [&[0xa4][..], b"kind", &[0xa7], b"request"].concat();
    let version_entry = [&[0xa7][..], b"version", &[0x01]].concat();
    assert_eq!(body[0], 0x8b, "the request body is a map of 11 fields");
    assert_eq!(&body[1..1 + kind_entry.len()], &kind_entry[..]);
    let after_kind = 1 + kind_entry.len();
    assert_eq!(
        &body[after_kind..after_kind + version_entry.len()],
        &version_entry[..]
    );
    let rest = &body[after_kind + version_entry.len()..];

    let swapped = [&[0x8b][..], &version_entry, &kind_entry, rest].concat();
    let long_int = [
        &[0x8b][..],
        &kind_entry,
        &[0xa7],
        b"version",
        &[0xcd, 0x00, 0x01],
        rest,
    ]
    .concat();
    let long_key = [
        &[0x8b][..],
        &[0xd9, 0x04],
        b"kind",
        &[0xa7],
        b"request",
        &version_entry,
        rest,
    ]
    .concat();
    let unknown_field = [&[0x8c][..], &body[1..], &[0xa5], b"extra", &[0xc0]].concat();
    let duplicate_field = [&[0x8c][..], &body[1..], &version_entry].concat();
    let positional = rmp_serde::to_vec(&ping_request()).unwrap();
    let token_entry = [&[0xa5][..], b"token", &[0xc0]].concat();
    assert!(body.ends_with(&token_entry), "`token` is the last field");
    let without_token = [&[0x8a][..], &body[1..body.len() - token_entry.len()]].concat();

    vec![
        (
            "request-ping.bin followed by one byte 0xc0",
            "envelope/trailing_bytes",
            trailing,
        ),
        (
            "envelope `body` with a bin16 header where bin8 suffices",
            "envelope/not_canonical",
            long_header,
        ),
        ("last signature bit flipped", "signature", flipped_sig),
        (
            "request body signed under the context tag gearmq/v1/reply",
            "signature",
            wrong_context,
        ),
        (
            "body fields `kind` and `version` swapped, re-signed",
            "body/not_canonical",
            reseal(swapped),
        ),
        (
            "body `version` as uint16 0xcd0001 instead of fixint 0x01, re-signed",
            "body/not_canonical",
            reseal(long_int),
        ),
        (
            "body key \"kind\" with a str8 header instead of fixstr, re-signed",
            "body/not_canonical",
            reseal(long_key),
        ),
        (
            "body with an extra field \"extra\": nil, re-signed",
            "body/malformed",
            reseal(unknown_field),
        ),
        (
            "body with field \"version\" twice, re-signed",
            "body/malformed",
            reseal(duplicate_field),
        ),
        (
            "body without the optional field `token` (instead of token: nil), re-signed",
            "body/not_canonical",
            reseal(without_token),
        ),
        (
            "body encoded positionally (an array, not a map), re-signed",
            "body/not_canonical",
            reseal(positional),
        ),
    ]
}

/// The step at which `open` refused a message, in the words of `must_refuse`.
fn refusal(e: &OpenError) -> String {
    e.label()
}

fn listing(b: &Built) -> Value {
    let request_body = codec::encode(&ping_request());
    let vectors = vec![
        issuer_signed_json(
            "credential-host.bin",
            &b.host_credential,
            &host_credential(),
        ),
        issuer_signed_json(
            "credential-operator.bin",
            &b.operator_credential,
            &operator_credential(),
        ),
        signed_json(
            "request-ping.bin",
            &b.request,
            Context::Request,
            "credential-operator.bin",
            key_json("operator ops", &OPERATOR_SEED),
            request_json(&ping_request()),
        ),
        signed_json(
            "reply-ping.bin",
            &b.reply,
            Context::Reply,
            "credential-host.bin",
            key_json("host web1", &HOST_SEED),
            reply_json(&ping_reply(&request_body)),
        ),
        signed_json(
            "event-unit.bin",
            &b.event,
            Context::Event,
            "credential-host.bin",
            key_json("host web1", &HOST_SEED),
            event_json(&unit_event()),
        ),
    ];
    let refuse: Vec<Value> = must_refuse(b)
        .into_iter()
        .map(|(what, refused_at, bytes)| {
            json!({"what": what, "refused_at": refused_at, "hex": hex::encode(bytes)})
        })
        .collect();
    json!({
        "about": "gearmq protocol test vectors, built by schemas/tests/vectors.rs from the seeds below. Ed25519 (RFC 8032) is deterministic: rebuilding from the seeds must give these bytes exactly. See schemas/PROTOCOL.md.",
        "protocol_version": VERSION,
        "keys": [
            key_json("issuer", &ISSUER_SEED),
            key_json("host web1", &HOST_SEED),
            key_json("operator ops", &OPERATOR_SEED),
        ],
        "trusted_issuers": [issuer_key().public_key().to_hex()],
        "context_tags": {
            "credential": "gearmq/v1/credential",
            "request": "gearmq/v1/request",
            "reply": "gearmq/v1/reply",
            "token": "gearmq/v1/token",
            "revocation": "gearmq/v1/revocation",
            "audit": "gearmq/v1/audit",
            "event": "gearmq/v1/event",
        },
        "vectors": vectors,
        "must_refuse": {
            "about": "Each is a whole message to open as a request with the issuer above trusted. refused_at: envelope/<reason> = the outer envelope does not decode; signature = the Ed25519 check over context tag || body fails; body/<reason> = the signature holds but the body breaks a decoding rule.",
            "cases": refuse,
        },
    })
}

fn read_listing() -> Value {
    let path = vectors_dir().join("vectors.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn regenerating() -> bool {
    std::env::var("GEARMQ_REGEN_VECTORS").is_ok_and(|v| v == "1")
}

/// Writes `bytes` to `vectors/<file>` when regenerating; otherwise the file must hold
/// exactly these bytes.
fn check_file(file: &str, bytes: &[u8]) {
    let path = vectors_dir().join(file);
    if regenerating() {
        std::fs::write(&path, bytes).unwrap();
        return;
    }
    let on_disk =
        std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    assert!(
        on_disk == bytes,
        "vectors/{file} differs from what the seeds build now; if the protocol changed on \
         purpose, rerun with GEARMQ_REGEN_VECTORS=1 and review the diff"
    );
}

/// Writes `value` to `vectors/<file>` (pretty, keys sorted) when regenerating;
/// otherwise the file must hold the same JSON value.
fn check_json(file: &str, value: &Value) {
    let path = vectors_dir().join(file);
    if regenerating() {
        std::fs::write(&path, format!("{value:#}\n")).unwrap();
        return;
    }
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let on_disk: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    assert!(
        on_disk == *value,
        "vectors/{file} differs from what the seeds build now; rerun with \
         GEARMQ_REGEN_VECTORS=1 and review the diff"
    );
}

fn verifier() -> CredentialVerifier {
    CredentialVerifier::new(TrustAnchors::new(vec![issuer_key().public_key()]), 8)
}

#[test]
fn vectors_are_rebuilt_byte_for_byte_from_the_seeds() {
    let built = Built::new();
    let listing = listing(&built);
    if regenerating() {
        std::fs::create_dir_all(vectors_dir()).unwrap();
        for (file, bytes) in built.files() {
            std::fs::write(vectors_dir().join(file), bytes).unwrap();
        }
        let mut text = serde_json::to_string_pretty(&listing).unwrap();
        text.push('\n');
        std::fs::write(vectors_dir().join("vectors.json"), text).unwrap();
        return;
    }
    for (file, bytes) in built.files() {
        assert!(
            read_vector(file) == bytes,
            "vectors/{file} differs from what the seeds build now; if the wire format \
             changed on purpose, rerun with GEARMQ_REGEN_VECTORS=1 and review the diff"
        );
    }
    // Compared as JSON values: key order is serde_json's business, not the protocol's.
    assert!(
        read_listing() == listing,
        "vectors/vectors.json differs from what the seeds build now; rerun with \
         GEARMQ_REGEN_VECTORS=1 and review the diff"
    );
}

#[test]
fn listing_agrees_with_the_checked_in_files() {
    let listing = read_listing();
    let vectors = listing["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 5);
    for v in vectors {
        let file = v["file"].as_str().unwrap();
        let bytes = read_vector(file);
        assert_eq!(v["hex"], hex::encode(&bytes), "{file}");
        assert_eq!(v["sha256"], hex::encode(sha256(&bytes)), "{file}");
        assert_eq!(v["len"], bytes.len(), "{file}");
        let signed = hex::decode(v["signed_message_hex"].as_str().unwrap()).unwrap();
        let body = hex::decode(v["body_hex"].as_str().unwrap()).unwrap();
        let tag = v["context"].as_str().unwrap().as_bytes();
        assert_eq!(signed, [tag, &body[..]].concat(), "{file}");
        // The signature in the listing verifies over the signed message with the listed key.
        let key = hex::decode(v["signed_by"]["public_key"].as_str().unwrap()).unwrap();
        let sig = hex::decode(v["sig"].as_str().unwrap()).unwrap();
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &key)
            .verify(&signed, &sig)
            .unwrap_or_else(|_| panic!("{file}: listed signature does not verify"));
    }
}

#[test]
fn host_credential_vector_verifies_with_every_field() {
    let bytes = read_vector("credential-host.bin");
    let env: IssuerSigned = codec::decode("credential envelope", &bytes, MAX).unwrap();
    assert_eq!(env.issuer, issuer_key().public_key());
    let c = verify_credential(&bytes, &[issuer_key().public_key()]).unwrap();
    assert_eq!(c.kind, "credential");
    assert_eq!(c.version, 1);
    assert_eq!(c.serial, HOST_SERIAL);
    assert_eq!(c.name.as_str(), "web1");
    assert_eq!(c.role, Role::Host);
    assert_eq!(c.public_key, host_key().public_key());
    assert_eq!(c.not_before, 1_767_225_600_000);
    assert_eq!(c.not_after, 1_798_761_600_000);
    assert_eq!(c.labels, host_labels());
    assert!(c.actions.is_empty());
    assert!(!c.may_delegate);
    assert_eq!(c.sealing_key.map(|k| k.into_array()), Some(SEALING_KEY));
    assert_eq!(c, host_credential());
    assert!(c.check_window(ISSUED_AT, 0).is_ok());
    // Only the trusted issuer's key opens it.
    assert!(verify_credential(&bytes, &[host_key().public_key()]).is_err());
}

#[test]
fn operator_credential_vector_verifies_with_every_field() {
    let bytes = read_vector("credential-operator.bin");
    let c = verify_credential(&bytes, &[issuer_key().public_key()]).unwrap();
    assert_eq!(c.kind, "credential");
    assert_eq!(c.version, 1);
    assert_eq!(c.serial, OPERATOR_SERIAL);
    assert_eq!(c.name.as_str(), "ops");
    assert_eq!(c.role, Role::Operator);
    assert_eq!(c.public_key, operator_key().public_key());
    assert_eq!(c.not_before, 1_767_225_600_000);
    assert_eq!(c.not_after, 1_769_817_600_000);
    assert!(c.labels.is_empty());
    assert_eq!(c.actions, operator_actions());
    assert!(c.allows(&action("ping")));
    assert!(!c.allows(&action("install")));
    assert!(c.may_delegate);
    assert_eq!(c.sealing_key, None);
    assert_eq!(c, operator_credential());
    assert!(c.check_window(ISSUED_AT, 0).is_ok());
}

#[test]
fn request_vector_opens_with_every_field() {
    let bytes = read_vector("request-ping.bin");
    let env = Signed::decode(&bytes, MAX).unwrap();
    assert_eq!(env.signer, read_vector("credential-operator.bin"));

    let opened = envelope::open::<Request>(&bytes, MAX, &verifier()).unwrap();
    let r = opened.body();
    assert_eq!(r.kind, "request");
    assert_eq!(r.version, 1);
    assert_eq!(r.id, Uuid::from_u128(REQUEST_ID));
    assert_eq!(r.id.to_string(), "019b76db-9260-7abc-8def-0123456789ab");
    assert_eq!(r.id.get_version_num(), 7);
    assert_eq!(r.id.get_variant(), uuid::Variant::RFC4122);
    let (secs, nanos) = r.id.get_timestamp().unwrap().to_unix();
    assert_eq!(secs * 1000 + u64::from(nanos) / 1_000_000, ISSUED_AT);
    assert_eq!(r.caller.as_str(), "ops");
    assert_eq!(r.issued_at, 1_767_225_660_000);
    assert_eq!(r.expires_at, 1_767_225_960_000);
    assert_eq!(r.targets, Targets::Hosts(vec![name("web1")]));
    assert_eq!(r.reply_to, "gearmq.reply.ops.0001");
    assert!(is_reply_queue_of(&r.caller, &r.reply_to));
    assert_eq!(r.action.as_str(), "ping");
    assert_eq!(r.args, vec![0x80]);
    assert_eq!(
        codec::decode::<PingArgs>("ping args", &r.args, 1024).unwrap(),
        PingArgs {}
    );
    assert_eq!(r.token, None);
    assert_eq!(r, &ping_request());

    // The signer is the operator, and the request names it as caller.
    assert_eq!(opened.signer().name, r.caller);
    assert_eq!(opened.signer().role, Role::Operator);
    assert_eq!(opened.body_bytes(), &env.body[..]);
    assert_eq!(opened.digest(), &sha256(&env.body));

    // web1 is the only target.
    assert!(r.targets.includes(&name("web1"), &host_labels()));
    assert!(!r.targets.includes(&name("web2"), &host_labels()));
    // Signed as a request, it is no reply.
    assert!(envelope::open::<Reply>(&bytes, MAX, &verifier()).is_err());
}

#[test]
fn reply_vector_opens_with_every_field() {
    let bytes = read_vector("reply-ping.bin");
    let env = Signed::decode(&bytes, MAX).unwrap();
    assert_eq!(env.signer, read_vector("credential-host.bin"));

    let opened = envelope::open::<Reply>(&bytes, MAX, &verifier()).unwrap();
    let r = opened.body();
    assert_eq!(r.kind, "reply");
    assert_eq!(r.version, 1);
    assert_eq!(r.request_id, Uuid::from_u128(REQUEST_ID));
    assert_eq!(r.host.as_str(), "web1");
    assert_eq!(r.seq, 0);
    assert!(r.is_final);
    assert_eq!(r.status, Status::Ok);
    assert_eq!(r.status.code(), 0);
    let data = r.data.as_ref().expect("an ok ping reply carries data");
    assert_eq!(
        codec::decode::<PingResult>("ping result", data, 1024).unwrap(),
        ping_result()
    );
    assert_eq!(r.error, None);
    assert_eq!(r.started_at, 1_767_225_660_150);
    assert_eq!(r.finished_at, 1_767_225_660_152);

    assert_eq!(opened.signer().name, r.host);
    assert_eq!(opened.signer().role, Role::Host);
    assert!(envelope::open::<Request>(&bytes, MAX, &verifier()).is_err());
}

#[test]
fn reply_vector_digest_is_sha256_of_the_request_body() {
    let request = Signed::decode(&read_vector("request-ping.bin"), MAX).unwrap();
    let reply = envelope::open::<Reply>(&read_vector("reply-ping.bin"), MAX, &verifier()).unwrap();
    assert_eq!(
        reply.body().request_digest.into_array(),
        sha256(&request.body)
    );
    // Not the digest of the whole message: replies bind to the signed body only.
    assert_ne!(
        reply.body().request_digest.into_array(),
        sha256(&read_vector("request-ping.bin"))
    );
    let opened =
        envelope::open::<Request>(&read_vector("request-ping.bin"), MAX, &verifier()).unwrap();
    assert_eq!(opened.digest(), &reply.body().request_digest.into_array());
    assert_eq!(opened.body().id, reply.body().request_id);
}

#[test]
fn event_vector_opens_with_every_field() {
    let bytes = read_vector("event-unit.bin");
    let env = Signed::decode(&bytes, MAX).unwrap();
    assert_eq!(env.signer, read_vector("credential-host.bin"));

    let opened = envelope::open::<Event>(&bytes, MAX, &verifier()).unwrap();
    let e = opened.body();
    assert_eq!(e.kind, "event");
    assert_eq!(e.version, 1);
    assert_eq!(e.host.as_str(), "web1");
    assert_eq!(
        hex::encode(e.boot.as_slice()),
        "7a1c3e5f0b2d4f618a9ce0f2143658ba"
    );
    assert_eq!(e.seq, 5);
    assert_eq!(e.time, 1_767_225_748_000);
    assert_eq!(
        e.what,
        What::Unit {
            unit: "web".into(),
            change: UnitChange::Restarted,
            active_state: "activating".into(),
            sub_state: "auto-restart".into(),
            result: "exit-code".into(),
            restarts: 2,
        }
    );
    assert_eq!(e, &unit_event());
    assert_eq!(event_route(&e.host, &e.what), "web1.unit");

    // Signed by the host it names, with a host credential valid now.
    assert_eq!(opened.signer().name, e.host);
    assert_eq!(opened.signer().role, Role::Host);
    assert!(opened.signer().check_window(NOW, 0).is_ok());
    // Its own context: an event is no reply, and a reply no event.
    assert_eq!(
        refusal(&envelope::open::<Reply>(&bytes, MAX, &verifier()).unwrap_err()),
        "signature"
    );
    let reply = read_vector("reply-ping.bin");
    assert!(envelope::open::<Event>(&reply, MAX, &verifier()).is_err());
    let as_reply = codec::encode(&Signed {
        body: env.body.clone(),
        signer: env.signer.clone(),
        sig: serde_bytes::ByteArray::new(host_key().sign(Context::Reply, &env.body)),
    });
    assert_eq!(
        refusal(&envelope::open::<Event>(&as_reply, MAX, &verifier()).unwrap_err()),
        "signature"
    );
}

#[test]
fn must_refuse_vectors_are_refused_at_the_stated_step() {
    let listing = read_listing();
    let cases = listing["must_refuse"]["cases"].as_array().unwrap();
    assert!(cases.len() >= 11);
    for case in cases {
        let what = case["what"].as_str().unwrap();
        let bytes = hex::decode(case["hex"].as_str().unwrap()).unwrap();
        let err = envelope::open::<Request>(&bytes, MAX, &verifier())
            .err()
            .unwrap_or_else(|| panic!("{what}: opened, but must be refused"));
        assert_eq!(
            refusal(&err),
            case["refused_at"].as_str().unwrap(),
            "{what}: {err}"
        );
    }
}

#[test]
fn every_vector_window_contains_now() {
    for c in [host_credential(), operator_credential()] {
        assert!(c.check_window(NOW, 0).is_ok(), "{}", c.name);
    }
    let r = ping_request();
    assert!(r.issued_at <= NOW && NOW <= r.expires_at);
    // The event is fresh at now: within 3 default intervals (10 s) before it.
    let e = unit_event();
    assert!(e.time <= NOW && NOW - e.time < 3 * 10_000);
    // The token's window (token.json) is the ping request's.
    let listing: Value = serde_json::from_slice(&read_vector("token.json")).unwrap();
    let claims = &listing["claims"];
    assert!(claims["not_before"].as_u64().unwrap() <= NOW);
    assert!(NOW <= claims["not_after"].as_u64().unwrap());
}
