//! The unit watcher against a real `systemd --user` (gearmq-testkit's, one per test):
//! units are written, started, stopped and killed as an administrator would (busctl),
//! and each test asserts what the watcher sends on its channel.

use gearmq_agent::config::BusKind;
use gearmq_agent::unit_watch::{self, UnitChangeSeen, UnitFilter, WatchSettings};
use gearmq_schemas::event::UnitChange;
use gearmq_testkit::UserSystemd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long a change may take to arrive before the test fails.
const PRESENT: Duration = Duration::from_secs(5);
/// How long the watcher must stay silent for an absence to count.
const ABSENT: Duration = Duration::from_millis(1500);
/// What the task asks: a change reported within 2 s of its cause.
const PROMPT: Duration = Duration::from_secs(2);

/// A user manager and a watcher on it, with gearmq's filter (`gearmq-web.service` is
/// `web`; anything else is ignored).
struct Watch {
    systemd: UserSystemd,
    settings: WatchSettings,
    rx: mpsc::Receiver<UnitChangeSeen>,
    dropped: Arc<AtomicU64>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn gearmq_filter() -> UnitFilter {
    Arc::new(|unit: &str| {
        unit.strip_prefix("gearmq-")
            .and_then(|u| u.strip_suffix(".service"))
            .map(str::to_string)
    })
}

/// Blocking work (busctl, the manager's start) off the runtime's reactor.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

impl Watch {
    async fn start(queue: usize) -> Watch {
        let systemd = blocking(UserSystemd::start);
        Watch::on(systemd, queue).await
    }

    /// Starts a watcher on `systemd` and waits until it watches.
    async fn on(systemd: UserSystemd, queue: usize) -> Watch {
        // RUST_LOG=gearmq_agent::unit_watch=trace shows each signal the watcher reads.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let settings = WatchSettings::new(
            BusKind::User,
            Some(systemd.bus_address()),
            vec!["gearmq-*.service".into()],
        );
        let (tx, rx) = mpsc::channel(queue);
        let dropped = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let task = tokio::spawn(unit_watch::run(
            settings.clone(),
            gearmq_filter(),
            tx,
            dropped.clone(),
            stop.clone(),
        ));
        tokio::time::timeout(Duration::from_secs(10), settings.status.wait_watching())
            .await
            .expect("the watcher watches within 10 s");
        Watch {
            systemd,
            settings,
            rx,
            dropped,
            stop,
            task,
        }
    }

    /// The next change, within [`PRESENT`].
    async fn next(&mut self) -> UnitChangeSeen {
        match tokio::time::timeout(PRESENT, self.rx.recv()).await {
            Ok(Some(c)) => c,
            Ok(None) => panic!("the watcher stopped"),
            Err(_) => panic!("no unit change within {PRESENT:?}"),
        }
    }

    /// The next change, asserting it came within [`PROMPT`] of `cause`.
    async fn next_after(&mut self, cause: Instant) -> UnitChangeSeen {
        let c = self.next().await;
        let took = cause.elapsed();
        assert!(took <= PROMPT, "{c:?} came {took:?} after its cause");
        c
    }

    /// Asserts nothing is sent for [`ABSENT`].
    async fn nothing(&mut self) {
        if let Ok(c) = tokio::time::timeout(ABSENT, self.rx.recv()).await {
            panic!("expected no unit change, got {c:?}");
        }
    }

    fn manager(&self, method: &str, signature: &str, args: &[&str]) -> String {
        blocking(|| self.systemd.busctl_manager(method, signature, args))
    }

    /// Writes `name`, reloads and starts it; the instant just before the start.
    fn install_and_start(&self, name: &str, text: &str) -> Instant {
        std::fs::write(self.systemd.unit_dir().join(name), text).expect("write unit");
        self.manager("Reload", "", &[]);
        self.start_unit(name)
    }

    fn start_unit(&self, name: &str) -> Instant {
        let at = Instant::now();
        self.manager("StartUnit", "ss", &[name, "replace"]);
        at
    }

    fn stop_unit(&self, name: &str) -> Instant {
        let at = Instant::now();
        self.manager("StopUnit", "ss", &[name, "replace"]);
        at
    }

    /// A property of `unit` as busctl prints it (`s "active"`, `u 3`).
    fn property(&self, unit: &str, iface: &str, name: &str) -> String {
        let out = self.manager("LoadUnit", "s", &[unit]);
        let path = out.trim().trim_start_matches("o ").trim_matches('"');
        let out = blocking(|| {
            Command::new("busctl")
                .args([
                    "--address",
                    &self.systemd.bus_address(),
                    "get-property",
                    "org.freedesktop.systemd1",
                    path,
                    iface,
                    name,
                ])
                .output()
                .expect("busctl")
        });
        assert!(out.status.success(), "get-property {unit} {name}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Waits until `unit` is active with a main process; its PID.
    async fn running(&self, unit: &str) -> u32 {
        let deadline = Instant::now() + PRESENT;
        loop {
            let state = self.property(unit, "org.freedesktop.systemd1.Unit", "ActiveState");
            if state == "s \"active\"" {
                let pid = blocking(|| self.systemd.main_pid(unit));
                if pid != 0 {
                    return pid;
                }
            }
            assert!(Instant::now() < deadline, "{unit} is not running: {state}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `unit` has ActiveState `state`.
    async fn wait_state(&self, unit: &str, state: &str) {
        let want = format!("s \"{state}\"");
        let deadline = Instant::now() + PRESENT;
        loop {
            let now = self.property(unit, "org.freedesktop.systemd1.Unit", "ActiveState");
            if now == want {
                return;
            }
            assert!(Instant::now() < deadline, "{unit} is {now}, not {state}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the watcher (asserting it stops); the manager, still running.
    async fn finish(self) -> UserSystemd {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the watcher stops when cancelled")
            .expect("the watcher does not panic");
        self.systemd
    }
}

fn kill(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_whose_program_fails_is_reported_failed_with_its_result() {
    let mut w = Watch::start(64).await;
    let cause = w.install_and_start(
        "gearmq-crash.service",
        "[Service]\nType=exec\nExecStart=/bin/false\n",
    );
    let c = w.next_after(cause).await;
    assert_eq!(
        c,
        UnitChangeSeen {
            unit: "crash".into(),
            change: UnitChange::Failed,
            active_state: "failed".into(),
            sub_state: "failed".into(),
            result: "exit-code".into(),
            restarts: 0,
        }
    );
    // Failed once: nothing more for it.
    w.nothing().await;
    assert_eq!(w.dropped.load(Ordering::Relaxed), 0);
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_systemd_restarts_is_reported_restarted_with_a_rising_count() {
    let mut w = Watch::start(64).await;
    let cause = w.install_and_start(
        "gearmq-flap.service",
        "[Unit]\nStartLimitIntervalSec=0\nStartLimitBurst=1000\n\
         [Service]\nExecStart=/bin/sh -c 'exit 3'\nRestart=on-failure\nRestartSec=100ms\n",
    );
    let mut last = cause;
    for want in 1..=3u32 {
        let c = w.next_after(last).await;
        last = Instant::now();
        assert_eq!(
            (c.unit.as_str(), c.change, c.restarts, c.result.as_str()),
            ("flap", UnitChange::Restarted, want, "exit-code"),
            "{c:?}"
        );
        assert_eq!(c.active_state, "activating", "{c:?}");
    }
    w.stop_unit("gearmq-flap.service");
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_whose_program_ends_cleanly_is_reported_exited() {
    let mut w = Watch::start(64).await;
    let cause = w.install_and_start("gearmq-done.service", "[Service]\nExecStart=/bin/true\n");
    let c = w.next_after(cause).await;
    assert_eq!(
        c,
        UnitChangeSeen {
            unit: "done".into(),
            change: UnitChange::Exited,
            active_state: "inactive".into(),
            sub_state: "dead".into(),
            result: "success".into(),
            restarts: 0,
        }
    );
    w.nothing().await;
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_the_filter_ignores_is_not_reported() {
    let mut w = Watch::start(64).await;
    w.install_and_start("other.service", "[Service]\nExecStart=/bin/false\n");
    w.wait_state("other.service", "failed").await;
    w.nothing().await;
    // The watcher was watching: a gearmq unit's failure, after, is the first change.
    let cause = w.install_and_start("gearmq-crash.service", "[Service]\nExecStart=/bin/false\n");
    let c = w.next_after(cause).await;
    assert_eq!((c.unit.as_str(), c.change), ("crash", UnitChange::Failed));
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_stopped_while_quiet_is_not_reported_exited() {
    let mut w = Watch::start(64).await;
    let unit = "gearmq-quiet.service";
    w.install_and_start(unit, "[Service]\nExecStart=/bin/sleep 300\n");
    w.running(unit).await;
    // Starting is no change to report.
    w.nothing().await;

    // Stopped by someone else: an exit.
    let cause = w.stop_unit(unit);
    let c = w.next_after(cause).await;
    assert_eq!(
        (c.unit.as_str(), c.change, c.result.as_str()),
        ("quiet", UnitChange::Exited, "success"),
        "{c:?}"
    );

    // Stopped while the agent holds it quiet: nothing, even read after the guard is gone.
    w.start_unit(unit);
    w.running(unit).await;
    let guard = w.settings.quiet.quiet(unit);
    w.stop_unit(unit);
    w.wait_state(unit, "inactive").await;
    drop(guard);
    w.nothing().await;

    // Quiet ended: a crash afterwards is reported, and is the first change since.
    w.start_unit(unit);
    let pid = w.running(unit).await;
    let cause = Instant::now();
    kill(pid, "KILL");
    let c = w.next_after(cause).await;
    assert_eq!(
        (c.unit.as_str(), c.change, c.result.as_str()),
        ("quiet", UnitChange::Failed, "signal"),
        "{c:?}"
    );
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_from_before_the_watcher_started_are_not_reported() {
    let systemd = blocking(UserSystemd::start);
    // Fails three times, then runs: NRestarts ends at 3 before anyone watches.
    let count = systemd.scratch("count").join("n");
    let text = format!(
        "[Unit]\nStartLimitIntervalSec=0\n[Service]\nRestart=on-failure\nRestartSec=100ms\n\
         ExecStart=/bin/sh -c 'n=$(cat {0} 2>/dev/null || echo 0); echo $((n+1)) > {0}; \
         [ $n -ge 3 ] && exec sleep 300; exit 1'\n",
        count.display()
    );
    blocking(|| systemd.start_foreign_unit("gearmq-old.service", &text));
    let mut w = Watch::on(systemd, 64).await;
    w.running("gearmq-old.service").await;
    let deadline = Instant::now() + PRESENT;
    while w.property(
        "gearmq-old.service",
        "org.freedesktop.systemd1.Service",
        "NRestarts",
    ) != "u 3"
    {
        assert!(
            Instant::now() < deadline,
            "gearmq-old.service never reached 3 restarts"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A new watcher: NRestarts 3 is its baseline, not three restarts.
    let systemd = w.finish().await;
    w = Watch::on(systemd, 64).await;
    // A reload resends units' properties (NRestarts 3 again); a stop changes them.
    w.manager("Reload", "", &[]);
    w.nothing().await;
    let cause = w.stop_unit("gearmq-old.service");
    let c = w.next_after(cause).await;
    assert_eq!(
        (c.unit.as_str(), c.change),
        ("old", UnitChange::Exited),
        "{c:?}"
    );
    w.nothing().await;
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_channel_drops_changes_and_counts_them() {
    let mut w = Watch::start(1).await;
    w.install_and_start(
        "gearmq-flap.service",
        "[Unit]\nStartLimitIntervalSec=0\n\
         [Service]\nExecStart=/bin/sh -c 'exit 3'\nRestart=on-failure\nRestartSec=100ms\n",
    );
    let deadline = Instant::now() + PRESENT;
    while w.dropped.load(Ordering::Relaxed) < 2 {
        assert!(Instant::now() < deadline, "nothing was dropped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.stop_unit("gearmq-flap.service");
    // The one kept is the first.
    let c = w.next().await;
    assert_eq!((c.change, c.restarts), (UnitChange::Restarted, 1), "{c:?}");
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_connects_again_after_the_manager_restarts() {
    let mut w = Watch::start(64).await;
    assert_eq!(w.settings.status.sessions(), 1);
    blocking(|| w.systemd.reboot());
    let deadline = Instant::now() + Duration::from_secs(20);
    while w.settings.status.sessions() < 2 || !w.settings.status.is_watching() {
        assert!(
            Instant::now() < deadline,
            "the watcher did not connect again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cause = w.install_and_start("gearmq-crash.service", "[Service]\nExecStart=/bin/false\n");
    let c = w.next_after(cause).await;
    assert_eq!((c.unit.as_str(), c.change), ("crash", UnitChange::Failed));
    w.finish().await;
}
