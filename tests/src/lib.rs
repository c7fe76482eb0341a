//! Harness for gearmq's end-to-end tests: a private vhost on the real RabbitMQ, a fleet
//! made by the real `gearmq init`, real `gearmq-agent` processes, and the real CLI.
//!
//! Every fixture cleans up in `Drop` (vhost deleted, processes killed, temp dirs
//! removed), so tests run in parallel and leave nothing behind, pass or fail.
#![forbid(unsafe_code)]

pub mod broker_node;
pub mod faults;
pub mod systemd;

use anyhow::{Context, Result, bail};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Address of the shared development broker.
pub const BROKER: &str = "127.0.0.1:5672";

/// Path of a binary built from this workspace (`cargo build --workspace` first).
pub fn bin(name: &str) -> PathBuf {
    // Test executables live in target/<profile>/deps; binaries one level up.
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        p.display()
    );
    p
}

fn rabbitmqctl(args: &[&str]) -> Result<String> {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .context("cannot run rabbitmqctl")?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A vhost of its own on the shared broker, deleted on drop.
pub struct Vhost {
    /// Its name.
    pub name: String,
}

impl Vhost {
    /// Creates `gearmq-t-<tag>-<random>` and lets guest use it.
    pub fn new(tag: &str) -> Vhost {
        let name = format!("gearmq-t-{tag}-{:08x}", rand_u32());
        rabbitmqctl(&["add_vhost", &name]).expect("add_vhost");
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"])
            .expect("set_permissions");
        Vhost { name }
    }

    /// The AMQP URL of this vhost as guest.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{BROKER}/{}", self.name)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["delete_vhost", &self.name]);
    }
}

/// A random u32 from the OS.
pub fn rand_u32() -> u32 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u32::from_be_bytes(b)
}

/// A fleet made by `gearmq init` in a temp dir, on its own vhost.
pub struct Fleet {
    /// The fleet directory.
    pub dir: tempfile::TempDir,
    /// The vhost it uses (dropped after the agents).
    pub vhost: Vhost,
    /// Host names.
    pub hosts: Vec<String>,
}

/// What a CLI run printed and how it exited.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CliOutput {
    /// Standard output parsed as one JSON document.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
}

impl Fleet {
    /// `gearmq init --dir <tmp> --hosts <hosts> --broker <vhost url>`.
    pub fn init(tag: &str, hosts: &[&str]) -> Fleet {
        Fleet::init_with(tag, hosts, &[])
    }

    /// [`Fleet::init`] with `extra` arguments for `gearmq init` (`--delegators a`, …).
    pub fn init_with(tag: &str, hosts: &[&str], extra: &[&str]) -> Fleet {
        let vhost = Vhost::new(tag);
        let dir = tempfile::Builder::new()
            .prefix(&format!("gearmq-{tag}-"))
            .tempdir()
            .expect("tempdir");
        let dir_arg = dir.path().to_string_lossy().into_owned();
        let hosts_arg = hosts.join(",");
        let url = vhost.url();
        let mut args = vec![
            "init", "--dir", &dir_arg, "--hosts", &hosts_arg, "--broker", &url,
        ];
        args.extend_from_slice(extra);
        let out = run_cli(&args);
        assert_eq!(out.code, 0, "gearmq init failed: {}", out.stderr);
        Fleet {
            dir,
            vhost,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
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

    /// `gearmq audit verify LOG --issuer DIR/issuer.pub --json`: what an auditor runs
    /// on any log of this fleet (the orchestrator's or an agent's).
    pub fn verify_audit(&self, log: &Path) -> CliOutput {
        let issuer = self.path().join("issuer.pub");
        run_cli(&[
            "audit",
            "verify",
            log.to_str().unwrap_or_default(),
            "--issuer",
            issuer.to_str().unwrap_or_default(),
            "--json",
        ])
    }

    /// `DIR/hosts/<host>`.
    pub fn host_dir(&self, host: &str) -> PathBuf {
        self.path().join("hosts").join(host)
    }

    /// Starts the real agent for `host` and waits until it is ready.
    pub fn start_agent(&self, host: &str) -> Agent {
        Agent::start(&self.host_dir(host).join("agent.toml"), host, &[])
    }

    /// Starts the agent for `host` managing units through `systemd` (a user manager of
    /// its own, so hosts on one machine never share units).
    pub fn start_agent_on(&self, host: &str, systemd: &systemd::UserSystemd) -> Agent {
        let env = systemd.agent_env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Agent::start(&self.host_dir(host).join("agent.toml"), host, &env)
    }

    /// Runs `gearmq --config DIR/orchestrator.toml <args>`.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        let cfg = self.orchestrator_toml();
        let mut all = vec!["--config", cfg.to_str().unwrap_or_default()];
        all.extend_from_slice(args);
        run_cli(&all)
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

    /// The operator's signing key and credential bytes.
    pub fn operator_identity(&self) -> (gearmq_schemas::SigningKey, Vec<u8>) {
        let key = gearmq_schemas::files::load_signing_key(&self.path().join("operator.key"))
            .expect("operator key");
        let cred = std::fs::read(self.path().join("operator.cred")).expect("operator cred");
        (key, cred)
    }

    /// Opens an AMQP connection to the fleet's vhost (for injecting messages).
    pub async fn amqp(&self) -> lapin::Connection {
        lapin::Connection::connect(&self.vhost.url(), lapin::ConnectionProperties::default())
            .await
            .expect("amqp connect")
    }
}

/// Runs the `gearmq` CLI with `args`, with a 60 s limit.
pub fn run_cli(args: &[&str]) -> CliOutput {
    run_cli_env(args, &[])
}

/// Runs the `gearmq` CLI with `args` and extra `env`, with a 60 s limit.
pub fn run_cli_env(args: &[&str], env: &[(&str, &str)]) -> CliOutput {
    let mut child = Command::new(bin("gearmq"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gearmq");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("gearmq {} did not finish in 60 s", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    CliOutput {
        code,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

/// A running `gearmq-agent`, killed on drop.
pub struct Agent {
    child: Option<Child>,
    /// The agent's log (stderr), a file in a temp dir.
    pub log: PathBuf,
    _logdir: tempfile::TempDir,
    /// The host name.
    pub host: String,
    config: PathBuf,
    env: Vec<(String, String)>,
}

impl Agent {
    /// Spawns `gearmq-agent --config <config>` with extra `env` and waits for
    /// `agent ready`.
    pub fn start(config: &Path, host: &str, env: &[(&str, &str)]) -> Agent {
        let logdir = tempfile::tempdir().expect("tempdir");
        let log = logdir.path().join("agent.log");
        let f = std::fs::File::create(&log).expect("log file");
        let child = Command::new(bin("gearmq-agent"))
            .arg("--config")
            .arg(config)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("spawn gearmq-agent");
        let mut a = Agent {
            child: Some(child),
            log,
            _logdir: logdir,
            host: host.to_string(),
            config: PathBuf::new(),
            env: Vec::new(),
        };
        a.config = config.to_path_buf();
        a.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        a.wait_ready(Duration::from_secs(30));
        a
    }

    /// Starts `gearmq-agent --emulate <hosts_dir>` (every host under it served by one
    /// process) and waits for `emulator ready`.
    pub fn emulator(hosts_dir: &Path) -> Agent {
        let logdir = tempfile::tempdir().expect("tempdir");
        let log = logdir.path().join("emulator.log");
        let f = std::fs::File::create(&log).expect("log file");
        let child = Command::new(bin("gearmq-agent"))
            .arg("--emulate")
            .arg(hosts_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("spawn gearmq-agent --emulate");
        let mut a = Agent {
            child: Some(child),
            log,
            _logdir: logdir,
            host: "emulator".to_string(),
            config: PathBuf::new(),
            env: Vec::new(),
        };
        a.wait_for("emulator ready", Duration::from_secs(60));
        a
    }

    /// Starts the agent again with the same config and environment (after a kill).
    pub fn restart(&mut self) {
        self.kill();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let next = Agent::start(&self.config.clone(), &self.host.clone(), &env);
        *self = next;
    }

    fn wait_ready(&mut self, limit: Duration) {
        self.wait_for("agent ready", limit)
    }

    fn wait_for(&mut self, ready: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let text = self.log_text();
            if text.contains(ready) {
                return;
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("agent {} exited ({st}) before ready:\n{text}", self.host);
            }
            if Instant::now() > deadline {
                panic!("agent {} not ready after {limit:?}:\n{text}", self.host);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the agent logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The agent's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the agent with SIGKILL (a crash).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}
