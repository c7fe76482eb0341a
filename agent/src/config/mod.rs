//! The agent's configuration file (written by `gearmq init`) and its loading.
//!
//! Sources, later ones winning: defaults in code → the TOML file → environment
//! variables `GEARMQ_AGENT__<SECTION>__<KEY>` (e.g. `GEARMQ_AGENT__BROKER__PREFETCH=8`).
//! Unknown keys are errors that name the key; every error names the file.

mod existing;

pub use existing::{Allowlist, EXISTING_ACTIONS, ExistingUnits};

use config::{Config, Environment, File, FileFormat};
use gearmq_schemas::Name;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest reply the agent signs: what orchestrators accept by default. A result that
/// would make a bigger reply is answered with an error instead.
pub const MAX_REPLY_BYTES: usize = gearmq_schemas::DEFAULT_MAX_MESSAGE_BYTES;

/// Room an audit record needs besides the request and the reply: the writer's
/// credential and the record's own fields and framing.
const RECORD_OVERHEAD_BYTES: usize = gearmq_schemas::credential::MAX_CREDENTIAL_BYTES + 4096;

/// Largest `limits.max_message_bytes` accepted: the largest request an audit record can
/// hold together with the largest reply (748 KiB). A bigger request could be answered
/// (even refused) but not put on record, so it is not taken at all: no unaudited
/// execution.
pub const MAX_MESSAGE_BYTES_CEILING: usize =
    gearmq_schemas::audit::MAX_RECORD_BYTES - MAX_REPLY_BYTES - RECORD_OVERHEAD_BYTES;
// The largest request, reply and credential fit in one record, with room to spare.
const _: () = assert!(
    MAX_MESSAGE_BYTES_CEILING + MAX_REPLY_BYTES + gearmq_schemas::credential::MAX_CREDENTIAL_BYTES
        < gearmq_schemas::audit::MAX_RECORD_BYTES
);

/// The whole agent configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This host's name; must equal the name in its credential.
    pub name: Name,
    /// PEM PKCS#8 Ed25519 private key of the host.
    pub key_file: PathBuf,
    /// The issuer-signed host credential (raw bytes).
    pub credential_file: PathBuf,
    /// PEM PKCS#8 X25519 private key that delegation tokens for this host are sealed
    /// to (made by `gearmq enroll`; its public half is in the credential). Without it
    /// the agent refuses every delegation token.
    #[serde(default)]
    pub sealing_key_file: Option<PathBuf>,
    /// Files holding trusted issuer public keys, one line of hex each.
    pub trusted_issuers: Vec<PathBuf>,
    /// Where the replay and result store lives; created 0700 if missing.
    pub state_dir: PathBuf,
    /// An issuer-signed revocation list (`gearmq revoke --list FILE`), read at start and
    /// on SIGHUP; signers it revokes are refused.
    #[serde(default)]
    pub revocation_file: Option<PathBuf>,
    /// How to reach the broker.
    pub broker: BrokerConfig,
    /// Bounds on messages, time and storage.
    #[serde(default)]
    pub limits: Limits,
    /// How units are managed: which systemd, where unit files go, who runs them.
    #[serde(default)]
    pub systemd: SystemdConfig,
    /// Where the agent's audit log goes and how big a file grows.
    #[serde(default)]
    pub audit: AuditConfig,
    /// `[[existing]]`: units of the host gearmq did not create that it may act on, and
    /// with which actions (see [`Allowlist`]). Default: none.
    #[serde(default)]
    pub existing: Vec<ExistingUnits>,
    /// `[metrics]`: health outside the broker (a Prometheus endpoint, the status file).
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// `[events]`: the signed events this host publishes of itself.
    #[serde(default)]
    pub events: EventsConfig,
}

/// The `[events]` section: signed presence (`started`, `alive`, `stopping`) and unit
/// events, published to `gearmq.events` for orchestrators to watch.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Publish events at all (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How often `alive` is sent (default 10s; 1s to 1h). Orchestrators call a host
    /// down after three intervals without one.
    #[serde(default = "default_events_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Publish unit events (failed, exited, restarted by systemd) of the units gearmq
    /// manages and those `[[existing]]` names (default true).
    #[serde(default = "default_true")]
    pub units: bool,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            enabled: true,
            interval: default_events_interval(),
            units: true,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_events_interval() -> Duration {
    Duration::from_secs(10)
}

/// The `[metrics]` section: the agent's health for the host's own tooling, outside the
/// request path.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `GET /metrics` (Prometheus text format) on this address; default: off.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
    /// Let `listen` be an address other hosts can reach. Off by default: the endpoint
    /// has no authentication.
    #[serde(default)]
    pub allow_non_loopback: bool,
    /// The status file (JSON, rewritten every few seconds and on connection changes);
    /// default `state_dir/status.json`.
    #[serde(default)]
    pub status_file: Option<PathBuf>,
}

impl MetricsConfig {
    /// The status file for an agent whose state dir is `state_dir`.
    pub fn status_path(&self, state_dir: &Path) -> PathBuf {
        self.status_file
            .clone()
            .unwrap_or_else(|| state_dir.join("status.json"))
    }
}

/// The `[audit]` section: the log of every request answered after its signature was
/// proven, with the reply sent, signed by the host key.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The live log file; default `state_dir/audit.log`.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Rotate to `<file>.<n>` when appending would grow the file past this; default
    /// 64 MiB.
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

/// Default `audit.max_bytes`.
pub const DEFAULT_AUDIT_MAX_BYTES: u64 = 64 * 1024 * 1024;

impl AuditConfig {
    /// The live log file for an agent whose state dir is `state_dir`.
    pub fn path(&self, state_dir: &Path) -> PathBuf {
        self.file
            .clone()
            .unwrap_or_else(|| state_dir.join("audit.log"))
    }

    /// The rotation size.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes.unwrap_or(DEFAULT_AUDIT_MAX_BYTES)
    }
}

/// Which systemd instance the agent manages units in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// The system manager (PID 1) on the system bus.
    #[default]
    System,
    /// A user manager (`systemd --user`) on its user bus.
    User,
}

impl BusKind {
    /// `system` or `user`, as in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            BusKind::System => "system",
            BusKind::User => "user",
        }
    }
}

/// The `[systemd]` section.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemdConfig {
    /// `system` (default) or `user`.
    #[serde(default)]
    pub bus: BusKind,
    /// An explicit D-Bus address; default: the system bus, or for `user`
    /// `$DBUS_SESSION_BUS_ADDRESS`, else `unix:path=$XDG_RUNTIME_DIR/bus`.
    #[serde(default)]
    pub address: Option<String>,
    /// Where unit files are written; default `/etc/systemd/system` (system) or
    /// `$XDG_CONFIG_HOME/systemd/user` / `$HOME/.config/systemd/user` (user).
    #[serde(default)]
    pub unit_dir: Option<PathBuf>,
    /// System bus only: run units as this user (`User=`) instead of `DynamicUser=yes`.
    #[serde(default)]
    pub run_as: Option<String>,
    /// System bus only: let units run as root (no `DynamicUser=`/`User=` line, or
    /// `run_as = "root"`). Off by default.
    #[serde(default)]
    pub allow_root: bool,
    /// Absolute path prefixes programs must be under, checked on the program's
    /// resolved path (symlinks followed, on this host); empty allows any program.
    #[serde(default)]
    pub allowed_exec_prefixes: Vec<String>,
    /// Loader environment variables (`LD_PRELOAD`, `PYTHONPATH`, …: see
    /// `gearmq_schemas::units::is_loader_env`) units may set; every other one is
    /// refused. Default: none.
    #[serde(default)]
    pub allowed_loader_env: Vec<String>,
    /// Where gearmq's units send their output, and where `logs` reads it: `journal`
    /// (journald), `file` (a file per unit under the state dir), or `auto` (default:
    /// the journal where journald runs, `/run/systemd/journal/socket`, else files).
    #[serde(default)]
    pub output: OutputMode,
    /// A journal directory `logs` reads instead of the system's journal
    /// (`journalctl --directory`); default: the system's.
    #[serde(default)]
    pub journal_dir: Option<PathBuf>,
    /// Where programs shipped with an install are stored, by digest (made 0755: the
    /// units run them); default `state_dir/artifacts`. Units that run as other users
    /// (`DynamicUser=`, `run_as`) need a directory they can reach: the state dir is
    /// 0700, so point this elsewhere, e.g. /var/lib/gearmq-artifacts.
    #[serde(default)]
    pub artifact_dir: Option<PathBuf>,
}

/// `[systemd] output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputMode {
    /// The journal where journald runs, else files.
    #[default]
    Auto,
    /// Always the journal.
    Journal,
    /// Always a file per unit under the state dir.
    File,
}

/// Where units' output goes, decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Output {
    /// A file per unit under the state dir (`logs` reads it).
    #[default]
    File,
    /// The journal (`logs` runs `journalctl`, on `dir` when given).
    Journal {
        /// A journal directory instead of the system's.
        dir: Option<PathBuf>,
    },
}

/// Where journald listens when it runs.
pub const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";

/// The `[systemd] output` setting decided: `auto` looks for journald's socket at
/// `journald_socket`.
pub fn decide_output(
    mode: OutputMode,
    journal_dir: Option<&Path>,
    journald_socket: &Path,
) -> Output {
    let journal = Output::Journal {
        dir: journal_dir.map(Path::to_path_buf),
    };
    match mode {
        OutputMode::Journal => journal,
        OutputMode::File => Output::File,
        OutputMode::Auto if journald_socket.exists() => journal,
        OutputMode::Auto => Output::File,
    }
}

/// The `[systemd]` section with every default filled in from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemdSettings {
    /// Which manager.
    pub bus: BusKind,
    /// The D-Bus address; `None` on the system bus means the well-known system bus.
    /// `None` on the user bus means none could be found (unit actions then fail).
    pub address: Option<String>,
    /// Where unit files are written.
    pub unit_dir: PathBuf,
    /// `User=` for units on the system bus.
    pub run_as: Option<String>,
    /// Whether units may run as root on the system bus.
    pub allow_root: bool,
    /// Program path prefixes allowed; empty allows any.
    pub allowed_exec_prefixes: Vec<String>,
    /// Loader environment variables units may set.
    pub allowed_loader_env: Vec<String>,
    /// The host's own units gearmq may act on (`[[existing]]`; empty: none).
    pub existing: Allowlist,
    /// Where units' output goes and `logs` reads it.
    pub output: Output,
    /// Where shipped programs are stored (`None`: `state_dir/artifacts`).
    pub artifact_dir: Option<PathBuf>,
}

impl SystemdSettings {
    /// A user manager at `address` writing unit files to `unit_dir`, every other option
    /// at its default (no exec prefixes or loader variables allowed beyond the
    /// defaults, no existing units, output to files, artifacts below the state dir).
    pub fn user(unit_dir: PathBuf, address: Option<String>) -> SystemdSettings {
        SystemdSettings {
            bus: BusKind::User,
            address,
            unit_dir,
            run_as: None,
            allow_root: false,
            allowed_exec_prefixes: Vec::new(),
            allowed_loader_env: Vec::new(),
            existing: Allowlist::default(),
            output: Output::File,
            artifact_dir: None,
        }
    }
}

impl SystemdConfig {
    /// Fills in the defaults that depend on the environment (`env` looks a variable
    /// up). Fails only when the user bus has no unit directory to use.
    pub fn resolve(&self, env: impl Fn(&str) -> Option<String>) -> Result<SystemdSettings, String> {
        let non_empty = |k: &str| env(k).filter(|v| !v.is_empty());
        let address = match (&self.address, self.bus) {
            (Some(a), _) => Some(a.clone()),
            (None, BusKind::System) => None,
            (None, BusKind::User) => non_empty("DBUS_SESSION_BUS_ADDRESS")
                .or_else(|| non_empty("XDG_RUNTIME_DIR").map(|d| format!("unix:path={d}/bus"))),
        };
        let unit_dir = match (&self.unit_dir, self.bus) {
            (Some(d), _) => d.clone(),
            (None, BusKind::System) => PathBuf::from("/etc/systemd/system"),
            (None, BusKind::User) => match non_empty("XDG_CONFIG_HOME") {
                Some(c) => PathBuf::from(c).join("systemd/user"),
                None => match non_empty("HOME") {
                    Some(h) => PathBuf::from(h).join(".config/systemd/user"),
                    None => {
                        return Err(
                            "systemd.unit_dir: not set, and neither XDG_CONFIG_HOME nor HOME is set for the user bus default"
                                .into(),
                        );
                    }
                },
            },
        };
        Ok(SystemdSettings {
            bus: self.bus,
            address,
            unit_dir,
            run_as: self.run_as.clone(),
            allow_root: self.allow_root,
            allowed_exec_prefixes: self.allowed_exec_prefixes.clone(),
            allowed_loader_env: self.allowed_loader_env.clone(),
            existing: Allowlist::default(),
            artifact_dir: self.artifact_dir.clone(),
            output: decide_output(
                self.output,
                self.journal_dir.as_deref(),
                Path::new(JOURNALD_SOCKET),
            ),
        })
    }
}

/// The `[broker]` section: the same type and checks as the orchestrator's.
pub use gearmq_io::broker::BrokerConfig;

/// The `[limits]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest message accepted, checked before any decoding.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Longest `expires_at - issued_at` accepted.
    #[serde(default = "default_max_request_lifetime", with = "humantime_serde")]
    pub max_request_lifetime: Duration,
    /// Clock difference tolerated on every time window.
    #[serde(default = "default_clock_skew", with = "humantime_serde")]
    pub clock_skew: Duration,
    /// Longest an action may run before it is answered with "timed out".
    #[serde(default = "default_action_timeout", with = "humantime_serde")]
    pub action_timeout: Duration,
    /// Cap on the bytes of signed replies kept for redelivery; when reached, new
    /// requests are refused ("replay store full") rather than forgotten.
    #[serde(default = "default_max_stored_reply_bytes")]
    pub max_stored_reply_bytes: usize,
    /// Most lines one `logs` reply returns (a request asking for more gets this many).
    #[serde(default = "default_max_log_lines")]
    pub max_log_lines: u32,
    /// Most bytes of log lines in one reply; older lines are left out (`truncated`).
    #[serde(default = "default_max_log_bytes")]
    pub max_log_bytes: usize,
    /// Size at which a unit's output file is rotated (copied to `.1`, truncated).
    #[serde(default = "default_unit_log_max_bytes")]
    pub unit_log_max_bytes: u64,
    /// Longest a `logs --follow` stream runs (also bounded by the request's expiry).
    #[serde(default = "default_max_follow", with = "humantime_serde")]
    pub max_follow: Duration,
    /// Most `logs --follow` streams at once.
    #[serde(default = "default_max_streams")]
    pub max_streams: usize,
    /// Longest delegation token validity (`not_after - not_before`) accepted; longer
    /// tokens are refused whatever their minter allowed.
    #[serde(default = "default_max_token_ttl", with = "humantime_serde")]
    pub max_token_ttl: Duration,
    /// Largest program shipped with an install (`--artifact-url`) this host takes.
    #[serde(default = "default_max_artifact_bytes")]
    pub max_artifact_bytes: u64,
}

fn default_max_artifact_bytes() -> u64 {
    1 << 30
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: default_max_message_bytes(),
            max_request_lifetime: default_max_request_lifetime(),
            clock_skew: default_clock_skew(),
            action_timeout: default_action_timeout(),
            max_stored_reply_bytes: default_max_stored_reply_bytes(),
            max_log_lines: default_max_log_lines(),
            max_log_bytes: default_max_log_bytes(),
            unit_log_max_bytes: default_unit_log_max_bytes(),
            max_follow: default_max_follow(),
            max_streams: default_max_streams(),
            max_token_ttl: default_max_token_ttl(),
            max_artifact_bytes: default_max_artifact_bytes(),
        }
    }
}

fn default_max_message_bytes() -> usize {
    gearmq_schemas::DEFAULT_MAX_MESSAGE_BYTES
}
fn default_max_request_lifetime() -> Duration {
    Duration::from_secs(3600)
}
fn default_max_token_ttl() -> Duration {
    gearmq_schemas::token::DEFAULT_MAX_TOKEN_TTL
}
fn default_clock_skew() -> Duration {
    Duration::from_secs(30)
}
fn default_action_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_stored_reply_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_max_log_lines() -> u32 {
    1000
}
fn default_max_log_bytes() -> usize {
    64 * 1024
}
fn default_unit_log_max_bytes() -> u64 {
    10 * 1024 * 1024
}
fn default_max_follow() -> Duration {
    Duration::from_secs(600)
}
fn default_max_streams() -> usize {
    16
}

/// Largest `limits.max_log_bytes`: a reply must stay well inside the default message
/// cap (256 KiB) of the orchestrators reading it, credential and encoding included.
pub const MAX_LOG_BYTES_CEILING: usize = 192 * 1024;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or parsed, or a key is missing, unknown or mistyped.
    #[error("config file {path}: {message}")]
    Load {
        /// The file.
        path: PathBuf,
        /// What the loader said (names the key).
        message: String,
    },
    /// The values parsed but break a rule.
    #[error("config file {path}: {key}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The offending key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl AgentConfig {
    /// Loads `path` with the process environment's `GEARMQ_AGENT__…` overrides.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, None)
    }

    /// Loads `path`, taking overrides from `env` instead of the process environment
    /// when given (so tests need not mutate the process environment).
    pub fn load_with_env(
        path: &Path,
        env: Option<HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let load_err = |e: config::ConfigError| ConfigError::Load {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let settings = Config::builder()
            .add_source(File::from(path).format(FileFormat::Toml).required(true))
            .add_source(
                Environment::with_prefix("GEARMQ_AGENT")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("broker.urls")
                    .with_list_parse_key("trusted_issuers")
                    .with_list_parse_key("systemd.allowed_exec_prefixes")
                    .with_list_parse_key("systemd.allowed_loader_env")
                    .source(env),
            )
            .build()
            .map_err(load_err)?;
        let cfg: AgentConfig = settings.try_deserialize().map_err(load_err)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
        if self.trusted_issuers.is_empty() {
            return Err(invalid(
                "trusted_issuers",
                "at least one issuer key file is needed".into(),
            ));
        }
        self.broker
            .validate(gearmq_io::broker::Program::Agent)
            .map_err(|e| match e.key {
                // An agent logs in as its host: say which name that is.
                "broker.user_id" => invalid(
                    e.key,
                    format!("{} (the host name {})", e.message, self.name),
                ),
                _ => invalid(e.key, e.message),
            })?;
        if let Some(addr) = self.metrics.listen
            && !addr.ip().is_loopback()
            && !self.metrics.allow_non_loopback
        {
            return Err(invalid(
                "metrics.listen",
                format!(
                    "{addr} is not a loopback address and the endpoint has no authentication; \
                     listen on 127.0.0.1 or [::1], or set metrics.allow_non_loopback = true"
                ),
            ));
        }
        let interval = gearmq_schemas::time::duration_ms(self.events.interval);
        if !(gearmq_schemas::event::MIN_INTERVAL_MS..=gearmq_schemas::event::MAX_INTERVAL_MS)
            .contains(&interval)
        {
            return Err(invalid(
                "events.interval",
                "must be between 1s and 1h".into(),
            ));
        }
        if self.audit.max_bytes == Some(0) {
            return Err(invalid("audit.max_bytes", "must be more than 0".into()));
        }
        let l = &self.limits;
        if l.max_message_bytes == 0 || l.max_message_bytes > MAX_MESSAGE_BYTES_CEILING {
            return Err(invalid(
                "limits.max_message_bytes",
                format!(
                    "must be between 1 and {MAX_MESSAGE_BYTES_CEILING}: an audit record holds a request \
                     with its reply and the host credential in at most {} bytes",
                    gearmq_schemas::audit::MAX_RECORD_BYTES
                ),
            ));
        }
        if l.max_request_lifetime.is_zero() {
            return Err(invalid(
                "limits.max_request_lifetime",
                "must be more than 0".into(),
            ));
        }
        if l.max_token_ttl.is_zero() {
            return Err(invalid(
                "limits.max_token_ttl",
                "must be more than 0".into(),
            ));
        }
        if l.action_timeout.is_zero() {
            return Err(invalid(
                "limits.action_timeout",
                "must be more than 0".into(),
            ));
        }
        if l.max_log_lines == 0 {
            return Err(invalid("limits.max_log_lines", "must be at least 1".into()));
        }
        if !(1024..=MAX_LOG_BYTES_CEILING).contains(&l.max_log_bytes) {
            return Err(invalid(
                "limits.max_log_bytes",
                format!("must be between 1024 and {MAX_LOG_BYTES_CEILING}"),
            ));
        }
        if l.unit_log_max_bytes < 64 * 1024 {
            return Err(invalid(
                "limits.unit_log_max_bytes",
                "must be at least 65536".into(),
            ));
        }
        if l.max_follow.is_zero() {
            return Err(invalid("limits.max_follow", "must be more than 0".into()));
        }
        if l.max_streams == 0 {
            return Err(invalid("limits.max_streams", "must be at least 1".into()));
        }
        Allowlist::new(self.existing.clone()).map_err(|m| invalid("existing", m))?;
        self.validate_systemd(path)
    }

    /// The `[systemd]` settings with the environment's defaults and the `[[existing]]`
    /// allowlist, for the agent's unit actions.
    pub fn systemd_settings(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<SystemdSettings, String> {
        let mut s = self.systemd.resolve(env)?;
        // Checked when the file was loaded.
        s.existing = Allowlist::new(self.existing.clone())?;
        Ok(s)
    }

    fn validate_systemd(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
        let s = &self.systemd;
        if s.address.as_deref() == Some("") {
            return Err(invalid("systemd.address", "must not be empty".into()));
        }
        if let Some(d) = s.artifact_dir.as_ref().filter(|d| !d.is_absolute()) {
            return Err(invalid(
                "systemd.artifact_dir",
                format!("{} is not an absolute path", d.display()),
            ));
        }
        if let Some(d) = s.journal_dir.as_ref().filter(|d| !d.is_absolute()) {
            return Err(invalid(
                "systemd.journal_dir",
                format!("{} is not an absolute path", d.display()),
            ));
        }
        if let Some(d) = s.unit_dir.as_ref().filter(|d| !d.is_absolute()) {
            return Err(invalid(
                "systemd.unit_dir",
                format!("{} is not an absolute path", d.display()),
            ));
        }
        if let Some(u) = &s.run_as {
            if s.bus == BusKind::User {
                return Err(invalid(
                    "systemd.run_as",
                    "applies to the system bus only (a user manager runs units as its user)".into(),
                ));
            }
            if !is_user_name(u) {
                return Err(invalid(
                    "systemd.run_as",
                    format!("{u:?} is not a user name ([a-z_][a-z0-9_-]*, at most 32)"),
                ));
            }
            if u == "root" && !s.allow_root {
                return Err(invalid(
                    "systemd.run_as",
                    "running units as root needs systemd.allow_root = true".into(),
                ));
            }
        }
        for p in &s.allowed_exec_prefixes {
            if !p.starts_with('/')
                || p.split('/').any(|c| c == "..")
                || p.chars().any(char::is_control)
            {
                return Err(invalid(
                    "systemd.allowed_exec_prefixes",
                    format!("{p:?} is not an absolute path without '..'"),
                ));
            }
        }
        for k in &s.allowed_loader_env {
            if !gearmq_schemas::units::is_loader_env(k) {
                return Err(invalid(
                    "systemd.allowed_loader_env",
                    format!(
                        "{k:?} is not a loader variable gearmq refuses (see agent/README.md), so listing it allows nothing; check the spelling"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A POSIX-portable user name as `useradd` accepts it by default.
fn is_user_name(u: &str) -> bool {
    let b = u.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_auto_follows_journald_and_explicit_modes_win() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("socket");
        let jdir = Path::new("/var/log/journal");
        assert_eq!(decide_output(OutputMode::Auto, None, &socket), Output::File);
        std::fs::write(&socket, b"").unwrap();
        assert_eq!(
            decide_output(OutputMode::Auto, Some(jdir), &socket),
            Output::Journal {
                dir: Some(jdir.to_path_buf())
            }
        );
        assert_eq!(decide_output(OutputMode::File, None, &socket), Output::File);
        std::fs::remove_file(&socket).unwrap();
        assert_eq!(
            decide_output(OutputMode::Journal, None, &socket),
            Output::Journal { dir: None }
        );
    }

    fn example_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("agent.example.toml")
    }

    #[test]
    fn example_file_loads_with_every_key() {
        let cfg = AgentConfig::load_with_env(&example_path(), Some(HashMap::new())).unwrap();
        assert_eq!(cfg.name.as_str(), "web1");
        assert_eq!(cfg.broker.urls.len(), 1);
        assert!(!cfg.broker.provisioned);
        assert_eq!(cfg.broker.prefetch(), 32);
        assert_eq!(cfg.broker.user_id, None);
        assert_eq!(cfg.broker.password_file, None);
        assert_eq!(cfg.broker.ca_file, None);
        assert_eq!(cfg.limits, Limits::default());
        assert_eq!(
            cfg.revocation_file.as_deref(),
            Some(Path::new("/etc/gearmq/revocations.bin"))
        );
        assert_eq!(cfg.audit.max_bytes(), DEFAULT_AUDIT_MAX_BYTES);
        assert_eq!(cfg.events, EventsConfig::default());
        assert_eq!(cfg.events.interval, Duration::from_secs(10));
        assert_eq!(
            cfg.audit.path(Path::new("/var/lib/gearmq/web1")),
            PathBuf::from("/var/lib/gearmq/web1/audit.log")
        );
    }

    #[test]
    fn tls_and_external_logins_need_their_keys() {
        let env = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let load = |pairs: &[(&str, &str)]| {
            AgentConfig::load_with_env(&example_path(), Some(env(pairs))).map_err(|e| e.to_string())
        };
        let tls = ("GEARMQ_AGENT__BROKER__URLS", "amqps://web1@broker:5671/%2f");
        let e = load(&[tls]).unwrap_err();
        assert!(e.contains("broker.ca_file"), "{e}");
        assert!(load(&[tls, ("GEARMQ_AGENT__BROKER__CA_FILE", "/ca.pem")]).is_ok());
        let ext = (
            "GEARMQ_AGENT__BROKER__URLS",
            "amqps://broker:5671/%2f?auth_mechanism=external",
        );
        let ca = ("GEARMQ_AGENT__BROKER__CA_FILE", "/ca.pem");
        let e = load(&[ext, ca]).unwrap_err();
        assert!(e.contains("broker.cert_file"), "{e}");
        let cert = ("GEARMQ_AGENT__BROKER__CERT_FILE", "/c.pem");
        let key = ("GEARMQ_AGENT__BROKER__KEY_FILE", "/k.pem");
        let e = load(&[ext, ca, cert]).unwrap_err();
        assert!(e.contains("broker.key_file"), "{e}");
        let e = load(&[ext, ca, cert, key]).unwrap_err();
        assert!(e.contains("broker.user_id") && e.contains("web1"), "{e}");
        let user = ("GEARMQ_AGENT__BROKER__USER_ID", "web1");
        let cfg = load(&[ext, ca, cert, key, user]).unwrap();
        assert_eq!(cfg.broker.user_id.as_deref(), Some("web1"));
        let e = load(&[("GEARMQ_AGENT__AUDIT__MAX_BYTES", "0")]).unwrap_err();
        assert!(e.contains("audit.max_bytes"), "{e}");
    }

    #[test]
    fn a_message_limit_an_audit_record_cannot_hold_is_refused() {
        let load = |v: usize| {
            let env = HashMap::from([(
                "GEARMQ_AGENT__LIMITS__MAX_MESSAGE_BYTES".to_string(),
                v.to_string(),
            )]);
            AgentConfig::load_with_env(&example_path(), Some(env)).map_err(|e| e.to_string())
        };
        assert_eq!(MAX_MESSAGE_BYTES_CEILING, 748 * 1024);
        assert!(load(MAX_MESSAGE_BYTES_CEILING).is_ok());
        let e = load(MAX_MESSAGE_BYTES_CEILING + 1).unwrap_err();
        assert!(
            e.contains("limits.max_message_bytes") && e.contains("audit record"),
            "{e}"
        );
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        std::fs::write(
            &p,
            r#"
name = "db2"
key_file = "/k"
credential_file = "/c"
trusted_issuers = ["/i"]
state_dir = "/s"
[broker]
urls = ["amqp://db2:pw@broker:5672/%2f"]
"#,
        )
        .unwrap();
        let cfg = AgentConfig::load_with_env(&p, Some(HashMap::new())).unwrap();
        assert_eq!(cfg.limits, Limits::default());
        assert_eq!(cfg.limits.clock_skew, Duration::from_secs(30));
        assert_eq!(cfg.broker.prefetch(), 32);
    }

    #[test]
    fn unknown_key_is_named_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.toml");
        let text = std::fs::read_to_string(example_path())
            .unwrap()
            .replace("prefetch = 32", "prefetch = 32\nprefech = 3");
        std::fs::write(&p, text).unwrap();
        let e = AgentConfig::load_with_env(&p, Some(HashMap::new()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("prefech"), "{e}");
        assert!(e.contains("bad.toml"), "{e}");
    }

    #[test]
    fn missing_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.toml");
        let text = std::fs::read_to_string(example_path())
            .unwrap()
            .replace("state_dir", "# state_dir");
        std::fs::write(&p, text).unwrap();
        let e = AgentConfig::load_with_env(&p, Some(HashMap::new()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("state_dir"), "{e}");
    }

    #[test]
    fn bad_duration_and_bad_name_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.toml");
        let base = std::fs::read_to_string(example_path()).unwrap();
        std::fs::write(&p, base.replace("\"30s\"", "\"thirty\"")).unwrap();
        assert!(AgentConfig::load_with_env(&p, Some(HashMap::new())).is_err());
        std::fs::write(&p, base.replace("\"web1\"", "\"Web.1\"")).unwrap();
        let e = AgentConfig::load_with_env(&p, Some(HashMap::new()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("Web.1"), "{e}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let env: HashMap<String, String> = [
            ("GEARMQ_AGENT__BROKER__PREFETCH", "8"),
            ("GEARMQ_AGENT__LIMITS__CLOCK_SKEW", "5s"),
            (
                "GEARMQ_AGENT__BROKER__URLS",
                "amqp://a:b@h1:5672/%2f,amqp://a:b@h2:5672/%2f",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let cfg = AgentConfig::load_with_env(&example_path(), Some(env)).unwrap();
        assert_eq!(cfg.broker.prefetch(), 8);
        assert_eq!(cfg.limits.clock_skew, Duration::from_secs(5));
        assert_eq!(cfg.broker.urls.len(), 2);
    }

    #[test]
    fn an_events_interval_outside_1s_to_1h_is_refused() {
        for bad in ["500ms", "2h"] {
            let env: HashMap<String, String> = [(
                "GEARMQ_AGENT__EVENTS__INTERVAL".to_string(),
                bad.to_string(),
            )]
            .into();
            let e = AgentConfig::load_with_env(&example_path(), Some(env))
                .unwrap_err()
                .to_string();
            assert!(e.contains("events.interval"), "{bad}: {e}");
        }
        let env: HashMap<String, String> = [(
            "GEARMQ_AGENT__EVENTS__INTERVAL".to_string(),
            "1s".to_string(),
        )]
        .into();
        let cfg = AgentConfig::load_with_env(&example_path(), Some(env)).unwrap();
        assert_eq!(cfg.events.interval, Duration::from_secs(1));
    }

    #[test]
    fn zero_prefetch_is_refused() {
        let env: HashMap<String, String> = [(
            "GEARMQ_AGENT__BROKER__PREFETCH".to_string(),
            "0".to_string(),
        )]
        .into();
        let e = AgentConfig::load_with_env(&example_path(), Some(env))
            .unwrap_err()
            .to_string();
        assert!(e.contains("broker.prefetch"), "{e}");
    }

    #[test]
    fn systemd_defaults_follow_the_bus() {
        let cfg = AgentConfig::load_with_env(&example_path(), Some(HashMap::new())).unwrap();
        assert_eq!(cfg.systemd, SystemdConfig::default());
        let env = |k: &str| match k {
            "XDG_RUNTIME_DIR" => Some("/run/user/7".to_string()),
            "HOME" => Some("/home/u".to_string()),
            _ => None,
        };
        let sys = cfg.systemd.resolve(env).unwrap();
        assert_eq!(sys.address, None);
        assert_eq!(sys.unit_dir, PathBuf::from("/etc/systemd/system"));
        let user = SystemdConfig {
            bus: BusKind::User,
            ..SystemdConfig::default()
        };
        let u = user.resolve(env).unwrap();
        assert_eq!(u.address.as_deref(), Some("unix:path=/run/user/7/bus"));
        assert_eq!(u.unit_dir, PathBuf::from("/home/u/.config/systemd/user"));
        let u = user
            .resolve(|k| match k {
                "DBUS_SESSION_BUS_ADDRESS" => Some("unix:path=/x".to_string()),
                "XDG_CONFIG_HOME" => Some("/cfg".to_string()),
                _ => None,
            })
            .unwrap();
        assert_eq!(u.address.as_deref(), Some("unix:path=/x"));
        assert_eq!(u.unit_dir, PathBuf::from("/cfg/systemd/user"));
        assert!(user.resolve(|_| None).is_err());
    }

    #[test]
    fn systemd_keys_are_checked_by_name() {
        let cases = [
            ("GEARMQ_AGENT__SYSTEMD__RUN_AS", "root", "systemd.run_as"),
            (
                "GEARMQ_AGENT__SYSTEMD__RUN_AS",
                "Bad User",
                "systemd.run_as",
            ),
            (
                "GEARMQ_AGENT__SYSTEMD__UNIT_DIR",
                "relative/dir",
                "systemd.unit_dir",
            ),
            (
                "GEARMQ_AGENT__SYSTEMD__ALLOWED_EXEC_PREFIXES",
                "/opt,usr/bin",
                "systemd.allowed_exec_prefixes",
            ),
            (
                "GEARMQ_AGENT__SYSTEMD__ALLOWED_LOADER_ENV",
                "LD_LIBRARY_PATH,PYTHONPTH",
                "systemd.allowed_loader_env",
            ),
            (
                "GEARMQ_AGENT__LIMITS__MAX_LOG_BYTES",
                "10",
                "limits.max_log_bytes",
            ),
            (
                "GEARMQ_AGENT__LIMITS__MAX_STREAMS",
                "0",
                "limits.max_streams",
            ),
        ];
        for (k, v, key) in cases {
            let env: HashMap<String, String> = [(k.to_string(), v.to_string())].into();
            let e = AgentConfig::load_with_env(&example_path(), Some(env))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{k}={v}: {e}");
        }
        let env: HashMap<String, String> = [
            (
                "GEARMQ_AGENT__SYSTEMD__RUN_AS".to_string(),
                "root".to_string(),
            ),
            (
                "GEARMQ_AGENT__SYSTEMD__ALLOW_ROOT".to_string(),
                "true".to_string(),
            ),
            (
                "GEARMQ_AGENT__SYSTEMD__ALLOWED_EXEC_PREFIXES".to_string(),
                "/opt/apps,/usr/local/bin".to_string(),
            ),
            (
                "GEARMQ_AGENT__SYSTEMD__ALLOWED_LOADER_ENV".to_string(),
                "LD_LIBRARY_PATH,PYTHONPATH".to_string(),
            ),
        ]
        .into();
        let cfg = AgentConfig::load_with_env(&example_path(), Some(env)).unwrap();
        assert_eq!(cfg.systemd.run_as.as_deref(), Some("root"));
        assert_eq!(cfg.systemd.allowed_exec_prefixes.len(), 2);
        assert_eq!(
            cfg.systemd.allowed_loader_env,
            ["LD_LIBRARY_PATH", "PYTHONPATH"]
        );
    }
}
