//! Connecting to the broker: plain or TLS (rustls with the configured CA only), with
//! the password from a file and client certificates for the EXTERNAL mechanism.

use crate::config::BrokerConfig;
use gearmq_schemas::files::FileError;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::{Connection, ConnectionProperties};
use std::path::Path;
use std::time::Duration;

fn read(path: &Path) -> Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(|source| FileError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })
}

/// Refuses a secret file that group or others can read.
pub fn check_private(path: &Path) -> Result<(), FileError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|source| FileError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(FileError::LoosePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// The TLS settings of `cfg` (empty when it names no files).
pub fn tls_config(cfg: &BrokerConfig) -> Result<OwnedTLSConfig, FileError> {
    let cert_chain = match &cfg.ca_file {
        Some(p) => Some(String::from_utf8_lossy(&read(p)?).into_owned()),
        None => None,
    };
    let identity = match (&cfg.cert_file, &cfg.key_file) {
        (Some(c), Some(k)) => {
            check_private(k)?;
            Some(OwnedIdentity::PKCS8 {
                pem: read(c)?,
                key: read(k)?,
            })
        }
        (None, None) => None,
        (Some(c), None) | (None, Some(c)) => {
            return Err(FileError::Invalid {
                path: c.clone(),
                reason: "cert_file and key_file go together".into(),
            });
        }
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

/// `url` with the password from `password_file` filled in when the URL has a user but
/// no password.
pub fn url_with_password(url: &str, cfg: &BrokerConfig) -> Result<String, FileError> {
    let Some(pf) = &cfg.password_file else {
        return Ok(url.to_string());
    };
    check_private(pf)?;
    let password = String::from_utf8_lossy(&read(pf)?).trim().to_string();
    // amqp://user@host... → amqp://user:password@host...
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if !url[s + 3..at].contains(':') => Ok(format!(
            "{}:{}{}",
            &url[..at],
            percent_encode(&password),
            &url[at..]
        )),
        _ => Ok(url.to_string()),
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

/// Connects to `url` with `cfg`'s TLS settings, bounded by `limit`.
pub async fn connect(
    url: &str,
    cfg: &BrokerConfig,
    props: ConnectionProperties,
    limit: Duration,
) -> Result<Connection, String> {
    let tls = tls_config(cfg).map_err(|e| e.to_string())?;
    let url = url_with_password(url, cfg).map_err(|e| e.to_string())?;
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
