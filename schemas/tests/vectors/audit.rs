//! `vectors/audit-ops.log{.1,}`, `vectors/audit-web1.log{.1,}` and `vectors/audit.json`:
//! the orchestrator's and the agent's audit logs of the vector messages, each a rotated
//! family of two files, holding every record kind; what `verify_log` makes of them; and
//! broken families with the record and problem each must be refused at.
//!
//! Records added later go at the end of a family, so that the broken families keep
//! their record numbers.
//!
//! Records are signed here one by one (not through `AuditLog`, whose log id is random),
//! so the files rebuild byte for byte.

use super::{
    FINISHED_AT, HOST_SEED, ISSUED_AT, NOW, OPERATOR_SEED, REPLY_TO, T0, check_file, check_json,
    host_key, issuer_key, key_json, name, operator_key, read_vector,
};
use gearmq_schemas::audit::{
    self, AuditRecord, Broken, Entry, Summary, VerifyOptions, frame, verify_log,
};
use gearmq_schemas::credential::Credential;
use gearmq_schemas::envelope::Signed;
use gearmq_schemas::event::What;
use gearmq_schemas::request::{Request, Targets};
use gearmq_schemas::revocation::RevocationList;
use gearmq_schemas::time::Millis;
use gearmq_schemas::{
    ActionName, DEFAULT_MAX_MESSAGE_BYTES, Reply, SigningKey, Status, TrustAnchors, VERSION, sha256,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use uuid::Uuid;

const OPS_LOG_ID: [u8; 16] = [0x11; 16];
const WEB1_LOG_ID: [u8; 16] = [0x22; 16];
/// The install request ops may not make (its credential lists ping, status, list).
const INSTALL_ID: u128 = 0x019b76db_9648_7abc_8def_0123456789ae;
const INSTALL_ISSUED_AT: Millis = ISSUED_AT + 1_000;

struct Writer {
    key: SigningKey,
    credential: Vec<u8>,
    log_id: [u8; 16],
    /// Records left unsigned, as a writer leaves all but the last of a batch: the next
    /// signed record seals them.
    unsigned: Vec<u64>,
}

/// ops wrote its records 3 to 5 (the replies of the ping call) in one batch: 3 and 4
/// unsigned, sealed by 5's signature.
const OPS_UNSIGNED: [u64; 2] = [3, 4];

fn ops() -> Writer {
    Writer {
        key: operator_key(),
        credential: read_vector("credential-operator.bin"),
        log_id: OPS_LOG_ID,
        unsigned: OPS_UNSIGNED.to_vec(),
    }
}

fn web1() -> Writer {
    Writer {
        key: host_key(),
        credential: read_vector("credential-host.bin"),
        log_id: WEB1_LOG_ID,
        unsigned: Vec::new(),
    }
}

/// Host web2 signing into the chain `log_id`: another writer, for broken families.
fn web2(log_id: [u8; 16]) -> Writer {
    Writer {
        key: SigningKey::from_seed(&[4; 32]),
        credential: read_vector("credential-web2.bin"),
        log_id,
        unsigned: Vec::new(),
    }
}

/// One step of a family: a record (an entry at a time), or the start of a new file
/// (its `rotation` record at a time).
#[derive(Clone)]
enum Step {
    Record(Millis, Entry),
    Rotate(Millis),
}

/// A family's files, oldest first, named `base.1`, …, `base` as a writer leaves them.
type Files = Vec<(String, Vec<u8>)>;

/// Signs `steps` into a chain. `tamper` may change a record body before it is signed,
/// `signer` sign one with another writer's key and credential: for broken families.
fn write(
    w: &Writer,
    base: &str,
    steps: &[Step],
    tamper: &dyn Fn(u64, &mut AuditRecord),
    signer: &dyn Fn(u64) -> Option<Writer>,
) -> Files {
    let mut files: Vec<Vec<u8>> = vec![Vec::new()];
    let mut prev = [0u8; 32];
    for (index, step) in (0u64..).zip(steps) {
        let (time, entry) = match step {
            Step::Record(time, entry) => (*time, entry.clone()),
            Step::Rotate(time) => {
                files.push(Vec::new());
                (
                    *time,
                    Entry::Rotation {
                        previous_file_head: serde_bytes::ByteArray::new(prev),
                    },
                )
            }
        };
        let mut record = AuditRecord::new(w.log_id, index, prev, time, entry);
        tamper(index, &mut record);
        let by = signer(index);
        let (key, credential) = by
            .as_ref()
            .map_or((&w.key, &w.credential), |o| (&o.key, &o.credential));
        let envelope = if by.is_none() && w.unsigned.contains(&index) {
            gearmq_schemas::codec::encode(&Signed {
                body: gearmq_schemas::codec::encode(&record),
                signer: credential.clone(),
                sig: serde_bytes::ByteArray::new([0; 64]),
            })
        } else {
            Signed::seal(&record, key, credential)
        };
        prev = sha256(&envelope);
        files.last_mut().unwrap().extend(frame(&envelope));
    }
    let n = files.len();
    files
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| {
            let file = if i + 1 == n {
                base.to_string()
            } else {
                format!("{base}.{}", i + 1)
            };
            (file, bytes)
        })
        .collect()
}

fn plain(w: &Writer, base: &str, steps: &[Step]) -> Files {
    write(w, base, steps, &|_, _| {}, &|_| None)
}

fn install_request() -> Request {
    Request {
        kind: "request".into(),
        version: VERSION,
        id: Uuid::from_u128(INSTALL_ID),
        caller: name("ops"),
        issued_at: INSTALL_ISSUED_AT,
        expires_at: INSTALL_ISSUED_AT + 300_000,
        targets: Targets::Hosts(vec![name("web1")]),
        reply_to: REPLY_TO.into(),
        action: ActionName::new("install").unwrap(),
        // Refused before its arguments are read: an empty map.
        args: vec![0x80],
        token: None,
    }
}

/// web1's reply to `request` (the whole signed message) with `status` and `error`.
fn web1_reply(request: &[u8], status: Status, error: &str, started_at: Millis) -> Vec<u8> {
    let (body, _) = audit::peek_signed::<Request>(request, DEFAULT_MAX_MESSAGE_BYTES).unwrap();
    let env = Signed::decode(request, DEFAULT_MAX_MESSAGE_BYTES).unwrap();
    let mut reply = Reply::new(
        body.id,
        sha256(&env.body),
        name("web1"),
        status,
        started_at,
        started_at + 2,
    );
    reply.error = Some(error.into());
    Signed::seal(&reply, &host_key(), &read_vector("credential-host.bin"))
}

/// The embedded messages the logs hold, by name.
struct Messages {
    ping: Vec<u8>,
    ping_reply: Vec<u8>,
    forged_reply: Vec<u8>,
    junk: Vec<u8>,
    install: Vec<u8>,
    install_refused: Vec<u8>,
    install_ok: Vec<u8>,
    delegated: Vec<u8>,
    delegated_reply: Vec<u8>,
    event: Vec<u8>,
}

fn messages() -> Messages {
    let ping = read_vector("request-ping.bin");
    let ping_reply = read_vector("reply-ping.bin");
    let mut forged_reply = ping_reply.clone();
    let last = forged_reply.len() - 1;
    forged_reply[last] ^= 0x01;
    let junk: Vec<u8> = b"not a gearmq message; "
        .iter()
        .copied()
        .cycle()
        .take(2000)
        .collect();
    let install = Signed::seal(
        &install_request(),
        &operator_key(),
        &read_vector("credential-operator.bin"),
    );
    let install_refused = web1_reply(
        &install,
        Status::Unauthorized,
        "operator ops is not allowed action install",
        INSTALL_ISSUED_AT + 10,
    );
    let install_ok = web1_reply(&install, Status::Ok, "", INSTALL_ISSUED_AT + 10);
    let delegated = read_vector("request-token.bin");
    let delegated_reply = web1_reply(
        &delegated,
        Status::NotFound,
        "unit web is not installed",
        T0 + 120_020,
    );
    Messages {
        ping,
        ping_reply,
        forged_reply,
        junk,
        install,
        install_refused,
        install_ok,
        delegated,
        delegated_reply,
        event: read_vector("event-unit.bin"),
    }
}

fn ops_steps(m: &Messages) -> Vec<Step> {
    let ping_id = Uuid::from_u128(super::REQUEST_ID);
    vec![
        Step::Record(T0 + 59_000, Entry::Genesis {}),
        Step::Record(ISSUED_AT, Entry::request_sent(&m.ping)),
        Step::Rotate(ISSUED_AT + 100),
        Step::Record(FINISHED_AT + 8, Entry::reply_accepted(&m.ping_reply)),
        Step::Record(
            FINISHED_AT + 18,
            Entry::reply_rejected(&m.forged_reply, "forged", Some("web1")),
        ),
        Step::Record(
            FINISHED_AT + 28,
            Entry::reply_rejected(&m.junk, "malformed", None),
        ),
        Step::Record(
            FINISHED_AT + 100,
            Entry::replies_rejected(
                Some(ping_id),
                &BTreeMap::from([("duplicate".into(), 3), ("forged".into(), 2)]),
                2_910,
                FINISHED_AT + 40,
                FINISHED_AT + 90,
            )
            .unwrap(),
        ),
        Step::Record(
            NOW,
            Entry::replies_rejected(
                None,
                &BTreeMap::from([("unknown_request".into(), 4)]),
                2_400,
                T0 + 120_000,
                T0 + 140_000,
            )
            .unwrap(),
        ),
        Step::Record(NOW, Entry::event_accepted(&m.event)),
    ]
}

fn web1_steps(m: &Messages) -> Vec<Step> {
    vec![
        Step::Record(T0 + 59_500, Entry::Genesis {}),
        Step::Record(
            FINISHED_AT + 5,
            Entry::request_handled(&m.ping, Some(&m.ping_reply)),
        ),
        Step::Record(
            INSTALL_ISSUED_AT + 15,
            Entry::request_handled(&m.install, Some(&m.install_refused)),
        ),
        Step::Rotate(T0 + 100_000),
        Step::Record(
            T0 + 110_000,
            Entry::request_repeated(&m.ping, &m.ping_reply),
        ),
        Step::Record(
            T0 + 120_030,
            Entry::request_handled(&m.delegated, Some(&m.delegated_reply)),
        ),
        Step::Record(
            T0 + 130_000,
            Entry::request_repeated(&m.install, &m.install_refused),
        ),
    ]
}

fn anchors() -> TrustAnchors {
    TrustAnchors::new(vec![issuer_key().public_key()])
}

fn verify(files: &Files, options: &VerifyOptions) -> Result<Summary, Broken> {
    verify_log(files, &anchors(), options)
}

fn summary_json(s: &Summary) -> Value {
    json!({
        "files": s.files,
        "records": s.records,
        "requests_sent": s.requests_sent,
        "replies_accepted": s.replies_accepted,
        "replies_rejected": s.replies_rejected,
        "requests_handled": s.requests_handled,
        "handled_not_ok": s.handled_not_ok,
        "requests_repeated": s.requests_repeated,
        "rejection_summaries": s.rejection_summaries,
        "replies_summarised": s.replies_summarised,
        "events_accepted": s.events_accepted,
        "head": hex::encode(s.head),
        "log_id": hex::encode(s.log_id),
        "writer": s.writer.as_str(),
        "writer_role": s.writer_role.to_string(),
        "first_time": s.first_time,
        "last_time": s.last_time,
    })
}

fn entry_json(e: &Entry) -> Value {
    let h = |b: &[u8]| hex::encode(b);
    match e {
        Entry::Genesis {} => json!({}),
        Entry::Rotation { previous_file_head } => {
            json!({"previous_file_head": h(previous_file_head.as_slice())})
        }
        Entry::RequestSent { request } => json!({"request_sha256": h(&sha256(request))}),
        Entry::ReplyAccepted { reply } => json!({"reply_sha256": h(&sha256(reply))}),
        Entry::EventAccepted { event } => json!({"event_sha256": h(&sha256(event))}),
        Entry::ReplyRejected { .. } => {
            let x = e.as_rejected_reply().expect("a rejected reply");
            json!({
                "digest": h(x.digest),
                "size": x.size,
                "reason": x.reason,
                "broker_user": x.broker_user,
                "excerpt_len": x.excerpt.len(),
            })
        }
        Entry::RequestHandled { request, reply } => json!({
            "request_sha256": h(&sha256(request)),
            "reply_sha256": reply.as_ref().map(|r| h(&sha256(r))),
        }),
        Entry::RequestRepeated { request, reply } => json!({
            "request": h(request.as_slice()),
            "reply": h(reply.as_slice()),
        }),
        Entry::RepliesRejected { .. } => {
            let x = e.as_summary().expect("a summary");
            json!({
                "request_id": x.request_id.map(|id| id.to_string()),
                "counts": x.counts,
                "messages": x.messages,
                "bytes": x.bytes,
                "first_time": x.first_time,
                "last_time": x.last_time,
            })
        }
    }
}

/// Every record of a family, as an auditor would list it.
fn records_json(files: &Files) -> Vec<Value> {
    let mut out = Vec::new();
    for (file, bytes) in files {
        for f in audit::frames(bytes) {
            let f = f.unwrap();
            let env = Signed::decode(f.bytes, audit::MAX_RECORD_BYTES).unwrap();
            let view = audit::read_record(f.bytes).unwrap();
            let r = &view.record;
            out.push(json!({
                "file": file,
                "offset": f.offset,
                "len": f.bytes.len(),
                "index": r.index,
                "time": r.time,
                "prev": hex::encode(r.prev.as_slice()),
                "hash": hex::encode(view.hash),
                "entry": r.entry.name(),
                "fields": entry_json(&r.entry),
                "body_hex": hex::encode(&env.body),
                "sig": hex::encode(env.sig.as_slice()),
                "signed": view.signed,
            }));
        }
    }
    out
}

fn family_json(w: &Writer, credential: &str, seed: &[u8; 32], files: &Files) -> Value {
    let s = verify(files, &VerifyOptions::default()).unwrap();
    let cred: Credential = audit::peek_signed::<AuditRecord>(
        audit::frames(&files[0].1).next().unwrap().unwrap().bytes,
        audit::MAX_RECORD_BYTES,
    )
    .unwrap()
    .1;
    json!({
        "writer": format!("{} ({})", cred.name, cred.role),
        "credential": credential,
        "signed_by": key_json(&format!("{} {}", cred.role, cred.name), seed),
        "log_id": hex::encode(w.log_id),
        "files": files.iter().map(|(f, b)| json!({
            "file": f,
            "len": b.len(),
            "sha256": hex::encode(sha256(b)),
        })).collect::<Vec<_>>(),
        "records": records_json(files),
        "summary": summary_json(&s),
    })
}

/// A broken family and where `verify_log` must stop.
struct Refusal {
    what: &'static str,
    files: Files,
    expect_head: Option<[u8; 32]>,
    file: String,
    record: u64,
    problem: &'static str,
}

fn must_refuse(m: &Messages, ops_files: &Files, web1_files: &Files) -> Vec<Refusal> {
    let (ops_w, web1_w) = (ops(), web1());
    let ops_plan = ops_steps(m);
    let web1_plan = web1_steps(m);
    let refusal = |what, files: Files, file: &str, record, problem| Refusal {
        what,
        files,
        expect_head: None,
        file: file.to_string(),
        record,
        problem,
    };
    let mut cases = Vec::new();

    cases.push(refusal(
        "ops family, live file only: it starts with rotation",
        vec![ops_files[1].clone()],
        "audit-ops.log",
        0,
        "no_genesis",
    ));
    cases.push(refusal(
        "ops family, files given newest first",
        vec![ops_files[1].clone(), ops_files[0].clone()],
        "audit-ops.log",
        0,
        "no_genesis",
    ));

    // web1's live file without its first record after rotation (request_repeated).
    let live = &web1_files[1].1;
    let spans: Vec<(usize, usize)> = audit::frames(live)
        .map(|f| {
            let f = f.unwrap();
            (f.offset, f.offset + 4 + f.bytes.len())
        })
        .collect();
    let cut = [&live[..spans[1].0], &live[spans[1].1..]].concat();
    cases.push(refusal(
        "web1 family with record 4 (request_repeated) removed",
        vec![web1_files[0].clone(), ("audit-web1.log".into(), cut)],
        "audit-web1.log",
        4,
        "index_mismatch",
    ));

    let mut flipped = web1_files[0].1.clone();
    let end = audit::frames(&flipped).nth(1).map(|f| {
        let f = f.unwrap();
        f.offset + 4 + f.bytes.len()
    });
    flipped[end.unwrap() - 1] ^= 0x01;
    cases.push(refusal(
        "web1 family with the last signature bit of record 1 flipped",
        vec![("audit-web1.log.1".into(), flipped), web1_files[1].clone()],
        "audit-web1.log.1",
        1,
        "writer_signature",
    ));

    cases.push(refusal(
        "ops family whose rotation record names another previous_file_head, re-signed",
        write(
            &ops_w,
            "audit-ops.log",
            &ops_plan,
            &|i, r| {
                if i == 2 {
                    r.entry = Entry::Rotation {
                        previous_file_head: serde_bytes::ByteArray::new([0; 32]),
                    };
                }
            },
            &|_| None,
        ),
        "audit-ops.log",
        2,
        "rotation_head_mismatch",
    ));

    let mut early = ops_plan.clone();
    early.swap(1, 3);
    cases.push(refusal(
        "ops family with reply_accepted (record 1) before its request_sent (record 3)",
        plain(&ops_w, "audit-ops.log", &early),
        "audit-ops.log.1",
        1,
        "unknown_request",
    ));

    let mut twice = ops_plan.clone();
    twice.insert(
        4,
        Step::Record(FINISHED_AT + 9, Entry::reply_accepted(&m.ping_reply)),
    );
    cases.push(refusal(
        "ops family accepting the ping reply twice",
        plain(&ops_w, "audit-ops.log", &twice),
        "audit-ops.log",
        4,
        "duplicate_reply",
    ));

    let mut bad_excerpt = ops_plan.clone();
    bad_excerpt[4] = Step::Record(
        FINISHED_AT + 18,
        Entry::ReplyRejected {
            digest: serde_bytes::ByteArray::new([0; 32]),
            size: m.forged_reply.len() as u64,
            reason: "forged".into(),
            broker_user: Some("web1".into()),
            excerpt: m.forged_reply.clone(),
        },
    );
    cases.push(refusal(
        "ops family with a reply_rejected whose whole-message excerpt does not hash to its digest",
        plain(&ops_w, "audit-ops.log", &bad_excerpt),
        "audit-ops.log",
        4,
        "body",
    ));

    let mut unknown = web1_plan.clone();
    unknown[4] = Step::Record(
        T0 + 110_000,
        Entry::request_repeated(&m.install, &m.ping_reply),
    );
    cases.push(refusal(
        "web1 family whose request_repeated pairs the install request with the ping reply",
        plain(&web1_w, "audit-web1.log", &unknown),
        "audit-web1.log",
        4,
        "repeat_with_other_reply",
    ));

    let mut executed = web1_plan.clone();
    executed[2] = Step::Record(
        INSTALL_ISSUED_AT + 15,
        Entry::request_handled(&m.install, Some(&m.install_ok)),
    );
    cases.push(refusal(
        "web1 family where the install request ops may not make is answered ok",
        plain(&web1_w, "audit-web1.log", &executed),
        "audit-web1.log.1",
        2,
        "unauthorized_not_refused",
    ));

    cases.push(refusal(
        "web1 family with record 5 signed by web2 (another host)",
        write(&web1_w, "audit-web1.log", &web1_plan, &|_, _| {}, &|i| {
            (i == 5).then(|| web2(WEB1_LOG_ID))
        }),
        "audit-web1.log",
        5,
        "writer_changed",
    ));

    cases.push(refusal(
        "ops family cut after record 7, which is left unsigned: nothing seals it",
        write(
            &Writer {
                unsigned: vec![3, 4, 7],
                ..ops()
            },
            "audit-ops.log",
            &ops_plan[..8],
            &|_, _| {},
            &|_| None,
        ),
        "audit-ops.log",
        7,
        "unsealed_tail",
    ));

    cases.push(refusal(
        "ops family whose unsigned records 3 and 4 are sealed by record 5 signed by web2",
        write(&ops_w, "audit-ops.log", &ops_plan, &|_, _| {}, &|i| {
            (i == 5).then(|| web2(OPS_LOG_ID))
        }),
        "audit-ops.log",
        5,
        "seal_signer",
    ));

    // Record 4 (unsigned) rewritten after the fact: its own checks pass, but record 5's
    // signed `prev` no longer matches it.
    let live = &ops_files[1].1;
    let f4 = audit::frames(live).nth(2).unwrap().unwrap();
    let mut env = Signed::decode(f4.bytes, audit::MAX_RECORD_BYTES).unwrap();
    let mut r4 = audit::read_record(f4.bytes).unwrap().record;
    assert_eq!(r4.index, 4);
    r4.time += 1;
    env.body = gearmq_schemas::codec::encode(&r4);
    let rewritten = [
        &live[..f4.offset],
        &frame(&gearmq_schemas::codec::encode(&env)),
        &live[f4.offset + 4 + f4.bytes.len()..],
    ]
    .concat();
    cases.push(refusal(
        "ops family with unsigned record 4 rewritten (its time + 1 ms)",
        vec![ops_files[0].clone(), ("audit-ops.log".into(), rewritten)],
        "audit-ops.log",
        5,
        "prev_mismatch",
    ));

    cases.push(Refusal {
        what: "web1 family checked against the head of its record 5 (records cut off after it)",
        files: web1_files.clone(),
        expect_head: Some(
            audit::read_record(
                audit::frames(&web1_files[1].1)
                    .nth(2)
                    .unwrap()
                    .unwrap()
                    .bytes,
            )
            .unwrap()
            .hash,
        ),
        file: "audit-web1.log".into(),
        record: 7,
        problem: "head_mismatch",
    });

    // web1 signs a second, different event with event-unit.bin's boot and seq.
    let mut other = super::unit_event();
    other.what = What::Stopping {};
    let other = Signed::seal(
        &other,
        &super::host_key(),
        &read_vector("credential-host.bin"),
    );
    let mut conflict = ops_plan.clone();
    conflict.push(Step::Record(NOW + 10, Entry::event_accepted(&other)));
    cases.push(refusal(
        "ops family accepting a second, different event with event-unit.bin's boot and seq",
        plain(&ops_w, "audit-ops.log", &conflict),
        "audit-ops.log",
        9,
        "event_conflict",
    ));
    cases
}

fn files_json(files: &Files, vectors: &[&Files]) -> Vec<Value> {
    files
        .iter()
        .map(|(name, bytes)| {
            let same = vectors
                .iter()
                .flat_map(|v| v.iter())
                .find(|(_, b)| b == bytes)
                .map(|(n, _)| n.clone());
            match same {
                Some(vector) => json!({"name": name, "same_as": vector}),
                None => json!({"name": name, "hex": hex::encode(bytes)}),
            }
        })
        .collect()
}

/// A list revoking ops (serial 2) from T0 + 100 s, for `--revocations`.
fn revoking_ops() -> RevocationList {
    RevocationList {
        sequence: 3,
        issued_at: T0 + 100_000,
        serials: vec![2],
        names: vec![],
        ..RevocationList::empty(0)
    }
}

#[test]
fn audit_vectors_rebuild_and_verify() {
    let m = messages();
    let ops_files = plain(&ops(), "audit-ops.log", &ops_steps(&m));
    let web1_files = plain(&web1(), "audit-web1.log", &web1_steps(&m));
    for (file, bytes) in ops_files.iter().chain(&web1_files) {
        check_file(file, bytes);
    }

    let refusals = must_refuse(&m, &ops_files, &web1_files);
    let revoked = VerifyOptions {
        revocations: vec![revoking_ops()],
        ..VerifyOptions::default()
    };
    let revoked_summary = verify(&ops_files, &revoked).unwrap();
    let listing = json!({
        "about": "Audit log vectors (schemas/PROTOCOL.md, Audit log), built by schemas/tests/vectors/audit.rs: the orchestrator's (ops) and the agent's (web1) logs of the vector messages, each two files (<base>.1 then <base>), to be verified oldest first with the issuer below trusted and a clock skew of 5 minutes. records: every record with its frame offset in its file, its fields and hash. must_refuse: broken families (a file is given as hex, or as the vector file it equals) and where verification must stop: the file, the index the record should have, the problem label.",
        "trusted_issuers": [issuer_key().public_key().to_hex()],
        "skew_ms": VerifyOptions::default().skew_ms,
        "embedded": {
            "install_request_hex": hex::encode(&m.install),
            "install_refused_reply_hex": hex::encode(&m.install_refused),
            "delegated_reply_hex": hex::encode(&m.delegated_reply),
            "junk_message_hex": hex::encode(&m.junk),
            "forged_reply": "reply-ping.bin with its last byte flipped",
            "other_messages": "request-ping.bin, reply-ping.bin, request-token.bin",
        },
        "families": [
            family_json(&ops(), "credential-operator.bin", &OPERATOR_SEED, &ops_files),
            family_json(&web1(), "credential-host.bin", &HOST_SEED, &web1_files),
        ],
        "revocations": {
            "about": "The ops family verified with one more list, revoking serial 2 (ops) and issued at revoked_since: the chain holds, and the records that used the revoked credential from then on are listed (exit 3).",
            "list_hex": hex::encode(revoking_ops().issue(&issuer_key())),
            "revoked_since": T0 + 100_000,
            "uses": revoked_summary.revoked.iter().map(|u| json!({
                "file": u.file,
                "record": u.record,
                "time": u.time,
                "what": u.what,
                "name": u.name.as_str(),
                "serial": u.serial,
            })).collect::<Vec<_>>(),
        },
        "must_refuse": refusals.iter().map(|r| json!({
            "what": r.what,
            "files": files_json(&r.files, &[&ops_files, &web1_files]),
            "expect_head": r.expect_head.map(hex::encode),
            "broken_at": {"file": r.file, "record": r.record, "problem": r.problem},
        })).collect::<Vec<_>>(),
    });
    check_json("audit.json", &listing);

    // The checked-in families verify to the listed summaries.
    let read = |names: [&str; 2]| -> Files {
        names
            .iter()
            .map(|n| (n.to_string(), read_vector(n)))
            .collect()
    };
    let ops_on_disk = read(["audit-ops.log.1", "audit-ops.log"]);
    let web1_on_disk = read(["audit-web1.log.1", "audit-web1.log"]);
    let s = verify(&ops_on_disk, &VerifyOptions::default()).unwrap();
    assert_eq!(
        (
            s.records,
            s.requests_sent,
            s.replies_accepted,
            s.replies_rejected
        ),
        (9, 1, 1, 2)
    );
    assert_eq!((s.rejection_summaries, s.replies_summarised), (2, 9));
    assert_eq!(s.events_accepted, 1);
    let s = verify(&web1_on_disk, &VerifyOptions::default()).unwrap();
    assert_eq!(
        (
            s.records,
            s.requests_handled,
            s.handled_not_ok,
            s.requests_repeated
        ),
        (7, 3, 2, 2)
    );
    // Every record kind is in one of them.
    let kinds: std::collections::BTreeSet<&str> = listing["families"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| f["records"].as_array().unwrap())
        .map(|r| r["entry"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [
            "event_accepted",
            "genesis",
            "replies_rejected",
            "reply_accepted",
            "reply_rejected",
            "request_handled",
            "request_repeated",
            "request_sent",
            "rotation",
        ]
    );
    // Records 7 and 8, written by ops after its revocation.
    assert_eq!(revoked_summary.revoked_uses, 2);
}

#[test]
fn broken_audit_families_stop_at_the_listed_record() {
    let listing: Value = serde_json::from_slice(&read_vector("audit.json")).unwrap();
    for case in listing["must_refuse"].as_array().unwrap() {
        let what = case["what"].as_str().unwrap();
        let files: Files = case["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let bytes = match f["same_as"].as_str() {
                    Some(vector) => read_vector(vector),
                    None => hex::decode(f["hex"].as_str().unwrap()).unwrap(),
                };
                (f["name"].as_str().unwrap().to_string(), bytes)
            })
            .collect();
        let options = VerifyOptions {
            expect_head: case["expect_head"]
                .as_str()
                .map(|h| hex::decode(h).unwrap().try_into().unwrap()),
            ..VerifyOptions::default()
        };
        let broken = verify(&files, &options)
            .err()
            .unwrap_or_else(|| panic!("{what}: verified, but must be refused"));
        let at = &case["broken_at"];
        assert_eq!(
            (broken.file.as_str(), broken.record, broken.problem.label()),
            (
                at["file"].as_str().unwrap(),
                at["record"].as_u64().unwrap(),
                at["problem"].as_str().unwrap()
            ),
            "{what}: {broken}"
        );
    }
}
