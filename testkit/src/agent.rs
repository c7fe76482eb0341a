//! A real `gearmq-agent` process (or the `gearmq-bench emulate` stand-in for many),
//! its log in a file of its own, ready once it logs so; killed on drop, and its log
//! printed if the test failed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long an agent may take to log `agent ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `gearmq-agent`, killed on drop.
pub struct Agent {
    child: Option<Child>,
    /// The agent's log (stderr), a file in a temp dir.
    pub log: PathBuf,
    _logdir: tempfile::TempDir,
    config: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Agent {
    /// Spawns `gearmq-agent --config <config>` and waits for `agent ready`.
    pub fn start(config: &Path) -> Agent {
        Agent::start_with(config, &[], &[])
    }

    /// Spawns `gearmq-agent --config <config> <args>` with extra `env` (over
    /// `RUST_LOG=info` and `NO_COLOR=1`) and waits for `agent ready`.
    pub fn start_with(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Agent {
        let mut all = vec!["--config".to_string(), config.display().to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        let mut a = Agent::spawn("gearmq-agent", all, env);
        a.config = config.to_path_buf();
        a.args = args.iter().map(|a| a.to_string()).collect();
        a.wait_for_log("agent ready", READY_TIMEOUT);
        a
    }

    /// Starts `gearmq-bench emulate <hosts_dir>` (every host under it served by one
    /// process) and waits for `emulator ready`.
    pub fn emulator(hosts_dir: &Path) -> Agent {
        let args = vec!["emulate".to_string(), hosts_dir.display().to_string()];
        let mut a = Agent::spawn("gearmq-bench", args, &[]);
        a.wait_for_log("emulator ready", Duration::from_secs(60));
        a
    }

    fn spawn(program: &str, args: Vec<String>, env: &[(&str, &str)]) -> Agent {
        let logdir = tempfile::tempdir().expect("tempdir");
        let log = logdir.path().join(format!("{program}.log"));
        let f = std::fs::File::create(&log).expect("log file");
        let child = Command::new(crate::bin(program))
            .args(&args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        Agent {
            child: Some(child),
            log,
            _logdir: logdir,
            config: PathBuf::new(),
            args: Vec::new(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Starts the agent again with the same config, arguments and environment (after a
    /// kill, or to let it go on after a crash).
    pub fn restart(&mut self) {
        self.kill();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let next = Agent::start_with(&self.config.clone(), &args, &env);
        *self = next;
    }

    /// Waits until the log holds `text`; panics (with the log) if the process exits
    /// first or `limit` passes.
    pub fn wait_for_log(&mut self, text: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let log = self.log_text();
            if log.contains(text) {
                return;
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "{} exited ({st}) before logging {text:?}:\n{log}",
                    self.what()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not log {text:?} within {limit:?}:\n{log}",
                    self.what()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn what(&self) -> String {
        format!("the agent of {}", self.config.display())
    }

    /// Everything the agent logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The agent's log lines so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log_text().lines().map(str::to_string).collect()
    }

    /// Whether the agent has logged `text`.
    pub fn log_contains(&self, text: &str) -> bool {
        self.log_text().contains(text)
    }

    /// Sends `sig` (`TERM`, `HUP`, `STOP`, …) to the running agent.
    pub fn signal(&self, sig: &str) {
        crate::signal(self.pid().expect("agent running"), sig);
    }

    /// Waits at most `limit` for the agent to exit; panics if it does not.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("agent started");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits (at most 20 s, then SIGKILL) for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        crate::send_signal(child.id(), "TERM");
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
        if std::thread::panicking() {
            // The test failed: what the agent said is the first thing to read.
            for line in self.log_text().lines() {
                eprintln!("[agent {}] {line}", self.config.display());
            }
        }
    }
}
