//! The signed events this host publishes of itself (PROTOCOL.md, "Events"): `started`
//! once the agent first reaches the broker, `alive` every interval, `stopping` on a
//! clean shutdown, and `unit` when a unit it watches failed, exited or was restarted
//! by systemd ([`crate::unit_watch`]).
//!
//! Every event carries this agent run's random boot id and a sequence number that
//! rises by one per event, so a receiver takes each once and in order. Events are
//! best effort: they go out on a channel of their own (a broker refusing one never
//! touches the replies' channel), transient, and one that cannot be published is
//! counted and, for unit events, tried once more on the next session.

use crate::session::{EventPublisher, Published};
use gearmq_schemas::event::{Event, What, event_route};
use gearmq_schemas::time::{Millis, duration_ms, now_ms};
use gearmq_schemas::units::{
    MANAGED_PREFIX, SERVICE_SUFFIX, UnitName, check_unit_name, unit_file_name,
};
use gearmq_schemas::{Name, Signed, SigningKey};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Most unit events waiting to be published; more are dropped and counted.
pub const UNIT_QUEUE: usize = 256;
/// Most unit events kept for the next session after a publish failed.
const RETRY_KEPT: usize = 64;
/// How long `stopping` may take to publish on shutdown.
const STOPPING_LIMIT: Duration = Duration::from_secs(3);

/// Counters of published and lost events.
#[derive(Debug, Default)]
pub struct EventCounts {
    /// Confirmed by the broker.
    pub published: AtomicU64,
    /// Refused by the broker (nack) or unpublishable (the channel closed).
    pub failed: AtomicU64,
    /// Unit events dropped because the queue was full.
    pub dropped: AtomicU64,
}

/// What the agent needs to sign its events.
pub struct EventIdentity {
    /// This host.
    pub host: Name,
    /// The host key.
    pub key: SigningKey,
    /// The host credential, encoded.
    pub credential: Vec<u8>,
    /// The credential's labels (sent in `started`).
    pub labels: BTreeMap<String, String>,
    /// When the credential expires (sent in `started`).
    pub not_after: Millis,
}

/// The source of this agent run's events.
pub struct EventSource {
    id: EventIdentity,
    boot: [u8; 16],
    seq: AtomicU64,
    interval: Duration,
    started: AtomicBool,
    units_tx: mpsc::Sender<What>,
    units_rx: tokio::sync::Mutex<mpsc::Receiver<What>>,
    retry: Mutex<VecDeque<What>>,
    counts: EventCounts,
}

impl std::fmt::Debug for EventSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSource")
            .field("host", &self.id.host)
            .field("boot", &hex::encode(self.boot))
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl EventSource {
    /// A source for `id` sending `alive` every `interval`, with a fresh boot id.
    pub fn new(id: EventIdentity, interval: Duration) -> Self {
        let (units_tx, units_rx) = mpsc::channel(UNIT_QUEUE);
        EventSource {
            id,
            boot: rand::random(),
            seq: AtomicU64::new(0),
            interval,
            started: AtomicBool::new(false),
            units_tx,
            units_rx: tokio::sync::Mutex::new(units_rx),
            retry: Mutex::new(VecDeque::new()),
            counts: EventCounts::default(),
        }
    }

    /// This run's boot id.
    pub fn boot(&self) -> [u8; 16] {
        self.boot
    }

    /// The counters.
    pub fn counts(&self) -> &EventCounts {
        &self.counts
    }

    /// Queues a unit event (`What::Unit`); dropped and counted when the queue is full.
    pub fn unit_event(&self, what: What) {
        if self.units_tx.try_send(what).is_err() {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            debug!("unit event dropped: the queue is full");
        }
    }

    /// Signs `what` as the next event of this boot: its routing key and bytes.
    pub fn sign(&self, what: What) -> (String, Vec<u8>) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let route = event_route(&self.id.host, &what);
        let event = Event::new(self.id.host.clone(), self.boot, seq, now_ms(), what);
        (
            route,
            Signed::seal(&event, &self.id.key, &self.id.credential),
        )
    }

    fn presence(&self) -> What {
        let agent_version = env!("CARGO_PKG_VERSION").to_string();
        let interval_ms = duration_ms(self.interval);
        if self.started.swap(true, Ordering::Relaxed) {
            What::Alive {
                agent_version,
                interval_ms,
            }
        } else {
            What::Started {
                agent_version,
                labels: self.id.labels.clone(),
                credential_not_after: self.id.not_after,
                interval_ms,
            }
        }
    }

    /// Publishes `what`; false once the channel is unusable for this session.
    async fn publish(&self, publisher: &EventPublisher, what: What) -> bool {
        let name = what.name();
        let unit = matches!(what, What::Unit { .. }).then(|| what.clone());
        let (route, bytes) = self.sign(what);
        let outcome = publisher.publish(&route, &bytes).await;
        match outcome {
            Ok(Published::Delivered | Published::Unroutable) => {
                self.counts.published.fetch_add(1, Ordering::Relaxed);
                debug!(event = name, route, "event published");
                true
            }
            Ok(Published::Refused) => {
                self.counts.failed.fetch_add(1, Ordering::Relaxed);
                warn!(event = name, route, "the broker refused an event (nack)");
                true
            }
            Err(e) => {
                self.counts.failed.fetch_add(1, Ordering::Relaxed);
                if let Some(u) = unit {
                    let mut retry = self.retry.lock().unwrap_or_else(|p| p.into_inner());
                    if retry.len() < RETRY_KEPT {
                        retry.push_back(u);
                    }
                }
                warn!(event = name, route, error = %e,
                    "an event could not be published; events stop until the next broker session");
                false
            }
        }
    }

    /// Publishes this session's events on `publisher` until `session_end` or `shutdown` is cancelled:
    /// `started` (the first time) or `alive` at once, then `alive` every interval and
    /// unit events as they come; on `shutdown`, `stopping` last.
    pub async fn run(
        &self,
        publisher: EventPublisher,
        session_end: CancellationToken,
        shutdown: CancellationToken,
    ) {
        if !self.publish(&publisher, self.presence()).await {
            return;
        }
        let kept: Vec<What> = self
            .retry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for what in kept {
            if !self.publish(&publisher, what).await {
                return;
            }
        }
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut units = self.units_rx.lock().await;
        loop {
            let ok = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    let stopping = self.publish(&publisher, What::Stopping {});
                    if tokio::time::timeout(STOPPING_LIMIT, stopping).await.is_err() {
                        warn!("the stopping event was not confirmed in time");
                    } else {
                        info!("stopping event published");
                    }
                    return;
                }
                _ = session_end.cancelled() => return,
                Some(what) = units.recv() => self.publish(&publisher, what).await,
                _ = tick.tick() => {
                    let alive = self.presence();
                    self.publish(&publisher, alive).await
                }
            };
            if !ok {
                return;
            }
        }
    }
}

/// The patterns of the units whose state the unit watcher reads at each connection:
/// gearmq's own (`gearmq-*.service`) and the `[[existing]]` allowlist's.
pub fn watched_patterns(existing: &crate::config::Allowlist) -> Vec<String> {
    let mut patterns = vec![format!("{MANAGED_PREFIX}*{SERVICE_SUFFIX}")];
    patterns.extend(existing.patterns());
    patterns
}

/// Which systemd units become unit events, and under what name: `gearmq-web.service`
/// as `web` while its file is in `unit_dir` (a `gearmq-` unit another agent or a person
/// made elsewhere is not this agent's), and an allowlisted existing unit by its full
/// name. Every other unit is ignored.
pub fn unit_filter(
    unit_dir: std::path::PathBuf,
    existing: crate::config::Allowlist,
) -> crate::unit_watch::UnitFilter {
    std::sync::Arc::new(move |systemd_name: &str| {
        if let Some(short) = systemd_name
            .strip_prefix(MANAGED_PREFIX)
            .and_then(|s| s.strip_suffix(SERVICE_SUFFIX))
        {
            if check_unit_name(short).is_err() {
                return None;
            }
            let file = unit_dir.join(unit_file_name(short));
            return std::fs::symlink_metadata(file)
                .is_ok()
                .then(|| short.to_string());
        }
        (existing.names(systemd_name) && UnitName::parse(systemd_name).is_ok())
            .then(|| systemd_name.to_string())
    })
}

/// Turns what the watcher saw into unit events until the watcher is gone.
pub async fn forward_unit_changes(
    source: std::sync::Arc<EventSource>,
    mut seen: mpsc::Receiver<crate::unit_watch::UnitChangeSeen>,
) {
    while let Some(c) = seen.recv().await {
        info!(unit = %c.unit, change = ?c.change, result = %c.result, restarts = c.restarts,
            "unit changed on its own");
        source.unit_event(What::Unit {
            unit: c.unit,
            change: c.change,
            active_state: c.active_state,
            sub_state: c.sub_state,
            result: c.result,
            restarts: c.restarts,
        });
    }
}
