//! The scale emulator and the benchmark, end to end: `gearmq init --hosts-count`,
//! `gearmq-bench emulate` serving every host in one process, the real CLI reaching
//! them all with verified replies, and a tiny `gearmq-bench run`.

use gearmq_testkit::{Agent, Vhost, run_cli};

#[test]
fn emulated_hosts_each_answer_a_ping_to_all_with_a_verified_reply() {
    let vhost = Vhost::new("emu");
    let dir = tempfile::Builder::new()
        .prefix("gearmq-emu-")
        .tempdir()
        .expect("tempdir");
    let path = dir.path().to_string_lossy().to_string();
    let out = run_cli(&[
        "init",
        "--dir",
        &path,
        "--hosts-count",
        "20",
        "--name-prefix",
        "emu",
        "--broker",
        &vhost.url(),
    ]);
    assert_eq!(out.code, 0, "init: {}", out.stderr);
    assert!(out.stdout.contains("more hosts"), "{}", out.stdout);
    assert!(dir.path().join("hosts/emu-00001/agent.toml").is_file());
    assert!(dir.path().join("hosts/emu-00020/host.cred").is_file());
    assert!(!dir.path().join("hosts/emu-00021").exists());

    let emulator = Agent::emulator(&dir.path().join("hosts"));
    let log = emulator.log_text();
    assert!(log.contains("hosts=20"), "{log}");
    assert!(
        log.contains("user_id"),
        "the user_id check being off is said: {log}"
    );

    let config = dir.path().join("orchestrator.toml");
    let config = config.to_string_lossy();
    let out = run_cli(&["--config", &config, "ping", "--all", "--json"]);
    assert_eq!(
        out.code, 0,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    let doc = out.json();
    assert_eq!(doc["summary"]["targets"], 20);
    assert_eq!(doc["summary"]["ok"], 20);
    let hosts: Vec<String> = doc["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["host"].as_str().unwrap_or_default().to_string())
        .collect();
    let want: Vec<String> = (1..=20).map(|i| format!("emu-{i:05}")).collect();
    assert_eq!(hosts, want);

    // Unit actions run on the no-op backend: every job succeeds at once, the unit file
    // is written as a real agent writes it, and status reports the state jobs left.
    let two = "emu-00001,emu-00002";
    let cli = |args: &[&str]| {
        let mut all = vec!["--config", &*config];
        all.extend_from_slice(args);
        let out = run_cli(&all);
        assert_eq!(out.code, 0, "{args:?}\n{}\n{}", out.stdout, out.stderr);
        out.json()
    };
    let installed = cli(&[
        "install",
        two,
        "web",
        "--exec",
        "/bin/true",
        "--start",
        "--json",
    ]);
    assert_eq!(installed["summary"]["ok"], 2, "{installed}");
    for r in installed["results"].as_array().unwrap() {
        assert_eq!(r["data"]["change"], "created", "{r}");
        assert_eq!(r["data"]["state"]["active_state"], "active", "{r}");
    }
    let unit_file = dir
        .path()
        .join("hosts/emu-00001/state/emulated-units/gearmq-web.service");
    assert!(unit_file.is_file(), "{}", unit_file.display());
    let stopped = cli(&["stop", "emu-00001", "web", "--json"]);
    assert_eq!(stopped["summary"]["ok"], 1, "{stopped}");
    let status = cli(&["status", two, "web", "--json"]);
    let state_of = |host: &str| {
        status["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["host"] == host)
            .map(|r| r["data"]["units"][0]["active_state"].clone())
    };
    assert_eq!(state_of("emu-00001").unwrap(), "inactive", "{status}");
    assert_eq!(state_of("emu-00002").unwrap(), "active", "{status}");
    let deleted = cli(&["delete", two, "web", "--json"]);
    assert_eq!(deleted["summary"]["ok"], 2, "{deleted}");
    assert!(!unit_file.exists());

    // Each virtual host keeps its own audit log of what it answered.
    for h in ["emu-00001", "emu-00020"] {
        let audit = dir.path().join("hosts").join(h).join("state/audit.log");
        let len = std::fs::metadata(&audit).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "{} is empty", audit.display());
    }
    drop(emulator);
}

#[test]
fn a_tiny_bench_run_reports_every_shape_with_every_reply_verified() {
    let vhost = Vhost::new("bench");
    let dir = tempfile::Builder::new()
        .prefix("gearmq-bench-")
        .tempdir()
        .expect("tempdir");
    let json = dir.path().join("bench.json");
    let fleet = dir.path().join("fleet");
    let out = gearmq_testkit::run_program(
        "gearmq-bench",
        &[
            "run",
            "--sizes",
            "1,3",
            "--rounds",
            "2",
            "--rtt-count",
            "5",
            "--throughput-count",
            "16",
            "--in-flight",
            "4",
            "--broker",
            &vhost.url(),
            "--dir",
            &fleet.to_string_lossy(),
            "--out",
            &json.to_string_lossy(),
        ],
        &[],
    );
    assert_eq!(
        out.code, 0,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    assert!(
        out.stdout.contains("fan-out ping, 3 hosts"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("3 hosts, 1 publish"), "{}", out.stdout);
    let text = std::fs::read_to_string(&json).expect("bench.json");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(doc["all_replies_verified"], true);
    let fan = doc["fan_out"].as_array().expect("fan_out");
    // One row per size, published once per host, then the whole fleet with one
    // publish on the all route.
    assert_eq!(fan.len(), 3);
    for (row, (n, once)) in fan.iter().zip([(1u64, false), (3, false), (3, true)]) {
        assert_eq!(row["hosts"], n);
        assert_eq!(row["one_publish"], once, "{row}");
        assert_eq!(row["replies_verified"], n * 2);
        assert_eq!(row["replies_expected"], n * 2);
        for side in ["gearmq", "raw", "raw_transient"] {
            let p50 = row[side]["p50_ms"].as_f64().expect("p50");
            let p99 = row[side]["p99_ms"].as_f64().expect("p99");
            assert!(p50 > 0.0 && p99 >= p50, "{side}: {row}");
        }
        assert!(row["ratio_p50"].as_f64().expect("ratio") > 0.0);
        assert!(row["ratio_transient_p50"].as_f64().expect("ratio") > 0.0);
        assert!(row["broker_bound"].is_boolean(), "{row}");
        assert!(row["gearmq_cpu_per_reply"]["orchestrator_us"].is_number());
    }
    let rt = &doc["single_host_round_trip"];
    assert_eq!(rt["replies_verified"], 5);
    assert!(rt["gearmq"]["p50_ms"].as_f64().expect("p50") > 0.0);
    assert!(rt["raw"]["p50_ms"].as_f64().expect("p50") > 0.0);
    let tp = &doc["throughput"];
    assert_eq!(tp["replies_verified"], 16);
    assert!(tp["gearmq_per_sec"].as_f64().expect("rate") > 0.0);
    assert!(tp["raw_per_sec"].as_f64().expect("rate") > 0.0);
    assert!(tp["raw_transient_per_sec"].as_f64().expect("rate") > 0.0);
    assert!(doc["broker_descriptors"].as_u64().expect("fd limit") > 0);
    assert!(
        out.stdout.contains("broker open-file limit"),
        "{}",
        out.stdout
    );
    let mem = &doc["memory"];
    assert!(mem["real_agent_idle_kib"].as_u64().expect("rss") > 0);
    assert!(mem["emulator_idle_kib_per_host"].as_f64().expect("rss") > 0.0);
    let stages: Vec<&str> = doc["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| {
            assert!(s["us_per_op"].as_f64().expect("time") > 0.0, "{s}");
            s["stage"].as_str().unwrap_or_default()
        })
        .collect();
    for want in [
        "open request",
        "sign reply",
        "open reply",
        "correlate",
        "audit record",
    ] {
        assert!(
            stages.iter().any(|s| s.contains(want)),
            "no {want} stage: {stages:?}"
        );
    }
    assert!(doc["request_bytes"].as_u64().expect("size") > 0);
}

#[test]
fn the_artifact_bench_measures_stream_and_push_for_each_reader_count() {
    let out = gearmq_testkit::run_program(
        "gearmq-bench",
        &["artifacts", "--readers", "1,3", "--mib", "2", "--json"],
        &[],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    let rows = v["artifacts"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{v}");
    for (row, readers) in rows.iter().zip([1, 3]) {
        assert_eq!(row["readers"], readers, "{row}");
        for k in ["stream_secs", "push_secs", "stream_to_push_ratio"] {
            assert!(row[k].as_f64().is_some_and(|x| x > 0.0), "{k}: {row}");
        }
    }
}
