//! systemd over D-Bus (zbus, typed `zbus_systemd` proxies): never `systemctl`.
//!
//! The connection is made lazily, on the first action that needs it, and made again
//! by a later action after it breaks, so the agent starts and answers `ping` where no
//! systemd bus exists. Jobs are waited for the race-free way: subscribe and open the
//! `JobRemoved` stream before asking for the job, then match the returned job path.

pub mod cgroup;
pub mod render;

use crate::config::{BusKind, SystemdSettings};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use std::time::Duration;
use zbus_systemd::systemd1::{ManagerProxy, ServiceProxy, UnitProxy};
use zbus_systemd::zbus::{self, Connection, proxy::CacheProperties};

/// How long connecting to the bus (socket, authentication, Hello) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a systemd operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// No connection to the manager could be made.
    #[error("systemd is not reachable on {bus}: {reason}")]
    Unavailable {
        /// Which bus, with its address.
        bus: String,
        /// Why.
        reason: String,
    },
    /// A D-Bus call failed.
    #[error("systemd {what} failed: {reason}")]
    Call {
        /// What was asked (`StartUnit gearmq-web.service`).
        what: String,
        /// systemd's or the bus's message.
        reason: String,
    },
    /// The job ran but did not succeed.
    #[error("systemd {verb} job for {unit} ended with result {result:?}")]
    JobFailed {
        /// start, stop or restart.
        verb: &'static str,
        /// The unit file name.
        unit: String,
        /// systemd's job result (`failed`, `timeout`, `dependency`, …).
        result: String,
    },
    /// The job did not finish in time.
    #[error("systemd {verb} job for {unit} did not finish within {}", humantime::format_duration(*.after))]
    JobTimeout {
        /// start, stop or restart.
        verb: &'static str,
        /// The unit file name.
        unit: String,
        /// The limit.
        after: Duration,
    },
}

/// A job the agent asks systemd for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// StartUnit.
    Start,
    /// StopUnit.
    Stop,
    /// RestartUnit.
    Restart,
    /// ReloadUnit (the unit's `ExecReload=`; its main process stays).
    Reload,
}

impl Job {
    /// The job as a verb, for messages (`start`).
    pub fn verb(self) -> &'static str {
        match self {
            Job::Start => "start",
            Job::Stop => "stop",
            Job::Restart => "restart",
            Job::Reload => "reload",
        }
    }
}

/// A unit's state as read from systemd, before it becomes a wire `UnitState`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitProps {
    /// LoadState.
    pub load_state: String,
    /// ActiveState.
    pub active_state: String,
    /// SubState.
    pub sub_state: String,
    /// MainPID (0: none).
    pub main_pid: u32,
    /// ActiveEnterTimestamp in µs since the epoch (0: never).
    pub active_enter_us: u64,
    /// MemoryCurrent in bytes (`u64::MAX`: not known).
    pub memory_current: u64,
    /// NRestarts.
    pub n_restarts: u32,
    /// UnitFileState (enabled, disabled, static, …; empty when not known).
    pub unit_file_state: String,
}

impl UnitProps {
    /// Running or on its way there: starting it again would change nothing.
    pub fn is_active(&self) -> bool {
        matches!(
            self.active_state.as_str(),
            "active" | "activating" | "reloading" | "refreshing"
        )
    }
}

/// The agent's link to one systemd manager.
#[derive(Debug)]
pub struct Systemd {
    bus: BusKind,
    address: Option<String>,
    job_timeout: Duration,
    conn: tokio::sync::Mutex<Option<Connection>>,
    quiet: crate::unit_watch::Quiet,
}

/// Where unit jobs go: [`Systemd`] (the manager over D-Bus) in the agent and in
/// `gearmq local`; the scale emulator has a no-op one of its own. Actions see only this.
pub trait UnitBackend: Send + Sync + std::fmt::Debug {
    /// What this is, for messages: `the user bus at unix:path=/run/user/1000/bus`.
    fn describe(&self) -> String;
    /// Checks the manager answers (connecting if needed).
    fn ensure_connected(&self) -> BoxFuture<'_, Result<(), SystemdError>>;
    /// daemon-reload: the manager rereads unit files; returns once it has.
    fn reload(&self) -> BoxFuture<'_, Result<(), SystemdError>>;
    /// The state of unit file `unit` (e.g. `gearmq-web.service`), loading it if needed.
    fn unit_props<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<UnitProps, SystemdError>>;
    /// Runs `job` on `unit` and waits for it to finish successfully.
    fn run_job<'a>(&'a self, job: Job, unit: &'a str) -> BoxFuture<'a, Result<(), SystemdError>>;
    /// Forgets a failed state of `unit` (best effort).
    fn reset_failed<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, ()>;
    /// Whether `unit` can reload (it has an `ExecReload=`).
    fn can_reload<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<bool, SystemdError>>;
    /// Enables `unit` (its `[Install]` section: started at boot) and reloads; whether
    /// anything changed.
    fn enable<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<bool, SystemdError>>;
    /// Disables `unit` and reloads; whether anything changed.
    fn disable<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<bool, SystemdError>>;
    /// The manager's own control group (`""` for the root), to see which cgroup
    /// controllers its units get.
    fn manager_cgroup(&self) -> BoxFuture<'_, Result<String, SystemdError>>;
}

impl UnitBackend for Systemd {
    fn describe(&self) -> String {
        Systemd::describe(self)
    }
    fn ensure_connected(&self) -> BoxFuture<'_, Result<(), SystemdError>> {
        Box::pin(Systemd::ensure_connected(self))
    }
    fn reload(&self) -> BoxFuture<'_, Result<(), SystemdError>> {
        Box::pin(Systemd::reload(self))
    }
    fn unit_props<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<UnitProps, SystemdError>> {
        Box::pin(Systemd::unit_props(self, unit))
    }
    fn run_job<'a>(&'a self, job: Job, unit: &'a str) -> BoxFuture<'a, Result<(), SystemdError>> {
        Box::pin(Systemd::run_job(self, job, unit))
    }
    fn reset_failed<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(Systemd::reset_failed(self, unit))
    }
    fn can_reload<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<bool, SystemdError>> {
        Box::pin(Systemd::can_reload(self, unit))
    }
    fn enable<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<bool, SystemdError>> {
        Box::pin(Systemd::enable(self, unit))
    }
    fn disable<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<bool, SystemdError>> {
        Box::pin(Systemd::disable(self, unit))
    }
    fn manager_cgroup(&self) -> BoxFuture<'_, Result<String, SystemdError>> {
        Box::pin(Systemd::manager_cgroup(self))
    }
}

impl Systemd {
    /// A client for the manager `settings` name; nothing is connected yet. Jobs are
    /// waited for up to `job_timeout`.
    pub fn new(settings: &SystemdSettings, job_timeout: Duration) -> Self {
        Systemd {
            bus: settings.bus,
            address: settings.address.clone(),
            job_timeout,
            conn: tokio::sync::Mutex::new(None),
            quiet: crate::unit_watch::Quiet::new(),
        }
    }

    /// The same client, marking the units it stops, restarts or reloads in `quiet`
    /// while the job runs, so the unit watcher does not report them as failed or exited.
    pub fn with_quiet(mut self, quiet: crate::unit_watch::Quiet) -> Self {
        self.quiet = quiet;
        self
    }

    /// The bus, for messages: `the user bus at unix:path=/run/user/1000/bus`.
    pub fn describe(&self) -> String {
        match &self.address {
            Some(a) => format!("the {} bus at {a}", self.bus.as_str()),
            None => format!("the {} bus", self.bus.as_str()),
        }
    }

    async fn connection(&self) -> Result<Connection, SystemdError> {
        let mut cached = self.conn.lock().await;
        if let Some(c) = cached.as_ref() {
            return Ok(c.clone());
        }
        let unavailable = |reason: String| SystemdError::Unavailable {
            bus: self.describe(),
            reason,
        };
        let builder = match (&self.address, self.bus) {
            (Some(a), _) => zbus::connection::Builder::address(a.as_str()),
            (None, BusKind::System) => zbus::connection::Builder::system(),
            (None, BusKind::User) => {
                return Err(unavailable(
                    "no address: set systemd.address, DBUS_SESSION_BUS_ADDRESS or XDG_RUNTIME_DIR"
                        .into(),
                ));
            }
        };
        let conn = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            builder.method_timeout(self.job_timeout).build(),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(unavailable(e.to_string())),
            Err(_) => {
                return Err(unavailable(format!(
                    "no answer within {}",
                    humantime::format_duration(CONNECT_TIMEOUT)
                )));
            }
        };
        // Ask for job signals once per connection; JobRemoved is only sent to
        // subscribed clients.
        let manager = manager(&conn)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        manager
            .subscribe()
            .await
            .map_err(|e| unavailable(format!("Subscribe: {e}")))?;
        *cached = Some(conn.clone());
        Ok(conn)
    }

    /// Turns a zbus error into ours; a broken connection is dropped so the next
    /// action connects again.
    async fn call_failed(&self, what: String, e: zbus::Error) -> SystemdError {
        if !matches!(e, zbus::Error::MethodError(..) | zbus::Error::FDO(_)) {
            *self.conn.lock().await = None;
        }
        SystemdError::Call {
            what,
            reason: e.to_string(),
        }
    }

    /// Checks the manager answers (connecting if needed).
    pub async fn ensure_connected(&self) -> Result<(), SystemdError> {
        self.connection().await.map(|_| ())
    }

    /// daemon-reload: systemd rereads unit files; returns once it has.
    pub async fn reload(&self) -> Result<(), SystemdError> {
        let conn = self.connection().await?;
        let result = async { manager(&conn).await?.reload().await }.await;
        match result {
            Ok(()) => Ok(()),
            Err(e) => Err(self.call_failed("Reload".into(), e).await),
        }
    }

    /// The state of unit file `unit` (e.g. `gearmq-web.service`), loading it if needed.
    pub async fn unit_props(&self, unit: &str) -> Result<UnitProps, SystemdError> {
        let conn = self.connection().await?;
        match read_props(&conn, unit).await {
            Ok(p) => Ok(p),
            Err(e) => Err(self.call_failed(format!("reading {unit}"), e).await),
        }
    }

    /// Runs `job` on `unit` and waits for it to finish successfully.
    pub async fn run_job(&self, job: Job, unit: &str) -> Result<(), SystemdError> {
        // Taken before the job is asked for and held until it is over: the state changes
        // a stop, restart or reload makes are the agent's, not news. A start is not
        // quiet: a program that fails as it starts is reported.
        let _quiet = (job != Job::Start).then(|| self.quiet.quiet(unit));
        let conn = self.connection().await?;
        let what = format!("{} {unit}", job.verb());
        let manager = match manager(&conn).await {
            Ok(m) => m,
            Err(e) => return Err(self.call_failed(what, e).await),
        };
        // The stream exists before the job does, so its JobRemoved cannot be missed.
        let mut removed = match manager.receive_job_removed().await {
            Ok(s) => s,
            Err(e) => return Err(self.call_failed(what, e).await),
        };
        let name = unit.to_string();
        let mode = "replace".to_string();
        let asked = match job {
            Job::Start => manager.start_unit(name, mode).await,
            Job::Stop => manager.stop_unit(name, mode).await,
            Job::Restart => manager.restart_unit(name, mode).await,
            Job::Reload => manager.reload_unit(name, mode).await,
        };
        let job_path = match asked {
            Ok(p) => p,
            Err(e) => return Err(self.call_failed(what, e).await),
        };
        let wait = async {
            while let Some(signal) = removed.next().await {
                let Ok(args) = signal.args() else { continue };
                if args.job.as_str() == job_path.as_str() {
                    return Some(args.result.clone());
                }
            }
            None
        };
        match tokio::time::timeout(self.job_timeout, wait).await {
            Ok(Some(result)) if result == "done" => Ok(()),
            Ok(Some(result)) => Err(SystemdError::JobFailed {
                verb: job.verb(),
                unit: unit.to_string(),
                result,
            }),
            Ok(None) => {
                *self.conn.lock().await = None;
                Err(SystemdError::Call {
                    what,
                    reason: "the bus connection closed while waiting for the job".into(),
                })
            }
            Err(_) => Err(SystemdError::JobTimeout {
                verb: job.verb(),
                unit: unit.to_string(),
                after: self.job_timeout,
            }),
        }
    }

    /// Forgets a failed state of `unit` (best effort: a unit that is not failed or no
    /// longer loaded is fine).
    pub async fn reset_failed(&self, unit: &str) {
        if let Ok(conn) = self.connection().await
            && let Ok(m) = manager(&conn).await
        {
            let _ = m.reset_failed_unit(unit.to_string()).await;
        }
    }

    /// Whether `unit` can reload (its `CanReload` property).
    pub async fn can_reload(&self, unit: &str) -> Result<bool, SystemdError> {
        let conn = self.connection().await?;
        let result = async {
            let path = manager(&conn).await?.load_unit(unit.to_string()).await?;
            UnitProxy::builder(&conn)
                .path(path)
                .cache_properties(CacheProperties::No)
                .build()
                .await?
                .can_reload()
                .await
        }
        .await;
        match result {
            Ok(b) => Ok(b),
            Err(e) => Err(self.call_failed(format!("reading {unit}"), e).await),
        }
    }

    /// Enables unit file `unit` (`EnableUnitFiles`, not runtime, forcing links that
    /// point elsewhere) and reloads; whether any link changed.
    pub async fn enable(&self, unit: &str) -> Result<bool, SystemdError> {
        let conn = self.connection().await?;
        let result = async {
            manager(&conn)
                .await?
                .enable_unit_files(vec![unit.to_string()], false, true)
                .await
        }
        .await;
        let changed = match result {
            Ok((_, changes)) => !changes.is_empty(),
            Err(e) => return Err(self.call_failed(format!("enabling {unit}"), e).await),
        };
        self.reload().await?;
        Ok(changed)
    }

    /// Disables unit file `unit` (`DisableUnitFiles`, not runtime) and reloads;
    /// whether any link changed.
    pub async fn disable(&self, unit: &str) -> Result<bool, SystemdError> {
        let conn = self.connection().await?;
        let result = async {
            manager(&conn)
                .await?
                .disable_unit_files(vec![unit.to_string()], false)
                .await
        }
        .await;
        let changed = match result {
            Ok(changes) => !changes.is_empty(),
            Err(e) => return Err(self.call_failed(format!("disabling {unit}"), e).await),
        };
        self.reload().await?;
        Ok(changed)
    }

    /// The manager's own control group (`""` for the root), to see which cgroup
    /// controllers its units get.
    pub async fn manager_cgroup(&self) -> Result<String, SystemdError> {
        let conn = self.connection().await?;
        let result = async { manager(&conn).await?.control_group().await }.await;
        match result {
            Ok(cg) => Ok(cg),
            Err(e) => Err(self.call_failed("reading ControlGroup".into(), e).await),
        }
    }
}

async fn manager(conn: &Connection) -> zbus::Result<ManagerProxy<'static>> {
    ManagerProxy::builder(conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await
}

async fn read_props(conn: &Connection, unit: &str) -> zbus::Result<UnitProps> {
    let path = manager(conn).await?.load_unit(unit.to_string()).await?;
    // No property caching: several properties never announce changes.
    let u = UnitProxy::builder(conn)
        .path(path.clone())
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let mut props = UnitProps {
        load_state: u.load_state().await?,
        active_state: u.active_state().await?,
        sub_state: u.sub_state().await?,
        main_pid: 0,
        active_enter_us: u.active_enter_timestamp().await?,
        memory_current: u64::MAX,
        n_restarts: 0,
        unit_file_state: u.unit_file_state().await.unwrap_or_default(),
    };
    if props.load_state == "loaded" {
        let s = ServiceProxy::builder(conn)
            .path(path)
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        props.main_pid = s.main_pid().await?;
        props.memory_current = s.memory_current().await?;
        props.n_restarts = s.n_restarts().await?;
    }
    Ok(props)
}
