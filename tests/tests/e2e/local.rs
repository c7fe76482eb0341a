//! `gearmq local …`: the real CLI driving units of a real `systemd --user` in-process,
//! with no broker, issuer or agent; and refusing a state dir a running agent owns.

use gearmq_testkit::{CliOutput, Fleet, UserSystemd, run_cli_env};
use serde_json::Value;
use std::path::PathBuf;

/// `gearmq local --bus user` pointed at one test manager and one state dir.
struct Local<'a> {
    systemd: &'a UserSystemd,
    state_dir: PathBuf,
}

impl Local<'_> {
    fn run(&self, args: &[&str]) -> CliOutput {
        let state_dir = self.state_dir.display().to_string();
        let unit_dir = self.systemd.unit_dir().display().to_string();
        let mut all = vec![
            "local",
            "--bus",
            "user",
            "--state-dir",
            &state_dir,
            "--unit-dir",
            &unit_dir,
        ];
        all.extend_from_slice(args);
        let bus = self.systemd.bus_address();
        run_cli_env(&all, &[("DBUS_SESSION_BUS_ADDRESS", &bus)])
    }

    /// Runs `args` and requires exit 0.
    fn ok(&self, args: &[&str]) -> CliOutput {
        let out = self.run(args);
        assert_eq!(
            out.code,
            0,
            "gearmq local {}\n{}\n{}",
            args.join(" "),
            out.stdout,
            out.stderr
        );
        out
    }

    /// `status UNIT --json`: the unit's state.
    fn status(&self, unit: &str) -> Value {
        let doc = self.ok(&["status", unit, "--json"]).json();
        let r = &doc["results"][0];
        assert_eq!(r["status"], "ok", "{doc}");
        r["data"]["units"][0].clone()
    }
}

fn main_pid(state: &Value) -> u64 {
    state["main_pid"].as_u64().unwrap_or(0)
}

#[test]
fn local_commands_manage_a_unit_on_a_user_manager_without_broker_or_agent() {
    let sd = UserSystemd::start();
    let local = Local {
        systemd: &sd,
        state_dir: sd.dir().join("state"),
    };
    let prog = sd.script("hello.sh", "echo \"hello $1\"\nexec sleep 600");
    let exec = prog.to_str().unwrap();
    let unit_file = sd.unit_dir().join("gearmq-hello.service");
    let install = ["install", "hello", "--exec", exec, "--arg", "world"];

    // --dry-run prints the unit file and where it would go, and writes nothing.
    let dry = local.ok(&[&install[..], &["--dry-run"]].concat());
    assert!(
        dry.stdout
            .starts_with(&format!("# {}\n", unit_file.display())),
        "{}",
        dry.stdout
    );
    assert!(dry.stdout.contains("[Service]"), "{}", dry.stdout);
    assert!(
        dry.stdout
            .contains(&format!("ExecStart=\"{exec}\" \"world\"")),
        "{}",
        dry.stdout
    );
    assert!(
        !unit_file.exists(),
        "--dry-run wrote {}",
        unit_file.display()
    );
    assert!(
        !local.state_dir.exists(),
        "--dry-run made {}",
        local.state_dir.display()
    );
    // A shipped program's unit file names the file by its digest, known only once
    // fetched: --dry-run says so rather than print a wrong file.
    let shipped = local.run(&[
        "install",
        "app",
        "--artifact-url",
        "http://127.0.0.1:9/app",
        "--artifact",
        exec,
        "--dry-run",
    ]);
    assert_eq!(shipped.code, 2, "{}", shipped.stderr);
    assert!(
        shipped.stderr.contains("shipped program"),
        "{}",
        shipped.stderr
    );
    assert!(!local.state_dir.exists());

    // install --start: the file the dry run showed, and a running unit.
    let out = local.ok(&[&install[..], &["--start"]].concat());
    assert!(
        out.stdout.contains("created, started: active/running pid"),
        "{}",
        out.stdout
    );
    let written = std::fs::read_to_string(&unit_file).unwrap();
    assert_eq!(
        dry.stdout,
        format!("# {}\n{written}", unit_file.display()),
        "the dry run showed another file than install wrote"
    );

    // status, human and --json.
    let human = local.ok(&["status", "hello"]);
    let row = human
        .stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("hello"))
        .unwrap_or_else(|| panic!("no row for hello:\n{}", human.stdout));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[2..4], ["active", "running"], "{row}");
    let state = local.status("hello");
    assert_eq!(state["active_state"], "active", "{state}");
    assert_eq!(state["sub_state"], "running", "{state}");
    let first_pid = main_pid(&state);
    assert!(first_pid > 0, "{state}");
    assert_eq!(cols[4], first_pid.to_string(), "{row}");

    // restart runs a new main process.
    let out = local.ok(&["restart", "hello"]);
    assert!(
        out.stdout.contains("restarted: active/running"),
        "{}",
        out.stdout
    );
    let state = local.status("hello");
    assert_eq!(state["active_state"], "active", "{state}");
    let second_pid = main_pid(&state);
    assert!(
        second_pid > 0 && second_pid != first_pid,
        "main PID {first_pid} -> {second_pid}"
    );

    // logs: the program's output, once per start.
    let logs = local.ok(&["logs", "hello"]);
    let greetings = logs
        .stdout
        .lines()
        .filter(|l| l.contains("hello world"))
        .count();
    assert_eq!(greetings, 2, "{}", logs.stdout);

    // list names the unit.
    let list = local.ok(&["list", "--json"]).json();
    let units = list["results"][0]["data"]["units"].as_array().cloned();
    let names: Vec<Value> = units
        .unwrap_or_default()
        .iter()
        .map(|u| u["unit"].clone())
        .collect();
    assert_eq!(names, [Value::from("hello")], "{list}");

    // stop, then delete removes the unit file.
    local.ok(&["stop", "hello"]);
    let state = local.status("hello");
    assert_eq!(state["active_state"], "inactive", "{state}");
    assert_eq!(main_pid(&state), 0, "{state}");
    local.ok(&["delete", "hello"]);
    assert!(!unit_file.exists(), "delete left {}", unit_file.display());
    let list = local.ok(&["list", "--json"]).json();
    assert_eq!(
        list["results"][0]["data"]["units"],
        serde_json::json!([]),
        "{list}"
    );

    // Every local command was a signed request in the local identity's audit log.
    assert!(local.state_dir.join("local/audit.log").is_file());
}

#[test]
fn local_refuses_a_state_dir_a_running_agent_owns() {
    let fleet = Fleet::init("local", &["a"]);
    let sd = UserSystemd::start();
    let mut agent = fleet.start_agent_on("a", &sd);
    let local = Local {
        systemd: &sd,
        state_dir: fleet.host_dir("a").join("state"),
    };
    let prog = sd.script("hello.sh", "exec sleep 600");
    let install = [
        "install",
        "hello",
        "--exec",
        prog.to_str().unwrap(),
        "--start",
    ];

    let out = local.run(&install);
    assert_eq!(out.code, 2, "{}\n{}", out.stdout, out.stderr);
    let pid = agent.pid().expect("the agent runs");
    assert!(
        out.stderr.contains("in use by another gearmq process")
            && out.stderr.contains(&format!("(pid {pid})")),
        "{}",
        out.stderr
    );
    assert!(
        !sd.unit_dir().join("gearmq-hello.service").exists(),
        "a refused command wrote a unit file"
    );
    assert!(
        !local.state_dir.join("local").exists(),
        "a refused command made a local identity in the agent's state dir"
    );

    // The refusal was the agent's lock: once the agent is gone, local mode works on
    // its state dir, recording in a log of its own and leaving the agent's untouched.
    agent.terminate();
    let agent_log = local.state_dir.join("audit.log");
    let before = std::fs::read(&agent_log).unwrap_or_default();
    let out = local.run(&["list"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(local.state_dir.join("local/audit.log").is_file());
    assert_eq!(std::fs::read(&agent_log).unwrap_or_default(), before);
}
