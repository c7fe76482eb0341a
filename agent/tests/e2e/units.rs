//! Unit actions end to end: the real agent binary, the real RabbitMQ, and a real
//! `systemd --user` per test (private mount namespace, own HOME and runtime dir).

use crate::data;
use gearmq_schemas::actions::{
    ALL_ACTIONS, CancelArgs, CancelResult, Change, FactsArgs, FactsResult, InstallArgs, ListArgs,
    LogsArgs, LogsResult, PingArgs, READ_ONLY_ACTIONS, StatusArgs, UnitArgs, UnitChangeResult,
    UnitState, UnitsResult,
};
use gearmq_schemas::units::UnitSpec;
use gearmq_schemas::{Reply, Role, Status, codec};
use gearmq_testkit::raw::QUIET;
use gearmq_testkit::{AgentWorld, RawCaller, line_count};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use uuid::Uuid;

/// A test program: counts its starts, echoes its arguments one per line, then waits.
const PROGRAM: &str = r#"echo start >> "$0.starts"
for a in "$@"; do printf 'arg[%s]\n' "$a"; done
echo ready
exec sleep 600
"#;

fn error_of(r: &Reply) -> &str {
    r.error.as_deref().unwrap_or("")
}

/// One agent `web1` managing units in its own user manager, `ops` allowed every action.
async fn unit_world(systemd: &str, env: &[(&str, &str)]) -> AgentWorld {
    AgentWorld::builder()
        .systemd(systemd)
        .ops_actions(ALL_ACTIONS)
        .env(env)
        .start()
        .await
}

/// `action` with `args` from `caller` to the world's host, and its final reply.
async fn call_as<A: Serialize>(
    w: &AgentWorld,
    caller: &mut RawCaller,
    action: &str,
    args: &A,
) -> Reply {
    caller
        .call_verified(&w.pki, &w.host.name, action, codec::encode(args))
        .await
}

/// Sends `action` with `args` from `ops` without waiting; returns the request's id.
async fn send<A: Serialize>(w: &AgentWorld, action: &str, args: &A) -> Uuid {
    w.ops
        .send_to(
            &w.host.name,
            action,
            codec::encode(args),
            Duration::from_secs(60),
        )
        .await
}

/// The next reply to `ops`' request `id` (verified).
async fn reply_to(w: &mut AgentWorld, id: Uuid, timeout: Duration) -> Reply {
    w.ops.verified_reply(&w.pki, id, timeout).await
}

/// How many times `program` was started (it appends to `<program>.starts`).
fn starts(program: &Path) -> usize {
    line_count(Path::new(&format!("{}.starts", program.display())))
}

/// Unit actions from `ops`, as the tests below use them.
trait Units {
    fn program(&self) -> PathBuf;
    fn unit_file(&self, unit: &str) -> PathBuf;
    fn unit_files(&self) -> Vec<String>;
    async fn install(&mut self, spec: &UnitSpec, start: bool) -> Reply;
    async fn unit(&mut self, action: &str, unit: &str) -> Reply;
    async fn status(&mut self, unit: &str) -> UnitState;
    async fn logs(&mut self, unit: &str, lines: u32) -> LogsResult;
    async fn wait_for_log_line(&mut self, unit: &str, pred: impl Fn(&str) -> bool) -> LogsResult;
}

impl Units for AgentWorld {
    fn program(&self) -> PathBuf {
        self.systemd().script("prog.sh", PROGRAM)
    }

    fn unit_file(&self, unit: &str) -> PathBuf {
        self.systemd()
            .unit_dir()
            .join(format!("gearmq-{unit}.service"))
    }

    fn unit_files(&self) -> Vec<String> {
        std::fs::read_dir(self.systemd().unit_dir())
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn install(&mut self, spec: &UnitSpec, start: bool) -> Reply {
        self.call(
            "install",
            &InstallArgs {
                spec: spec.clone(),
                start,
                enable: true,
                artifact: None,
            },
        )
        .await
    }

    async fn unit(&mut self, action: &str, unit: &str) -> Reply {
        self.call(action, &UnitArgs { unit: unit.into() }).await
    }

    async fn status(&mut self, unit: &str) -> UnitState {
        let r = self
            .call(
                "status",
                &StatusArgs {
                    unit: Some(unit.into()),
                },
            )
            .await;
        let mut units: UnitsResult = data(&r);
        assert_eq!(units.units.len(), 1);
        units.units.remove(0)
    }

    async fn logs(&mut self, unit: &str, lines: u32) -> LogsResult {
        let r = self
            .call(
                "logs",
                &LogsArgs {
                    unit: unit.into(),
                    lines,
                    follow: false,
                },
            )
            .await;
        data(&r)
    }

    /// Polls `logs` until a line satisfies `pred` (output reaches the file shortly
    /// after the program writes it).
    async fn wait_for_log_line(&mut self, unit: &str, pred: impl Fn(&str) -> bool) -> LogsResult {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let l = self.logs(unit, 1000).await;
            if l.lines.iter().any(|x| pred(x)) {
                return l;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "log line not seen; log: {:?}",
                l.lines
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn spec(unit: &str, exec: &Path) -> UnitSpec {
    UnitSpec::new(unit, exec.to_string_lossy())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_start_status_logs_restart_stop_delete_lifecycle() {
    let mut w = unit_world("", &[]).await;
    let prog = w.program();
    let mut s = spec("web", &prog);
    s.args = vec!["hello".into()];
    s.memory_max = Some(64 * 1024 * 1024);

    let r: UnitChangeResult = data(&w.install(&s, false).await);
    assert_eq!(r.change, Change::Created);
    assert_eq!(r.then, None);
    assert!(w.unit_file("web").exists());
    assert_eq!(starts(&prog), 0, "install without start does not start");

    let r: UnitChangeResult = data(&w.unit("start", "web").await);
    assert_eq!(r.change, Change::Started);
    let st = r.state.unwrap();
    assert_eq!(
        (st.active_state.as_str(), st.sub_state.as_str()),
        ("active", "running")
    );

    let st = w.status("web").await;
    assert_eq!(st.load_state, "loaded");
    assert_eq!(st.active_state, "active");
    assert_eq!(st.sub_state, "running");
    assert!(st.main_pid > 0);
    assert!(st.since_ms.is_some());
    // A user manager on cgroup v1 does not enforce MemoryMax; the agent says so.
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if !v2 {
        assert_eq!(st.limits_enforced, Some(false));
    }
    let first_pid = st.main_pid;

    let logs = w.wait_for_log_line("web", |l| l == "ready").await;
    assert!(
        logs.lines.contains(&"arg[hello]".to_string()),
        "{:?}",
        logs.lines
    );
    let two = w.logs("web", 2).await;
    assert_eq!(two.lines, vec!["arg[hello]", "ready"]);

    let r: UnitChangeResult = data(&w.unit("start", "web").await);
    assert_eq!(r.change, Change::AlreadyRunning);
    assert_eq!(starts(&prog), 1);

    let r: UnitChangeResult = data(&w.unit("restart", "web").await);
    assert_eq!(r.change, Change::Restarted);
    let st = r.state.unwrap();
    assert_eq!(st.active_state, "active");
    assert_ne!(st.main_pid, first_pid, "restart runs a new main process");
    assert_eq!(starts(&prog), 2);

    let facts: FactsResult = data(&w.call("facts", &FactsArgs {}).await);
    assert_eq!((facts.managed_units, facts.active_units), (1, 1));
    assert_eq!(facts.agent_version, env!("CARGO_PKG_VERSION"));
    if !v2 {
        assert!(!facts.limits_enforced);
    }

    let r: UnitChangeResult = data(&w.unit("stop", "web").await);
    assert_eq!(r.change, Change::Stopped);
    assert_eq!(r.state.unwrap().active_state, "inactive");
    let r: UnitChangeResult = data(&w.unit("stop", "web").await);
    assert_eq!(r.change, Change::AlreadyStopped);
    assert_eq!(w.status("web").await.active_state, "inactive");

    let r: UnitChangeResult = data(&w.unit("delete", "web").await);
    assert_eq!(r.change, Change::Deleted);
    assert_eq!(r.state, None);
    let list: UnitsResult = data(&w.call("list", &ListArgs {}).await);
    assert!(list.units.is_empty(), "{:?}", list.units);
    assert!(!w.unit_file("web").exists(), "unit file removed from disk");
    assert!(w.unit_files().is_empty(), "{:?}", w.unit_files());
    let r: UnitChangeResult = data(&w.unit("delete", "web").await);
    assert_eq!(r.change, Change::Absent);
    let r = w
        .call(
            "status",
            &StatusArgs {
                unit: Some("web".into()),
            },
        )
        .await;
    assert_eq!(r.status, Status::NotFound, "{:?}", r.error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_install_is_unchanged_and_changed_args_are_updated() {
    let mut w = unit_world("", &[]).await;
    let prog = w.program();
    let mut s = spec("app", &prog);
    s.args = vec!["one".into()];
    let r: UnitChangeResult = data(&w.install(&s, true).await);
    assert_eq!((r.change, r.then), (Change::Created, Some(Change::Started)));
    let r: UnitChangeResult = data(&w.install(&s, true).await);
    assert_eq!(
        (r.change, r.then),
        (Change::Unchanged, Some(Change::AlreadyRunning))
    );
    assert_eq!(starts(&prog), 1);

    s.args = vec!["two".into()];
    // Updated but not asked to start: the running program is left as it is.
    let r: UnitChangeResult = data(&w.install(&s, false).await);
    assert_eq!((r.change, r.then), (Change::Updated, None));
    assert_eq!(starts(&prog), 1);
    assert!(
        std::fs::read_to_string(w.unit_file("app"))
            .unwrap()
            .contains("\"two\"")
    );
    s.args = vec!["three".into()];
    let r: UnitChangeResult = data(&w.install(&s, true).await);
    assert_eq!(
        (r.change, r.then),
        (Change::Updated, Some(Change::Restarted))
    );
    // The restart job is done once the program runs; its start is counted once its
    // output shows.
    w.wait_for_log_line("app", |l| l == "arg[three]").await;
    assert_eq!(starts(&prog), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_data_naming_the_field_and_writes_nothing() {
    let mut w = unit_world("", &[]).await;
    let prog = w.program();
    let mut newline = spec("web", &prog);
    newline.args = vec!["ok".into(), "two\nlines".into()];
    let cases = [
        (spec("../etc/x", &prog), "invalid unit"),
        (spec("a/b", &prog), "invalid unit"),
        (UnitSpec::new("web", "bin/sh"), "invalid exec"),
        (newline, "invalid args[1]"),
    ];
    for (s, field) in cases {
        let r = w.install(&s, true).await;
        assert_eq!(r.status, Status::InvalidData, "{s:?}: {:?}", r.error);
        assert!(error_of(&r).contains(field), "{field}: {}", error_of(&r));
    }
    assert!(w.unit_files().is_empty(), "{:?}", w.unit_files());
    assert!(!w.systemd().config_home().join("systemd/etc").exists());
    assert_eq!(starts(&prog), 0);
    // Unit names in the other actions too.
    for action in ["start", "stop", "restart", "delete"] {
        let r = w.unit(action, "../etc/x").await;
        assert_eq!(r.status, Status::InvalidData, "{action}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percent_dollar_quotes_and_backslashes_reach_the_program_literally() {
    let mut w = unit_world("", &[]).await;
    let prog = w.program();
    let args: Vec<String> = [
        "100%",
        "%n",
        "$HOME",
        "${X}",
        "say \"hi\"",
        "it's",
        "back\\slash",
        "ends\\",
        ";",
        "",
        "a  b",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut s = spec("echo", &prog);
    s.args = args.clone();
    s.env.insert("X".into(), "not expanded".into());
    let r: UnitChangeResult = data(&w.install(&s, true).await);
    assert_eq!(r.then, Some(Change::Started));
    let logs = w.wait_for_log_line("echo", |l| l == "ready").await;
    let got: Vec<String> = logs
        .lines
        .iter()
        .filter_map(|l| l.strip_prefix("arg[").and_then(|l| l.strip_suffix(']')))
        .map(str::to_string)
        .collect();
    assert_eq!(got, args);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_operator_cannot_install_or_stop_but_can_observe() {
    let mut w = unit_world("", &[]).await;
    let prog = w.program();
    let r: UnitChangeResult = data(&w.install(&spec("web", &prog), true).await);
    assert_eq!(r.then, Some(Change::Started));

    let mut reader = w.caller("reader", Role::Operator, READ_ONLY_ACTIONS).await;
    let r = call_as(
        &w,
        &mut reader,
        "install",
        &InstallArgs {
            spec: spec("evil", &prog),
            start: true,
            enable: true,
            artifact: None,
        },
    )
    .await;
    assert_eq!(r.status, Status::Unauthorized, "{:?}", r.error);
    assert!(!w.unit_file("evil").exists());
    let r = call_as(&w, &mut reader, "stop", &UnitArgs { unit: "web".into() }).await;
    assert_eq!(r.status, Status::Unauthorized, "{:?}", r.error);
    assert!(
        error_of(&r).contains("not allowed action stop"),
        "{}",
        error_of(&r)
    );
    assert_eq!(
        w.status("web").await.active_state,
        "active",
        "still running"
    );

    let st: UnitsResult =
        data(&call_as(&w, &mut reader, "status", &StatusArgs { unit: None }).await);
    assert_eq!(st.units.len(), 1);
    let list: UnitsResult = data(&call_as(&w, &mut reader, "list", &ListArgs {}).await);
    assert_eq!(list.units[0].unit, "web");
    let logs = LogsArgs {
        unit: "web".into(),
        lines: 10,
        follow: false,
    };
    let _: LogsResult = data(&call_as(&w, &mut reader, "logs", &logs).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn program_outside_allowed_exec_prefixes_is_unauthorized() {
    let mut w = unit_world("allowed_exec_prefixes = [\"/opt/gearmq-allowed\"]", &[]).await;
    let prog = w.program();
    let r = w.install(&spec("web", &prog), true).await;
    assert_eq!(r.status, Status::Unauthorized, "{:?}", r.error);
    assert!(
        error_of(&r).contains("allowed_exec_prefixes"),
        "{}",
        error_of(&r)
    );
    assert!(w.unit_files().is_empty());
    assert_eq!(starts(&prog), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_execute_is_resolved_from_records_and_starts_once() {
    let mut w = unit_world("", &[]).await;
    let prog = w.program();
    let r: UnitChangeResult = data(&w.install(&spec("web", &prog), false).await);
    assert_eq!(r.change, Change::Created);

    // An agent that aborts right after it started the unit, before the outcome, the
    // stored reply and the ack.
    w.agent.signal("TERM");
    w.agent.wait_exit(Duration::from_secs(20));
    w.start_agent(&[("GEARMQ_AGENT_FAULT", "crash-after-execute")]);
    let id = send(&w, "start", &UnitArgs { unit: "web".into() }).await;
    let status = w.agent.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "the agent aborted: {status:?}");
    assert!(
        w.ops.next_delivery(QUIET).await.is_none(),
        "no reply before the crash"
    );
    assert_eq!(starts(&prog), 1, "the crashed run started the program");

    // The broker redelivers the unacked request to the restarted agent.
    w.start_agent(&[]);
    let r = reply_to(&mut w, id, Duration::from_secs(30)).await;
    let r: UnitChangeResult = data(&r);
    assert_eq!(r.change, Change::Started, "resolved as the start it was");
    assert_eq!(r.state.unwrap().active_state, "active");
    w.agent
        .wait_for_log("intent record", Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(starts(&prog), 1, "started exactly once");
    // Answered and acked now: nothing left in the queue.
    assert_eq!(w.vhost.queue_messages("gearmq.host.web1"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_streams_new_lines_and_cancel_ends_it() {
    let mut w = unit_world("", &[]).await;
    let ticker = w.systemd().script(
        "ticker.sh",
        "i=0\nwhile true; do i=$((i+1)); echo \"tick $i\"; sleep 0.2; done\n",
    );
    let r: UnitChangeResult = data(&w.install(&spec("tick", &ticker), true).await);
    assert_eq!(r.then, Some(Change::Started));
    w.wait_for_log_line("tick", |l| l == "tick 2").await;

    let follow = LogsArgs {
        unit: "tick".into(),
        lines: 2,
        follow: true,
    };
    let id = send(&w, "logs", &follow).await;
    let first = reply_to(&mut w, id, Duration::from_secs(10)).await;
    assert_eq!((first.seq, first.is_final), (0, false));
    let initial: LogsResult = data(&first);
    assert_eq!(initial.lines.len(), 2, "{:?}", initial.lines);
    let last_initial: u32 = initial.lines[1]
        .strip_prefix("tick ")
        .unwrap()
        .parse()
        .unwrap();

    // Lines written after the stream started arrive in non-final replies, seq rising.
    let mut seq = 0;
    let mut newest = last_initial;
    while newest < last_initial + 3 {
        let r = reply_to(&mut w, id, Duration::from_secs(10)).await;
        assert!(!r.is_final);
        assert_eq!(r.seq, seq + 1);
        seq = r.seq;
        let part: LogsResult = data(&r);
        for l in &part.lines {
            let n: u32 = l.strip_prefix("tick ").unwrap().parse().unwrap();
            assert!(
                n > newest || newest == last_initial && n >= newest,
                "{l} after {newest}"
            );
            newest = n;
        }
    }

    // Only the caller that started it may cancel it.
    let mut other = w.caller("other", Role::Operator, ALL_ACTIONS).await;
    let r = call_as(&w, &mut other, "cancel", &CancelArgs { request_id: id }).await;
    assert_eq!(r.status, Status::Unauthorized, "{:?}", r.error);

    let cancel = send(&w, "cancel", &CancelArgs { request_id: id }).await;
    let r = reply_to(&mut w, cancel, Duration::from_secs(10)).await;
    let c: CancelResult = data(&r);
    assert_eq!(c.request_id, id);
    // Then the stream's own final reply.
    let mut seqs = HashMap::new();
    let last = loop {
        let r = reply_to(&mut w, id, Duration::from_secs(10)).await;
        assert!(r.seq > seq);
        seq = r.seq;
        seqs.insert(r.seq, r.is_final);
        if r.is_final {
            break r;
        }
    };
    assert_eq!(last.status, Status::Ok);
    let _: LogsResult = data(&last);
    assert!(
        w.ops.next_delivery(QUIET).await.is_none(),
        "nothing after the final reply"
    );
    // A cancel of an ended stream finds nothing.
    let r = w.call("cancel", &CancelArgs { request_id: id }).await;
    assert_eq!(r.status, Status::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_without_systemd_answers_ping_and_unit_actions_with_status_5() {
    let dir = tempfile::tempdir().unwrap();
    let section = format!(
        "bus = \"user\"\naddress = \"unix:path={}/no-such-bus\"\nunit_dir = \"{}/units\"\n",
        dir.path().display(),
        dir.path().display()
    );
    let mut w = AgentWorld::builder()
        .systemd_section(&section)
        .ops_actions(ALL_ACTIONS)
        .start()
        .await;
    let r = w.call("ping", &PingArgs {}).await;
    assert_eq!(r.status, Status::Ok);
    for (action, args) in [
        ("status", codec::encode(&StatusArgs { unit: None })),
        ("list", codec::encode(&ListArgs {})),
        (
            "install",
            codec::encode(&InstallArgs {
                spec: UnitSpec::new("web", "/bin/sleep"),
                start: true,
                enable: true,
                artifact: None,
            }),
        ),
    ] {
        let r = w
            .ops
            .call_verified(&w.pki, &w.host.name, action, args)
            .await;
        assert_eq!(r.status, Status::UnknownError, "{action}: {:?}", r.error);
        assert!(
            error_of(&r).contains("systemd is not reachable on the user bus"),
            "{action}: {}",
            error_of(&r)
        );
    }
    assert!(!dir.path().join("units").exists(), "nothing written");
    // Still answering.
    let r = w.call("ping", &PingArgs {}).await;
    assert_eq!(r.status, Status::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_an_open_stream_with_a_final_aborted_reply() {
    let mut w = unit_world("", &[]).await;
    let prog = w.program();
    let r: UnitChangeResult = data(&w.install(&spec("web", &prog), true).await);
    assert_eq!(r.then, Some(Change::Started));
    let follow = LogsArgs {
        unit: "web".into(),
        lines: 5,
        follow: true,
    };
    let id = send(&w, "logs", &follow).await;
    let first = reply_to(&mut w, id, Duration::from_secs(10)).await;
    assert_eq!((first.seq, first.is_final), (0, false));
    w.agent.signal("TERM");
    let last = loop {
        let r = reply_to(&mut w, id, Duration::from_secs(10)).await;
        if r.is_final {
            break r;
        }
    };
    assert_eq!(last.status, Status::Aborted, "{:?}", last.error);
    assert!(
        error_of(&last).contains("shutting down"),
        "{}",
        error_of(&last)
    );
    assert_eq!(w.agent.wait_exit(Duration::from_secs(20)).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_of_pings_an_install_a_stream_and_refusals_verifies() {
    let mut w = unit_world("", &[]).await;
    let prog = w.program();
    for _ in 0..2 {
        let r = w.call("ping", &PingArgs {}).await;
        assert_eq!(r.status, Status::Ok);
    }
    let r = w.install(&spec("web", &prog), true).await;
    let _: UnitChangeResult = data(&r);
    // A stream is logged with its first reply; cancelling it logs the cancel.
    let follow = LogsArgs {
        unit: "web".into(),
        lines: 5,
        follow: true,
    };
    let id = send(&w, "logs", &follow).await;
    let first = reply_to(&mut w, id, Duration::from_secs(30)).await;
    assert!(!first.is_final);
    let r = w.call("cancel", &CancelArgs { request_id: id }).await;
    let _: CancelResult = data(&r);
    while !reply_to(&mut w, id, Duration::from_secs(30)).await.is_final {}
    // Refused: a read-only operator installing; an expired request.
    let mut reader = w.caller("reader", Role::Operator, READ_ONLY_ACTIONS).await;
    let r = call_as(
        &w,
        &mut reader,
        "install",
        &InstallArgs {
            spec: spec("web", &prog),
            start: false,
            enable: true,
            artifact: None,
        },
    )
    .await;
    assert_eq!(r.status, Status::Unauthorized);
    let now = gearmq_schemas::time::now_ms();
    let mut old = w.ping();
    old.issued_at = now - 7_200_000;
    old.expires_at = now - 3_600_000;
    w.send(&old).await;
    let r = reply_to(&mut w, old.id, Duration::from_secs(30)).await;
    assert_eq!(r.status, Status::Expired);

    let path = w.files.state_dir.join("audit.log");
    let files: Vec<(String, Vec<u8>)> = gearmq_schemas::audit::log_files(&path)
        .unwrap()
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    let summary = gearmq_schemas::audit::verify_log(
        &files,
        &w.pki.anchors(),
        &gearmq_schemas::audit::VerifyOptions::default(),
    )
    .unwrap_or_else(|e| panic!("audit log verifies: {e}"));
    // ping ×2, install, logs (with seq 0), cancel, refused install, expired ping.
    assert_eq!(summary.requests_handled, 7);
    assert_eq!(summary.handled_not_ok, 2);
    assert_eq!(summary.writer, w.host.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_reply_holds_at_most_max_log_bytes_and_says_it_was_cut() {
    // The smallest cap the config allows.
    let mut w = unit_world("", &[("GEARMQ_AGENT__LIMITS__MAX_LOG_BYTES", "1024")]).await;
    // 100 lines of 50 bytes (newline included): 5,000 bytes of output.
    let talker = w.systemd().script(
        "talker.sh",
        "i=100\nwhile [ $i -lt 200 ]; do printf 'line %03d %040d\\n' $i 0; i=$((i+1)); done\nexec sleep 600\n",
    );
    let _: UnitChangeResult = data(&w.install(&spec("talk", &talker), true).await);
    let all = w
        .wait_for_log_line("talk", |l| l.starts_with("line 199 "))
        .await;
    let bytes: usize = all.lines.iter().map(|l| l.len() + 1).sum();
    assert!(all.truncated, "5,000 bytes of output fit in 1,024?");
    assert!(bytes <= 1024, "{bytes} bytes in a reply capped at 1024");
    // Cut at line boundaries, newest kept: at most 20 whole 50-byte lines fit (the
    // agent keeps some of the cap for the reply's own framing: 18 here).
    let n = all.lines.len();
    assert!((15..=20).contains(&n), "{n} lines: {:?}", all.lines);
    assert!(all.lines[n - 1].starts_with("line 199 "));
    // A request for fewer lines than the cap holds is not cut.
    let few = w.logs("talk", 5).await;
    assert_eq!(few.lines.len(), 5);
    assert!(!few.truncated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_stream_ends_at_max_follow_not_at_the_request_expiry() {
    let mut w = unit_world("", &[("GEARMQ_AGENT__LIMITS__MAX_FOLLOW", "2s")]).await;
    let ticker = w.systemd().script(
        "ticker.sh",
        "i=0\nwhile true; do i=$((i+1)); echo \"tick $i\"; sleep 0.2; done\n",
    );
    let _: UnitChangeResult = data(&w.install(&spec("tick", &ticker), true).await);
    w.wait_for_log_line("tick", |l| l == "tick 2").await;
    let follow = LogsArgs {
        unit: "tick".into(),
        lines: 1,
        follow: true,
    };
    let sent = std::time::Instant::now();
    let id = send(&w, "logs", &follow).await;
    let last = loop {
        let r = reply_to(&mut w, id, Duration::from_secs(15)).await;
        if r.is_final {
            break r;
        }
    };
    let took = sent.elapsed();
    assert_eq!(last.status, Status::Ok, "{:?}", last.error);
    assert!(
        took >= Duration::from_millis(1_900) && took < Duration::from_secs(15),
        "a stream capped at 2 s (request valid for 60 s) ended after {took:?}"
    );
}

/// Polls until `program` was started `n` times (10 s at most).
async fn wait_starts(program: &Path, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while starts(program) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} started {} times, not {n}",
            program.display(),
            starts(program)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabled_units_run_again_after_a_reboot_and_no_enable_ones_do_not() {
    let mut w = unit_world("", &[]).await;
    let on = w.systemd().script("on.sh", PROGRAM);
    let off = w.systemd().script("off.sh", PROGRAM);
    let wants = w.systemd().unit_dir().join("default.target.wants");

    let r: UnitChangeResult = data(&w.install(&spec("on", &on), true).await);
    assert_eq!((r.change, r.then), (Change::Created, Some(Change::Started)));
    assert_eq!(r.state.unwrap().unit_file_state, "enabled");
    let text = std::fs::read_to_string(w.unit_file("on")).unwrap();
    assert!(
        text.ends_with("[Install]\nWantedBy=default.target\n"),
        "{text}"
    );
    assert!(wants.join("gearmq-on.service").exists());
    let no_enable = InstallArgs {
        spec: spec("off", &off),
        start: true,
        enable: false,
        artifact: None,
    };
    let r: UnitChangeResult = data(&w.call("install", &no_enable).await);
    assert_eq!(r.state.unwrap().unit_file_state, "disabled");
    assert!(!wants.join("gearmq-off.service").exists());
    // systemd reports a simple service started once it has forked: the program's own
    // start line may come a moment later (seen on a loaded CI machine).
    wait_starts(&on, 1).await;
    wait_starts(&off, 1).await;
    assert_eq!((starts(&on), starts(&off)), (1, 1));

    // The manager stops (its units with it) and a new one starts on the same
    // directories: what is enabled runs again without any request.
    w.systemd.as_mut().unwrap().reboot();
    wait_starts(&on, 2).await;
    // A host's reboot starts its agent again too.
    w.start_agent(&[]);
    let st = w.status("on").await;
    assert_eq!(
        (st.active_state.as_str(), st.unit_file_state.as_str()),
        ("active", "enabled")
    );
    let st = w.status("off").await;
    assert_eq!(
        (st.active_state.as_str(), st.unit_file_state.as_str()),
        ("inactive", "disabled")
    );
    assert_eq!(starts(&off), 1, "a --no-enable unit is not started at boot");

    // enable/disable as actions, idempotent.
    let r: UnitChangeResult = data(&w.unit("disable", "on").await);
    assert_eq!(r.change, Change::Disabled);
    assert!(!wants.join("gearmq-on.service").exists());
    let r: UnitChangeResult = data(&w.unit("disable", "on").await);
    assert_eq!(r.change, Change::AlreadyDisabled);
    let r: UnitChangeResult = data(&w.unit("enable", "off").await);
    assert_eq!(r.change, Change::Enabled);
    assert_eq!(r.state.unwrap().unit_file_state, "enabled");
    assert!(wants.join("gearmq-off.service").exists());
    let r: UnitChangeResult = data(&w.unit("enable", "off").await);
    assert_eq!(r.change, Change::AlreadyEnabled);
    let r = w.unit("enable", "absent").await;
    assert_eq!(r.status, Status::NotFound, "{:?}", r.error);

    // delete disables first: no link is left behind.
    let r: UnitChangeResult = data(&w.unit("delete", "off").await);
    assert_eq!(r.change, Change::Deleted);
    assert!(!wants.join("gearmq-off.service").exists());
    assert!(!w.unit_file("off").exists());
}
