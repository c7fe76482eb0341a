//! The agent's configuration file (written by `gearmq init`) and its loading.
//!
//! Sources, later ones winning: defaults in code → the TOML file → environment
//! variables `GEARMQ_AGENT__<SECTION>__<KEY>` (e.g. `GEARMQ_AGENT__BROKER__PREFETCH=8`).
//! Unknown keys are errors that name the key; every error names the file.

use config::{Config, Environment, File, FileFormat};
use gearmq_schemas::Name;
use lapin::uri::AMQPUri;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest `limits.max_message_bytes` accepted: far above any real request, low enough
/// that a typo cannot turn the size check off.
pub const MAX_MESSAGE_BYTES_CEILING: usize = 16 * 1024 * 1024;

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
    /// Absolute path prefixes programs must be under; empty allows any program.
    #[serde(default)]
    pub allowed_exec_prefixes: Vec<String>,
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
        })
    }
}

/// The `[broker]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// AMQP URLs, tried in order and round robin on reconnect.
    pub urls: Vec<String>,
    /// `true`: the topology exists already (declare passively); `false`: declare it.
    #[serde(default)]
    pub provisioned: bool,
    /// QoS prefetch, which is also the most requests handled at once.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// The `user_id` set on replies; default: the user name in the URL in use. Must
    /// be set (to the host name) for EXTERNAL logins, whose URL has no user.
    #[serde(default)]
    pub user_id: Option<String>,
    /// The broker password, read from this file (mode 0600) at every connect; used
    /// when a URL has a user but no password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// CA certificate(s), PEM, that `amqps://` brokers must chain to. Only these are
    /// trusted: system roots never are.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate, PEM, for TLS; with `?auth_mechanism=external` in the URL
    /// the broker user is its common name.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key, PEM PKCS#8 (mode 0600).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Longest delay between reconnect attempts (the delay starts at 100 ms and
    /// doubles, with jitter, up to this).
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
}

fn default_reconnect_max() -> Duration {
    crate::server::BACKOFF_MAX
}

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
        }
    }
}

fn default_prefetch() -> u16 {
    32
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
        if self.broker.urls.is_empty() {
            return Err(invalid(
                "broker.urls",
                "at least one broker URL is needed".into(),
            ));
        }
        let b = &self.broker;
        if b.cert_file.is_some() != b.key_file.is_some() {
            let key = if b.cert_file.is_some() {
                "broker.key_file"
            } else {
                "broker.cert_file"
            };
            return Err(invalid(
                key,
                "broker.cert_file and broker.key_file go together".into(),
            ));
        }
        for url in &self.broker.urls {
            let parsed = url.parse::<AMQPUri>().map_err(|e| {
                invalid(
                    "broker.urls",
                    format!("{} is not an AMQP URL: {e}", redact_url(url)),
                )
            })?;
            self.validate_broker_url(url, &parsed, path)?;
        }
        if self.audit.max_bytes == Some(0) {
            return Err(invalid("audit.max_bytes", "must be more than 0".into()));
        }
        if self.broker.prefetch == 0 {
            return Err(invalid("broker.prefetch", "must be at least 1".into()));
        }
        if self.broker.user_id.as_deref() == Some("") {
            return Err(invalid("broker.user_id", "must not be empty".into()));
        }
        let l = &self.limits;
        if l.max_message_bytes == 0 || l.max_message_bytes > MAX_MESSAGE_BYTES_CEILING {
            return Err(invalid(
                "limits.max_message_bytes",
                format!("must be between 1 and {MAX_MESSAGE_BYTES_CEILING}"),
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
        self.validate_systemd(path)
    }

    /// TLS and EXTERNAL need their files and a user_id; each mistake is named here
    /// rather than found as a failed handshake later.
    fn validate_broker_url(
        &self,
        url: &str,
        parsed: &AMQPUri,
        path: &Path,
    ) -> Result<(), ConfigError> {
        let invalid = |key, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
        let b = &self.broker;
        let shown = redact_url(url);
        if parsed.scheme == lapin::uri::AMQPScheme::AMQPS && b.ca_file.is_none() {
            return Err(invalid(
                "broker.ca_file",
                format!(
                    "{shown} is a TLS URL; set the CA its certificate must chain to (system roots are never trusted)"
                ),
            ));
        }
        let external = parsed.query.auth_mechanism == Some(lapin::uri::SASLMechanism::External);
        if external {
            if b.cert_file.is_none() {
                return Err(invalid(
                    "broker.cert_file",
                    format!("{shown} logs in with EXTERNAL, which needs a client certificate"),
                ));
            }
            if b.user_id.is_none() {
                return Err(invalid(
                    "broker.user_id",
                    format!(
                        "{shown} logs in with EXTERNAL (no user in the URL); set user_id to the certificate's common name, the host name {}",
                        self.name
                    ),
                ));
            }
        }
        Ok(())
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

/// A broker URL with the password removed, for logs: `amqp://user@host:port/vhost`.
///
/// Text that does not parse is shown as `<unparsable URL>` so a password cannot leak
/// through a typo.
pub fn redact_url(url: &str) -> String {
    match url.parse::<AMQPUri>() {
        Ok(u) => {
            // Display of AMQPUri includes the password; rebuild without it. The vhost
            // is shown percent-encoded the way it is written in URLs.
            let vhost = if u.vhost == "/" {
                "%2f".to_string()
            } else {
                u.vhost.replace('%', "%25").replace('/', "%2f")
            };
            // A URL without a user (EXTERNAL) parses with the default "guest": show none.
            let has_user = url
                .split_once("://")
                .and_then(|(_, rest)| rest.split(['/', '?', '#']).next())
                .is_some_and(|authority| authority.contains('@'));
            let user = if has_user {
                format!("{}@", u.authority.userinfo.username)
            } else {
                String::new()
            };
            format!(
                "{}://{user}{}:{}/{}",
                u.scheme, u.authority.host, u.authority.port, vhost
            )
        }
        Err(_) => "<unparsable URL>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("agent.example.toml")
    }

    #[test]
    fn example_file_loads_with_every_key() {
        let cfg = AgentConfig::load_with_env(&example_path(), Some(HashMap::new())).unwrap();
        assert_eq!(cfg.name.as_str(), "web1");
        assert_eq!(cfg.broker.urls.len(), 1);
        assert!(!cfg.broker.provisioned);
        assert_eq!(cfg.broker.prefetch, 32);
        assert_eq!(cfg.broker.user_id, None);
        assert_eq!(cfg.broker.password_file, None);
        assert_eq!(cfg.broker.ca_file, None);
        assert_eq!(cfg.limits, Limits::default());
        assert_eq!(
            cfg.revocation_file.as_deref(),
            Some(Path::new("/etc/gearmq/revocations.bin"))
        );
        assert_eq!(cfg.audit.max_bytes(), DEFAULT_AUDIT_MAX_BYTES);
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
        assert_eq!(cfg.broker.prefetch, 32);
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
        assert_eq!(cfg.broker.prefetch, 8);
        assert_eq!(cfg.limits.clock_skew, Duration::from_secs(5));
        assert_eq!(cfg.broker.urls.len(), 2);
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
        ]
        .into();
        let cfg = AgentConfig::load_with_env(&example_path(), Some(env)).unwrap();
        assert_eq!(cfg.systemd.run_as.as_deref(), Some("root"));
        assert_eq!(cfg.systemd.allowed_exec_prefixes.len(), 2);
    }

    #[test]
    fn redacted_url_has_no_password() {
        let r = redact_url("amqp://web1:s3cret@broker.example:5672/%2f");
        assert_eq!(r, "amqp://web1@broker.example:5672/%2f");
        let r = redact_url("amqp://guest:guest@127.0.0.1:5672/gearmq-t-1");
        assert_eq!(r, "amqp://guest@127.0.0.1:5672/gearmq-t-1");
        assert_eq!(redact_url("not a url :pw@"), "<unparsable URL>");
        assert_eq!(
            redact_url("amqps://broker:5671/%2f?auth_mechanism=external"),
            "amqps://broker:5671/%2f"
        );
    }
}
