//! Revocation lists (file + SIGHUP, pushed by request, kept across restarts), issuer
//! rotation, and the agent's audit log: the real agent binary against the real
//! RabbitMQ on 127.0.0.1:5672, each test in a vhost of its own.

mod common;

use common::*;
use gearmq_schemas::actions::{PingArgs, RevocationArgs, RevocationResult};
use gearmq_schemas::audit::{VerifyOptions, log_files, verify_log};
use gearmq_schemas::credential::verify_credential;
use gearmq_schemas::revocation::RevocationList;
use gearmq_schemas::time::now_ms;
use gearmq_schemas::{Name, Reply, Role, Status, Targets, TrustAnchors, codec};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Adds top-level `lines` to an agent config written by the harness.
fn add_top_level(config: &Path, lines: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    let text = text.replacen("\n[broker]", &format!("\n{lines}\n\n[broker]"), 1);
    std::fs::write(config, text).unwrap();
}

fn serial_of(pki: &Pki, party: &Party) -> u64 {
    verify_credential(&party.cred, &[pki.issuer.public_key()])
        .unwrap()
        .serial
}

/// A request from `caller` to `host`, answered; returns the reply body.
async fn call(
    pki: &Pki,
    orch: &mut Orch,
    caller: &Party,
    host: &Party,
    action: &str,
    args: Vec<u8>,
) -> Reply {
    let mut req = request(
        &caller.name,
        &orch.reply_queue,
        &host.name,
        action,
        &(),
        Duration::from_secs(60),
    );
    req.args = args;
    orch.publish(&format!("host.{}", host.name), &sign(&req, caller))
        .await;
    loop {
        let d = orch.reply().await;
        let r = open_reply(pki, &d.data);
        if r.body().request_id == req.id {
            return r.body().clone();
        }
    }
}

async fn ping(pki: &Pki, orch: &mut Orch, caller: &Party, host: &Party) -> Reply {
    call(pki, orch, caller, host, "ping", codec::encode(&PingArgs {})).await
}

async fn push(pki: &Pki, orch: &mut Orch, caller: &Party, host: &Party, list: &[u8]) -> Reply {
    let args = RevocationArgs {
        list: serde_bytes::ByteBuf::from(list.to_vec()),
    };
    call(pki, orch, caller, host, "revocation", codec::encode(&args)).await
}

fn assert_revoked(r: &Reply, name: &str, serial: u64) {
    assert_eq!(r.status, Status::Unauthorized, "{:?}", r.error);
    let e = r.error.as_deref().unwrap_or("");
    assert!(e.contains("revoked"), "{e}");
    assert!(e.contains(name), "{e}");
    assert!(e.contains(&format!("serial {serial}")), "{e}");
}

fn result(r: &Reply) -> RevocationResult {
    assert_eq!(r.status, Status::Ok, "{:?}", r.error);
    codec::decode("data", r.data.as_ref().unwrap(), 1024).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_operator_in_the_file_and_sighup_stops_its_next_request() {
    let vhost = Vhost::create();
    let pki = Pki::new();
    let host = pki.party("web1", Role::Host, &[]);
    let ops = pki.party("ops", Role::Operator, &["ping"]);
    let other = pki.party("other", Role::Operator, &["ping"]);
    let files = write_agent_files(&vhost, &pki, &host, "");
    let list_file = files.dir.path().join("revocations.bin");
    let l0 = RevocationList::empty(now_ms());
    std::fs::write(&list_file, l0.issue(&pki.issuer)).unwrap();
    add_top_level(
        &files.config,
        &format!("revocation_file = \"{}\"", list_file.display()),
    );
    let agent = AgentProcess::start(&files.config).await;
    assert!(!agent.log_contains("revoked credentials are not refused"));
    let mut orch = Orch::connect(&vhost, &ops.name).await;
    let mut orch_other = Orch::connect(&vhost, &other.name).await;
    assert_eq!(ping(&pki, &mut orch, &ops, &host).await.status, Status::Ok);

    let serial = serial_of(&pki, &ops);
    let l1 = l0.with(&[serial], &[], now_ms());
    std::fs::write(&list_file, l1.issue(&pki.issuer)).unwrap();
    agent.signal("HUP");
    agent
        .wait_for_log("revocation list reloaded", REPLY_TIMEOUT)
        .await;
    assert_revoked(&ping(&pki, &mut orch, &ops, &host).await, "ops", serial);
    // Others go on being answered; the agent was not restarted.
    assert_eq!(
        ping(&pki, &mut orch_other, &other, &host).await.status,
        Status::Ok
    );

    // An older list in the file is ignored.
    std::fs::write(&list_file, l0.issue(&pki.issuer)).unwrap();
    agent.signal("HUP");
    agent
        .wait_for_log("not newer than the list held", REPLY_TIMEOUT)
        .await;
    assert_revoked(&ping(&pki, &mut orch, &ops, &host).await, "ops", serial);
    // So is a list from an untrusted issuer, whatever its sequence.
    let stranger = Pki::new();
    std::fs::write(
        &list_file,
        l1.with(&[], &[], now_ms()).issue(&stranger.issuer),
    )
    .unwrap();
    agent.signal("HUP");
    agent
        .wait_for_log("revocation_file ignored", REPLY_TIMEOUT)
        .await;
    assert_revoked(&ping(&pki, &mut orch, &ops, &host).await, "ops", serial);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_newer_list_is_taken_and_survives_a_restart_and_older_ones_are_ignored() {
    let vhost = Vhost::create();
    let pki = Pki::new();
    let host = pki.party("web1", Role::Host, &[]);
    let admin = pki.party("admin", Role::Operator, &["ping", "revocation"]);
    let ops = pki.party("ops", Role::Operator, &["ping"]);
    let files = write_agent_files(&vhost, &pki, &host, "");
    // The file holds the oldest list: at restart the pushed copy must win over it.
    let list_file = files.dir.path().join("revocations.bin");
    let l0 = RevocationList::empty(now_ms());
    std::fs::write(&list_file, l0.issue(&pki.issuer)).unwrap();
    add_top_level(
        &files.config,
        &format!("revocation_file = \"{}\"", list_file.display()),
    );
    let mut agent = AgentProcess::start(&files.config).await;
    let mut orch_admin = Orch::connect(&vhost, &admin.name).await;
    let mut orch = Orch::connect(&vhost, &ops.name).await;
    assert_eq!(ping(&pki, &mut orch, &ops, &host).await.status, Status::Ok);

    // ops may not push lists.
    let serial = serial_of(&pki, &ops);
    let l1 = l0.with(&[serial], &[], now_ms());
    let r = push(&pki, &mut orch, &ops, &host, &l1.issue(&pki.issuer)).await;
    assert_eq!(r.status, Status::Unauthorized, "{:?}", r.error);

    let r = push(&pki, &mut orch_admin, &admin, &host, &l1.issue(&pki.issuer)).await;
    assert_eq!(
        result(&r),
        RevocationResult {
            sequence: 1,
            changed: true
        }
    );
    assert_revoked(&ping(&pki, &mut orch, &ops, &host).await, "ops", serial);
    assert!(files.state_dir.join("revocations.bin").exists());

    // The same list again, and an older one: nothing changes.
    for old in [&l1, &l0] {
        let r = push(
            &pki,
            &mut orch_admin,
            &admin,
            &host,
            &old.issue(&pki.issuer),
        )
        .await;
        assert_eq!(
            result(&r),
            RevocationResult {
                sequence: 1,
                changed: false
            }
        );
    }
    // Not a list of a trusted issuer: invalid data, naming the field.
    let stranger = Pki::new();
    let forged = l1.with(&[], &[], now_ms()).issue(&stranger.issuer);
    let r = push(&pki, &mut orch_admin, &admin, &host, &forged).await;
    assert_eq!(r.status, Status::InvalidData, "{:?}", r.error);
    assert!(
        r.error.as_deref().unwrap().contains("args.list"),
        "{:?}",
        r.error
    );

    // Restart on the same state dir: the pushed list (1) beats the file's (0).
    agent.signal("TERM");
    assert_eq!(
        agent.wait_exit(Duration::from_secs(20)).await.code(),
        Some(0)
    );
    let agent = AgentProcess::start(&files.config).await;
    assert!(
        agent.log_contains("revocation list loaded"),
        "{:?}",
        agent.lines.lock().unwrap()
    );
    assert_revoked(&ping(&pki, &mut orch, &ops, &host).await, "ops", serial);
    assert_eq!(
        ping(&pki, &mut orch_admin, &admin, &host).await.status,
        Status::Ok
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_trusted_issuers_an_operator_of_the_second_is_answered() {
    let vhost = Vhost::create();
    let old = Pki::new();
    let new = Pki::new();
    // The host enrolled by the old issuer, the operator by the new one.
    let host = old.party("web1", Role::Host, &[]);
    let ops = new.party("ops", Role::Operator, &["ping"]);
    let files = write_agent_files(&vhost, &old, &host, "");
    let new_pub = files.dir.path().join("issuer-new.pub");
    std::fs::write(&new_pub, format!("{}\n", new.issuer.public_key().to_hex())).unwrap();
    let old_pub = files.dir.path().join("issuer.pub");
    // The host's own issuer second in the list.
    let text = std::fs::read_to_string(&files.config).unwrap().replace(
        &format!("trusted_issuers = [\"{}\"]", old_pub.display()),
        &format!(
            "trusted_issuers = [\"{}\", \"{}\"]",
            new_pub.display(),
            old_pub.display()
        ),
    );
    std::fs::write(&files.config, text).unwrap();
    let _agent = AgentProcess::start(&files.config).await;
    let mut orch = Orch::connect(&vhost, &ops.name).await;
    let r = ping(&old, &mut orch, &ops, &host).await;
    assert_eq!(r.status, Status::Ok, "{:?}", r.error);

    // An operator of an issuer the agent does not trust is never answered.
    let stranger = Pki::new();
    let evil = stranger.party("ops", Role::Operator, &["ping"]);
    let req = ping_request(
        &evil.name,
        &orch.reply_queue,
        Targets::Hosts(vec![host.name.clone()]),
    );
    orch.publish("host.web1", &sign(&req, &evil)).await;
    assert!(orch.next_reply(QUIET).await.is_none());
    assert!(orch.dead_letter(REPLY_TIMEOUT).await.is_some());
}

/// The files of an agent's audit log, oldest first, as `verify_log` takes them.
fn audit_files(state_dir: &Path) -> Vec<(String, Vec<u8>)> {
    log_files(&state_dir.join("audit.log"))
        .unwrap()
        .into_iter()
        .map(|p: PathBuf| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_holds_every_answered_request_and_verifies() {
    let mut w = World::start().await;
    // Three pings, answered ok.
    for _ in 0..3 {
        w.assert_ping_ok().await;
    }
    // Refused: an operator not allowed ping.
    let intern = w.pki.party("intern", Role::Operator, &["status"]);
    let mut orch_intern = Orch::connect(&w.vhost, &intern.name).await;
    let r = ping(&w.pki, &mut orch_intern, &intern, &w.host).await;
    assert_eq!(r.status, Status::Unauthorized);
    // Refused: signed by a host (no delegation token); the refusal is logged too.
    let evil = w.pki.party("evil", Role::Host, &["ping"]);
    let mut orch_evil = Orch::connect(&w.vhost, &evil.name).await;
    let r = ping(&w.pki, &mut orch_evil, &evil, &w.host).await;
    assert_eq!(r.status, Status::Unauthorized);
    // Refused: expired.
    let mut expired = w.ping();
    let now = now_ms();
    expired.issued_at = now - 2 * 3_600_000;
    expired.expires_at = now - 3_600_000;
    w.orch.publish(&w.host_key(), &sign(&expired, &w.ops)).await;
    let r = open_reply(&w.pki, &w.orch.reply().await.data);
    assert_eq!(r.body().status, Status::Expired);
    // Not logged: not for this host, and a forged signature (dead-lettered).
    let other = ping_request(
        &w.ops.name,
        &w.orch.reply_queue,
        Targets::Hosts(vec![Name::new("web2").unwrap()]),
    );
    w.orch.publish(&w.host_key(), &sign(&other, &w.ops)).await;
    let mut forged = sign(&w.ping(), &w.ops);
    let last = forged.len() - 1;
    forged[last] ^= 1;
    w.orch.publish(&w.host_key(), &forged).await;
    assert!(w.orch.dead_letter(REPLY_TIMEOUT).await.is_some());
    // A byte-identical redelivery is answered again, and logged again.
    let again = sign(&w.ping(), &w.ops);
    w.orch.publish(&w.host_key(), &again).await;
    w.orch.publish(&w.host_key(), &again).await;
    let a = w.orch.reply().await;
    let b = w.orch.reply().await;
    assert_eq!(a.data, b.data);

    // Every reply went out after its record was durable: the log is complete now.
    let files = audit_files(&w.files.state_dir);
    let summary = verify_log(
        &files,
        &TrustAnchors::new(vec![w.pki.issuer.public_key()]),
        &VerifyOptions::default(),
    )
    .unwrap_or_else(|e| panic!("audit log verifies: {e}"));
    assert_eq!(summary.writer, w.host.name);
    assert_eq!(summary.writer_role, Role::Host);
    assert_eq!(summary.requests_handled, 3 + 1 + 1 + 1 + 2);
    assert_eq!(summary.handled_not_ok, 3);
    assert_eq!(summary.records, 1 + 8, "genesis and eight handled");

    // And it still verifies after a restart continues the chain.
    w.agent.signal("TERM");
    w.agent.wait_exit(Duration::from_secs(20)).await;
    w.agent = AgentProcess::start(&w.files.config).await;
    w.assert_ping_ok().await;
    let summary = verify_log(
        &audit_files(&w.files.state_dir),
        &TrustAnchors::new(vec![w.pki.issuer.public_key()]),
        &VerifyOptions::default(),
    )
    .unwrap_or_else(|e| panic!("audit log verifies: {e}"));
    assert_eq!(summary.requests_handled, 9);
    assert!(w.agent.log_contains("audit log open"));
}
