//! The events stream as an orchestrator reads it: a connection of its own, the
//! `gearmq.events` stream read from a point in time (found by offset: see
//! [`Reader::locate`]) and then followed, every event judged ([`EventJudge`]) and
//! taken into the [`Presence`] view, accepted ones recorded in the audit log and
//! handed to the caller.
//!
//! When the connection breaks, the watch reconnects over the configured URLs with
//! backoff and resumes at the offset after the last event it read, so nothing the
//! stream still holds is missed. While it is away the presence view says "unknown
//! since"; if the stream dropped events in the meantime (its retention), the gap stays
//! unknown until the hosts are heard again.

use crate::audit::AuditSink;
use crate::client::OrchestratorError;
use crate::config::BrokerConfig;
use crate::events::{EventJudge, EventRejection, HostPresence, Presence, Taken, VerifiedEvent};
use futures_util::StreamExt;
use gearmq_io::broker::{backoff_delay, redact_url};
use gearmq_io::topology::{self, EVENTS_STREAM};
use gearmq_schemas::audit::Entry;
use gearmq_schemas::envelope::open;
use gearmq_schemas::event::Event;
use gearmq_schemas::time::now_ms;
use gearmq_schemas::{Credential, CredentialVerifier, Name};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Connection, ConnectionProperties, Consumer};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// How long one connection attempt may take.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);
/// A history read has reached the stream's end once the reader has taken the last
/// offset the stream held: read by the look at its last chunk, which ends when nothing
/// new came for this long (a quiet stream, see `locate`), or told by a second consumer
/// started at its end (a busy one: see `probe_tail`). When neither could tell, once
/// nothing came for this long.
const SETTLE: Duration = Duration::from_millis(500);
/// Before the first event of a subscription: a busy broker can take longer than
/// [`SETTLE`] to start delivering a stream from an offset, and calling the read done
/// then would show every host unknown. An empty window costs this wait once.
const FIRST_DELIVERY_WAIT: Duration = Duration::from_secs(3);
/// Most events read from the broker and not yet acknowledged.
const STREAM_PREFETCH: u16 = 512;
/// Messages a look at one offset reads to find one that opens as an event. A look
/// that finds none steps further back, so a host flooding garbage between its events
/// can make a watch read more of what precedes its window; the more a look reads, the
/// denser the flood that takes.
const PEEK_MESSAGES: u16 = 64;
/// After a look's first message, how long the next may take (it is already read).
const PEEK_NEXT_WAIT: Duration = Duration::from_millis(200);
/// The look at the stream's last chunk reads it whole unless messages keep coming
/// for this long (a busy stream, whose end the tail probe tells).
const END_BURST_LIMIT: Duration = Duration::from_millis(500);
/// Most messages the look at the last chunk reads (a chunk is what the broker wrote at
/// once: one message on a quiet stream, hundreds after a burst).
const LAST_CHUNK_MESSAGES: usize = 4096;
/// Where a window begins is found to within this many messages (read and skipped).
const LOCATE_SLACK: i64 = 256;
/// Most verified events waiting for the caller.
const HANDED_QUEUE: usize = 4096;
/// [`WatchOptions::record_alive_every`] by default: the log then says each host was up
/// at least every five minutes, with one record where thirty come.
pub const DEFAULT_RECORD_ALIVE_EVERY: Duration = Duration::from_secs(300);

/// How to watch.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Read the events signed in this much time before now first (the presence view is
    /// then right at once); zero reads only what comes.
    pub since: Duration,
    /// Record accepted events in the audit log (when one is configured): every event
    /// that tells something new (a host's first, `started`, `stopping`, unit events,
    /// a new boot, an `alive` after silence) and routine `alive`s as
    /// [`WatchOptions::record_alive_every`] says.
    pub record: bool,
    /// Of the `alive` events that only repeat that a host is up, record at most one
    /// per host per this much of its signed time (zero: every one). Each host sends
    /// one per interval (10 s by default), so a watch of 10,000 hosts recording every
    /// one writes ~1,000 records a second.
    pub record_alive_every: Duration,
    /// Hand verified events to [`EventWatch::next`]; without it only the presence view
    /// and the counts are kept.
    pub yield_events: bool,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            since: Duration::from_secs(35),
            record: true,
            record_alive_every: DEFAULT_RECORD_ALIVE_EVERY,
            yield_events: true,
        }
    }
}

/// What the watch shares with its reader.
pub(crate) struct WatchInputs {
    pub broker: BrokerConfig,
    pub name: Name,
    pub inventory: BTreeSet<Name>,
    pub verifier: Arc<CredentialVerifier>,
    pub revoked: Arc<dyn Fn(&Credential) -> bool + Send + Sync>,
    pub audit: Option<AuditSink>,
    pub max_message_bytes: usize,
    pub skew: Duration,
}

struct State {
    judge: EventJudge,
    presence: Presence,
}

/// A running watch of the fleet's events ([`crate::Orchestrator::events`]).
pub struct EventWatch {
    state: Arc<Mutex<State>>,
    rx: Option<mpsc::Receiver<VerifiedEvent>>,
    caught_up: Arc<(AtomicBool, Notify)>,
    listening: Arc<AtomicBool>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Critical sections are map updates that cannot leave them half done.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EventWatch {
    /// Connects (to the first reachable URL; an error if none is) and starts reading.
    pub(crate) async fn start(
        inputs: WatchInputs,
        options: WatchOptions,
    ) -> Result<EventWatch, OrchestratorError> {
        let now = now_ms();
        let since_ms = gearmq_schemas::time::duration_ms(options.since);
        let heard_from = now.saturating_sub(since_ms);
        let state = Arc::new(Mutex::new(State {
            judge: EventJudge::new(
                inputs.inventory.clone(),
                inputs.broker.require_user_id(),
                gearmq_schemas::time::duration_ms(inputs.skew),
                heard_from,
            ),
            presence: Presence::new(inputs.inventory.clone(), heard_from),
        }));
        let first = connect(&inputs, 0, true).await?;
        let (tx, rx) = if options.yield_events {
            let (tx, rx) = mpsc::channel(HANDED_QUEUE);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let caught_up = Arc::new((AtomicBool::new(false), Notify::new()));
        let listening = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let reader = Reader {
            inputs,
            record: options.record,
            filter: RecordFilter::new(options.record_alive_every),
            state: state.clone(),
            tx,
            caught_up: caught_up.clone(),
            tail: Arc::new(AtomicI64::new(i64::MAX)),
            listening: listening.clone(),
            stop: stop.clone(),
            from: if options.since > Duration::ZERO {
                Start::Time(heard_from)
            } else {
                Start::Next
            },
            since_ms,
            lead: options.since > Duration::ZERO,
        };
        let task = tokio::spawn(reader.run(first));
        Ok(EventWatch {
            state,
            rx,
            caught_up,
            listening,
            stop,
            task,
        })
    }

    /// The next verified event (`None` once the watch is closed, or if it was started
    /// without `yield_events`).
    pub async fn next(&mut self) -> Option<VerifiedEvent> {
        match &mut self.rx {
            Some(rx) => rx.recv().await,
            None => None,
        }
    }

    /// Waits (up to `limit`) until the history asked for is read: everything the stream
    /// held when the watch began was taken (or, where its end could not be learnt, it
    /// had nothing more for a moment). Whether it was.
    pub async fn caught_up(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, until_caught_up(&self.caught_up))
            .await
            .is_ok()
    }

    /// Whether the watch is connected and reading now.
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    /// The presence of every inventory host now, in name order.
    pub fn presence(&self) -> Vec<HostPresence> {
        lock(&self.state).presence.view(now_ms())
    }

    /// Events rejected so far, by reason label.
    pub fn rejections(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.state)
            .judge
            .counts()
            .iter()
            .map(|(r, n)| (r.as_str(), *n))
            .collect()
    }

    /// Stops reading and closes the connection.
    pub async fn close(mut self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
    }
}

impl Drop for EventWatch {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[derive(Debug, Clone, Copy)]
enum Start {
    /// The events signed from this time (ms since epoch) on: an offset
    /// [`Reader::locate`] finds before the reader subscribes.
    Time(u64),
    /// Only what comes (`next`).
    Next,
    /// From this offset on: where the window begins, or after the last event read.
    Offset(i64),
}

/// What a look at one offset of the stream saw.
#[derive(Debug, Clone, Copy)]
struct Peeked {
    /// The offset of the first message delivered (above the one asked for when the
    /// stream no longer holds that one).
    offset: i64,
    /// The signed time of the first of those messages that opened as an event.
    time: Option<u64>,
    /// The highest offset the stream held, when the look read to its end.
    end: Option<i64>,
}

struct Reader {
    inputs: WatchInputs,
    record: bool,
    /// Which accepted events are recorded.
    filter: RecordFilter,
    state: Arc<Mutex<State>>,
    tx: Option<mpsc::Sender<VerifiedEvent>>,
    caught_up: Arc<(AtomicBool, Notify)>,
    /// One past the stream's last offset when the watch began: from the look at its
    /// last chunk (a quiet stream), or the first offset the tail probe received (a
    /// busy one); `i64::MAX` while not known.
    tail: Arc<AtomicI64>,
    listening: Arc<AtomicBool>,
    stop: CancellationToken,
    from: Start,
    /// The window asked for (ms).
    since_ms: u64,
    /// Reading from a time: the located offset is before the window (and the broker
    /// starts at a chunk's beginning), so events from before it come first; they are
    /// skipped, not counted as stale.
    lead: bool,
}

struct Linked {
    connection: Connection,
    index: usize,
}

async fn connect(
    inputs: &WatchInputs,
    start: usize,
    first: bool,
) -> Result<Linked, OrchestratorError> {
    let urls = &inputs.broker.urls;
    let mut last = String::from("no URL configured");
    for i in 0..urls.len() {
        let index = (start + i) % urls.len();
        let props = ConnectionProperties::default()
            .with_connection_name(format!("gearmq-watch {}", inputs.name).into());
        match gearmq_io::broker::connect(
            &urls[index],
            &inputs.broker.files(),
            None,
            props,
            CONNECT_LIMIT,
        )
        .await
        {
            Ok(connection) => {
                // A provisioned broker holds the stream; otherwise make it (declaring
                // it again is harmless).
                if !first || inputs.broker.provisioned {
                    return Ok(Linked { connection, index });
                }
                let declared = async {
                    let ch = connection
                        .create_channel()
                        .await
                        .map_err(|e| e.to_string())?;
                    topology::declare_events(&ch, false, CONNECT_LIMIT)
                        .await
                        .map_err(|e| e.to_string())?;
                    let _ = ch.close(200, "declared".into()).await;
                    Ok::<(), String>(())
                }
                .await;
                match declared {
                    Ok(()) => return Ok(Linked { connection, index }),
                    Err(e) => {
                        let _ = connection.close(200, "bye".into()).await;
                        return Err(OrchestratorError::Connect {
                            urls: redact_url(&urls[index]),
                            reason: e,
                        });
                    }
                }
            }
            Err(e) => last = e,
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

impl Reader {
    async fn run(mut self, mut link: Linked) {
        let mut resumed = false;
        loop {
            let why = match self.subscribe(&link.connection).await {
                Ok(consumer) => {
                    self.listening.store(true, Ordering::Relaxed);
                    let probe = self.probe_tail(&link.connection).await;
                    let why = self.read(consumer, resumed).await;
                    probe.cancel();
                    self.listening.store(false, Ordering::Relaxed);
                    why
                }
                Err(e) => e,
            };
            if self.stop.is_cancelled() {
                let _ = link.connection.close(200, "bye".into()).await;
                return;
            }
            resumed = true;
            lock(&self.state).presence.deaf(now_ms());
            tracing::warn!(broker = %redact_url(&self.inputs.broker.urls[link.index]),
                reason = %why, "events watch lost the broker; reconnecting");
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
                    self.inputs.broker.reconnect_initial,
                    self.inputs.broker.reconnect_max,
                );
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                match connect(&self.inputs, next, false).await {
                    Ok(l) => break l,
                    Err(e) => {
                        tracing::debug!(error = %e, attempt, "events watch: reconnect failed");
                        attempt = attempt.saturating_add(1);
                        next = next.wrapping_add(1);
                    }
                }
            };
        }
    }

    /// The reader's consumer, from where it stopped, or (the first time) from where
    /// [`Reader::locate`] finds the window begins.
    async fn subscribe(&mut self, connection: &Connection) -> Result<Consumer, String> {
        let offset = match self.from {
            Start::Time(from) => {
                let at = self.locate(connection, from).await?;
                self.from = Start::Offset(at);
                AMQPValue::LongLongInt(at)
            }
            Start::Offset(o) => AMQPValue::LongLongInt(o),
            Start::Next => AMQPValue::LongString("next".into()),
        };
        let ch = connection
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        let tag = format!("gearmq-watch-{}", self.inputs.name);
        consume_events(&ch, STREAM_PREFETCH, offset, tag).await
    }

    /// The offset where the events signed from `from` (ms) begin, to within
    /// [`LOCATE_SLACK`] messages and before it (the reader skips what precedes the
    /// window). Found by looking at single offsets: the stream's last chunk
    /// (`x-stream-offset = last`), then back from there in growing steps until an
    /// event signed before the window (less the clock skew allowed) or the stream's
    /// start, then halving the gap. Not by asking the broker for a timestamp: RabbitMQ
    /// 3.10 sometimes starts a consumer attached at a recent timestamp at the next
    /// new message, with no error, and a watch would then miss its whole history.
    /// An empty stream has no history: it is read from its start, and at once.
    async fn locate(&self, connection: &Connection, from: u64) -> Result<i64, String> {
        let last = self
            .peek(
                connection,
                AMQPValue::LongString("last".into()),
                FIRST_DELIVERY_WAIT,
                true,
            )
            .await?;
        let Some(last) = last else {
            self.mark_caught_up();
            return Ok(0);
        };
        // The history is read once the reader has taken the stream's last offset.
        if let Some(end) = last.end {
            self.tail.fetch_min(end.saturating_add(1), Ordering::AcqRel);
        }
        let skew = gearmq_schemas::time::duration_ms(self.inputs.skew);
        // A first step of about the events the window holds when each host sends one
        // per default interval.
        let hosts = i64::try_from(self.inputs.inventory.len()).unwrap_or(i64::MAX);
        let per_host = i64::try_from(
            self.since_ms.saturating_add(skew) / crate::events::DEFAULT_INTERVAL_MS + 1,
        )
        .unwrap_or(i64::MAX);
        let at = search(
            last,
            from.saturating_sub(skew),
            hosts.saturating_mul(per_host),
            |offset| {
                self.peek(
                    connection,
                    AMQPValue::LongLongInt(offset),
                    FIRST_DELIVERY_WAIT,
                    false,
                )
            },
        )
        .await?;
        tracing::debug!(
            offset = at,
            last_chunk = last.offset,
            "events watch: window located"
        );
        Ok(at)
    }

    /// A look at the stream from `offset` (an `x-stream-offset` value): the first
    /// message delivered within `wait`, and the signed time of the first of up to
    /// [`PEEK_MESSAGES`] that opens as an event. `None` if nothing came. With
    /// `to_end`, it reads on until [`SETTLE`] passes with nothing new and says the
    /// highest offset it saw, unless it read [`LAST_CHUNK_MESSAGES`] or kept receiving
    /// for [`END_BURST_LIMIT`] (a busy stream: the tail probe tells its end).
    async fn peek(
        &self,
        connection: &Connection,
        offset: AMQPValue,
        wait: Duration,
        to_end: bool,
    ) -> Result<Option<Peeked>, String> {
        let ch = connection
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        let looked = async {
            let tag = format!("gearmq-watch-locate-{}", self.inputs.name);
            let mut consumer = consume_events(&ch, PEEK_MESSAGES, offset, tag).await?;
            let mut seen: Option<Peeked> = None;
            let mut burst_until = None;
            let mut quiet = false;
            let most = if to_end {
                LAST_CHUNK_MESSAGES
            } else {
                usize::from(PEEK_MESSAGES)
            };
            for _ in 0..most {
                let limit = match (&seen, to_end) {
                    (None, _) => wait,
                    (Some(_), false) => PEEK_NEXT_WAIT,
                    (Some(_), true) => SETTLE,
                };
                let next = tokio::select! {
                    _ = self.stop.cancelled() => return Err("stopped".to_string()),
                    n = tokio::time::timeout(limit, consumer.next()) => n,
                };
                let delivery = match next {
                    Err(_) => {
                        quiet = true;
                        break;
                    }
                    Ok(None) => return Err("the broker ended the stream consumer".into()),
                    Ok(Some(Err(e))) => return Err(e.to_string()),
                    Ok(Some(Ok(d))) => d,
                };
                if to_end {
                    // Read on past the prefetch.
                    delivery
                        .acker
                        .ack(BasicAckOptions::default())
                        .await
                        .map_err(|e| format!("ack failed: {e}"))?;
                }
                let Some(at) = stream_offset(&delivery.properties) else {
                    continue;
                };
                let look = seen.get_or_insert(Peeked {
                    offset: at,
                    time: None,
                    end: None,
                });
                look.end = Some(look.end.map_or(at, |e| e.max(at)));
                if look.time.is_none()
                    && let Ok(o) = open::<Event>(
                        &delivery.data,
                        self.inputs.max_message_bytes,
                        &self.inputs.verifier,
                    )
                {
                    look.time = Some(o.body().time);
                    if !to_end {
                        break;
                    }
                }
                let until = *burst_until
                    .get_or_insert_with(|| tokio::time::Instant::now() + END_BURST_LIMIT);
                if to_end && tokio::time::Instant::now() >= until {
                    break;
                }
            }
            if let Some(look) = &mut seen
                && !(to_end && quiet)
            {
                look.end = None;
            }
            Ok(seen)
        }
        .await;
        let _ = ch.close(200, "looked".into()).await;
        looked
    }

    /// Until the history is read: a second consumer from the stream's end (`next`).
    /// The offset of the first message it receives, N, was not yet in the stream when
    /// it subscribed, after the reader did; so once the reader has taken offset N − 1,
    /// it has taken all the stream held when the watch began. On a busy stream (a
    /// fleet's alives arrive every few ms) the reader never sees [`SETTLE`] of
    /// silence; this is how it knows it has caught up there. It closes at its first
    /// message, when the history is read (a quiet stream told first), or by the
    /// returned token (the reader's end, the watch's). Without it (it could not
    /// subscribe) only the silence tells. Not needed when [`Reader::locate`] read the
    /// stream's end already (a quiet stream).
    async fn probe_tail(&self, connection: &Connection) -> CancellationToken {
        let done = self.stop.child_token();
        if self.caught_up.0.load(Ordering::Acquire) || self.tail.load(Ordering::Acquire) != i64::MAX
        {
            return done;
        }
        let subscribed = async {
            let ch = connection
                .create_channel()
                .await
                .map_err(|e| e.to_string())?;
            let tag = format!("gearmq-watch-tail-{}", self.inputs.name);
            let next = AMQPValue::LongString("next".into());
            let consumer = consume_events(&ch, 1, next, tag).await?;
            Ok::<_, String>((ch, consumer))
        }
        .await;
        let (ch, mut consumer) = match subscribed {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "events watch: no tail probe; a quiet moment tells the history is read");
                return done;
            }
        };
        let tail = self.tail.clone();
        let until = done.clone();
        let caught_up = self.caught_up.clone();
        tokio::spawn(async move {
            let first = tokio::select! {
                _ = until.cancelled() => None,
                _ = until_caught_up(&caught_up) => None,
                d = consumer.next() => d,
            };
            if let Some(Ok(d)) = first
                && let Some(o) = stream_offset(&d.properties)
            {
                tail.store(o, Ordering::Release);
            }
            let _ = ch.close(200, "probed".into()).await;
        });
        done
    }

    /// Marks the history read (once) and wakes whoever waits for it.
    fn mark_caught_up(&self) {
        let (flag, notify) = &*self.caught_up;
        if !flag.swap(true, Ordering::AcqRel) {
            notify.notify_waiters();
        }
    }

    /// Reads until the consumer ends (the connection broke) or the watch stops;
    /// `resumed` after a reconnect.
    async fn read(&mut self, mut consumer: Consumer, resumed: bool) -> String {
        let mut first_after_resume = true;
        loop {
            let quiet = if first_after_resume {
                FIRST_DELIVERY_WAIT
            } else {
                SETTLE
            };
            let next = tokio::select! {
                _ = self.stop.cancelled() => return "stopped".into(),
                n = tokio::time::timeout(quiet, consumer.next()) => n,
            };
            let delivery = match next {
                Err(_) => {
                    // A quiet moment ends the history only when its end is not known.
                    if self.tail.load(Ordering::Acquire) == i64::MAX {
                        self.mark_caught_up();
                    }
                    continue;
                }
                Ok(None) => return "the broker ended the stream consumer".into(),
                Ok(Some(Err(e))) => return e.to_string(),
                Ok(Some(Ok(d))) => d,
            };
            let offset = stream_offset(&delivery.properties);
            if first_after_resume {
                first_after_resume = false;
                let lost = resumed
                    && match (self.from, offset) {
                        (Start::Offset(want), Some(got)) => got > want,
                        // Nothing read yet of a watch of only what comes: what came
                        // while it was away is not known.
                        (Start::Next, _) => true,
                        _ => false,
                    };
                if lost {
                    tracing::warn!(
                        "events watch: the stream no longer held every event of the time away"
                    );
                }
                lock(&self.state).presence.listening(now_ms(), lost);
            }
            if let Some(o) = offset {
                self.from = Start::Offset(o.saturating_add(1));
            }
            self.take(&delivery.data, &delivery.routing_key, &delivery.properties)
                .await;
            if let Some(o) = offset
                && o >= self.tail.load(Ordering::Acquire).saturating_sub(1)
            {
                self.mark_caught_up();
            }
            if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                return format!("ack failed: {e}");
            }
        }
    }

    async fn take(
        &mut self,
        bytes: &[u8],
        routing_key: &ShortString,
        props: &lapin::BasicProperties,
    ) {
        let opened = open::<Event>(bytes, self.inputs.max_message_bytes, &self.inputs.verifier);
        // Events from before the window, read because it was located only to within a
        // few hundred messages, are skipped until the first one the window covers.
        if self.lead
            && let Ok(o) = &opened
        {
            let heard_from = lock(&self.state).presence.heard_from();
            let skew = gearmq_schemas::time::duration_ms(self.inputs.skew);
            if o.body().time.saturating_add(skew) < heard_from {
                tracing::debug!(host = %o.body().host, "event from before the window skipped");
                return;
            }
            self.lead = false;
        }
        let user_id = props.user_id().as_ref().map(|u| u.as_str());
        let verdict = {
            let mut st = lock(&self.state);
            let v = st.judge.judge(
                opened,
                &*self.inputs.revoked,
                user_id,
                routing_key.as_str(),
                now_ms(),
            );
            v.map(|o| {
                let taken = st.presence.record(o.body());
                (o, taken)
            })
        };
        match verdict {
            Ok((o, taken)) => {
                if self.record
                    && let Some(a) = &self.inputs.audit
                    && self.filter.admit(&o.body().host, o.body().time, taken)
                {
                    a.record_later(Entry::event_accepted(bytes));
                }
                if let Some(tx) = &self.tx {
                    let ev = o.body();
                    let verified = VerifiedEvent {
                        host: ev.host.clone(),
                        boot: *ev.boot,
                        seq: ev.seq,
                        time: ev.time,
                        what: ev.what.clone(),
                        bytes: bytes.to_vec(),
                    };
                    let _ = tx.send(verified).await;
                }
            }
            Err(r) => {
                let level_security = !matches!(r.reason, EventRejection::Stale);
                if level_security {
                    tracing::warn!(reason = r.reason.as_str(), host = ?r.host, detail = %r.detail, "event rejected");
                } else {
                    tracing::info!(reason = r.reason.as_str(), host = ?r.host, detail = %r.detail, "event rejected");
                }
            }
        }
    }
}

/// Which accepted events a watch records: news always, a routine `alive` once per
/// host per [`WatchOptions::record_alive_every`] of its signed time.
struct RecordFilter {
    every_ms: u64,
    /// Per host, the signed time of the latest of its events recorded.
    recorded: HashMap<Name, u64>,
}

impl RecordFilter {
    fn new(every: Duration) -> Self {
        RecordFilter {
            every_ms: gearmq_schemas::time::duration_ms(every),
            recorded: HashMap::new(),
        }
    }

    /// Whether `host`'s event signed at `time`, which told the view `taken`, is
    /// recorded (and if so, remembered as recorded).
    fn admit(&mut self, host: &Name, time: u64, taken: Taken) -> bool {
        let last = self.recorded.get(host).copied();
        let due = self.every_ms == 0
            || match (taken, last) {
                (Taken::News, _) | (_, None) => true,
                (_, Some(last)) => time >= last.saturating_add(self.every_ms),
            };
        if due {
            let at = last.map_or(time, |l| l.max(time));
            self.recorded.insert(host.clone(), at);
        }
        due
    }
}

/// Where to read from for the events signed from `cutoff` (ms) on, in a stream whose
/// last chunk `last` shows (its first event in the window): an offset at most
/// [`LOCATE_SLACK`] messages before the first event of the window, or the stream's
/// start. `look(offset)` looks at one offset. Steps back from `last` by `first_step`
/// (at least [`LOCATE_SLACK`]), ×4 each time, until a look sees an event from before
/// the window, the stream's start, or nothing it can read (taken as before); then
/// halves the gap. Signed times only roughly follow offsets (hosts' clocks, publish
/// delays): with `cutoff` the window's start less twice the most any time is off,
/// the offset found is before every event of the window. The watch passes the window
/// less the clock skew allowed, so that holds while clocks are off by half of it.
async fn search<F, Fut>(
    last: Peeked,
    cutoff: u64,
    first_step: i64,
    mut look: F,
) -> Result<i64, String>
where
    F: FnMut(i64) -> Fut,
    Fut: std::future::Future<Output = Result<Option<Peeked>, String>>,
{
    // Whether a look at `want` saw the window begin after it.
    let before = |p: &Peeked, want: i64| p.offset > want || p.time.is_some_and(|t| t < cutoff);
    if before(&last, last.offset) {
        return Ok(last.offset);
    }
    let mut step = first_step.max(LOCATE_SLACK);
    // In the window at `hi`; before it at `lo`.
    let mut hi = last.offset;
    let mut lo = loop {
        let want = hi.saturating_sub(step).max(0);
        if want == 0 {
            break 0;
        }
        match look(want).await? {
            Some(p) if !before(&p, want) => {
                hi = want;
                step = step.saturating_mul(4);
            }
            _ => break want,
        }
    };
    while hi - lo > LOCATE_SLACK {
        let mid = lo + (hi - lo) / 2;
        match look(mid).await? {
            Some(p) if !before(&p, mid) => hi = mid,
            _ => lo = mid,
        }
    }
    Ok(lo)
}

/// A consumer `tag` of the events stream on `ch` from `offset` (an `x-stream-offset`
/// value), with at most `prefetch` messages unacknowledged.
async fn consume_events(
    ch: &lapin::Channel,
    prefetch: u16,
    offset: AMQPValue,
    tag: String,
) -> Result<Consumer, String> {
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), offset);
    ch.basic_consume(
        EVENTS_STREAM.into(),
        ShortString::from(tag),
        BasicConsumeOptions::default(),
        args,
    )
    .await
    .map_err(|e| format!("reading stream {EVENTS_STREAM}: {e}"))
}

/// Returns once the history is read (at once if it is already).
async fn until_caught_up(caught_up: &(AtomicBool, Notify)) {
    let (flag, notify) = caught_up;
    loop {
        // Made before the flag is read: a notification between the two is not lost.
        let notified = notify.notified();
        if flag.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }
}

/// A delivery's offset in the stream: the `x-stream-offset` header, which the broker
/// sets on delivery over any value the publisher put there (checked on RabbitMQ
/// 3.10.8), so a host cannot move where a watch resumes or when it is caught up.
fn stream_offset(props: &lapin::BasicProperties) -> Option<i64> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(&ShortString::from("x-stream-offset"))? {
        AMQPValue::LongLongInt(o) => Some(*o),
        AMQPValue::LongInt(o) => Some(i64::from(*o)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn news_is_always_recorded_and_a_routine_alive_once_per_period() {
        let web1 = Name::new("web1").unwrap();
        let db1 = Name::new("db1").unwrap();
        let mut f = RecordFilter::new(Duration::from_secs(300));
        let t = 1_800_000_000_000u64;
        assert!(f.admit(&web1, t, Taken::News));
        // Routine alives every 10 s: the first one five minutes after the last record.
        let admitted: Vec<u64> = (1..=61)
            .map(|i| t + i * 10_000)
            .filter(|&at| f.admit(&web1, at, Taken::StillUp))
            .collect();
        assert_eq!(admitted, [t + 300_000, t + 600_000]);
        // News in between is recorded and restarts the period; hosts are apart.
        assert!(f.admit(&web1, t + 610_000, Taken::News));
        assert!(!f.admit(&web1, t + 620_000, Taken::StillUp));
        assert!(f.admit(&db1, t + 620_000, Taken::StillUp));
        assert!(!f.admit(&web1, t + 609_000, Taken::Older));
        assert!(f.admit(&web1, t + 910_000, Taken::StillUp));

        // Zero records every one, older ones too.
        let mut all = RecordFilter::new(Duration::ZERO);
        for (at, taken) in [(t, Taken::News), (t + 1, Taken::StillUp), (t, Taken::Older)] {
            assert!(all.admit(&web1, at, taken));
        }
    }

    /// A stream as looks at it see it: messages from offset `start` on, each an event
    /// signed at a time or (`None`) something that does not open.
    struct Synthetic {
        start: i64,
        times: Vec<Option<u64>>,
        looks: std::cell::Cell<u32>,
    }

    impl Synthetic {
        fn new(start: i64, times: Vec<Option<u64>>) -> Self {
            Synthetic {
                start,
                times,
                looks: std::cell::Cell::new(0),
            }
        }

        /// A look at `want`, reading as [`Reader::peek`] does.
        fn look(&self, want: i64) -> Option<Peeked> {
            self.looks.set(self.looks.get() + 1);
            let offset = want.max(self.start);
            let from = usize::try_from(offset - self.start).unwrap();
            if from >= self.times.len() {
                return None;
            }
            let time = self.times[from..]
                .iter()
                .take(usize::from(PEEK_MESSAGES))
                .flatten()
                .next()
                .copied();
            Some(Peeked {
                offset,
                time,
                end: None,
            })
        }

        /// The look at the last chunk, which begins at `chunk`.
        fn last(&self, chunk: i64) -> Peeked {
            self.look(chunk).unwrap()
        }

        async fn search(&self, chunk: i64, cutoff: u64, first_step: i64) -> i64 {
            let last = self.last(chunk);
            search(last, cutoff, first_step, |o| {
                let p = self.look(o);
                async move { Ok(p) }
            })
            .await
            .unwrap()
        }

        /// The first offset whose event is signed at `cutoff` or later.
        fn first_from(&self, cutoff: u64) -> i64 {
            let i = self
                .times
                .iter()
                .position(|t| t.is_some_and(|t| t >= cutoff))
                .unwrap();
            self.start + i as i64
        }
    }

    #[tokio::test]
    async fn the_search_stops_within_the_slack_before_the_window_in_few_looks() {
        let n = 200_000i64;
        let stream = Synthetic::new(0, (0..n).map(|i| Some(1_000_000 + 10 * i as u64)).collect());
        for k in [
            1i64, 255, 256, 257, 1_000, 77_777, 150_000, 199_000, 199_990,
        ] {
            let cutoff = 1_000_000 + 10 * k as u64;
            for first_step in [0, 1, 300, 50_000, i64::MAX] {
                stream.looks.set(0);
                let at = stream.search(n - 1, cutoff, first_step).await;
                let first = stream.first_from(cutoff);
                assert!(
                    at <= first && first - at <= LOCATE_SLACK,
                    "window at {first}, read from {at} (step {first_step})"
                );
                assert!(stream.looks.get() <= 40, "{} looks", stream.looks.get());
            }
        }
    }

    #[tokio::test]
    async fn a_window_from_before_the_stream_reads_it_from_its_start() {
        let times = |n: u64| (0..n).map(|i| Some(5_000 + i)).collect::<Vec<_>>();
        let whole = Synthetic::new(0, times(10_000));
        assert_eq!(whole.search(9_990, 1_000, 256).await, 0);
        // Retention dropped offsets up to 40,000: reading from the offset found starts
        // at the first one kept.
        let cut = Synthetic::new(40_000, times(10_000));
        let at = cut.search(49_990, 1_000, 256).await;
        assert!(at <= 40_000, "{at}");
        assert_eq!(cut.look(at).unwrap().offset, 40_000);
    }

    #[tokio::test]
    async fn a_last_chunk_before_the_window_is_where_reading_starts() {
        let stream = Synthetic::new(0, (0..1_000u64).map(Some).collect());
        stream.looks.set(0);
        assert_eq!(stream.search(990, 5_000, 256).await, 990);
        assert_eq!(stream.looks.get(), 1, "only the last chunk was looked at");
    }

    #[tokio::test]
    async fn looks_that_find_no_event_read_further_back() {
        // Nothing opens anywhere: every look is taken as inside the window.
        let garbage = Synthetic::new(0, vec![None; 100_000]);
        assert_eq!(garbage.search(99_999, 1_000, 256).await, 0);
        // Garbage between the events, fewer than a look reads: still found.
        let times: Vec<Option<u64>> = (0..100_000u64)
            .map(|i| (i % 32 == 0).then_some(i * 10))
            .collect();
        let sparse = Synthetic::new(0, times);
        let at = sparse.search(99_968, 600_000, 256).await;
        let first = sparse.first_from(600_000);
        assert!(
            at <= first && first - at <= LOCATE_SLACK + 64,
            "{first} {at}"
        );
    }

    #[tokio::test]
    async fn times_out_of_order_by_the_skew_still_leave_the_window_after_the_start() {
        // Hosts' clocks and publish delays: each time is off by up to `jitter`. A search
        // for `window` less twice the jitter begins before every event of the window.
        let jitter = 30_000u64;
        let mut x = 12_345u64;
        let times: Vec<Option<u64>> = (0..100_000u64)
            .map(|i| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                Some(10_000_000 + i * 10 + (x >> 33) % (2 * jitter) - jitter)
            })
            .collect();
        let stream = Synthetic::new(0, times);
        for window in [10_300_000u64, 10_600_000, 10_900_000] {
            let at = stream.search(99_999, window - 2 * jitter, 256).await;
            let first = stream.first_from(window);
            assert!(at <= first, "window from {first}, read from {at}");
        }
    }
}
