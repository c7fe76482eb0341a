//! Managing units through the `gearmq` CLI: real agents, each with a real
//! `systemd --user` of its own, over the real broker.

use gearmq_testkit::{Fleet, Streaming, UserSystemd, wait_until, write_program};
use serde_json::Value;
use std::time::{Duration, Instant};

fn ok_results(doc: &Value) -> Vec<Value> {
    let results = doc["results"].as_array().cloned().unwrap_or_default();
    for r in &results {
        assert_eq!(r["status"], "ok", "{doc}");
    }
    results
}

fn result_for<'a>(doc: &'a Value, host: &str) -> &'a Value {
    doc["results"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["host"] == host))
        .unwrap_or_else(|| panic!("no result for {host}: {doc}"))
}

#[test]
fn operator_installs_and_runs_a_service_on_two_hosts() {
    let fleet = Fleet::init("units2", &["a", "b"]);
    let sd_a = UserSystemd::start();
    let sd_b = UserSystemd::start();
    let _agent_a = fleet.start_agent_on("a", &sd_a);
    let _agent_b = fleet.start_agent_on("b", &sd_b);
    let work = tempfile::tempdir().unwrap();
    let prog = write_program(
        work.path(),
        "hello.sh",
        "echo \"hello from $GREETING\"\nprintf 'arg:%s\\n' \"$@\"\nexec sleep 600",
    );
    let exec = prog.to_str().unwrap();

    // install --start on both hosts; % $ and quotes must reach the program literally.
    let out = fleet.cli(&[
        "install",
        "a,b",
        "hello",
        "--exec",
        exec,
        "--arg",
        "100%",
        "--arg",
        "$HOME",
        "--arg",
        "say \"hi\" \\o/",
        "--env",
        "GREETING=gearmq",
        "--start",
        "--json",
        "--timeout",
        "30s",
    ]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let doc = out.json();
    for r in ok_results(&doc) {
        assert_eq!(r["data"]["change"], "created", "{r}");
        assert_eq!(r["data"]["state"]["active_state"], "active", "{r}");
    }
    assert!(sd_a.unit_dir().join("gearmq-hello.service").is_file());

    // Installing the same spec again changes nothing.
    let again = fleet.cli(&[
        "install",
        "a",
        "hello",
        "--exec",
        exec,
        "--arg",
        "100%",
        "--arg",
        "$HOME",
        "--arg",
        "say \"hi\" \\o/",
        "--env",
        "GREETING=gearmq",
        "--json",
        "--timeout",
        "30s",
    ]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(
        result_for(&again.json(), "a")["data"]["change"],
        "unchanged"
    );

    // status: active/running with a main PID.
    let st = fleet.cli(&["status", "a,b", "hello", "--json", "--timeout", "30s"]);
    assert_eq!(st.code, 0, "{}", st.stderr);
    let st = st.json();
    let unit_b = &result_for(&st, "b")["data"]["units"][0];
    assert_eq!(unit_b["sub_state"], "running", "{st}");
    let unit = &result_for(&st, "a")["data"]["units"][0];
    assert_eq!(unit["unit"], "hello");
    assert_eq!(unit["active_state"], "active");
    assert_eq!(unit["sub_state"], "running");
    let pid = unit["main_pid"].as_u64().unwrap();
    assert!(pid > 0);

    // logs: the program's output, arguments exactly as given.
    let mut lines = String::new();
    wait_until("the program's output", Duration::from_secs(15), || {
        let out = fleet.cli(&["logs", "a", "hello", "--lines", "20"]);
        lines = out.stdout;
        lines.contains("arg:say \"hi\" \\o/")
    });
    assert!(lines.contains("hello from gearmq"), "{lines}");
    assert!(lines.contains("arg:100%"), "{lines}");
    assert!(lines.contains("arg:$HOME"), "{lines}");

    // list --all shows the unit on both hosts.
    let list = fleet.cli(&["list", "--all", "--json", "--timeout", "30s"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    let list = list.json();
    for h in ["a", "b"] {
        assert_eq!(result_for(&list, h)["data"]["units"][0]["unit"], "hello");
    }

    // restart: a new main PID.
    let rs = fleet.cli(&["restart", "a", "hello", "--json", "--timeout", "30s"]);
    assert_eq!(rs.code, 0, "{}", rs.stderr);
    let rs = rs.json();
    let new_pid = result_for(&rs, "a")["data"]["state"]["main_pid"]
        .as_u64()
        .unwrap();
    assert!(new_pid > 0 && new_pid != pid, "pid {pid} -> {new_pid}");

    // stop: inactive.
    let sp = fleet.cli(&["stop", "a,b", "hello", "--json", "--timeout", "30s"]);
    assert_eq!(sp.code, 0, "{}", sp.stderr);
    for r in ok_results(&sp.json()) {
        assert_eq!(r["data"]["change"], "stopped", "{r}");
        assert_eq!(r["data"]["state"]["active_state"], "inactive", "{r}");
    }

    // delete: gone from list and from disk; deleting again is ok (absent).
    let del = fleet.cli(&["delete", "a,b", "hello", "--json", "--timeout", "30s"]);
    assert_eq!(del.code, 0, "{}", del.stderr);
    for r in ok_results(&del.json()) {
        assert_eq!(r["data"]["change"], "deleted", "{r}");
    }
    assert!(!sd_a.unit_dir().join("gearmq-hello.service").exists());
    assert!(!sd_b.unit_dir().join("gearmq-hello.service").exists());
    let list = fleet
        .cli(&["list", "--all", "--json", "--timeout", "30s"])
        .json();
    for h in ["a", "b"] {
        let units = result_for(&list, h)["data"]["units"]
            .as_array()
            .unwrap()
            .len();
        assert_eq!(units, 0, "{list}");
    }
    let del = fleet.cli(&["delete", "a", "hello", "--json", "--timeout", "30s"]);
    assert_eq!(del.code, 0);
    assert_eq!(result_for(&del.json(), "a")["data"]["change"], "absent");

    // The orchestrator's and both agents' audit logs of all of this verify offline.
    for log in [
        fleet.path().join("audit.log"),
        fleet.host_dir("a").join("state").join("audit.log"),
        fleet.host_dir("b").join("state").join("audit.log"),
    ] {
        let out = fleet.verify_audit(&log);
        assert_eq!(
            out.code,
            0,
            "{}: {}{}",
            log.display(),
            out.stdout,
            out.stderr
        );
        assert_eq!(out.json()["ok"], true, "{}", out.stdout);
    }

    // facts: one row per host, limits honestly reported.
    let facts = fleet.cli(&["facts", "--all", "--json", "--timeout", "30s"]);
    assert_eq!(facts.code, 0, "{}", facts.stderr);
    let facts = facts.json();
    for h in ["a", "b"] {
        let f = &result_for(&facts, h)["data"];
        assert!(f["cpus"].as_u64().unwrap() >= 1, "{f}");
        assert!(f["limits_enforced"].is_boolean(), "{f}");
    }
}

#[test]
fn list_all_across_three_agents_shows_each_hosts_units() {
    let fleet = Fleet::init("list3", &["h1", "h2", "h3"]);
    let managers: Vec<UserSystemd> = (0..3).map(|_| UserSystemd::start()).collect();
    let _agents: Vec<_> = ["h1", "h2", "h3"]
        .iter()
        .zip(&managers)
        .map(|(h, sd)| fleet.start_agent_on(h, sd))
        .collect();
    let work = tempfile::tempdir().unwrap();
    let prog = write_program(work.path(), "idle.sh", "exec sleep 600");
    for (i, h) in ["h1", "h2", "h3"].iter().enumerate() {
        let unit = format!("svc{i}");
        let out = fleet.cli(&[
            "install",
            h,
            &unit,
            "--exec",
            prog.to_str().unwrap(),
            "--timeout",
            "30s",
        ]);
        assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    }
    let out = fleet.cli(&["list", "--all", "--timeout", "30s"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for (i, h) in ["h1", "h2", "h3"].iter().enumerate() {
        let row = out
            .stdout
            .lines()
            .find(|l| l.starts_with(h))
            .unwrap_or_else(|| panic!("no row for {h}:\n{}", out.stdout));
        assert!(row.contains(&format!("svc{i}")), "{row}");
        assert!(row.contains("inactive"), "{row}");
    }
    assert!(out.stdout.lines().last().unwrap().starts_with("3/3 ok"));
}

#[test]
fn logs_follow_streams_new_lines_and_ctrl_c_cancels_it() {
    let fleet = Fleet::init("follow", &["a"]);
    let sd = UserSystemd::start();
    let _agent = fleet.start_agent_on("a", &sd);
    let work = tempfile::tempdir().unwrap();
    let prog = write_program(
        work.path(),
        "tick.sh",
        "i=0\nwhile true; do i=$((i+1)); echo \"tick $i\"; sleep 0.2; done",
    );
    let out = fleet.cli(&[
        "install",
        "a",
        "ticker",
        "--exec",
        prog.to_str().unwrap(),
        "--start",
        "--timeout",
        "30s",
    ]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);

    let cfg = fleet.orchestrator_toml();
    let follow = Streaming::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "logs",
        "a",
        "ticker",
        "--lines",
        "1",
        "--follow",
        "--json",
        "--timeout",
        "60s",
    ]);
    // Lines written after the stream started arrive as partial replies.
    let mut streamed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while streamed.len() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let v = follow.next_json("streamed lines before the deadline", left);
        if v["seq"].as_u64().is_some_and(|s| s > 0)
            && v["lines"].as_array().is_some_and(|l| !l.is_empty())
        {
            streamed.push(v);
        }
    }
    // Ctrl-C: the CLI sends a signed cancel and the agent ends the stream.
    let started = Instant::now();
    let (status, rest) = follow.interrupt(Duration::from_secs(20));
    assert!(status.success(), "{status}");
    let summary: Value = serde_json::from_str(rest.last().expect("summary document")).unwrap();
    assert_eq!(summary["summary"]["ok"], 1, "{summary}");
    assert!(started.elapsed() < Duration::from_secs(15));
}
