//! [`BrokerAdmin`] through the RabbitMQ management HTTP API (`rabbitmq_management`),
//! so provisioning can run away from the node: only the API's URL and an
//! administrator's login are needed, no Erlang cookie and no root on the broker.
//!
//! The password comes from the URL's userinfo or a file and is never shown: every
//! message names the URL as `http://user@host:port`. An `https://` URL trusts only the
//! CA file it is given, never system roots, like the AMQP connections.

use crate::broker_admin::{
    AdminError, BindingRow, BrokerAdmin, Deleted, NodeDescriptors, PermissionRow,
    TopicPermissionRow, UserRow, rows, tags, text,
};
use base64::Engine;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// Largest answer read (the bindings of a fleet of tens of thousands of hosts).
const BODY_LIMIT: u64 = 512 * 1024 * 1024;

/// How long the node may take to report its descriptor limit: the management agent
/// samples it every few seconds, so a freshly started node has none for a moment.
const LIMIT_WAIT: Duration = Duration::from_secs(15);

/// A management API endpoint and the login to use on it.
pub struct Management {
    /// `scheme://host:port[/prefix]`, no userinfo, no trailing slash.
    base: String,
    /// `scheme://user@host:port[/prefix]`, for messages.
    shown: String,
    user: String,
    authorization: String,
    agent: ureq::Agent,
}

/// A management URL taken apart; the password, if any, kept out of `Display`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ManagementUrl {
    scheme: String,
    user: Option<String>,
    password: Option<String>,
    /// `host:port` (or `[v6]:port`), as written.
    host: String,
    /// The path before `/api`, without a trailing slash (`""` usually).
    prefix: String,
}

fn parse_url(url: &str) -> Result<ManagementUrl, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("expected http://[user[:password]@]host:port")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(format!("scheme {scheme} is neither http nor https"));
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if path.contains(['?', '#']) {
        return Err("a management URL takes no query or fragment".into());
    }
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if host.is_empty() {
        return Err("it names no host".into());
    }
    let (user, password) = match userinfo {
        None => (None, None),
        Some(u) => match u.split_once(':') {
            Some((user, pw)) => (Some(percent_decode(user)?), Some(percent_decode(pw)?)),
            None => (Some(percent_decode(u)?), None),
        },
    };
    let prefix = path.trim_end_matches('/');
    let prefix = prefix.strip_suffix("/api").unwrap_or(prefix).to_string();
    Ok(ManagementUrl {
        scheme,
        user: user.filter(|u| !u.is_empty()),
        password: password.filter(|p| !p.is_empty()),
        host: host.to_string(),
        prefix,
    })
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("a % in the user or password is not followed by two hex digits")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the user or password is not UTF-8".to_string())
}

/// One path segment, percent-encoded (`/` is the default vhost's name, `%2F` here).
fn segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `url` as it may be shown: the password removed, anything unparsable hidden whole.
pub fn redact_management_url(url: &str) -> String {
    match parse_url(url) {
        Ok(u) => shown(&u),
        Err(_) => "<unparsable management URL>".into(),
    }
}

fn shown(u: &ManagementUrl) -> String {
    let user = u.user.as_ref().map(|n| format!("{n}@")).unwrap_or_default();
    format!("{}://{user}{}{}", u.scheme, u.host, u.prefix)
}

impl Management {
    /// The API at `url` (`http[s]://user[:password]@host:port`). The password is the
    /// URL's, else `password` (from a file or the environment, which the caller read);
    /// `ca_file` is the only CA an `https://` URL is trusted under.
    pub fn new(
        url: &str,
        password: Option<String>,
        ca_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<Management, AdminError> {
        let u = parse_url(url).map_err(|e| {
            AdminError::Setup(format!(
                "management URL {} does not parse: {e}",
                redact_management_url(url)
            ))
        })?;
        let shown = shown(&u);
        let user = u.user.clone().ok_or_else(|| {
            AdminError::Setup(format!(
                "management URL {shown} names no user: write it as \
                 {}://USER@{}{} (an administrator of the broker)",
                u.scheme, u.host, u.prefix
            ))
        })?;
        let password = u.password.clone().or(password).ok_or_else(|| {
            AdminError::Setup(format!(
                "no password for management user {user}: give --management-password-file \
                 FILE (mode 0600) or GEARMQ_MANAGEMENT_PASSWORD, or put it in the URL"
            ))
        })?;
        let mut tls = ureq::tls::TlsConfig::builder();
        if u.scheme == "https" {
            let ca = ca_file.ok_or_else(|| {
                AdminError::Setup(format!(
                    "management URL {shown} is https: give the CA its certificate chains \
                     to with --management-ca FILE (system roots are never trusted)"
                ))
            })?;
            let pem = std::fs::read(ca).map_err(|e| {
                AdminError::Setup(format!(
                    "cannot read management CA file {}: {}",
                    ca.display(),
                    crate::io_reason(&e)
                ))
            })?;
            let certs = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    AdminError::Setup(format!(
                        "management CA file {} does not parse as PEM: {e}",
                        ca.display()
                    ))
                })?;
            if certs.is_empty() {
                return Err(AdminError::Setup(format!(
                    "management CA file {} holds no certificate",
                    ca.display()
                )));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(timeout))
            .tls_config(tls.build())
            .build()
            .new_agent();
        let authorization = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        Ok(Management {
            base: format!("{}://{}{}", u.scheme, u.host, u.prefix),
            shown,
            user,
            authorization,
            agent,
        })
    }

    /// Sends `method /api/PATH` (with a JSON `body`); the status and the answer's text.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, String), AdminError> {
        let url = format!("{}/api/{path}", self.base);
        let what = format!("{method} /api/{path}");
        let sent = match (method, body) {
            ("GET", _) => self
                .agent
                .get(&url)
                .header("Authorization", &self.authorization)
                .call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("Authorization", &self.authorization)
                .call(),
            (_, b) => self
                .agent
                .post(&url)
                .header("Authorization", &self.authorization)
                .content_type("application/json")
                .send(b.map(Value::to_string).unwrap_or_default()),
        };
        let mut response = sent.map_err(|e| AdminError::Unreachable {
            via: self.via(),
            reason: format!("{what}: {e}"),
        })?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(BODY_LIMIT)
            .read_to_string()
            .map_err(|e| AdminError::Unreachable {
                via: self.via(),
                reason: format!("{what}: reading the answer: {e}"),
            })?;
        if status == 401 {
            return Err(AdminError::Unauthorized {
                via: self.via(),
                user: self.user.clone(),
            });
        }
        Ok((status, text))
    }

    /// `GET /api/PATH` as JSON rows; any status but 200 is an error.
    fn get_rows(&self, path: &str) -> Result<Vec<Value>, AdminError> {
        let (status, text) = self.request("GET", path, None)?;
        if status != 200 {
            return Err(self.failed(&format!("GET /api/{path}"), status, &text));
        }
        rows(&text).map_err(|reason| AdminError::BadAnswer {
            via: self.via(),
            what: format!("GET /api/{path}"),
            reason,
        })
    }

    fn failed(&self, what: &str, status: u16, text: &str) -> AdminError {
        // The API explains itself in {"error": …, "reason": …}.
        let reason = serde_json::from_str::<Value>(text)
            .ok()
            .map(|v| {
                [text_of(&v, "error"), text_of(&v, "reason")]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(": ")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| text.chars().take(200).collect());
        let hint = if status == 403 {
            " (the user needs the administrator tag)"
        } else {
            ""
        };
        AdminError::Failed {
            via: self.via(),
            what: what.to_string(),
            reason: format!("HTTP {status}: {reason}{hint}"),
        }
    }

    fn delete(&self, path: &str) -> Result<Deleted, AdminError> {
        match self.request("DELETE", path, None)? {
            (200..=299, _) => Ok(Deleted::Deleted),
            (404, _) => Ok(Deleted::Absent),
            (status, text) => Err(self.failed(&format!("DELETE /api/{path}"), status, &text)),
        }
    }
}

fn text_of(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

impl BrokerAdmin for Management {
    fn via(&self) -> String {
        format!("the management API {}", self.shown)
    }

    fn import_definitions(&self, definitions: &Value) -> Result<(), AdminError> {
        match self.request("POST", "definitions", Some(definitions))? {
            (200..=299, _) => Ok(()),
            (status, text) => Err(self.failed("POST /api/definitions", status, &text)),
        }
    }

    fn users(&self) -> Result<Vec<UserRow>, AdminError> {
        Ok(self
            .get_rows("users")?
            .iter()
            .map(|u| UserRow {
                name: text(u, "name"),
                tags: tags(&u["tags"]),
            })
            .collect())
    }

    fn permissions(&self, vhost: &str) -> Result<Vec<PermissionRow>, AdminError> {
        Ok(self
            .get_rows(&format!("vhosts/{}/permissions", segment(vhost)))?
            .iter()
            .map(|p| PermissionRow {
                user: text(p, "user"),
                configure: text(p, "configure"),
                write: text(p, "write"),
                read: text(p, "read"),
            })
            .collect())
    }

    fn topic_permissions(&self, vhost: &str) -> Result<Vec<TopicPermissionRow>, AdminError> {
        Ok(self
            .get_rows(&format!("vhosts/{}/topic-permissions", segment(vhost)))?
            .iter()
            .map(|t| TopicPermissionRow {
                user: text(t, "user"),
                exchange: text(t, "exchange"),
                write: text(t, "write"),
                read: text(t, "read"),
            })
            .collect())
    }

    fn queues(&self, vhost: &str) -> Result<Vec<String>, AdminError> {
        // Names only, without message rates: thousands of queues stay a small answer.
        Ok(self
            .get_rows(&format!(
                "queues/{}?disable_stats=true&columns=name",
                segment(vhost)
            ))?
            .iter()
            .map(|q| text(q, "name"))
            .collect())
    }

    fn bindings(&self, vhost: &str) -> Result<Vec<BindingRow>, AdminError> {
        Ok(self
            .get_rows(&format!("bindings/{}", segment(vhost)))?
            .iter()
            .map(|b| BindingRow {
                source: text(b, "source"),
                destination: text(b, "destination"),
                routing_key: text(b, "routing_key"),
            })
            .collect())
    }

    fn descriptor_limits(&self) -> Result<Vec<NodeDescriptors>, AdminError> {
        let deadline = std::time::Instant::now() + LIMIT_WAIT;
        loop {
            let nodes: Vec<NodeDescriptors> = self
                .get_rows("nodes?columns=name,running,fd_total")?
                .iter()
                .filter(|n| n["running"].as_bool().unwrap_or(true))
                .map(|n| NodeDescriptors {
                    node: text(n, "name"),
                    limit: n["fd_total"].as_u64().filter(|l| *l > 0),
                })
                .collect();
            let waiting = nodes.is_empty() || nodes.iter().any(|n| n.limit.is_none());
            if !waiting || std::time::Instant::now() >= deadline {
                return Ok(nodes);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn delete_queue(&self, vhost: &str, queue: &str) -> Result<Deleted, AdminError> {
        self.delete(&format!("queues/{}/{}", segment(vhost), segment(queue)))
    }

    fn delete_user(&self, user: &str) -> Result<Deleted, AdminError> {
        self.delete(&format!("users/{}", segment(user)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_taken_apart_and_shown_without_the_password() {
        let u = parse_url("http://ops:s%40cr3t@127.0.0.1:15672/").unwrap();
        assert_eq!(u.user.as_deref(), Some("ops"));
        assert_eq!(u.password.as_deref(), Some("s@cr3t"));
        assert_eq!(u.host, "127.0.0.1:15672");
        assert_eq!(u.prefix, "");
        assert_eq!(
            redact_management_url("http://ops:s%40cr3t@127.0.0.1:15672/"),
            "http://ops@127.0.0.1:15672"
        );
        let p = parse_url("https://broker:443/rabbit/api/").unwrap();
        assert_eq!(
            (p.user, p.password, p.prefix.as_str()),
            (None, None, "/rabbit")
        );
        assert_eq!(
            redact_management_url("ftp://a:secret@h"),
            "<unparsable management URL>"
        );
        assert_eq!(
            redact_management_url("http://a:secret@h:1/?x=secret"),
            "<unparsable management URL>"
        );
    }

    #[test]
    fn a_password_never_reaches_a_message() {
        for url in [
            "http://127.0.0.1:15672",
            "https://ops:hunter2@h:15671",
            "http://ops:hunter2@h:1/x?q",
        ] {
            let err = Management::new(url, None, None, Duration::from_secs(1))
                .err()
                .expect("refused");
            let text = err.to_string();
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[test]
    fn vhosts_and_names_are_one_path_segment_each() {
        assert_eq!(segment("/"), "%2F");
        assert_eq!(segment("gearmq-t-x_1.2~"), "gearmq-t-x_1.2~");
        assert_eq!(segment("a b/c%"), "a%20b%2Fc%25");
    }
}
