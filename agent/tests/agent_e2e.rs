//! The real agent binary against the real RabbitMQ on 127.0.0.1:5672, each test in a
//! vhost of its own, the test playing the orchestrator with lapin.

mod common;

use common::*;
use gearmq_schemas::actions::PingResult;
use gearmq_schemas::time::now_ms;
use gearmq_schemas::{ActionName, Name, Role, Status, Targets, codec};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_ping_gets_one_signed_reply_with_user_id_and_correlation_id() {
    let mut w = World::start().await;
    let req = w.ping();
    w.orch.publish(&w.host_key(), &sign(&req, &w.ops)).await;
    let d = w.orch.reply().await;

    let reply = open_reply(&w.pki, &d.data);
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
    assert!(w.orch.next_reply(QUIET).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_with_flipped_signature_byte_is_dead_lettered_not_answered() {
    let mut w = World::start().await;
    let mut bytes = sign(&w.ping(), &w.ops);
    // The signature is the envelope's last field: its last byte is the message's.
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    w.orch.publish(&w.host_key(), &bytes).await;

    assert!(w.orch.next_reply(QUIET).await.is_none(), "no reply");
    let dead = w
        .orch
        .dead_letter(REPLY_TIMEOUT)
        .await
        .expect("message in gearmq.dead");
    assert_eq!(dead.delivery.data, bytes);
    w.agent.wait_for_log("bad_signature", REPLY_TIMEOUT).await;
    w.assert_ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_and_oversized_requests_are_dead_lettered() {
    let mut w = World::start_with("max_message_bytes = 4096").await;
    let random: Vec<u8> = (0..512).map(|_| rand::random::<u8>()).collect();
    w.orch.publish(&w.host_key(), &random).await;
    let dead = w
        .orch
        .dead_letter(REPLY_TIMEOUT)
        .await
        .expect("dead-lettered");
    assert_eq!(dead.delivery.data, random);

    // A correctly signed request, refused only for its size.
    let mut hosts = vec![w.host.name.clone()];
    hosts.extend((0..600).map(|i| Name::new(format!("filler-{i}")).unwrap()));
    let big = common::ping_request(&w.ops.name, &w.orch.reply_queue, Targets::Hosts(hosts));
    let bytes = sign(&big, &w.ops);
    assert!(bytes.len() > 4096);
    w.orch.publish(&w.host_key(), &bytes).await;
    let dead = w
        .orch
        .dead_letter(REPLY_TIMEOUT)
        .await
        .expect("dead-lettered");
    assert_eq!(dead.delivery.data, bytes);
    w.agent.wait_for_log("oversize", REPLY_TIMEOUT).await;

    assert!(w.orch.next_reply(QUIET).await.is_none(), "never answered");
    w.assert_ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_request_gets_signed_expired_reply_naming_the_skew() {
    let mut w = World::start().await;
    let mut req = w.ping();
    let now = now_ms();
    req.issued_at = now - 2 * 3_600_000;
    req.expires_at = now - 3_600_000;
    w.orch.publish(&w.host_key(), &sign(&req, &w.ops)).await;
    let d = w.orch.reply().await;
    let reply = open_reply(&w.pki, &d.data);
    let body = reply.body();
    assert_eq!(body.request_id, req.id);
    assert_eq!(body.status, Status::Expired);
    let err = body.error.as_deref().unwrap();
    assert!(err.contains("expired at"), "{err}");
    assert!(err.contains("allowed clock skew 30s"), "{err}");
    w.assert_ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_id_with_different_bytes_is_replayed() {
    let mut w = World::start().await;
    let first = w.ping();
    w.orch.publish(&w.host_key(), &sign(&first, &w.ops)).await;
    let r1 = open_reply(&w.pki, &w.orch.reply().await.data);
    assert_eq!(r1.body().status, Status::Ok);

    let mut second = first.clone();
    second.expires_at += 1;
    w.orch.publish(&w.host_key(), &sign(&second, &w.ops)).await;
    let r2 = open_reply(&w.pki, &w.orch.reply().await.data);
    assert_eq!(r2.body().request_id, first.id);
    assert_eq!(r2.body().request_digest.into_array(), digest_of(&second));
    assert_eq!(r2.body().status, Status::Replayed, "{:?}", r2.body().error);
    w.assert_ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_identical_redelivery_gets_the_byte_identical_reply() {
    let mut w = World::start().await;
    let req = w.ping();
    let bytes = sign(&req, &w.ops);
    w.orch.publish(&w.host_key(), &bytes).await;
    w.orch.publish(&w.host_key(), &bytes).await;
    let a = w.orch.reply().await;
    let b = w.orch.reply().await;
    assert_eq!(a.data, b.data, "second reply is the stored one");
    assert_eq!(open_reply(&w.pki, &a.data).body().status, Status::Ok);
    assert!(w.orch.next_reply(QUIET).await.is_none());
    w.assert_ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_reply_survives_an_agent_restart() {
    let mut w = World::start().await;
    let req = w.ping();
    let bytes = sign(&req, &w.ops);
    w.orch.publish(&w.host_key(), &bytes).await;
    let first = w.orch.reply().await;

    // Crash (no drain), start again on the same state dir, redeliver.
    w.agent.signal("KILL");
    w.agent.wait_exit(Duration::from_secs(10)).await;
    w.agent = AgentProcess::start(&w.files.config).await;
    w.orch.publish(&w.host_key(), &bytes).await;
    let again = w.orch.reply().await;
    assert_eq!(first.data, again.data);
    // If the kill landed before the first ack reached the broker, the original delivery
    // comes back too and is answered with the same stored reply: never anything else.
    while let Some(extra) = w.orch.next_reply(Duration::from_millis(500)).await {
        assert_eq!(
            extra.data, first.data,
            "only the stored reply may come again"
        );
    }
    w.assert_ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_signed_by_a_host_credential_is_unauthorized() {
    let mut w = World::start().await;
    let evil = w.pki.party("evil", Role::Host, &["ping"]);
    let mut orch = Orch::connect(&w.vhost, &evil.name).await;
    let req = ping_request(
        &evil.name,
        &orch.reply_queue,
        Targets::Hosts(vec![w.host.name.clone()]),
    );
    orch.publish(&w.host_key(), &sign(&req, &evil)).await;
    let reply = open_reply(&w.pki, &orch.reply().await.data);
    assert_eq!(reply.body().status, Status::Unauthorized);
    let err = reply.body().error.as_deref().unwrap();
    assert!(err.contains("operator credential"), "{err}");
    w.assert_ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_without_ping_in_its_actions_is_unauthorized() {
    let mut w = World::start().await;
    let intern = w.pki.party("intern", Role::Operator, &["status"]);
    let mut orch = Orch::connect(&w.vhost, &intern.name).await;
    let req = ping_request(
        &intern.name,
        &orch.reply_queue,
        Targets::Hosts(vec![w.host.name.clone()]),
    );
    orch.publish(&w.host_key(), &sign(&req, &intern)).await;
    let reply = open_reply(&w.pki, &orch.reply().await.data);
    assert_eq!(reply.body().status, Status::Unauthorized);
    let err = reply.body().error.as_deref().unwrap();
    assert!(err.contains("not allowed action ping"), "{err}");
    w.assert_ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_action_and_bad_arguments_are_refused_by_name() {
    let mut w = World::start().await;
    let ops2 = w.pki.party("ops2", Role::Operator, &["ping", "frobnicate"]);
    let mut orch = Orch::connect(&w.vhost, &ops2.name).await;
    let target = Targets::Hosts(vec![w.host.name.clone()]);

    let mut unknown = ping_request(&ops2.name, &orch.reply_queue, target.clone());
    unknown.action = ActionName::new("frobnicate").unwrap();
    orch.publish(&w.host_key(), &sign(&unknown, &ops2)).await;
    let reply = open_reply(&w.pki, &orch.reply().await.data);
    assert_eq!(reply.body().status, Status::UnknownAction);

    let mut bad_args = ping_request(&ops2.name, &orch.reply_queue, target);
    bad_args.args = vec![0x81, 0xa1, b'x', 0x01];
    orch.publish(&w.host_key(), &sign(&bad_args, &ops2)).await;
    let reply = open_reply(&w.pki, &orch.reply().await.data);
    assert_eq!(reply.body().status, Status::InvalidData);
    let err = reply.body().error.as_deref().unwrap();
    assert!(err.contains("invalid arguments for ping"), "{err}");
    w.assert_ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_for_other_hosts_is_acked_without_reply() {
    let mut w = World::start().await;
    let req = ping_request(
        &w.ops.name,
        &w.orch.reply_queue,
        Targets::Hosts(vec![Name::new("web2").unwrap()]),
    );
    w.orch.publish(&w.host_key(), &sign(&req, &w.ops)).await;
    assert!(w.orch.next_reply(QUIET).await.is_none(), "no reply");
    // Acked: neither in the host queue (ready or unacked) nor dead-lettered.
    assert_eq!(w.vhost.queue_messages("gearmq.host.web1"), 0);
    assert!(w.orch.dead_letter(Duration::ZERO).await.is_none());
    w.assert_ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let mut w = World::start().await;
    w.assert_ping_ok().await;
    w.agent.signal("TERM");
    let status = w.agent.wait_exit(Duration::from_secs(20)).await;
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
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gearmq-agent"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        "gearmq-agent: cannot read host key /nonexistent/host.key: No such file or directory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reconnects_after_the_broker_drops_its_connection() {
    let mut w = World::start().await;
    w.assert_ping_ok().await;
    rabbitmqctl(&[
        "close_all_connections",
        "--vhost",
        &w.vhost.name,
        "test: connection dropped",
    ]);
    w.agent
        .wait_for_log("reconnected to the broker", Duration::from_secs(20))
        .await;
    // Our own connection went too.
    w.orch = Orch::connect(&w.vhost, &w.ops.name).await;
    w.assert_ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_format_writes_one_object_per_line() {
    let vhost = Vhost::create();
    let pki = Pki::new();
    let host = pki.party("web1", Role::Host, &[]);
    let files = write_agent_files(&vhost, &pki, &host, "");
    let mut agent = AgentProcess::start_with_args(&files.config, &["--log-format", "json"]).await;
    agent.signal("TERM");
    assert_eq!(
        agent.wait_exit(Duration::from_secs(20)).await.code(),
        Some(0)
    );
    let lines = agent.lines.lock().unwrap().clone();
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
