//! A RabbitMQ node of the tests' own, configured for production: TLS only, client
//! certificates, EXTERNAL login (from `deploy/rabbitmq-tls.conf`, with paths and port
//! replaced), and fleets on it provisioned by the real `gearmq init --provision`.
//!
//! The node runs beside the shared broker on 5672 and never touches it: a private HOME
//! with its own Erlang cookie, its own node name, data, logs and ports. Starting one
//! takes seconds, so a test binary shares one ([`BrokerNode::shared`]); it stops when
//! the last test holding it is done, and a watchdog stops it if the test process dies.

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
pub(crate) const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";

/// How long a node may take to boot.
const STARTUP_LIMIT: Duration = Duration::from_secs(90);

/// A running RabbitMQ node with TLS and EXTERNAL only, stopped on drop.
pub struct BrokerNode {
    root: tempfile::TempDir,
    /// Full Erlang node name, `gq<random>@<host>`.
    pub node: String,
    /// The AMQPS port (127.0.0.1).
    pub amqps_port: u16,
    /// The plain AMQP port the node was given (`RABBITMQ_NODE_PORT`); the config has
    /// `listeners.tcp = none`, so nothing must listen on it.
    pub plain_port: u16,
    /// The Erlang distribution port.
    pub dist_port: u16,
    watchdog: Option<Child>,
}

static SHARED: Mutex<Weak<BrokerNode>> = Mutex::new(Weak::new());

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

pub(crate) fn short_hostname() -> String {
    let out = Command::new("hostname")
        .arg("-s")
        .output()
        .expect("hostname");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub(crate) fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

impl BrokerNode {
    /// The node this test binary shares, started on first use.
    pub fn shared() -> Arc<BrokerNode> {
        let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = slot.upgrade() {
            return n;
        }
        let n = Arc::new(BrokerNode::start());
        *slot = Arc::downgrade(&n);
        n
    }

    /// Starts a node from `deploy/rabbitmq-tls.conf` and `deploy/enabled_plugins`,
    /// with a fresh CA and server certificate from `gearmq pki`, and waits until it is
    /// up.
    pub fn start() -> BrokerNode {
        let root = tempfile::Builder::new()
            .prefix("gearmq-node-")
            .tempdir()
            .expect("tempdir");
        let r = root.path();
        let home = r.join("home");
        for d in ["home", "conf.d", "mnesia", "log", "pki"] {
            std::fs::create_dir_all(r.join(d)).expect("mkdir");
        }
        let cookie = home.join(".erlang.cookie");
        std::fs::write(
            &cookie,
            format!("GQ{:08X}{:08X}", crate::rand_u32(), crate::rand_u32()),
        )
        .expect("cookie");
        set_mode(&cookie, 0o400);

        // The broker's PKI, made by the real CLI.
        let pki = r.join("pki");
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

        let amqps_port = free_port();
        let plain_port = free_port();
        let dist_port = free_port();
        let template = std::fs::read_to_string(deploy_file("rabbitmq-tls.conf"))
            .expect("deploy/rabbitmq-tls.conf");
        let conf = override_conf(
            &template,
            &[
                ("listeners.ssl.default", format!("127.0.0.1:{amqps_port}")),
                (
                    "ssl_options.cacertfile",
                    pki.join("ca.pem").display().to_string(),
                ),
                (
                    "ssl_options.certfile",
                    pki.join("localhost.pem").display().to_string(),
                ),
                (
                    "ssl_options.keyfile",
                    pki.join("localhost.key").display().to_string(),
                ),
            ],
        );
        std::fs::write(r.join("rabbitmq.conf"), conf).expect("rabbitmq.conf");
        std::fs::copy(deploy_file("enabled_plugins"), r.join("enabled_plugins"))
            .expect("deploy/enabled_plugins");

        let name = format!("gq{:08x}", crate::rand_u32());
        let node = format!("{name}@{}", short_hostname());
        let status = Command::new(Path::new(RABBITMQ_BIN).join("rabbitmq-server"))
            .arg("-detached")
            .env("HOME", &home)
            .env("RABBITMQ_NODENAME", &name)
            .env("RABBITMQ_NODE_PORT", plain_port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
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
        let mut n = BrokerNode {
            root,
            node,
            amqps_port,
            plain_port,
            dist_port,
            watchdog: None,
        };
        n.watchdog = n.spawn_watchdog();
        n.await_startup();
        // A fresh node makes guest (administrator); production deletes it, so do we.
        n.ctl(&["delete_user", "guest"]).expect("delete guest");
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
        self.root.path().join("home")
    }

    /// The broker's CA directory (`gearmq pki init` output): `ca.pem`, `ca.key`.
    pub fn pki_dir(&self) -> PathBuf {
        self.root.path().join("pki")
    }

    /// The CA certificate clients must trust.
    pub fn ca_file(&self) -> PathBuf {
        self.pki_dir().join("ca.pem")
    }

    /// Runs `rabbitmqctl -n NODE <args>` and returns its standard output.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(Path::new(RABBITMQ_BIN).join("rabbitmqctl"))
            .args(["-n", &self.node])
            .args(args)
            .env("HOME", self.home())
            .output()
            .context("cannot run rabbitmqctl")?;
        if !out.status.success() {
            bail!(
                "rabbitmqctl {} failed: {}{}",
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

    /// `amqps://127.0.0.1:PORT/VHOST?auth_mechanism=external`.
    pub fn amqps_url(&self, vhost: &str) -> String {
        format!(
            "amqps://127.0.0.1:{}/{vhost}?auth_mechanism=external",
            self.amqps_port
        )
    }

    /// Issues (once) a client certificate for `name` from this node's CA with the real
    /// `gearmq pki issue`: returns (certificate, key) paths.
    pub fn client_cert(&self, name: &str) -> (PathBuf, PathBuf) {
        issue_client_cert(&self.pki_dir(), &self.root.path().join("clients"), name)
    }

    /// Connects to `vhost` over TLS as the common name of `cert` (EXTERNAL), trusting
    /// only this node's CA.
    pub async fn connect_with(
        &self,
        vhost: &str,
        identity: Option<(&Path, &Path)>,
    ) -> std::result::Result<Connection, String> {
        connect_tls(&self.amqps_url(vhost), &self.ca_file(), identity).await
    }

    /// Connects to `vhost` as broker user `name` with its certificate; panics if refused.
    pub async fn connect_as(&self, vhost: &str, name: &str) -> Connection {
        let (c, k) = self.client_cert(name);
        self.connect_with(vhost, Some((&c, &k)))
            .await
            .unwrap_or_else(|e| panic!("{name} cannot connect to {vhost}: {e}"))
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

/// Runs the `gearmq` CLI with `args` and extra `env` (see [`crate::run_cli_env`]).
pub use crate::run_cli_env;

impl Drop for BrokerNode {
    fn drop(&mut self) {
        let _ = self.ctl(&["stop"]);
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// A fleet made by `gearmq init --provision --node NODE` on a vhost of its own on a
/// [`BrokerNode`], then switched to TLS + EXTERNAL: every host and the operator get a
/// client certificate named like their broker user, and their configs the CA, the
/// certificate and an `amqps://…?auth_mechanism=external` URL.
pub struct TlsFleet {
    /// The fleet directory.
    pub dir: tempfile::TempDir,
    /// The node it lives on.
    pub node: Arc<BrokerNode>,
    /// Its vhost.
    pub vhost: String,
    /// Host names.
    pub hosts: Vec<String>,
    /// The operator name.
    pub operator: String,
}

/// Replaces the `urls = [...]` line of `section` in a TOML text written by `gearmq
/// init` and appends `extra` lines to that section.
fn rewrite_section(text: &str, section: &str, url: &str, extra: &[(&str, String)]) -> String {
    let mut out = String::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            if current == section {
                push_extra(&mut out, extra);
            }
            current = t.trim_matches(|c| c == '[' || c == ']').to_string();
        }
        if current == section && t.starts_with("urls") {
            out.push_str(&format!("urls = [{}]\n", toml_str(url)));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if current == section {
        push_extra(&mut out, extra);
    }
    out
}

fn push_extra(out: &mut String, extra: &[(&str, String)]) {
    for (k, v) in extra {
        out.push_str(&format!("{k} = {}\n", toml_str(v)));
    }
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let escaped: String = s
        .chars()
        .flat_map(|c| match c {
            '"' => vec!['\\', '"'],
            '\\' => vec!['\\', '\\'],
            c => vec![c],
        })
        .collect();
    format!("\"{escaped}\"")
}

impl TlsFleet {
    /// `gearmq init --provision --node NODE --operator OPERATOR --hosts HOSTS` on a new
    /// vhost `gq-<tag>-<random>`, then TLS configs. Names are broker users shared by
    /// every vhost of the node: give each test names of its own.
    pub fn init(node: Arc<BrokerNode>, tag: &str, operator: &str, hosts: &[&str]) -> TlsFleet {
        TlsFleet::init_with_delegators(node, tag, operator, hosts, &[])
    }

    /// [`TlsFleet::init`] with `--delegators`: those hosts also get a TLS client.toml.
    pub fn init_with_delegators(
        node: Arc<BrokerNode>,
        tag: &str,
        operator: &str,
        hosts: &[&str],
        delegators: &[&str],
    ) -> TlsFleet {
        let vhost = format!("gq-{tag}-{:08x}", crate::rand_u32());
        let dir = tempfile::Builder::new()
            .prefix(&format!("gearmq-tls-{tag}-"))
            .tempdir()
            .expect("tempdir");
        let fleet = TlsFleet {
            dir,
            node,
            vhost,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            operator: operator.to_string(),
        };
        let d = fleet.path().to_string_lossy().into_owned();
        // init rewrites the URL per user (user:password@, no query); the TLS rewrite
        // below replaces it.
        let broker = format!(
            "amqps://127.0.0.1:{}/{}",
            fleet.node.amqps_port, fleet.vhost
        );
        let hosts_arg = hosts.join(",");
        let delegators_arg = delegators.join(",");
        let mut args = vec![
            "init",
            "--dir",
            &d,
            "--hosts",
            &hosts_arg,
            "--operator",
            operator,
            "--broker",
            &broker,
            "--provision",
            "--node",
            &fleet.node.node,
        ];
        if !delegators.is_empty() {
            args.extend_from_slice(&["--delegators", &delegators_arg]);
        }
        let out = fleet.run(&args);
        assert_eq!(out.code, 0, "gearmq init --provision: {}", out.stderr);
        for h in hosts {
            fleet.use_tls(&fleet.host_dir(h).join("agent.toml"), h, "user_id");
        }
        for h in delegators {
            fleet.use_tls(&fleet.host_dir(h).join("client.toml"), h, "user");
        }
        fleet.use_tls(&fleet.orchestrator_toml(), operator, "user");
        fleet
    }

    /// Rewrites a config written by init for TLS + EXTERNAL as `name`.
    fn use_tls(&self, config: &Path, name: &str, user_key: &str) {
        let (cert, key) = self.client_cert(name);
        let text = std::fs::read_to_string(config).expect("read config");
        let text = rewrite_section(
            &text,
            "broker",
            &self.url(),
            &[
                ("ca_file", self.node.ca_file().display().to_string()),
                ("cert_file", cert.display().to_string()),
                ("key_file", key.display().to_string()),
                (user_key, name.to_string()),
            ],
        );
        std::fs::write(config, text).expect("write config");
    }

    /// A client certificate for `name` under `DIR/tls`.
    pub fn client_cert(&self, name: &str) -> (PathBuf, PathBuf) {
        issue_client_cert(&self.node.pki_dir(), &self.path().join("tls"), name)
    }

    /// The fleet's TLS URL.
    pub fn url(&self) -> String {
        self.node.amqps_url(&self.vhost)
    }

    /// The fleet directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `DIR/orchestrator.toml`.
    pub fn orchestrator_toml(&self) -> PathBuf {
        self.path().join("orchestrator.toml")
    }

    /// `DIR/hosts/<host>`.
    pub fn host_dir(&self, host: &str) -> PathBuf {
        self.path().join("hosts").join(host)
    }

    /// The orchestrator config, loaded as the library does.
    pub fn orchestrator_config(&self) -> gearmq_orchestrator::OrchestratorConfig {
        gearmq_orchestrator::OrchestratorConfig::load(&self.orchestrator_toml())
            .expect("orchestrator config")
    }

    /// A host's signing key and credential bytes, as its agent uses them.
    pub fn host_identity(&self, host: &str) -> (gearmq_schemas::SigningKey, Vec<u8>) {
        let d = self.host_dir(host);
        let key = gearmq_schemas::files::load_signing_key(&d.join("host.key")).expect("host key");
        let cred = std::fs::read(d.join("host.cred")).expect("host cred");
        (key, cred)
    }

    /// Runs the `gearmq` CLI with `args`, its rabbitmqctl reaching the node.
    pub fn run(&self, args: &[&str]) -> crate::CliOutput {
        let env = self.node.cli_env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run_cli_env(args, &env)
    }

    /// `gearmq --config DIR/orchestrator.toml <args>`, rabbitmqctl reaching the node.
    pub fn cli(&self, args: &[&str]) -> crate::CliOutput {
        let cfg = self.orchestrator_toml();
        let mut all = vec!["--config", cfg.to_str().unwrap_or_default()];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// Connects to the fleet's vhost as broker user `name` (certificate CN = name).
    pub async fn connect_as(&self, name: &str) -> Connection {
        let (c, k) = self.client_cert(name);
        self.node
            .connect_with(&self.vhost, Some((&c, &k)))
            .await
            .unwrap_or_else(|e| panic!("{name} cannot connect to {}: {e}", self.vhost))
    }

    /// Starts the real agent for `host` (TLS config) and waits until it is ready.
    pub fn start_agent(&self, host: &str) -> crate::Agent {
        crate::Agent::start(&self.host_dir(host).join("agent.toml"), host, &[])
    }
}

impl Drop for TlsFleet {
    fn drop(&mut self) {
        let _ = self.node.ctl(&["delete_vhost", &self.vhost]);
        for u in self.hosts.iter().chain(std::iter::once(&self.operator)) {
            let _ = self.node.ctl(&["delete_user", u]);
        }
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

    #[test]
    fn broker_section_gets_tls_keys() {
        let t =
            "name = \"a\"\n[broker]\nurls = [\"amqp://x\"]\nprovisioned = true\n[limits]\nx = 1\n";
        let o = rewrite_section(t, "broker", "amqps://h/v", &[("ca_file", "/c".into())]);
        assert_eq!(
            o,
            "name = \"a\"\n[broker]\nurls = [\"amqps://h/v\"]\nprovisioned = true\nca_file = \"/c\"\n[limits]\nx = 1\n"
        );
    }
}
