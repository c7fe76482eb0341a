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
    /// Files holding trusted issuer public keys, one line of hex each.
    pub trusted_issuers: Vec<PathBuf>,
    /// Where the replay and result store lives; created 0700 if missing.
    pub state_dir: PathBuf,
    /// How to reach the broker.
    pub broker: BrokerConfig,
    /// Bounds on messages, time and storage.
    #[serde(default)]
    pub limits: Limits,
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
    /// The `user_id` set on replies; default: the user name in the URL in use.
    #[serde(default)]
    pub user_id: Option<String>,
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: default_max_message_bytes(),
            max_request_lifetime: default_max_request_lifetime(),
            clock_skew: default_clock_skew(),
            action_timeout: default_action_timeout(),
            max_stored_reply_bytes: default_max_stored_reply_bytes(),
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
fn default_clock_skew() -> Duration {
    Duration::from_secs(30)
}
fn default_action_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_stored_reply_bytes() -> usize {
    64 * 1024 * 1024
}

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
        for url in &self.broker.urls {
            url.parse::<AMQPUri>().map_err(|e| {
                invalid(
                    "broker.urls",
                    format!("{} is not an AMQP URL: {e}", redact_url(url)),
                )
            })?;
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
        if l.action_timeout.is_zero() {
            return Err(invalid(
                "limits.action_timeout",
                "must be more than 0".into(),
            ));
        }
        Ok(())
    }
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
            format!(
                "{}://{}@{}:{}/{}",
                u.scheme, u.authority.userinfo.username, u.authority.host, u.authority.port, vhost
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
        assert_eq!(cfg.limits, Limits::default());
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
    fn redacted_url_has_no_password() {
        let r = redact_url("amqp://web1:s3cret@broker.example:5672/%2f");
        assert_eq!(r, "amqp://web1@broker.example:5672/%2f");
        let r = redact_url("amqp://guest:guest@127.0.0.1:5672/gearmq-t-1");
        assert_eq!(r, "amqp://guest@127.0.0.1:5672/gearmq-t-1");
        assert_eq!(redact_url("not a url :pw@"), "<unparsable URL>");
    }
}
