//! The orchestrator's link to the broker: one connection with a publishing channel (in
//! confirm mode) and this process's reply queue, kept up by a supervisor task.
//!
//! When the connection breaks (broker restart, node stopped, connection closed by an
//! operator) the supervisor reconnects over the configured URLs in turn, starting with
//! the one after the URL that broke, with capped exponential backoff and jitter. It
//! declares the same reply queue again and republishes the byte-identical request of
//! every call still in flight: agents answer a request id once and resend the stored
//! reply for a redelivery, so nothing runs twice and replies lost in the gap come back.
//! Calls never hang on the link: each waits for it only until its own deadline.

use crate::client::OrchestratorError;
use crate::config::BrokerConfig;
use futures_util::future::BoxFuture;
use gearmq_io::broker::{backoff_delay, redact_url};
use gearmq_io::topology::{self, REPLIES_EXCHANGE, REQUESTS_EXCHANGE};
use gearmq_schemas::Name;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    ExchangeKind,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long one connection attempt to one URL may take.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);
/// How long closing waits for the supervisor to close the connection.
const CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// A request still waiting for replies, as it was published.
#[derive(Debug, Clone)]
pub(crate) struct InFlight {
    /// The signed request bytes.
    pub bytes: Arc<Vec<u8>>,
    /// Its AMQP properties.
    pub props: BasicProperties,
    /// The routing keys it went to.
    pub routes: Vec<String>,
}

/// What became of a request published to one route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Published {
    /// Confirmed and routed to a queue.
    Delivered,
    /// Confirmed, but no queue is bound for the route.
    Unroutable,
    /// Nacked by the broker until the deadline.
    Refused,
    /// The link broke while publishing: the reconnect republishes it.
    Pending,
    /// The broker was unreachable until the deadline.
    Unreachable,
}

/// Calls in flight, by request id (republished after a reconnect).
pub(crate) type InFlightMap = Arc<Mutex<HashMap<Uuid, InFlight>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Critical sections are single map operations; a poisoned map is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the link needs to (re)connect.
#[derive(Debug, Clone)]
pub(crate) struct LinkSettings {
    /// URLs, TLS files, reply queue bound and backoff.
    pub broker: BrokerConfig,
    /// The operator (for the connection name).
    pub name: Name,
    /// This process's reply queue.
    pub reply_queue: String,
    /// The reply consumer's tag.
    pub consumer_tag: String,
}

/// Takes a reply consumer and runs until it ends (the connection broke).
pub(crate) type ReplyTaker = Arc<dyn Fn(Consumer) -> BoxFuture<'static, ()> + Send + Sync>;

/// A broker link kept up by a supervisor task.
pub(crate) struct Link {
    live: watch::Receiver<Option<Channel>>,
    url: Arc<Mutex<String>>,
    broken: Arc<Notify>,
    stop: CancellationToken,
    reconnects: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

struct Established {
    connection: Connection,
    channel: Channel,
    consumer: Consumer,
    index: usize,
}

impl Link {
    /// Connects to the first reachable URL (in order), declares the reply queue and
    /// starts `take_replies` on it; from then on keeps the link up.
    pub async fn open(
        settings: LinkSettings,
        take_replies: ReplyTaker,
        in_flight: InFlightMap,
    ) -> Result<Link, OrchestratorError> {
        let first = establish(&settings, 0, true).await?;
        let url = Arc::new(Mutex::new(settings.broker.urls[first.index].clone()));
        let (tx, live) = watch::channel(Some(first.channel.clone()));
        let broken = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let reconnects = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(supervise(
            Supervisor {
                settings,
                take_replies,
                in_flight,
                tx,
                url: url.clone(),
                broken: broken.clone(),
                stop: stop.clone(),
                reconnects: reconnects.clone(),
            },
            first,
        ));
        Ok(Link {
            live,
            url,
            broken,
            stop,
            reconnects,
            task,
        })
    }

    /// The URL connected to now (or last).
    pub fn url(&self) -> String {
        lock(&self.url).clone()
    }

    /// How many times the link was re-established.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// The publishing channel, waiting for a reconnect until `deadline` if the link is
    /// down; `None` if it is still down then.
    pub async fn channel(&self, deadline: Instant) -> Option<Channel> {
        let mut live = self.live.clone();
        let wait = live.wait_for(|c| c.as_ref().is_some_and(|c| c.status().connected()));
        match tokio::time::timeout_at(deadline.into(), wait).await {
            Ok(Ok(c)) => c.clone(),
            _ => None,
        }
    }

    /// Publishes `bytes` to each of `routes` (mandatory, confirmed) and returns what
    /// became of each, in order. A route the broker nacks (say a quorum queue between
    /// leaders while a node stops) is published again with backoff until `deadline`;
    /// a failed publish breaks the link, and the reconnect republishes every call in
    /// flight, so such a route is [`Published::Pending`].
    pub async fn publish(
        &self,
        routes: &[String],
        bytes: &[u8],
        props: &BasicProperties,
        deadline: Instant,
    ) -> Vec<Published> {
        let mut out = vec![Published::Unreachable; routes.len()];
        let mut todo: Vec<usize> = (0..routes.len()).collect();
        let mut attempt = 0u32;
        while !todo.is_empty() {
            let Some(channel) = self.channel(deadline).await else {
                return out;
            };
            let mut confirms = Vec::with_capacity(todo.len());
            for &i in &todo {
                let c = channel
                    .basic_publish(
                        REQUESTS_EXCHANGE.into(),
                        routes[i].as_str().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        bytes,
                        props.clone(),
                    )
                    .await;
                confirms.push((i, c));
            }
            let mut again = Vec::new();
            let mut broken = false;
            for (i, c) in confirms {
                let outcome = match c {
                    Ok(pc) => pc.await,
                    Err(e) => Err(e),
                };
                out[i] = match outcome {
                    Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => {
                        Published::Delivered
                    }
                    Ok(Confirmation::Ack(Some(_))) => Published::Unroutable,
                    Ok(Confirmation::Nack(_)) => {
                        again.push(i);
                        Published::Refused
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, route = %routes[i], "publish failed; waiting for the broker link");
                        broken = true;
                        Published::Pending
                    }
                };
            }
            if broken {
                self.report_broken();
            }
            todo = again;
            if todo.is_empty() {
                break;
            }
            let delay = backoff_delay(attempt, Duration::from_millis(50), Duration::from_secs(1));
            attempt = attempt.saturating_add(1);
            if Instant::now() + delay >= deadline {
                break;
            }
            tracing::debug!(
                routes = todo.len(),
                ?delay,
                "request nacked by the broker; publishing again"
            );
            tokio::time::sleep(delay).await;
        }
        out
    }

    /// Reports that publishing on the current channel failed: the supervisor drops the
    /// connection and reconnects (a channel closed by an error is not reused).
    pub fn report_broken(&self) {
        self.broken.notify_one();
    }

    /// Closes the connection and stops reconnecting.
    pub async fn close(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(CLOSE_LIMIT, self.task).await;
    }
}

struct Supervisor {
    settings: LinkSettings,
    take_replies: ReplyTaker,
    in_flight: InFlightMap,
    tx: watch::Sender<Option<Channel>>,
    url: Arc<Mutex<String>>,
    broken: Arc<Notify>,
    stop: CancellationToken,
    reconnects: Arc<AtomicU64>,
}

async fn supervise(s: Supervisor, mut link: Established) {
    loop {
        s.tx.send_replace(Some(link.channel.clone()));
        let why = tokio::select! {
            _ = s.stop.cancelled() => {
                s.tx.send_replace(None);
                let _ = tokio::time::timeout(CLOSE_LIMIT, link.connection.close(200, "bye".into())).await;
                return;
            }
            _ = (s.take_replies)(link.consumer) => "the reply consumer ended",
            _ = s.broken.notified() => "a publish failed",
        };
        s.tx.send_replace(None);
        let url = redact_url(&s.settings.broker.urls[link.index]);
        tracing::warn!(broker = %url, reason = why, "broker link lost; reconnecting");
        // The old connection may still be half open (a publish failed on it).
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            link.connection.close(320, "reconnecting".into()),
        )
        .await;
        let mut attempt = 0u32;
        let mut next = link.index.wrapping_add(1);
        link = loop {
            let delay = backoff_delay(
                attempt,
                s.settings.broker.reconnect_initial,
                s.settings.broker.reconnect_max,
            );
            tokio::select! {
                _ = s.stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            match establish(&s.settings, next, false).await {
                Ok(l) => break l,
                Err(e) => {
                    tracing::debug!(error = %e, attempt, "reconnect failed");
                    attempt = attempt.saturating_add(1);
                    next = next.wrapping_add(1);
                }
            }
        };
        *lock(&s.url) = s.settings.broker.urls[link.index].clone();
        s.reconnects.fetch_add(1, Ordering::Relaxed);
        tracing::info!(broker = %redact_url(&s.settings.broker.urls[link.index]), "reconnected to the broker");
        republish(&link.channel, &s.in_flight).await;
    }
}

/// Publishes every call in flight again (confirms are not awaited: a call ends at its
/// deadline whatever happens to them).
async fn republish(channel: &Channel, in_flight: &InFlightMap) {
    let calls: Vec<(Uuid, InFlight)> = lock(in_flight)
        .iter()
        .map(|(id, f)| (*id, f.clone()))
        .collect();
    for (id, f) in calls {
        for key in &f.routes {
            let r = channel
                .basic_publish(
                    REQUESTS_EXCHANGE.into(),
                    key.as_str().into(),
                    BasicPublishOptions::default(),
                    &f.bytes,
                    f.props.clone(),
                )
                .await;
            if let Err(e) = r {
                tracing::warn!(%id, route = %key, error = %e, "request not republished");
            }
        }
        tracing::debug!(%id, routes = f.routes.len(), "request republished after a reconnect");
    }
}

/// Connects to the URLs starting at `start` (each tried once, in turn), sets up the
/// publishing channel and the reply queue and starts consuming it.
async fn establish(
    s: &LinkSettings,
    start: usize,
    first: bool,
) -> Result<Established, OrchestratorError> {
    let urls = &s.broker.urls;
    let mut last = String::from("no URL configured");
    for i in 0..urls.len() {
        let index = (start + i) % urls.len();
        let url = &urls[index];
        let props = ConnectionProperties::default()
            .with_connection_name(format!("gearmq-orchestrator {}", s.name).into());
        let connection =
            match gearmq_io::broker::connect(url, &s.broker.files(), None, props, CONNECT_LIMIT)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(url = %redact_url(url), error = %e, "broker connect failed");
                    last = e;
                    continue;
                }
            };
        match set_up(s, &connection).await {
            Ok((channel, consumer)) => {
                return Ok(Established {
                    connection,
                    channel,
                    consumer,
                    index,
                });
            }
            // Broker refusals on a fresh connection (a missing exchange, a reply
            // queue still held by the old connection) are final on the first
            // connect and retried on a reconnect.
            Err(e) if first => return Err(e),
            Err(e) => {
                let _ = connection.close(200, "bye".into()).await;
                last = e.to_string();
            }
        }
    }
    Err(OrchestratorError::Connect {
        urls: urls
            .iter()
            .map(|u| redact_url(u))
            .collect::<Vec<_>>()
            .join(", "),
        reason: last,
    })
}

/// Most replies delivered to this process and not yet judged and acked.
pub const REPLY_PREFETCH: u16 = 256;

async fn set_up(
    s: &LinkSettings,
    connection: &Connection,
) -> Result<(Channel, Consumer), OrchestratorError> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    if !s.broker.provisioned {
        for ex in [REQUESTS_EXCHANGE, REPLIES_EXCHANGE] {
            channel
                .exchange_declare(
                    ex.into(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
        }
    }
    let consume_channel = connection.create_channel().await?;
    // Replies are acked once judged, at most REPLY_PREFETCH unacked: the rest wait in
    // the broker, where the queue's length limit refuses a flood (reject-publish), so
    // this process holds a bounded number of messages whatever is sent to it.
    consume_channel
        .basic_qos(REPLY_PREFETCH, BasicQosOptions::default())
        .await?;
    topology::declare_reply_queue(
        &consume_channel,
        &s.reply_queue,
        REPLIES_EXCHANGE,
        s.broker.reply_queue_max_length(),
        CONNECT_LIMIT,
    )
    .await?;
    let consumer = consume_channel
        .basic_consume(
            s.reply_queue.as_str().into(),
            ShortString::from(s.consumer_tag.clone()),
            BasicConsumeOptions {
                no_ack: false,
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}
