//! Signed ping, end to end: real RabbitMQ, real agents, the real CLI and library.

use gearmq_orchestrator::{CallSpec, Orchestrator, Selection};
use gearmq_schemas::envelope::Signed;
use gearmq_schemas::{ActionName, Name, Reply, Status, actions::PingArgs, codec};
use gearmq_tests::Fleet;
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use std::time::{Duration, Instant};

fn ping_spec(selection: Selection, timeout: Duration) -> CallSpec {
    CallSpec {
        selection,
        action: ActionName::new("ping").unwrap(),
        args: codec::encode(&PingArgs {}),
        timeout,
    }
}

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// Publishes raw bytes as a reply into `queue` (via gearmq.replies).
async fn inject_reply(fleet: &Fleet, queue: &str, bytes: &[u8]) {
    let conn = fleet.amqp().await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let c = ch
        .basic_publish(
            "gearmq.replies".into(),
            queue.into(),
            BasicPublishOptions::default(),
            bytes,
            BasicProperties::default().with_user_id("guest".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(c.is_ack());
    let _ = conn.close(200, "done".into()).await;
}

/// A signed reply from `signer` naming `host`, bound to the call's id and digest.
fn forged_reply(
    fleet: &Fleet,
    signer: &str,
    host: &str,
    call: &gearmq_orchestrator::Call,
) -> Vec<u8> {
    let (key, cred) = fleet.host_identity(signer);
    let now = gearmq_schemas::time::now_ms();
    let reply = Reply::new(
        call.request_id(),
        call.request_digest(),
        name(host),
        Status::Ok,
        now,
        now,
    );
    Signed::seal(&reply, &key, &cred)
}

/// Declares host `h`'s queue as its agent would, so requests route but nobody answers.
async fn declare_silent_host_queue(fleet: &Fleet, h: &str) {
    let conn = fleet.amqp().await;
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        "gearmq.requests".into(),
        lapin::ExchangeKind::Topic,
        lapin::options::ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let q = format!("gearmq.host.{h}");
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("gearmq.dead".into()),
    );
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    ch.queue_bind(
        q.as_str().into(),
        "gearmq.requests".into(),
        format!("host.{h}").as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let _ = conn.close(200, "done".into()).await;
}

#[test]
fn three_agents_answer_ping_all_with_verified_replies() {
    let fleet = Fleet::init("ping3", &["web1", "web2", "db1"]);
    let _agents: Vec<_> = fleet.hosts.iter().map(|h| fleet.start_agent(h)).collect();

    let out = fleet.cli(&["ping", "--all", "--json"]);
    assert_eq!(
        out.code, 0,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    let doc = out.json();
    assert_eq!(doc["action"], "ping");
    assert_eq!(doc["summary"]["targets"], 3);
    assert_eq!(doc["summary"]["ok"], 3);
    assert_eq!(doc["summary"]["no_reply"], 0);
    let hosts: Vec<&str> = doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["status"], "ok");
            assert_eq!(r["code"], 0);
            assert!(r["data"]["agent_version"].is_string(), "{r}");
            r["host"].as_str().unwrap()
        })
        .collect();
    assert_eq!(hosts, ["db1", "web1", "web2"]);

    // The human form ends with the summary line.
    let human = fleet.cli(&["ping", "--host", "web1,web2"]);
    assert_eq!(human.code, 0, "{}", human.stderr);
    let last = human.stdout.lines().last().unwrap();
    assert!(last.starts_with("2/2 ok in "), "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_signed_by_other_host_naming_target_is_rejected_as_forged() {
    let fleet = Fleet::init("forged", &["a", "b"]);
    let _a = fleet.start_agent("a");
    let orch = Orchestrator::connect(&fleet.orchestrator_config())
        .await
        .unwrap();

    // A is alive: its real reply counts, B's forgery in A's name does not.
    let call = orch
        .start(ping_spec(
            Selection::Hosts(vec![name("a")]),
            Duration::from_secs(5),
        ))
        .await
        .unwrap();
    inject_reply(
        &fleet,
        orch.reply_queue(),
        &forged_reply(&fleet, "b", "a", &call),
    )
    .await;
    // Give the forgery time to arrive before the call can end on A's real reply.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let result = call.finish().await;
    assert_eq!(result.summary.ok, 1, "{:?}", result.results);
    assert_eq!(result.summary.rejected.get("forged"), Some(&1));
    assert_eq!(orch.rejections().get("forged"), Some(&1));
    orch.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_hosts_key_never_makes_a_silent_host_look_alive() {
    let fleet = Fleet::init("silent", &["a", "b"]);
    declare_silent_host_queue(&fleet, "a").await;
    let orch = Orchestrator::connect(&fleet.orchestrator_config())
        .await
        .unwrap();
    let call = orch
        .start(ping_spec(
            Selection::Hosts(vec![name("a")]),
            Duration::from_millis(1500),
        ))
        .await
        .unwrap();
    inject_reply(
        &fleet,
        orch.reply_queue(),
        &forged_reply(&fleet, "b", "a", &call),
    )
    .await;
    let result = call.finish().await;
    assert_eq!(result.summary.ok, 0);
    assert_eq!(result.summary.no_reply, 1);
    assert_eq!(result.summary.rejected.get("forged"), Some(&1));
    orch.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_from_host_not_targeted_is_rejected_as_unexpected_host() {
    let fleet = Fleet::init("unexpected", &["a", "c"]);
    let _a = fleet.start_agent("a");
    let orch = Orchestrator::connect(&fleet.orchestrator_config())
        .await
        .unwrap();
    let call = orch
        .start(ping_spec(
            Selection::Hosts(vec![name("a")]),
            Duration::from_secs(5),
        ))
        .await
        .unwrap();
    // C signs a genuine reply in its own name for a request it was not asked.
    inject_reply(
        &fleet,
        orch.reply_queue(),
        &forged_reply(&fleet, "c", "c", &call),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let result = call.finish().await;
    assert_eq!(result.summary.ok, 1);
    assert_eq!(result.summary.targets, 1, "c must not appear as a result");
    assert_eq!(result.summary.rejected.get("unexpected_host"), Some(&1));
    orch.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_replayed_from_an_earlier_request_is_rejected() {
    let fleet = Fleet::init("replay", &["a"]);
    let _a = fleet.start_agent("a");
    let cfg = fleet.orchestrator_config();
    let first = Orchestrator::connect(&cfg).await.unwrap();

    // Capture a copy of A's genuine reply to the first orchestrator.
    let conn = fleet.amqp().await;
    let ch = conn.create_channel().await.unwrap();
    let capture = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.queue_bind(
        capture.name().clone(),
        "gearmq.replies".into(),
        first.reply_queue().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let r = first
        .request(ping_spec(
            Selection::Hosts(vec![name("a")]),
            Duration::from_secs(5),
        ))
        .await
        .unwrap();
    assert_eq!(r.summary.ok, 1);
    let copy = ch
        .basic_get(capture.name().clone(), Default::default())
        .await
        .unwrap()
        .expect("captured reply");
    let old_reply = copy.delivery.data.clone();

    // Replayed to a new orchestrator during a new call: not its request.
    let second = Orchestrator::connect(&cfg).await.unwrap();
    let call = second
        .start(ping_spec(
            Selection::Hosts(vec![name("a")]),
            Duration::from_secs(5),
        ))
        .await
        .unwrap();
    inject_reply(&fleet, second.reply_queue(), &old_reply).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r2 = call.finish().await;
    assert_eq!(r2.summary.ok, 1, "the fresh reply still counts");
    assert_eq!(second.rejections().get("unknown_request"), Some(&1));

    // Replayed to the orchestrator that sent it, after the call ended: late.
    inject_reply(&fleet, first.reply_queue(), &old_reply).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !first.rejections().contains_key("late") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(first.rejections().get("late"), Some(&1));
    let _ = conn.close(200, "done".into()).await;
    first.close().await;
    second.close().await;
}

#[test]
fn ping_to_unknown_or_unroutable_host_is_reported_at_once() {
    let fleet = Fleet::init("unknown", &["a", "never"]);
    let _a = fleet.start_agent("a");
    let started = Instant::now();
    let out = fleet.cli(&[
        "ping",
        "--host",
        "a,ghost,never",
        "--timeout",
        "30s",
        "--json",
    ]);
    let took = started.elapsed();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(took < Duration::from_secs(10), "took {took:?}: not at once");
    let doc = out.json();
    let by_host = |h: &str| {
        doc["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["host"] == h)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_host("a")["status"], "ok");
    assert_eq!(by_host("ghost")["status"], "no_reply");
    assert!(
        by_host("ghost")["message"]
            .as_str()
            .unwrap()
            .contains("unknown host")
    );
    assert_eq!(by_host("never")["status"], "no_reply");
    assert!(
        by_host("never")["message"]
            .as_str()
            .unwrap()
            .contains("not routable")
    );
    assert_eq!(doc["summary"]["ok"], 1);
    assert_eq!(doc["summary"]["no_reply"], 2);
}

#[test]
fn init_refuses_a_used_dir_and_bad_names() {
    let fleet = Fleet::init("initrules", &["a"]);
    let again = gearmq_tests::run_cli(&[
        "init",
        "--dir",
        &fleet.path().to_string_lossy(),
        "--hosts",
        "a",
    ]);
    assert_eq!(again.code, 2);
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
    let dir = tempfile::tempdir().unwrap();
    let bad = gearmq_tests::run_cli(&[
        "init",
        "--dir",
        &dir.path().join("f").to_string_lossy(),
        "--hosts",
        "ok,Not.Ok",
    ]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("a-z, 0-9 and '-'"), "{}", bad.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_of_an_accepted_reply_is_counted_apart_from_rejections() {
    let fleet = Fleet::init("dup", &["a", "b"]);
    let _a = fleet.start_agent("a");
    // b's queue exists but nobody answers: the call stays open until its deadline.
    declare_silent_host_queue(&fleet, "b").await;
    let orch = Orchestrator::connect(&fleet.orchestrator_config())
        .await
        .unwrap();
    let conn = fleet.amqp().await;
    let ch = conn.create_channel().await.unwrap();
    let capture = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.queue_bind(
        capture.name().clone(),
        "gearmq.replies".into(),
        orch.reply_queue().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut call = orch
        .start(ping_spec(
            Selection::Hosts(vec![name("a"), name("b")]),
            Duration::from_millis(2000),
        ))
        .await
        .unwrap();
    // Wait for a's genuine reply, then deliver a copy of it again.
    while let Some(p) = call.next().await {
        if matches!(p, gearmq_orchestrator::Progress::Host(_)) {
            break;
        }
    }
    let copy = ch
        .basic_get(capture.name().clone(), Default::default())
        .await
        .unwrap()
        .expect("captured reply");
    inject_reply(&fleet, orch.reply_queue(), &copy.delivery.data).await;
    let result = call.finish().await;
    assert_eq!(result.summary.ok, 1);
    assert_eq!(result.summary.duplicates, 1);
    assert!(
        result.summary.rejected.is_empty(),
        "{:?}",
        result.summary.rejected
    );
    let _ = conn.close(200, "done".into()).await;
    orch.close().await;
}
