//! Production trust, end to end, on a RabbitMQ node of the tests' own configured from
//! `deploy/rabbitmq-tls.conf` (TLS only, client certificates, EXTERNAL login) and
//! provisioned by the real `gearmq init --provision` / `gearmq broker provision`.
//!
//! The second wall of docs/DESIGN.md (Security model, Two independent layers): a host
//! whose process is taken over can read only its own queue and publish only replies in
//! its own name; a client without a certificate of the fleet's CA cannot log in at all.
//! Plus the deploy files: the agent's systemd unit and the example configs.

use gearmq_orchestrator::{CallSpec, Orchestrator};
use gearmq_testkit::node::{deploy_file, issue_client_cert};
use gearmq_testkit::raw::publish_confirmed;
use gearmq_testkit::{BrokerNode, Fleet, hosts};
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A fleet of `hosts` and `operator` provisioned on the shared TLS node, every config
/// TLS + EXTERNAL. Names are broker users shared by every vhost of the node: each test
/// has names of its own.
fn tls_fleet(tag: &str, operator: &str, hosts: &[&str]) -> Fleet {
    Fleet::builder(tag, hosts)
        .operator(operator)
        .tls(BrokerNode::shared_tls())
        .init()
}

fn ping_spec(names: &[&str], timeout: Duration) -> CallSpec {
    gearmq_testkit::ping_spec(hosts(names), timeout)
}

/// Messages in `queue` of the fleet's vhost, as the broker counts them.
fn queue_depth(fleet: &Fleet, queue: &str) -> u64 {
    fleet.vhost.queue_messages(queue)
}

fn consume_options() -> BasicConsumeOptions {
    BasicConsumeOptions::default()
}

// ---------------------------------------------------------------------------------
// The broker confines a host's user: its own queue, replies in its own name, nothing
// else.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_user_cannot_consume_another_hosts_queue() {
    let fleet = tls_fleet("cons", "cons-ops", &["cons-a", "cons-b"]);
    let conn = fleet.connect_as("cons-a").await;
    // Its own queue: allowed (so the refusal below is about the queue, not the login).
    let own = conn.create_channel().await.unwrap();
    own.basic_consume(
        "gearmq.host.cons-a".into(),
        "own".into(),
        consume_options(),
        FieldTable::default(),
    )
    .await
    .expect("a host consumes its own queue");
    let ch = conn.create_channel().await.unwrap();
    let err = ch
        .basic_consume(
            "gearmq.host.cons-b".into(),
            "steal".into(),
            consume_options(),
            FieldTable::default(),
        )
        .await
        .expect_err("consuming another host's queue must be refused")
        .to_string();
    assert!(err.contains("ACCESS_REFUSED"), "{err}");
    assert!(err.contains("gearmq.host.cons-b"), "{err}");
    // basic.get is a read too.
    let ch = conn.create_channel().await.unwrap();
    let err = ch
        .basic_get("gearmq.host.cons-b".into(), Default::default())
        .await
        .expect_err("basic.get on another host's queue must be refused")
        .to_string();
    assert!(err.contains("ACCESS_REFUSED"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_user_cannot_publish_a_request() {
    let fleet = tls_fleet("req", "req-ops", &["req-a", "req-b"]);
    let conn = fleet.connect_as("req-a").await;
    for key in ["host.req-b", "all"] {
        let r = publish_confirmed(
            &conn,
            "gearmq.requests",
            key,
            b"not a request",
            Some("req-a"),
        )
        .await;
        // Refused loudly (the channel closes with the reason), never acked.
        let err = r.expect_err("a host's publish to gearmq.requests must be refused");
        assert!(err.contains("ACCESS_REFUSED"), "{key}: {err}");
        assert!(err.contains("gearmq.requests"), "{key}: {err}");
    }
    // And nothing reached B.
    assert_eq!(queue_depth(&fleet, "gearmq.host.req-b"), 0);
}

/// Delegation on a provisioned broker: the delegator may publish requests to single
/// hosts only, never `all`; a non-delegator not at all; and the delegator's own
/// client.toml (its own broker user, TLS) carries a token that the audience accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_delegators_publish_requests_and_only_to_single_hosts() {
    let fleet = Fleet::builder("dlg", &["dlg-a", "dlg-b", "dlg-c"])
        .operator("dlg-ops")
        .delegators(&["dlg-a"])
        .tls(BrokerNode::shared_tls())
        .init();
    let a = fleet.connect_as("dlg-a").await;
    let ok = publish_confirmed(&a, "gearmq.requests", "host.dlg-b", b"x", Some("dlg-a")).await;
    assert_eq!(ok, Ok(true), "a delegator publishes to one host");
    let err = publish_confirmed(&a, "gearmq.requests", "all", b"x", Some("dlg-a"))
        .await
        .expect_err("a delegator's broadcast must be refused");
    assert!(err.contains("ACCESS_REFUSED"), "{err}");
    let c = fleet.connect_as("dlg-c").await;
    let err = publish_confirmed(&c, "gearmq.requests", "host.dlg-b", b"x", Some("dlg-c"))
        .await
        .expect_err("a non-delegator's publish must be refused");
    assert!(err.contains("ACCESS_REFUSED"), "{err}");
    // Drain the one junk message a put on b's queue before b's agent starts: it is
    // dead-lettered as unproven, which is what the agent does with it.
    let _b = fleet.start_agent("dlg-b");
    let token = fleet.path().join("ping.token");
    let o = fleet.cli(&[
        "token",
        "mint",
        "--subject",
        "dlg-a",
        "--audience",
        "dlg-b",
        "--action",
        "ping",
        "--out",
        token.to_str().unwrap(),
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let client = fleet.host_dir("dlg-a").join("client.toml");
    let o = fleet.run(&[
        "--config",
        client.to_str().unwrap(),
        "ping",
        "--host",
        "dlg-b",
        "--token",
        token.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(o.code, 0, "stdout {}\nstderr {}", o.stdout, o.stderr);
    let doc: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(doc["results"][0]["status"], "ok", "{doc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_user_cannot_publish_a_reply_as_another_host() {
    let fleet = tls_fleet("uid", "uid-ops", &["uid-a", "uid-b"]);
    let conn = fleet.connect_as("uid-a").await;
    let key = "gearmq.reply.uid-ops.00000000";
    // In its own name: accepted (routed nowhere, but acked).
    let ok = publish_confirmed(&conn, "gearmq.replies", key, b"reply", Some("uid-a")).await;
    assert_eq!(ok, Ok(true), "a host publishes replies in its own name");
    let err = publish_confirmed(&conn, "gearmq.replies", key, b"reply", Some("uid-b"))
        .await
        .expect_err("user_id of another host must be refused");
    assert!(err.contains("PRECONDITION_FAILED"), "{err}");
    assert!(err.contains("uid-b"), "{err}");
    // Nor on a routing key that is not a reply queue's (topic permission).
    let err = publish_confirmed(&conn, "gearmq.replies", "host.uid-b", b"x", Some("uid-a"))
        .await
        .expect_err("a reply to a non-reply routing key must be refused");
    assert!(err.contains("ACCESS_REFUSED"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_user_cannot_publish_an_event_as_another_host() {
    let fleet = tls_fleet("evt", "evt-ops", &["evt-a", "evt-b"]);
    let conn = fleet.connect_as("evt-a").await;
    // In its own name: taken into the events stream.
    let ok = publish_confirmed(&conn, "gearmq.events", "evt-a.alive", b"e", Some("evt-a")).await;
    assert_eq!(ok, Ok(true), "a host publishes events in its own name");
    // Under another host's routing key: refused by the topic permission.
    for key in ["evt-b.alive", "evt-ab.alive", "alive"] {
        let err = publish_confirmed(&conn, "gearmq.events", key, b"e", Some("evt-a"))
            .await
            .expect_err("an event under another host's key must be refused");
        assert!(err.contains("ACCESS_REFUSED"), "{key}: {err}");
    }
    // With another host's user id: refused by the broker's user_id check.
    let err = publish_confirmed(&conn, "gearmq.events", "evt-a.alive", b"e", Some("evt-b"))
        .await
        .expect_err("user_id of another host must be refused");
    assert!(err.contains("PRECONDITION_FAILED"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_user_cannot_declare_a_queue() {
    let fleet = tls_fleet("decl", "decl-ops", &["decl-a"]);
    let conn = fleet.connect_as("decl-a").await;
    for q in [
        "decl-a-own",
        "gearmq.host.decl-x",
        "gearmq.reply.decl-ops.x",
    ] {
        let ch = conn.create_channel().await.unwrap();
        let err = ch
            .queue_declare(
                q.into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect_err("a host must not declare queues")
            .to_string();
        assert!(err.contains("ACCESS_REFUSED"), "{q}: {err}");
    }
    // A passive declare of its own queue (what a provisioned agent does) works.
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "gearmq.host.decl-a".into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive declare of its own queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_cannot_bind_a_copy_of_another_operators_replies() {
    let fleet = tls_fleet("bind", "bind-ops", &["bind-a"]);
    // A second operator user, provisioned like the first.
    let out = fleet.cli(&[
        "broker",
        "provision",
        "--apply",
        "--node",
        &fleet.node().node,
        "--operator",
        "bind-eve",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let orch = Orchestrator::connect(&fleet.orchestrator_config())
        .await
        .expect("the operator connects over TLS");
    let victim = orch.reply_queue().to_string();
    assert!(victim.starts_with("gearmq.reply.bind-ops."), "{victim}");

    let eve = fleet.connect_as("bind-eve").await;
    let ch = eve.create_channel().await.unwrap();
    let own = "gearmq.reply.bind-eve.copy";
    ch.queue_declare(
        own.into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("an operator declares its own reply queue");
    // Its own routing key: allowed.
    ch.queue_bind(
        own.into(),
        "gearmq.replies".into(),
        own.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("an operator binds its own reply key");
    // The other operator's: refused by the topic read permission.
    let err = ch
        .queue_bind(
            own.into(),
            "gearmq.replies".into(),
            victim.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("binding another operator's reply key must be refused")
        .to_string();
    assert!(err.contains("ACCESS_REFUSED"), "{err}");
    // Nor may it consume the other operator's queue directly.
    let ch = eve.create_channel().await.unwrap();
    let err = ch
        .basic_consume(
            victim.as_str().into(),
            "steal".into(),
            consume_options(),
            FieldTable::default(),
        )
        .await
        .expect_err("consuming another operator's reply queue must be refused")
        .to_string();
    assert!(
        err.contains("ACCESS_REFUSED") || err.contains("RESOURCE_LOCKED"),
        "{err}"
    );
    orch.close().await;
    let _ = fleet.node().ctl(&["delete_user", "bind-eve"]);
}

// ---------------------------------------------------------------------------------
// The orchestrator's side of the same wall.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_without_user_id_is_rejected_as_forged() {
    let fleet = tls_fleet("nouid", "nouid-ops", &["nouid-a"]);
    let cfg = fleet.orchestrator_config();
    assert!(cfg.broker.require_user_id(), "init --provision turns it on");
    let orch = Orchestrator::connect(&cfg).await.unwrap();
    let call = orch
        .start(ping_spec(&["nouid-a"], Duration::from_millis(1500)))
        .await
        .unwrap();
    // A's genuine signature, through A's own broker login, but no user_id: the broker
    // checks nothing, so the orchestrator must refuse it.
    let a = fleet.connect_as("nouid-a").await;
    let bytes = fleet.reply_as("nouid-a", "nouid-a", &call);
    let acked = publish_confirmed(&a, "gearmq.replies", orch.reply_queue(), &bytes, None).await;
    assert_eq!(
        acked,
        Ok(true),
        "the broker lets a reply without user_id through"
    );
    let result = call.finish().await;
    assert_eq!(result.summary.ok, 0, "{:?}", result.results);
    assert_eq!(result.summary.no_reply, 1);
    assert_eq!(result.summary.rejected.get("forged"), Some(&1));
    orch.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_hosts_replies_are_rejected_as_forged() {
    let fleet = tls_fleet("rev", "rev-ops", &["rev-a"]);
    let orch = Orchestrator::connect(&fleet.orchestrator_config())
        .await
        .unwrap();
    let a = fleet.connect_as("rev-a").await;

    // Before: A's reply, signed and published in its own name, is accepted.
    let call = orch
        .start(ping_spec(&["rev-a"], Duration::from_secs(5)))
        .await
        .unwrap();
    let bytes = fleet.reply_as("rev-a", "rev-a", &call);
    let acked = publish_confirmed(
        &a,
        "gearmq.replies",
        orch.reply_queue(),
        &bytes,
        Some("rev-a"),
    )
    .await;
    assert_eq!(acked, Ok(true));
    let before = call.finish().await;
    assert_eq!(before.summary.ok, 1, "{:?}", before.results);

    // Revoke A with the real CLI; the orchestrator reloads its revocation_file (what
    // SIGHUP does in a long-running orchestrator).
    let list = fleet.path().join("revocations.bin");
    let out = fleet.cli(&[
        "revoke",
        "--name",
        "rev-a",
        "--issuer-key",
        &fleet.path().join("issuer.key").to_string_lossy(),
        "--list",
        &list.to_string_lossy(),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        fleet.orchestrator_config().revocation_file.as_deref(),
        Some(list.as_path())
    );
    orch.reload_revocations()
        .expect("reload the revocation list");

    let call = orch
        .start(ping_spec(&["rev-a"], Duration::from_millis(1500)))
        .await
        .unwrap();
    let bytes = fleet.reply_as("rev-a", "rev-a", &call);
    let acked = publish_confirmed(
        &a,
        "gearmq.replies",
        orch.reply_queue(),
        &bytes,
        Some("rev-a"),
    )
    .await;
    assert_eq!(acked, Ok(true));
    let after = call.finish().await;
    assert_eq!(after.summary.ok, 0, "{:?}", after.results);
    assert_eq!(after.summary.no_reply, 1);
    assert_eq!(after.summary.rejected.get("forged"), Some(&1));

    // A fresh orchestrator reads the list from its config at start.
    let fresh = Orchestrator::connect(&fleet.orchestrator_config())
        .await
        .unwrap();
    let call = fresh
        .start(ping_spec(&["rev-a"], Duration::from_millis(1500)))
        .await
        .unwrap();
    let bytes = fleet.reply_as("rev-a", "rev-a", &call);
    let _ = publish_confirmed(
        &a,
        "gearmq.replies",
        fresh.reply_queue(),
        &bytes,
        Some("rev-a"),
    )
    .await;
    let r = call.finish().await;
    assert_eq!(r.summary.rejected.get("forged"), Some(&1));
    orch.close().await;
    fresh.close().await;
}

// ---------------------------------------------------------------------------------
// TLS: only certificates of the fleet's CA log in; nothing listens in plain text.

/// TLS alerts the node's log says it sent, of the kinds named (`generated SERVER ALERT:
/// Fatal - Certificate required`).
fn server_alerts(node: &BrokerNode, kinds: &[&str]) -> usize {
    node.log_text()
        .lines()
        .filter(|l| l.contains("generated SERVER ALERT") && kinds.iter().any(|k| l.contains(k)))
        .count()
}

/// Whether the node logs one more such alert than `before` within 5 s (its log is
/// written behind).
fn new_server_alert(node: &BrokerNode, kinds: &[&str], before: usize) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if server_alerts(node, kinds) > before {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connection_without_client_certificate_is_refused() {
    let fleet = tls_fleet("nocert", "nocert-ops", &["nocert-a"]);
    // Control: with its certificate the same user gets in.
    let ok = fleet.connect_as("nocert-a").await;
    let _ = ok.close(200, "done".into()).await;
    let before = server_alerts(fleet.node(), &["Certificate required"]);
    let err = fleet
        .node()
        .connect_with(&fleet.vhost.name, None)
        .await
        .expect_err("a TLS client without a certificate must be refused");
    // The broker ends the handshake with TLS alert certificate_required (the client
    // sees it, or only the reset that follows it: the broker's log says which).
    assert!(
        err.contains("CertificateRequired")
            || new_server_alert(fleet.node(), &["Certificate required"], before),
        "refused, but not for the missing certificate: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificate_from_another_ca_is_refused() {
    let fleet = tls_fleet("ca2", "ca2-ops", &["ca2-a"]);
    let ok = fleet.connect_as("ca2-a").await;
    let _ = ok.close(200, "done".into()).await;
    // A CA of its own, issuing a certificate with the very same common name.
    let rogue = fleet.path().join("rogue-ca");
    let out = gearmq_testkit::run_cli(&["pki", "init", "--out", &rogue.to_string_lossy()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (cert, key) = issue_client_cert(&rogue, &rogue.join("clients"), "ca2-a");
    let alerts = ["Unknown CA", "Bad Certificate"];
    let before = server_alerts(fleet.node(), &alerts);
    let err = fleet
        .node()
        .connect_with(&fleet.vhost.name, Some((&cert, &key)))
        .await
        .expect_err("a certificate from another CA must be refused");
    // The broker ends the handshake with TLS alert unknown_ca (or bad_certificate).
    assert!(
        err.contains("UnknownCA")
            || err.contains("BadCertificate")
            || new_server_alert(fleet.node(), &alerts, before),
        "refused, but not for the CA: {err}"
    );
}

/// Accepts one connection on a local port and returns its first byte: 0x16 opens a TLS
/// handshake, `A` opens plain AMQP ("AMQP\0\0\9\1").
fn first_byte_listener() -> (u16, std::thread::JoinHandle<Option<u8>>) {
    use std::io::Read;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).ok()?;
        Some(b[0])
    });
    (port, t)
}

#[test]
fn orchestrator_speaks_tls_on_an_amqps_url() {
    // A TLS fleet's orchestrator config, pointed at a listener that only looks at the
    // first byte: an amqps:// URL must never fall back to plain AMQP.
    let fleet = tls_fleet("tlsb", "tlsb-ops", &["tlsb-a"]);
    let (port, first) = first_byte_listener();
    let mut cfg = fleet.orchestrator_config();
    cfg.broker.urls = vec![format!(
        "amqps://127.0.0.1:{port}/{}?auth_mechanism=external",
        fleet.vhost.name
    )];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), Orchestrator::connect(&cfg)).await
    });
    drop(r);
    let byte = first.join().unwrap();
    assert_eq!(
        byte,
        Some(0x16),
        "the orchestrator opened an amqps:// connection with {byte:?} ('A' = plain AMQP), not a TLS handshake"
    );
}

#[test]
fn plain_amqp_port_is_closed_when_tls_only() {
    let node = BrokerNode::shared_tls();
    // The node was given RABBITMQ_NODE_PORT, but the config says `listeners.tcp = none`.
    let plain = std::net::TcpStream::connect(("127.0.0.1", node.port));
    assert!(
        plain.is_err(),
        "something listens on the plain AMQP port {}",
        node.port
    );
    assert_eq!(
        plain.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    // Control: the TLS port answers.
    std::net::TcpStream::connect(("127.0.0.1", node.amqps_port())).expect("AMQPS port open");
    // And the node itself reports only the TLS listener for AMQP.
    let listeners = node.ctl(&["-q", "status", "--formatter", "json"]).unwrap();
    let status: Value = serde_json::from_str(listeners.trim()).unwrap();
    let protocols: Vec<String> = status["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["protocol"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(protocols.iter().any(|p| p == "amqp/ssl"), "{protocols:?}");
    assert!(!protocols.iter().any(|p| p == "amqp"), "{protocols:?}");
}

#[test]
fn ping_all_over_tls_and_external_works() {
    let fleet = tls_fleet("ping", "ping-ops", &["ping-a", "ping-b"]);
    let _agents: Vec<_> = fleet.hosts.iter().map(|h| fleet.start_agent(h)).collect();
    let out = fleet.cli(&["ping", "--all", "--json"]);
    assert_eq!(
        out.code, 0,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["summary"]["targets"], 2);
    assert_eq!(doc["summary"]["ok"], 2);
    for r in doc["results"].as_array().unwrap() {
        assert_eq!(r["status"], "ok", "{r}");
    }
    // The agents really logged in by certificate, as themselves.
    let conns = fleet
        .node()
        .ctl(&[
            "-q",
            "list_connections",
            "user",
            "vhost",
            "ssl",
            "auth_mechanism",
            "--formatter",
            "json",
        ])
        .unwrap();
    let conns: Value = serde_json::from_str(conns.trim()).unwrap();
    for h in &fleet.hosts {
        assert!(
            conns
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["user"] == h.as_str()
                    && c["vhost"] == fleet.vhost.name.as_str()
                    && c["ssl"] == true
                    && c["auth_mechanism"] == "EXTERNAL"),
            "{h} is not connected over TLS + EXTERNAL: {conns}"
        );
    }
}

// ---------------------------------------------------------------------------------
// Provisioning is idempotent and drift is named.

/// This fleet's part of the node's definitions (other tests share the node).
fn fleet_definitions(fleet: &Fleet) -> Value {
    let all =
        gearmq_testkit::export_definitions(&|args| fleet.node().ctl(&[&["-q"], args].concat()));
    let mut users: Vec<&str> = fleet.hosts.iter().map(String::as_str).collect();
    users.push(&fleet.operator);
    let mine = |k: &str, by: &dyn Fn(&Value) -> bool| -> Value {
        let mut v: Vec<Value> = all[k]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|x| by(x))
            .collect();
        v.sort_by_key(|x| x.to_string());
        Value::Array(v)
    };
    let in_vhost = |x: &Value| x["vhost"] == fleet.vhost.name.as_str();
    let ours = |x: &Value| users.iter().any(|u| x["name"] == *u);
    serde_json::json!({
        "users": mine("users", &ours),
        "permissions": mine("permissions", &in_vhost),
        "topic_permissions": mine("topic_permissions", &in_vhost),
        "exchanges": mine("exchanges", &in_vhost),
        "queues": mine("queues", &in_vhost),
        "bindings": mine("bindings", &in_vhost),
        "policies": mine("policies", &in_vhost),
    })
}

#[test]
fn provisioning_twice_changes_nothing() {
    let fleet = tls_fleet("idem", "idem-ops", &["idem-a", "idem-b"]);
    let node = fleet.node().node.clone();
    let provision = |out: &Path| {
        let o = fleet.cli(&[
            "broker",
            "provision",
            "--apply",
            "--node",
            &node,
            "--definitions-out",
            &out.to_string_lossy(),
        ]);
        assert_eq!(o.code, 0, "{}", o.stderr);
        std::fs::read_to_string(out).unwrap()
    };
    let first = provision(&fleet.path().join("defs1.json"));
    let after_first = fleet_definitions(&fleet);
    let second = provision(&fleet.path().join("defs2.json"));
    let after_second = fleet_definitions(&fleet);
    assert_eq!(first, second, "the plan is the same both times");
    assert_eq!(
        after_first, after_second,
        "the second provisioning changed the broker"
    );
    assert_eq!(after_first["users"].as_array().unwrap().len(), 3);
    assert!(!after_first["queues"].as_array().unwrap().is_empty());
    let check = fleet.cli(&["broker", "check", "--node", &node]);
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    assert!(check.stdout.contains("matches"), "{}", check.stdout);
}

#[test]
fn broker_check_reports_a_hand_edited_permission() {
    let fleet = tls_fleet("drift", "drift-ops", &["drift-a"]);
    let node = fleet.node().node.clone();
    let clean = fleet.cli(&["broker", "check", "--node", &node]);
    assert_eq!(clean.code, 0, "{}{}", clean.stdout, clean.stderr);

    fleet
        .node()
        .ctl(&[
            "set_permissions",
            "-p",
            &fleet.vhost.name,
            "drift-a",
            "^$",
            "^gearmq\\.replies$",
            ".*",
        ])
        .unwrap();
    let drift = fleet.cli(&["broker", "check", "--node", &node]);
    assert_eq!(drift.code, 1, "{}{}", drift.stdout, drift.stderr);
    let line = drift
        .stdout
        .lines()
        .find(|l| l.starts_with("drift:"))
        .unwrap_or_else(|| panic!("no drift line: {}", drift.stdout));
    assert!(line.contains("drift-a"), "{line}");
    assert!(line.contains("permissions"), "{line}");
    assert!(drift.stdout.contains("1 differences"), "{}", drift.stdout);

    // Provisioning again puts it back.
    let o = fleet.cli(&["broker", "provision", "--apply", "--node", &node]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let again = fleet.cli(&["broker", "check", "--node", &node]);
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
}

// ---------------------------------------------------------------------------------
// Deploy files.

#[test]
fn orchestrator_example_config_loads() {
    let cfg =
        gearmq_orchestrator::OrchestratorConfig::load(&deploy_file("orchestrator.example.toml"))
            .expect("deploy/orchestrator.example.toml loads");
    assert!(cfg.broker.provisioned);
    assert!(cfg.broker.require_user_id());
    assert!(
        cfg.broker
            .urls
            .iter()
            .all(|u| u.starts_with("amqps://") && u.ends_with("?auth_mechanism=external"))
    );
    assert!(cfg.broker.ca_file.is_some());
    assert!(cfg.broker.cert_file.is_some() && cfg.broker.key_file.is_some());
    assert_eq!(cfg.broker.user_id.as_deref(), Some(cfg.name.as_str()));
    assert!(cfg.revocation_file.is_some());
}

#[test]
fn agent_example_config_loads() {
    let cfg = gearmq_agent::config::AgentConfig::load_with_env(
        &deploy_file("agent.example.toml"),
        Some(Default::default()),
    )
    .expect("deploy/agent.example.toml loads");
    assert!(cfg.broker.provisioned);
    assert_eq!(cfg.broker.user_id.as_deref(), Some(cfg.name.as_str()));
    assert!(
        cfg.broker
            .urls
            .iter()
            .all(|u| u.starts_with("amqps://") && u.ends_with("?auth_mechanism=external"))
    );
}

/// The unit with ExecStart pointing at the binary this workspace built (verify checks
/// that the program exists).
fn unit_for_analysis(dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(deploy_file("gearmq-agent.service")).unwrap();
    let agent = gearmq_testkit::bin("gearmq-agent");
    let text = text.replace("/usr/bin/gearmq-agent", &agent.to_string_lossy());
    let p = dir.join("gearmq-agent.service");
    std::fs::write(&p, text).unwrap();
    p
}

fn systemd_analyze(args: &[&str]) -> Option<std::process::Output> {
    Command::new("systemd-analyze").args(args).output().ok()
}

#[test]
fn agent_unit_is_hardened_and_passes_systemd_analyze() {
    let text = std::fs::read_to_string(deploy_file("gearmq-agent.service")).unwrap();
    // The settings the agent's safety rests on, and the write paths it needs.
    for line in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/etc/systemd/system /var/lib/gearmq-artifacts",
        "StateDirectory=gearmq",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "CapabilityBoundingSet=",
        "SystemCallFilter=@system-service",
    ] {
        assert!(
            text.lines().any(|l| l.trim() == line),
            "gearmq-agent.service lacks {line}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_analysis(dir.path());
    let unit = unit.to_string_lossy();

    let Some(verify) = systemd_analyze(&["verify", "--man=no", &unit]) else {
        panic!("systemd-analyze is not installed (deploy/test.sh installs systemd)");
    };
    let verify_err = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && !verify_err.contains("gearmq-agent.service"),
        "systemd-analyze verify: {verify_err}"
    );

    let sec = systemd_analyze(&[
        "security",
        "--offline=true",
        "--no-pager",
        "--threshold=25",
        &unit,
    ])
    .unwrap();
    let report = String::from_utf8_lossy(&sec.stdout);
    let overall = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no exposure level: {report}{}",
                String::from_utf8_lossy(&sec.stderr)
            )
        });
    // "→ Overall exposure level for gearmq-agent.service: 1.9 OK 🙂"
    let score: f64 = overall
        .split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score: {overall}"));
    assert!(
        sec.status.success() && score <= 2.5,
        "exposure {score} (threshold 2.5):\n{report}"
    );
}
