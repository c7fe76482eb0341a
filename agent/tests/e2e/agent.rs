//! The real agent binary against the real RabbitMQ on 127.0.0.1:5672, each test in a
//! vhost of its own, the test playing the orchestrator with lapin.

use gearmq_schemas::actions::PingResult;
use gearmq_schemas::time::now_ms;
use gearmq_schemas::{ActionName, Name, Request, Role, Status, codec};
use gearmq_testkit::raw::{QUIET, REPLY_TIMEOUT};
use gearmq_testkit::{Agent, AgentFiles, AgentWorld, Pki, Vhost, run_program};
use std::time::Duration;

/// SHA-256 of a request's body bytes, as the agent computes it.
fn digest_of(req: &Request) -> [u8; 32] {
    gearmq_schemas::sha256(&codec::encode(req))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_ping_gets_one_signed_reply_with_user_id_and_correlation_id() {
    let mut w = AgentWorld::start().await;
    let req = w.ping();
    w.send(&req).await;
    let d = w.ops.delivery().await;

    let reply = w.pki.open_reply(&d.data);
    let body = reply.body();
    assert_eq!(reply.signer().role, Role::Host);
    assert_eq!(reply.signer().name, w.host.name);
    assert_eq!(body.host, w.host.name);
    assert_eq!(body.request_id, req.id);
    assert_eq!(body.request_digest.into_array(), digest_of(&req));
    assert_eq!(body.status, Status::Ok, "{:?}", body.error);
    assert!(body.is_final);
    let data: PingResult = codec::decode("data", body.data.as_ref().unwrap(), 1024).unwrap();
    assert_eq!(data.agent_version, env!("CARGO_PKG_VERSION"));

    let props = &d.properties;
    assert_eq!(props.user_id().as_ref().map(|u| u.as_str()), Some("guest"));
    assert_eq!(
        props.correlation_id().as_ref().map(|c| c.to_string()),
        Some(req.id.hyphenated().to_string())
    );
    assert_eq!(
        props.content_type().as_ref().map(|c| c.as_str()),
        Some("application/x-gearmq")
    );
    // Exactly one reply.
    assert!(w.ops.next_delivery(QUIET).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_with_flipped_signature_byte_is_dead_lettered_not_answered() {
    let mut w = AgentWorld::start().await;
    let mut bytes = w.ops.seal(&w.ping());
    // The signature is the envelope's last field: its last byte is the message's.
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    w.ops.send(&bytes, w.host_name()).await;

    assert!(w.ops.next_delivery(QUIET).await.is_none(), "no reply");
    let dead = w
        .ops
        .dead_letter(REPLY_TIMEOUT)
        .await
        .expect("message in gearmq.dead");
    assert_eq!(dead.delivery.data, bytes);
    w.agent.wait_for_log("bad_signature", REPLY_TIMEOUT);
    w.assert_ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_and_oversized_requests_are_dead_lettered() {
    let mut w = AgentWorld::builder()
        .limits("max_message_bytes = 4096")
        .start()
        .await;
    let random = gearmq_testkit::random_bytes(512);
    w.ops.send(&random, w.host_name()).await;
    let dead = w
        .ops
        .dead_letter(REPLY_TIMEOUT)
        .await
        .expect("dead-lettered");
    assert_eq!(dead.delivery.data, random);

    // A correctly signed request, refused only for its size.
    let mut hosts = vec![&w.host.name];
    let fillers: Vec<Name> = (0..600)
        .map(|i| Name::new(format!("filler-{i}")).unwrap())
        .collect();
    hosts.extend(&fillers);
    let bytes = w.ops.seal(&w.ops.ping(&hosts));
    assert!(bytes.len() > 4096);
    w.ops.send(&bytes, w.host_name()).await;
    let dead = w
        .ops
        .dead_letter(REPLY_TIMEOUT)
        .await
        .expect("dead-lettered");
    assert_eq!(dead.delivery.data, bytes);
    w.agent.wait_for_log("oversize", REPLY_TIMEOUT);

    assert!(w.ops.next_delivery(QUIET).await.is_none(), "never answered");
    w.assert_ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_request_gets_signed_expired_reply_naming_the_skew() {
    let mut w = AgentWorld::start().await;
    let mut req = w.ping();
    let now = now_ms();
    req.issued_at = now - 2 * 3_600_000;
    req.expires_at = now - 3_600_000;
    w.send(&req).await;
    let body = w.reply().await;
    assert_eq!(body.request_id, req.id);
    assert_eq!(body.status, Status::Expired);
    let err = body.error.as_deref().unwrap();
    assert!(err.contains("expired at"), "{err}");
    assert!(err.contains("allowed clock skew 30s"), "{err}");
    w.assert_ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_id_with_different_bytes_is_replayed() {
    let mut w = AgentWorld::start().await;
    let first = w.ping();
    w.send(&first).await;
    assert_eq!(w.reply().await.status, Status::Ok);

    let mut second = first.clone();
    second.expires_at += 1;
    w.send(&second).await;
    let r2 = w.reply().await;
    assert_eq!(r2.request_id, first.id);
    assert_eq!(r2.request_digest.into_array(), digest_of(&second));
    assert_eq!(r2.status, Status::Replayed, "{:?}", r2.error);
    w.assert_ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_identical_redelivery_gets_the_byte_identical_reply() {
    let mut w = AgentWorld::start().await;
    let bytes = w.ops.seal(&w.ping());
    w.ops.send(&bytes, w.host_name()).await;
    w.ops.send(&bytes, w.host_name()).await;
    let a = w.ops.delivery().await;
    let b = w.ops.delivery().await;
    assert_eq!(a.data, b.data, "second reply is the stored one");
    assert_eq!(w.pki.open_reply(&a.data).body().status, Status::Ok);
    assert!(w.ops.next_delivery(QUIET).await.is_none());
    w.assert_ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_reply_survives_an_agent_restart() {
    let mut w = AgentWorld::start().await;
    let bytes = w.ops.seal(&w.ping());
    w.ops.send(&bytes, w.host_name()).await;
    let first = w.ops.delivery().await;

    // Crash (no drain), start again on the same state dir, redeliver.
    w.agent.signal("KILL");
    w.agent.wait_exit(Duration::from_secs(10));
    w.start_agent(&[]);
    w.ops.send(&bytes, w.host_name()).await;
    let again = w.ops.delivery().await;
    assert_eq!(first.data, again.data);
    // If the kill landed before the first ack reached the broker, the original delivery
    // comes back too and is answered with the same stored reply: never anything else.
    while let Some(extra) = w.ops.next_delivery(Duration::from_millis(500)).await {
        assert_eq!(
            extra.data, first.data,
            "only the stored reply may come again"
        );
    }
    w.assert_ping_ok().await;
}

/// `caller`'s ping of `w`'s host, and the reply's status and error.
async fn ping_by(w: &AgentWorld, name: &str, role: Role, actions: &[&str]) -> (Status, String) {
    let mut caller = w.caller(name, role, actions).await;
    let req = caller.ping(&[&w.host.name]);
    caller.send(&caller.seal(&req), w.host_name()).await;
    let reply = w.pki.open_reply(&caller.delivery().await.data);
    let body = reply.body();
    (body.status, body.error.clone().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_signed_by_a_host_credential_is_unauthorized() {
    let mut w = AgentWorld::start().await;
    let (status, err) = ping_by(&w, "evil", Role::Host, &["ping"]).await;
    assert_eq!(status, Status::Unauthorized);
    assert!(err.contains("operator credential"), "{err}");
    w.assert_ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_without_ping_in_its_actions_is_unauthorized() {
    let mut w = AgentWorld::start().await;
    let (status, err) = ping_by(&w, "intern", Role::Operator, &["status"]).await;
    assert_eq!(status, Status::Unauthorized);
    assert!(err.contains("not allowed action ping"), "{err}");
    w.assert_ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_action_and_bad_arguments_are_refused_by_name() {
    let mut w = AgentWorld::start().await;
    let mut ops2 = w
        .caller("ops2", Role::Operator, &["ping", "frobnicate"])
        .await;

    let mut unknown = ops2.ping(&[&w.host.name]);
    unknown.action = ActionName::new("frobnicate").unwrap();
    ops2.send(&ops2.seal(&unknown), w.host_name()).await;
    let reply = w.pki.open_reply(&ops2.delivery().await.data);
    assert_eq!(reply.body().status, Status::UnknownAction);

    let mut bad_args = ops2.ping(&[&w.host.name]);
    bad_args.args = vec![0x81, 0xa1, b'x', 0x01];
    ops2.send(&ops2.seal(&bad_args), w.host_name()).await;
    let reply = w.pki.open_reply(&ops2.delivery().await.data);
    assert_eq!(reply.body().status, Status::InvalidData);
    let err = reply.body().error.as_deref().unwrap();
    assert!(err.contains("invalid arguments for ping"), "{err}");
    w.assert_ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_for_other_hosts_is_acked_without_reply() {
    let mut w = AgentWorld::start().await;
    let req = w.ops.ping(&[&Name::new("web2").unwrap()]);
    w.ops.send(&w.ops.seal(&req), w.host_name()).await;
    assert!(w.ops.next_delivery(QUIET).await.is_none(), "no reply");
    // Acked: neither in the host queue (ready or unacked) nor dead-lettered.
    assert_eq!(w.vhost.queue_messages("gearmq.host.web1"), 0);
    assert!(w.ops.dead_letter(Duration::ZERO).await.is_none());
    w.assert_ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let mut w = AgentWorld::start().await;
    w.assert_ping_ok().await;
    w.agent.signal("TERM");
    let status = w.agent.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert!(w.agent.log_contains("agent stopped"));
}

#[test]
fn unreadable_host_key_exits_2_with_a_one_line_reason() {
    let vhost_free = tempfile::tempdir().unwrap();
    let cfg = vhost_free.path().join("agent.toml");
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/agent.example.toml"))
        .unwrap()
        .replace("/etc/gearmq/hosts/web1/host.key", "/nonexistent/host.key");
    std::fs::write(&cfg, text).unwrap();
    let out = run_program("gearmq-agent", &["--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(out.code, 2);
    assert_eq!(
        out.stderr.trim(),
        "gearmq-agent: cannot read host key /nonexistent/host.key: No such file or directory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reconnects_after_the_broker_drops_its_connection() {
    let mut w = AgentWorld::start().await;
    w.assert_ping_ok().await;
    w.vhost.close_connections("test: connection dropped");
    w.agent
        .wait_for_log("reconnected to the broker", Duration::from_secs(20));
    // Our own connection went too.
    let ops = w.ops.identity.clone();
    w.ops = gearmq_testkit::RawCaller::connect(&w.vhost.url(), ops).await;
    w.assert_ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_format_writes_one_object_per_line() {
    let vhost = Vhost::new("agent");
    let pki = Pki::new();
    let host = pki.identity("web1", Role::Host, &[]);
    let files = AgentFiles::write(&vhost.url(), &pki, &host, "", "");
    let mut agent = Agent::start_with(&files.config, &["--log-format", "json"], &[]);
    agent.signal("TERM");
    assert_eq!(agent.wait_exit(Duration::from_secs(20)).code(), Some(0));
    let lines = agent.log_lines();
    assert!(!lines.is_empty());
    let mut ready = None;
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if v["message"] == "agent ready" {
            ready = Some(v);
        }
    }
    let ready = ready.expect("a ready line");
    assert_eq!(ready["host"], "web1");
    assert_eq!(ready["queue"], "gearmq.host.web1");
    let broker = ready["broker"].as_str().unwrap();
    assert!(
        broker.starts_with("amqp://guest@127.0.0.1:5672/"),
        "{broker}"
    );
    assert!(!broker.contains("guest:guest"), "no password in logs");
}
