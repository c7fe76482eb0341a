//! Audit logs from real runs verify offline, and every kind of tampering is caught and
//! named.

use gearmq_orchestrator::{Orchestrator, Selection};
use gearmq_schemas::audit::{frame, frames, read_record};
use gearmq_schemas::codec;
use gearmq_schemas::envelope::Signed;
use gearmq_testkit::{CliOutput, Fleet, hosts, ping_spec, run_cli};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

fn verify(fleet: &Fleet, files: &[&Path], extra: &[&str]) -> CliOutput {
    fleet.verify_audit_files(files, extra)
}

/// The records of a log file as framed byte strings.
fn records(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    frames(&bytes).map(|f| frame(f.unwrap().bytes)).collect()
}

/// Whether a framed record is signed (not left for a later record of its batch to seal).
fn signed(framed: &[u8]) -> bool {
    read_record(&framed[4..]).unwrap().signed
}

fn write_records(path: &Path, recs: &[Vec<u8>]) {
    std::fs::write(path, recs.concat()).unwrap();
}

/// Pings, and a forged reply (b signing as a) injected during a call.
async fn run_traffic(fleet: &Fleet) {
    let orch = Orchestrator::connect(&fleet.orchestrator_config())
        .await
        .unwrap();
    for _ in 0..3 {
        let r = orch
            .request(ping_spec(Selection::All, Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(r.summary.ok, 2);
    }
    let call = orch
        .start(ping_spec(hosts(&["a"]), Duration::from_secs(5)))
        .await
        .unwrap();
    let forged = fleet.reply_as("b", "a", &call);
    let sent = fleet
        .publish("gearmq.replies", orch.reply_queue(), &forged, None)
        .await;
    assert_eq!(sent, Ok(true));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = call.finish().await;
    assert_eq!(r.summary.rejected.get("forged"), Some(&1));
    orch.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestrator_log_of_a_real_run_verifies_and_tampering_is_named() {
    let fleet = Fleet::init("audit", &["a", "b"]);
    let _a = fleet.start_agent("a");
    let _b = fleet.start_agent("b");
    run_traffic(&fleet).await;

    let log = fleet.audit_log();
    let ok = verify(&fleet, &[&log], &[]);
    assert_eq!(ok.code, 0, "{}\n{}", ok.stdout, ok.stderr);
    assert!(ok.stdout.contains("requests: 4"), "{}", ok.stdout);
    assert!(ok.stdout.contains("rejected: 1"), "{}", ok.stdout);
    assert!(
        ok.stdout.contains(
            "note: records cut off the end of the log cannot be detected without --expect-head"
        ),
        "no cut-tail notice without --expect-head:\n{}",
        ok.stdout
    );
    let head = ok
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("head: "))
        .unwrap()
        .trim()
        .to_string();
    let show = run_cli(&["audit", "show", log.to_str().unwrap()]);
    assert!(show.stdout.contains("reply_rejected"), "{}", show.stdout);
    assert!(show.stdout.contains("forged"), "{}", show.stdout);

    let recs = records(&log);
    assert!(recs.len() >= 10, "{}", recs.len());
    let work = tempfile::tempdir().unwrap();
    let copy = work.path().join("audit.log");
    let broken = |recs: &[Vec<u8>]| {
        write_records(&copy, recs);
        let out = verify(&fleet, &[&copy], &[]);
        assert_eq!(out.code, 1, "tampering not caught:\n{}", out.stdout);
        out.stdout + &out.stderr
    };

    // One flipped byte inside record 4: its own signature fails, or, if its batch left
    // it unsigned, the signed `prev` of the record after it no longer matches it (unless
    // the byte was one its own checks read).
    let mut flipped = recs.clone();
    let n = flipped[4].len();
    flipped[4][n / 2] ^= 0x01;
    let out = broken(&flipped);
    assert!(
        out.contains("record 4") || (!signed(&recs[4]) && out.contains("record 5")),
        "{out}"
    );

    // A deleted record.
    let mut deleted = recs.clone();
    deleted.remove(3);
    assert!(broken(&deleted).contains("record 3"));

    // Two records swapped.
    let mut swapped = recs.clone();
    swapped.swap(2, 3);
    assert!(broken(&swapped).contains("record 2"));

    // A record appended after the head: its body chains correctly (it is the last
    // record's body, so prev and index are plausible) but its writer signature is
    // not valid.
    let mut appended = recs.clone();
    let last = appended.last().unwrap().clone();
    let mut env = Signed::decode(&last[4..], 1 << 20).unwrap();
    let mut sig = *env.sig;
    sig[0] ^= 0xff;
    env.sig = serde_bytes::ByteArray::new(sig);
    appended.push(frame(&codec::encode(&env)));
    let idx = recs.len();
    assert!(broken(&appended).contains(&format!("record {idx}")));

    // A cut-off tail is caught only with the head noted elsewhere. Cut after a signed
    // record (one cut inside a batch leaves an unsigned tail: caught on its own).
    let mut cut = recs.clone();
    cut.pop();
    if !signed(cut.last().unwrap()) {
        let mut inside = cut.clone();
        write_records(&copy, &inside);
        let unsealed = verify(&fleet, &[&copy], &[]);
        assert_eq!(unsealed.code, 1, "{}", unsealed.stdout);
        let said = unsealed.stdout + &unsealed.stderr;
        assert!(said.contains("unsigned"), "{said}");
        while !signed(inside.last().unwrap()) {
            inside.pop();
        }
        cut = inside;
    }
    write_records(&copy, &cut);
    let silent = verify(&fleet, &[&copy], &[]);
    assert_eq!(silent.code, 0, "a shorter valid chain verifies on its own");
    let caught = verify(&fleet, &[&copy], &["--expect-head", &head]);
    assert_eq!(caught.code, 1, "{}", caught.stdout);
    let same = verify(&fleet, &[&log], &["--expect-head", &head]);
    assert_eq!(same.code, 0, "{}", same.stdout);
    assert!(
        !same.stdout.contains("cannot be detected"),
        "{}",
        same.stdout
    );
    let doc = verify(&fleet, &[&log], &["--json"]).json();
    assert_eq!(doc["tail_checked"], false, "{doc}");
    assert!(
        doc["notice"]
            .as_str()
            .is_some_and(|n| n.contains("cannot be detected without --expect-head")),
        "{doc}"
    );
    let doc = verify(&fleet, &[&log], &["--json", "--expect-head", &head]).json();
    assert_eq!(
        (&doc["tail_checked"], &doc["notice"]),
        (&json!(true), &json!(null))
    );
}

async fn ping_all(orch: &Orchestrator) {
    let r = orch
        .request(ping_spec(Selection::All, Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(r.summary.ok, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_lists_records_signed_after_a_revocation() {
    let fleet = Fleet::init("auditrev", &["a"]);
    let _a = fleet.start_agent("a");
    let orch = Orchestrator::connect(&fleet.orchestrator_config())
        .await
        .unwrap();
    ping_all(&orch).await;
    let log = fleet.audit_log();
    let before = verify(&fleet, &[&log], &["--json"]).json();
    let records_before = before["records"].as_u64().unwrap();

    // The operator revoked by name, in a list no agent or orchestrator loads: the
    // next ping is still signed, served and logged, and the auditor must hear of it.
    let list = fleet.path().join("audit-revocations.bin");
    let out = fleet.cli(&[
        "revoke",
        "--name",
        "ops",
        "--issuer-key",
        &fleet.path().join("issuer.key").to_string_lossy(),
        "--list",
        &list.to_string_lossy(),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    tokio::time::sleep(Duration::from_millis(20)).await;
    ping_all(&orch).await;
    orch.close().await;
    let list_arg = list.to_str().unwrap();

    // The orchestrator's log: written by ops after its revocation from the second
    // ping on (its request_sent and reply_accepted records), exit 3.
    let out = verify(&fleet, &[&log], &["--revocations", list_arg]);
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("REVOKED: 2 uses"), "{}", out.stdout);
    assert!(
        out.stdout.contains("written by ops (operator"),
        "{}",
        out.stdout
    );
    let doc = verify(&fleet, &[&log], &["--revocations", list_arg, "--json"]).json();
    assert_eq!(
        (&doc["ok"], &doc["chain_ok"]),
        (&json!(false), &json!(true))
    );
    assert_eq!(doc["revoked_uses"], 2, "{doc}");
    let listed: Vec<u64> = doc["revoked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            assert_eq!((&u["what"], &u["name"]), (&json!("writer"), &json!("ops")));
            u["record"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(listed, [records_before, records_before + 1], "{doc}");
    // Without the list the same log is clean.
    assert_eq!(verify(&fleet, &[&log], &[]).code, 0);

    // The agent's log: the request it executed after the revocation.
    let agent_log = fleet.host_dir("a").join("state").join("audit.log");
    let out = verify(
        &fleet,
        &[&agent_log],
        &["--revocations", list_arg, "--json"],
    );
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    let doc = out.json();
    assert_eq!(doc["revoked_uses"], 1, "{doc}");
    assert_eq!(
        (&doc["revoked"][0]["what"], &doc["revoked"][0]["name"]),
        (&json!("request"), &json!("ops"))
    );

    // A list not signed by a trusted issuer is an error, not a verdict.
    let forged = fleet.path().join("forged-revocations.bin");
    let mut bytes = std::fs::read(&list).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    std::fs::write(&forged, &bytes).unwrap();
    let out = verify(
        &fleet,
        &[&log],
        &["--revocations", forged.to_str().unwrap()],
    );
    assert_eq!(out.code, 2, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("forged-revocations.bin"),
        "{}",
        out.stderr
    );
}

#[test]
fn two_clis_writing_one_log_at_once_leave_one_valid_chain() {
    let fleet = Fleet::init("auditpar", &["a"]);
    let _a = fleet.start_agent("a");
    let cfg = fleet.orchestrator_toml();
    let cfg = cfg.to_str().unwrap().to_string();
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                for _ in 0..3 {
                    let out = run_cli(&["--config", &cfg, "ping", "--all"]);
                    assert_eq!(out.code, 0, "{}", out.stderr);
                }
            })
        })
        .collect();
    for r in runs {
        r.join().unwrap();
    }
    let log = fleet.audit_log();
    let out = verify(&fleet, &[&log], &["--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let doc = out.json();
    assert_eq!(doc["requests"], 12, "{doc}");
}
