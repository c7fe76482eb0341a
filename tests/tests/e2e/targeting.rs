//! Targeting many hosts: label selectors, discovery, limits and rolling batches.

use gearmq_orchestrator::{Orchestrator, Selection};
use gearmq_schemas::{ActionName, LabelMatch, MatchOp, Name, actions::PingArgs, codec};
use gearmq_testkit::{Fleet, run_cli};
use serde_json::Value;
use std::time::Duration;

/// Re-enrolls `host` with `labels` (before its agent starts).
fn label(fleet: &Fleet, host: &str, labels: &[&str]) {
    let d = fleet.host_dir(host);
    let mut args = vec![
        "enroll".to_string(),
        "host".into(),
        host.into(),
        "--pubkey".into(),
        d.join("host.pub").display().to_string(),
        "--issuer-key".into(),
        fleet.path().join("issuer.key").display().to_string(),
        "--out".into(),
        d.join("host.cred").display().to_string(),
        "--force".into(),
        // Keep the sealing key init made, as an operator re-enrolling would.
        "--sealing-pubkey".into(),
        d.join("sealing.pub").display().to_string(),
    ];
    for l in labels {
        args.push("--label".into());
        args.push(l.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_cli(&args);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

fn hosts_of(doc: &Value) -> Vec<String> {
    doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["host"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn where_selector_reaches_exactly_the_labelled_hosts() {
    let fleet = Fleet::init("where", &["w1", "w2", "d1"]);
    label(&fleet, "w1", &["role=web", "zone=eu-1"]);
    label(&fleet, "w2", &["role=web", "zone=us-1"]);
    label(&fleet, "d1", &["role=db", "zone=eu-2"]);
    let _agents: Vec<_> = fleet.hosts.iter().map(|h| fleet.start_agent(h)).collect();

    let out = fleet.cli(&["ping", "--where", "role=web", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc = out.json();
    assert_eq!(hosts_of(&doc), ["w1", "w2"]);
    assert_eq!(
        doc["summary"]["no_reply"], 0,
        "non-matching hosts are never missing"
    );

    let out = fleet.cli(&[
        "ping",
        "--where",
        "zone~eu-.*",
        "--where",
        "role!=web",
        "--json",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(hosts_of(&out.json()), ["d1"]);

    let none = fleet.cli(&["ping", "--where", "role=cache"]);
    assert_eq!(none.code, 2);
    assert!(
        none.stderr.contains("no enrolled host matches"),
        "{}",
        none.stderr
    );
    let bad = fleet.cli(&["ping", "--where", "zone~eu)|(x"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_matching_host_that_receives_a_selector_request_ignores_it() {
    let fleet = Fleet::init("wherestray", &["w1", "d1"]);
    label(&fleet, "w1", &["role=web"]);
    label(&fleet, "d1", &["role=db"]);
    let _w1 = fleet.start_agent("w1");
    let mut d1 = fleet.start_agent("d1");
    let orch = Orchestrator::connect(&fleet.orchestrator_config())
        .await
        .unwrap();
    let resolved = orch
        .resolve(&Selection::Where(vec![LabelMatch {
            key: "role".into(),
            op: MatchOp::Eq,
            value: "web".into(),
        }]))
        .unwrap();
    assert_eq!(resolved.hosts, [Name::new("w1").unwrap()]);
    let r = orch
        .start_resolved(
            &resolved,
            ActionName::new("ping").unwrap(),
            codec::encode(&PingArgs {}),
            Duration::from_millis(1500),
        )
        .await
        .unwrap()
        .finish()
        .await;
    assert_eq!(r.summary.ok, 1);
    assert!(orch.rejections().is_empty(), "{:?}", orch.rejections());
    orch.close().await;
    // The signed role=web request, published to d1's queue as well (a misrouted copy).
    let sent = fleet.sent_requests();
    assert_eq!(sent.len(), 1);
    // It reached every host the selector denotes, so it signs the selector itself.
    let signed = gearmq_schemas::audit::peek_signed::<gearmq_schemas::Request>(&sent[0], 1 << 20)
        .unwrap()
        .0
        .targets;
    assert!(
        matches!(signed, gearmq_schemas::Targets::Selector(_)),
        "{signed:?}"
    );
    fleet.forward_request(&sent[0], "d1").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // d1 acked it silently as not a target (its counters, logged at shutdown).
    assert_eq!(d1.terminate(), Some(0));
    assert!(d1.log_text().contains("not_target=1"), "{}", d1.log_text());
}

#[test]
fn batch_of_two_over_five_hosts_runs_three_batches_in_order() {
    let names = ["h1", "h2", "h3", "h4", "h5"];
    let fleet = Fleet::init("batch", &names);
    let _agents: Vec<_> = names.iter().map(|h| fleet.start_agent(h)).collect();
    let out = fleet.cli(&["ping", "--all", "--batch", "2", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc = out.json();
    let batches: Vec<Vec<String>> = doc["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            b["hosts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h.as_str().unwrap().to_string())
                .collect()
        })
        .collect();
    assert_eq!(
        batches,
        vec![vec!["h1", "h2"], vec!["h3", "h4"], vec!["h5"]]
    );
    // Request ids are UUIDv7: later batches were signed later.
    let ids: Vec<&str> = doc["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["request_id"].as_str().unwrap())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    assert_eq!(doc["summary"]["ok"], 5);
}

#[test]
fn fail_fast_stops_after_the_first_failed_batch() {
    let names = ["h1", "h2", "h3", "h4", "h5"];
    let fleet = Fleet::init("failfast", &names);
    // h2 never runs: the first batch fails (not routable).
    let _agents: Vec<_> = names
        .iter()
        .filter(|h| **h != "h2")
        .map(|h| fleet.start_agent(h))
        .collect();
    let out = fleet.cli(&["ping", "--all", "--batch", "2", "--fail-fast", "--json"]);
    assert_eq!(out.code, 1);
    let doc = out.json();
    assert_eq!(doc["batches"].as_array().unwrap().len(), 1, "{doc}");
    assert_eq!(doc["summary"]["ok"], 1);
    assert_eq!(doc["summary"]["no_reply"], 4);
    let skipped = doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.contains("--fail-fast"))
        })
        .count();
    assert_eq!(skipped, 3);
}

#[test]
fn limit_with_seed_picks_the_same_hosts_and_discover_finds_the_live_ones() {
    let names = ["h1", "h2", "h3", "h4"];
    let fleet = Fleet::init("limit", &names);
    let _agents: Vec<_> = names[..3].iter().map(|h| fleet.start_agent(h)).collect();
    let first = fleet.cli(&[
        "ping",
        "--where",
        "nolabel!=x",
        "--limit",
        "2",
        "--seed",
        "7",
        "--json",
    ]);
    let again = fleet.cli(&[
        "ping",
        "--where",
        "nolabel!=x",
        "--limit",
        "2",
        "--seed",
        "7",
        "--json",
    ]);
    assert_eq!(hosts_of(&first.json()), hosts_of(&again.json()));
    assert_eq!(hosts_of(&first.json()).len(), 2);
    let head = fleet.cli(&["ping", "--all", "--limit", "2", "--json"]);
    assert_eq!(hosts_of(&head.json()), ["h1", "h2"]);

    // Discovery: whoever answers is the target set; h4 (never started) is not missing.
    let disc = fleet.cli(&["ping", "--discover", "--timeout", "1500ms", "--json"]);
    assert_eq!(disc.code, 0, "{}", disc.stderr);
    assert_eq!(hosts_of(&disc.json()), ["h1", "h2", "h3"]);
}

#[test]
fn display_filters_rows_but_not_the_summary() {
    let fleet = Fleet::init("display", &["a", "b"]);
    let _a = fleet.start_agent("a");
    let out = fleet.cli(&["ping", "--all", "--display", "failed"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.lines().any(|l| l.starts_with("b ")),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout.lines().any(|l| l.starts_with("a ")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("1/2 ok"), "{}", out.stdout);
}

/// Requests the broker has routed to `queue` so far (a passive declare counts them).
async fn queued(ch: &lapin::Channel, queue: &str) -> u32 {
    ch.queue_declare(
        queue.into(),
        lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        lapin::types::FieldTable::default(),
    )
    .await
    .unwrap()
    .message_count()
}

async fn ping(orch: &Orchestrator, selection: Selection) -> gearmq_orchestrator::CallResult {
    let resolved = orch.resolve(&selection).unwrap();
    orch.start_resolved(
        &resolved,
        ActionName::new("ping").unwrap(),
        codec::encode(&PingArgs {}),
        Duration::from_secs(5),
    )
    .await
    .unwrap()
    .finish()
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_fleet_and_large_label_and_host_list_calls_are_published_once_on_the_all_route() {
    let fleet = Fleet::init("onepub", &["w1", "w2", "d1"]);
    label(&fleet, "w1", &["role=web"]);
    label(&fleet, "w2", &["role=web"]);
    label(&fleet, "d1", &["role=db"]);
    let _w1 = fleet.start_agent("w1");
    let mut w2 = fleet.start_agent("w2");
    let mut d1 = fleet.start_agent("d1");
    // A probe queue bound to `all`, as every host queue is: what the broker routes on
    // that key lands here once per publish.
    let conn = fleet.amqp().await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "probe".into(),
        lapin::options::QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        lapin::types::FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "probe".into(),
        "gearmq.requests".into(),
        "all".into(),
        Default::default(),
        lapin::types::FieldTable::default(),
    )
    .await
    .unwrap();

    let mut config = fleet.orchestrator_config();
    config.defaults.broadcast_min_hosts = 2;
    let orch = Orchestrator::connect(&config).await.unwrap();
    let web = || {
        Selection::Where(vec![LabelMatch {
            key: "role".into(),
            op: MatchOp::Eq,
            value: "web".into(),
        }])
    };

    // --all: one publish, every host answers once.
    let r = ping(&orch, Selection::All).await;
    assert_eq!(r.summary.ok, 3, "{:?}", r.results);
    assert_eq!(queued(&ch, "probe").await, 1);
    // role=web holds 2 of 3 hosts (at least half): one publish on `all`, and d1, which
    // it does not select, receives it and drops it unanswered.
    let r = ping(&orch, web()).await;
    assert_eq!(r.summary.ok, 2, "{:?}", r.results);
    assert_eq!(r.results.len(), 2);
    assert_eq!(queued(&ch, "probe").await, 2);
    // role=db (1 host: under the threshold of 2): one publish per host.
    assert_eq!(
        ping(
            &orch,
            Selection::Where(vec![LabelMatch {
                key: "role".into(),
                op: MatchOp::Eq,
                value: "db".into(),
            }])
        )
        .await
        .summary
        .ok,
        1
    );
    // A host list of 2 of 3: one publish (two copies of a 2-name list would cost
    // the broker more); w2, which it does not name, drops it unanswered.
    let names = |n: &[&str]| n.iter().map(|h| Name::new(*h).unwrap()).collect::<Vec<_>>();
    let r = ping(&orch, Selection::Hosts(names(&["w1", "d1"]))).await;
    assert_eq!(r.summary.ok, 2, "{:?}", r.results);
    assert_eq!(r.results.len(), 2);
    assert_eq!(queued(&ch, "probe").await, 3);
    // One host, or a list naming a host outside the inventory (which `all` could
    // reach): one publish per inventory host.
    assert_eq!(
        ping(&orch, Selection::Hosts(names(&["w1"])))
            .await
            .summary
            .ok,
        1
    );
    let r = ping(&orch, Selection::Hosts(names(&["w1", "d1", "x9"]))).await;
    assert_eq!(r.summary.ok, 2, "{:?}", r.results);
    assert_eq!(queued(&ch, "probe").await, 3);
    assert!(orch.rejections().is_empty(), "{:?}", orch.rejections());
    orch.close().await;

    // 0 turns it off: --all goes out once per host.
    config.defaults.broadcast_min_hosts = 0;
    let orch = Orchestrator::connect(&config).await.unwrap();
    assert_eq!(ping(&orch, Selection::All).await.summary.ok, 3);
    assert_eq!(queued(&ch, "probe").await, 3);
    orch.close().await;

    // The CLI reads it from orchestrator.toml.
    fleet.edit_orchestrator_toml(|t| {
        t.replace("[defaults]\n", "[defaults]\nbroadcast_min_hosts = 3\n")
    });
    let out = fleet.cli(&["ping", "--all", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["summary"]["ok"], 3);
    assert_eq!(queued(&ch, "probe").await, 4);
    let _ = conn.close(200, "done".into()).await;
    // d1 dropped the role=web request and w2 the list of w1 and d1, as not a target
    // (their counters, logged at shutdown); each answered every call that chose it.
    assert_eq!(d1.terminate(), Some(0));
    assert!(d1.log_text().contains("not_target=1"), "{}", d1.log_text());
    assert_eq!(w2.terminate(), Some(0));
    assert!(w2.log_text().contains("not_target=1"), "{}", w2.log_text());
}
