//! A real `systemd --user` for a test: its own HOME, XDG dirs and runtime dir, in a
//! private mount namespace (so `/run/systemd/system` exists only for it), stopped on
//! drop. Its D-Bus is `$XDG_RUNTIME_DIR/bus`, reachable from outside the namespace.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running user manager.
pub struct UserSystemd {
    child: Option<Child>,
    root: tempfile::TempDir,
    cgroups: Vec<PathBuf>,
}

/// cgroup hierarchies a user manager tracks its units in. Each manager gets its own
/// group in them: managers started from the same group would share unit cgroups, and
/// stopping `x.service` in one would kill `x.service` of another.
const CGROUP_ROOTS: [&str; 2] = ["/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"];

impl UserSystemd {
    /// Starts one and waits until its bus answers.
    pub fn start() -> UserSystemd {
        let root = tempfile::Builder::new()
            .prefix("gearmq-systemd-")
            .tempdir()
            .expect("tempdir");
        let home = root.path().join("home");
        let runtime = root.path().join("run");
        let config = home.join(".config");
        for d in [&home, &runtime, &config] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        set_mode(&runtime, 0o700);
        let log = std::fs::File::create(root.path().join("systemd.log")).expect("log");
        let group = format!("gearmq-test-{:08x}", crate::rand_u32());
        let cgroups: Vec<PathBuf> = CGROUP_ROOTS
            .iter()
            .map(Path::new)
            .filter(|r| r.is_dir())
            .map(|r| r.join(&group))
            .collect();
        let mut script = String::new();
        for cg in &cgroups {
            script.push_str(&format!(
                "mkdir -p {d} && echo $$ > {d}/cgroup.procs && ",
                d = cg.display()
            ));
        }
        script.push_str(
            "mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/system && exec /usr/lib/systemd/systemd --user",
        );
        let child = Command::new("unshare")
            .args(["-m", "sh", "-c", &script])
            .env("HOME", &home)
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("XDG_CONFIG_HOME", &config)
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn systemd --user (needs unshare and /usr/lib/systemd/systemd)");
        let s = UserSystemd {
            child: Some(child),
            root,
            cgroups,
        };
        s.wait_bus(Duration::from_secs(20));
        s
    }

    fn wait_bus(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let ok = Command::new("busctl")
                .args([
                    "--address",
                    &self.bus_address(),
                    "status",
                    "org.freedesktop.systemd1",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.root.path().join("systemd.log"))
                    .unwrap_or_default();
                panic!("systemd --user did not come up in {limit:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `unix:path=<runtime>/bus`.
    pub fn bus_address(&self) -> String {
        format!("unix:path={}", self.runtime_dir().join("bus").display())
    }

    /// The manager's XDG_RUNTIME_DIR.
    pub fn runtime_dir(&self) -> PathBuf {
        self.root.path().join("run")
    }

    /// The manager's HOME.
    pub fn home(&self) -> PathBuf {
        self.root.path().join("home")
    }

    /// Where the manager reads user units from (`$XDG_CONFIG_HOME/systemd/user`).
    pub fn unit_dir(&self) -> PathBuf {
        self.home().join(".config").join("systemd").join("user")
    }

    /// Environment that points an agent at this manager (config overrides).
    pub fn agent_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("GEARMQ_AGENT__SYSTEMD__BUS", "user".to_string()),
            ("GEARMQ_AGENT__SYSTEMD__ADDRESS", self.bus_address()),
            (
                "GEARMQ_AGENT__SYSTEMD__UNIT_DIR",
                self.unit_dir().display().to_string(),
            ),
        ]
    }

    /// A scratch directory inside this fixture (removed on drop).
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.root.path().join(name);
        std::fs::create_dir_all(&p).expect("mkdir");
        p
    }
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

impl Drop for UserSystemd {
    fn drop(&mut self) {
        self.stop();
        // Empty once the manager and its units are gone; rmdir removes a cgroup.
        for cg in &self.cgroups {
            remove_cgroup(cg);
        }
    }
}

fn remove_cgroup(cg: &Path) {
    if let Ok(entries) = std::fs::read_dir(cg) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(cg);
}

impl UserSystemd {
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM lets the manager stop its units (our test programs) first.
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
