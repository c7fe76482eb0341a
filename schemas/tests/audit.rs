//! Audit logs: writing one chain whoever writes, and catching every kind of tampering.
//!
//! No broker: the requests and replies are real signed messages built with the
//! schemas API from fixed keys, as the orchestrator and the agents would log them.
//! Records are dated 2026-01-01 and the operator credential lives 30 days, so every
//! clean log here also proves that old logs verify after their credentials expire.

use gearmq_schemas::audit::{
    self, AuditLog, AuditOptions, AuditRecord, Broken, Entry, Problem, Summary, VerifyOptions,
    frame, frames, log_files, verify_log,
};
use gearmq_schemas::credential::{Credential, Role};
use gearmq_schemas::envelope::Signed;
use gearmq_schemas::event::{Event, UnitChange, What};
use gearmq_schemas::request::{LabelMatch, MatchOp, Request, Targets, reply_queue_name};
use gearmq_schemas::time::{Millis, now_ms};
use gearmq_schemas::{ActionName, Name, Reply, SigningKey, Status, TrustAnchors, sha256};
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const T0: Millis = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const DAY: Millis = 86_400_000;
/// Every record in these tests is written one hour into the credentials' lives.
const RECORD_TIME: Millis = T0 + 3_600_000;

fn record_clock() -> Millis {
    RECORD_TIME
}

fn issuer() -> SigningKey {
    SigningKey::from_seed(&[1; 32])
}
fn web1_key() -> SigningKey {
    SigningKey::from_seed(&[2; 32])
}
fn ops_key() -> SigningKey {
    SigningKey::from_seed(&[3; 32])
}
fn db1_key() -> SigningKey {
    SigningKey::from_seed(&[4; 32])
}
fn evil_key() -> SigningKey {
    SigningKey::from_seed(&[9; 32])
}

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn host_credential(serial: u64, host: &str, key: &SigningKey, role_label: &str) -> Vec<u8> {
    let mut c = Credential::new(
        serial,
        name(host),
        Role::Host,
        key.public_key(),
        T0,
        T0 + 365 * DAY,
    );
    c.labels.insert("role".into(), role_label.into());
    c.issue(&issuer())
}

fn web1_credential() -> Vec<u8> {
    host_credential(1, "web1", &web1_key(), "web")
}
fn db1_credential() -> Vec<u8> {
    host_credential(4, "db1", &db1_key(), "db")
}
fn ops_credential() -> Vec<u8> {
    let mut c = Credential::new(
        2,
        name("ops"),
        Role::Operator,
        ops_key().public_key(),
        T0,
        T0 + 30 * DAY,
    );
    c.actions.push(ActionName::new("ping").unwrap());
    c.issue(&issuer())
}

fn anchors() -> TrustAnchors {
    TrustAnchors::new(vec![issuer().public_key()])
}

fn options() -> AuditOptions {
    AuditOptions {
        clock: record_clock,
        ..AuditOptions::default()
    }
}

/// A ping signed by `ops` (or by `signer` with a delegation token).
fn request(targets: Targets) -> (Vec<u8>, Request) {
    let caller = name("ops");
    let req = Request::new(
        caller.clone(),
        RECORD_TIME - 1000,
        RECORD_TIME + 300_000,
        targets,
        reply_queue_name(&caller, "0001"),
        ActionName::new("ping").unwrap(),
        vec![0x80],
    );
    (Signed::seal(&req, &ops_key(), &ops_credential()), req)
}

fn reply(
    req_bytes: &[u8],
    req: &Request,
    host: &str,
    key: &SigningKey,
    cred: &[u8],
    status: Status,
) -> Vec<u8> {
    let body = Signed::decode(req_bytes, 1 << 20).unwrap().body;
    let rep = Reply::new(
        req.id,
        sha256(&body),
        name(host),
        status,
        RECORD_TIME,
        RECORD_TIME + 2,
    );
    Signed::seal(&rep, key, cred)
}

/// An explicit host list, sorted as the wire requires.
fn hosts(names: &[&str]) -> Targets {
    let mut v: Vec<Name> = names.iter().map(|n| name(n)).collect();
    v.sort();
    Targets::Hosts(v)
}

fn verify(files: &[(String, Vec<u8>)]) -> Result<Summary, Broken> {
    verify_log(files, &anchors(), &VerifyOptions::default())
}

fn read_files(paths: &[PathBuf]) -> Vec<(String, Vec<u8>)> {
    paths
        .iter()
        .map(|p| (p.display().to_string(), std::fs::read(p).unwrap()))
        .collect()
}

fn one_file(path: &Path) -> Vec<(String, Vec<u8>)> {
    read_files(&[path.to_path_buf()])
}

/// The orchestrator's log of two pings: requests, accepted replies and a forged reply.
/// Records: 0 genesis, 1 sent, 2 accepted, 3 accepted, 4 rejected, 5 sent, 6 accepted.
fn orchestrator_log(dir: &Path) -> PathBuf {
    let path = dir.join("audit.log");
    let mut log = AuditLog::open(&path, ops_key(), &ops_credential(), options()).unwrap();
    let (r1, q1) = request(hosts(&["web1", "db1"]));
    log.append(Entry::request_sent(&r1)).unwrap();
    let ok1 = reply(
        &r1,
        &q1,
        "web1",
        &web1_key(),
        &web1_credential(),
        Status::Ok,
    );
    let ok2 = reply(&r1, &q1, "db1", &db1_key(), &db1_credential(), Status::Ok);
    log.append_batch(vec![
        Entry::reply_accepted(&ok1),
        Entry::reply_accepted(&ok2),
    ])
    .unwrap();
    // web1's credential, someone else's key: the orchestrator refused it as forged.
    let forged = reply(
        &r1,
        &q1,
        "web1",
        &evil_key(),
        &web1_credential(),
        Status::Ok,
    );
    log.append(Entry::reply_rejected(&forged, "forged", Some("web1")))
        .unwrap();
    let (r2, q2) = request(Targets::Selector(vec![LabelMatch {
        key: "role".into(),
        op: MatchOp::Eq,
        value: "web".into(),
    }]));
    log.append(Entry::request_sent(&r2)).unwrap();
    let ok3 = reply(
        &r2,
        &q2,
        "web1",
        &web1_key(),
        &web1_credential(),
        Status::Ok,
    );
    log.append(Entry::reply_accepted(&ok3)).unwrap();
    path
}

/// web1's log: a ping executed, a delegated ping from db1, an unauthorized refusal.
fn agent_log(dir: &Path) -> PathBuf {
    let path = dir.join("agent-audit.log");
    let mut log = AuditLog::open(&path, web1_key(), &web1_credential(), options()).unwrap();
    let (r1, q1) = request(hosts(&["web1"]));
    let ok = reply(
        &r1,
        &q1,
        "web1",
        &web1_key(),
        &web1_credential(),
        Status::Ok,
    );
    log.append(Entry::request_handled(&r1, Some(&ok))).unwrap();
    // db1 calls web1 under a delegation token (sealed to web1; opaque here).
    let caller = name("db1");
    let mut delegated = Request::new(
        caller.clone(),
        RECORD_TIME - 1000,
        RECORD_TIME + 60_000,
        hosts(&["web1"]),
        reply_queue_name(&caller, "7"),
        ActionName::new("ping").unwrap(),
        vec![0x80],
    );
    delegated.token = Some(serde_bytes::ByteBuf::from(vec![1, 2, 3]));
    let d = Signed::seal(&delegated, &db1_key(), &db1_credential());
    let dr = reply(
        &d,
        &delegated,
        "web1",
        &web1_key(),
        &web1_credential(),
        Status::Ok,
    );
    log.append(Entry::request_handled(&d, Some(&dr))).unwrap();
    let (r3, q3) = request(hosts(&["web1"]));
    let refused = reply(
        &r3,
        &q3,
        "web1",
        &web1_key(),
        &web1_credential(),
        Status::Unauthorized,
    );
    log.append(Entry::request_handled(&r3, Some(&refused)))
        .unwrap();
    path
}

/// The frames of a file's bytes, as (offset, length with prefix).
fn frame_spans(bytes: &[u8]) -> Vec<(usize, usize)> {
    frames(bytes)
        .map(|f| {
            let f = f.unwrap();
            (f.offset, 4 + f.bytes.len())
        })
        .collect()
}

fn broken_at(result: Result<Summary, Broken>, record: u64) -> Broken {
    let b = result.expect_err("verification should fail");
    assert_eq!(b.record, record, "{b}");
    b
}

#[test]
fn clean_orchestrator_and_agent_logs_verify_after_credentials_expired() {
    assert!(
        now_ms() > T0 + 30 * DAY,
        "the operator credential has expired"
    );
    let dir = tempfile::tempdir().unwrap();
    let s = verify(&one_file(&orchestrator_log(dir.path()))).unwrap();
    assert_eq!(
        (
            s.records,
            s.requests_sent,
            s.replies_accepted,
            s.replies_rejected
        ),
        (7, 2, 3, 1)
    );
    assert_eq!((s.writer.as_str(), s.writer_role), ("ops", Role::Operator));

    let s = verify(&one_file(&agent_log(dir.path()))).unwrap();
    assert_eq!((s.records, s.requests_handled, s.handled_not_ok), (4, 3, 1));
    assert_eq!(s.writer.as_str(), "web1");
}

#[test]
fn every_flipped_byte_in_a_record_is_caught_at_that_record() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(orchestrator_log(dir.path())).unwrap();
    let (start, len) = frame_spans(&bytes)[3];
    for i in start..start + len {
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        let broken = broken_at(verify(&[("audit.log".into(), b)]), 3);
        assert_eq!(broken.file, "audit.log");
    }
}

#[test]
fn a_deleted_record_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(orchestrator_log(dir.path())).unwrap();
    let (start, len) = frame_spans(&bytes)[2];
    let mut b = bytes.clone();
    b.drain(start..start + len);
    let broken = broken_at(verify(&[("audit.log".into(), b)]), 2);
    assert!(matches!(
        broken.problem,
        Problem::IndexMismatch {
            expected: 2,
            got: 3
        }
    ));
}

#[test]
fn two_swapped_records_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(orchestrator_log(dir.path())).unwrap();
    let spans = frame_spans(&bytes);
    let (a, b) = (spans[4], spans[5]);
    let mut swapped = bytes[..a.0].to_vec();
    swapped.extend_from_slice(&bytes[b.0..b.0 + b.1]);
    swapped.extend_from_slice(&bytes[a.0..a.0 + a.1]);
    swapped.extend_from_slice(&bytes[b.0 + b.1..]);
    broken_at(verify(&[("audit.log".into(), swapped)]), 4);
}

/// A record that chains correctly (right index, right prev hash) appended by someone
/// without the writer's key.
fn append_forged_record(bytes: &[u8], key: &SigningKey, credential: &[u8]) -> Vec<u8> {
    let spans = frame_spans(bytes);
    let (last_off, last_len) = *spans.last().unwrap();
    let last = audit::read_record(&bytes[last_off + 4..last_off + last_len]).unwrap();
    let (r, _) = request(hosts(&["web1"]));
    let record = AuditRecord::new(
        *last.record.log_id,
        last.record.index + 1,
        last.hash,
        RECORD_TIME,
        Entry::request_sent(&r),
    );
    let mut out = bytes.to_vec();
    out.extend(frame(&Signed::seal(&record, key, credential)));
    out
}

#[test]
fn an_appended_record_with_the_right_hash_but_no_valid_writer_signature_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(orchestrator_log(dir.path())).unwrap();

    // The writer's credential, another key.
    let b = append_forged_record(&bytes, &evil_key(), &ops_credential());
    let broken = broken_at(verify(&[("audit.log".into(), b)]), 7);
    assert!(matches!(broken.problem, Problem::WriterSignature { .. }));

    // A self-made credential from an untrusted issuer.
    let fake = Credential::new(
        2,
        name("ops"),
        Role::Operator,
        evil_key().public_key(),
        T0,
        T0 + 30 * DAY,
    )
    .issue(&evil_key());
    let b = append_forged_record(&bytes, &evil_key(), &fake);
    let broken = broken_at(verify(&[("audit.log".into(), b)]), 7);
    assert!(matches!(broken.problem, Problem::WriterCredential(_)));

    // A real credential of another identity (a compromised host).
    let b = append_forged_record(&bytes, &web1_key(), &web1_credential());
    let broken = broken_at(verify(&[("audit.log".into(), b)]), 7);
    assert!(matches!(broken.problem, Problem::WriterChanged { .. }));
}

#[test]
fn a_truncated_tail_is_caught_with_expect_head() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(orchestrator_log(dir.path())).unwrap();
    let head = verify(&[("audit.log".into(), bytes.clone())]).unwrap().head;
    let (last_off, _) = *frame_spans(&bytes).last().unwrap();
    let cut = bytes[..last_off].to_vec();

    // Cutting whole records off the end is invisible without a head noted elsewhere.
    assert_eq!(
        verify(&[("audit.log".into(), cut.clone())])
            .unwrap()
            .records,
        6
    );
    let opts = VerifyOptions {
        expect_head: Some(head),
        ..VerifyOptions::default()
    };
    let broken = verify_log(&[("audit.log", &cut)], &anchors(), &opts).unwrap_err();
    assert_eq!(broken.record, 6, "{broken}");
    assert!(matches!(broken.problem, Problem::HeadMismatch { .. }));
    assert!(verify_log(&[("audit.log", &bytes)], &anchors(), &opts).is_ok());

    // Cut inside a record: caught even without a head.
    let torn = bytes[..bytes.len() - 10].to_vec();
    let broken = broken_at(verify(&[("audit.log".into(), torn)]), 6);
    assert!(matches!(broken.problem, Problem::Frame(_)));
}

#[test]
fn an_accepted_reply_with_no_logged_request_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut log = AuditLog::open(&path, ops_key(), &ops_credential(), options()).unwrap();
    let (r1, q1) = request(hosts(&["web1"]));
    log.append(Entry::request_sent(&r1)).unwrap();
    let (r2, q2) = request(hosts(&["web1"]));
    let stray = reply(
        &r2,
        &q2,
        "web1",
        &web1_key(),
        &web1_credential(),
        Status::Ok,
    );
    log.append(Entry::reply_accepted(&stray)).unwrap();
    let broken = broken_at(verify(&one_file(&path)), 2);
    assert!(matches!(broken.problem, Problem::UnknownRequest { .. }));

    // Same id, other bytes: a digest mismatch.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut log = AuditLog::open(&path, ops_key(), &ops_credential(), options()).unwrap();
    log.append(Entry::request_sent(&r1)).unwrap();
    let mut other = q1.clone();
    other.expires_at += 1;
    let other_bytes = Signed::seal(&other, &ops_key(), &ops_credential());
    let bound_elsewhere = reply(
        &other_bytes,
        &other,
        "web1",
        &web1_key(),
        &web1_credential(),
        Status::Ok,
    );
    log.append(Entry::reply_accepted(&bound_elsewhere)).unwrap();
    let broken = broken_at(verify(&one_file(&path)), 2);
    assert!(matches!(broken.problem, Problem::DigestMismatch { .. }));

    // A reply from a host the request did not target.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut log = AuditLog::open(&path, ops_key(), &ops_credential(), options()).unwrap();
    log.append(Entry::request_sent(&r1)).unwrap();
    let from_db1 = reply(&r1, &q1, "db1", &db1_key(), &db1_credential(), Status::Ok);
    log.append(Entry::reply_accepted(&from_db1)).unwrap();
    let broken = broken_at(verify(&one_file(&path)), 2);
    assert!(matches!(broken.problem, Problem::NotATarget { .. }));
}

#[test]
fn a_forged_reply_logged_as_accepted_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut log = AuditLog::open(&path, ops_key(), &ops_credential(), options()).unwrap();
    let (r1, q1) = request(hosts(&["web1"]));
    log.append(Entry::request_sent(&r1)).unwrap();
    let forged = reply(
        &r1,
        &q1,
        "web1",
        &evil_key(),
        &web1_credential(),
        Status::Ok,
    );
    log.append(Entry::reply_accepted(&forged)).unwrap();
    let broken = broken_at(verify(&one_file(&path)), 2);
    assert!(matches!(
        broken.problem,
        Problem::Embedded { what: "reply", .. }
    ));
}

#[test]
fn a_handled_request_with_an_expired_credential_must_have_been_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.log");
    let mut opts = options();
    opts.clock = || T0 + 40 * DAY; // the operator credential ended at T0 + 30 days
    let mut log = AuditLog::open(&path, web1_key(), &web1_credential(), opts).unwrap();
    let (r, q) = request(hosts(&["web1"]));
    let refused = reply(
        &r,
        &q,
        "web1",
        &web1_key(),
        &web1_credential(),
        Status::Expired,
    );
    log.append(Entry::request_handled(&r, Some(&refused)))
        .unwrap();
    assert_eq!(verify(&one_file(&path)).unwrap().handled_not_ok, 1);
    let executed = reply(&r, &q, "web1", &web1_key(), &web1_credential(), Status::Ok);
    log.append(Entry::request_handled(&r, Some(&executed)))
        .unwrap();
    let broken = broken_at(verify(&one_file(&path)), 2);
    assert!(matches!(broken.problem, Problem::ExpiredNotRefused { .. }));
}

#[test]
fn a_writer_refuses_a_log_written_by_someone_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = orchestrator_log(dir.path());
    let err = AuditLog::open(&path, web1_key(), &web1_credential(), options()).unwrap_err();
    assert!(err.to_string().contains("written by ops"), "{err}");
    let err = AuditLog::open(&path, evil_key(), &ops_credential(), options()).unwrap_err();
    assert!(
        matches!(err, audit::AuditError::KeyMismatch { .. }),
        "{err}"
    );
}

fn rotated_log(dir: &Path) -> Vec<PathBuf> {
    let path = dir.join("audit.log");
    let opts = AuditOptions {
        max_bytes: 4000,
        ..options()
    };
    let mut log = AuditLog::open(&path, ops_key(), &ops_credential(), opts).unwrap();
    for _ in 0..6 {
        let (r, q) = request(hosts(&["web1"]));
        log.append(Entry::request_sent(&r)).unwrap();
        let ok = reply(&r, &q, "web1", &web1_key(), &web1_credential(), Status::Ok);
        log.append(Entry::reply_accepted(&ok)).unwrap();
    }
    log_files(&path).unwrap()
}

#[test]
fn rotation_chains_files_and_a_missing_middle_file_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let files = rotated_log(dir.path());
    assert!(files.len() >= 3, "{files:?}");
    for f in &files {
        assert!(std::fs::metadata(f).unwrap().len() <= 4000, "{f:?}");
    }
    let all = read_files(&files);
    let s = verify(&all).unwrap();
    assert_eq!(
        (s.files, s.requests_sent, s.replies_accepted),
        (files.len(), 6, 6)
    );
    // genesis + 12 entries + one rotation record per extra file
    assert_eq!(s.records, 13 + (files.len() as u64 - 1));

    let mut missing = all.clone();
    missing.remove(1);
    let broken = verify(&missing).unwrap_err();
    assert_eq!(broken.file, all[2].0, "{broken}");
    assert!(matches!(broken.problem, Problem::IndexMismatch { .. }));

    let mut reordered = all.clone();
    reordered.swap(1, 2);
    assert_eq!(verify(&reordered).unwrap_err().file, all[2].0);

    // The last file alone does not start a chain.
    let broken = verify(&all[all.len() - 1..]).unwrap_err();
    assert!(matches!(broken.problem, Problem::NoGenesis { .. }));
}

#[test]
fn a_half_done_rotation_is_finished_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let files = rotated_log(dir.path());
    let live = files.last().unwrap().clone();
    // As if the crash came after the old file was moved away, before the new one
    // (already written and fsynced as <path>.tmp) was moved into place.
    let tmp = dir.path().join(".audit.log.tmp");
    std::fs::rename(&live, &tmp).unwrap();
    let mut log = AuditLog::open(&live, ops_key(), &ops_credential(), options()).unwrap();
    assert!(!tmp.exists());
    let (r, _) = request(hosts(&["web1"]));
    log.append(Entry::request_sent(&r)).unwrap();
    verify(&read_files(&log_files(&live).unwrap())).unwrap();

    // The live file gone for good: no new chain that would fork the old one.
    std::fs::remove_file(&live).unwrap();
    let err = AuditLog::open(&live, ops_key(), &ops_credential(), options()).unwrap_err();
    assert!(matches!(err, audit::AuditError::MissingLog { .. }), "{err}");
}

fn repairs_seen() -> (AuditOptions, Arc<Mutex<Vec<audit::Repair>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let mut opts = options();
    opts.on_repair = Some(Arc::new(move |r: &audit::Repair| {
        s.lock().unwrap().push(r.clone())
    }));
    (opts, seen)
}

#[test]
fn a_torn_tail_is_cut_off_on_open_and_the_chain_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = orchestrator_log(dir.path());
    let good = std::fs::read(&path).unwrap();
    let (r, _) = request(hosts(&["web1"]));
    let next = append_forged_record(&good, &ops_key(), &ops_credential());
    for torn_len in [2, 4, 40, next.len() - good.len() - 1] {
        let torn = &next[good.len()..good.len() + torn_len];
        let mut bytes = good.clone();
        bytes.extend_from_slice(torn);
        std::fs::write(&path, &bytes).unwrap();
        let (opts, seen) = repairs_seen();
        let mut log = AuditLog::open(&path, ops_key(), &ops_credential(), opts).unwrap();
        let repairs = seen.lock().unwrap().clone();
        assert_eq!(repairs.len(), 1, "torn at {torn_len}");
        assert_eq!(repairs[0].offset, good.len() as u64);
        assert_eq!(repairs[0].removed, torn_len as u64);
        assert!(std::fs::read(&repairs[0].saved_to).unwrap().ends_with(torn));
        assert_eq!(std::fs::read(&path).unwrap(), good);
        log.append(Entry::request_sent(&r)).unwrap();
        assert_eq!(verify(&one_file(&path)).unwrap().records, 8);
    }

    // A crash after the file grew but before its data landed leaves zeros.
    let mut bytes = good.clone();
    bytes.extend_from_slice(&[0; 700]);
    std::fs::write(&path, &bytes).unwrap();
    let (opts, seen) = repairs_seen();
    AuditLog::open(&path, ops_key(), &ops_credential(), opts).unwrap();
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(std::fs::read(&path).unwrap(), good);
}

#[test]
fn a_batch_is_signed_once_and_a_batch_cut_short_is_cut_off_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = orchestrator_log(dir.path());
    let good = std::fs::read(&path).unwrap();
    let records = verify(&one_file(&path)).unwrap().records;
    let (r, _) = request(hosts(&["web1"]));
    let mut log = AuditLog::open(&path, ops_key(), &ops_credential(), options()).unwrap();
    log.append_batch((0..3).map(|_| Entry::request_sent(&r)).collect())
        .unwrap();
    drop(log);
    let batch = std::fs::read(&path).unwrap();
    let spans = frame_spans(&batch);
    let signed: Vec<bool> = spans[spans.len() - 3..]
        .iter()
        .map(|&(off, len)| {
            audit::read_record(&batch[off + 4..off + len])
                .unwrap()
                .signed
        })
        .collect();
    assert_eq!(
        signed,
        [false, false, true],
        "only the batch's last is signed"
    );
    assert_eq!(verify(&one_file(&path)).unwrap().records, records + 3);

    // The batch torn anywhere before its signed record is whole: cut off entirely.
    let (last_off, last_len) = spans[spans.len() - 1];
    let (second_off, _) = spans[spans.len() - 2];
    for cut in [second_off, last_off, last_off + last_len / 2] {
        std::fs::write(&path, &batch[..cut]).unwrap();
        assert_eq!(
            verify(&one_file(&path)).unwrap_err().problem.label(),
            if cut == last_off + last_len / 2 {
                "frame"
            } else {
                "unsealed_tail"
            },
            "verifying the file cut at {cut}"
        );
        let (opts, seen) = repairs_seen();
        let mut log = AuditLog::open(&path, ops_key(), &ops_credential(), opts).unwrap();
        let repairs = seen.lock().unwrap().clone();
        assert_eq!(repairs.len(), 1, "cut at {cut}");
        assert_eq!(repairs[0].offset, good.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), good);
        log.append(Entry::request_sent(&r)).unwrap();
        assert_eq!(verify(&one_file(&path)).unwrap().records, records + 1);
    }
}

#[test]
fn a_corrupt_record_that_is_not_a_torn_tail_stops_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = orchestrator_log(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    // A length prefix in the middle made huge: not a crash artifact.
    let (off, _) = frame_spans(&bytes)[3];
    bytes[off] = 0x7f;
    std::fs::write(&path, &bytes).unwrap();
    let err = AuditLog::open(&path, ops_key(), &ops_credential(), options()).unwrap_err();
    assert!(matches!(err, audit::AuditError::Corrupt { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing was cut");
}

const WRITERS: usize = 4;
const PER_WRITER: usize = 25;

#[test]
fn writers_in_threads_interleave_into_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let threads: Vec<_> = (0..WRITERS)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                let opts = AuditOptions {
                    max_bytes: 20_000,
                    ..options()
                };
                let mut log = AuditLog::open(&path, ops_key(), &ops_credential(), opts).unwrap();
                for _ in 0..PER_WRITER {
                    let (r, _) = request(hosts(&["web1"]));
                    log.append(Entry::request_sent(&r)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let files = log_files(&path).unwrap();
    assert!(files.len() > 1, "rotation happened under contention");
    let s = verify(&read_files(&files)).unwrap();
    assert_eq!(s.requests_sent, (WRITERS * PER_WRITER) as u64);
}

/// Run by `writers_in_processes_interleave_into_one_chain` in child processes of this
/// test binary; does nothing otherwise.
#[test]
fn child_writer() {
    let Ok(path) = std::env::var("GEARMQ_AUDIT_CHILD_LOG") else {
        return;
    };
    let opts = AuditOptions {
        max_bytes: 20_000,
        ..options()
    };
    let mut log = AuditLog::open(&path, ops_key(), &ops_credential(), opts).unwrap();
    for i in 0..PER_WRITER {
        let (r, _) = request(hosts(&["web1"]));
        if i % 5 == 0 {
            log.append_batch(vec![Entry::request_sent(&r), Entry::request_sent(&r)])
                .unwrap();
        } else {
            log.append(Entry::request_sent(&r)).unwrap();
        }
    }
}

#[test]
fn writers_in_processes_interleave_into_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..WRITERS)
        .map(|_| {
            std::process::Command::new(&exe)
                .args(["--exact", "child_writer", "--test-threads=1"])
                .env("GEARMQ_AUDIT_CHILD_LOG", &path)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let files = log_files(&path).unwrap();
    let s = verify(&read_files(&files)).unwrap();
    // Every fifth append is a batch of two.
    assert_eq!(
        s.requests_sent,
        (WRITERS * (PER_WRITER + PER_WRITER / 5)) as u64
    );
}

fn clean_log_bytes() -> &'static [u8] {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::read(orchestrator_log(dir.path())).unwrap()
    })
}

/// The offsets where a signed record ends: the only places a log may be cut and
/// still verify (an unsigned record waits for the signed one that seals its batch).
fn signed_record_ends(bytes: &[u8]) -> Vec<usize> {
    frame_spans(bytes)
        .into_iter()
        .filter(|&(off, len)| {
            audit::read_record(&bytes[off + 4..off + len])
                .unwrap()
                .signed
        })
        .map(|(off, len)| off + len)
        .collect()
}

#[test]
fn the_clean_log_holds_a_batch_and_ends_signed() {
    // The property below is only as strong as its log: it must hold an unsigned
    // record (the batch of two replies) and end in a signed one.
    let bytes = clean_log_bytes();
    let spans = frame_spans(bytes);
    let ends = signed_record_ends(bytes);
    assert!(ends.len() < spans.len(), "no unsigned record: {spans:?}");
    assert_eq!(ends.last(), Some(&bytes.len()));
    for (off, _) in &spans[1..] {
        let ok = verify_log(
            &[("x", &bytes[..*off])],
            &anchors(),
            &VerifyOptions::default(),
        )
        .is_ok();
        assert_eq!(ok, ends.contains(off), "cut at the record boundary {off}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic_the_verifier(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = verify_log(&[("x", &bytes)], &anchors(), &VerifyOptions::default());
        let _ = verify_log(&[("a", clean_log_bytes()), ("b", &bytes[..])], &anchors(), &VerifyOptions::default());
    }

    #[test]
    fn random_frames_never_panic_the_verifier(records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..8)) {
        let mut bytes = Vec::new();
        for r in &records {
            bytes.extend(frame(r));
        }
        prop_assert!(verify_log(&[("x", &bytes)], &anchors(), &VerifyOptions::default()).is_err());
    }

    #[test]
    fn any_altered_byte_of_a_clean_log_fails(i in any::<proptest::sample::Index>(), x in 1u8..) {
        let mut bytes = clean_log_bytes().to_vec();
        let i = i.index(bytes.len());
        bytes[i] ^= x;
        prop_assert!(verify_log(&[("x", &bytes)], &anchors(), &VerifyOptions::default()).is_err());
    }

    #[test]
    fn a_clean_log_cut_anywhere_verifies_only_after_a_signed_record(cut in 0..=clean_log_bytes().len()) {
        let bytes = clean_log_bytes();
        let result = verify_log(&[("x", &bytes[..cut])], &anchors(), &VerifyOptions::default());
        prop_assert_eq!(result.is_ok(), signed_record_ends(bytes).contains(&cut), "cut at {}", cut);
    }
}

#[test]
fn a_writer_refuses_entries_a_verifier_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut log = AuditLog::open(&path, ops_key(), &ops_credential(), options()).unwrap();
    let mut bad = Entry::reply_rejected(b"x", "forged", None);
    if let Entry::ReplyRejected { reason, .. } = &mut bad {
        *reason = "Forged!".into();
    }
    let err = log.append(bad).unwrap_err();
    assert!(
        matches!(err, audit::AuditError::InvalidEntry { .. }),
        "{err}"
    );
    let huge = Entry::request_sent(&vec![0; audit::MAX_RECORD_BYTES]);
    let err = log.append(huge).unwrap_err();
    assert!(
        matches!(err, audit::AuditError::RecordTooLarge { .. }),
        "{err}"
    );
    assert_eq!(verify(&one_file(&path)).unwrap().records, 1);
}

/// A record signed with `key` and chained after the last record of `bytes`, built by
/// hand so that nothing checks its entry first (as a buggy or hostile writer would).
fn append_unchecked(bytes: &[u8], key: &SigningKey, credential: &[u8], entry: Entry) -> Vec<u8> {
    let spans = frame_spans(bytes);
    let (last_off, last_len) = *spans.last().unwrap();
    let last = audit::read_record(&bytes[last_off + 4..last_off + last_len]).unwrap();
    let record = AuditRecord::new(
        *last.record.log_id,
        last.record.index + 1,
        last.hash,
        RECORD_TIME,
        entry,
    );
    let mut out = bytes.to_vec();
    out.extend(frame(&Signed::seal(&record, key, credential)));
    out
}

/// web1's log of one ping executed, answered with `ok`: (path, request, reply).
fn one_ping_handled(dir: &Path) -> (PathBuf, Vec<u8>, Vec<u8>) {
    let path = dir.join("agent.log");
    let mut log = AuditLog::open(&path, web1_key(), &web1_credential(), options()).unwrap();
    let (r, q) = request(hosts(&["web1"]));
    let ok = reply(&r, &q, "web1", &web1_key(), &web1_credential(), Status::Ok);
    log.append(Entry::request_handled(&r, Some(&ok))).unwrap();
    (path, r, ok)
}

#[test]
fn a_request_repeated_with_the_logged_request_and_reply_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (path, r, ok) = one_ping_handled(dir.path());
    let mut log = AuditLog::open(&path, web1_key(), &web1_credential(), options()).unwrap();
    log.append(Entry::request_repeated(&r, &ok)).unwrap();
    log.append(Entry::request_repeated(&r, &ok)).unwrap();
    let s = verify(&one_file(&path)).unwrap();
    assert_eq!(
        (s.records, s.requests_handled, s.requests_repeated),
        (4, 1, 2)
    );
}

#[test]
fn a_request_repeated_whose_request_is_not_in_the_chain_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _, ok) = one_ping_handled(dir.path());
    let mut log = AuditLog::open(&path, web1_key(), &web1_credential(), options()).unwrap();
    // Another request, never logged in full: the repeat points at nothing.
    let (other, _) = request(hosts(&["web1"]));
    log.append(Entry::request_repeated(&other, &ok)).unwrap();
    let broken = broken_at(verify(&one_file(&path)), 2);
    assert!(
        matches!(&broken.problem, Problem::RepeatOfUnknownRequest { request } if *request == hex::encode(sha256(&other))),
        "{broken}"
    );
    assert!(broken.to_string().contains("record 2"), "{broken}");
}

#[test]
fn a_request_repeated_logged_before_its_request_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.log");
    let mut log = AuditLog::open(&path, web1_key(), &web1_credential(), options()).unwrap();
    let (r, q) = request(hosts(&["web1"]));
    let ok = reply(&r, &q, "web1", &web1_key(), &web1_credential(), Status::Ok);
    log.append(Entry::request_repeated(&r, &ok)).unwrap();
    log.append(Entry::request_handled(&r, Some(&ok))).unwrap();
    let broken = broken_at(verify(&one_file(&path)), 1);
    assert!(
        matches!(broken.problem, Problem::RepeatOfUnknownRequest { .. }),
        "{broken}"
    );
}

#[test]
fn a_request_repeated_with_another_reply_digest_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let (path, r, _) = one_ping_handled(dir.path());
    let mut log = AuditLog::open(&path, web1_key(), &web1_credential(), options()).unwrap();
    // The same request, a reply that was never logged with it.
    let (_, q) = request(hosts(&["web1"]));
    let other = reply(&r, &q, "web1", &web1_key(), &web1_credential(), Status::Ok);
    log.append(Entry::request_repeated(&r, &other)).unwrap();
    let broken = broken_at(verify(&one_file(&path)), 2);
    assert!(
        matches!(&broken.problem, Problem::RepeatWithOtherReply { reply, .. } if *reply == hex::encode(sha256(&other))),
        "{broken}"
    );
}

#[test]
fn a_request_repeated_reaches_back_across_rotated_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.log");
    let opts = AuditOptions {
        max_bytes: 4000,
        ..options()
    };
    let mut log = AuditLog::open(&path, web1_key(), &web1_credential(), opts).unwrap();
    let (r, q) = request(hosts(&["web1"]));
    let ok = reply(&r, &q, "web1", &web1_key(), &web1_credential(), Status::Ok);
    log.append(Entry::request_handled(&r, Some(&ok))).unwrap();
    for _ in 0..4 {
        let (r2, q2) = request(hosts(&["web1"]));
        let ok2 = reply(
            &r2,
            &q2,
            "web1",
            &web1_key(),
            &web1_credential(),
            Status::Ok,
        );
        log.append(Entry::request_handled(&r2, Some(&ok2))).unwrap();
    }
    log.append(Entry::request_repeated(&r, &ok)).unwrap();
    let files = log_files(&path).unwrap();
    assert!(files.len() >= 2, "{files:?}");
    let s = verify(&read_files(&files)).unwrap();
    assert_eq!((s.requests_handled, s.requests_repeated), (5, 1));
}

#[test]
fn a_request_repeated_in_an_orchestrator_log_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let path = orchestrator_log(dir.path());
    let mut log = AuditLog::open(&path, ops_key(), &ops_credential(), options()).unwrap();
    let (r, q) = request(hosts(&["web1"]));
    let ok = reply(&r, &q, "web1", &web1_key(), &web1_credential(), Status::Ok);
    log.append(Entry::request_repeated(&r, &ok)).unwrap();
    let broken = broken_at(verify(&one_file(&path)), 7);
    assert!(
        matches!(
            broken.problem,
            Problem::HandledByNonHost {
                entry: "request_repeated",
                role: Role::Operator,
                ..
            }
        ),
        "{broken}"
    );
}

fn counts(pairs: &[(&str, u64)]) -> std::collections::BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn replies_rejected_summaries_verify_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = orchestrator_log(dir.path());
    let mut log = AuditLog::open(&path, ops_key(), &ops_credential(), options()).unwrap();
    let (_, q) = request(hosts(&["web1"]));
    let per_call = Entry::replies_rejected(
        Some(q.id),
        &counts(&[("forged", 900), ("malformed", 99_100)]),
        20_000_000,
        RECORD_TIME - 5000,
        RECORD_TIME,
    )
    .unwrap();
    let no_call = Entry::replies_rejected(
        None,
        &counts(&[("unknown_request", 12)]),
        4000,
        RECORD_TIME,
        RECORD_TIME,
    )
    .unwrap();
    log.append_batch(vec![per_call, no_call]).unwrap();
    let s = verify(&one_file(&path)).unwrap();
    assert_eq!(
        (
            s.records,
            s.replies_rejected,
            s.rejection_summaries,
            s.replies_summarised
        ),
        (9, 1, 2, 100_012)
    );

    // A host calling others under a delegation token keeps a client log: it may
    // summarise the replies it refused, as it may log them one by one.
    let host_log = dir.path().join("client.log");
    let mut log = AuditLog::open(&host_log, db1_key(), &db1_credential(), options()).unwrap();
    log.append(Entry::reply_rejected(b"junk", "malformed", None))
        .unwrap();
    log.append(
        Entry::replies_rejected(None, &counts(&[("malformed", 3)]), 12, T0, T0 + 1).unwrap(),
    )
    .unwrap();
    let s = verify(&one_file(&host_log)).unwrap();
    assert_eq!((s.writer_role, s.replies_summarised), (Role::Host, 3));
}

#[test]
fn a_replies_rejected_summary_that_does_not_add_up_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(orchestrator_log(dir.path())).unwrap();
    let good = Entry::RepliesRejected {
        request_id: None,
        counts: counts(&[("forged", 2), ("late", 1)]),
        messages: 3,
        bytes: 30,
        first_time: T0,
        last_time: T0 + 10,
    };
    let b = append_unchecked(&bytes, &ops_key(), &ops_credential(), good.clone());
    assert_eq!(
        verify(&[("audit.log".into(), b)])
            .unwrap()
            .replies_summarised,
        3
    );

    let mut wrong_sum = good.clone();
    let mut bad_label = good.clone();
    let mut backwards = good.clone();
    let mut empty = good.clone();
    if let Entry::RepliesRejected { messages, .. } = &mut wrong_sum {
        *messages = 2;
    }
    if let Entry::RepliesRejected {
        counts, messages, ..
    } = &mut bad_label
    {
        counts.insert("Not-A-Label".into(), 1);
        *messages = 4;
    }
    if let Entry::RepliesRejected {
        first_time,
        last_time,
        ..
    } = &mut backwards
    {
        (*first_time, *last_time) = (*last_time, *first_time);
    }
    if let Entry::RepliesRejected {
        counts, messages, ..
    } = &mut empty
    {
        counts.clear();
        *messages = 0;
    }
    for e in [wrong_sum, bad_label, backwards, empty] {
        let b = append_unchecked(&bytes, &ops_key(), &ops_credential(), e.clone());
        let broken = broken_at(verify(&[("audit.log".into(), b)]), 7);
        assert!(
            matches!(broken.problem, Problem::Body(_)),
            "{e:?}: {broken}"
        );
    }
}

/// A ping by `ops`, valid from `issued_at` to `expires_at`.
fn request_valid(issued_at: Millis, expires_at: Millis) -> (Vec<u8>, Request) {
    let (_, mut req) = request(hosts(&["web1"]));
    req.issued_at = issued_at;
    req.expires_at = expires_at;
    (Signed::seal(&req, &ops_key(), &ops_credential()), req)
}

/// web1's reply to `req` with `status`, started at `started_at`.
fn web1_reply_at(req_bytes: &[u8], req: &Request, status: Status, started_at: Millis) -> Vec<u8> {
    let body = Signed::decode(req_bytes, 1 << 20).unwrap().body;
    let rep = Reply::new(
        req.id,
        sha256(&body),
        name("web1"),
        status,
        started_at,
        started_at + 2,
    );
    Signed::seal(&rep, &web1_key(), &web1_credential())
}

/// web1's log holding one `request_handled` record of `request` answered `reply`.
fn handled_once(dir: &Path, request: &[u8], reply: &[u8]) -> Vec<(String, Vec<u8>)> {
    let path = dir.join(format!("agent-{}.log", rand_suffix()));
    let mut log = AuditLog::open(&path, web1_key(), &web1_credential(), options()).unwrap();
    log.append(Entry::request_handled(request, Some(reply)))
        .unwrap();
    one_file(&path)
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

/// `req` (body as given) signed by `key` with `cred`.
fn signed_by(req: &Request, key: &SigningKey, cred: &[u8]) -> Vec<u8> {
    Signed::seal(req, key, cred)
}

#[test]
fn a_request_its_signer_may_not_make_must_have_been_refused_whatever_the_status() {
    let dir = tempfile::tempdir().unwrap();
    let (_, base) = request(hosts(&["web1"]));
    // db1 signs as itself with no delegation token; ops asks for an action its
    // credential does not list; db1 claims to be ops; ops presents a token.
    let mut host_signed = base.clone();
    host_signed.caller = name("db1");
    host_signed.reply_to = reply_queue_name(&name("db1"), "1");
    let mut not_listed = base.clone();
    not_listed.action = ActionName::new("restart").unwrap();
    let mut token_by_operator = base.clone();
    token_by_operator.token = Some(serde_bytes::ByteBuf::from(vec![1, 2, 3]));
    let cases: [(&str, Vec<u8>, Request); 4] = [
        (
            "signed by a host without a token",
            signed_by(&host_signed, &db1_key(), &db1_credential()),
            host_signed.clone(),
        ),
        (
            "action not in the credential",
            signed_by(&not_listed, &ops_key(), &ops_credential()),
            not_listed.clone(),
        ),
        (
            "caller is not the signer",
            signed_by(&base, &db1_key(), &db1_credential()),
            base.clone(),
        ),
        (
            "token presented by an operator",
            signed_by(&token_by_operator, &ops_key(), &ops_credential()),
            token_by_operator.clone(),
        ),
    ];
    for (what, bytes, req) in cases {
        // Refused: what the agent must do.
        for status in [Status::Unauthorized, Status::Expired, Status::Replayed] {
            let refused = web1_reply_at(&bytes, &req, status, RECORD_TIME);
            let s = verify(&handled_once(dir.path(), &bytes, &refused))
                .unwrap_or_else(|e| panic!("{what}, refused {status}: {e}"));
            assert_eq!(s.handled_not_ok, 1);
        }
        // Answered with anything else, even a failure: it was acted on.
        for status in [Status::Ok, Status::UnknownError, Status::Conflict] {
            let acted = web1_reply_at(&bytes, &req, status, RECORD_TIME);
            let broken = broken_at(verify(&handled_once(dir.path(), &bytes, &acted)), 1);
            assert!(
                matches!(broken.problem, Problem::UnauthorizedNotRefused { .. }),
                "{what}, answered {status}: {broken}"
            );
        }
    }
}

#[test]
fn an_expired_credential_answered_with_a_failure_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.log");
    let mut opts = options();
    opts.clock = || T0 + 40 * DAY; // the operator credential ended at T0 + 30 days
    let mut log = AuditLog::open(&path, web1_key(), &web1_credential(), opts).unwrap();
    let (r, q) = request_valid(T0 + 40 * DAY - 1000, T0 + 40 * DAY + 60_000);
    let timed_out = web1_reply_at(&r, &q, Status::TimedOut, T0 + 40 * DAY);
    log.append(Entry::request_handled(&r, Some(&timed_out)))
        .unwrap();
    let broken = broken_at(verify(&one_file(&path)), 1);
    assert!(
        matches!(&broken.problem, Problem::ExpiredNotRefused { answered, .. } if answered.starts_with("timed_out")),
        "{broken}"
    );
}

#[test]
fn a_request_started_on_outside_its_window_must_have_been_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Expired ten minutes before the agent started on it (the skew allows five).
    let (r, q) = request_valid(RECORD_TIME - 1_200_000, RECORD_TIME - 600_000);
    let refused = web1_reply_at(&r, &q, Status::Expired, RECORD_TIME);
    verify(&handled_once(dir.path(), &r, &refused)).unwrap();
    for status in [Status::Ok, Status::NotFound] {
        let acted = web1_reply_at(&r, &q, status, RECORD_TIME);
        let broken = broken_at(verify(&handled_once(dir.path(), &r, &acted)), 1);
        assert!(
            matches!(broken.problem, Problem::OutsideRequestWindow { started_at, .. } if started_at == RECORD_TIME),
            "{status}: {broken}"
        );
    }
    // Issued in the future by more than the skew.
    let (r, q) = request_valid(RECORD_TIME + 600_000, RECORD_TIME + 900_000);
    let acted = web1_reply_at(&r, &q, Status::Ok, RECORD_TIME);
    let broken = broken_at(verify(&handled_once(dir.path(), &r, &acted)), 1);
    assert!(
        matches!(broken.problem, Problem::OutsideRequestWindow { .. }),
        "{broken}"
    );
    // Within the skew on both sides: fine.
    let (r, q) = request_valid(RECORD_TIME + 60_000, RECORD_TIME + 120_000);
    let acted = web1_reply_at(&r, &q, Status::Ok, RECORD_TIME);
    verify(&handled_once(dir.path(), &r, &acted)).unwrap();
}

#[test]
fn a_request_executed_twice_by_one_host_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let (r, q) = request(hosts(&["web1"]));
    let first = web1_reply_at(&r, &q, Status::Ok, RECORD_TIME);
    let second = web1_reply_at(&r, &q, Status::Ok, RECORD_TIME + 1);
    let write = |entries: Vec<Entry>| {
        let path = dir.path().join(format!("agent-{}.log", rand_suffix()));
        let mut log = AuditLog::open(&path, web1_key(), &web1_credential(), options()).unwrap();
        for e in entries {
            log.append(e).unwrap();
        }
        one_file(&path)
    };

    // The stored reply sent again, logged in full or as a repeat: one execution.
    let s = verify(&write(vec![
        Entry::request_handled(&r, Some(&first)),
        Entry::request_handled(&r, Some(&first)),
        Entry::request_repeated(&r, &first),
    ]))
    .unwrap();
    assert_eq!((s.requests_handled, s.requests_repeated), (2, 1));

    // Answered anew with another reply: executed twice.
    let broken = broken_at(
        verify(&write(vec![
            Entry::request_handled(&r, Some(&first)),
            Entry::request_handled(&r, Some(&second)),
        ])),
        2,
    );
    assert!(
        matches!(broken.problem, Problem::ExecutedTwice { first_record: 1, id, .. } if id == q.id),
        "{broken}"
    );
    // A failed execution counts as one too.
    let failed = web1_reply_at(&r, &q, Status::TimedOut, RECORD_TIME + 2);
    let broken = broken_at(
        verify(&write(vec![
            Entry::request_handled(&r, Some(&failed)),
            Entry::request_handled(&r, Some(&first)),
        ])),
        2,
    );
    assert!(
        matches!(broken.problem, Problem::ExecutedTwice { .. }),
        "{broken}"
    );

    // Refusals are not executions: the same id with other bytes refused as replayed,
    // a repeat refused as expired with a freshly signed reply.
    let mut reused = q.clone();
    reused.args = vec![0x81, 0xa1, b'x', 0x01];
    let reused_bytes = signed_by(&reused, &ops_key(), &ops_credential());
    let replayed = web1_reply_at(&reused_bytes, &reused, Status::Replayed, RECORD_TIME);
    let expired = web1_reply_at(&r, &q, Status::Expired, RECORD_TIME + 3);
    verify(&write(vec![
        Entry::request_handled(&r, Some(&first)),
        Entry::request_handled(&reused_bytes, Some(&replayed)),
        Entry::request_handled(&r, Some(&expired)),
    ]))
    .unwrap();

    // A stream (logged with its first reply, not final) started again after a
    // broken session changes nothing: not reported.
    let stream_start = |started_at: Millis| {
        let body = Signed::decode(&r, 1 << 20).unwrap().body;
        let mut rep = Reply::new(
            q.id,
            sha256(&body),
            name("web1"),
            Status::Ok,
            started_at,
            started_at,
        );
        rep.is_final = false;
        Signed::seal(&rep, &web1_key(), &web1_credential())
    };
    verify(&write(vec![
        Entry::request_handled(&r, Some(&stream_start(RECORD_TIME))),
        Entry::request_handled(&r, Some(&stream_start(RECORD_TIME + 5))),
    ]))
    .unwrap();

    // The same id used by another caller is another request.
    let ops2_key = SigningKey::from_seed(&[5; 32]);
    let mut c = Credential::new(
        5,
        name("ops2"),
        Role::Operator,
        ops2_key.public_key(),
        T0,
        T0 + 30 * DAY,
    );
    c.actions.push(ActionName::new("ping").unwrap());
    let ops2_cred = c.issue(&issuer());
    let mut same_id = q.clone();
    same_id.caller = name("ops2");
    same_id.reply_to = reply_queue_name(&name("ops2"), "1");
    let same_id_bytes = signed_by(&same_id, &ops2_key, &ops2_cred);
    let other_ok = web1_reply_at(&same_id_bytes, &same_id, Status::Ok, RECORD_TIME);
    verify(&write(vec![
        Entry::request_handled(&r, Some(&first)),
        Entry::request_handled(&same_id_bytes, Some(&other_ok)),
    ]))
    .unwrap();
}

fn revocations(
    serials: &[u64],
    names: &[(&str, Millis)],
    issued_at: Millis,
) -> gearmq_schemas::revocation::RevocationList {
    let names: Vec<_> = names
        .iter()
        .map(|(n, before)| gearmq_schemas::revocation::RevokedName {
            name: name(n),
            before: *before,
        })
        .collect();
    gearmq_schemas::revocation::RevocationList::empty(issued_at).with(serials, &names, issued_at)
}

fn verify_with_revocations(
    files: &[(String, Vec<u8>)],
    lists: Vec<gearmq_schemas::revocation::RevocationList>,
) -> Summary {
    let opts = VerifyOptions {
        revocations: lists,
        ..VerifyOptions::default()
    };
    verify_log(files, &anchors(), &opts).unwrap()
}

#[test]
fn records_signed_after_a_revocation_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let orch = one_file(&orchestrator_log(dir.path()));
    let ops_serial = 2;

    // ops revoked (by serial) before its log was written: every record it signed.
    let s = verify_with_revocations(
        &orch,
        vec![revocations(&[ops_serial], &[], RECORD_TIME - 1)],
    );
    assert_eq!(s.revoked_uses, 7, "{:#?}", s.revoked);
    assert!(s.revoked.iter().all(|u| u.what == "writer"
        && u.name.as_str() == "ops"
        && u.serial == ops_serial
        && u.revoked_since == RECORD_TIME - 1));
    assert_eq!(
        s.revoked.iter().map(|u| u.record).collect::<Vec<_>>(),
        (0..7).collect::<Vec<_>>()
    );

    // Revoked after the last record: nothing to list.
    let later = revocations(&[ops_serial], &[], RECORD_TIME + 1);
    assert_eq!(
        verify_with_revocations(&orch, vec![later.clone()]).revoked_uses,
        0
    );

    // A list keeps no time per serial: an older list that already names it narrows
    // the moment down.
    let older = revocations(&[ops_serial], &[], RECORD_TIME - 1);
    assert_eq!(
        verify_with_revocations(&orch, vec![later, older]).revoked_uses,
        7
    );

    // web1 revoked by name just before the records, in a list issued a day later:
    // the replies it signed that the orchestrator accepted (records 2 and 6).
    let by_name = revocations(&[], &[("web1", RECORD_TIME - 1)], RECORD_TIME + DAY);
    let s = verify_with_revocations(&orch, vec![by_name]);
    assert_eq!(
        s.revoked
            .iter()
            .map(|u| (u.record, u.what, u.name.as_str()))
            .collect::<Vec<_>>(),
        [(2, "reply", "web1"), (6, "reply", "web1")]
    );
    // A credential of that name issued after `before` (re-enrolled) is not revoked.
    let s = verify_with_revocations(&orch, vec![revocations(&[], &[("web1", T0)], RECORD_TIME)]);
    assert_eq!(s.revoked_uses, 0);

    // On web1's log: the request it executed from ops is listed, the one it refused
    // is not; web1's own records are not concerned.
    let agent = one_file(&agent_log(dir.path()));
    let s = verify_with_revocations(
        &agent,
        vec![revocations(&[ops_serial], &[], RECORD_TIME - 1)],
    );
    assert_eq!(
        s.revoked
            .iter()
            .map(|u| (u.record, u.what, u.name.as_str()))
            .collect::<Vec<_>>(),
        [(1, "request", "ops")]
    );
    // The writer revoked: every record of the log.
    let s = verify_with_revocations(&agent, vec![revocations(&[1], &[], T0)]);
    assert_eq!(s.revoked_uses, 4);
}

/// A streamed reply (seq, final) signed by web1 for request `req`.
fn stream_reply(req_bytes: &[u8], req: &Request, seq: u32, is_final: bool) -> Vec<u8> {
    let body = Signed::decode(req_bytes, 1 << 20).unwrap().body;
    let mut rep = Reply::new(
        req.id,
        sha256(&body),
        name("web1"),
        Status::Ok,
        RECORD_TIME,
        RECORD_TIME + 2,
    );
    rep.seq = seq;
    rep.is_final = is_final;
    Signed::seal(&rep, &web1_key(), &web1_credential())
}

#[test]
fn streamed_replies_accepted_twice_out_of_order_or_after_the_final_are_caught() {
    let (r1, q1) = request(hosts(&["web1"]));
    let log_of = |seqs: &[(u32, bool)]| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut log = AuditLog::open(&path, ops_key(), &ops_credential(), options()).unwrap();
        log.append(Entry::request_sent(&r1)).unwrap();
        for (seq, fin) in seqs {
            log.append(Entry::reply_accepted(&stream_reply(&r1, &q1, *seq, *fin)))
                .unwrap();
        }
        verify(&one_file(&path))
    };
    // In order, with a gap (a partial may be lost), then the final: fine.
    let ok = log_of(&[(0, false), (1, false), (3, false), (4, true)]).unwrap();
    assert_eq!(ok.replies_accepted, 4);
    // seq 0 twice: the second is the duplicate.
    let b = broken_at(log_of(&[(0, false), (0, false)]), 3);
    assert!(
        matches!(b.problem, Problem::DuplicateReply { seq: 0, .. }),
        "{b}"
    );
    // seq 2 after seq 3.
    let b = broken_at(log_of(&[(0, false), (3, false), (2, false)]), 4);
    assert!(
        matches!(
            b.problem,
            Problem::ReplyOutOfOrder {
                seq: 2,
                after: 3,
                after_final: false,
                ..
            }
        ),
        "{b}"
    );
    // Anything after the final.
    let b = broken_at(log_of(&[(0, false), (1, true), (2, false)]), 4);
    assert!(
        matches!(
            b.problem,
            Problem::ReplyOutOfOrder {
                after_final: true,
                ..
            }
        ),
        "{b}"
    );
}

const BOOT_A: [u8; 16] = [0xa1; 16];
const BOOT_B: [u8; 16] = [0xb2; 16];

fn alive() -> What {
    What::Alive {
        agent_version: "0.1.0".into(),
        interval_ms: 10_000,
    }
}

/// An event of `host`'s boot `boot`, number `seq`, signed with `key` and `cred`.
fn event(
    host: &str,
    key: &SigningKey,
    cred: &[u8],
    boot: [u8; 16],
    seq: u64,
    what: What,
) -> Vec<u8> {
    let ev = Event::new(name(host), boot, seq, RECORD_TIME - 500, what);
    Signed::seal(&ev, key, cred)
}

/// An event of web1, signed by web1.
fn web1_event(boot: [u8; 16], seq: u64, what: What) -> Vec<u8> {
    event("web1", &web1_key(), &web1_credential(), boot, seq, what)
}

/// The orchestrator's log of `events` accepted one by one, verified.
fn events_log(events: &[Vec<u8>]) -> Result<Summary, Broken> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut log = AuditLog::open(&path, ops_key(), &ops_credential(), options()).unwrap();
    for e in events {
        log.append(Entry::event_accepted(e)).unwrap();
    }
    verify(&one_file(&path))
}

#[test]
fn accepted_events_in_order_per_boot_verify_and_are_counted() {
    let unit = What::Unit {
        unit: "web".into(),
        change: UnitChange::Failed,
        active_state: "failed".into(),
        sub_state: "failed".into(),
        result: "exit-code".into(),
        restarts: 0,
    };
    let db1 = |seq| event("db1", &db1_key(), &db1_credential(), BOOT_A, seq, alive());
    let s = events_log(&[
        web1_event(BOOT_A, 0, alive()),
        // Another host's events of the same boot id are its own sequence.
        db1(4),
        web1_event(BOOT_A, 1, unit),
        // Gaps are allowed: a lost event is never invented.
        web1_event(BOOT_A, 5, What::Stopping {}),
        db1(5),
        // A new boot starts its own sequence again.
        web1_event(BOOT_B, 0, alive()),
        web1_event(BOOT_B, 1, alive()),
    ])
    .unwrap();
    assert_eq!((s.records, s.events_accepted), (8, 7));
    assert_eq!(s.replies_accepted, 0);
}

#[test]
fn the_same_event_accepted_again_or_late_verifies() {
    // A watch that starts over reads its window back; two watches may share a log.
    let s = events_log(&[
        web1_event(BOOT_A, 0, alive()),
        web1_event(BOOT_A, 1, alive()),
        web1_event(BOOT_A, 1, alive()),
        web1_event(BOOT_B, 9, alive()),
        web1_event(BOOT_A, 0, alive()),
        web1_event(BOOT_A, 2, alive()),
    ])
    .unwrap();
    assert_eq!(s.events_accepted, 6);
}

#[test]
fn two_different_events_with_one_seq_of_a_boot_are_caught() {
    let stopping = web1_event(BOOT_A, 1, What::Stopping {});
    let b = broken_at(
        events_log(&[
            web1_event(BOOT_A, 0, alive()),
            web1_event(BOOT_A, 1, alive()),
            web1_event(BOOT_A, 2, alive()),
            stopping,
        ]),
        4,
    );
    assert!(
        matches!(&b.problem, Problem::EventConflict { host, boot, seq: 1 }
            if host.as_str() == "web1" && *boot == hex::encode(BOOT_A)),
        "{b}"
    );
    assert_eq!(b.problem.label(), "event_conflict");
    // The same seq in another boot is another event.
    events_log(&[
        web1_event(BOOT_A, 1, alive()),
        web1_event(BOOT_B, 1, What::Stopping {}),
    ])
    .unwrap();
}

#[test]
fn an_event_signed_by_another_host_than_it_names_is_caught() {
    // db1 signs, with its own valid credential, an event that says it is web1's.
    let claimed = event("web1", &db1_key(), &db1_credential(), BOOT_A, 0, alive());
    let b = broken_at(events_log(&[claimed]), 1);
    assert!(
        matches!(&b.problem, Problem::NotSigner { what: "event", claimed, signer }
            if claimed.as_str() == "web1" && signer.as_str() == "db1"),
        "{b}"
    );
    // web1's credential, someone else's key: it does not open.
    let forged = event("web1", &evil_key(), &web1_credential(), BOOT_A, 0, alive());
    let b = broken_at(events_log(&[forged]), 1);
    assert!(
        matches!(b.problem, Problem::Embedded { what: "event", .. }),
        "{b}"
    );
}

#[test]
fn an_operator_signed_event_is_caught() {
    let by_ops = event("ops", &ops_key(), &ops_credential(), BOOT_A, 0, alive());
    let b = broken_at(events_log(&[by_ops]), 1);
    assert!(
        matches!(
            b.problem,
            Problem::WrongRole {
                what: "event",
                role: Role::Operator,
                ..
            }
        ),
        "{b}"
    );
}

#[test]
fn an_accepted_event_of_a_revoked_host_is_listed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut log = AuditLog::open(&path, ops_key(), &ops_credential(), options()).unwrap();
    log.append(Entry::event_accepted(&web1_event(BOOT_A, 0, alive())))
        .unwrap();
    let s = verify_with_revocations(
        &one_file(&path),
        vec![revocations(&[], &[("web1", RECORD_TIME - 1)], RECORD_TIME)],
    );
    assert_eq!(
        s.revoked
            .iter()
            .map(|u| (u.record, u.what, u.name.as_str()))
            .collect::<Vec<_>>(),
        [(1, "event", "web1")]
    );
}
