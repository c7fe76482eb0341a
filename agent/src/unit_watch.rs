//! Unit changes from systemd's D-Bus signals (no polling): a unit the agent watches
//! failed, exited, or was restarted by systemd's `Restart=`.
//!
//! [`run`] is one task with a connection of its own (not the one jobs use), on which it
//! calls the manager's `Subscribe` (systemd sends unit signals only while a client is
//! subscribed) and listens for `PropertiesChanged` under `/org/freedesktop/systemd1/unit`.
//! For a change systemd sends the type-specific interface's signal
//! (`org.freedesktop.systemd1.Service`: `Result`, `NRestarts`), then the `Unit` one
//! (`ActiveState`, `SubState`), at times twice. `Tracker` keeps per unit the latest of
//! these and decides, from values alone, what a signal means:
//!
//! - `Restarted` when `NRestarts` rises above the last value known (a lower one is a
//!   reset or a reload: the new baseline, no event), with the states that follow it;
//! - `Failed` when `ActiveState` becomes `failed`;
//! - `Exited` when it becomes `inactive` from a live state;
//!
//! except that a change made while the agent itself ran a job on the unit ([`Quiet`])
//! is neither `Failed` nor `Exited`, and neither is the way through `failed` or
//! `inactive` of a unit systemd restarts by `Restart=` (systemd 252 shows `failed`,
//! then `auto-restart`, one signal after the other; a failure or exit therefore waits
//! [`SETTLE`] for that before it is reported).
//!
//! At each (re)connection a baseline is read (`ListUnitsByPatterns` and each unit's
//! `NRestarts`) so an old `NRestarts` is not reported again; signals that arrive while
//! it is read are ordered against its replies by their receive position on the
//! connection, so a change is neither counted twice nor taken back.
//!
//! Signals are taken only from the unique bus name that owns `org.freedesktop.systemd1`
//! (another client can send a signal to us directly, past the bus's match rules); when
//! that owner changes, the watcher connects again.

use crate::config::BusKind;
use futures_util::StreamExt;
use gearmq_schemas::event::{MAX_STATE_WORD, UnitChange};
use std::collections::{HashMap, VecDeque};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zbus::message::Sequence;
use zbus::{Connection, MatchRule, Message, MessageStream, OwnedObjectPath, Variant};
use zbus_systemd::systemd1::ManagerProxy;

/// Most units tracked at once; the least recently changed one makes room for a new one.
pub const MAX_UNITS: usize = 4096;
/// How long connecting to the bus (socket, authentication, Hello) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one D-Bus call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long reading the whole baseline may take.
const BASELINE_TIMEOUT: Duration = Duration::from_secs(60);
/// Signals queued on the connection for us; when full the connection waits for us.
const SIGNAL_QUEUE: usize = 1024;
/// Signals kept while the baseline is read; more are dropped (with a warning).
const EARLY_MAX: usize = 4096;
/// First wait before connecting again, doubled after each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait before connecting again.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A session that lasted this long resets the backoff.
const STABLE_SESSION: Duration = Duration::from_secs(30);
/// Longest unit name systemd accepts (`UNIT_NAME_MAX` less its NUL).
const MAX_UNIT_NAME: usize = 255;

const SYSTEMD: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER_IFACE: &str = "org.freedesktop.systemd1.Manager";
const UNIT_PATH_PREFIX: &str = "/org/freedesktop/systemd1/unit/";
const UNIT_IFACE: &str = "org.freedesktop.systemd1.Unit";
const SERVICE_IFACE: &str = "org.freedesktop.systemd1.Service";
const TYPE_IFACE_PREFIX: &str = "org.freedesktop.systemd1.";
const PROPERTIES_IFACE: &str = "org.freedesktop.DBus.Properties";
const BUS_DRIVER: &str = "org.freedesktop.DBus";

/// What the watcher reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitChangeSeen {
    /// The name the filter returned (`web` for `gearmq-web.service`, or `nginx.service`).
    pub unit: String,
    /// What became of it.
    pub change: UnitChange,
    /// `ActiveState` after the change.
    pub active_state: String,
    /// `SubState` after the change.
    pub sub_state: String,
    /// The unit's `Result` (`success`, `exit-code`, …; empty if systemd sent none).
    pub result: String,
    /// The service's `NRestarts` (0 for units that are not services).
    pub restarts: u32,
}

/// Maps a systemd unit name (`gearmq-web.service`) to the name events use, or None to
/// ignore it.
pub type UnitFilter = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Where and what to watch.
#[derive(Debug, Clone)]
pub struct WatchSettings {
    /// Which manager.
    pub bus: BusKind,
    /// Its D-Bus address; `None` is the well-known system bus (on the user bus there is
    /// then nothing to connect to, and the watcher retries with its backoff).
    pub address: Option<String>,
    /// `ListUnitsByPatterns` patterns of the units whose state is read at each
    /// connection (`gearmq-*.service` and the allowlist's): should cover every unit the
    /// filter accepts. Empty reads no baseline.
    pub patterns: Vec<String>,
    /// The units the agent is running a job on; share it with the action code.
    pub quiet: Quiet,
    /// Whether the watcher is watching; for health output and tests.
    pub status: Arc<WatchStatus>,
}

impl WatchSettings {
    /// Settings for the manager on `bus` at `address`, reading a baseline of the units
    /// matching `patterns`, with a fresh [`Quiet`] and [`WatchStatus`].
    pub fn new(bus: BusKind, address: Option<String>, patterns: Vec<String>) -> Self {
        WatchSettings {
            bus,
            address,
            patterns,
            quiet: Quiet::new(),
            status: Arc::new(WatchStatus::default()),
        }
    }

    /// The bus, for messages: `the user bus at unix:path=/run/user/1000/bus`.
    pub fn describe(&self) -> String {
        match &self.address {
            Some(a) => format!("the {} bus at {a}", self.bus.as_str()),
            None => format!("the {} bus", self.bus.as_str()),
        }
    }
}

/// Whether the watcher is connected, subscribed and past its baseline.
#[derive(Debug, Default)]
pub struct WatchStatus {
    watching: AtomicBool,
    sessions: AtomicU64,
    changed: Notify,
}

impl WatchStatus {
    /// True while signals are being watched.
    pub fn is_watching(&self) -> bool {
        self.watching.load(Ordering::Acquire)
    }

    /// How many times the watcher reached the watching state (1 after the first
    /// connection; more after reconnections).
    pub fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::Acquire)
    }

    /// Returns once the watcher is watching (callers bound it with a timeout).
    pub async fn wait_watching(&self) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the check, so a change in between is not missed.
            notified.as_mut().enable();
            if self.is_watching() {
                return;
            }
            notified.await;
        }
    }

    fn set_watching(&self, on: bool) {
        if on {
            self.sessions.fetch_add(1, Ordering::AcqRel);
        }
        self.watching.store(on, Ordering::Release);
        self.changed.notify_waiters();
    }
}

/// The units the agent is running a job on now (stop, restart, delete, …): their
/// changes in that time are the agent's own doing and are not reported as `Failed` or
/// `Exited`. `Restarted` is unaffected: a job restart never raises `NRestarts`.
///
/// Hold a [`QuietGuard`] from [`Quiet::quiet`], taken *before* asking systemd for the
/// job, until the job has finished. A change is matched to that time by systemd's own
/// `StateChangeTimestamp`, so a change the watcher reads after the guard is gone is
/// still the agent's if it happened while the guard was held, and a change after the
/// job (a crash right after a restart) is reported. (Both are the host's wall clock: a
/// clock step during a job can misplace that job's change.) Keyed by systemd's unit
/// name (`gearmq-web.service`). Cloning shares the set.
#[derive(Debug, Clone, Default)]
pub struct Quiet {
    inner: Arc<Mutex<HashMap<String, QuietUnit>>>,
}

/// How long a finished quiet time is remembered (the watcher may read a change late).
const QUIET_KEPT: Duration = Duration::from_secs(60);
/// Without systemd's timestamp, how long after a quiet time a change is still the
/// agent's.
const QUIET_LINGER: Duration = Duration::from_secs(2);
/// Most finished quiet times remembered per unit.
const QUIET_WINDOWS: usize = 16;

#[derive(Debug, Default)]
struct QuietUnit {
    holders: u32,
    /// When the current quiet time began (µs since the epoch), while `holders > 0`.
    since_us: u64,
    /// Finished quiet times: from, to (µs since the epoch), and when it ended.
    windows: VecDeque<(u64, u64, Instant)>,
}

impl QuietUnit {
    fn prune(&mut self, now: Instant) {
        while let Some(&(_, _, ended)) = self.windows.front() {
            if now.duration_since(ended) < QUIET_KEPT && self.windows.len() <= QUIET_WINDOWS {
                break;
            }
            self.windows.pop_front();
        }
    }

    fn is_empty(&self) -> bool {
        self.holders == 0 && self.windows.is_empty()
    }
}

/// Marks a unit quiet while it lives; see [`Quiet`].
#[derive(Debug)]
#[must_use = "the unit is quiet only while the guard is held"]
pub struct QuietGuard {
    quiet: Quiet,
    unit: String,
}

impl Drop for QuietGuard {
    fn drop(&mut self) {
        let now = Instant::now();
        let end = now_us();
        let mut units = self.quiet.lock();
        if let Some(q) = units.get_mut(&self.unit) {
            q.holders = q.holders.saturating_sub(1);
            if q.holders == 0 {
                q.windows.push_back((q.since_us, end, now));
                q.prune(now);
            }
        }
    }
}

impl Quiet {
    /// An empty set.
    pub fn new() -> Self {
        Quiet::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, QuietUnit>> {
        // A panic while holding the lock leaves a consistent map (every update is one
        // field or one push), so a poisoned lock is used as is.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks `unit` (systemd's name, `gearmq-web.service`) as changed by the agent until
    /// the guard is dropped. Take it before asking for the job.
    pub fn quiet(&self, unit: &str) -> QuietGuard {
        let now = Instant::now();
        let mut units = self.lock();
        units.retain(|_, q| {
            q.prune(now);
            !q.is_empty()
        });
        let q = units.entry(unit.to_string()).or_default();
        if q.holders == 0 {
            q.since_us = now_us();
        }
        q.holders = q.holders.saturating_add(1);
        QuietGuard {
            quiet: self.clone(),
            unit: unit.to_string(),
        }
    }

    /// Whether a change of `unit` that systemd stamped `at_us` (its
    /// `StateChangeTimestamp`, µs since the epoch; `None` if not known) happened while
    /// the unit was quiet.
    pub fn covers(&self, unit: &str, at_us: Option<u64>) -> bool {
        let now = Instant::now();
        let mut units = self.lock();
        let Some(q) = units.get_mut(unit) else {
            return false;
        };
        q.prune(now);
        match at_us {
            Some(at) => {
                (q.holders > 0 && at >= q.since_us)
                    || q.windows
                        .iter()
                        .any(|&(from, to, _)| from <= at && at <= to)
            }
            None => {
                q.holders > 0
                    || q.windows
                        .iter()
                        .any(|&(_, _, ended)| now.duration_since(ended) < QUIET_LINGER)
            }
        }
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Runs until `stop` is cancelled (or `tx`'s receiver is gone): connects (again after
/// the bus is lost, with a capped backoff), and sends each change on `tx` (`try_send`:
/// if the channel is full the change is dropped and counted in `dropped`).
pub async fn run(
    settings: WatchSettings,
    filter: UnitFilter,
    tx: mpsc::Sender<UnitChangeSeen>,
    dropped: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let mut tracker: Tracker<Sequence> = Tracker::new(MAX_UNITS);
    let mut backoff = FIRST_BACKOFF;
    let out = Outlet { tx, dropped };
    loop {
        let began = Instant::now();
        let ended = tokio::select! {
            _ = stop.cancelled() => None,
            e = watch_once(&settings, &filter, &out, &mut tracker) => Some(e),
        };
        let was_watching = settings.status.is_watching();
        settings.status.set_watching(false);
        // Failures still waiting to see whether systemd restarts the unit: told now.
        for change in tracker.take_all() {
            if out.send(change).is_err() {
                return;
            }
        }
        match ended {
            None | Some(SessionEnd::ReceiverGone) => {
                debug!("unit watcher stopped");
                return;
            }
            Some(e) if was_watching => {
                warn!(bus = %settings.describe(), "unit watcher lost systemd: {e}; reconnecting")
            }
            Some(e) => {
                warn!(
                    bus = %settings.describe(),
                    "unit watcher cannot watch systemd: {e}; retrying in {}",
                    humantime::format_duration(backoff)
                )
            }
        }
        if began.elapsed() >= STABLE_SESSION {
            backoff = FIRST_BACKOFF;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Why a watching session ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("{what} failed: {reason}")]
    Call { what: &'static str, reason: String },
    #[error("the bus connection closed{0}")]
    Lost(String),
    #[error("org.freedesktop.systemd1 changed owner from {from} to {to:?}")]
    ManagerChanged { from: String, to: String },
    #[error(
        "reading the baseline took longer than {}",
        humantime::format_duration(BASELINE_TIMEOUT)
    )]
    BaselineTimeout,
    #[error("the receiver of unit changes is gone")]
    ReceiverGone,
}

fn call_failed(what: &'static str) -> impl FnOnce(zbus::Error) -> SessionEnd {
    move |e| SessionEnd::Call {
        what,
        reason: e.to_string(),
    }
}

/// Where changes go.
struct Outlet {
    tx: mpsc::Sender<UnitChangeSeen>,
    dropped: Arc<AtomicU64>,
}

impl Outlet {
    fn send(&self, change: UnitChangeSeen) -> Result<(), SessionEnd> {
        match self.tx.try_send(change) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(c)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                debug!(
                    unit = %c.unit,
                    change = c.change.as_str(),
                    "unit change dropped: the queue is full"
                );
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SessionEnd::ReceiverGone),
        }
    }
}

/// Which of the session's streams a message came from.
#[derive(Debug, Clone, Copy)]
enum Source {
    Properties,
    Owner,
}

/// The item of a stream, or why the session ends.
fn received(item: Option<zbus::Result<Message>>) -> Result<Message, SessionEnd> {
    match item {
        Some(Ok(m)) => Ok(m),
        Some(Err(e)) => Err(SessionEnd::Lost(format!(": {e}"))),
        None => Err(SessionEnd::Lost(String::new())),
    }
}

async fn connect(settings: &WatchSettings) -> Result<Connection, SessionEnd> {
    let builder = match (&settings.address, settings.bus) {
        (Some(a), _) => zbus::connection::Builder::address(a.as_str()),
        (None, BusKind::System) => zbus::connection::Builder::system(),
        (None, BusKind::User) => {
            return Err(SessionEnd::Connect(
                "no address: set systemd.address, DBUS_SESSION_BUS_ADDRESS or XDG_RUNTIME_DIR"
                    .into(),
            ));
        }
    };
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        builder.method_timeout(CALL_TIMEOUT).build(),
    )
    .await
    {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(SessionEnd::Connect(e.to_string())),
        Err(_) => Err(SessionEnd::Connect(format!(
            "no answer within {}",
            humantime::format_duration(CONNECT_TIMEOUT)
        ))),
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn bad_rule(e: zbus::Error) -> SessionEnd {
    SessionEnd::Call {
        what: "AddMatch",
        reason: e.to_string(),
    }
}

async fn open_stream(
    conn: &Connection,
    rule: zbus::Result<MatchRule<'_>>,
    queue: usize,
) -> Result<MessageStream, SessionEnd> {
    let rule = rule.map_err(bad_rule)?;
    MessageStream::for_match_rule(rule, conn, NonZeroUsize::new(queue))
        .await
        .map_err(bad_rule)
}

/// One connection: subscribe, read the baseline, then report changes until the bus is
/// lost, systemd's owner changes or the receiver is gone.
async fn watch_once(
    settings: &WatchSettings,
    filter: &UnitFilter,
    out: &Outlet,
    tracker: &mut Tracker<Sequence>,
) -> SessionEnd {
    match watch_inner(settings, filter, out, tracker).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

async fn watch_inner(
    settings: &WatchSettings,
    filter: &UnitFilter,
    out: &Outlet,
    tracker: &mut Tracker<Sequence>,
) -> Result<std::convert::Infallible, SessionEnd> {
    let conn = connect(settings).await?;
    // The owner stream first: a change of owner after GetNameOwner is then seen.
    let mut owners = open_stream(
        &conn,
        MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender(BUS_DRIVER)
            .interface(BUS_DRIVER)
            .member("NameOwnerChanged")
            .arg(0, SYSTEMD)
            .build(),
        8,
    )
    .await?;
    let owner = zbus::fdo::DBusProxy::new(&conn)
        .await
        .map_err(call_failed("GetNameOwner"))?
        .get_name_owner(SYSTEMD.try_into().map_err(call_failed("GetNameOwner"))?)
        .await
        .map_err(|e| call_failed("GetNameOwner")(e.into()))?
        .to_string();
    // Sender is the owner's unique name, which zbus also checks on each message (a
    // well-known name it could not), so a signal sent to us directly by another client
    // is not taken for systemd's.
    let mut props = open_stream(
        &conn,
        MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender(owner.as_str())
            .interface(PROPERTIES_IFACE)
            .member("PropertiesChanged")
            .path_namespace(UNIT_PATH_PREFIX.trim_end_matches('/'))
            .build(),
        SIGNAL_QUEUE,
    )
    .await?;
    ManagerProxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .map_err(call_failed("Subscribe"))?
        .subscribe()
        .await
        .map_err(call_failed("Subscribe"))?;
    tracker.new_session();

    // Signals keep coming while the baseline is read; they are kept (the connection
    // would stall on a full stream, and the baseline's own replies with it) and
    // applied after it, in the order they were received.
    let mut early: Vec<(Source, Message)> = Vec::new();
    let mut lost_early = 0u64;
    let baseline = read_baseline(&conn, &settings.patterns, filter);
    tokio::pin!(baseline);
    let limit = tokio::time::sleep(BASELINE_TIMEOUT);
    tokio::pin!(limit);
    let base = loop {
        let (source, item) = tokio::select! {
            b = &mut baseline => break b?,
            _ = &mut limit => return Err(SessionEnd::BaselineTimeout),
            m = props.next() => (Source::Properties, m),
            m = owners.next() => (Source::Owner, m),
        };
        let msg = received(item)?;
        if early.len() < EARLY_MAX {
            early.push((source, msg));
        } else {
            lost_early += 1;
        }
    };
    if lost_early > 0 {
        warn!(
            lost = lost_early,
            "unit watcher: more than {EARLY_MAX} signals while reading the baseline; \
             some changes may be missed"
        );
    }
    let baselined = base.len();
    for b in base {
        tracing::trace!(
            unit = b.unit,
            active_state = b.active_state,
            restarts = ?b.restarts.map(|r| r.0),
            "unit watcher: baseline"
        );
        tracker.baseline_unit(&b.unit, &b.active_state, &b.sub_state, b.listed_at);
        if let Some((n, at)) = b.restarts {
            tracker.baseline_restarts(&b.unit, n, at);
        }
    }
    early.sort_by_key(|(_, m)| m.recv_position());
    for (source, msg) in early {
        handle(source, &msg, &owner, filter, &settings.quiet, tracker, out)?;
    }
    settings.status.set_watching(true);
    info!(
        bus = %settings.describe(),
        units = baselined,
        "watching unit changes"
    );
    loop {
        let due = tracker.next_due();
        let (source, item) = tokio::select! {
            // Signals first: one that cancels a pending failure may be queued already.
            biased;
            m = props.next() => (Source::Properties, m),
            m = owners.next() => (Source::Owner, m),
            _ = sleep_until(due) => {
                for change in tracker.take_due(Instant::now()) {
                    out.send(change)?;
                }
                continue;
            }
        };
        let msg = received(item)?;
        handle(source, &msg, &owner, filter, &settings.quiet, tracker, out)?;
    }
}

/// One unit's state as read at connection.
struct BaseUnit {
    unit: String,
    active_state: String,
    sub_state: String,
    listed_at: Sequence,
    restarts: Option<(u32, Sequence)>,
}

/// A row of `ListUnitsByPatterns`.
type UnitRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

async fn read_baseline(
    conn: &Connection,
    patterns: &[String],
    filter: &UnitFilter,
) -> Result<Vec<BaseUnit>, SessionEnd> {
    // An empty pattern list would list every unit.
    if patterns.is_empty() {
        return Ok(Vec::new());
    }
    let reply = conn
        .call_method(
            Some(SYSTEMD),
            MANAGER_PATH,
            Some(MANAGER_IFACE),
            "ListUnitsByPatterns",
            &(Vec::<String>::new(), patterns),
        )
        .await
        .map_err(call_failed("ListUnitsByPatterns"))?;
    let listed_at = reply.recv_position();
    let rows: Vec<UnitRow> = reply
        .body()
        .deserialize()
        .map_err(call_failed("ListUnitsByPatterns"))?;
    let mut out = Vec::new();
    for (unit, _, load_state, active_state, sub_state, _, path, ..) in rows {
        if out.len() >= MAX_UNITS {
            warn!("unit watcher: more than {MAX_UNITS} units match; the rest have no baseline");
            break;
        }
        if filter(&unit).is_none() || !is_state_word(&active_state) || !is_state_word(&sub_state) {
            continue;
        }
        let mut restarts = None;
        if load_state == "loaded" && unit.ends_with(".service") {
            match read_restarts(conn, &path).await {
                Ok(r) => restarts = r,
                // The unit went away or is not a service after all.
                Err(e @ (zbus::Error::MethodError(..) | zbus::Error::FDO(_))) => {
                    debug!(unit, "unit watcher: no NRestarts for the baseline: {e}");
                }
                Err(e) => return Err(call_failed("reading NRestarts")(e)),
            }
        }
        out.push(BaseUnit {
            unit,
            active_state,
            sub_state,
            listed_at,
            restarts,
        });
    }
    Ok(out)
}

/// The service's `NRestarts` and the receive position of the reply; `None` if systemd
/// answered with something that is not a `u32`.
async fn read_restarts(
    conn: &Connection,
    path: &OwnedObjectPath,
) -> zbus::Result<Option<(u32, Sequence)>> {
    let reply = conn
        .call_method(
            Some(SYSTEMD),
            path.as_str(),
            Some(PROPERTIES_IFACE),
            "Get",
            &(SERVICE_IFACE, "NRestarts"),
        )
        .await?;
    let body = reply.body();
    let value: Variant<'_> = body.deserialize()?;
    let n = match value {
        Variant::U32(n) => Some(n),
        Variant::Variant(inner) => match *inner {
            Variant::U32(n) => Some(n),
            _ => None,
        },
        _ => None,
    };
    if n.is_none() {
        debug!(
            path = path.as_str(),
            "unit watcher: NRestarts of the wrong type ignored"
        );
    }
    Ok(n.map(|n| (n, reply.recv_position())))
}

/// Applies one signal to the tracker and sends what it means.
fn handle(
    source: Source,
    msg: &Message,
    owner: &str,
    filter: &UnitFilter,
    quiet: &Quiet,
    tracker: &mut Tracker<Sequence>,
    out: &Outlet,
) -> Result<(), SessionEnd> {
    let at = msg.recv_position();
    match source {
        Source::Owner => {
            let body = msg.body();
            let Ok((name, _old, new)) = body.deserialize::<(&str, &str, &str)>() else {
                return Ok(());
            };
            if name == SYSTEMD && new != owner {
                return Err(SessionEnd::ManagerChanged {
                    from: owner.to_string(),
                    to: new.to_string(),
                });
            }
        }
        Source::Properties => {
            let header = msg.header();
            let Some(label) = header
                .path()
                .and_then(|p| p.as_str().strip_prefix(UNIT_PATH_PREFIX))
            else {
                return Ok(());
            };
            let Some(unit) = unit_from_label(label) else {
                debug!(label, "unit watcher: malformed unit object path; ignored");
                return Ok(());
            };
            let Some(name) = filter(&unit) else {
                return Ok(());
            };
            let body = msg.body();
            let Ok((iface, changed, _invalidated)) =
                body.deserialize::<(&str, HashMap<&str, Variant<'_>>, Vec<&str>)>()
            else {
                debug!(
                    unit,
                    "unit watcher: PropertiesChanged with an unexpected body; ignored"
                );
                return Ok(());
            };
            let kind = if iface == UNIT_IFACE {
                Iface::Unit
            } else if iface.starts_with(TYPE_IFACE_PREFIX) {
                Iface::Type
            } else {
                return Ok(());
            };
            let update = match read_update(kind, &changed) {
                Ok(u) => {
                    tracing::trace!(unit, iface, ?u, "unit watcher: properties changed");
                    u
                }
                Err(why) => {
                    debug!(unit, iface, "unit watcher: update ignored: {why}");
                    return Ok(());
                }
            };
            let now = Instant::now();
            for change in
                tracker.apply(&unit, &name, &update, at, now, |ts| quiet.covers(&unit, ts))
            {
                out.send(change)?;
            }
        }
    }
    Ok(())
}

/// The unit name in the last element of a unit's object path, whose bytes other than
/// letters (and digits after the first) systemd writes as `_xx` (two lowercase hex
/// digits): `gearmq_2dweb_2eservice` is `gearmq-web.service`. Anything systemd would
/// not have written, or that is no unit name, is `None`.
fn unit_from_label(label: &str) -> Option<String> {
    let b = label.as_bytes();
    if b.is_empty() || b.len() > 3 * MAX_UNIT_NAME {
        return None;
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'_' {
            let hi = hex_digit(*b.get(i + 1)?)?;
            let lo = hex_digit(*b.get(i + 2)?)?;
            let v = (hi << 4) | lo;
            // Only what systemd escapes may be escaped: one spelling per name.
            if v.is_ascii_alphabetic() || (v.is_ascii_digit() && !out.is_empty()) {
                return None;
            }
            out.push(v);
            i += 3;
        } else if c.is_ascii_alphabetic() || (c.is_ascii_digit() && !out.is_empty()) {
            out.push(c);
            i += 1;
        } else {
            return None;
        }
    }
    let unit_chars = |c: &u8| c.is_ascii_alphanumeric() || b":-_.\\@".contains(c);
    if out.len() > MAX_UNIT_NAME || !out.iter().all(unit_chars) {
        return None;
    }
    String::from_utf8(out).ok()
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// A state, sub-state or result word as systemd writes them and events carry them.
fn is_state_word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_STATE_WORD
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

/// Which interface a `PropertiesChanged` is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Iface {
    /// `org.freedesktop.systemd1.Unit`: the states.
    Unit,
    /// The type's interface (`org.freedesktop.systemd1.Service`, …): result, restarts.
    Type,
}

/// The properties of one `PropertiesChanged` the watcher uses, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Update {
    /// Which interface they are of.
    iface: Iface,
    load_state: Option<String>,
    active_state: Option<String>,
    sub_state: Option<String>,
    /// `StateChangeTimestamp`, µs since the epoch (0 from systemd means never).
    state_change_us: Option<u64>,
    result: Option<String>,
    n_restarts: Option<u32>,
}

impl Update {
    fn new(iface: Iface) -> Self {
        Update {
            iface,
            load_state: None,
            active_state: None,
            sub_state: None,
            state_change_us: None,
            result: None,
            n_restarts: None,
        }
    }
}

/// Reads the properties of `kind` from `changed`. A property of the wrong type is left
/// out (logged); a state word that is too long or not a word makes the whole update
/// `Err`.
fn read_update(kind: Iface, changed: &HashMap<&str, Variant<'_>>) -> Result<Update, String> {
    let word = |key: &str| -> Result<Option<String>, String> {
        match changed.get(key) {
            None => Ok(None),
            Some(Variant::Str(s)) if is_state_word(s.as_str()) => Ok(Some(s.as_str().to_string())),
            Some(Variant::Str(s)) => Err(format!(
                "{key} {:?} is not 1 to {MAX_STATE_WORD} characters of a-z, 0-9, '-'",
                s.as_str().chars().take(40).collect::<String>()
            )),
            Some(other) => {
                debug!(
                    key,
                    signature = %other.value_signature(),
                    "unit watcher: property of the wrong type ignored"
                );
                Ok(None)
            }
        }
    };
    let mut u = Update::new(kind);
    match kind {
        Iface::Unit => {
            u.load_state = word("LoadState")?;
            u.active_state = word("ActiveState")?;
            u.sub_state = word("SubState")?;
            u.state_change_us = match changed.get("StateChangeTimestamp") {
                None => None,
                Some(Variant::U64(0)) => None,
                Some(Variant::U64(t)) => Some(*t),
                Some(other) => {
                    debug!(
                        signature = %other.value_signature(),
                        "unit watcher: StateChangeTimestamp of the wrong type ignored"
                    );
                    None
                }
            };
        }
        Iface::Type => {
            u.result = word("Result")?;
            u.n_restarts = match changed.get("NRestarts") {
                None => None,
                Some(Variant::U32(n)) => Some(*n),
                Some(other) => {
                    debug!(
                        signature = %other.value_signature(),
                        "unit watcher: NRestarts of the wrong type ignored"
                    );
                    None
                }
            };
        }
    }
    Ok(u)
}

/// A live state: leaving it for `inactive` is an exit.
fn is_live(active_state: &str) -> bool {
    matches!(
        active_state,
        "active" | "activating" | "deactivating" | "reloading" | "refreshing"
    )
}

/// Whether a sub-state is systemd's way to a restart by `Restart=` (`auto-restart`,
/// and from systemd 254 `auto-restart-queued`, `failed-before-auto-restart`,
/// `dead-before-auto-restart`).
fn is_restart_sub_state(sub_state: &str) -> bool {
    sub_state.starts_with("auto-restart") || sub_state.ends_with("-before-auto-restart")
}

/// How long a failure or exit waits for the signal that says systemd restarts the
/// unit (it enters `failed` or `inactive` and then `auto-restart` at once, one signal
/// after the other); a unit it restarts is reported `Restarted` instead.
pub const SETTLE: Duration = Duration::from_millis(500);

/// What the watcher knows of one unit.
#[derive(Debug, Clone)]
struct Track<P> {
    active_state: String,
    sub_state: String,
    result: String,
    restarts: u32,
    /// `NRestarts` rose; reported with the states of the `Unit` signal that follows.
    pending_restart: bool,
    /// A failure or exit, reported at `.1` unless systemd restarts the unit first.
    ending: Option<(UnitChangeSeen, Instant)>,
    /// Receive positions of the baseline's reads: earlier signals are in them already.
    unit_read_at: P,
    type_read_at: P,
    /// For choosing which unit to forget when full.
    touched: u64,
}

impl<P: Default> Track<P> {
    /// A unit never seen: as systemd loads one, inactive and never restarted.
    fn new() -> Self {
        Track {
            active_state: "inactive".into(),
            sub_state: "dead".into(),
            result: String::new(),
            restarts: 0,
            pending_restart: false,
            ending: None,
            unit_read_at: P::default(),
            type_read_at: P::default(),
            touched: 0,
        }
    }

    fn seen(&self, name: &str, change: UnitChange) -> UnitChangeSeen {
        UnitChangeSeen {
            unit: name.to_string(),
            change,
            active_state: self.active_state.clone(),
            sub_state: self.sub_state.clone(),
            result: self.result.clone(),
            restarts: self.restarts,
        }
    }
}

/// The deciding core: per-unit state in, changes out, no I/O. `P` is a receive
/// position on one connection (`zbus::message::Sequence`), which orders the signals
/// and the baseline's replies; time comes in as `now`.
///
/// Units are forgotten when systemd says they are no longer loaded and dead, or to
/// make room (at most `max`). `UnitRemoved` is not used: systemd sends it for every
/// unit on each daemon-reload, and the restart counts would be lost with them.
#[derive(Debug)]
struct Tracker<P> {
    units: HashMap<String, Track<P>>,
    max: usize,
    tick: u64,
    /// When pending failures and exits are due, in order (an entry may be stale).
    due: VecDeque<(Instant, String)>,
}

impl<P: Copy + Ord + Default> Tracker<P> {
    fn new(max: usize) -> Self {
        Tracker {
            units: HashMap::new(),
            max: max.max(1),
            tick: 0,
            due: VecDeque::new(),
        }
    }

    /// A new connection: positions of the old one mean nothing on it.
    fn new_session(&mut self) {
        for t in self.units.values_mut() {
            t.unit_read_at = P::default();
            t.type_read_at = P::default();
            t.pending_restart = false;
        }
    }

    fn entry(&mut self, unit: &str) -> &mut Track<P> {
        self.tick += 1;
        if !self.units.contains_key(unit) && self.units.len() >= self.max {
            let oldest = self
                .units
                .iter()
                .min_by_key(|(_, t)| t.touched)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                debug!(
                    unit = %k,
                    "unit watcher: too many units; forgetting the least recently changed"
                );
                self.units.remove(&k);
            }
        }
        let tick = self.tick;
        let t = self
            .units
            .entry(unit.to_string())
            .or_insert_with(Track::new);
        t.touched = tick;
        t
    }

    /// The states `ListUnitsByPatterns` gave, received at `at`.
    fn baseline_unit(&mut self, unit: &str, active_state: &str, sub_state: &str, at: P) {
        let t = self.entry(unit);
        t.active_state = active_state.to_string();
        t.sub_state = sub_state.to_string();
        t.unit_read_at = at;
    }

    /// The `NRestarts` read at `at`: what is known, whatever was known before.
    fn baseline_restarts(&mut self, unit: &str, restarts: u32, at: P) {
        let t = self.entry(unit);
        t.restarts = restarts;
        t.pending_restart = false;
        t.type_read_at = at;
    }

    /// When the next pending failure or exit is due.
    fn next_due(&self) -> Option<Instant> {
        self.due.front().map(|(at, _)| *at)
    }

    /// The failures and exits due by `now` (no restart followed them).
    fn take_due(&mut self, now: Instant) -> Vec<UnitChangeSeen> {
        let mut out = Vec::new();
        while let Some((at, _)) = self.due.front() {
            if *at > now {
                break;
            }
            let Some((_, unit)) = self.due.pop_front() else {
                break;
            };
            if let Some(t) = self.units.get_mut(&unit)
                && t.ending.as_ref().is_some_and(|(_, due)| *due <= now)
                && let Some((seen, _)) = t.ending.take()
            {
                out.push(seen);
            }
        }
        out
    }

    /// Every pending failure and exit, now (the connection is gone).
    fn take_all(&mut self) -> Vec<UnitChangeSeen> {
        self.due.clear();
        self.units
            .values_mut()
            .filter_map(|t| t.ending.take().map(|(seen, _)| seen))
            .collect()
    }

    /// Applies `update` of `unit` (whose events are named `name`) received at `at` and
    /// `now`; `quiet(timestamp)` says whether the agent was running a job on it then.
    /// Failures and exits come later, from [`Tracker::take_due`], unless systemd
    /// restarts the unit at once.
    fn apply(
        &mut self,
        unit: &str,
        name: &str,
        update: &Update,
        at: P,
        now: Instant,
        quiet: impl FnOnce(Option<u64>) -> bool,
    ) -> Vec<UnitChangeSeen> {
        let mut out = Vec::new();
        let t = self.entry(unit);
        match update.iface {
            Iface::Type => {
                if at < t.type_read_at {
                    return out;
                }
                // A rise whose Unit signal never came: reported with what is known.
                if t.pending_restart {
                    out.push(t.seen(name, UnitChange::Restarted));
                    t.pending_restart = false;
                }
                if let Some(r) = &update.result {
                    t.result.clone_from(r);
                }
                if let Some(n) = update.n_restarts {
                    // Lower: reset or reloaded; the new baseline.
                    t.pending_restart = n > t.restarts;
                    t.restarts = n;
                }
            }
            Iface::Unit => {
                if at < t.unit_read_at {
                    return out;
                }
                let before = t.active_state.clone();
                let before_sub = std::mem::take(&mut t.sub_state);
                if let Some(a) = &update.active_state {
                    t.active_state.clone_from(a);
                }
                t.sub_state = update.sub_state.clone().unwrap_or(before_sub.clone());
                // A pending failure or exit: systemd restarting the unit cancels it;
                // any other new state reports it first. (systemd sends each change
                // twice at times: the same state again keeps it pending.)
                if t.active_state != before || t.sub_state != before_sub {
                    if is_restart_sub_state(&t.sub_state) {
                        t.ending = None;
                    } else if let Some((seen, _)) = t.ending.take() {
                        out.push(seen);
                    }
                }
                if t.pending_restart {
                    out.push(t.seen(name, UnitChange::Restarted));
                    t.pending_restart = false;
                }
                let now_state = t.active_state.as_str();
                let change = if now_state == before || is_restart_sub_state(&t.sub_state) {
                    None
                } else if now_state == "failed" {
                    Some(UnitChange::Failed)
                } else if now_state == "inactive"
                    && is_live(&before)
                    && !is_restart_sub_state(&before_sub)
                {
                    Some(UnitChange::Exited)
                } else {
                    None
                };
                if let Some(change) = change {
                    if quiet(update.state_change_us) {
                        debug!(
                            unit,
                            change = change.as_str(),
                            "unit watcher: change made by the agent's own job; not reported"
                        );
                    } else {
                        let due = now + SETTLE;
                        t.ending = Some((t.seen(name, change), due));
                        self.due.push_back((due, unit.to_string()));
                    }
                }
                let t_dead = self
                    .units
                    .get(unit)
                    .is_some_and(|t| matches!(t.active_state.as_str(), "inactive" | "failed"));
                if t_dead && update.load_state.as_deref().is_some_and(|l| l != "loaded") {
                    // Gone for good: what is pending is told now.
                    if let Some((seen, _)) = self.units.remove(unit).and_then(|t| t.ending) {
                        out.push(seen);
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// systemd's bus_label_escape.
    fn escape(name: &str) -> String {
        let mut s = String::new();
        for (i, c) in name.bytes().enumerate() {
            if c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()) {
                s.push(c as char);
            } else {
                s.push_str(&format!("_{c:02x}"));
            }
        }
        s
    }

    #[test]
    fn unit_labels_unescape_as_systemd_escapes_them() {
        for name in [
            "gearmq-web.service",
            "nginx.service",
            "getty@tty1.service",
            "1password.service",
            "dev-disk-by\\x2duuid.device",
            "a_b:c.service",
        ] {
            let label = escape(name);
            assert_eq!(unit_from_label(&label).as_deref(), Some(name), "{label}");
        }
        assert_eq!(
            unit_from_label("gearmq_2dweb_2eservice").as_deref(),
            Some("gearmq-web.service")
        );
    }

    #[test]
    fn malformed_unit_labels_are_rejected() {
        for label in [
            "",
            "_",
            "_2",
            "abc_",
            "abc_2",
            "abc_zz",
            "abc_2E",  // systemd writes lowercase hex
            "abc_41",  // 'A' is never escaped
            "abc_30x", // a digit after the first is never escaped
            "1abc",    // a leading digit always is
            "ab-c",    // '-' is always escaped
            "ab/c",    // one path element
            "ab.c",
            "gearmq_2fweb", // '/' is no unit name character
            "gearmq_00web",
            "gearmq_ffweb",
            "ünit",
        ] {
            assert_eq!(unit_from_label(label), None, "{label:?}");
        }
        assert_eq!(unit_from_label(&"a".repeat(256)), None);
        assert!(unit_from_label(&"a".repeat(255)).is_some());
        assert_eq!(unit_from_label(&"a_2d".repeat(200)), None);
    }

    #[test]
    fn random_labels_never_panic_and_round_trip_when_accepted() {
        use rand::Rng;
        let mut rng = rand::rng();
        let alphabet = b"_0123456789abcdefABCDEF-./\\@:xyz\xc3\xbc";
        for _ in 0..20_000 {
            let len = rng.random_range(0..24);
            let bytes: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect();
            let Ok(label) = std::str::from_utf8(&bytes) else {
                continue;
            };
            if let Some(name) = unit_from_label(label) {
                assert_eq!(escape(&name), label);
            }
        }
    }

    fn props(
        pairs: &[(&'static str, Variant<'static>)],
    ) -> HashMap<&'static str, Variant<'static>> {
        pairs.iter().cloned().collect()
    }

    #[test]
    fn updates_check_types_and_bound_words() {
        let unit = props(&[
            ("ActiveState", Variant::from("failed")),
            ("SubState", Variant::from("failed")),
            ("LoadState", Variant::from("loaded")),
            ("StateChangeTimestamp", Variant::U64(7)),
            ("Description", Variant::from("whatever it says")),
        ]);
        let u = read_update(Iface::Unit, &unit).unwrap();
        assert_eq!(u.active_state.as_deref(), Some("failed"));
        assert_eq!(u.state_change_us, Some(7));
        assert_eq!(u.n_restarts, None);

        // Wrong types: left out, the rest kept.
        let wrong = props(&[
            ("ActiveState", Variant::U32(1)),
            ("SubState", Variant::from("dead")),
            ("StateChangeTimestamp", Variant::from("soon")),
        ]);
        let u = read_update(Iface::Unit, &wrong).unwrap();
        assert_eq!(u.active_state, None);
        assert_eq!(u.sub_state.as_deref(), Some("dead"));
        assert_eq!(u.state_change_us, None);
        let wrong = props(&[
            ("NRestarts", Variant::I32(3)),
            ("Result", Variant::from("signal")),
        ]);
        let u = read_update(Iface::Type, &wrong).unwrap();
        assert_eq!((u.n_restarts, u.result.as_deref()), (None, Some("signal")));

        // Too long or not a word: the whole update is ignored.
        let long = "a".repeat(MAX_STATE_WORD + 1);
        for bad in [long.as_str(), "", "Failed", "fail ed", "fäiled"] {
            let v = props(&[("ActiveState", Variant::from(bad.to_string()))]);
            assert!(read_update(Iface::Unit, &v).is_err(), "{bad:?}");
            let v = props(&[
                ("Result", Variant::from(bad.to_string())),
                ("NRestarts", Variant::U32(1)),
            ]);
            assert!(read_update(Iface::Type, &v).is_err(), "{bad:?}");
        }
        let max = "a".repeat(MAX_STATE_WORD);
        let v = props(&[("ActiveState", Variant::from(max))]);
        assert!(read_update(Iface::Unit, &v).is_ok());
    }

    fn unit_update(active: &str, sub: &str) -> Update {
        Update {
            load_state: Some("loaded".into()),
            active_state: Some(active.into()),
            sub_state: Some(sub.into()),
            ..Update::new(Iface::Unit)
        }
    }

    fn type_update(result: &str, restarts: u32) -> Update {
        Update {
            result: Some(result.into()),
            n_restarts: Some(restarts),
            ..Update::new(Iface::Type)
        }
    }

    type Seen = (UnitChange, u32, String);

    fn short(v: Vec<UnitChangeSeen>) -> Vec<Seen> {
        v.into_iter()
            .map(|c| {
                let states = format!("{}/{}/{}", c.active_state, c.sub_state, c.result);
                (c.change, c.restarts, states)
            })
            .collect()
    }

    /// Feeds signals as systemd sends them; positions count up from 10, time moves
    /// only when told.
    struct Feed {
        tracker: Tracker<u64>,
        at: u64,
        now: Instant,
        quiet: bool,
    }

    impl Feed {
        fn new() -> Self {
            Feed {
                tracker: Tracker::new(MAX_UNITS),
                at: 10,
                now: Instant::now(),
                quiet: false,
            }
        }

        fn send(&mut self, unit: &str, update: Update) -> Vec<UnitChangeSeen> {
            self.at += 1;
            let quiet = self.quiet;
            self.tracker
                .apply(unit, unit, &update, self.at, self.now, |_| quiet)
        }

        /// A change: the type's signal, then the unit's; what they report at once.
        fn change(
            &mut self,
            unit: &str,
            result: &str,
            restarts: u32,
            active: &str,
            sub: &str,
        ) -> Vec<Seen> {
            let mut v = self.send(unit, type_update(result, restarts));
            v.extend(self.send(unit, unit_update(active, sub)));
            short(v)
        }

        /// Lets `d` pass; what became due.
        fn wait(&mut self, d: Duration) -> Vec<Seen> {
            self.now += d;
            short(self.tracker.take_due(self.now))
        }

        /// Lets the settling time pass; what became due.
        fn settle(&mut self) -> Vec<Seen> {
            self.wait(SETTLE)
        }
    }

    fn seen(change: UnitChange, restarts: u32, states: &str) -> Vec<Seen> {
        vec![(change, restarts, states.to_string())]
    }

    #[test]
    fn a_failure_is_reported_once_it_settles() {
        let mut f = Feed::new();
        assert_eq!(f.change("a", "success", 0, "activating", "start"), vec![]);
        assert_eq!(f.change("a", "success", 0, "active", "running"), vec![]);
        assert_eq!(f.change("a", "exit-code", 0, "failed", "failed"), vec![]);
        // systemd repeats a change at times: still one failure.
        assert_eq!(f.change("a", "exit-code", 0, "failed", "failed"), vec![]);
        assert_eq!(f.wait(SETTLE / 2), vec![]);
        assert_eq!(
            f.settle(),
            seen(UnitChange::Failed, 0, "failed/failed/exit-code")
        );
        assert_eq!(f.settle(), vec![]);
        assert_eq!(f.tracker.next_due(), None);
        // failed -> failed again (a reload resends the state) is nothing new.
        assert_eq!(f.change("a", "exit-code", 0, "failed", "failed"), vec![]);
        assert_eq!(f.settle(), vec![]);
    }

    #[test]
    fn an_exit_is_reported_and_a_new_state_reports_it_at_once() {
        let mut f = Feed::new();
        assert_eq!(f.change("b", "success", 0, "active", "running"), vec![]);
        assert_eq!(f.change("b", "success", 0, "inactive", "dead"), vec![]);
        assert_eq!(
            f.settle(),
            seen(UnitChange::Exited, 0, "inactive/dead/success")
        );
        assert_eq!(f.change("b", "success", 0, "inactive", "dead"), vec![]);
        assert_eq!(f.settle(), vec![]);
        // Started again before the exit settled: the exit is told then.
        assert_eq!(f.change("b", "success", 0, "active", "running"), vec![]);
        assert_eq!(f.change("b", "success", 0, "inactive", "dead"), vec![]);
        assert_eq!(
            f.change("b", "success", 0, "activating", "start"),
            seen(UnitChange::Exited, 0, "inactive/dead/success")
        );
        assert_eq!(f.settle(), vec![]);
    }

    #[test]
    fn a_unit_systemd_restarts_is_restarted_not_failed_or_exited() {
        // As systemd 252 sends it: failed, then auto-restart; NRestarts rises when the
        // restart job is queued; the job passes through inactive.
        let mut f = Feed::new();
        assert_eq!(f.change("c", "success", 0, "active", "running"), vec![]);
        for n in 1..=3 {
            assert_eq!(
                f.change("c", "exit-code", n - 1, "failed", "failed"),
                vec![]
            );
            assert_eq!(
                f.change("c", "exit-code", n - 1, "activating", "auto-restart"),
                vec![]
            );
            assert_eq!(f.settle(), vec![]);
            assert_eq!(
                f.change("c", "exit-code", n, "activating", "auto-restart"),
                seen(
                    UnitChange::Restarted,
                    n,
                    "activating/auto-restart/exit-code"
                )
            );
            assert_eq!(f.change("c", "success", n, "inactive", "dead"), vec![]);
            assert_eq!(f.change("c", "success", n, "active", "running"), vec![]);
            assert_eq!(f.settle(), vec![]);
        }
        // Restart=always after a clean exit: inactive, then auto-restart.
        assert_eq!(f.change("c", "success", 3, "inactive", "dead"), vec![]);
        assert_eq!(
            f.change("c", "success", 3, "activating", "auto-restart"),
            vec![]
        );
        assert_eq!(f.settle(), vec![]);
        // systemd 254 and later name the passing states.
        assert_eq!(
            f.change("c", "exit-code", 3, "failed", "failed-before-auto-restart"),
            vec![]
        );
        assert_eq!(f.settle(), vec![]);
        // A lower count is a reset: the new baseline, and rises count from it.
        assert_eq!(f.change("c", "success", 0, "active", "running"), vec![]);
        assert_eq!(
            f.change("c", "exit-code", 1, "activating", "auto-restart"),
            seen(
                UnitChange::Restarted,
                1,
                "activating/auto-restart/exit-code"
            )
        );
    }

    #[test]
    fn a_unit_never_seen_starts_inactive_with_no_restarts() {
        let mut f = Feed::new();
        assert_eq!(f.change("new", "exit-code", 0, "failed", "failed"), vec![]);
        assert_eq!(
            f.settle(),
            seen(UnitChange::Failed, 0, "failed/failed/exit-code")
        );
        // Inactive to inactive: no exit.
        assert_eq!(f.change("other", "success", 0, "inactive", "dead"), vec![]);
        assert_eq!(f.settle(), vec![]);
        assert_eq!(
            f.change("third", "exit-code", 1, "activating", "auto-restart"),
            seen(
                UnitChange::Restarted,
                1,
                "activating/auto-restart/exit-code"
            )
        );
    }

    #[test]
    fn quiet_units_do_not_fail_or_exit_but_still_restart() {
        let mut f = Feed::new();
        f.change("a", "success", 0, "active", "running");
        f.quiet = true;
        f.change("a", "success", 0, "inactive", "dead");
        f.change("a", "exit-code", 0, "failed", "failed");
        assert_eq!(f.settle(), vec![]);
        assert_eq!(
            f.change("a", "exit-code", 1, "activating", "auto-restart"),
            seen(
                UnitChange::Restarted,
                1,
                "activating/auto-restart/exit-code"
            )
        );
        f.quiet = false;
        f.change("a", "success", 1, "active", "running");
        f.change("a", "success", 1, "inactive", "dead");
        assert_eq!(
            f.settle(),
            seen(UnitChange::Exited, 1, "inactive/dead/success")
        );
    }

    #[test]
    fn the_baseline_hides_old_restarts_and_signals_it_already_holds() {
        let now = Instant::now();
        let mut t: Tracker<u64> = Tracker::new(16);
        let no = |_| false;
        // A signal received before the baseline's reply (position 5 < 8) is in it.
        t.baseline_unit("a", "active", "running", 6);
        t.baseline_restarts("a", 7, 8);
        let ty = |r, n| type_update(r, n);
        assert!(
            t.apply("a", "a", &ty("exit-code", 7), 5, now, no)
                .is_empty()
        );
        let u = unit_update("failed", "failed");
        assert!(t.apply("a", "a", &u, 5, now, no).is_empty());
        assert_eq!(t.next_due(), None);
        // The same count after the baseline is no restart; a higher one is.
        assert!(t.apply("a", "a", &ty("success", 7), 9, now, no).is_empty());
        let u = unit_update("active", "running");
        assert!(t.apply("a", "a", &u, 10, now, no).is_empty());
        t.apply("a", "a", &ty("exit-code", 8), 11, now, no);
        let u = unit_update("activating", "auto-restart");
        let v = t.apply("a", "a", &u, 12, now, no);
        assert_eq!(
            short(v),
            seen(
                UnitChange::Restarted,
                8,
                "activating/auto-restart/exit-code"
            )
        );

        // A failure after the baseline's read (position 20 > 18) is reported.
        t.baseline_unit("b", "active", "running", 18);
        let u = unit_update("failed", "failed");
        assert!(t.apply("b", "b", &u, 20, now, no).is_empty());
        assert_eq!(t.take_due(now + SETTLE).len(), 1);

        // A new session resets positions: old ones compare as nothing.
        t.new_session();
        assert!(
            t.apply("a", "a", &ty("exit-code", 9), 1, now, no)
                .is_empty()
        );
        let u = unit_update("activating", "auto-restart");
        let v = t.apply("a", "a", &u, 2, now, no);
        assert_eq!(v[0].restarts, 9);
    }

    #[test]
    fn a_restart_without_its_unit_signal_is_still_reported() {
        let now = Instant::now();
        let mut t: Tracker<u64> = Tracker::new(16);
        let u = type_update("exit-code", 1);
        assert!(t.apply("a", "a", &u, 1, now, |_| false).is_empty());
        let v = t.apply("a", "a", &u, 2, now, |_| false);
        assert_eq!((v[0].change, v[0].restarts), (UnitChange::Restarted, 1));
    }

    #[test]
    fn the_unit_map_stays_bounded() {
        let now = Instant::now();
        let mut t: Tracker<u64> = Tracker::new(4);
        let u = unit_update("active", "running");
        for i in 0..100u64 {
            let name = format!("u{i}");
            t.apply(&name, &name, &u, i, now, |_| false);
            assert!(t.units.len() <= 4);
        }
        // The most recently changed are kept.
        assert!(t.units.contains_key("u99") && t.units.contains_key("u96"));
        assert!(!t.units.contains_key("u95"));
    }

    #[test]
    fn unloaded_dead_units_are_forgotten_and_their_change_told() {
        let now = Instant::now();
        let mut t: Tracker<u64> = Tracker::new(16);
        t.apply("a", "a", &unit_update("active", "running"), 1, now, |_| {
            false
        });
        // Its file deleted and the manager reloaded, still running: kept.
        let mut u = unit_update("active", "running");
        u.load_state = Some("not-found".into());
        t.apply("a", "a", &u, 2, now, |_| false);
        assert!(t.units.contains_key("a"));
        let mut u = unit_update("inactive", "dead");
        u.load_state = Some("not-found".into());
        let v = t.apply("a", "a", &u, 3, now, |_| false);
        assert_eq!(v[0].change, UnitChange::Exited);
        assert!(!t.units.contains_key("a"));
        assert!(t.take_due(now + SETTLE).is_empty());
    }

    #[test]
    fn pending_changes_are_told_when_the_connection_goes() {
        let now = Instant::now();
        let mut t: Tracker<u64> = Tracker::new(16);
        t.apply("a", "a", &unit_update("failed", "failed"), 1, now, |_| {
            false
        });
        let v = t.take_all();
        assert_eq!(v.len(), 1);
        assert_eq!(t.next_due(), None);
        assert!(t.take_due(now + SETTLE).is_empty());
    }

    #[test]
    fn quiet_covers_changes_stamped_while_held() {
        let q = Quiet::new();
        let before = now_us();
        std::thread::sleep(Duration::from_millis(2));
        assert!(!q.covers("a.service", Some(before)));
        let g = q.quiet("a.service");
        let during = now_us();
        assert!(q.covers("a.service", Some(during)));
        assert!(q.covers("a.service", None));
        assert!(
            !q.covers("a.service", Some(before)),
            "a change before the job is not the agent's"
        );
        assert!(!q.covers("b.service", Some(during)));
        // Two holders: quiet until both are gone.
        let g2 = q.quiet("a.service");
        drop(g);
        assert!(q.covers("a.service", Some(now_us())));
        drop(g2);
        std::thread::sleep(Duration::from_millis(2));
        let after = now_us();
        // Read late, a change made during the job is still the agent's; one after is not.
        assert!(q.covers("a.service", Some(during)));
        assert!(!q.covers("a.service", Some(after)));
        // Without a timestamp: only shortly after.
        assert!(q.covers("a.service", None));
    }
}
