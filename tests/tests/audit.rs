//! Audit logs from real runs verify offline, and every kind of tampering is caught and
//! named.

use gearmq_orchestrator::{CallSpec, Orchestrator, Selection};
use gearmq_schemas::audit::{frame, frames};
use gearmq_schemas::envelope::Signed;
use gearmq_schemas::{ActionName, Name, Reply, Status, actions::PingArgs, codec};
use gearmq_tests::{CliOutput, Fleet, run_cli};
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use std::path::Path;
use std::time::Duration;

fn verify(fleet: &Fleet, files: &[&Path], extra: &[&str]) -> CliOutput {
    let issuer = fleet.path().join("issuer.pub");
    let mut args: Vec<String> = vec!["audit".into(), "verify".into()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    args.push("--issuer".into());
    args.push(issuer.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_cli(&args)
}

/// The records of a log file as framed byte strings.
fn records(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    frames(&bytes).map(|f| frame(f.unwrap().bytes)).collect()
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
            .request(CallSpec {
                selection: Selection::All,
                action: ActionName::new("ping").unwrap(),
                args: codec::encode(&PingArgs {}),
                timeout: Duration::from_secs(5),
            })
            .await
            .unwrap();
        assert_eq!(r.summary.ok, 2);
    }
    let call = orch
        .start(CallSpec {
            selection: Selection::Hosts(vec![Name::new("a").unwrap()]),
            action: ActionName::new("ping").unwrap(),
            args: codec::encode(&PingArgs {}),
            timeout: Duration::from_secs(5),
        })
        .await
        .unwrap();
    let (kb, cb) = fleet.host_identity("b");
    let forged = Signed::seal(
        &Reply::new(
            call.request_id(),
            call.request_digest(),
            Name::new("a").unwrap(),
            Status::Ok,
            1,
            2,
        ),
        &kb,
        &cb,
    );
    let conn = fleet.amqp().await;
    let ch = conn.create_channel().await.unwrap();
    ch.basic_publish(
        "gearmq.replies".into(),
        orch.reply_queue().into(),
        BasicPublishOptions::default(),
        &forged,
        BasicProperties::default(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = call.finish().await;
    assert_eq!(r.summary.rejected.get("forged"), Some(&1));
    orch.close().await;
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestrator_log_of_a_real_run_verifies_and_tampering_is_named() {
    let fleet = Fleet::init("audit", &["a", "b"]);
    let _a = fleet.start_agent("a");
    let _b = fleet.start_agent("b");
    run_traffic(&fleet).await;

    let log = fleet.path().join("audit.log");
    let ok = verify(&fleet, &[&log], &[]);
    assert_eq!(ok.code, 0, "{}\n{}", ok.stdout, ok.stderr);
    assert!(ok.stdout.contains("requests: 4"), "{}", ok.stdout);
    assert!(ok.stdout.contains("rejected: 1"), "{}", ok.stdout);
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

    // One flipped byte inside record 4.
    let mut flipped = recs.clone();
    let n = flipped[4].len();
    flipped[4][n / 2] ^= 0x01;
    assert!(broken(&flipped).contains("record 4"));

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

    // A cut-off tail is caught only with the head noted elsewhere.
    let mut cut = recs.clone();
    cut.pop();
    write_records(&copy, &cut);
    let silent = verify(&fleet, &[&copy], &[]);
    assert_eq!(silent.code, 0, "a shorter valid chain verifies on its own");
    let caught = verify(&fleet, &[&copy], &["--expect-head", &head]);
    assert_eq!(caught.code, 1, "{}", caught.stdout);
    let same = verify(&fleet, &[&log], &["--expect-head", &head]);
    assert_eq!(same.code, 0, "{}", same.stdout);
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
    let log = fleet.path().join("audit.log");
    let out = verify(&fleet, &[&log], &["--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let doc = out.json();
    assert_eq!(doc["requests"], 12, "{doc}");
}
