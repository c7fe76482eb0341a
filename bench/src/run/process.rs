//! The processes and the vhost a run starts, stopped and removed when dropped.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(super) fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let p = exe.with_file_name(name);
    if !p.is_file() {
        bail!(
            "{} is missing (build the workspace: cargo build --release)",
            p.display()
        );
    }
    Ok(p)
}

/// A child process killed on drop, whose stderr goes to a file.
pub(super) struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub(super) fn start(cmd: &mut Command, log: PathBuf) -> Result<Proc> {
        let f = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .context("cannot start a process")?;
        Ok(Proc { child, log })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn wait_for(&mut self, text: &str, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log.contains(text) {
                return Ok(());
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                bail!("process exited ({st}) before {text:?}:\n{log}");
            }
            if Instant::now() > deadline {
                bail!("no {text:?} after {limit:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(super) fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A vhost made for the run and deleted after.
pub(crate) struct BenchVhost {
    pub(crate) name: String,
}

impl BenchVhost {
    pub(crate) fn new() -> Result<BenchVhost> {
        let name = format!("gearmq-bench-{:08x}", rand::random::<u32>());
        rabbitmqctl(&["add_vhost", &name])?;
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"])?;
        Ok(BenchVhost { name })
    }
}

impl Drop for BenchVhost {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["delete_vhost", &self.name]);
    }
}

fn rabbitmqctl(args: &[&str]) -> Result<()> {
    gearmq_io::rabbitmqctl(None, args)
        .map(drop)
        .map_err(anyhow::Error::msg)
}
