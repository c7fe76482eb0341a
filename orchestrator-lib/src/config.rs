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

/// How to reach the broker: the same `[broker]` section and checks as the agent's.
pub use gearmq_io::broker::BrokerConfig;

/// Defaults for calls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallDefaults {
    /// How long a call waits for replies.
    #[serde(with = "humantime_serde", default = "default_timeout")]
    pub timeout: Duration,
    /// Publish requests of the read-only actions (ping, status, list, logs, facts,
    /// cancel, stats) as persistent messages too. Off: they are transient (not written
    /// to the broker's disk); a read lost with a restarting broker is published again
    /// by the reconnect, like every call in flight. Mutations are always persistent.
    #[serde(default)]
    pub persistent_reads: bool,
    /// A call reaching at least this many hosts goes out as **one** publish on the
    /// `all` route instead of one per host, when it is for the whole inventory (`--all`),
    /// or for a label selection or a list of inventory hosts holding at least half of
    /// it; every host the broker
    /// binds to `all` receives it, and those the signed targets do not name drop it
    /// unanswered. 0: always one publish per host.
    #[serde(default = "default_broadcast_min_hosts")]
    pub broadcast_min_hosts: usize,
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

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_broadcast_min_hosts() -> usize {
    32
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
            persistent_reads: false,
            broadcast_min_hosts: default_broadcast_min_hosts(),
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
    /// Loads `path`, then applies `GEARMQ_ORCHESTRATOR__SECTION__KEY` overrides, and
    /// checks that the `[broker]` section can connect.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let cfg = Self::load_unconnected(path)?;
        cfg.broker
            .validate(gearmq_io::broker::Program::Orchestrator)
            .map_err(|e| ConfigError {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(cfg)
    }

    /// Like [`load`](Self::load) without checking the `[broker]` section's connection
    /// settings (TLS files, mechanism): for work that never connects over AMQP, such
    /// as planning a broker's users and permissions.
    pub fn load_unconnected(path: &Path) -> Result<Self, ConfigError> {
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
        assert!(cfg.broker.require_user_id());
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
