//! The host's own units, by allowlist: a unit made on the test's `systemd --user`
//! without gearmq, opened by `[[existing]]` to some actions only. gearmq acts on it as
//! allowed, refuses everything else with a signed error naming the allowlist, and never
//! writes or deletes anything of it.

use crate::data;
use gearmq_schemas::actions::{
    ALL_ACTIONS, Change, InstallArgs, StatusArgs, UnitArgs, UnitChangeResult, UnitsResult,
};
use gearmq_schemas::units::UnitSpec;
use gearmq_schemas::{Reply, Status};
use gearmq_testkit::AgentWorld;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Counts SIGHUPs in `$0.hups`, and runs until stopped.
const HUP_COUNTER: &str = r#"trap 'echo hup >> "$0.hups"' HUP
echo ready
while :; do sleep 1 & wait; done
"#;

fn hups(program: &Path) -> usize {
    gearmq_testkit::line_count(Path::new(&format!("{}.hups", program.display())))
}

async fn wait_hups(program: &Path, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while hups(program) < n {
        assert!(tokio::time::Instant::now() < deadline, "no SIGHUP seen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn foreign_unit(program: &Path) -> String {
    format!(
        "[Service]\nExecStart={}\nExecReload=/bin/kill -HUP $MAINPID\n",
        program.display()
    )
}

async fn unit(w: &mut AgentWorld, action: &str, unit: &str) -> Reply {
    w.call(action, &UnitArgs { unit: unit.into() }).await
}

fn file_stamp(p: &Path) -> (Vec<u8>, SystemTime) {
    (
        std::fs::read(p).expect("unit file"),
        std::fs::metadata(p).unwrap().modified().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlisted_existing_unit_gets_only_the_listed_actions_and_is_never_written() {
    let mut w = AgentWorld::builder()
        .systemd("")
        .ops_actions(ALL_ACTIONS)
        .config_tail(
            "[[existing]]\nunits = [\"other.service\"]\nactions = [\"status\", \"restart\", \"reload\", \"logs\"]\n\n\
             [[existing]]\nunits = [\"pat@*.service\"]\nactions = [\"status\"]\n",
        )
        .start()
        .await;
    let sd = w.systemd();
    let prog = sd.script("other.sh", HUP_COUNTER);
    let other = sd.start_foreign_unit("other.service", &foreign_unit(&prog));
    let stranger = sd.start_foreign_unit("stranger.service", &foreign_unit(&prog));
    let before = file_stamp(&other);
    let stranger_before = file_stamp(&stranger);
    let pid = w.systemd().main_pid("other.service");
    assert!(pid > 0);

    // status and restart as listed: a new main process.
    let st: UnitsResult = data(
        &w.call(
            "status",
            &StatusArgs {
                unit: Some("other.service".into()),
            },
        )
        .await,
    );
    assert_eq!(st.units[0].unit, "other.service");
    assert_eq!(st.units[0].active_state, "active");
    assert_eq!(st.units[0].main_pid, pid);
    let r: UnitChangeResult = data(&unit(&mut w, "restart", "other.service").await);
    assert_eq!(r.change, Change::Restarted);
    let new_pid = r.state.unwrap().main_pid;
    assert!(new_pid > 0 && new_pid != pid, "{pid} -> {new_pid}");
    assert_eq!(w.systemd().main_pid("other.service"), new_pid);

    // reload as listed: SIGHUP through its own ExecReload, same main process.
    let r: UnitChangeResult = data(&unit(&mut w, "reload", "other.service").await);
    assert_eq!(r.change, Change::Reloaded);
    assert_eq!(r.state.unwrap().main_pid, new_pid);
    wait_hups(&prog, 1).await;

    // stop is not listed: refused, naming what the allowlist allows; still running.
    let r = unit(&mut w, "stop", "other.service").await;
    assert_eq!(r.status, Status::Unauthorized, "{:?}", r.error);
    let e = r.error.unwrap();
    assert!(
        e.contains("[[existing]]") && e.contains("allows only status, restart, reload, logs"),
        "{e}"
    );
    assert_eq!(w.systemd().main_pid("other.service"), new_pid);

    // logs is allowed, but this agent reads only its own units' output files.
    let r = w
        .call(
            "logs",
            &gearmq_schemas::actions::LogsArgs {
                unit: "other.service".into(),
                lines: 10,
                follow: false,
            },
        )
        .await;
    assert_eq!(r.status, Status::Conflict, "{:?}", r.error);
    assert!(r.error.unwrap().contains("journalctl -u other.service"));

    // An unlisted unit: refused for everything, even status.
    for action in ["status", "restart", "stop"] {
        let r = match action {
            "status" => {
                w.call(
                    "status",
                    &StatusArgs {
                        unit: Some("stranger.service".into()),
                    },
                )
                .await
            }
            a => unit(&mut w, a, "stranger.service").await,
        };
        assert_eq!(r.status, Status::Unauthorized, "{action}: {:?}", r.error);
        assert!(
            r.error.unwrap().contains("names no pattern matching it"),
            "{action}"
        );
    }
    // A pattern: status of an instance that is not loaded is "not found".
    let r = w
        .call(
            "status",
            &StatusArgs {
                unit: Some("pat@one.service".into()),
            },
        )
        .await;
    assert_eq!(r.status, Status::NotFound, "{:?}", r.error);

    // Never installed over, enabled, disabled or deleted, whatever the allowlist says.
    for action in ["delete", "enable", "disable"] {
        let r = unit(&mut w, action, "other.service").await;
        assert_eq!(r.status, Status::Unauthorized, "{action}: {:?}", r.error);
        assert!(r.error.unwrap().contains("never installs"), "{action}");
    }
    let r = w
        .call(
            "install",
            &InstallArgs {
                spec: UnitSpec::new("other.service", "/bin/sleep"),
                start: true,
                enable: true,
                artifact: None,
            },
        )
        .await;
    assert_eq!(r.status, Status::Unauthorized, "{:?}", r.error);

    // Nothing of them was written or deleted; gearmq's list does not show them.
    assert_eq!(file_stamp(&other), before);
    assert_eq!(file_stamp(&stranger), stranger_before);
    let list: UnitsResult = data(&w.call("list", &gearmq_schemas::actions::ListArgs {}).await);
    assert!(list.units.is_empty(), "{:?}", list.units);
    let names: Vec<String> = std::fs::read_dir(w.systemd().unit_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with("gearmq-")), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gearmq_units_reload_with_sighup_and_a_stopped_unit_cannot_reload() {
    let mut w = AgentWorld::builder()
        .systemd("")
        .ops_actions(ALL_ACTIONS)
        .start()
        .await;
    let prog = w.systemd().script("hup.sh", HUP_COUNTER);
    let r = w
        .call(
            "install",
            &InstallArgs {
                spec: UnitSpec::new("hup", prog.to_string_lossy()),
                start: true,
                enable: false,
                artifact: None,
            },
        )
        .await;
    let r: UnitChangeResult = data(&r);
    let pid = r.state.unwrap().main_pid;
    let r: UnitChangeResult = data(&unit(&mut w, "reload", "hup").await);
    assert_eq!(r.change, Change::Reloaded);
    assert_eq!(
        r.state.unwrap().main_pid,
        pid,
        "reload keeps the main process"
    );
    wait_hups(&prog, 1).await;

    data::<UnitChangeResult>(&unit(&mut w, "stop", "hup").await);
    let r = unit(&mut w, "reload", "hup").await;
    assert_eq!(r.status, Status::Conflict, "{:?}", r.error);
    assert!(r.error.unwrap().contains("only a running unit can reload"));
}
