//! The agent's main loop: open a broker session, consume, hand each delivery to a
//! handler task (at most `prefetch` at once), reconnect with capped exponential backoff
//! and jitter when the session breaks, and drain in-flight work on shutdown.

use crate::events::EventSource;
use crate::handler::Handler;
use crate::session::{Endpoint, Session, host_queue};
use futures_util::StreamExt;
use gearmq_io::broker::backoff_delay;
use gearmq_schemas::Name;
use lapin::Consumer;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// A session that lasted this long resets the backoff; one that broke sooner (say a
/// reply the broker refuses every time) keeps backing off.
const STABLE_SESSION: Duration = Duration::from_secs(30);
/// How long shutdown waits for log streams to send their final reply.
const STREAM_DRAIN: Duration = Duration::from_secs(5);
/// How long shutdown waits for the `stopping` event's confirm.
const EVENTS_DRAIN: Duration = Duration::from_secs(4);

/// Settings of the main loop.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// This host.
    pub host: Name,
    /// Brokers, tried round robin.
    pub endpoints: Vec<Endpoint>,
    /// Whether the topology is provisioned (passive declares only).
    pub provisioned: bool,
    /// QoS prefetch and most concurrent handlers.
    pub prefetch: u16,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// First delay before reconnecting (doubling, with jitter, up to `reconnect_max`).
    pub reconnect_initial: Duration,
    /// Longest delay between reconnect attempts.
    pub reconnect_max: Duration,
}

/// Runs the agent until `shutdown` is cancelled.
#[derive(Debug)]
pub struct Server {
    handler: Arc<Handler>,
    settings: ServerSettings,
    events: Option<Arc<EventSource>>,
}

enum SessionEnd {
    Shutdown,
    Lost(String),
}

impl Server {
    /// A server handing deliveries to `handler`.
    pub fn new(handler: Arc<Handler>, settings: ServerSettings) -> Self {
        Server {
            handler,
            settings,
            events: None,
        }
    }

    /// Publishes `events` on every session (started, alive, unit events, stopping).
    pub fn with_events(mut self, events: Arc<EventSource>) -> Self {
        self.events = Some(events);
        self
    }

    /// Connects, serves and reconnects until `shutdown`; then drains and closes.
    pub async fn run(&self, shutdown: CancellationToken) {
        let endpoints = &self.settings.endpoints;
        let mut next = 0usize;
        let mut attempt = 0u32;
        let mut ready_once = false;
        while !endpoints.is_empty() {
            let endpoint = &endpoints[next % endpoints.len()];
            next = next.wrapping_add(1);
            let opened = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                r = self.open(endpoint) => r,
            };
            match opened {
                Ok((session, consumer)) => {
                    let since = tokio::time::Instant::now();
                    self.handler.stats().broker_connected();
                    if ready_once {
                        self.handler.stats().reconnected();
                        info!(broker = endpoint.redacted(), "reconnected to the broker");
                    } else {
                        ready_once = true;
                        info!(
                            host = %self.settings.host,
                            queue = %host_queue(&self.settings.host),
                            broker = endpoint.redacted(),
                            "agent ready"
                        );
                    }
                    let end = self.serve(&session, consumer, &shutdown).await;
                    self.handler.stats().broker_disconnected();
                    match end {
                        SessionEnd::Shutdown => return,
                        SessionEnd::Lost(why) => {
                            warn!(broker = endpoint.redacted(), error = %why, "broker session lost; reconnecting");
                            session.close().await;
                            if since.elapsed() >= STABLE_SESSION {
                                attempt = 0;
                            }
                        }
                    }
                }
                Err(e) => {
                    self.handler.stats().connect_failed();
                    warn!(broker = endpoint.redacted(), error = %e, "cannot open a broker session");
                }
            }
            let delay = backoff_delay(
                attempt,
                self.settings.reconnect_initial,
                self.settings.reconnect_max,
            );
            attempt = attempt.saturating_add(1);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn open(
        &self,
        endpoint: &Endpoint,
    ) -> Result<(Session, Consumer), crate::session::SessionError> {
        let s = &self.settings;
        let session = Session::open(endpoint, &s.host, s.prefetch).await?;
        session.declare_topology(&s.host, s.provisioned).await?;
        let consumer = session.consume(&s.host).await?;
        Ok((session, consumer))
    }

    async fn serve(
        &self,
        session: &Session,
        mut consumer: Consumer,
        shutdown: &CancellationToken,
    ) -> SessionEnd {
        let publisher = session.publisher();
        self.handler.session_started(&publisher);
        // Events go out on a channel of their own for as long as the session lasts.
        let session_end = CancellationToken::new();
        let mut events = None;
        if let Some(ev) = self.events.clone() {
            match session.event_publisher().await {
                Ok(p) => {
                    let (end, shutdown) = (session_end.clone(), shutdown.clone());
                    events = Some(tokio::spawn(async move { ev.run(p, end, shutdown).await }));
                }
                Err(e) => {
                    warn!(error = %e, "cannot open the events channel; no events this session")
                }
            }
        }
        let permits = Arc::new(Semaphore::new(usize::from(self.settings.prefetch)));
        let mut tasks = JoinSet::new();
        let end = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break SessionEnd::Shutdown,
                _ = session.broken().cancelled() => {
                    break SessionEnd::Lost("a reply could not be published".into())
                }
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = joined {
                        error!(error = %e, "a request handler failed");
                    }
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        // QoS keeps unacked deliveries at `prefetch`, so a permit is
                        // free except in the instant between an ack and its task's end.
                        let Ok(permit) = permits.clone().acquire_owned().await else {
                            break SessionEnd::Lost("handler permits closed".into());
                        };
                        let handler = self.handler.clone();
                        let publisher = publisher.clone();
                        tasks.spawn(async move {
                            handler.handle(delivery, &publisher).await;
                            drop(permit);
                        });
                    }
                    Some(Err(e)) => break SessionEnd::Lost(e.to_string()),
                    None => break SessionEnd::Lost("the broker cancelled the consumer".into()),
                },
            }
        };
        match &end {
            SessionEnd::Shutdown => {
                info!(in_flight = tasks.len(), "shutting down: no new requests");
                if let Err(e) = session.cancel(&consumer).await {
                    warn!(error = %e, "basic.cancel failed");
                }
                let drained = tokio::time::timeout(self.settings.drain_timeout, async {
                    while tasks.join_next().await.is_some() {}
                })
                .await;
                if drained.is_err() {
                    warn!(
                        abandoned = tasks.len(),
                        "in-flight requests did not finish in time; the broker will redeliver them"
                    );
                    tasks.abort_all();
                }
                // Streams send their final reply while the session is still open.
                let streams = &self.handler.services().streams;
                if !streams.is_empty() {
                    info!(streams = streams.len(), "ending log streams");
                }
                if !streams.shut_down(STREAM_DRAIN).await {
                    warn!("log streams did not end in time");
                }
                // `stopping` went out when shutdown began; wait for its confirm.
                if let Some(task) = events
                    && tokio::time::timeout(EVENTS_DRAIN, task).await.is_err()
                {
                    warn!("the events task did not end in time");
                }
                session_end.cancel();
                session.close().await;
            }
            SessionEnd::Lost(_) => {
                session_end.cancel();
                // Their acks cannot reach the broker any more; let them finish (their
                // replies are recorded and resent on redelivery) without holding up
                // the reconnect.
                tasks.detach_all();
            }
        }
        end
    }
}
