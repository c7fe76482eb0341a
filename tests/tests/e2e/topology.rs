//! The broker topology an agent declares (docs/DESIGN.md, Broker topology), declared by
//! a test itself — for a host queue no agent serves, or with quorum queues — from the
//! names and arguments the agent and the orchestrator use, never copies of them.

use gearmq_agent::session::{
    DEAD_EXCHANGE, DEAD_QUEUE, REPLIES_EXCHANGE, REQUESTS_EXCHANGE, dead_queue_arguments,
    host_queue, host_queue_arguments,
};
use gearmq_schemas::Name;
use lapin::ExchangeKind;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};

/// The queue type of the declared queues.
#[derive(Clone, Copy)]
pub enum QueueType {
    /// What an agent declares.
    Classic,
    /// What `gearmq broker provision --queue-type quorum` makes.
    Quorum,
}

/// Declares the exchanges, the dead-letter queue, the events exchange and stream, and
/// each of `hosts`' queues with its bindings (`host.<name>` and `all`), as an agent
/// does, on the vhost at `url`.
pub async fn declare_topology(url: &str, hosts: &[&str], queue_type: QueueType) {
    let conn = gearmq_testkit::raw::connect(url).await;
    let ch = conn.create_channel().await.unwrap();
    for (ex, kind) in [
        (REQUESTS_EXCHANGE, ExchangeKind::Topic),
        (REPLIES_EXCHANGE, ExchangeKind::Topic),
        (DEAD_EXCHANGE, ExchangeKind::Fanout),
    ] {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare(ex.into(), kind, durable, FieldTable::default())
            .await
            .unwrap_or_else(|e| panic!("declare {ex}: {e}"));
    }
    let typed = |mut args: FieldTable| {
        if let QueueType::Quorum = queue_type {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        args
    };
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let mut bindings = vec![(DEAD_QUEUE.to_string(), DEAD_EXCHANGE, String::new())];
    ch.queue_declare(DEAD_QUEUE.into(), durable, typed(dead_queue_arguments()))
        .await
        .unwrap_or_else(|e| panic!("declare {DEAD_QUEUE}: {e}"));
    for h in hosts {
        let q = host_queue(&Name::new(*h).unwrap());
        ch.queue_declare(q.as_str().into(), durable, typed(host_queue_arguments()))
            .await
            .unwrap_or_else(|e| panic!("declare {q}: {e}"));
        bindings.push((q.clone(), REQUESTS_EXCHANGE, format!("host.{h}")));
        bindings.push((q, REQUESTS_EXCHANGE, "all".to_string()));
    }
    // The events exchange and stream, by the code the agent declares them with.
    gearmq_io::topology::declare_events(&ch, false, std::time::Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("declare the events exchange and stream: {e}"));
    for (q, ex, key) in bindings {
        let args = FieldTable::default();
        ch.queue_bind(
            q.as_str().into(),
            ex.into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            args,
        )
        .await
        .unwrap_or_else(|e| panic!("bind {q} to {ex} with {key:?}: {e}"));
    }
    let _ = conn.close(200, "done".into()).await;
}
