//! A three-node RabbitMQ cluster on this machine with quorum host queues: the node the
//! agent and the orchestrator are connected to is stopped mid-traffic; both fail over
//! to another URL from their lists, and no request is lost.
//!
//! Booting three nodes takes tens of seconds, so this runs as its own CI step
//! (`deploy/test.sh` runs it with `--ignored`).

use gearmq_orchestrator::{CallSpec, Orchestrator, Selection};
use gearmq_schemas::{ActionName, Name, actions::PingArgs, codec};
use gearmq_tests::faults::{Cluster, NodeFleet, observe};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde_json::json;
use std::time::{Duration, Instant};

fn ping_spec(host: &str, timeout: Duration) -> CallSpec {
    CallSpec {
        selection: Selection::Hosts(vec![Name::new(host).unwrap()]),
        action: ActionName::new("ping").unwrap(),
        args: codec::encode(&PingArgs {}),
        timeout,
    }
}

/// The topology of DESIGN.md with quorum queues (what `gearmq broker provision
/// --queue-type quorum` makes), declared on the cluster through `url`.
async fn declare_quorum_topology(url: &str, hosts: &[&str]) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    for (ex, kind) in [
        ("gearmq.requests", ExchangeKind::Topic),
        ("gearmq.replies", ExchangeKind::Topic),
        ("gearmq.dead", ExchangeKind::Fanout),
    ] {
        ch.exchange_declare(
            ex.into(),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    let quorum = |dead_letter: bool| {
        let mut a = FieldTable::default();
        a.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        if dead_letter {
            a.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString("gearmq.dead".into()),
            );
        }
        a
    };
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("gearmq.dead".into(), durable, quorum(false))
        .await
        .unwrap();
    ch.queue_bind(
        "gearmq.dead".into(),
        "gearmq.dead".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    for h in hosts {
        let q = format!("gearmq.host.{h}");
        ch.queue_declare(q.as_str().into(), durable, quorum(true))
            .await
            .unwrap();
        for key in [format!("host.{h}"), "all".to_string()] {
            ch.queue_bind(
                q.as_str().into(),
                "gearmq.requests".into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        }
    }
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "boots a three-node cluster: its own CI step (deploy/test.sh)"]
async fn agent_fails_over_when_its_cluster_node_stops() {
    let t0 = Instant::now();
    let cluster = match Cluster::start() {
        Ok(c) => c,
        Err(e) => panic!("the cluster could not be formed: {e:#}"),
    };
    let formed = t0.elapsed();
    let vhost = format!("gearmq-t-cluster-{:08x}", gearmq_tests::rand_u32());
    cluster.nodes[0].add_vhost(&vhost);
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url(&vhost)).collect();
    declare_quorum_topology(&urls[0], &["h1"]).await;
    let fleet = NodeFleet::init("cluster", &["h1"], &vhost, &urls);
    fleet.set_provisioned();
    // Every config lists the three nodes; both sides start on the first.
    let agent = fleet.start_agent("h1");
    let orch = Orchestrator::connect(&fleet.orchestrator_config())
        .await
        .unwrap();
    let warm = orch
        .request(ping_spec("h1", Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(warm.summary.ok, 1, "{:?}", warm.results);

    // Calls go on, one after another, while the node both are connected to stops.
    let orch = std::sync::Arc::new(orch);
    let o = orch.clone();
    let traffic = tokio::spawn(async move {
        let mut results = Vec::new();
        for _ in 0..30 {
            let t = Instant::now();
            let r = o
                .request(ping_spec("h1", Duration::from_secs(30)))
                .await
                .unwrap();
            let why = r
                .results
                .iter()
                .filter_map(|h| h.message.clone())
                .collect::<Vec<_>>();
            results.push((r.summary.ok, t.elapsed(), why));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        results
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let stopped = Instant::now();
    cluster.nodes[0].stop();
    let traffic = traffic.await.unwrap();
    let lost = traffic.iter().filter(|(ok, _, _)| *ok != 1).count();
    let slowest = traffic.iter().map(|(_, d, _)| *d).max().unwrap_or_default();
    assert_eq!(lost, 0, "requests lost during the failover: {traffic:?}");
    assert!(orch.reconnects() >= 1, "the orchestrator never failed over");
    assert!(
        agent.log_text().contains("reconnected to the broker"),
        "the agent never failed over"
    );

    // The node comes back and rejoins; traffic still flows.
    cluster.nodes[0].boot();
    let back = orch
        .request(ping_spec("h1", Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(back.summary.ok, 1, "{:?}", back.results);
    observe(
        "agent_fails_over_when_its_cluster_node_stops",
        "3-node cluster, quorum queues; the node the agent and orchestrator used stopped mid-traffic, then started",
        json!({"cluster_formed_ms": formed.as_millis() as u64,
               "calls": traffic.len(), "lost": lost,
               "slowest_call_ms": slowest.as_millis() as u64,
               "orchestrator_reconnects": orch.reconnects(),
               "node_stopped_for_ms": stopped.elapsed().as_millis() as u64}),
    );
}
