//! The raw AMQP baseline: the same request/reply shapes over plain lapin, with no
//! signing, verification, audit log or replay store.

use super::CALL_TIMEOUT;
use anyhow::{Context, Result};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{Semaphore, oneshot};

/// Which raw baseline: the transport's limit, or the same durability as gearmq.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum RawMode {
    /// Durable queues with the host queues' arguments, persistent messages, publisher
    /// confirms on both sides, manual acks: what gearmq's requests and replies get.
    Durable,
    /// Non-durable queues without arguments, transient messages, no confirms, no acks:
    /// what the broker can do at most.
    Transient,
}

impl RawMode {
    fn requests(self) -> &'static str {
        match self {
            RawMode::Durable => "bench.raw.requests",
            RawMode::Transient => "bench.raw.t.requests",
        }
    }

    fn replies(self) -> &'static str {
        match self {
            RawMode::Durable => "bench.raw.replies",
            RawMode::Transient => "bench.raw.t.replies",
        }
    }

    fn queue(self, i: usize) -> String {
        match self {
            RawMode::Durable => format!("bench.raw.{i:05}"),
            RawMode::Transient => format!("bench.raw.t.{i:05}"),
        }
    }

    fn durable(self) -> bool {
        self == RawMode::Durable
    }

    /// Its name in the table and the JSON report.
    pub(crate) fn name(self) -> &'static str {
        match self {
            RawMode::Durable => "durable",
            RawMode::Transient => "transient",
        }
    }
}

/// The orchestrator side of the raw baseline: publishes requests (persistent with
/// confirms, or transient without) and waits for replies on an exclusive queue,
/// matched by correlation id.
pub(super) struct RawClient {
    mode: RawMode,
    _conn: Connection,
    channel: Channel,
    reply_queue: String,
    payload: Vec<u8>,
    waiting: Waiting,
    next: std::sync::atomic::AtomicU64,
}

/// Raw calls in flight: replies still awaited, and who to tell when none are left.
type Waiting = Arc<Mutex<HashMap<u64, (usize, Option<oneshot::Sender<()>>)>>>;

impl RawClient {
    pub(super) async fn connect(
        url: &str,
        request_bytes: usize,
        mode: RawMode,
    ) -> Result<RawClient> {
        let conn = Connection::connect(url, ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        if mode.durable() {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
        }
        let consume = conn.create_channel().await?;
        let reply_queue = format!("bench.raw.reply.{:08x}", rand::random::<u32>());
        // The same shape as an orchestrator's reply queue.
        gearmq_io::topology::declare_reply_queue(
            &consume,
            &reply_queue,
            mode.replies(),
            100_000,
            CALL_TIMEOUT,
        )
        .await?;
        let mut consumer = consume
            .basic_consume(
                reply_queue.as_str().into(),
                "bench-raw-client".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let waiting: Waiting = Arc::new(Mutex::new(HashMap::new()));
        let w = waiting.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let Some(id) = d
                    .properties
                    .correlation_id()
                    .as_ref()
                    .and_then(|c| c.as_str().parse::<u64>().ok())
                else {
                    continue;
                };
                let mut map = w.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((left, tx)) = map.get_mut(&id) {
                    *left = left.saturating_sub(1);
                    if *left == 0 {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(());
                        }
                        map.remove(&id);
                    }
                }
            }
        });
        Ok(RawClient {
            mode,
            _conn: conn,
            channel,
            reply_queue,
            payload: vec![0x5a; request_bytes],
            waiting,
            next: std::sync::atomic::AtomicU64::new(1),
        })
    }

    /// One request to each of the first `n` raw queues; returns when all `n` replied.
    pub(super) async fn fan_out(&self, n: usize) -> Result<()> {
        self.call(n, false).await
    }

    /// One request published once on the `all` key, which every one of the responder's
    /// `n` queues is bound to; returns when all `n` replied.
    pub(super) async fn fan_out_once(&self, n: usize) -> Result<()> {
        self.call(n, true).await
    }

    async fn call(&self, n: usize, once: bool) -> Result<()> {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (n, Some(tx)));
        let props = BasicProperties::default()
            .with_delivery_mode(if self.mode.durable() { 2 } else { 1 })
            .with_correlation_id(id.to_string().into())
            .with_reply_to(self.reply_queue.as_str().into());
        let mut confirms = Vec::with_capacity(n);
        let keys: Vec<String> = if once {
            vec![RAW_ALL.to_string()]
        } else {
            (0..n).map(raw_key).collect()
        };
        for key in keys {
            let c = self
                .channel
                .basic_publish(
                    self.mode.requests().into(),
                    key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: self.mode.durable(),
                        ..Default::default()
                    },
                    &self.payload,
                    props.clone(),
                )
                .await?;
            confirms.push(c);
        }
        // Without confirm mode each resolves at once (not requested).
        for c in confirms {
            c.await?;
        }
        tokio::time::timeout(CALL_TIMEOUT, rx)
            .await
            .context("raw baseline: replies missing")?
            .context("raw baseline: reply consumer stopped")?;
        Ok(())
    }
}

pub(super) async fn raw_throughput(
    raw: &Arc<RawClient>,
    count: usize,
    in_flight: usize,
) -> Result<f64> {
    let gate = Arc::new(Semaphore::new(in_flight));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let permit = gate.clone().acquire_owned().await?;
        let raw = raw.clone();
        tasks.push(tokio::spawn(async move {
            let r = raw.fan_out(1).await;
            drop(permit);
            r
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The key every raw queue is also bound to (as every host queue is to `all`).
const RAW_ALL: &str = "all";

fn raw_key(i: usize) -> String {
    format!("raw.{i:05}")
}

/// `gearmq-bench run --serve-raw N --raw-mode MODE`: the raw baseline's responder.
/// Durable: N durable queues with the host queues' arguments, prefetch 32 each (the
/// agent's default), manual acks; a reply of the gearmq reply's size published with a
/// confirm before the ack. Transient: N non-durable queues, no acks, no confirms.
pub(super) async fn serve_raw(
    url: &str,
    n: usize,
    reply_bytes: usize,
    mode: RawMode,
) -> Result<()> {
    let reply_payload = Arc::new(vec![0xa5u8; reply_bytes]);
    let per_conn = 250;
    let mut conns = Vec::new();
    let mut started = 0;
    for chunk_start in (0..n).step_by(per_conn) {
        let conn = Connection::connect(url, ConnectionProperties::default()).await?;
        let consume = conn.create_channel().await?;
        let publish = conn.create_channel().await?;
        if mode.durable() {
            publish
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
        }
        for ex in [mode.requests(), mode.replies()] {
            consume
                .exchange_declare(
                    ex.into(),
                    lapin::ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        durable: mode.durable(),
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
        }
        for i in chunk_start..(chunk_start + per_conn).min(n) {
            let queue = mode.queue(i);
            // Durable: the same arguments as a host queue.
            let args = if mode.durable() {
                gearmq_io::topology::host_queue_arguments()
            } else {
                FieldTable::default()
            };
            consume
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        durable: mode.durable(),
                        ..Default::default()
                    },
                    args,
                )
                .await?;
            for key in [raw_key(i), RAW_ALL.to_string()] {
                consume
                    .queue_bind(
                        queue.as_str().into(),
                        mode.requests().into(),
                        key.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
            }
            consume.basic_qos(32, BasicQosOptions::default()).await?;
            let mut consumer = consume
                .basic_consume(
                    queue.as_str().into(),
                    ShortString::from(format!("raw-{i}")),
                    BasicConsumeOptions {
                        no_ack: !mode.durable(),
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            let publish = publish.clone();
            let payload = reply_payload.clone();
            tokio::spawn(async move {
                while let Some(Ok(d)) = consumer.next().await {
                    let publish = publish.clone();
                    let payload = payload.clone();
                    tokio::spawn(async move {
                        let Some(reply_to) = d.properties.reply_to().clone() else {
                            return;
                        };
                        let mut props = BasicProperties::default();
                        if let Some(c) = d.properties.correlation_id() {
                            props = props.with_correlation_id(c.clone());
                        }
                        let confirm = publish
                            .basic_publish(
                                mode.replies().into(),
                                reply_to.as_str().into(),
                                BasicPublishOptions {
                                    mandatory: mode.durable(),
                                    ..Default::default()
                                },
                                &payload,
                                props,
                            )
                            .await;
                        if let Ok(c) = confirm {
                            let _ = c.await;
                        }
                        if mode.durable() {
                            let _ = d.acker.ack(BasicAckOptions::default()).await;
                        }
                    });
                }
            });
            started += 1;
        }
        conns.push(conn);
    }
    eprintln!("raw responder ready: {started} {} queues", mode.name());
    let _ = std::io::stderr().flush();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop(conns);
    Ok(())
}
