//! Revocation lists (file + SIGHUP, pushed by request, kept across restarts), issuer
//! rotation, and the agent's audit log: the real agent binary against the real
//! RabbitMQ on 127.0.0.1:5672, each test in a vhost of its own.

use gearmq_schemas::actions::{PingArgs, RevocationArgs, RevocationResult};
use gearmq_schemas::audit::{VerifyOptions, log_files, verify_log};
use gearmq_schemas::credential::verify_credential;
use gearmq_schemas::revocation::RevocationList;
use gearmq_schemas::time::now_ms;
use gearmq_schemas::{Reply, Role, Status, codec};
use gearmq_testkit::raw::{QUIET, REPLY_TIMEOUT};
use gearmq_testkit::{Agent, AgentFiles, AgentWorld, Identity, Pki, RawCaller, Vhost};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn serial_of(pki: &Pki, who: &Identity) -> u64 {
    verify_credential(&who.credential, &[pki.issuer.public_key()])
        .unwrap()
        .serial
}

/// A request from `caller` to `host`, answered; returns the reply body.
async fn call(
    pki: &Pki,
    caller: &mut RawCaller,
    host: &Identity,
    action: &str,
    args: Vec<u8>,
) -> Reply {
    caller.call_verified(pki, &host.name, action, args).await
}

async fn ping(pki: &Pki, caller: &mut RawCaller, host: &Identity) -> Reply {
    call(pki, caller, host, "ping", codec::encode(&PingArgs {})).await
}

async fn push(pki: &Pki, caller: &mut RawCaller, host: &Identity, list: &[u8]) -> Reply {
    let args = RevocationArgs {
        list: serde_bytes::ByteBuf::from(list.to_vec()),
    };
    call(pki, caller, host, "revocation", codec::encode(&args)).await
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

/// Agent files for `host` with `revocation_file` holding `list`; returns the files and
/// the list's path.
fn files_with_revocations(
    vhost: &Vhost,
    pki: &Pki,
    host: &Identity,
    list: &[u8],
) -> (AgentFiles, PathBuf) {
    let files = AgentFiles::write(&vhost.url(), pki, host, "", "");
    let list_file = files.path("revocations.bin");
    std::fs::write(&list_file, list).unwrap();
    files.add_top_level(&format!("revocation_file = \"{}\"", list_file.display()));
    (files, list_file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_operator_in_the_file_and_sighup_stops_its_next_request() {
    let vhost = Vhost::new("agent");
    let pki = Pki::new();
    let host = pki.identity("web1", Role::Host, &[]);
    let ops = pki.identity("ops", Role::Operator, &["ping"]);
    let other = pki.identity("other", Role::Operator, &["ping"]);
    let l0 = RevocationList::empty(now_ms());
    let (files, list_file) = files_with_revocations(&vhost, &pki, &host, &l0.issue(&pki.issuer));
    let mut agent = Agent::start(&files.config);
    assert!(!agent.log_contains("revoked credentials are not refused"));
    let serial = serial_of(&pki, &ops);
    let mut orch = RawCaller::connect(&vhost.url(), ops).await;
    let mut orch_other = RawCaller::connect(&vhost.url(), other).await;
    assert_eq!(ping(&pki, &mut orch, &host).await.status, Status::Ok);

    let l1 = l0.with(&[serial], &[], now_ms());
    std::fs::write(&list_file, l1.issue(&pki.issuer)).unwrap();
    agent.signal("HUP");
    agent.wait_for_log("revocation list reloaded", REPLY_TIMEOUT);
    assert_revoked(&ping(&pki, &mut orch, &host).await, "ops", serial);
    // Others go on being answered; the agent was not restarted.
    assert_eq!(ping(&pki, &mut orch_other, &host).await.status, Status::Ok);

    // An older list in the file is ignored.
    std::fs::write(&list_file, l0.issue(&pki.issuer)).unwrap();
    agent.signal("HUP");
    agent.wait_for_log("not newer than the list held", REPLY_TIMEOUT);
    assert_revoked(&ping(&pki, &mut orch, &host).await, "ops", serial);
    // So is a list from an untrusted issuer, whatever its sequence.
    let stranger = Pki::new();
    std::fs::write(
        &list_file,
        l1.with(&[], &[], now_ms()).issue(&stranger.issuer),
    )
    .unwrap();
    agent.signal("HUP");
    agent.wait_for_log("revocation_file ignored", REPLY_TIMEOUT);
    assert_revoked(&ping(&pki, &mut orch, &host).await, "ops", serial);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_newer_list_is_taken_and_survives_a_restart_and_older_ones_are_ignored() {
    let vhost = Vhost::new("agent");
    let pki = Pki::new();
    let host = pki.identity("web1", Role::Host, &[]);
    let admin = pki.identity("admin", Role::Operator, &["ping", "revocation"]);
    let ops = pki.identity("ops", Role::Operator, &["ping"]);
    // The file holds the oldest list: at restart the pushed copy must win over it.
    let l0 = RevocationList::empty(now_ms());
    let (files, _) = files_with_revocations(&vhost, &pki, &host, &l0.issue(&pki.issuer));
    let mut agent = Agent::start(&files.config);
    let serial = serial_of(&pki, &ops);
    let mut orch_admin = RawCaller::connect(&vhost.url(), admin).await;
    let mut orch = RawCaller::connect(&vhost.url(), ops).await;
    assert_eq!(ping(&pki, &mut orch, &host).await.status, Status::Ok);

    // ops may not push lists.
    let l1 = l0.with(&[serial], &[], now_ms());
    let r = push(&pki, &mut orch, &host, &l1.issue(&pki.issuer)).await;
    assert_eq!(r.status, Status::Unauthorized, "{:?}", r.error);

    let r = push(&pki, &mut orch_admin, &host, &l1.issue(&pki.issuer)).await;
    assert_eq!(
        result(&r),
        RevocationResult {
            sequence: 1,
            changed: true
        }
    );
    assert_revoked(&ping(&pki, &mut orch, &host).await, "ops", serial);
    assert!(files.state_dir.join("revocations.bin").exists());

    // The same list again, and an older one: nothing changes.
    for old in [&l1, &l0] {
        let r = push(&pki, &mut orch_admin, &host, &old.issue(&pki.issuer)).await;
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
    let r = push(&pki, &mut orch_admin, &host, &forged).await;
    assert_eq!(r.status, Status::InvalidData, "{:?}", r.error);
    assert!(
        r.error.as_deref().unwrap().contains("args.list"),
        "{:?}",
        r.error
    );

    // Restart on the same state dir: the pushed list (1) beats the file's (0).
    agent.signal("TERM");
    assert_eq!(agent.wait_exit(Duration::from_secs(20)).code(), Some(0));
    let agent = Agent::start(&files.config);
    assert!(
        agent.log_contains("revocation list loaded"),
        "{:?}",
        agent.log_lines()
    );
    assert_revoked(&ping(&pki, &mut orch, &host).await, "ops", serial);
    assert_eq!(ping(&pki, &mut orch_admin, &host).await.status, Status::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_trusted_issuers_an_operator_of_the_second_is_answered() {
    let vhost = Vhost::new("agent");
    let old = Pki::new();
    let new = Pki::new();
    // The host enrolled by the old issuer, the operator by the new one.
    let host = old.identity("web1", Role::Host, &[]);
    let ops = new.identity("ops", Role::Operator, &["ping"]);
    let files = AgentFiles::write(&vhost.url(), &old, &host, "", "");
    let new_pub = files.path("issuer-new.pub");
    std::fs::write(&new_pub, format!("{}\n", new.issuer.public_key().to_hex())).unwrap();
    let old_pub = files.path("issuer.pub");
    // The host's own issuer second in the list.
    files.edit_config(|t| {
        t.replace(
            &format!("trusted_issuers = [\"{}\"]", old_pub.display()),
            &format!(
                "trusted_issuers = [\"{}\", \"{}\"]",
                new_pub.display(),
                old_pub.display()
            ),
        )
    });
    let _agent = Agent::start(&files.config);
    let mut orch = RawCaller::connect(&vhost.url(), ops).await;
    let r = ping(&old, &mut orch, &host).await;
    assert_eq!(r.status, Status::Ok, "{:?}", r.error);

    // An operator of an issuer the agent does not trust is never answered.
    let stranger = Pki::new();
    let evil = stranger.identity("ops", Role::Operator, &["ping"]);
    let mut evil = RawCaller::connect(&vhost.url(), evil).await;
    let req = evil.ping(&[&host.name]);
    evil.send(&evil.seal(&req), "web1").await;
    assert!(evil.next_delivery(QUIET).await.is_none());
    assert!(evil.dead_letter(REPLY_TIMEOUT).await.is_some());
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
    let mut w = AgentWorld::start().await;
    // Three pings, answered ok.
    for _ in 0..3 {
        w.assert_ping_ok().await;
    }
    // Refused: an operator not allowed ping.
    let mut intern = w.caller("intern", Role::Operator, &["status"]).await;
    let r = ping(&w.pki, &mut intern, &w.host).await;
    assert_eq!(r.status, Status::Unauthorized);
    // Refused: signed by a host (no delegation token); the refusal is logged too.
    let mut evil = w.caller("evil", Role::Host, &["ping"]).await;
    let r = ping(&w.pki, &mut evil, &w.host).await;
    assert_eq!(r.status, Status::Unauthorized);
    // Refused: expired.
    let mut expired = w.ping();
    let now = now_ms();
    expired.issued_at = now - 2 * 3_600_000;
    expired.expires_at = now - 3_600_000;
    w.send(&expired).await;
    assert_eq!(w.reply().await.status, Status::Expired);
    // Not logged: not for this host, and a forged signature (dead-lettered).
    let other = w.ops.ping(&[&gearmq_testkit::name("web2")]);
    w.send(&other).await;
    let mut forged = w.ops.seal(&w.ping());
    let last = forged.len() - 1;
    forged[last] ^= 1;
    w.ops.send(&forged, w.host_name()).await;
    assert!(w.ops.dead_letter(REPLY_TIMEOUT).await.is_some());
    // A byte-identical redelivery is answered again with the same reply, and logged
    // again by digest (a `request_repeated` record).
    // (The copy comes once the first is answered: one arriving while the first is
    // still being recorded is answered the same, but recorded in full.)
    let again = w.ops.seal(&w.ping());
    w.ops.send(&again, w.host_name()).await;
    let a = w.ops.delivery().await;
    w.ops.send(&again, w.host_name()).await;
    let b = w.ops.delivery().await;
    assert_eq!(a.data, b.data);

    // Every reply went out after its record was durable: the log is complete now.
    let files = audit_files(&w.files.state_dir);
    let summary = verify_log(&files, &w.pki.anchors(), &VerifyOptions::default())
        .unwrap_or_else(|e| panic!("audit log verifies: {e}"));
    assert_eq!(summary.writer, w.host.name);
    assert_eq!(summary.writer_role, Role::Host);
    assert_eq!(summary.requests_handled, 3 + 1 + 1 + 1 + 1);
    assert_eq!(summary.requests_repeated, 1);
    assert_eq!(summary.handled_not_ok, 3);
    assert_eq!(
        summary.records,
        1 + 8,
        "genesis, seven handled, one repeated"
    );

    // And it still verifies after a restart continues the chain.
    w.agent.signal("TERM");
    w.agent.wait_exit(Duration::from_secs(20));
    w.start_agent(&[]);
    w.assert_ping_ok().await;
    let summary = verify_log(
        &audit_files(&w.files.state_dir),
        &w.pki.anchors(),
        &VerifyOptions::default(),
    )
    .unwrap_or_else(|e| panic!("audit log verifies: {e}"));
    assert_eq!(summary.requests_handled, 8);
    assert_eq!(summary.requests_repeated, 1);
    assert!(w.agent.log_contains("audit log open"));
}
