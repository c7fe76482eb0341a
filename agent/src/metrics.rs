//! Health outside the request path: `GET /metrics` in the Prometheus text format on a
//! local address (`[metrics] listen`), and a status file the host's own tooling reads.
//!
//! Both only read [`Stats`] atomics, so they never wait on, or slow, a request. The
//! HTTP side is a deliberately small HTTP/1.1 subset (one bounded request per
//! connection, timeouts, a cap on connections): one fixed resource needs no framework,
//! and a hand-written reader with hard bounds is easier to audit than a server crate's
//! defaults.

use crate::stats::{Reason, Stats};
use gearmq_schemas::Name;
use gearmq_schemas::time::Millis;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Largest request head read (request line and headers); a longer one gets 431.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// How long a client may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long writing the response may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 16;
/// How often the status file is rewritten when nothing changes.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(5);
/// The content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the health reports are made of: the live counters and what is fixed at start.
#[derive(Debug)]
pub struct Health {
    stats: Arc<Stats>,
    host: Name,
    started_at: Millis,
    credential_not_after: Millis,
}

/// The status file's content.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Status {
    /// This host.
    pub host: String,
    /// The agent's version.
    pub version: &'static str,
    /// The agent's process id.
    pub pid: u32,
    /// When the agent started (RFC 3339).
    pub started_at: String,
    /// When this file was written (RFC 3339): older than a few intervals means the
    /// agent is stuck or gone.
    pub updated_at: String,
    /// A broker session is open and consuming.
    pub connected: bool,
    /// When `connected` last changed (RFC 3339); `None` before the first attempt ended.
    pub connection_since: Option<String>,
    /// When the last request arrived (RFC 3339); `None` if none did.
    pub last_request_at: Option<String>,
    /// Broker sessions re-established after a loss.
    pub reconnects: u64,
    /// Attempts to open a broker session that failed.
    pub connect_failures: u64,
    /// When the host credential expires (RFC 3339).
    pub credential_expires_at: String,
    /// Seconds until then (negative once expired).
    pub credential_expires_in_seconds: i64,
}

impl Health {
    /// Reports on `stats` for `host`, started at `started_at`, whose credential
    /// expires at `credential_not_after`.
    pub fn new(
        stats: Arc<Stats>,
        host: Name,
        started_at: Millis,
        credential_not_after: Millis,
    ) -> Self {
        Health {
            stats,
            host,
            started_at,
            credential_not_after,
        }
    }

    /// The status file's content at `now`.
    pub fn status(&self, now: Millis) -> Status {
        let c = self.stats.connection();
        let time = crate::verifier::rfc3339;
        Status {
            host: self.host.to_string(),
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            started_at: time(self.started_at),
            updated_at: time(now),
            connected: c.connected,
            connection_since: c.since.map(time),
            last_request_at: c.last_request_at.map(time),
            reconnects: c.reconnects,
            connect_failures: c.connect_failures,
            credential_expires_at: time(self.credential_not_after),
            credential_expires_in_seconds: seconds_between(now, self.credential_not_after),
        }
    }

    /// Every metric at `now`, in the Prometheus text format (0.0.4).
    pub fn render(&self, now: Millis) -> String {
        let s = self.stats.snapshot();
        let c = self.stats.connection();
        let mut out = String::with_capacity(4096);
        let host = escape_label(self.host.as_str());
        let version = escape_label(env!("CARGO_PKG_VERSION"));
        metric(
            &mut out,
            "gearmq_agent_info",
            "gauge",
            "The agent's version and host (always 1).",
            &[(&format!("host=\"{host}\",version=\"{version}\""), 1)],
        );
        let secs = |ms: Millis| ms as f64 / 1000.0;
        metric_f(
            &mut out,
            "gearmq_agent_start_time_seconds",
            "gauge",
            "When the agent started (Unix time).",
            secs(self.started_at),
        );
        metric_f(
            &mut out,
            "gearmq_agent_uptime_seconds",
            "gauge",
            "Seconds since the agent started.",
            secs(now.saturating_sub(self.started_at)),
        );
        let counters: [(&str, &str, u64); 12] = [
            (
                "gearmq_agent_requests_received_total",
                "Deliveries received.",
                s.received,
            ),
            (
                "gearmq_agent_requests_verified_total",
                "Requests whose signature verified.",
                s.verified,
            ),
            (
                "gearmq_agent_requests_not_target_total",
                "Verified requests not addressed to this host.",
                s.not_target,
            ),
            (
                "gearmq_agent_requests_executed_total",
                "Actions run.",
                s.executed,
            ),
            (
                "gearmq_agent_replies_resent_total",
                "Stored replies sent again for redeliveries.",
                s.resent,
            ),
            (
                "gearmq_agent_dead_lettered_total",
                "Deliveries dead-lettered before their signature was proven.",
                s.dead_lettered,
            ),
            (
                "gearmq_agent_unroutable_replies_total",
                "Replies the broker returned as unroutable.",
                s.unroutable_replies,
            ),
            (
                "gearmq_agent_audited_total",
                "Requests recorded in the audit log with their reply.",
                s.audited,
            ),
            (
                "gearmq_agent_audited_repeats_total",
                "Audited repeats of a request already on record.",
                s.audited_repeats,
            ),
            (
                "gearmq_agent_not_audited_total",
                "Requests answered without an audit record.",
                s.not_audited,
            ),
            (
                "gearmq_agent_audit_failures_total",
                "Audit writes that failed.",
                s.audit_failures,
            ),
            (
                "gearmq_agent_broker_reconnects_total",
                "Broker sessions re-established after a loss.",
                c.reconnects,
            ),
        ];
        for (name, help, value) in counters {
            metric(&mut out, name, "counter", help, &[("", value)]);
        }
        metric(
            &mut out,
            "gearmq_agent_broker_connect_failures_total",
            "counter",
            "Attempts to open a broker session that failed.",
            &[("", c.connect_failures)],
        );
        let refused: Vec<(String, u64)> = Reason::ALL
            .iter()
            .map(|r| {
                let n = s.refused.get(r.as_str()).copied().unwrap_or(0);
                (format!("reason=\"{}\"", r.as_str()), n)
            })
            .collect();
        let refused: Vec<(&str, u64)> = refused.iter().map(|(l, n)| (l.as_str(), *n)).collect();
        metric(
            &mut out,
            "gearmq_agent_requests_refused_total",
            "counter",
            "Requests refused, by reason.",
            &refused,
        );
        metric(
            &mut out,
            "gearmq_agent_replay_entries",
            "gauge",
            "Requests held in the replay store.",
            &[("", s.replay_entries)],
        );
        metric(
            &mut out,
            "gearmq_agent_replay_bytes",
            "gauge",
            "Bytes the replay store holds (counted against its cap).",
            &[("", s.replay_bytes)],
        );
        metric(
            &mut out,
            "gearmq_agent_broker_connected",
            "gauge",
            "1 while a broker session is open and consuming, else 0.",
            &[("", u64::from(c.connected))],
        );
        if let Some(since) = c.since {
            metric_f(
                &mut out,
                "gearmq_agent_broker_connection_changed_seconds",
                "gauge",
                "When the broker connection state last changed (Unix time).",
                secs(since),
            );
        }
        if let Some(at) = c.last_request_at {
            metric_f(
                &mut out,
                "gearmq_agent_last_request_seconds",
                "gauge",
                "When the last request arrived (Unix time).",
                secs(at),
            );
        }
        metric_f(
            &mut out,
            "gearmq_agent_credential_expiry_seconds",
            "gauge",
            "When the host credential expires (Unix time).",
            secs(self.credential_not_after),
        );
        metric_f(
            &mut out,
            "gearmq_agent_credential_expires_in_seconds",
            "gauge",
            "Seconds until the host credential expires (negative once expired).",
            seconds_between(now, self.credential_not_after) as f64,
        );
        out
    }
}

fn seconds_between(from: Millis, to: Millis) -> i64 {
    let d = i128::from(to) - i128::from(from);
    i64::try_from(d / 1000).unwrap_or(if d < 0 { i64::MIN } else { i64::MAX })
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = match labels.is_empty() {
            true => writeln!(out, "{name} {value}"),
            false => writeln!(out, "{name}{{{labels}}} {value}"),
        };
    }
}

fn metric_f(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Binds `addr` for [`serve`]; fails with the address in the message.
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on metrics.listen = \"{addr}\""))
}

/// Answers `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, health: Arc<Health>, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: back off rather than spin.
                warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            debug!(%peer, "metrics: too many connections; closed");
            continue;
        };
        let health = health.clone();
        tokio::spawn(async move {
            answer(stream, &health).await;
            drop(permit);
        });
    }
}

/// What a request asked for, decided from its head alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics` (or `HEAD`): 200.
    Metrics {
        /// Send the body (false for `HEAD`).
        body: bool,
    },
    /// Another path: 404.
    NotFound,
    /// Another method on /metrics: 405.
    MethodNotAllowed,
    /// Not an HTTP/1.x request line: 400.
    BadRequest,
    /// The head is over [`MAX_REQUEST_BYTES`]: 431.
    TooLarge,
}

/// Routes a request head (the bytes up to the blank line, or all that was read).
pub fn route(head: &[u8], complete: bool) -> Route {
    if !complete {
        return Route::TooLarge;
    }
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Route::BadRequest;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") || !target.starts_with('/') {
        return Route::BadRequest;
    }
    let path = target.split('?').next().unwrap_or(target);
    match (method, path) {
        ("GET", "/metrics") => Route::Metrics { body: true },
        ("HEAD", "/metrics") => Route::Metrics { body: false },
        (_, "/metrics") => Route::MethodNotAllowed,
        _ => Route::NotFound,
    }
}

/// Reads one request head (bounded in size and time) and answers it.
async fn answer(mut stream: TcpStream, health: &Health) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(READ_TIMEOUT, async {
        loop {
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                return Some(true);
            }
            if head.len() >= MAX_REQUEST_BYTES {
                return Some(false);
            }
            let room = (MAX_REQUEST_BYTES - head.len()).min(buf.len());
            match stream.read(&mut buf[..room]).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let complete = match read {
        Ok(Some(c)) => c,
        // Closed early, a read error, or too slow: nothing worth answering.
        Ok(None) | Err(_) => return,
    };
    let response = match route(&head, complete) {
        Route::Metrics { body } => {
            let text = health.render(gearmq_schemas::time::now_ms());
            let mut r = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                text.len()
            )
            .into_bytes();
            if body {
                r.extend_from_slice(text.as_bytes());
            }
            r
        }
        Route::NotFound => plain(404, "Not Found", "", "only /metrics is served\n"),
        Route::MethodNotAllowed => plain(
            405,
            "Method Not Allowed",
            "Allow: GET, HEAD\r\n",
            "only GET\n",
        ),
        Route::BadRequest => plain(400, "Bad Request", "", "not an HTTP/1.x request\n"),
        Route::TooLarge => plain(
            431,
            "Request Header Fields Too Large",
            "",
            "request head over 8 KiB\n",
        ),
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await;
}

fn plain(code: u16, reason: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Rewrites the status file at `path` every [`STATUS_INTERVAL`] and at every broker
/// connection change, until `shutdown` (then once more).
pub async fn write_status_file(path: PathBuf, health: Arc<Health>, shutdown: CancellationToken) {
    let mut failing = false;
    loop {
        let status = health.status(gearmq_schemas::time::now_ms());
        let p = path.clone();
        let written = tokio::task::spawn_blocking(move || write_atomically(&p, &status)).await;
        match written {
            Ok(Ok(())) => failing = false,
            Ok(Err(e)) if !failing => {
                // Logged once per run of failures, not every interval.
                warn!(file = %path.display(), error = %e, "cannot write the status file");
                failing = true;
            }
            Ok(Err(_)) => {}
            Err(e) => warn!(error = %e, "status file writer failed"),
        }
        if shutdown.is_cancelled() {
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = health.stats.connection_changed() => {}
            _ = tokio::time::sleep(STATUS_INTERVAL) => {}
        }
    }
}

/// Writes `status` as JSON to a temporary file beside `path` and renames it over
/// `path`, so a reader sees the old file or the new one, never half of one.
fn write_atomically(path: &std::path::Path, status: &Status) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "status.json".into());
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        let r = |s: &str| route(s.as_bytes(), true);
        assert_eq!(
            r("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { body: true }
        );
        assert_eq!(
            r("GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { body: true }
        );
        assert_eq!(
            r("HEAD /metrics HTTP/1.1\r\n\r\n"),
            Route::Metrics { body: false }
        );
        assert_eq!(r("POST /metrics HTTP/1.1\r\n\r\n"), Route::MethodNotAllowed);
        assert_eq!(r("GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(r("GET /metricsx HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(r("GET /metrics HTTP/2\r\n\r\n"), Route::BadRequest);
        assert_eq!(r("GET  /metrics HTTP/1.1\r\n\r\n"), Route::BadRequest);
        assert_eq!(r("\u{0}\u{1}garbage\r\n\r\n"), Route::BadRequest);
        assert_eq!(
            route(b"\xff\xfe / HTTP/1.1\r\n\r\n", true),
            Route::BadRequest
        );
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\n", false), Route::TooLarge);
    }

    #[test]
    fn render_has_counters_state_and_expiry() {
        let stats = Arc::new(Stats::default());
        stats.broker_connected();
        stats.executed();
        stats.refused(Reason::Expired);
        let host: Name = "web1".parse().unwrap();
        let h = Health::new(stats, host, 1_000_000, 1_000_000 + 86_400_000);
        let text = h.render(1_000_000 + 3_600_000);
        assert!(
            text.contains("gearmq_agent_requests_executed_total 1\n"),
            "{text}"
        );
        assert!(text.contains("gearmq_agent_broker_connected 1\n"));
        assert!(text.contains("gearmq_agent_requests_refused_total{reason=\"expired\"} 1\n"));
        assert!(text.contains("gearmq_agent_requests_refused_total{reason=\"replayed\"} 0\n"));
        assert!(text.contains("gearmq_agent_credential_expires_in_seconds 82800\n"));
        assert!(text.contains("gearmq_agent_uptime_seconds 3600\n"));
        assert!(!text.contains("gearmq_agent_last_request_seconds"));
        // Every sample line is `name[{labels}] value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').expect(line);
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        let status = h.status(1_000_000 + 3_600_000);
        assert!(status.connected);
        assert_eq!(status.credential_expires_in_seconds, 82_800);
    }

    #[test]
    fn expiry_in_the_past_is_negative() {
        assert_eq!(seconds_between(10_000, 4_000), -6);
        assert_eq!(seconds_between(0, u64::MAX), (u64::MAX / 1000) as i64);
    }
}
