//! What a broker connection needs beyond its URL: TLS with only the configured CA
//! (lapin is built with rustls on ring and no platform verifier, so no system root is
//! ever trusted), a client certificate for the EXTERNAL mechanism, and the password
//! from a file. The same keys and meaning as the orchestrator's `[broker]` section.
//!
//! Files are read at every connect, so a rotated certificate or password is used from
//! the next reconnect on; [`ConnectFiles::check`] reads them once at start, so that a
//! missing or loosely-permitted file stops the agent with a clear message instead.

use crate::config::BrokerConfig;
use crate::identity::io_reason;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use std::path::{Path, PathBuf};

/// A broker file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BrokerFileError {
    /// It could not be read.
    #[error("cannot read broker {what} {path}: {reason}")]
    Read {
        /// What it holds.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The system's reason.
        reason: String,
    },
    /// A secret that group or others may read.
    #[error(
        "refusing broker {what} {path}: mode {mode:04o} lets other users read it (chmod 600 {path})"
    )]
    LoosePermissions {
        /// What it holds.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The content is not what it should be.
    #[error("broker {what} {path}: {reason}")]
    Invalid {
        /// What it holds.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The `[broker]` files of an agent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectFiles {
    /// `password_file`.
    pub password_file: Option<PathBuf>,
    /// `ca_file`.
    pub ca_file: Option<PathBuf>,
    /// `cert_file` and `key_file` (the config loader makes sure they come together).
    pub client: Option<(PathBuf, PathBuf)>,
}

impl ConnectFiles {
    /// The files named in `cfg`.
    pub fn from_config(cfg: &BrokerConfig) -> Self {
        ConnectFiles {
            password_file: cfg.password_file.clone(),
            ca_file: cfg.ca_file.clone(),
            client: cfg.cert_file.clone().zip(cfg.key_file.clone()),
        }
    }

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
                let text = read_text("CA file", p)?;
                if !text.contains("-----BEGIN CERTIFICATE-----") {
                    return Err(BrokerFileError::Invalid {
                        what: "CA file",
                        path: p.clone(),
                        reason: "holds no PEM certificate".into(),
                    });
                }
                Some(text)
            }
            None => None,
        };
        let identity = match &self.client {
            Some((cert, key)) => {
                check_private("client key", key)?;
                Some(OwnedIdentity::PKCS8 {
                    pem: read("client certificate", cert)?,
                    key: read("client key", key)?,
                })
            }
            None => None,
        };
        Ok(OwnedTLSConfig {
            identity,
            cert_chain,
        })
    }

    /// The URL the agent connects with: `url` with the password from
    /// `password_file` filled in when the URL has a user but no password, and with
    /// [`AGENT_FRAME_MAX`] unless the URL sets `frame_max` itself.
    pub fn connect_url(&self, url: &str) -> Result<String, BrokerFileError> {
        let url = match &self.password_file {
            Some(pf) => insert_password(url, &read_password(pf)?),
            None => url.to_string(),
        };
        Ok(with_frame_max(&url, AGENT_FRAME_MAX))
    }
}

/// The AMQP frame size the agent asks for. lapin keeps send and receive buffers of 32
/// frames each, zero-filled: at RabbitMQ's default of 128 KiB that is 8 MiB per
/// connection, most of an idle agent's memory. Requests and replies are a few KiB (a
/// larger message is simply split into more frames), so 16 KiB frames cost nothing
/// and keep the buffers at 1 MiB.
pub const AGENT_FRAME_MAX: u32 = 16 * 1024;

/// `url` with `frame_max=<n>` added to its query, unless it has one.
fn with_frame_max(url: &str, frame_max: u32) -> String {
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

/// `amqp://user@host…` → `amqp://user:<password percent-encoded>@host…`; a URL
/// without a user, or with a password already, is returned as it is.
fn insert_password(url: &str, password: &str) -> String {
    let Some(s) = url.find("://") else {
        return url.to_string();
    };
    let authority_end = url[s + 3..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| s + 3 + i);
    match url[s + 3..authority_end].rfind('@') {
        Some(at) if !url[s + 3..s + 3 + at].contains(':') => {
            let at = s + 3 + at;
            format!("{}:{}{}", &url[..at], percent_encode(password), &url[at..])
        }
        _ => url.to_string(),
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn read_password(path: &Path) -> Result<String, BrokerFileError> {
    check_private("password file", path)?;
    let text = read_text("password file", path)?;
    let password = text.trim();
    if password.is_empty() {
        return Err(BrokerFileError::Invalid {
            what: "password file",
            path: path.to_path_buf(),
            reason: "is empty".into(),
        });
    }
    Ok(password.to_string())
}

/// Refuses a secret file that group or others can read.
fn check_private(what: &'static str, path: &Path) -> Result<(), BrokerFileError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| BrokerFileError::Read {
            what,
            path: path.to_path_buf(),
            reason: io_reason(&e),
        })?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(BrokerFileError::LoosePermissions {
            what,
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, BrokerFileError> {
    std::fs::read(path).map_err(|e| BrokerFileError::Read {
        what,
        path: path.to_path_buf(),
        reason: io_reason(&e),
    })
}

fn read_text(what: &'static str, path: &Path) -> Result<String, BrokerFileError> {
    String::from_utf8(read(what, path)?).map_err(|_| BrokerFileError::Invalid {
        what,
        path: path.to_path_buf(),
        reason: "is not text (PEM expected)".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn password_goes_into_a_url_with_a_user_and_no_password() {
        assert_eq!(
            insert_password("amqp://web1@h:5672/%2f", "p@ss:w/rd"),
            "amqp://web1:p%40ss%3Aw%2Frd@h:5672/%2f"
        );
        assert_eq!(
            insert_password("amqp://web1:old@h:5672/%2f", "new"),
            "amqp://web1:old@h:5672/%2f"
        );
        assert_eq!(
            insert_password("amqps://h:5671/%2f?auth_mechanism=external", "x"),
            "amqps://h:5671/%2f?auth_mechanism=external"
        );
        // An '@' in the query is not the user separator.
        assert_eq!(insert_password("amqp://h/v?x=a@b", "x"), "amqp://h/v?x=a@b");
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
            assert_eq!(with_frame_max(url, AGENT_FRAME_MAX), want, "{url}");
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
        let files = ConnectFiles {
            password_file: Some(pw.clone()),
            ..ConnectFiles::default()
        };
        let e = files.check().unwrap_err().to_string();
        assert!(e.contains("mode 0640"), "{e}");
        assert!(e.contains("chmod 600"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            files.connect_url("amqp://web1@h:5672/%2f").unwrap(),
            "amqp://web1:s3cret@h:5672/%2f?frame_max=16384"
        );

        let cert = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\n").unwrap();
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let files = ConnectFiles {
            client: Some((cert.clone(), key.clone())),
            ..ConnectFiles::default()
        };
        let e = files.check().unwrap_err().to_string();
        assert!(e.contains("client key") && e.contains("0644"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(files.check().is_ok());

        let files = ConnectFiles {
            ca_file: Some(key),
            ..ConnectFiles::default()
        };
        let e = files.check().unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}
