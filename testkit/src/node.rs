//! RabbitMQ nodes of the tests' own, beside the shared broker on 5672 and never
//! touching it: a private HOME with its own Erlang cookie, its own node name, data,
//! logs and ports, and a watchdog that stops the node if the test process dies.
//!
//! Two kinds: a plain node (guest on loopback) that a test may stop and start again
//! with its data intact, three of them clustered if asked ([`Cluster`]); and a TLS node
//! configured for production from `deploy/rabbitmq-tls.conf` (TLS only, client
//! certificates, EXTERNAL login). Starting one takes seconds, so a test binary shares
//! one TLS node ([`BrokerNode::shared_tls`]); it stops when the last test holding it is
//! done.

use anyhow::{Context, Result, bail};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::{Connection, ConnectionProperties};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// The real RabbitMQ scripts (not the `/usr/sbin` wrappers, which switch to the
/// rabbitmq user and its cookie).
const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";

/// How long a node may take to boot.
const STARTUP_LIMIT: Duration = Duration::from_secs(90);

/// The shared broker's management API (`deploy/ensure-rabbitmq.sh` enables the
/// plugin); guest may use it from loopback.
pub const SHARED_MANAGEMENT: &str = "http://127.0.0.1:15672";

/// The shared broker's Erlang node name and the open-file limit its process runs
/// with, as the operating system says (`/proc/PID/limits`), not as RabbitMQ reports it.
pub fn shared_broker_descriptor_limit() -> (String, u64) {
    let node = crate::rabbitmqctl(&["eval", "node()."]).trim().to_string();
    let status: serde_json::Value =
        serde_json::from_str(&crate::rabbitmqctl(&["status", "--formatter", "json"]))
            .expect("rabbitmqctl status gives JSON");
    let pid = status["pid"]
        .as_u64()
        .expect("status names the node's OS pid");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/limits: {e}"));
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no open-file limit in /proc/{pid}/limits:\n{limits}"));
    (node, soft)
}

/// A RabbitMQ node of a test's own, stopped on drop.
pub struct BrokerNode {
    root: tempfile::TempDir,
    /// HOME (and so Erlang cookie) shared with the other members of a cluster.
    shared_home: Option<Arc<tempfile::TempDir>>,
    name: String,
    /// Full Erlang node name, `gq<random>@<host>`.
    pub node: String,
    /// The plain AMQP port (127.0.0.1). A TLS node is given it too
    /// (`RABBITMQ_NODE_PORT`) but has `listeners.tcp = none`: nothing must listen on it.
    pub port: u16,
    /// The Erlang distribution port.
    pub dist_port: u16,
    /// The AMQPS port of a TLS node.
    amqps_port: Option<u16>,
    watchdog: Option<Child>,
}

static SHARED_TLS: Mutex<Weak<BrokerNode>> = Mutex::new(Weak::new());

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// `deploy/<name>` in this workspace.
pub fn deploy_file(name: &str) -> PathBuf {
    workspace_root().join("deploy").join(name)
}

/// `text` (a rabbitmq.conf) with the values of `overrides` replacing those of the same
/// keys; keys it does not have are appended.
pub fn override_conf(text: &str, overrides: &[(&str, String)]) -> String {
    let mut out = String::new();
    let mut used = vec![false; overrides.len()];
    for line in text.lines() {
        let key = line.split('=').next().unwrap_or_default().trim();
        match overrides
            .iter()
            .position(|(k, _)| !line.starts_with('#') && *k == key)
        {
            Some(i) => {
                used[i] = true;
                out.push_str(&format!("{key} = {}\n", overrides[i].1));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    for (i, (k, v)) in overrides.iter().enumerate() {
        if !used[i] {
            out.push_str(&format!("{k} = {v}\n"));
        }
    }
    out
}

fn short_hostname() -> String {
    let out = Command::new("hostname")
        .arg("-s")
        .output()
        .expect("hostname");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Writes a fresh Erlang cookie (mode 0400) into `home`.
fn write_cookie(home: &Path) {
    let cookie = home.join(".erlang.cookie");
    std::fs::write(
        &cookie,
        format!("GQ{:08X}{:08X}", crate::rand_u32(), crate::rand_u32()),
    )
    .expect("cookie");
    crate::set_mode(&cookie, 0o400);
}

impl BrokerNode {
    /// Starts a plain-AMQP node (guest/guest on loopback) and waits until it is up.
    pub fn plain() -> BrokerNode {
        let n = BrokerNode::create(None, false);
        n.boot();
        n
    }

    /// Starts a node from `deploy/rabbitmq-tls.conf` and `deploy/enabled_plugins`, with
    /// a fresh CA and server certificate from `gearmq pki`, and waits until it is up.
    /// Like production, it has no guest user.
    pub fn tls() -> BrokerNode {
        BrokerNode::tls_with(&[])
    }

    /// A TLS node as [`BrokerNode::tls`] that also lets a client without a certificate
    /// log in with a password: the enrollment set-up of docs/PRODUCTION.md, where the
    /// bootstrap user is the only user with a password.
    pub fn tls_enrolling() -> BrokerNode {
        BrokerNode::tls_with(&[
            ("ssl_options.fail_if_no_peer_cert", "false".into()),
            ("auth_mechanisms.2", "PLAIN".into()),
        ])
    }

    fn tls_with(overrides: &[(&str, String)]) -> BrokerNode {
        let n = BrokerNode::create_with(None, true, overrides);
        n.boot();
        n.ctl(&["delete_user", "guest"]).expect("delete guest");
        n
    }

    /// The TLS node this test binary shares, started on first use.
    pub fn shared_tls() -> Arc<BrokerNode> {
        let mut slot = SHARED_TLS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = slot.upgrade() {
            return n;
        }
        let n = Arc::new(BrokerNode::tls());
        *slot = Arc::downgrade(&n);
        n
    }

    /// A node, not booted yet; its HOME is `shared_home` when given (cluster members
    /// share one cookie).
    fn create(shared_home: Option<Arc<tempfile::TempDir>>, tls: bool) -> BrokerNode {
        BrokerNode::create_with(shared_home, tls, &[])
    }

    /// As [`BrokerNode::create`], a TLS node's config changed by `overrides`.
    fn create_with(
        shared_home: Option<Arc<tempfile::TempDir>>,
        tls: bool,
        overrides: &[(&str, String)],
    ) -> BrokerNode {
        let root = tempfile::Builder::new()
            .prefix(if tls { "gearmq-node-" } else { "gearmq-plain-" })
            .tempdir()
            .expect("tempdir");
        let r = root.path();
        for d in ["home", "conf.d", "mnesia", "log"] {
            std::fs::create_dir_all(r.join(d)).expect("mkdir");
        }
        if shared_home.is_none() {
            write_cookie(&r.join("home"));
        }
        let port = free_port();
        let dist_port = free_port();
        let amqps_port = if tls {
            let amqps_port = free_port();
            write_tls_config(r, amqps_port, overrides);
            Some(amqps_port)
        } else {
            // Small disk alarm threshold: a busy CI disk must not block publishers.
            std::fs::write(
                r.join("rabbitmq.conf"),
                format!(
                    "listeners.tcp.default = 127.0.0.1:{port}\n\
                     disk_free_limit.absolute = 10MB\n\
                     log.file.level = info\n"
                ),
            )
            .expect("rabbitmq.conf");
            std::fs::write(r.join("enabled_plugins"), "[].\n").expect("enabled_plugins");
            None
        };
        let name = format!("gq{:08x}", crate::rand_u32());
        let node = format!("{name}@{}", short_hostname());
        let mut n = BrokerNode {
            root,
            shared_home,
            name,
            node,
            port,
            dist_port,
            amqps_port,
            watchdog: None,
        };
        n.watchdog = n.spawn_watchdog();
        n
    }

    /// Stops the node should this test process end without dropping it (killed, or a
    /// static never dropped).
    fn spawn_watchdog(&self) -> Option<Child> {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             HOME='{home}' {bin}/rabbitmqctl -n '{node}' stop >/dev/null 2>&1; rm -rf '{root}'",
            pid = std::process::id(),
            home = self.home().display(),
            bin = RABBITMQ_BIN,
            node = self.node,
            root = self.root.path().display(),
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()
    }

    /// Runs `rabbitmq-server -detached` for this node (data kept from an earlier run)
    /// and waits until it is up.
    pub fn boot(&self) {
        self.launch();
        self.await_startup();
    }

    fn launch(&self) {
        let r = self.root.path();
        let status = Command::new(Path::new(RABBITMQ_BIN).join("rabbitmq-server"))
            .arg("-detached")
            .env("HOME", self.home())
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", r.join("rabbitmq.conf"))
            .env("RABBITMQ_CONFIG_FILES", r.join("conf.d"))
            .env("RABBITMQ_MNESIA_BASE", r.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", r.join("log"))
            .env("RABBITMQ_PID_FILE", r.join("pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", r.join("enabled_plugins"))
            .env("RABBITMQ_CONF_ENV_FILE", "/dev/null")
            .current_dir(r)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run rabbitmq-server (is rabbitmq-server installed?)");
        assert!(status.success(), "rabbitmq-server -detached: {status}");
    }

    fn await_startup(&self) {
        let deadline = Instant::now() + STARTUP_LIMIT;
        loop {
            // Fails at once until the node has registered with epmd.
            if self.ctl(&["await_startup", "--timeout", "10"]).is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "RabbitMQ node {} did not start in {STARTUP_LIMIT:?}; log:\n{}",
                    self.node,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops the node (the Erlang VM exits; durable queues and persistent messages
    /// stay on disk for [`BrokerNode::boot`]).
    pub fn stop(&self) {
        self.ctl(&["stop"]).expect("rabbitmqctl stop");
    }

    /// The node's log so far.
    pub fn log_text(&self) -> String {
        let p = self
            .root
            .path()
            .join("log")
            .join(format!("{}.log", self.node));
        std::fs::read_to_string(p).unwrap_or_default()
    }

    /// The node's private HOME (holding its Erlang cookie).
    pub fn home(&self) -> PathBuf {
        match &self.shared_home {
            Some(h) => h.path().to_path_buf(),
            None => self.root.path().join("home"),
        }
    }

    /// Runs `rabbitmqctl -n NODE <args>` and returns its standard output.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        self.tool("rabbitmqctl", args)
    }

    /// Puts the node in maintenance mode (`rabbitmq-upgrade drain`): it moves the
    /// leadership of its quorum queues to other members and closes its client
    /// connections, as an operator does before stopping a cluster node.
    pub fn drain(&self) {
        self.tool("rabbitmq-upgrade", &["drain"])
            .expect("rabbitmq-upgrade drain");
    }

    /// Takes the node out of maintenance mode (`rabbitmq-upgrade revive`).
    pub fn revive(&self) {
        self.tool("rabbitmq-upgrade", &["revive"])
            .expect("rabbitmq-upgrade revive");
    }

    /// Runs RabbitMQ's CLI tool `tool` (`rabbitmqctl`, `rabbitmq-queues`, …) with
    /// `-n NODE <args>` and returns its standard output.
    pub fn tool(&self, tool: &str, args: &[&str]) -> Result<String> {
        let out = Command::new(Path::new(RABBITMQ_BIN).join(tool))
            .args(["-n", &self.node])
            .args(args)
            .env("HOME", self.home())
            .output()
            .with_context(|| format!("cannot run {tool}"))?;
        if !out.status.success() {
            bail!(
                "{tool} {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Environment under which the `gearmq` CLI's own `rabbitmqctl -n NODE` reaches
    /// this node: the node's HOME (its cookie) and the real rabbitmqctl first on PATH.
    pub fn cli_env(&self) -> Vec<(String, String)> {
        let path = std::env::var("PATH").unwrap_or_default();
        vec![
            ("HOME".into(), self.home().display().to_string()),
            ("PATH".into(), format!("{RABBITMQ_BIN}:{path}")),
        ]
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/VHOST` (a plain node).
    pub fn url(&self, vhost: &str) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/{vhost}", self.port)
    }

    /// Whether this is a TLS-only node.
    pub fn is_tls(&self) -> bool {
        self.amqps_port.is_some()
    }

    /// The AMQPS port (127.0.0.1) of a TLS node.
    pub fn amqps_port(&self) -> u16 {
        self.amqps_port
            .unwrap_or_else(|| panic!("{} is a plain node: no AMQPS port", self.node))
    }

    /// `amqps://127.0.0.1:PORT/VHOST?auth_mechanism=external` (a TLS node).
    pub fn amqps_url(&self, vhost: &str) -> String {
        format!(
            "amqps://127.0.0.1:{}/{vhost}?auth_mechanism=external",
            self.amqps_port()
        )
    }

    /// The broker's CA directory (`gearmq pki init` output): `ca.pem`, `ca.key`.
    pub fn pki_dir(&self) -> PathBuf {
        self.root.path().join("pki")
    }

    /// The CA certificate clients must trust.
    pub fn ca_file(&self) -> PathBuf {
        self.pki_dir().join("ca.pem")
    }

    /// Issues (once) a client certificate for `name` from this node's CA with the real
    /// `gearmq pki issue`: returns (certificate, key) paths.
    pub fn client_cert(&self, name: &str) -> (PathBuf, PathBuf) {
        issue_client_cert(&self.pki_dir(), &self.root.path().join("clients"), name)
    }

    /// Connects to `vhost` over TLS as the common name of `identity`'s certificate
    /// (EXTERNAL), trusting only this node's CA.
    pub async fn connect_with(
        &self,
        vhost: &str,
        identity: Option<(&Path, &Path)>,
    ) -> std::result::Result<Connection, String> {
        connect_tls(&self.amqps_url(vhost), &self.ca_file(), identity).await
    }
}

/// The config of a TLS node in `root`: `deploy/rabbitmq-tls.conf` with its port and a
/// fresh PKI made by the real CLI, and `deploy/enabled_plugins`.
fn write_tls_config(root: &Path, amqps_port: u16, extra: &[(&str, String)]) {
    let pki = root.join("pki");
    std::fs::create_dir_all(&pki).expect("mkdir pki");
    let out = crate::run_cli(&["pki", "init", "--out", &pki.to_string_lossy()]);
    assert_eq!(out.code, 0, "gearmq pki init: {}", out.stderr);
    let out = crate::run_cli(&[
        "pki",
        "issue",
        "--ca",
        &pki.to_string_lossy(),
        "--server",
        "--out",
        &pki.to_string_lossy(),
        "localhost",
    ]);
    assert_eq!(out.code, 0, "gearmq pki issue --server: {}", out.stderr);
    let template = std::fs::read_to_string(deploy_file("rabbitmq-tls.conf"))
        .expect("deploy/rabbitmq-tls.conf");
    let file = |name: &str| pki.join(name).display().to_string();
    let mut overrides = vec![
        ("listeners.ssl.default", format!("127.0.0.1:{amqps_port}")),
        ("ssl_options.cacertfile", file("ca.pem")),
        ("ssl_options.certfile", file("localhost.pem")),
        ("ssl_options.keyfile", file("localhost.key")),
    ];
    overrides.extend(extra.iter().cloned());
    let conf = override_conf(&template, &overrides);
    std::fs::write(root.join("rabbitmq.conf"), conf).expect("rabbitmq.conf");
    std::fs::copy(deploy_file("enabled_plugins"), root.join("enabled_plugins"))
        .expect("deploy/enabled_plugins");
}

impl Drop for BrokerNode {
    fn drop(&mut self) {
        let _ = self.ctl(&["stop"]);
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// Three plain [`BrokerNode`]s on this machine joined into one cluster (sharing a
/// cookie).
pub struct Cluster {
    /// The members; the first is the one the others joined.
    pub nodes: Vec<Arc<BrokerNode>>,
}

impl Cluster {
    /// Boots three nodes and joins the second and third to the first.
    pub fn start() -> Result<Cluster> {
        let home = tempfile::Builder::new()
            .prefix("gearmq-cluster-home-")
            .tempdir()
            .context("tempdir")?;
        write_cookie(home.path());
        let home = Arc::new(home);
        let nodes: Vec<BrokerNode> = (0..3)
            .map(|_| BrokerNode::create(Some(home.clone()), false))
            .collect();
        // Booting them at once saves seconds on a slow machine.
        for n in &nodes {
            n.launch();
        }
        for n in &nodes {
            n.await_startup();
        }
        for n in &nodes[1..] {
            n.ctl(&["stop_app"])?;
            n.ctl(&["reset"])?;
            n.ctl(&["join_cluster", &nodes[0].node])?;
            n.ctl(&["start_app"])?;
        }
        let status = nodes[0].ctl(&["cluster_status", "--formatter", "json"])?;
        let running = serde_json::from_str::<serde_json::Value>(&status)
            .ok()
            .and_then(|v| v["running_nodes"].as_array().map(Vec::len))
            .unwrap_or(0);
        if running != 3 {
            bail!("cluster formed with {running} running nodes, not 3: {status}");
        }
        Ok(Cluster {
            nodes: nodes.into_iter().map(Arc::new).collect(),
        })
    }
}

/// `gearmq pki issue --ca CA NAME --out OUT`, unless OUT/NAME.pem exists already.
pub fn issue_client_cert(ca: &Path, out: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = out.join(format!("{name}.pem"));
    let key = out.join(format!("{name}.key"));
    if !cert.is_file() {
        let o = crate::run_cli(&[
            "pki",
            "issue",
            "--ca",
            &ca.to_string_lossy(),
            "--out",
            &out.to_string_lossy(),
            name,
        ]);
        assert_eq!(o.code, 0, "gearmq pki issue {name}: {}", o.stderr);
    }
    (cert, key)
}

/// A TLS connection trusting only `ca`, presenting `identity` (certificate, key) if
/// given, bounded to 15 s.
pub async fn connect_tls(
    url: &str,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> std::result::Result<Connection, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let tls = OwnedTLSConfig {
        cert_chain: Some(String::from_utf8_lossy(&read(ca)?).into_owned()),
        identity: match identity {
            Some((c, k)) => Some(OwnedIdentity::PKCS8 {
                pem: read(c)?,
                key: read(k)?,
            }),
            None => None,
        },
    };
    let runtime = lapin::runtime::default_runtime().map_err(|e| e.to_string())?;
    match tokio::time::timeout(
        Duration::from_secs(15),
        Connection::connect_with_config(url, ConnectionProperties::default(), tls, runtime),
    )
    .await
    {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_keys_and_keep_comments() {
        let t = "# listeners.ssl.default = 1\nlisteners.ssl.default = 5671\na.b = c\n";
        let o = override_conf(
            t,
            &[("listeners.ssl.default", "9".into()), ("x", "y".into())],
        );
        assert_eq!(
            o,
            "# listeners.ssl.default = 1\nlisteners.ssl.default = 9\na.b = c\nx = y\n"
        );
    }
}
