//! Health outside the request path: `GET /metrics` and the status file of a real agent
//! on the real broker, while requests flow and while the broker refuses it.

use gearmq_schemas::Role;
use gearmq_testkit::{AgentFiles, AgentWorld, Pki, Vhost, run_program};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A port free on loopback now (the agent binds it a moment later).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Sends `request` raw and returns whatever comes back before the server closes.
async fn http(port: u16, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the metrics endpoint");
    let _ = s.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET /metrics`: the body, after checking the status line and content type.
async fn scrape(port: u16) -> String {
    let r = http(port, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(
        r.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
        "{r}"
    );
    r.split_once("\r\n\r\n").expect("a body").1.to_string()
}

/// The value of the sample `name` (with its labels, if any) in `text`.
fn value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

fn status(files: &AgentFiles) -> serde_json::Value {
    let path = files.state_dir.join("status.json");
    let text = std::fs::read_to_string(&path).expect("status.json");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Scrapes until `ok` holds for the metrics and the status file (20 s at most).
async fn until(
    port: u16,
    files: &AgentFiles,
    what: &str,
    ok: impl Fn(&str, &serde_json::Value) -> bool,
) -> (String, serde_json::Value) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = scrape(port).await;
        let s = status(files);
        if ok(&m, &s) {
            return (m, s);
        }
        assert!(Instant::now() < deadline, "never {what}:\n{m}\n{s:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_status_file_follow_requests_and_the_broker_going_away() {
    let port = free_port();
    let mut w = AgentWorld::builder()
        .config_tail(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\""))
        .start()
        .await;
    for _ in 0..3 {
        w.assert_ping_ok().await;
    }
    let m = scrape(port).await;
    assert!(
        value(&m, "gearmq_agent_requests_executed_total") >= 3.0,
        "{m}"
    );
    assert_eq!(value(&m, "gearmq_agent_broker_connected"), 1.0);
    assert!(value(&m, "gearmq_agent_credential_expires_in_seconds") > 0.0);
    assert!(value(&m, "gearmq_agent_last_request_seconds") > 0.0);
    assert_eq!(
        value(
            &m,
            "gearmq_agent_requests_refused_total{reason=\"expired\"}"
        ),
        0.0
    );
    assert!(
        m.contains("gearmq_agent_info{host=\"web1\",version=\""),
        "{m}"
    );
    // Counters grow while requests flow.
    w.assert_ping_ok().await;
    let later = scrape(port).await;
    assert!(
        value(&later, "gearmq_agent_requests_executed_total")
            > value(&m, "gearmq_agent_requests_executed_total")
    );
    let (_, s) = until(port, &w.files, "status file connected", |_, s| {
        s["connected"] == true && !s["last_request_at"].is_null()
    })
    .await;
    assert_eq!(s["pid"], w.agent.pid().expect("running"));
    assert_eq!(s["host"], "web1");
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert!(s["credential_expires_in_seconds"].as_i64().unwrap() > 0);

    // The broker goes away for this agent: its connection closed and every reconnect
    // refused (no permission on the vhost any more).
    let vhost = w.vhost.name.clone();
    w.vhost.ctl(&["clear_permissions", "-p", &vhost, "guest"]);
    w.vhost.close_connections("test: broker gone");
    let (m, s) = until(
        port,
        &w.files,
        "disconnected with failed attempts",
        |m, s| {
            value(m, "gearmq_agent_broker_connected") == 0.0
                && value(m, "gearmq_agent_broker_connect_failures_total") >= 2.0
                && s["connected"] == false
                && s["connect_failures"].as_u64() >= Some(2)
        },
    )
    .await;
    assert_eq!(value(&m, "gearmq_agent_broker_reconnects_total"), 0.0);
    assert!(!s["connection_since"].is_null());

    // Back: it reconnects and both say so.
    w.vhost
        .ctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
    until(port, &w.files, "reconnected", |m, s| {
        value(m, "gearmq_agent_broker_connected") == 1.0
            && value(m, "gearmq_agent_broker_reconnects_total") == 1.0
            && s["connected"] == true
            && s["reconnects"] == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_requests_get_an_error_and_the_endpoint_keeps_serving() {
    let port = free_port();
    let mut w = AgentWorld::builder()
        .config_tail(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\""))
        .start()
        .await;
    // A client that connects and sends nothing holds no one up.
    let _silent = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let cases: [(&[u8], &str); 5] = [
        (b"\x00\x01\xff garbage\r\n\r\n", "HTTP/1.1 400 "),
        (b"GET /metrics HTTP/9\r\n\r\n", "HTTP/1.1 400 "),
        (
            b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 405 ",
        ),
        (b"GET /admin HTTP/1.1\r\n\r\n", "HTTP/1.1 404 "),
        (&[b'A'; 8192], "HTTP/1.1 431 "),
    ];
    for (request, expected) in cases {
        let r = http(port, request).await;
        assert!(r.starts_with(expected), "{expected} for {request:?}: {r}");
    }
    // Far over the cap, and a request cut off half way: no answer needed, no harm.
    http(port, &vec![b'B'; 1 << 20]).await;
    http(port, b"GET /metr").await;
    let m = scrape(port).await;
    assert_eq!(value(&m, "gearmq_agent_broker_connected"), 1.0);
    w.assert_ping_ok().await;
    assert!(w.agent.pid().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_loopback_listen_needs_the_explicit_opt_in() {
    let vhost = Vhost::new("agent");
    let pki = Pki::new();
    let host = pki.identity("web1", Role::Host, &[]);
    let files = AgentFiles::write(&vhost.url(), &pki, &host, "", "");
    let port = free_port();
    files.edit_config(|t| format!("{t}\n[metrics]\nlisten = \"0.0.0.0:{port}\"\n"));
    let config = files.config.to_str().unwrap();
    let out = run_program("gearmq-agent", &["--config", config], &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("metrics.listen"), "{}", out.stderr);
    assert!(
        out.stderr.contains("metrics.allow_non_loopback"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("0.0.0.0"), "{}", out.stderr);

    // With the opt-in it starts and serves on every address, loopback included.
    let env = [("GEARMQ_AGENT__METRICS__ALLOW_NON_LOOPBACK", "true")];
    let _agent = gearmq_testkit::Agent::start_with(&files.config, &[], &env);
    let m = scrape(port).await;
    assert_eq!(value(&m, "gearmq_agent_broker_connected"), 1.0);
}
