//! A real `systemd --user` for a test: its own HOME, XDG dirs and runtime dir, in a
//! private mount namespace (it runs only where `/run/systemd/system` exists, which must
//! not be created for the whole machine), in control groups of its own, stopped on
//! drop. Its D-Bus is `$XDG_RUNTIME_DIR/bus`, reachable from outside the namespace.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Run by `sh` inside `unshare -m`: moves itself into a control group of its own in
/// the systemd-named (v1) and the unified (v2) hierarchies, so that units of parallel
/// test managers with equal names never share a cgroup (stopping one would kill the
/// other's processes), then makes /run/systemd/system exist in this mount namespace
/// only and becomes the user manager. The cgroups made are listed in
/// $GEARMQ_TEST_CGROUPS for removal on drop.
///
/// With $GEARMQ_TEST_JOURNAL_DIR set, a journald of its own runs first (in this
/// namespace, writing to that directory, its pid in $GEARMQ_TEST_JOURNALD_PID), and
/// the manager's cgroup is laid out as on a real host
/// (`gearmq-test-PID.slice/user@UID.service`), so journald records its units as
/// `_SYSTEMD_USER_UNIT`.
const ISOLATE_AND_EXEC_MANAGER: &str = r#"set -e
: > "$GEARMQ_TEST_CGROUPS"
mkdir -p /run/systemd
mount -t tmpfs tmpfs /run/systemd
mkdir /run/systemd/system
suffix=""
leaf=""
if [ -n "$GEARMQ_TEST_JOURNAL_DIR" ]; then
  mkdir -p /run/systemd/journal /run/log/journal
  mount --bind "$GEARMQ_TEST_JOURNAL_DIR" /run/log/journal
  /usr/lib/systemd/systemd-journald </dev/null >/dev/null 2>&1 &
  echo $! > "$GEARMQ_TEST_JOURNALD_PID"
  i=0
  while [ ! -S /run/systemd/journal/stdout ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
  suffix=".slice"
  leaf="/user@$(id -u).service"
fi
join() {
  top="$1$2/gearmq-test-$$$suffix"
  mkdir -p "$top$leaf" && echo "$top" >> "$GEARMQ_TEST_CGROUPS" && echo $$ > "$top$leaf/cgroup.procs"
}
mp=$(awk '$3 == "cgroup" && $4 ~ /name=systemd/ { print $2; exit }' /proc/self/mounts)
own=$(sed -n 's/^[0-9]*:name=systemd://p' /proc/self/cgroup)
# With a journal the group sits at the top (journald derives unit names from the
# whole path, which must look like a host's: slices, then user@UID.service).
if [ -n "$leaf" ]; then own=""; fi
if [ -n "$mp" ]; then join "$mp" "${own%/}"; fi
mp2=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)
own2=$(sed -n 's/^0:://p' /proc/self/cgroup)
if [ -n "$leaf" ]; then own2=""; fi
if [ -n "$mp2" ]; then join "$mp2" "${own2%/}" || true; fi
exec /usr/lib/systemd/systemd --user
"#;

/// A running user manager.
pub struct UserSystemd {
    child: Option<Child>,
    root: tempfile::TempDir,
    journal: bool,
}

impl UserSystemd {
    /// Starts one and waits until its bus answers.
    pub fn start() -> UserSystemd {
        Self::start_with(false)
    }

    /// Starts one with a journald of its own (its files in [`journal_dir`]), which
    /// units with `StandardOutput=journal` log to.
    ///
    /// [`journal_dir`]: UserSystemd::journal_dir
    pub fn start_with_journal() -> UserSystemd {
        Self::start_with(true)
    }

    fn start_with(journal: bool) -> UserSystemd {
        let root = tempfile::Builder::new()
            .prefix("gearmq-systemd-")
            .tempdir()
            .expect("tempdir");
        let mut s = UserSystemd {
            child: None,
            root,
            journal,
        };
        if journal {
            std::fs::create_dir_all(s.journal_dir()).expect("mkdir journal dir");
        }
        std::fs::create_dir_all(s.unit_dir()).expect("mkdir unit dir");
        std::fs::create_dir_all(s.runtime_dir()).expect("mkdir runtime dir");
        crate::set_mode(&s.runtime_dir(), 0o700);
        s.boot();
        s
    }

    /// A "reboot": stops the manager (and with it every unit it runs), then starts a
    /// new one on the same home, unit and runtime directories, which starts what is
    /// enabled (`default.target`'s wants) by itself.
    pub fn reboot(&mut self) {
        self.stop();
        self.remove_cgroups();
        self.boot();
    }

    /// Spawns the manager and waits until its bus answers.
    fn boot(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())
            .expect("systemd.log");
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "sh", "-c", ISOLATE_AND_EXEC_MANAGER]);
        if self.journal {
            cmd.env("GEARMQ_TEST_JOURNAL_DIR", self.journal_dir())
                .env("GEARMQ_TEST_JOURNALD_PID", self.journald_pid_file());
        }
        let child = cmd
            .env("GEARMQ_TEST_CGROUPS", self.cgroups_file())
            .env("HOME", self.home())
            .env("XDG_CONFIG_HOME", self.config_home())
            .env("XDG_RUNTIME_DIR", self.runtime_dir())
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn systemd --user (needs unshare and /usr/lib/systemd/systemd)");
        self.child = Some(child);
        self.wait_bus(Duration::from_secs(20));
    }

    fn wait_bus(&mut self, limit: Duration) {
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
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
            if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                panic!("systemd --user exited ({st}):\n{log}");
            }
            if Instant::now() > deadline {
                panic!("systemd --user did not come up in {limit:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The fixture's directory (removed on drop).
    pub fn dir(&self) -> &Path {
        self.root.path()
    }

    fn log_file(&self) -> PathBuf {
        self.dir().join("systemd.log")
    }

    fn cgroups_file(&self) -> PathBuf {
        self.dir().join("cgroups")
    }

    fn journald_pid_file(&self) -> PathBuf {
        self.dir().join("journald.pid")
    }

    /// Where this fixture's journald writes (with [`start_with_journal`]): read it
    /// with `journalctl --directory`.
    ///
    /// [`start_with_journal`]: UserSystemd::start_with_journal
    pub fn journal_dir(&self) -> PathBuf {
        self.dir().join("journal")
    }

    /// `unix:path=<runtime>/bus`.
    pub fn bus_address(&self) -> String {
        format!("unix:path={}", self.runtime_dir().join("bus").display())
    }

    /// The manager's XDG_RUNTIME_DIR.
    pub fn runtime_dir(&self) -> PathBuf {
        self.dir().join("run")
    }

    /// The manager's HOME.
    pub fn home(&self) -> PathBuf {
        self.dir().join("home")
    }

    /// The manager's XDG_CONFIG_HOME.
    pub fn config_home(&self) -> PathBuf {
        self.home().join(".config")
    }

    /// Where the manager reads user units from (`$XDG_CONFIG_HOME/systemd/user`).
    pub fn unit_dir(&self) -> PathBuf {
        self.config_home().join("systemd").join("user")
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

    /// The body of an agent config's `[systemd]` section managing units here.
    pub fn agent_section(&self) -> String {
        format!(
            "bus = \"user\"\naddress = \"{}\"\nunit_dir = \"{}\"\n",
            self.bus_address(),
            self.unit_dir().display()
        )
    }

    /// Calls the manager's D-Bus `method` with busctl (`signature` and `args` as busctl
    /// takes them), as something other than gearmq would; its output. Panics on failure.
    pub fn busctl_manager(&self, method: &str, signature: &str, args: &[&str]) -> String {
        let mut cmd = Command::new("busctl");
        cmd.args([
            "--address",
            &self.bus_address(),
            "call",
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            method,
        ]);
        if !signature.is_empty() {
            cmd.arg(signature).args(args);
        }
        let out = cmd.output().expect("busctl");
        assert!(
            out.status.success(),
            "busctl {method} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes unit file `name` into the manager's unit directory, reloads and starts it:
    /// a unit made without gearmq.
    pub fn start_foreign_unit(&self, name: &str, text: &str) -> PathBuf {
        let path = self.unit_dir().join(name);
        std::fs::write(&path, text).expect("write unit");
        self.busctl_manager("Reload", "", &[]);
        self.busctl_manager("StartUnit", "ss", &[name, "replace"]);
        path
    }

    /// The main PID of service `unit` (0 when it runs none).
    pub fn main_pid(&self, unit: &str) -> u32 {
        let out = self.busctl_manager("GetUnit", "s", &[unit]);
        // `o "/org/freedesktop/systemd1/unit/…"`
        let path = out
            .trim()
            .trim_start_matches("o ")
            .trim_matches('"')
            .to_string();
        let out = Command::new("busctl")
            .args([
                "--address",
                &self.bus_address(),
                "get-property",
                "org.freedesktop.systemd1",
                &path,
                "org.freedesktop.systemd1.Service",
                "MainPID",
            ])
            .output()
            .expect("busctl");
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .trim_start_matches("u ")
            .parse()
            .unwrap_or_else(|_| panic!("MainPID of {unit}: {text:?}"))
    }

    /// A scratch directory inside this fixture (removed on drop).
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.dir().join(name);
        std::fs::create_dir_all(&p).expect("mkdir");
        p
    }

    /// Writes an executable `#!/bin/sh` program `name` with `body` in this fixture's
    /// directory and returns its path.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        crate::write_program(self.dir(), name, body)
    }

    fn stop(&mut self) {
        self.stop_manager();
        if let Ok(pid) = std::fs::read_to_string(self.journald_pid_file()) {
            // Never `kill 0` (the whole process group) on a garbled file.
            if let Ok(pid) = pid.trim().parse::<u32>()
                && pid > 1
            {
                crate::send_signal(pid, "TERM");
            }
            let _ = std::fs::remove_file(self.journald_pid_file());
        }
    }

    fn stop_manager(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM lets the manager stop its units (the test's programs) first.
            crate::send_signal(c.id(), "TERM");
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

    /// Removes the (now empty) cgroups the manager ran in, deepest first.
    fn remove_cgroups(&self) {
        let list = std::fs::read_to_string(self.cgroups_file()).unwrap_or_default();
        for top in list.lines().filter(|l| l.contains("/gearmq-test-")) {
            remove_cgroup(Path::new(top));
        }
    }
}

/// Removes `cg` and the groups below it (rmdir removes an empty cgroup).
fn remove_cgroup(cg: &Path) {
    if let Ok(entries) = std::fs::read_dir(cg) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(cg);
}

impl Drop for UserSystemd {
    fn drop(&mut self) {
        self.stop();
        self.remove_cgroups();
    }
}
