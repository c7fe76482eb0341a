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
pub mod enable;
pub mod facts;
pub mod install;
pub mod list;
pub mod logs;
pub mod ping;
pub mod reload;
pub mod restart;
pub mod revocation;
pub mod start;
pub mod stats;
pub mod status;
pub mod stop;

use crate::config::{Allowlist, BusKind, EXISTING_ACTIONS, Limits, Output, SystemdSettings};
use crate::identity::io_reason;
use crate::records::{Before, Desired, Intent, RecordError, Records};
use crate::revocation::Revocations;
use crate::stats::Stats;
use crate::streams::Streams;
use crate::systemd::render::{RenderSettings, RunAs};
use crate::systemd::{Systemd, SystemdError, UnitBackend, UnitProps, cgroup};
use crate::unit_files::{UnitFileError, UnitFiles};
use crate::unit_output::UnitOutput;
use gearmq_schemas::actions::UnitState;
use gearmq_schemas::time::Millis;
use gearmq_schemas::units::{FieldError, UnitName, is_loader_env, unit_file_name};
use gearmq_schemas::{Name, Status};
use serde::{Serialize, de::DeserializeOwned};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
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
    pub systemd: Arc<dyn UnitBackend>,
    /// The unit files gearmq manages.
    pub units: UnitFiles,
    /// The units' output files.
    pub output: UnitOutput,
    /// Programs shipped with installs, by digest.
    pub artifacts: crate::artifacts::ArtifactStore,
    /// The journal, where units' output goes in journal mode (and existing units'
    /// always); `None` in file mode.
    pub journal: Option<crate::journal::Journal>,
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
    /// The units a job of the agent's own is changing now; shared with the unit watcher
    /// ([`crate::unit_watch`]) so those changes are not reported as events.
    pub quiet: crate::unit_watch::Quiet,
}

impl Services {
    /// Services for `identity`'s host (its labels answer `facts`, its credential's end
    /// is reported), as the agent, local mode and the emulator start them.
    pub fn for_host(
        settings: &SystemdSettings,
        state_dir: &Path,
        limits: &Limits,
        identity: &crate::identity::HostIdentity,
        revocations: Arc<Revocations>,
    ) -> Self {
        Services::new(
            settings,
            state_dir,
            limits,
            identity.credential.labels.clone(),
            identity.credential.not_after,
            revocations,
        )
    }

    /// [`Services::for_host`] of an agent configured by `cfg`, reading shipped
    /// programs without a URL from their broker stream with the agent's own login.
    pub fn for_agent(
        cfg: &crate::config::AgentConfig,
        systemd: &SystemdSettings,
        state_dir: &Path,
        identity: &crate::identity::HostIdentity,
        revocations: Arc<Revocations>,
    ) -> Self {
        let mut s = Services::for_host(systemd, state_dir, &cfg.limits, identity, revocations);
        s.artifacts = s
            .artifacts
            .clone()
            .with_streams(crate::artifacts::StreamSource {
                urls: cfg.broker.urls.clone(),
                files: cfg.broker.files(),
                name: format!("gearmq-agent {}", identity.name),
            });
        s
    }

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
        let quiet = crate::unit_watch::Quiet::new();
        Services {
            agent_started: Instant::now(),
            systemd: Arc::new(
                Systemd::new(settings, limits.action_timeout).with_quiet(quiet.clone()),
            ),
            quiet,
            units: UnitFiles::new(&settings.unit_dir, state_dir),
            output: UnitOutput::new(state_dir, limits.unit_log_max_bytes),
            artifacts: crate::artifacts::ArtifactStore::new(
                &settings
                    .artifact_dir
                    .clone()
                    .unwrap_or_else(|| state_dir.join("artifacts")),
                limits.max_artifact_bytes,
            ),
            journal: match &settings.output {
                Output::Journal { dir } => {
                    Some(crate::journal::Journal::new(dir.clone(), settings.bus))
                }
                Output::File => None,
            },
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

/// Who units run as, and which programs and loader variables they may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitPolicy {
    /// The user lines of every unit file.
    pub run_as: RunAs,
    /// Allowed program path prefixes; empty allows any.
    pub allowed_exec_prefixes: Vec<String>,
    /// Loader environment variables units may set (`systemd.allowed_loader_env`).
    pub allowed_loader_env: Vec<String>,
    /// The target an enabled unit is wanted by: `multi-user.target` (system bus) or
    /// `default.target` (user manager).
    pub wanted_by: &'static str,
    /// The host's own units gearmq may act on, and how (`[[existing]]`).
    pub existing: Allowlist,
    /// Where units' output goes and `logs` reads it.
    pub output: Output,
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
            allowed_loader_env: settings.allowed_loader_env.clone(),
            wanted_by: match settings.bus {
                BusKind::System => "multi-user.target",
                BusKind::User => "default.target",
            },
            existing: settings.existing.clone(),
            output: settings.output.clone(),
        }
    }

    /// What besides the spec goes into a unit file under this policy, with its output
    /// appended to `output_file` (in file mode) or sent to the journal.
    pub fn render_settings<'a>(&self, output_file: &'a std::path::Path) -> RenderSettings<'a> {
        RenderSettings {
            run_as: self.run_as.clone(),
            output_file: match self.output {
                Output::File => Some(output_file),
                Output::Journal { .. } => None,
            },
            wanted_by: self.wanted_by,
        }
    }

    /// Refuses (status 6) an environment variable that changes what code the program
    /// loads (`LD_PRELOAD`, `PYTHONPATH`, …: [`is_loader_env`]) unless
    /// `systemd.allowed_loader_env` lists it: otherwise a caller allowed to install
    /// `/usr/bin/x` could make it run a library of the caller's choosing.
    pub fn check_env<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a String>,
    ) -> Result<(), ActionError> {
        for k in keys {
            if is_loader_env(k) && !self.allowed_loader_env.iter().any(|a| a == k) {
                return Err(ActionError::new(
                    Status::Unauthorized,
                    format!(
                        "environment variable {k} changes what code the program loads; this host refuses it unless its systemd.allowed_loader_env lists {k}"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// With `allowed_exec_prefixes` set, refuses (6) to ship programs into an artifact
    /// store `dir` that is not below an allowed prefix (the stored file is what the
    /// unit runs), before anything is fetched.
    pub fn check_artifact_dir(&self, dir: &Path) -> Result<(), ActionError> {
        if self.allowed_exec_prefixes.is_empty() {
            return Ok(());
        }
        let _ = std::fs::create_dir_all(dir);
        let resolved = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let inside = self.allowed_exec_prefixes.iter().any(|p| {
            let prefix = std::fs::canonicalize(p).unwrap_or_else(|_| PathBuf::from(p));
            resolved == prefix || is_below(&resolved, &prefix)
        });
        if inside {
            Ok(())
        } else {
            Err(ActionError::new(
                Status::Unauthorized,
                format!(
                    "shipped programs are stored in {}, which is not below this host's \
                     systemd.allowed_exec_prefixes; list it there (or set \
                     systemd.artifact_dir below one) to allow installs with an artifact",
                    resolved.display()
                ),
            ))
        }
    }

    /// With `allowed_exec_prefixes` set, resolves `exec` on this host (symlinks
    /// followed) and refuses a program whose resolved path is not below an allowed
    /// prefix (status 6; prefixes are resolved too and match whole components), that
    /// does not exist (7) or that is not a regular file (4). Reads the file system:
    /// run it off the async threads.
    pub fn check_exec(&self, exec: &str) -> Result<(), ActionError> {
        if self.allowed_exec_prefixes.is_empty() {
            return Ok(());
        }
        let resolved = std::fs::canonicalize(exec).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory => ActionError::new(
                Status::NotFound,
                format!(
                    "program {exec} does not exist on this host (allowed_exec_prefixes is checked on the program's resolved path, so the program must be in place before install)"
                ),
            ),
            _ => ActionError::new(
                Status::Unauthorized,
                format!(
                    "cannot resolve program {exec} on this host to check allowed_exec_prefixes: {}",
                    io_reason(&e)
                ),
            ),
        })?;
        let shown = if resolved == Path::new(exec) {
            exec.to_string()
        } else {
            format!("{exec} (resolved: {})", resolved.display())
        };
        let allowed = self.allowed_exec_prefixes.iter().any(|p| {
            // A prefix that is itself a link (/bin -> usr/bin) is compared resolved.
            let p = std::fs::canonicalize(p).unwrap_or_else(|_| PathBuf::from(p));
            is_below(&resolved, &p)
        });
        if !allowed {
            return Err(ActionError::new(
                Status::Unauthorized,
                format!(
                    "program {shown} is outside this host's allowed_exec_prefixes ({})",
                    self.allowed_exec_prefixes.join(", ")
                ),
            ));
        }
        match std::fs::metadata(&resolved) {
            Ok(m) if m.is_file() => Ok(()),
            _ => Err(ActionError::new(
                Status::InvalidData,
                format!("invalid exec: program {shown} is not a regular file"),
            )),
        }
    }
}

/// Whether `path` lies below `prefix`, whole components compared (`/opt/app` is not
/// below `/opt/ap`, nor below itself).
pub fn is_below(path: &Path, prefix: &Path) -> bool {
    path != prefix && path.starts_with(prefix)
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

/// Checks that `unit` names a unit gearmq creates: the name of an existing unit of the
/// host is refused (6), since gearmq never installs, rewrites, enables, disables or
/// deletes those; any other bad name is invalid (4, naming the field).
pub fn check_unit(unit: &str) -> Result<(), ActionError> {
    match UnitName::parse(unit)? {
        UnitName::Managed(_) => Ok(()),
        UnitName::Existing(u) => Err(ActionError::new(
            Status::Unauthorized,
            format!(
                "{u} is not a unit gearmq created: gearmq never installs, rewrites, enables, \
                 disables or deletes those (a host's [[existing]] allowlist can open only {})",
                EXISTING_ACTIONS.join(", ")
            ),
        )),
    }
}

/// The unit a unit action acts on, found and allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One of gearmq's own units, with its file's text.
    Managed {
        /// Its gearmq name (`web`).
        unit: String,
        /// Its unit file.
        text: String,
    },
    /// An existing unit of the host that the `[[existing]]` allowlist opens to the
    /// action.
    Existing {
        /// Its systemd name (`nginx.service`).
        unit: String,
    },
}

impl Target {
    /// Resolves `unit` for `action`: a gearmq unit must be installed (7 otherwise); an
    /// existing unit must be allowed `action` by the host's allowlist (6, naming what it
    /// allows) and loaded in the manager (7).
    pub async fn resolve(
        services: &Arc<Services>,
        unit: &str,
        action: &str,
    ) -> Result<Target, ActionError> {
        match UnitName::parse(unit)? {
            UnitName::Managed(u) => Ok(Target::Managed {
                unit: u.to_string(),
                text: managed_unit_text(services, u).await?,
            }),
            UnitName::Existing(u) => {
                if !services.policy.existing.allows(u, action) {
                    return Err(ActionError::new(
                        Status::Unauthorized,
                        services.policy.existing.refusal(u, action),
                    ));
                }
                let props = services.systemd.unit_props(u).await?;
                if props.load_state != "loaded" {
                    return Err(ActionError::new(
                        Status::NotFound,
                        format!("unit {u} is not loaded on this host ({})", props.load_state),
                    ));
                }
                Ok(Target::Existing {
                    unit: u.to_string(),
                })
            }
        }
    }

    /// The name the request used (and records and replies use).
    pub fn name(&self) -> &str {
        match self {
            Target::Managed { unit, .. } | Target::Existing { unit } => unit,
        }
    }

    /// The unit's name in systemd.
    pub fn systemd_name(&self) -> String {
        match self {
            Target::Managed { unit, .. } => unit_file_name(unit),
            Target::Existing { unit } => unit.clone(),
        }
    }

    /// The unit file's text, for gearmq's own units.
    pub fn text(&self) -> Option<&str> {
        match self {
            Target::Managed { text, .. } => Some(text),
            Target::Existing { .. } => None,
        }
    }

    /// The unit's wire state now.
    pub async fn state(&self, services: &Services) -> Result<UnitState, ActionError> {
        match self {
            Target::Managed { unit, text } => unit_state(services, unit, text).await,
            Target::Existing { unit } => {
                let props = services.systemd.unit_props(unit).await?;
                Ok(wire_state(unit, &props, None))
            }
        }
    }
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
        unit_file_state: props.unit_file_state.clone(),
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
        let settings = SystemdSettings::user(
            dir.join("units"),
            Some(format!("unix:path={}/no-bus", dir.display())),
        );
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
            allowed_loader_env: Vec::new(),
            wanted_by: "multi-user.target",
            existing: Allowlist::default(),
            output: Output::File,
        }
    }

    #[test]
    fn artifact_store_must_be_below_an_allowed_prefix_when_prefixes_are_set() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("artifacts");
        // No prefixes: any store.
        assert!(policy(&[]).check_artifact_dir(&store).is_ok());
        let inside = policy(&[dir.path().to_str().unwrap()]);
        assert!(inside.check_artifact_dir(&store).is_ok());
        let e = policy(&["/opt/apps"])
            .check_artifact_dir(&store)
            .unwrap_err();
        assert_eq!(e.status, Status::Unauthorized);
        assert!(e.message.contains("allowed_exec_prefixes"), "{}", e.message);
    }

    #[test]
    fn prefixes_match_whole_components() {
        let below = |p: &str, prefix: &str| is_below(Path::new(p), Path::new(prefix));
        assert!(below("/opt/apps/web/run", "/opt/apps"));
        assert!(below("/usr/local/bin/x", "/usr/local/bin/"));
        assert!(below("/bin/sh", "/"));
        assert!(!below("/opt/appsevil/run", "/opt/apps"));
        assert!(!below("/opt/apple", "/opt/app"));
        assert!(!below("/opt/apps", "/opt/apps"));
        assert!(!below("/bin/sh", "/opt/apps"));
    }

    /// A tree: `allowed/prog` (a program), `allowed/link-out` -> `outside/prog`,
    /// `allowed/link-in` -> `prog`, `allowed-evil/prog`, `outside/link-in` ->
    /// `allowed/prog`, `allowed/dir/`, `alias` -> `allowed` (a prefix that is a link).
    fn tree() -> tempfile::TempDir {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let d = std::fs::canonicalize(dir.path()).unwrap();
        for sub in ["allowed/dir", "allowed-evil", "outside"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        for f in ["allowed/prog", "allowed-evil/prog", "outside/prog"] {
            std::fs::write(d.join(f), "#!/bin/sh\n").unwrap();
        }
        symlink(d.join("outside/prog"), d.join("allowed/link-out")).unwrap();
        symlink("prog", d.join("allowed/link-in")).unwrap();
        symlink(d.join("allowed/prog"), d.join("outside/link-in")).unwrap();
        symlink(d.join("allowed"), d.join("alias")).unwrap();
        dir
    }

    #[test]
    fn exec_is_checked_on_its_resolved_path() {
        assert!(policy(&[]).check_exec("/no/such/program").is_ok());
        let dir = tree();
        let d = std::fs::canonicalize(dir.path()).unwrap();
        let path = |rel: &str| d.join(rel).display().to_string();
        let p = policy(&[&path("allowed")]);
        assert!(p.check_exec(&path("allowed/prog")).is_ok());
        assert!(p.check_exec(&path("allowed/link-in")).is_ok());
        // Reached from outside, but what runs is inside.
        assert!(p.check_exec(&path("outside/link-in")).is_ok());
        // A link inside the prefix to a program outside it.
        let e = p.check_exec(&path("allowed/link-out")).unwrap_err();
        assert_eq!(e.status, Status::Unauthorized);
        assert!(e.message.contains("allowed_exec_prefixes"), "{}", e.message);
        assert!(
            e.message
                .contains(&format!("resolved: {}", path("outside/prog"))),
            "{}",
            e.message
        );
        // A string prefix is not a path prefix.
        let e = p.check_exec(&path("allowed-evil/prog")).unwrap_err();
        assert_eq!(e.status, Status::Unauthorized, "{}", e.message);
        let e = p.check_exec(&path("allowed/missing")).unwrap_err();
        assert_eq!(e.status, Status::NotFound, "{}", e.message);
        assert!(e.message.contains("does not exist"), "{}", e.message);
        let e = p.check_exec(&path("allowed/prog/x")).unwrap_err();
        assert_eq!(e.status, Status::NotFound, "{}", e.message);
        let e = p.check_exec(&path("allowed/dir")).unwrap_err();
        assert_eq!(e.status, Status::InvalidData, "{}", e.message);
        // A prefix written as a link is compared resolved.
        let p = policy(&[&path("alias")]);
        assert!(p.check_exec(&path("allowed/prog")).is_ok());
        assert!(p.check_exec(&path("outside/prog")).is_err());
    }

    #[test]
    fn loader_env_is_refused_unless_allowed_by_name() {
        let keys = |ks: &[&str]| -> Vec<String> { ks.iter().map(|k| k.to_string()).collect() };
        let p = policy(&[]);
        assert!(p.check_env(&keys(&["PATH", "HOME", "RUST_LOG"])).is_ok());
        for k in ["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "PYTHONPATH"] {
            let e = p.check_env(&keys(&["PATH", k])).unwrap_err();
            assert_eq!(e.status, Status::Unauthorized);
            assert!(e.message.contains(k), "{}", e.message);
            assert!(
                e.message.contains("systemd.allowed_loader_env"),
                "{}",
                e.message
            );
        }
        let p = UnitPolicy {
            allowed_loader_env: vec!["LD_LIBRARY_PATH".into()],
            ..policy(&[])
        };
        assert!(p.check_env(&keys(&["LD_LIBRARY_PATH"])).is_ok());
        let e = p
            .check_env(&keys(&["LD_LIBRARY_PATH", "LD_PRELOAD"]))
            .unwrap_err();
        assert!(e.message.contains("LD_PRELOAD"), "{}", e.message);
    }

    #[test]
    fn run_as_follows_bus_and_settings() {
        let mut s = SystemdSettings::user("/etc/systemd/system".into(), None);
        s.bus = BusKind::System;
        s.allowed_loader_env = vec!["LD_LIBRARY_PATH".into()];
        assert_eq!(UnitPolicy::new(&s).run_as, RunAs::DynamicUser);
        assert_eq!(UnitPolicy::new(&s).allowed_loader_env, ["LD_LIBRARY_PATH"]);
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
            unit_file_state: "enabled".into(),
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
