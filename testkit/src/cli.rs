//! The workspace's programs, run as a user runs them: the `gearmq` CLI to completion
//! (with a time limit), or in the background with its output read line by line.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

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

/// What a program run printed and how it exited.
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

/// Runs the `gearmq` CLI with `args`, with a 60 s limit.
pub fn run_cli(args: &[&str]) -> CliOutput {
    run_cli_env(args, &[])
}

/// Runs the `gearmq` CLI with `args` and extra `env`, with a 60 s limit.
pub fn run_cli_env(args: &[&str], env: &[(&str, &str)]) -> CliOutput {
    run_program("gearmq", args, env)
}

/// Runs the workspace binary `program` with `args` and extra `env` (and `NO_COLOR`),
/// with a 180 s limit: a guard against hangs, not a timing assertion (`broker check`
/// runs rabbitmqctl several times, each an Erlang VM start, which on a loaded 2-core
/// machine took over 60 s).
pub fn run_program(program: &str, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
    let mut child = Command::new(bin(program))
        .args(args)
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
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
    let limit = Duration::from_secs(180);
    let deadline = Instant::now() + limit;
    let code = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{program} {} did not finish in {limit:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    CliOutput {
        code,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

/// A `gearmq` CLI running in the background (`logs --follow`, a long call), its stdout
/// lines arriving as they are printed; killed on drop.
pub struct Streaming {
    child: Child,
    lines: Receiver<String>,
}

impl Streaming {
    /// Starts `gearmq <args>`; stderr is discarded.
    pub fn start(args: &[&str]) -> Streaming {
        let mut child = Command::new(bin("gearmq"))
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn gearmq {}: {e}", args.join(" ")));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Streaming { child, lines }
    }

    /// The next line, or `None` if none came by `deadline` (or the output ended).
    pub fn next_line(&self, deadline: Instant) -> Option<String> {
        self.lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .ok()
    }

    /// The next line as a JSON document; panics naming `what` if none comes in `limit`.
    pub fn next_json(&self, what: &str, limit: Duration) -> serde_json::Value {
        let line = self
            .next_line(Instant::now() + limit)
            .unwrap_or_else(|| panic!("no {what} within {limit:?}"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Ctrl-C (SIGINT: a following CLI sends a signed cancel), then waits at most
    /// `limit` for it to exit; its status and every line it printed after those
    /// already read.
    pub fn interrupt(mut self, limit: Duration) -> (ExitStatus, Vec<String>) {
        crate::signal(self.child.id(), "INT");
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "the CLI did not exit within {limit:?} of Ctrl-C"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends with the output: everything printed is in the channel.
        let rest = self.lines.iter().collect();
        (status, rest)
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
