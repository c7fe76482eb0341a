//! The broker, the same way for every gearmq program: the `[broker]` section of the
//! agent's and the orchestrator's configs (one type, one validator), the files a
//! connection needs beyond its URL (TLS with only the configured CA — lapin is built
//! with rustls on ring and no platform verifier, so no system root is ever trusted —, a
//! client certificate for the EXTERNAL mechanism, the password from a file), URL
//! redaction, connecting, and reconnect backoff.
//!
//! Files are read at every connect, so a rotated certificate or password is used from
//! the next reconnect on; [`BrokerFiles::check`] reads them once at start, so that a
//! missing or loosely-permitted file stops the program with a clear message instead.

use crate::files::{insert_broker_password, load_broker_password, read_private_file};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::uri::{AMQPScheme, AMQPUri, SASLMechanism};
use lapin::{Connection, ConnectionProperties};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Which program a `[broker]` section belongs to: some keys are one program's only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// `gearmq-agent`.
    Agent,
    /// The orchestrator library and the `gearmq` CLI.
    Orchestrator,
}

/// The `[broker]` section, the same keys and meaning for the agent and the
/// orchestrator. Keys marked "agent" or "orchestrator" are refused in the other's config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// AMQP URLs, tried in order and round robin on reconnect (failover).
    pub urls: Vec<String>,
    /// `true`: the topology exists already (declare passively); `false`: declare it.
    #[serde(default)]
    pub provisioned: bool,
    /// The broker user this program publishes as, which the broker validates as each
    /// message's AMQP `user_id`. Default: the user name in the URL in use. Must be set
    /// for EXTERNAL logins, whose URL has no user (agent: the host name). Also accepted
    /// as `user`.
    #[serde(default, alias = "user")]
    pub user_id: Option<String>,
    /// The broker password, read from this file (mode 0600) at every connect; used when
    /// a URL has a user but no password. Never put a password on a command line.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// CA certificate(s), PEM, that `amqps://` brokers must chain to. Only these are
    /// trusted: system roots never are.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate, PEM, for TLS; with `?auth_mechanism=external` in the URL the
    /// broker user is its common name.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key, PEM PKCS#8 (mode 0600).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// First delay before reconnecting; doubles per failed attempt (with jitter) up to
    /// `reconnect_max`. Default 100 ms.
    #[serde(default = "default_reconnect_initial", with = "humantime_serde")]
    pub reconnect_initial: Duration,
    /// Longest delay between reconnect attempts. Default 10 s.
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Agent: QoS prefetch, which is also the most requests handled at once. Default 32.
    #[serde(default)]
    pub prefetch: Option<u16>,
    /// Orchestrator: require every reply's AMQP `user_id` to equal the host it names.
    /// Turn off only for a development broker without per-host users. Default true.
    #[serde(default)]
    pub require_user_id: Option<bool>,
    /// Orchestrator: most replies held in this process's reply queue (past it the
    /// broker refuses more). Default 100,000.
    #[serde(default)]
    pub reply_queue_max_length: Option<u32>,
}

/// Default `broker.prefetch`.
pub const DEFAULT_PREFETCH: u16 = 32;
/// Default `broker.reply_queue_max_length`.
pub const DEFAULT_REPLY_QUEUE_MAX_LENGTH: u32 = 100_000;

fn default_reconnect_initial() -> Duration {
    Duration::from_millis(100)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(10)
}

/// A `[broker]` key that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct BrokerConfigError {
    /// The key, as written in the config (`broker.ca_file`).
    pub key: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

impl BrokerConfig {
    /// A section with `urls` and every other key at its default.
    pub fn new(urls: Vec<String>) -> BrokerConfig {
        BrokerConfig {
            urls,
            provisioned: false,
            user_id: None,
            password_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            reconnect_initial: default_reconnect_initial(),
            reconnect_max: default_reconnect_max(),
            prefetch: None,
            require_user_id: None,
            reply_queue_max_length: None,
        }
    }

    /// The checks every program makes of its `[broker]` section: at least one URL,
    /// each an AMQP URL; a TLS URL names its CA; an EXTERNAL login has a client
    /// certificate and key and a `user_id`; `cert_file` and `key_file` go together;
    /// the reconnect delays are sane; and the other program's keys are absent.
    pub fn validate(&self, program: Program) -> Result<(), BrokerConfigError> {
        let invalid = |key, message: String| Err(BrokerConfigError { key, message });
        if self.urls.is_empty() {
            return invalid("broker.urls", "at least one broker URL is needed".into());
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            let key = if self.cert_file.is_some() {
                "broker.key_file"
            } else {
                "broker.cert_file"
            };
            return invalid(
                key,
                "broker.cert_file and broker.key_file go together".into(),
            );
        }
        for url in &self.urls {
            let shown = redact_url(url);
            let parsed = match url.parse::<AMQPUri>() {
                Ok(p) => p,
                Err(e) => {
                    return invalid("broker.urls", format!("{shown} is not an AMQP URL: {e}"));
                }
            };
            if parsed.scheme == AMQPScheme::AMQPS && self.ca_file.is_none() {
                return invalid(
                    "broker.ca_file",
                    format!(
                        "{shown} is a TLS URL; set the CA its certificate must chain to (system roots are never trusted)"
                    ),
                );
            }
            if parsed.query.auth_mechanism == Some(SASLMechanism::External) {
                if self.cert_file.is_none() {
                    return invalid(
                        "broker.cert_file",
                        format!("{shown} logs in with EXTERNAL, which needs a client certificate"),
                    );
                }
                if self.user_id.is_none() {
                    return invalid(
                        "broker.user_id",
                        format!(
                            "{shown} logs in with EXTERNAL (no user in the URL); set user_id to the certificate's common name"
                        ),
                    );
                }
            }
        }
        if self.user_id.as_deref() == Some("") {
            return invalid("broker.user_id", "must not be empty".into());
        }
        if self.reconnect_initial.is_zero() || self.reconnect_max < self.reconnect_initial {
            return invalid(
                "broker.reconnect_max",
                "reconnect_initial must be more than 0 and reconnect_max at least reconnect_initial".into(),
            );
        }
        let other = |key: &'static str, whose: &str| {
            invalid(
                key,
                format!("is {whose}'s only; remove it from this config"),
            )
        };
        match program {
            Program::Agent => {
                if self.require_user_id.is_some() {
                    return other("broker.require_user_id", "the orchestrator");
                }
                if self.reply_queue_max_length.is_some() {
                    return other("broker.reply_queue_max_length", "the orchestrator");
                }
                if self.prefetch == Some(0) {
                    return invalid("broker.prefetch", "must be at least 1".into());
                }
            }
            Program::Orchestrator => {
                if self.prefetch.is_some() {
                    return other("broker.prefetch", "the agent");
                }
                if self.reply_queue_max_length == Some(0) {
                    return invalid("broker.reply_queue_max_length", "must be at least 1".into());
                }
            }
        }
        Ok(())
    }

    /// `prefetch`, or its default.
    pub fn prefetch(&self) -> u16 {
        self.prefetch.unwrap_or(DEFAULT_PREFETCH)
    }

    /// `require_user_id`, or its default (true).
    pub fn require_user_id(&self) -> bool {
        self.require_user_id.unwrap_or(true)
    }

    /// `reply_queue_max_length`, or its default.
    pub fn reply_queue_max_length(&self) -> u32 {
        self.reply_queue_max_length
            .unwrap_or(DEFAULT_REPLY_QUEUE_MAX_LENGTH)
    }

    /// The files named in this section.
    pub fn files(&self) -> BrokerFiles {
        BrokerFiles {
            password_file: self.password_file.clone(),
            ca_file: self.ca_file.clone(),
            client: self.cert_file.clone().zip(self.key_file.clone()),
        }
    }

    /// The broker user messages are published as with `url`: `user_id`, else the
    /// URL's user name (percent-decoded; empty for a URL without one).
    pub fn user_for(&self, url: &str) -> String {
        match &self.user_id {
            Some(u) => u.clone(),
            None => url_user(url),
        }
    }
}

/// The user name in an AMQP URL, percent-decoded (empty when the URL has none or does
/// not parse).
pub fn url_user(url: &str) -> String {
    let has_user = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?', '#']).next())
        .is_some_and(|authority| authority.contains('@'));
    if !has_user {
        return String::new();
    }
    url.parse::<AMQPUri>()
        .map(|u| u.authority.userinfo.username)
        .unwrap_or_default()
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
            let user = url_user(url);
            let user = if user.is_empty() {
                String::new()
            } else {
                format!("{user}@")
            };
            format!(
                "{}://{user}{}:{}/{}",
                u.scheme, u.authority.host, u.authority.port, vhost
            )
        }
        Err(_) => "<unparsable URL>".to_string(),
    }
}

/// The delay before reconnect attempt `attempt` (0-based): `initial` doubling up to
/// `max`, then a random point in its upper half, so a fleet does not reconnect in
/// lockstep.
pub fn backoff_delay(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let base = initial
        .saturating_mul(2u32.saturating_pow(attempt.min(20)))
        .min(max.max(initial));
    let half = base / 2;
    let jitter_ms = rand::random_range(0..=half.as_millis() as u64);
    half + Duration::from_millis(jitter_ms)
}

/// Connects to `url` with `files` (TLS, password), bounded by `limit`. `frame_max`, if
/// given, is asked for unless the URL sets it.
pub async fn connect(
    url: &str,
    files: &BrokerFiles,
    frame_max: Option<u32>,
    props: ConnectionProperties,
    limit: Duration,
) -> Result<Connection, String> {
    let tls = files.tls_config().map_err(|e| e.to_string())?;
    let mut url = files.connect_url(url).map_err(|e| e.to_string())?;
    if let Some(n) = frame_max {
        url = with_frame_max(&url, n);
    }
    let runtime = lapin::runtime::default_runtime().map_err(|e| e.to_string())?;
    match tokio::time::timeout(
        limit,
        Connection::connect_with_config(&url, props, tls, runtime),
    )
    .await
    {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("timed out after {limit:?}")),
    }
}

/// A `[broker]` file (CA, client certificate or key, password file) that could not be
/// used; `what` names it as `broker CA file`, `broker client key`, ….
pub type BrokerFileError = crate::files::NamedFileError;

/// The files of a `[broker]` section.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BrokerFiles {
    /// `password_file`.
    pub password_file: Option<PathBuf>,
    /// `ca_file`.
    pub ca_file: Option<PathBuf>,
    /// `cert_file` and `key_file` (the config loader makes sure they come together).
    pub client: Option<(PathBuf, PathBuf)>,
}

impl BrokerFiles {
    /// Reads every file once, as a connect would: for start-up, so that a bad file is
    /// a configuration error rather than endless reconnects.
    pub fn check(&self) -> Result<(), BrokerFileError> {
        self.tls_config()?;
        if let Some(pf) = &self.password_file {
            read_password(pf)?;
        }
        Ok(())
    }

    /// The TLS settings: the CA to trust and the client identity, if configured.
    pub fn tls_config(&self) -> Result<OwnedTLSConfig, BrokerFileError> {
        let cert_chain = match &self.ca_file {
            Some(p) => {
                let text = read_text("broker CA file", p)?;
                if !text.contains("-----BEGIN CERTIFICATE-----") {
                    return Err(BrokerFileError::invalid(
                        "broker CA file",
                        p,
                        "holds no PEM certificate",
                    ));
                }
                Some(text)
            }
            None => None,
        };
        let identity = match &self.client {
            Some((cert, key)) => Some(OwnedIdentity::PKCS8 {
                key: read_private_file("broker client key", key)
                    .map_err(|e| e.named("broker client key"))?,
                pem: read("broker client certificate", cert)?,
            }),
            None => None,
        };
        Ok(OwnedTLSConfig {
            identity,
            cert_chain,
        })
    }

    /// The URL to connect with: `url` with the password from `password_file` filled in
    /// when the URL has a user but no password.
    pub fn connect_url(&self, url: &str) -> Result<String, BrokerFileError> {
        Ok(match &self.password_file {
            Some(pf) => insert_broker_password(url, &read_password(pf)?),
            None => url.to_string(),
        })
    }
}

/// `url` with `frame_max=<n>` added to its query, unless it has one.
pub fn with_frame_max(url: &str, frame_max: u32) -> String {
    let (base, fragment) = match url.find('#') {
        Some(i) => url.split_at(i),
        None => (url, ""),
    };
    let query = base.find('?').map(|i| &base[i + 1..]);
    if query.is_some_and(|q| q.split('&').any(|kv| kv.starts_with("frame_max="))) {
        return url.to_string();
    }
    let sep = match query {
        None => "?",
        Some("") => "",
        Some(_) => "&",
    };
    format!("{base}{sep}frame_max={frame_max}{fragment}")
}

fn read_password(path: &Path) -> Result<String, BrokerFileError> {
    load_broker_password(path).map_err(|e| e.named("broker password file"))
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, BrokerFileError> {
    std::fs::read(path).map_err(|e| BrokerFileError::read(what, path, &e))
}

fn read_text(what: &'static str, path: &Path) -> Result<String, BrokerFileError> {
    String::from_utf8(read(what, path)?)
        .map_err(|_| BrokerFileError::invalid(what, path, "is not text (PEM expected)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn password_from_the_file_goes_into_the_authority_only() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("broker.password");
        std::fs::write(&pw, "p@ss\n").unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        let files = BrokerFiles {
            password_file: Some(pw),
            ..BrokerFiles::default()
        };
        assert_eq!(
            files.connect_url("amqp://web1@h:5672/v?x=a@b").unwrap(),
            "amqp://web1:p%40ss@h:5672/v?x=a@b"
        );
        assert_eq!(
            files.connect_url("amqp://h/v?x=a@b").unwrap(),
            "amqp://h/v?x=a@b"
        );
    }

    #[test]
    fn frame_max_is_added_unless_the_url_sets_it() {
        for (url, want) in [
            ("amqp://h/%2f", "amqp://h/%2f?frame_max=16384"),
            ("amqp://h/%2f?", "amqp://h/%2f?frame_max=16384"),
            (
                "amqp://h/v?heartbeat=10",
                "amqp://h/v?heartbeat=10&frame_max=16384",
            ),
            ("amqp://h/v?frame_max=131072", "amqp://h/v?frame_max=131072"),
            (
                "amqp://h/v?heartbeat=5&frame_max=8192",
                "amqp://h/v?heartbeat=5&frame_max=8192",
            ),
        ] {
            assert_eq!(with_frame_max(url, 16 * 1024), want, "{url}");
            let parsed: lapin::uri::AMQPUri = want.parse().unwrap();
            assert!(parsed.query.frame_max.is_some(), "{want}");
        }
    }

    #[test]
    fn loose_secret_files_are_refused_naming_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("broker.password");
        std::fs::write(&pw, "s3cret\n").unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o640)).unwrap();
        let files = BrokerFiles {
            password_file: Some(pw.clone()),
            ..BrokerFiles::default()
        };
        let e = files.check().unwrap_err().to_string();
        assert!(e.contains("mode 0640"), "{e}");
        assert!(e.contains("chmod 600"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            files.connect_url("amqp://web1@h:5672/%2f").unwrap(),
            "amqp://web1:s3cret@h:5672/%2f"
        );

        let cert = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\n").unwrap();
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let files = BrokerFiles {
            client: Some((cert.clone(), key.clone())),
            ..BrokerFiles::default()
        };
        let e = files.check().unwrap_err().to_string();
        assert!(e.contains("client key") && e.contains("0644"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(files.check().is_ok());

        let files = BrokerFiles {
            ca_file: Some(key),
            ..BrokerFiles::default()
        };
        let e = files.check().unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    fn section(toml_text: &str) -> BrokerConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn one_validator_for_both_programs_names_the_key() {
        let err = |text: &str, program| section(text).validate(program).unwrap_err();
        for program in [Program::Agent, Program::Orchestrator] {
            assert_eq!(err("urls = []", program).key, "broker.urls");
            assert_eq!(err(r#"urls = ["http://x"]"#, program).key, "broker.urls");
            assert_eq!(
                err(r#"urls = ["amqps://u@h:5671/%2f"]"#, program).key,
                "broker.ca_file"
            );
            let ext = r#"urls = ["amqps://h:5671/%2f?auth_mechanism=external"]
                ca_file = "/ca.pem""#;
            assert_eq!(err(ext, program).key, "broker.cert_file");
            let ext_cert = format!("{ext}\ncert_file = \"/c.pem\"");
            assert_eq!(err(&ext_cert, program).key, "broker.key_file");
            let ext_key = format!("{ext_cert}\nkey_file = \"/k.pem\"");
            assert_eq!(err(&ext_key, program).key, "broker.user_id");
            let ok = format!("{ext_key}\nuser_id = \"web1\"");
            assert!(section(&ok).validate(program).is_ok());
            // The orchestrator's old spelling is the same key.
            let ok = format!("{ext_key}\nuser = \"ops\"");
            assert_eq!(section(&ok).user_id.as_deref(), Some("ops"));
        }
        let e = err(
            r#"urls = ["amqp://h"]
            require_user_id = false"#,
            Program::Agent,
        );
        assert_eq!(e.key, "broker.require_user_id");
        assert!(e.message.contains("orchestrator"), "{e}");
        let e = err(
            r#"urls = ["amqp://h"]
            prefetch = 8"#,
            Program::Orchestrator,
        );
        assert_eq!(e.key, "broker.prefetch");
        let e = err(
            r#"urls = ["amqp://h"]
            prefetch = 0"#,
            Program::Agent,
        );
        assert_eq!(e.key, "broker.prefetch");
    }

    #[test]
    fn defaults_and_the_user_of_a_url() {
        let c = section(r#"urls = ["amqp://web%2D1:pw@h:5672/%2f"]"#);
        assert_eq!(c.prefetch(), DEFAULT_PREFETCH);
        assert!(c.require_user_id());
        assert_eq!(c.reply_queue_max_length(), DEFAULT_REPLY_QUEUE_MAX_LENGTH);
        assert_eq!(c.user_for(&c.urls[0]), "web-1");
        assert_eq!(url_user("amqps://h:5671/%2f?auth_mechanism=external"), "");
        assert_eq!(
            redact_url("amqp://ops:s3cret@h:5672/%2f"),
            "amqp://ops@h:5672/%2f"
        );
        assert_eq!(redact_url("amqp://h:5672/v"), "amqp://h:5672/v");
        assert_eq!(redact_url("not a url s3cret"), "<unparsable URL>");
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_in_the_upper_half() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for (attempt, base_ms) in [
            (0, 100),
            (1, 200),
            (3, 800),
            (5, 3200),
            (6, 5000),
            (60, 5000),
        ] {
            for _ in 0..20 {
                let d = backoff_delay(attempt, initial, max).as_millis() as u64;
                assert!(d >= base_ms / 2 && d <= base_ms, "attempt {attempt}: {d}");
            }
        }
    }
}
