//! Logs where operators look: with `[systemd] output = "journal"`, gearmq's units log
//! to the journal and `logs` (and `--follow`) read it there, for gearmq's units and
//! for allowlisted existing ones. A real journald runs beside the test's
//! `systemd --user`, in its mount namespace, writing to the fixture's directory.

use crate::data;
use gearmq_schemas::actions::{
    ALL_ACTIONS, CancelArgs, InstallArgs, LogsArgs, LogsResult, UnitArgs, UnitChangeResult,
};
use gearmq_schemas::units::UnitSpec;
use gearmq_schemas::{Reply, Status, codec};
use gearmq_testkit::AgentWorld;
use std::time::Duration;

/// Says hello three times, then one more line per SIGHUP.
const TALKER: &str = r#"trap 'echo "hup line"' HUP
echo "hello 1"; echo "hello 2"; echo "hello 3" >&2
while :; do sleep 1 & wait; done
"#;

async fn logs(w: &mut AgentWorld, unit: &str) -> LogsResult {
    data(
        &w.call(
            "logs",
            &LogsArgs {
                unit: unit.into(),
                lines: 50,
                follow: false,
            },
        )
        .await,
    )
}

/// Polls `logs` until `line` is among the lines (journald writes shortly after).
async fn wait_for_line(w: &mut AgentWorld, unit: &str, line: &str) -> LogsResult {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let l = logs(w, unit).await;
        if l.lines.iter().any(|x| x == line) {
            return l;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{line:?} not in the journal for {unit}: {:?}",
            l.lines
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_log_to_the_journal_and_logs_and_follow_read_it_there() {
    let mut w = AgentWorld::builder()
        .systemd_with_journal("")
        .ops_actions(ALL_ACTIONS)
        .config_tail("[[existing]]\nunits = [\"other.service\"]\nactions = [\"logs\"]\n")
        .start()
        .await;
    let talker = w.systemd().script("talk.sh", TALKER);
    let r = w
        .call(
            "install",
            &InstallArgs {
                spec: UnitSpec::new("talk", talker.to_string_lossy()),
                start: true,
                enable: false,
                artifact: None,
            },
        )
        .await;
    let _: UnitChangeResult = data(&r);
    let unit_file = w.systemd().unit_dir().join("gearmq-talk.service");
    let text = std::fs::read_to_string(&unit_file).unwrap();
    assert!(text.contains("\nStandardOutput=journal\n"), "{text}");
    assert!(!text.contains("append:"), "{text}");

    // stdout and stderr both, in order, from the journal.
    let l = wait_for_line(&mut w, "talk", "hello 3").await;
    assert_eq!(l.lines, ["hello 1", "hello 2", "hello 3"]);
    // Nothing went to an output file under the state dir.
    assert!(!w.files.path("state/logs/talk.log").exists());
    assert!(
        w.files.path("state/audit.log").exists(),
        "the state dir is where we look"
    );

    // Follow: the first reply has the last lines; a reload makes one more, which
    // arrives in a partial reply.
    let id = w
        .ops
        .send_to(
            &w.host.name,
            "logs",
            codec::encode(&LogsArgs {
                unit: "talk".into(),
                lines: 2,
                follow: true,
            }),
            Duration::from_secs(60),
        )
        .await;
    let first: Reply = w
        .ops
        .verified_reply(&w.pki, id, Duration::from_secs(10))
        .await;
    assert_eq!((first.seq, first.is_final), (0, false));
    let initial: LogsResult = data(&first);
    assert_eq!(initial.lines, ["hello 2", "hello 3"]);
    let r = w
        .call(
            "reload",
            &UnitArgs {
                unit: "talk".into(),
            },
        )
        .await;
    assert_eq!(r.status, Status::Ok, "{:?}", r.error);
    let next = w
        .ops
        .verified_reply(&w.pki, id, Duration::from_secs(10))
        .await;
    assert_eq!((next.seq, next.is_final), (1, false));
    let part: LogsResult = data(&next);
    assert_eq!(part.lines, ["hup line"]);
    let c = w.call("cancel", &CancelArgs { request_id: id }).await;
    assert_eq!(c.status, Status::Ok, "{:?}", c.error);
    let last = w
        .ops
        .verified_reply(&w.pki, id, Duration::from_secs(10))
        .await;
    assert!(last.is_final);

    // An allowlisted existing unit's output, from the journal too.
    w.systemd().start_foreign_unit(
        "other.service",
        "[Service]\nExecStart=/bin/sh -c 'echo foreign hello; exec sleep 600'\n",
    );
    wait_for_line(&mut w, "other.service", "foreign hello").await;
}
