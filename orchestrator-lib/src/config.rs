//! The orchestrator's configuration: `orchestrator.toml`, then `GEARMQ_ORCHESTRATOR__…`
//! environment variables.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything an orchestrator needs to sign requests and verify replies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrchestratorConfig {
    /// The operator name requests are signed as (must equal the credential's name).
    pub name: String,
    /// PEM PKCS#8 Ed25519 private key.
    pub key_file: PathBuf,
    /// The operator credential (issuer-signed).
    pub credential_file: PathBuf,
    /// Files with one trusted issuer public key each (hex).
    pub trusted_issuers: Vec<PathBuf>,
    /// Directory whose `*/host.cred` files are the inventory of enrolled hosts.
    pub inventory_dir: PathBuf,
    /// Issuer-signed revocation list (from `gearmq revoke`); replies signed by a
    /// revoked host credential are rejected as forged.
    #[serde(default)]
    pub revocation_file: Option<PathBuf>,
    /// Hosts that may send delegated requests (their broker users may publish to
    /// single hosts' routes); `gearmq broker provision` grants it.
    #[serde(default)]
    pub delegators: Vec<String>,
    /// Broker connection.
    pub broker: BrokerConfig,
    /// Defaults for calls.
    #[serde(default)]
    pub defaults: CallDefaults,
    /// Limits on what is accepted.
    #[serde(default)]
    pub limits: Limits,
    /// The audit log.
    #[serde(default)]
    pub audit: AuditConfig,
}

/// Where the audit log goes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The live log file (rotated to `<file>.1`, `.2`, … by size); none: no log.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Rotate past this many bytes.
    #[serde(default = "default_audit_max")]
    pub max_bytes: u64,
}

fn default_audit_max() -> u64 {
    64 * 1024 * 1024
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            file: None,
            max_bytes: default_audit_max(),
        }
    }
}

/// How to reach the broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// AMQP URLs, tried in order.
    pub urls: Vec<String>,
    /// Whether the broker was provisioned (then only passive declares are made).
    #[serde(default)]
    pub provisioned: bool,
    /// Require every reply's AMQP `user_id` to equal the host it names. Turn off only
    /// for a development broker without per-host users.
    #[serde(default = "default_true")]
    pub require_user_id: bool,
    /// Most replies held in this process's reply queue.
    #[serde(default = "default_reply_queue_max")]
    pub reply_queue_max_length: u32,
    /// The broker user's password, read from this file (never put on a command line);
    /// used when a URL has a user but no password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// CA certificate (PEM) that `amqps://` brokers must chain to. Only this CA is
    /// trusted: system roots never are.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for TLS; with `?auth_mechanism=external` in the URL the
    /// broker user is its common name.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM, PKCS#8; mode 0600).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The broker user (the AMQP `user_id` of every request). Default: the URL's user;
    /// set it for EXTERNAL logins, where the URL has none.
    #[serde(default)]
    pub user: Option<String>,
    /// First delay before reconnecting after the broker link broke; doubles per failed
    /// attempt (with jitter) up to `reconnect_max`.
    #[serde(with = "humantime_serde", default = "default_reconnect_initial")]
    pub reconnect_initial: Duration,
    /// Longest delay between reconnect attempts.
    #[serde(with = "humantime_serde", default = "default_reconnect_max")]
    pub reconnect_max: Duration,
}

fn default_reconnect_initial() -> Duration {
    Duration::from_millis(100)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(10)
}

/// Defaults for calls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallDefaults {
    /// How long a call waits for replies.
    #[serde(with = "humantime_serde", default = "default_timeout")]
    pub timeout: Duration,
}

/// Limits on what is accepted from the network.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest reply accepted, in bytes.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// Clock skew allowed when judging credential windows.
    #[serde(with = "humantime_serde", default = "default_skew")]
    pub clock_skew: Duration,
    /// How long finished request ids are remembered, so a straggler is `late`, not
    /// `unknown_request`.
    #[serde(with = "humantime_serde", default = "default_retention")]
    pub finished_retention: Duration,
}

fn default_true() -> bool {
    true
}
fn default_reply_queue_max() -> u32 {
    100_000
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_message() -> usize {
    gearmq_schemas::DEFAULT_MAX_MESSAGE_BYTES
}
fn default_skew() -> Duration {
    Duration::from_secs(30)
}
fn default_retention() -> Duration {
    Duration::from_secs(600)
}

impl Default for CallDefaults {
    fn default() -> Self {
        CallDefaults {
            timeout: default_timeout(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: default_max_message(),
            clock_skew: default_skew(),
            finished_retention: default_retention(),
        }
    }
}

/// A configuration that could not be loaded; says which file and key.
#[derive(Debug, thiserror::Error)]
#[error("cannot load orchestrator config {path}: {reason}")]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong, naming the key where there is one.
    pub reason: String,
}

impl OrchestratorConfig {
    /// Loads `path`, then applies `GEARMQ_ORCHESTRATOR__SECTION__KEY` overrides.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let err = |reason: String| ConfigError {
            path: path.to_path_buf(),
            reason,
        };
        if !path.is_file() {
            return Err(err("no such file".into()));
        }
        let built = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("GEARMQ_ORCHESTRATOR")
                    .prefix_separator("__")
                    .separator("__")
                    .list_separator(",")
                    .with_list_parse_key("broker.urls")
                    .with_list_parse_key("trusted_issuers")
                    .try_parsing(true),
            )
            .build()
            .map_err(|e| err(e.to_string()))?;
        let cfg: OrchestratorConfig = built.try_deserialize().map_err(|e| err(e.to_string()))?;
        if cfg.broker.urls.is_empty() {
            return Err(err("broker.urls is empty".into()));
        }
        if cfg.trusted_issuers.is_empty() {
            return Err(err("trusted_issuers is empty".into()));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_loads() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("orchestrator.example.toml");
        let cfg = OrchestratorConfig::load(&p).unwrap();
        assert_eq!(cfg.name, "ops");
        assert!(cfg.broker.require_user_id);
        assert_eq!(cfg.defaults.timeout, Duration::from_secs(5));
    }

    #[test]
    fn unknown_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o.toml");
        std::fs::write(
            &p,
            "name='a'\nkey_file='k'\ncredential_file='c'\ntrusted_issuers=['i']\ninventory_dir='d'\ncolour='red'\n[broker]\nurls=['amqp://x']\n",
        )
        .unwrap();
        let e = OrchestratorConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
        assert!(e.contains("o.toml"), "{e}");
    }

    #[test]
    fn missing_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o.toml");
        std::fs::write(&p, "name='a'\n[broker]\nurls=['amqp://x']\n").unwrap();
        let e = OrchestratorConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("key_file"), "{e}");
    }
}
