//! Harness for the fault tests: plain-AMQP RabbitMQ nodes of the tests' own that can be
//! stopped and started (alone, or three clustered), fleets on them made by the real
//! `gearmq init`, and the observations the tests report for RELIABILITY.md.
//!
//! Like [`crate::broker_node::BrokerNode`], a node runs beside the shared broker on
//! 5672 and never touches it: a private HOME with its own Erlang cookie, its own node
//! name, data, logs and ports, and a watchdog that stops it if the test process dies.

use crate::broker_node::{RABBITMQ_BIN, free_port, set_mode, short_hostname};
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a node may take to boot.
const STARTUP_LIMIT: Duration = Duration::from_secs(90);

/// Environment variable naming a JSON-lines file the fault tests append their
/// observations to (`deploy/reliability.sh` sets it and renders RELIABILITY.md).
pub const OBSERVATIONS_ENV: &str = "GEARMQ_RELIABILITY_OUT";

/// Appends one observation (`{"test", "fault", "observed"}`) to the file named by
/// [`OBSERVATIONS_ENV`], if set; always prints it, so a plain test run shows it too.
pub fn observe(test: &str, fault: &str, observed: serde_json::Value) {
    let line = serde_json::json!({"test": test, "fault": fault, "observed": observed});
    println!("observation: {line}");
    if let Ok(path) = std::env::var(OBSERVATIONS_ENV) {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path);
        match f {
            // One write of one line: appends of a few hundred bytes do not interleave.
            Ok(mut f) => {
                let _ = f.write_all(format!("{line}\n").as_bytes());
            }
            Err(e) => eprintln!("cannot append to {path}: {e}"),
        }
    }
}

/// A plain-AMQP RabbitMQ node (guest/guest on loopback) that a test may stop and start
/// again with its data intact; stopped on drop.
pub struct PlainNode {
    root: tempfile::TempDir,
    home: PathBuf,
    name: String,
    /// Full Erlang node name, `gq<random>@<host>`.
    pub node: String,
    /// The AMQP port (127.0.0.1).
    pub port: u16,
    dist_port: u16,
    watchdog: Option<Child>,
}

impl PlainNode {
    /// Starts a node with a cookie of its own and waits until it is up.
    pub fn start() -> PlainNode {
        let n = PlainNode::create(None);
        n.boot();
        n
    }

    /// A node whose HOME (and so Erlang cookie) is `home` when given (cluster members
    /// share one), not booted yet.
    fn create(home: Option<&Path>) -> PlainNode {
        let root = tempfile::Builder::new()
            .prefix("gearmq-plain-")
            .tempdir()
            .expect("tempdir");
        let r = root.path();
        for d in ["conf.d", "mnesia", "log"] {
            std::fs::create_dir_all(r.join(d)).expect("mkdir");
        }
        let home = match home {
            Some(h) => h.to_path_buf(),
            None => {
                let h = r.join("home");
                std::fs::create_dir_all(&h).expect("mkdir home");
                let cookie = h.join(".erlang.cookie");
                std::fs::write(
                    &cookie,
                    format!("GQ{:08X}{:08X}", crate::rand_u32(), crate::rand_u32()),
                )
                .expect("cookie");
                set_mode(&cookie, 0o400);
                h
            }
        };
        let port = free_port();
        let dist_port = free_port();
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
        let name = format!("gq{:08x}", crate::rand_u32());
        let node = format!("{name}@{}", short_hostname());
        let mut n = PlainNode {
            root,
            home,
            name,
            node,
            port,
            dist_port,
            watchdog: None,
        };
        n.watchdog = n.spawn_watchdog();
        n
    }

    fn spawn_watchdog(&self) -> Option<Child> {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             HOME='{home}' {bin}/rabbitmqctl -n '{node}' stop >/dev/null 2>&1; rm -rf '{root}'",
            pid = std::process::id(),
            home = self.home.display(),
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
            .env("HOME", &self.home)
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
    /// stay on disk for [`PlainNode::boot`]).
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

    /// Runs `rabbitmqctl -n NODE <args>` and returns its standard output.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(Path::new(RABBITMQ_BIN).join("rabbitmqctl"))
            .args(["-n", &self.node])
            .args(args)
            .env("HOME", &self.home)
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

    /// `amqp://guest:guest@127.0.0.1:PORT/VHOST`.
    pub fn url(&self, vhost: &str) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/{vhost}", self.port)
    }

    /// Creates `vhost` with guest allowed everything (on a cluster, once is enough).
    pub fn add_vhost(&self, vhost: &str) {
        self.ctl(&["add_vhost", vhost]).expect("add_vhost");
        self.ctl(&["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"])
            .expect("set_permissions");
    }

    /// Messages ready in `queue` of `vhost` (0 if it does not exist).
    pub fn queue_depth(&self, vhost: &str, queue: &str) -> u64 {
        let out = self
            .ctl(&[
                "list_queues",
                "-p",
                vhost,
                "--quiet",
                "--no-table-headers",
                "name",
                "messages",
            ])
            .unwrap_or_default();
        out.lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some((it.next()?, it.next()?.parse::<u64>().ok()?))
            })
            .find(|(n, _)| *n == queue)
            .map(|(_, m)| m)
            .unwrap_or(0)
    }
}

impl Drop for PlainNode {
    fn drop(&mut self) {
        let _ = self.ctl(&["stop"]);
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// Three [`PlainNode`]s on this machine joined into one cluster (sharing a cookie).
pub struct Cluster {
    /// The members; the first is the one the others joined.
    pub nodes: Vec<PlainNode>,
    _home: tempfile::TempDir,
}

impl Cluster {
    /// Boots three nodes and joins the second and third to the first.
    pub fn start() -> Result<Cluster> {
        let home = tempfile::Builder::new()
            .prefix("gearmq-cluster-home-")
            .tempdir()
            .context("tempdir")?;
        let cookie = home.path().join(".erlang.cookie");
        std::fs::write(
            &cookie,
            format!("GQ{:08X}{:08X}", crate::rand_u32(), crate::rand_u32()),
        )?;
        set_mode(&cookie, 0o400);
        let nodes: Vec<PlainNode> = (0..3)
            .map(|_| PlainNode::create(Some(home.path())))
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
        Ok(Cluster { nodes, _home: home })
    }
}

/// A fleet made by `gearmq init` on a vhost of a [`PlainNode`] (or cluster), whose
/// configs list `urls` (tried in order) and reconnect quickly.
pub struct NodeFleet {
    /// The fleet directory.
    pub dir: tempfile::TempDir,
    /// Host names.
    pub hosts: Vec<String>,
    /// The vhost.
    pub vhost: String,
}

/// `text` with its `urls = [...]` line replaced by `urls` and `extra` lines after it.
fn with_urls(text: &str, urls: &[String], extra: &str) -> String {
    let list = urls
        .iter()
        .map(|u| format!("{u:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    text.lines()
        .map(|l| {
            if l.starts_with("urls = [") {
                format!("urls = [{list}]\n{extra}")
            } else {
                format!("{l}\n")
            }
        })
        .collect()
}

impl NodeFleet {
    /// `gearmq init` for `hosts` on `vhost` at `urls[0]`, then every config pointed at
    /// all of `urls`, with reconnect delays capped at 1 s.
    pub fn init(tag: &str, hosts: &[&str], vhost: &str, urls: &[String]) -> NodeFleet {
        let dir = tempfile::Builder::new()
            .prefix(&format!("gearmq-{tag}-"))
            .tempdir()
            .expect("tempdir");
        let out = crate::run_cli(&[
            "init",
            "--dir",
            &dir.path().to_string_lossy(),
            "--hosts",
            &hosts.join(","),
            "--broker",
            &urls[0],
        ]);
        assert_eq!(out.code, 0, "gearmq init failed: {}", out.stderr);
        let f = NodeFleet {
            dir,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            vhost: vhost.to_string(),
        };
        for h in hosts {
            let p = f.host_dir(h).join("agent.toml");
            let text = std::fs::read_to_string(&p).expect("agent.toml");
            std::fs::write(&p, with_urls(&text, urls, "reconnect_max = \"1s\"\n"))
                .expect("agent.toml");
        }
        let p = f.orchestrator_toml();
        let text = std::fs::read_to_string(&p).expect("orchestrator.toml");
        std::fs::write(
            &p,
            with_urls(
                &text,
                urls,
                "reconnect_initial = \"100ms\"\nreconnect_max = \"1s\"\n",
            ),
        )
        .expect("orchestrator.toml");
        f
    }

    /// Marks the broker as provisioned in every config (the test declared the
    /// topology itself): agents and orchestrator then only check it passively.
    pub fn set_provisioned(&self) {
        let mut files: Vec<PathBuf> = self
            .hosts
            .iter()
            .map(|h| self.host_dir(h).join("agent.toml"))
            .collect();
        files.push(self.orchestrator_toml());
        for p in files {
            let text = std::fs::read_to_string(&p).expect("config");
            assert!(text.contains("provisioned = false"), "{}", p.display());
            std::fs::write(
                &p,
                text.replace("provisioned = false", "provisioned = true"),
            )
            .expect("config");
        }
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

    /// Starts the real agent for `host` and waits until it is ready.
    pub fn start_agent(&self, host: &str) -> crate::Agent {
        crate::Agent::start(&self.host_dir(host).join("agent.toml"), host, &[])
    }

    /// Runs `gearmq --config DIR/orchestrator.toml <args>`.
    pub fn cli(&self, args: &[&str]) -> crate::CliOutput {
        let cfg = self.orchestrator_toml();
        let mut all = vec!["--config", cfg.to_str().unwrap_or_default()];
        all.extend_from_slice(args);
        crate::run_cli(&all)
    }

    /// The orchestrator config, loaded as the library does.
    pub fn orchestrator_config(&self) -> gearmq_orchestrator::OrchestratorConfig {
        gearmq_orchestrator::OrchestratorConfig::load(&self.orchestrator_toml())
            .expect("orchestrator config")
    }
}
