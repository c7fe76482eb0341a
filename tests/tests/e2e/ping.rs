//! Signed ping, end to end: real RabbitMQ, real agents, the real CLI and library.

use crate::topology::{QueueType, declare_topology};
use gearmq_orchestrator::Orchestrator;
use gearmq_testkit::raw::Tap;
use gearmq_testkit::{Fleet, hosts, ping_spec};
use std::time::{Duration, Instant};

/// Publishes raw bytes as a reply into `queue` (via gearmq.replies), with the user id
/// every reply on the shared broker carries.
async fn inject_reply(fleet: &Fleet, queue: &str, bytes: &[u8]) {
    let sent = fleet
        .publish("gearmq.replies", queue, bytes, Some("guest"))
        .await;
    assert_eq!(sent, Ok(true));
}

/// Declares host `h`'s queue as its agent would, so requests route but nobody answers.
async fn declare_silent_host_queue(fleet: &Fleet, h: &str) {
    declare_topology(&fleet.url(), &[h], QueueType::Classic).await;
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

    // The one target syntax every command takes, as an argument: names and @all.
    for (targets, n) in [("web1,web2", 2), ("@all", 3), ("db1", 1)] {
        let out = fleet.cli(&["ping", targets, "--json"]);
        assert_eq!(out.code, 0, "{targets}: {}", out.stderr);
        assert_eq!(out.json()["summary"]["ok"], n, "{targets}");
    }
    // It and the flags are one choice, not two.
    let both = fleet.cli(&["ping", "web1", "--all"]);
    assert_eq!(both.code, 2, "{}", both.stderr);
    let none = fleet.cli(&["ping"]);
    assert_eq!(none.code, 2);
    assert!(none.stderr.contains("TARGETS"), "{}", none.stderr);
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
        .start(ping_spec(hosts(&["a"]), Duration::from_secs(5)))
        .await
        .unwrap();
    inject_reply(&fleet, orch.reply_queue(), &fleet.reply_as("b", "a", &call)).await;
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
        .start(ping_spec(hosts(&["a"]), Duration::from_millis(1500)))
        .await
        .unwrap();
    inject_reply(&fleet, orch.reply_queue(), &fleet.reply_as("b", "a", &call)).await;
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
        .start(ping_spec(hosts(&["a"]), Duration::from_secs(5)))
        .await
        .unwrap();
    // C signs a genuine reply in its own name for a request it was not asked.
    inject_reply(&fleet, orch.reply_queue(), &fleet.reply_as("c", "c", &call)).await;
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
    let capture = Tap::bind(&fleet.url(), "gearmq.replies", first.reply_queue()).await;
    let r = first
        .request(ping_spec(hosts(&["a"]), Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(r.summary.ok, 1);
    let old_reply = capture.get().await.expect("captured reply");

    // Replayed to a new orchestrator during a new call: not its request.
    let second = Orchestrator::connect(&cfg).await.unwrap();
    let call = second
        .start(ping_spec(hosts(&["a"]), Duration::from_secs(5)))
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
    capture.close().await;
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
    let again = gearmq_testkit::run_cli(&[
        "init",
        "--dir",
        &fleet.path().to_string_lossy(),
        "--hosts",
        "a",
    ]);
    assert_eq!(again.code, 2);
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
    let dir = tempfile::tempdir().unwrap();
    let bad = gearmq_testkit::run_cli(&[
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
    let capture = Tap::bind(&fleet.url(), "gearmq.replies", orch.reply_queue()).await;
    let mut call = orch
        .start(ping_spec(hosts(&["a", "b"]), Duration::from_millis(2000)))
        .await
        .unwrap();
    // Wait for a's genuine reply, then deliver a copy of it again.
    while let Some(p) = call.next().await {
        if matches!(p, gearmq_orchestrator::Progress::Host(_)) {
            break;
        }
    }
    let copy = capture.get().await.expect("captured reply");
    inject_reply(&fleet, orch.reply_queue(), &copy).await;
    let result = call.finish().await;
    assert_eq!(result.summary.ok, 1);
    assert_eq!(result.summary.duplicates, 1);
    assert!(
        result.summary.rejected.is_empty(),
        "{:?}",
        result.summary.rejected
    );
    capture.close().await;
    orch.close().await;
}
