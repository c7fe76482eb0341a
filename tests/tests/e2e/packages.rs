//! The .deb packages, as a host installs them: `deploy/package.sh --profile dev` packs
//! the binaries this test build made, `dpkg -i` installs them on this machine (tests
//! run as root on Debian), the installed agent — started with its unit's `ExecStart`
//! and its paths — answers a ping from the installed CLI as one host of a fleet, and
//! `dpkg --purge` leaves nothing behind.
//!
//! The packages are the machine's, not the test's: one run at a time on a machine (a
//! lock in /run/lock, also across checkouts), and a run killed midway is cleaned up by
//! the next one, which knows it from a state file beside the lock. Packages or an
//! /etc/gearmq that no run of this test made are never touched: the test refuses.

use gearmq_testkit::node::deploy_file;
use gearmq_testkit::{Fleet, wait_until};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

const LOCK: &str = "/run/lock/gearmq-packages-test.lock";
/// Exists while a run has (or may have) packages installed; holds the pid of the
/// installed agent it started, once started.
const STATE: &str = "/run/lock/gearmq-packages-test.state";
const PACKAGES: [&str; 2] = ["gearmq-agent", "gearmq"];
/// What the packages make outside of shared system directories.
const OWN_DIRS: [&str; 5] = [
    "/etc/gearmq",
    "/var/lib/gearmq",
    "/var/lib/gearmq-artifacts",
    "/usr/share/doc/gearmq-agent",
    "/usr/share/doc/gearmq",
];

#[test]
fn packages_install_run_in_a_fleet_and_purge_without_a_trace() {
    assert!(
        is_root(),
        "installing packages needs root (CI and deploy/test.sh run as root)"
    );
    let _lock = MachineLock::acquire();
    clean_up_after_an_earlier_run();

    let debs = tempfile::tempdir().unwrap();
    let (agent_deb, cli_deb) = build_packages(debs.path());
    let version = run(path(&gearmq_testkit::bin("gearmq")), &["--version"]);
    let version = version.split_whitespace().nth(1).unwrap().to_string();
    assert!(
        agent_deb.ends_with(format!("gearmq-agent_{version}_{}.deb", arch())),
        "{}",
        agent_deb.display()
    );
    assert!(cli_deb.ends_with(format!("gearmq_{version}_{}.deb", arch())));

    std::fs::write(STATE, "").unwrap();
    let _purge = PurgeOnPanic;
    let installed = dpkg(&["-i", path(&agent_deb), path(&cli_deb)]);
    assert!(
        !installed.contains("systemctl"),
        "the maintainer scripts called systemctl where PID 1 is not systemd:\n{installed}"
    );
    let files = installed_files();
    check_installed_files(&version);

    // One host of a fleet runs the installed agent from /etc/gearmq and /var/lib/gearmq;
    // the other the agent of this build. The installed CLI pings both.
    let fleet = Fleet::init("pkg", &["pkg1", "pkg2"]);
    configure_installed_agent(&fleet, "pkg1");
    let mut agent = InstalledAgent::start();
    let _other = fleet.start_agent("pkg2");
    let cfg = fleet.orchestrator_toml();
    let ping = Command::new("/usr/bin/gearmq")
        .args([
            "--config",
            path(&cfg),
            "ping",
            "--all",
            "--json",
            "--timeout",
            "20s",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&ping.stdout);
    assert_eq!(
        ping.status.code(),
        Some(0),
        "{stdout}{}\nagent log:\n{}",
        String::from_utf8_lossy(&ping.stderr),
        agent.log()
    );
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let pkg1 = doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["host"] == "pkg1")
        .unwrap_or_else(|| panic!("no result for pkg1: {stdout}"));
    assert_eq!(pkg1["status"], "ok", "{stdout}");
    assert_eq!(pkg1["data"]["agent_version"], version.as_str(), "{stdout}");
    assert_eq!(doc["summary"]["ok"], 2, "{stdout}");
    // The installed agent kept its state where the package said.
    assert!(Path::new("/var/lib/gearmq/audit.log").is_file());
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log());

    // remove: programs gone, configuration and state kept.
    dpkg(&["-r", "gearmq-agent", "gearmq"]);
    assert!(!Path::new("/usr/bin/gearmq-agent").exists());
    assert!(!Path::new("/usr/bin/gearmq").exists());
    assert!(!Path::new("/lib/systemd/system/gearmq-agent.service").exists());
    assert!(
        Path::new("/etc/gearmq/agent.toml").is_file(),
        "remove keeps conffiles"
    );
    assert!(
        Path::new("/var/lib/gearmq/audit.log").is_file(),
        "remove keeps state"
    );

    // purge: nothing left.
    dpkg(&["--purge", "gearmq-agent", "gearmq"]);
    for p in PACKAGES {
        assert!(!dpkg_knows(p), "dpkg still knows {p}");
    }
    let left: Vec<&String> = files
        .iter()
        .filter(|f| f.contains("gearmq") && Path::new(f).symlink_metadata().is_ok())
        .collect();
    assert!(left.is_empty(), "left after purge: {left:?}");
    for d in OWN_DIRS {
        assert!(!Path::new(d).exists(), "{d} is left after purge");
    }
    assert!(!user_exists("gearmq"), "a gearmq user is left after purge");
    std::fs::remove_file(STATE).unwrap();
}

/// Runs deploy/package.sh on this build's binaries; the two .deb files.
fn build_packages(out: &Path) -> (PathBuf, PathBuf) {
    // target/debug/gearmq -> target
    let target = gearmq_testkit::bin("gearmq")
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf();
    let st = Command::new("bash")
        .arg(deploy_file("package.sh"))
        .args(["--profile", "dev", "--out", path(out)])
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "deploy/package.sh --profile dev: {}{}",
        String::from_utf8_lossy(&st.stdout),
        String::from_utf8_lossy(&st.stderr)
    );
    let arch = arch();
    let find = |prefix: &str| {
        std::fs::read_dir(out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                n.starts_with(prefix) && n.ends_with(&format!("_{arch}.deb"))
            })
            .unwrap_or_else(|| panic!("no {prefix}*_{arch}.deb in {}", out.display()))
    };
    (find("gearmq-agent_"), find("gearmq_"))
}

/// Programs, unit, conffile, state dir, man pages and completions where Debian looks.
fn check_installed_files(version: &str) {
    for bin in ["/usr/bin/gearmq-agent", "/usr/bin/gearmq"] {
        assert_file(bin, 0o755);
    }
    let out = run("/usr/bin/gearmq-agent", &["--version"]);
    assert_eq!(out.trim(), format!("gearmq-agent {version}"));

    let unit = "/lib/systemd/system/gearmq-agent.service";
    assert_file(unit, 0o644);
    assert_eq!(
        std::fs::read_to_string(unit).unwrap(),
        std::fs::read_to_string(deploy_file("gearmq-agent.service")).unwrap()
    );
    // The unit's paths are the package's: verify fails on an ExecStart that is missing.
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no", unit])
        .output()
        .expect("systemd-analyze (deploy/test.sh installs systemd)");
    let verify_err = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && !verify_err.contains("gearmq-agent.service"),
        "systemd-analyze verify {unit}: {verify_err}"
    );
    // The unit runs the agent as root (no User=): no system user to make.
    let text = std::fs::read_to_string(unit).unwrap();
    assert!(!text.lines().any(|l| l.starts_with("User=")));
    assert!(!user_exists("gearmq"));

    assert_file("/etc/gearmq/agent.toml", 0o644);
    assert_eq!(
        std::fs::read_to_string("/etc/gearmq/agent.toml").unwrap(),
        std::fs::read_to_string(deploy_file("agent.example.toml")).unwrap()
    );
    let conffiles = run("dpkg-query", &["-W", "-f", "${Conffiles}", "gearmq-agent"]);
    assert!(conffiles.contains("/etc/gearmq/agent.toml "), "{conffiles}");

    let state = std::fs::metadata("/var/lib/gearmq").unwrap();
    assert!(state.is_dir());
    assert_eq!(state.permissions().mode() & 0o7777, 0o700);
    assert_eq!((state.uid(), state.gid()), (0, 0));
    // Shipped programs: a store every unit may read and run from.
    let store = std::fs::metadata("/var/lib/gearmq-artifacts").unwrap();
    assert_eq!(store.permissions().mode() & 0o7777, 0o755);
    assert_eq!((store.uid(), store.gid()), (0, 0));

    for page in [
        "gearmq-agent",
        "gearmq",
        "gearmq-ping",
        "gearmq-broker-provision",
    ] {
        let p = format!("/usr/share/man/man1/{page}.1.gz");
        assert_file(&p, 0o644);
        let roff = run("zcat", &[&p]);
        assert!(roff.contains(".TH"), "{p} is no man page");
    }
    for bin in ["gearmq-agent", "gearmq"] {
        for (p, needle) in [
            (
                format!("/usr/share/bash-completion/completions/{bin}"),
                "complete -F",
            ),
            (
                format!("/usr/share/zsh/vendor-completions/_{bin}"),
                "#compdef",
            ),
            (
                format!("/usr/share/fish/vendor_completions.d/{bin}.fish"),
                "complete -c",
            ),
        ] {
            assert_file(&p, 0o644);
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(text.contains(needle), "{p} lacks {needle:?}");
        }
    }
    let bash = std::fs::read_to_string("/usr/share/bash-completion/completions/gearmq").unwrap();
    assert!(
        bash.contains("ping") && bash.contains("--where"),
        "gearmq's bash completion"
    );
}

/// Puts `host`'s identity from the fleet into /etc/gearmq and its agent.toml, with the
/// paths rewritten, over the conffile (as an operator does after installing).
fn configure_installed_agent(fleet: &Fleet, host: &str) {
    let dir = fleet.host_dir(host);
    let etc = Path::new("/etc/gearmq");
    for (from, name, mode) in [
        (dir.join("host.key"), "host.key", 0o600),
        (dir.join("host.cred"), "host.cred", 0o644),
        (dir.join("sealing.key"), "sealing.key", 0o600),
        (fleet.path().join("issuer.pub"), "issuer.pub", 0o644),
        (
            fleet.path().join("revocations.bin"),
            "revocations.bin",
            0o644,
        ),
    ] {
        let to = etc.join(name);
        std::fs::copy(&from, &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let text = std::fs::read_to_string(fleet.agent_toml(host)).unwrap();
    let text = text
        .replace(&format!("{}/state", dir.display()), "/var/lib/gearmq")
        .replace(&format!("{}/", dir.display()), "/etc/gearmq/")
        .replace(&format!("{}/", fleet.path().display()), "/etc/gearmq/");
    assert!(
        !text.contains(&fleet.path().display().to_string()),
        "{text}"
    );
    std::fs::write(etc.join("agent.toml"), text).unwrap();
}

/// `/usr/bin/gearmq-agent` started with its unit's ExecStart (PID 1 is not systemd
/// here), killed on drop; its pid is in [`STATE`] for a later run to end if this one
/// dies.
struct InstalledAgent {
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl InstalledAgent {
    fn start() -> InstalledAgent {
        let unit = std::fs::read_to_string("/lib/systemd/system/gearmq-agent.service").unwrap();
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("the unit has ExecStart=");
        let mut argv = exec.split_whitespace();
        let program = argv.next().unwrap();
        assert_eq!(program, "/usr/bin/gearmq-agent");
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("agent.log");
        let child = Command::new(program)
            .args(argv)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        std::fs::write(STATE, child.id().to_string()).unwrap();
        let mut agent = InstalledAgent {
            child: Some(child),
            log,
            _dir: dir,
        };
        wait_until(
            "the installed agent to be ready",
            Duration::from_secs(30),
            || {
                if let Some(Ok(Some(st))) = agent.child.as_mut().map(Child::try_wait) {
                    panic!("the installed agent exited ({st}):\n{}", agent.log());
                }
                agent.log().contains("agent ready")
            },
        );
        agent
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then its exit code (it drains and exits 0).
    fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        gearmq_testkit::signal(child.id(), "TERM");
        let mut code = None;
        wait_until(
            "the installed agent to exit",
            Duration::from_secs(30),
            || match child.try_wait() {
                Ok(Some(st)) => {
                    code = st.code();
                    true
                }
                _ => false,
            },
        );
        code
    }
}

impl Drop for InstalledAgent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            for line in self.log().lines() {
                eprintln!("[installed agent] {line}");
            }
        }
    }
}

/// Purges the packages when the test fails after installing them (the installed
/// agent, declared later, is killed before), so a failure leaves the machine clean.
struct PurgeOnPanic;

impl Drop for PurgeOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let known: Vec<&str> = PACKAGES.into_iter().filter(|p| dpkg_knows(p)).collect();
        if !known.is_empty() {
            let _ = Command::new("dpkg").arg("--purge").args(known).status();
        }
        let _ = std::fs::remove_file(STATE);
    }
}

/// An exclusive lock for the whole machine, held by a `flock` child: it lets go when
/// dropped, and when this process dies (the child's stdin closes).
struct MachineLock {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl MachineLock {
    fn acquire() -> MachineLock {
        let mut child = Command::new("flock")
            .args([
                "--exclusive",
                "--wait",
                "900",
                LOCK,
                "-c",
                "echo locked && exec cat",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("flock (util-linux)");
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert_eq!(
            line.trim(),
            "locked",
            "another packages test held {LOCK} for 15 min"
        );
        let stdin = child.stdin.take();
        MachineLock { child, stdin }
    }
}

impl Drop for MachineLock {
    fn drop(&mut self) {
        // cat sees the end of its input and exits; flock lets go.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// Ends what an earlier run killed midway left: its installed agent (by the pid it
/// recorded, if that is still an installed agent) and its packages. Refuses to touch
/// packages or directories this test did not install.
fn clean_up_after_an_earlier_run() {
    let Ok(state) = std::fs::read_to_string(STATE) else {
        for p in PACKAGES {
            assert!(
                !dpkg_knows(p),
                "package {p} is on this machine but no run of this test installed it: \
                 purge it first (dpkg --purge {p})"
            );
        }
        for d in [
            "/etc/gearmq",
            "/var/lib/gearmq",
            "/var/lib/gearmq-artifacts",
        ] {
            assert!(
                !Path::new(d).exists(),
                "{d} exists but no run of this test made it: move it away first"
            );
        }
        return;
    };
    if let Ok(pid) = state.trim().parse::<u32>() {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        // After a purge the link reads "/usr/bin/gearmq-agent (deleted)".
        if exe.to_string_lossy().starts_with("/usr/bin/gearmq-agent") {
            gearmq_testkit::signal(pid, "KILL");
            wait_until(
                "the earlier run's agent to die",
                Duration::from_secs(10),
                || !Path::new(&format!("/proc/{pid}/exe")).exists(),
            );
        }
    }
    let known: Vec<&str> = PACKAGES.into_iter().filter(|p| dpkg_knows(p)).collect();
    if !known.is_empty() {
        let mut args = vec!["--purge"];
        args.extend(known);
        dpkg(&args);
    }
    for d in OWN_DIRS {
        assert!(
            !Path::new(d).exists(),
            "{d} is left after purging an earlier run"
        );
    }
    std::fs::remove_file(STATE).unwrap();
}

/// Whether dpkg has any record of `package` (installed, half-installed, config-files).
fn dpkg_knows(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Status}", package])
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && !matches!(
                    String::from_utf8_lossy(&o.stdout).trim(),
                    "" | "not-installed"
                )
        })
}

/// Every path the installed packages hold (dpkg -L).
fn installed_files() -> Vec<String> {
    let mut args = vec!["-L"];
    args.extend(PACKAGES);
    run("dpkg-query", &args)
        .lines()
        .map(str::to_string)
        .filter(|l| l.starts_with('/'))
        .collect()
}

fn user_exists(name: &str) -> bool {
    Command::new("getent")
        .args(["passwd", name])
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    run("id", &["-u"]).trim() == "0"
}

fn arch() -> String {
    run("dpkg", &["--print-architecture"]).trim().to_string()
}

/// A regular file owned by root with exactly `mode`.
fn assert_file(p: &str, mode: u32) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert!(m.is_file(), "{p} is not a regular file");
    assert_eq!(m.permissions().mode() & 0o7777, mode, "mode of {p}");
    assert_eq!((m.uid(), m.gid()), (0, 0), "owner of {p}");
}

/// Runs `dpkg args` like [`run`], waiting up to a minute for dpkg's lock (a dpkg that
/// an earlier, killed run started may still be finishing).
fn dpkg(args: &[&str]) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new("dpkg").args(args).output().expect("dpkg");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            return text;
        }
        let locked = text.contains("was locked by another process");
        assert!(
            locked && std::time::Instant::now() < deadline,
            "dpkg {} failed: {text}",
            args.join(" ")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Runs `program args`; its stdout and stderr; panics unless it exits 0.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{program} {} failed: {text}",
        args.join(" ")
    );
    text
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}
