//! One file per action, each with typed arguments and a typed result.
//!
//! An action implements [`Action`]; the dispatcher decodes its arguments strictly,
//! runs it under the action timeout and encodes its result. Adding an action is a new
//! file here plus one variant and two match arms in `dispatch.rs`.
//!
//! Actions that change a unit take the unit's lock, write an intent record before
//! acting ([`ActionContext::record_intent`]) and, when the same request comes back
//! after a crash, start from the recorded before-state
//! ([`ActionContext::previous_intent`]) so that an effect is not applied twice.

pub mod cancel;
pub mod delete;
pub mod facts;
pub mod install;
pub mod list;
pub mod logs;
pub mod ping;
pub mod restart;
pub mod revocation;
pub mod start;
pub mod stats;
pub mod status;
pub mod stop;

use crate::config::{BusKind, Limits, SystemdSettings};
use crate::records::{Before, Desired, Intent, RecordError, Records};
use crate::revocation::Revocations;
use crate::stats::Stats;
use crate::streams::Streams;
use crate::systemd::render::RunAs;
use crate::systemd::{Systemd, SystemdError, UnitProps, cgroup};
use crate::unit_files::{UnitFileError, UnitFiles};
use crate::unit_output::UnitOutput;
use gearmq_schemas::actions::UnitState;
use gearmq_schemas::time::Millis;
use gearmq_schemas::units::{FieldError, check_unit_name, unit_file_name};
use gearmq_schemas::{Name, Status};
use serde::{Serialize, de::DeserializeOwned};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use uuid::Uuid;

/// What the agent offers every action; shared by all requests.
#[derive(Debug)]
pub struct Services {
    /// When the agent process started (for uptime).
    pub agent_started: Instant,
    /// The systemd manager units run in.
    pub systemd: Systemd,
    /// The unit files gearmq manages.
    pub units: UnitFiles,
    /// The units' output files.
    pub output: UnitOutput,
    /// Intent and outcome records.
    pub records: Records,
    /// Open `logs --follow` streams.
    pub streams: Streams,
    /// One lock per unit, so two requests never change one unit at once.
    pub locks: UnitLocks,
    /// Who units run as and which programs they may run.
    pub policy: UnitPolicy,
    /// The configured limits.
    pub limits: Limits,
    /// The host credential's labels.
    pub labels: BTreeMap<String, String>,
    /// When the host credential expires.
    pub credential_expires_at: Millis,
    /// The revocation list held (the `revocation` action offers it newer ones).
    pub revocations: Arc<Revocations>,
    /// The agent's counters; the handler updates them, the `stats` action reads them.
    pub stats: Arc<Stats>,
}

impl Services {
    /// Services for units managed through `systemd` settings, with state (specs,
    /// output, records) under `state_dir`, which must be absolute.
    pub fn new(
        settings: &SystemdSettings,
        state_dir: &Path,
        limits: &Limits,
        labels: BTreeMap<String, String>,
        credential_expires_at: Millis,
        revocations: Arc<Revocations>,
    ) -> Self {
        // Records matter while a request can still be redelivered and pass its
        // window checks: its lifetime plus skew on both ends.
        let keep = limits.max_request_lifetime + 2 * limits.clock_skew;
        Services {
            agent_started: Instant::now(),
            systemd: Systemd::new(settings, limits.action_timeout),
            units: UnitFiles::new(&settings.unit_dir, state_dir),
            output: UnitOutput::new(state_dir, limits.unit_log_max_bytes),
            records: Records::new(state_dir, keep),
            streams: Streams::new(limits.max_streams),
            locks: UnitLocks::default(),
            policy: UnitPolicy::new(settings),
            limits: limits.clone(),
            labels,
            credential_expires_at,
            revocations,
            stats: Arc::new(Stats::default()),
        }
    }

    /// Whether MemoryMax/CPUQuota are enforced for this manager's units.
    pub async fn limits_enforced(&self) -> Result<bool, SystemdError> {
        let cg = self.systemd.manager_cgroup().await?;
        Ok(cgroup::limits_enforced(Path::new(cgroup::CGROUP_ROOT), &cg))
    }
}

/// Who units run as, and which programs they may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitPolicy {
    /// The user lines of every unit file.
    pub run_as: RunAs,
    /// Allowed program path prefixes; empty allows any.
    pub allowed_exec_prefixes: Vec<String>,
}

impl UnitPolicy {
    /// The policy `settings` describe.
    pub fn new(settings: &SystemdSettings) -> Self {
        let run_as = match (settings.bus, &settings.run_as, settings.allow_root) {
            (BusKind::User, _, _) => RunAs::ManagerUser,
            (BusKind::System, Some(u), _) if u == "root" => RunAs::Root,
            (BusKind::System, Some(u), _) => RunAs::User(u.clone()),
            (BusKind::System, None, true) => RunAs::Root,
            (BusKind::System, None, false) => RunAs::DynamicUser,
        };
        UnitPolicy {
            run_as,
            allowed_exec_prefixes: settings.allowed_exec_prefixes.clone(),
        }
    }

    /// Refuses (status 6) a program outside the allowed prefixes. Prefixes match
    /// whole path components; `..` never reaches here (the spec refuses it).
    pub fn check_exec(&self, exec: &str) -> Result<(), ActionError> {
        if self.allowed_exec_prefixes.is_empty() {
            return Ok(());
        }
        let allowed = self.allowed_exec_prefixes.iter().any(|p| {
            let p = p.trim_end_matches('/');
            exec.strip_prefix(p)
                .is_some_and(|rest| rest.starts_with('/') || (p.is_empty() && !rest.is_empty()))
        });
        if allowed {
            Ok(())
        } else {
            Err(ActionError::new(
                Status::Unauthorized,
                format!(
                    "program {exec} is outside this host's allowed_exec_prefixes ({})",
                    self.allowed_exec_prefixes.join(", ")
                ),
            ))
        }
    }
}

/// One async lock per unit name.
#[derive(Debug, Default)]
pub struct UnitLocks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl UnitLocks {
    /// Waits for and holds unit `unit`'s lock.
    pub async fn lock(&self, unit: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            // Forget locks nobody holds or waits for, so the map stays small.
            map.retain(|_, m| Arc::strong_count(m) > 1);
            map.entry(unit.to_string()).or_default().clone()
        };
        m.lock_owned().await
    }
}

/// The request an action runs for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    /// The request id.
    pub id: Uuid,
    /// SHA-256 of its body.
    pub digest: [u8; 32],
    /// Who asked (the verified signer).
    pub caller: Name,
    /// The action name.
    pub action: String,
    /// When the request expires.
    pub expires_at: Millis,
}

/// What an action may read about the agent and the request it runs for.
#[derive(Debug)]
pub struct ActionContext {
    /// The agent's services.
    pub services: Arc<Services>,
    /// The request.
    pub request: RequestInfo,
    previous: Option<Intent>,
    intent_written: AtomicBool,
}

impl ActionContext {
    /// The context for `request`; `previous` is the intent recorded for the same
    /// request bytes by an earlier, interrupted run.
    pub fn new(services: Arc<Services>, request: RequestInfo, previous: Option<Intent>) -> Self {
        ActionContext {
            services,
            request,
            previous,
            intent_written: AtomicBool::new(false),
        }
    }

    /// The intent an earlier run of this very request recorded, if it was interrupted.
    pub fn previous_intent(&self) -> Option<&Intent> {
        self.previous.as_ref()
    }

    /// Whether this run wrote an intent record (so an outcome record must follow).
    pub fn intent_written(&self) -> bool {
        self.intent_written.load(Ordering::SeqCst)
    }

    /// Records, durably, that this request is about to change `unit` towards
    /// `desired`, having found `before`.
    pub async fn record_intent(
        &self,
        unit: &str,
        desired: Desired,
        before: Before,
    ) -> Result<(), ActionError> {
        let intent = Intent {
            request_id: self.request.id,
            digest: serde_bytes::ByteArray::new(self.request.digest),
            action: self.request.action.clone(),
            unit: unit.to_string(),
            desired,
            before,
            at: gearmq_schemas::time::now_ms(),
        };
        let services = self.services.clone();
        blocking(move || services.records.write_intent(&intent))
            .await?
            .map_err(|e: RecordError| ActionError::new(Status::UnknownError, e.to_string()))?;
        self.intent_written.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// An action that ran but did not succeed: the reply's status and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ActionError {
    /// The reply status (never `Ok`).
    pub status: Status,
    /// For people; names what failed.
    pub message: String,
}

impl ActionError {
    /// An error with `status`.
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        ActionError {
            status,
            message: message.into(),
        }
    }
}

impl From<SystemdError> for ActionError {
    fn from(e: SystemdError) -> Self {
        let status = match e {
            SystemdError::JobTimeout { .. } => Status::TimedOut,
            _ => Status::UnknownError,
        };
        ActionError::new(status, e.to_string())
    }
}

impl From<UnitFileError> for ActionError {
    fn from(e: UnitFileError) -> Self {
        let status = match e {
            UnitFileError::NotManaged { .. } => Status::NotFound,
            UnitFileError::Io { .. } => Status::UnknownError,
        };
        ActionError::new(status, e.to_string())
    }
}

impl From<FieldError> for ActionError {
    fn from(e: FieldError) -> Self {
        ActionError::new(Status::InvalidData, e.to_string())
    }
}

/// Runs blocking file work off the async threads.
pub async fn blocking<T, F>(f: F) -> Result<T, ActionError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ActionError::new(Status::UnknownError, format!("file task failed: {e}")))
}

/// Checks a unit name from a request (status 4 naming `unit`).
pub fn check_unit(unit: &str) -> Result<(), ActionError> {
    check_unit_name(unit).map_err(ActionError::from)
}

/// The text of unit `unit`'s file; a unit gearmq does not manage is "not found".
pub async fn managed_unit_text(
    services: &Arc<Services>,
    unit: &str,
) -> Result<String, ActionError> {
    let s = services.clone();
    let u = unit.to_string();
    match blocking(move || s.units.read(&u)).await? {
        Ok(Some(text)) => Ok(text),
        Ok(None) | Err(UnitFileError::NotManaged { .. }) => Err(ActionError::new(
            Status::NotFound,
            format!("unit {unit} is not installed by gearmq on this host"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// What a unit looks like now, as an intent's before-state.
pub fn before_of(text: Option<&str>, props: &UnitProps) -> Before {
    Before {
        file_present: text.is_some(),
        file_digest: text
            .map(|t| serde_bytes::ByteArray::new(gearmq_schemas::sha256(t.as_bytes()))),
        active: props.is_active(),
        main_pid: props.main_pid,
        active_enter_us: props.active_enter_us,
    }
}

/// The wire state of unit `unit` whose file is `text`.
pub async fn unit_state(
    services: &Services,
    unit: &str,
    text: &str,
) -> Result<UnitState, ActionError> {
    let props = services.systemd.unit_props(&unit_file_name(unit)).await?;
    let sets_limits = text
        .lines()
        .any(|l| l.starts_with("MemoryMax=") || l.starts_with("CPUQuota="));
    let limits_enforced = if sets_limits {
        Some(services.limits_enforced().await?)
    } else {
        None
    };
    Ok(wire_state(unit, &props, limits_enforced))
}

/// A wire [`UnitState`] from systemd's properties.
pub fn wire_state(unit: &str, props: &UnitProps, limits_enforced: Option<bool>) -> UnitState {
    UnitState {
        unit: unit.to_string(),
        load_state: props.load_state.clone(),
        active_state: props.active_state.clone(),
        sub_state: props.sub_state.clone(),
        main_pid: props.main_pid,
        since_ms: (props.active_enter_us > 0).then_some(props.active_enter_us / 1000),
        memory_bytes: (props.memory_current != u64::MAX).then_some(props.memory_current),
        restarts: props.n_restarts,
        limits_enforced,
    }
}

/// An action the agent can run.
pub trait Action {
    /// The action name in requests and operator credentials.
    const NAME: &'static str;
    /// Its arguments (`gearmq_schemas::actions`), decoded strictly from `args`.
    type Args: Serialize + DeserializeOwned + Send + 'static;
    /// Its result, encoded into the reply's `data`.
    type Output: Serialize + Send + 'static;

    /// Runs the action.
    fn apply(
        args: Self::Args,
        ctx: &ActionContext,
    ) -> impl Future<Output = Result<Self::Output, ActionError>> + Send;
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Services on a bus that does not exist, state in `dir`.
    pub fn services(dir: &Path) -> Arc<Services> {
        let settings = SystemdSettings {
            bus: BusKind::User,
            address: Some(format!("unix:path={}/no-bus", dir.display())),
            unit_dir: dir.join("units"),
            run_as: None,
            allow_root: false,
            allowed_exec_prefixes: Vec::new(),
        };
        Arc::new(Services::new(
            &settings,
            &dir.join("state"),
            &Limits::default(),
            BTreeMap::new(),
            0,
            Arc::new(Revocations::none()),
        ))
    }

    /// A context for a request from `ops`.
    pub fn context(services: Arc<Services>, action: &str) -> ActionContext {
        ActionContext::new(
            services,
            RequestInfo {
                id: Uuid::now_v7(),
                digest: [7; 32],
                caller: Name::new("ops").unwrap_or_else(|_| unreachable!()),
                action: action.into(),
                expires_at: u64::MAX,
            },
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(prefixes: &[&str]) -> UnitPolicy {
        UnitPolicy {
            run_as: RunAs::DynamicUser,
            allowed_exec_prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn exec_prefixes_match_whole_components() {
        assert!(policy(&[]).check_exec("/anything").is_ok());
        let p = policy(&["/opt/apps", "/usr/local/bin/"]);
        assert!(p.check_exec("/opt/apps/web/run").is_ok());
        assert!(p.check_exec("/usr/local/bin/x").is_ok());
        let e = p.check_exec("/opt/appsevil/run").unwrap_err();
        assert_eq!(e.status, Status::Unauthorized);
        assert!(e.message.contains("allowed_exec_prefixes"), "{}", e.message);
        assert!(p.check_exec("/opt/apps").is_err());
        assert!(p.check_exec("/bin/sh").is_err());
        assert!(policy(&["/"]).check_exec("/bin/sh").is_ok());
    }

    #[test]
    fn run_as_follows_bus_and_settings() {
        let mut s = SystemdSettings {
            bus: BusKind::System,
            address: None,
            unit_dir: "/etc/systemd/system".into(),
            run_as: None,
            allow_root: false,
            allowed_exec_prefixes: Vec::new(),
        };
        assert_eq!(UnitPolicy::new(&s).run_as, RunAs::DynamicUser);
        s.run_as = Some("svc".into());
        assert_eq!(UnitPolicy::new(&s).run_as, RunAs::User("svc".into()));
        s.run_as = None;
        s.allow_root = true;
        assert_eq!(UnitPolicy::new(&s).run_as, RunAs::Root);
        s.bus = BusKind::User;
        assert_eq!(UnitPolicy::new(&s).run_as, RunAs::ManagerUser);
    }

    #[test]
    fn wire_state_hides_unknown_memory_and_never_started() {
        let props = UnitProps {
            load_state: "loaded".into(),
            active_state: "inactive".into(),
            sub_state: "dead".into(),
            main_pid: 0,
            active_enter_us: 0,
            memory_current: u64::MAX,
            n_restarts: 2,
        };
        let s = wire_state("web", &props, None);
        assert_eq!(s.since_ms, None);
        assert_eq!(s.memory_bytes, None);
        assert_eq!(s.restarts, 2);
        let props = UnitProps {
            active_enter_us: 1_700_000_000_123_456,
            memory_current: 4096,
            ..props
        };
        let s = wire_state("web", &props, Some(false));
        assert_eq!(s.since_ms, Some(1_700_000_000_123));
        assert_eq!(s.memory_bytes, Some(4096));
        assert_eq!(s.limits_enforced, Some(false));
    }
}
