//! Faults, end to end with real processes: a broker that goes away mid-call, an agent
//! killed while it starts a unit, an orchestrator killed mid-call. Each test reports
//! what it saw with [`observe`] (collected into RELIABILITY.md by
//! `deploy/reliability.sh`).

use gearmq_orchestrator::{CallSpec, HostStatus, Orchestrator};
use gearmq_schemas::{ActionName, Name, actions::PingArgs, codec};
use gearmq_testkit::{
    BrokerNode, Fleet, UserSystemd, Vhost, bin, hosts, line_count, observe, random_bytes, signal,
    stat, wait_until, write_program,
};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn ping_spec(names: &[&str], timeout: Duration) -> CallSpec {
    gearmq_testkit::ping_spec(hosts(names), timeout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestrator_reconnects_when_its_connection_drops_mid_call() {
    let fleet = Fleet::init("freconn", &["a"]);
    let mut agent = fleet.start_agent("a");
    let orch = Orchestrator::connect(&fleet.orchestrator_config())
        .await
        .unwrap();
    let warm = orch
        .request(ping_spec(&["a"], Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(warm.summary.ok, 1);

    // The agent is away, so the request waits in its queue while the connection drops.
    assert_eq!(agent.terminate(), Some(0));
    let call = orch
        .start(ping_spec(&["a"], Duration::from_secs(30)))
        .await
        .unwrap();
    fleet.vhost.close_connections("test: dropped");
    let dropped = Instant::now();
    agent.restart();
    let result = call.finish().await;
    let recovered = dropped.elapsed();
    assert_eq!(result.summary.ok, 1, "{:?}", result.results);
    assert!(orch.reconnects() >= 1, "the orchestrator never reconnected");
    let after = orch
        .request(ping_spec(&["a"], Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(after.summary.ok, 1, "{:?}", after.results);
    let st = fleet.stats("a");
    // The restarted agent ran the queued ping and the one after once each; the
    // republished copy of the first was answered from its stored reply.
    // (The stats action reads the counters before it is itself counted.)
    assert_eq!(st["executed"].as_u64(), Some(2), "{st}");
    observe(
        "orchestrator_reconnects_when_its_connection_drops_mid_call",
        "broker connection closed (rabbitmqctl close_all_connections) mid-call",
        json!({"call_ok": result.summary.ok, "reconnects": orch.reconnects(),
               "recovered_ms": recovered.as_millis() as u64,
               "agent_executed": st["executed"], "agent_received": st["received"]}),
    );
    orch.close().await;
}

/// A call published once on `all` (a host list of at least half the inventory) goes
/// out again on `all` after a reconnect: each named host runs it once (a repeat is
/// answered from the stored reply) and the host it does not name runs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_published_once_is_republished_once_on_all_after_a_reconnect() {
    let fleet = Fleet::init("frepub", &["a", "b", "c"]);
    let mut a = fleet.start_agent("a");
    let _b = fleet.start_agent("b");
    let _c = fleet.start_agent("c");
    let mut config = fleet.orchestrator_config();
    config.defaults.broadcast_min_hosts = 2;
    let orch = Orchestrator::connect(&config).await.unwrap();
    let warm = orch
        .request(ping_spec(&["a", "b", "c"], Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(warm.summary.ok, 3, "{:?}", warm.results);
    let c_before = fleet.stats("c");

    // a is away: its copy waits in its queue while every connection drops; b answers
    // its copy first, c drops its own.
    assert_eq!(a.terminate(), Some(0));
    let call = orch
        .start(ping_spec(&["a", "b"], Duration::from_secs(30)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    fleet.vhost.close_connections("test: dropped");
    a.restart();
    let result = call.finish().await;
    assert_eq!(result.summary.ok, 2, "{:?}", result.results);
    assert_eq!(result.results.len(), 2, "{:?}", result.results);
    assert!(orch.reconnects() >= 1, "the orchestrator never reconnected");

    // c counted both copies (the first and the one republished) as not for it, and
    // ran nothing.
    let c_after = fleet.expect_not_target("c", &c_before, 2);
    // The restarted a ran its queued copy once and answered the republished one from
    // its stored reply; b ran the warm-up and the call, once each. (The stats action
    // reads the counters before it is itself counted.)
    // The repeat may still be in hand when the call ends: ask until a has resent.
    let mut earlier_stats_calls = 0;
    let a_after = loop {
        let s = fleet.stats("a");
        if stat(&s, "resent") >= 1 {
            break s;
        }
        earlier_stats_calls += 1;
        assert!(
            earlier_stats_calls < 100,
            "a never resent its stored reply: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(stat(&a_after, "resent"), 1, "{a_after}");
    assert_eq!(
        stat(&a_after, "executed"),
        1 + earlier_stats_calls,
        "{a_after}"
    );
    assert_eq!(stat(&fleet.stats("b"), "executed"), 2);
    observe(
        "a_call_published_once_is_republished_once_on_all_after_a_reconnect",
        "broker connections closed mid-call of a host list published once on `all`",
        json!({"call_ok": result.summary.ok, "reconnects": orch.reconnects(),
               "c_not_target_added": stat(&c_after, "not_target") - stat(&c_before, "not_target")}),
    );
    orch.close().await;
}

/// Reads (ping) are published transient by default: the copy queued for an absent host
/// is gone with the broker's restart, and the reconnected orchestrator's republished
/// copy is what that host answers, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_fan_out_ends_with_every_host_answered_once() {
    broker_restart_mid_fan_out(false).await;
}

/// The same with `defaults.persistent_reads = true`, the delivery every mutation has:
/// the queued copy survives the restart itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_fan_out_keeps_a_persistent_request_queued() {
    broker_restart_mid_fan_out(true).await;
}

async fn broker_restart_mid_fan_out(persistent: bool) {
    let node = Arc::new(BrokerNode::plain());
    let vhost = Vhost::on(&node, "restart");
    let urls = [vhost.url()];
    let fleet = Fleet::builder("restart", &["h1", "h2", "h3"])
        .on(vhost, &urls)
        .init();
    if persistent {
        fleet.edit_orchestrator_toml(|t| {
            t.replacen("[defaults]\n", "[defaults]\npersistent_reads = true\n", 1)
        });
        assert!(fleet.orchestrator_config().defaults.persistent_reads);
    }
    let depth = |queue: &str| fleet.vhost.queue(queue).map_or(0, |q| q.messages());
    let mut agents: Vec<_> = fleet.hosts.iter().map(|h| fleet.start_agent(h)).collect();
    let orch = Orchestrator::connect(&fleet.orchestrator_config())
        .await
        .unwrap();
    let all = ["h1", "h2", "h3"];
    let warm = orch
        .request(ping_spec(&all, Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(warm.summary.ok, 3, "{:?}", warm.results);

    // h3 is away: its copy of the next request stays queued while h1 and h2 answer at
    // once.
    assert_eq!(agents[2].terminate(), Some(0));
    let mut call = orch
        .start(ping_spec(&all, Duration::from_secs(60)))
        .await
        .unwrap();
    let mut answered = 0;
    while answered < 2 {
        match tokio::time::timeout(Duration::from_secs(20), call.next()).await {
            Ok(Some(gearmq_orchestrator::Progress::Host(r))) => {
                assert_eq!(r.status, HostStatus::Ok, "{r:?}");
                answered += 1;
            }
            Ok(Some(_)) => {}
            other => panic!("h1 and h2 did not answer: {}", other.is_ok()),
        }
    }
    assert_eq!(depth("gearmq.host.h3"), 1);

    // The broker goes away mid-call.
    let stopped = Instant::now();
    node.stop();
    // A second call started while it is down waits for the link.
    let orch = std::sync::Arc::new(orch);
    let o2 = orch.clone();
    let second = tokio::spawn(async move {
        o2.request(ping_spec(&["h1", "h2", "h3"], Duration::from_secs(60)))
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    node.boot();
    let booted = stopped.elapsed();
    // Persistent: the queued request survived (with the copies the reconnected
    // orchestrator republished and the second call's, if they are in already).
    // Transient: it did not; the republished copy takes its place.
    let depth_after_boot = depth("gearmq.host.h3");
    if persistent {
        assert!(
            depth_after_boot >= 1,
            "the queued request did not survive the restart"
        );
    }
    for a in &agents[..2] {
        wait_until("agent reconnect", Duration::from_secs(30), || {
            a.log_text().contains("reconnected to the broker")
        });
    }
    agents[2].restart();
    let first = call.finish().await;
    let recovered = stopped.elapsed();
    assert_eq!(first.summary.ok, 3, "{:?}", first.results);
    let second = second.await.unwrap().unwrap();
    assert_eq!(second.summary.ok, 3, "{:?}", second.results);
    assert!(orch.reconnects() >= 1);

    // h3 ran the queued request once (the orchestrator's republished copy was answered
    // from the stored reply), and the second call once.
    let st3 = fleet.stats("h3");
    let executed = st3["executed"].as_u64().unwrap();
    // (The stats action reads the counters before it is itself counted.)
    assert_eq!(executed, 2, "h3 executed {executed}: {st3}");
    let st1 = fleet.stats("h1");
    assert!(st1["reconnects"].as_u64().unwrap() >= 1, "{st1}");
    observe(
        if persistent {
            "broker_restart_mid_fan_out_keeps_a_persistent_request_queued"
        } else {
            "broker_restart_mid_fan_out_ends_with_every_host_answered_once"
        },
        if persistent {
            "test broker node stopped and started mid fan-out (3 hosts, one persistent request queued)"
        } else {
            "test broker node stopped and started mid fan-out (3 hosts, one transient read queued)"
        },
        json!({"first_call_ok": first.summary.ok, "second_call_ok": second.summary.ok,
               "broker_down_ms": booted.as_millis() as u64,
               "call_end_after_stop_ms": recovered.as_millis() as u64,
               "orchestrator_reconnects": orch.reconnects(),
               "h3_executed": executed, "h3_received": st3["received"],
               "h3_queue_depth_after_boot": depth_after_boot,
               "h1_reconnects": st1["reconnects"]}),
    );
}

#[test]
fn agent_sigkill_while_starting_a_unit_leaves_it_started_once() {
    let fleet = Fleet::init("fkill", &["a"]);
    let sd = UserSystemd::start();
    let mut agent = fleet.start_agent_on("a", &sd);
    let work = sd.scratch("work");
    let starts = work.join("starts");
    let prog = write_program(
        &work,
        "svc.sh",
        &format!("echo started >> '{}'\nexec sleep 600", starts.display()),
    );
    let cfg = fleet.orchestrator_toml();
    let mut child = Command::new(bin("gearmq"))
        .args(["--config", cfg.to_str().unwrap()])
        .args(["install", "a", "svc", "--exec", prog.to_str().unwrap()])
        .args(["--start", "--json", "--timeout", "40s"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // SIGKILL as soon as systemd has started the program: the agent is between the
    // start and its outcome record or its reply.
    let t0 = Instant::now();
    while line_count(&starts) == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the unit never started"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let pid = agent.pid().unwrap();
    // Whether the kill came too late to matter (the CLI had its reply already).
    let answered_before_kill = child.try_wait().unwrap().is_some();
    signal(pid, "KILL");
    let killed_after = t0.elapsed();
    agent.restart();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    let r = &doc["results"][0];
    assert_eq!(r["status"], "ok", "{doc}");
    assert_eq!(r["data"]["state"]["active_state"], "active", "{doc}");
    // A later status agrees, and the program was started once.
    let st = fleet.cli(&["status", "a", "svc", "--json", "--timeout", "20s"]);
    assert_eq!(st.code, 0, "{}", st.stderr);
    assert_eq!(
        st.json()["results"][0]["data"]["units"][0]["active_state"],
        "active"
    );
    assert_eq!(
        line_count(&starts),
        1,
        "the program was started more than once"
    );
    let log = agent.log_text();
    observe(
        "agent_sigkill_while_starting_a_unit_leaves_it_started_once",
        "agent SIGKILLed while install --start ran (right after the program started)",
        json!({"program_starts": line_count(&starts), "unit_state": "active",
               "kill_after_ms": killed_after.as_millis() as u64,
               "cli_answered_before_kill": answered_before_kill,
               "redelivery_resolved_from_intent_record": log.contains("intent record"),
               "cli_exit": 0}),
    );
    let _ = fleet.cli(&["delete", "a", "svc", "--timeout", "20s"]);
}

#[test]
fn orchestrator_killed_mid_call_leaves_a_verifiable_log_and_a_new_one_works() {
    let fleet = Fleet::init("fcrash", &["a", "b"]);
    let _a = fleet.start_agent("a");
    let b = fleet.start_agent("b");
    // b is frozen: the call waits for it until the orchestrator dies.
    b.signal("STOP");
    let cfg = fleet.orchestrator_toml();
    let audit = fleet.path().join("audit.log");
    let before = std::fs::metadata(&audit).map(|m| m.len()).unwrap_or(0);
    let mut child = Command::new(bin("gearmq"))
        .args(["--config", cfg.to_str().unwrap()])
        .args(["ping", "--host", "a,b", "--timeout", "30s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed once the request and a's reply are on record (the log grows twice).
    wait_until("audit records of the call", Duration::from_secs(20), || {
        std::fs::metadata(&audit).map(|m| m.len()).unwrap_or(0) > before
    });
    std::thread::sleep(Duration::from_millis(300));
    signal(child.id(), "KILL");
    let _ = child.wait();
    b.signal("CONT");

    let v = fleet.verify_audit(&audit);
    assert_eq!(
        v.code, 0,
        "audit verify after a crash: {}{}",
        v.stdout, v.stderr
    );
    let t = Instant::now();
    let ping = fleet.cli(&["ping", "--host", "a,b", "--json", "--timeout", "20s"]);
    let took = t.elapsed();
    assert_eq!(ping.code, 0, "{}{}", ping.stdout, ping.stderr);
    assert_eq!(ping.json()["summary"]["ok"], 2);
    let v2 = fleet.verify_audit(&audit);
    assert_eq!(
        v2.code, 0,
        "audit verify after the next call: {}{}",
        v2.stdout, v2.stderr
    );
    observe(
        "orchestrator_killed_mid_call_leaves_a_verifiable_log_and_a_new_one_works",
        "gearmq CLI SIGKILLed mid-call (one host frozen)",
        json!({"audit_verify_after_crash": "ok", "audit_records": v.json()["records"],
               "next_call_ok": 2, "next_call_ms": took.as_millis() as u64}),
    );
}

/// Latency percentiles (ms) of `samples`.
fn percentiles(samples: &mut [Duration]) -> Value {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1000.0
    };
    json!({"n": samples.len(), "p50_ms": (at(0.5) * 10.0).round() / 10.0,
           "p95_ms": (at(0.95) * 10.0).round() / 10.0, "max_ms": (at(1.0) * 10.0).round() / 10.0})
}

async fn timed_pings(orch: &Orchestrator, host: &str, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = orch
            .request(ping_spec(&[host], Duration::from_secs(10)))
            .await
            .unwrap();
        assert_eq!(
            r.summary.ok, 1,
            "a valid request was not answered: {:?}",
            r.results
        );
        out.push(t.elapsed());
    }
    out
}

/// Invalid messages of each kind, as counted by the flood.
#[derive(Default, Debug)]
struct FloodCounts {
    random: u64,
    truncated: u64,
    bad_signature: u64,
    oversize: u64,
    replay_identical: u64,
    replay_other_bytes: u64,
}

impl FloodCounts {
    fn dead_letter_kinds(&self) -> u64 {
        self.random + self.truncated + self.bad_signature + self.oversize
    }
}

/// Publishes invalid messages straight onto `host`'s route until `stop` (at most
/// `max` of them), cycling through the kinds.
async fn flood(
    fleet: &Fleet,
    host: &str,
    max: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> FloodCounts {
    use gearmq_schemas::{Request, Targets};
    use lapin::BasicProperties;
    use lapin::options::BasicPublishOptions;
    let conn = fleet.amqp().await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let ops = fleet.operator();
    let signed = |expires_offset: u64| {
        let now = gearmq_schemas::time::now_ms();
        let req = Request::new(
            ops.name.clone(),
            now,
            now + 60_000 + expires_offset,
            Targets::Hosts(vec![Name::new(host).unwrap()]),
            "gearmq.reply.ops.flood".to_string(),
            ActionName::new("ping").unwrap(),
            codec::encode(&PingArgs {}),
        );
        (req.clone(), ops.seal(&req))
    };
    let (replayed, replay_bytes) = signed(0);
    let mut counts = FloodCounts::default();
    let route = format!("host.{host}");
    let mut i = 0u64;
    let mut last = None;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < max {
        let bytes = match i % 6 {
            0 => {
                counts.random += 1;
                random_bytes(1 + (gearmq_testkit::rand_u32() % 2048) as usize)
            }
            1 => {
                counts.truncated += 1;
                let b = signed(0).1;
                let cut = 1 + (gearmq_testkit::rand_u32() as usize % (b.len() - 1));
                b[..cut].to_vec()
            }
            2 => {
                counts.bad_signature += 1;
                let mut b = signed(0).1;
                let last = b.len() - 1;
                b[last] ^= 0x01;
                b
            }
            3 => {
                counts.oversize += 1;
                random_bytes(70_000)
            }
            4 => {
                counts.replay_identical += 1;
                replay_bytes.clone()
            }
            _ => {
                counts.replay_other_bytes += 1;
                let mut other = replayed.clone();
                other.expires_at += 1 + i;
                ops.seal(&other)
            }
        };
        let c = ch
            .basic_publish(
                "gearmq.requests".into(),
                route.as_str().into(),
                BasicPublishOptions::default(),
                &bytes,
                BasicProperties::default(),
            )
            .await
            .unwrap();
        last = Some(c);
        i += 1;
        // Keep the publisher from racing far ahead of the broker.
        if i.is_multiple_of(50)
            && let Some(c) = last.take()
        {
            c.await.unwrap();
        }
    }
    if let Some(c) = last {
        c.await.unwrap();
    }
    let _ = conn.close(200, "done".into()).await;
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_of_invalid_messages_leaves_valid_requests_answered_and_counts_every_one() {
    let fleet = Fleet::init("flood", &["a"]);
    let _agent =
        fleet.start_agent_with("a", &[("GEARMQ_AGENT__LIMITS__MAX_MESSAGE_BYTES", "65536")]);
    let orch = Orchestrator::connect(&fleet.orchestrator_config())
        .await
        .unwrap();
    const N: usize = 40;
    let mut quiet = timed_pings(&orch, "a", N).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood_task = flood(&fleet, "a", 6_000, stop.clone());
    let pings_task = async {
        // Let the flood get going first.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let l = timed_pings(&orch, "a", N).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        l
    };
    let t = Instant::now();
    let (counts, mut loaded) = tokio::join!(flood_task, pings_task);
    let flood_secs = t.elapsed().as_secs_f64();
    let invalid = counts.dead_letter_kinds();
    assert!(
        invalid >= 40,
        "the flood was too small to mean anything: {counts:?}"
    );

    // Every invalid message is dead-lettered and counted by reason; replays are
    // answered (identical: the stored reply; other bytes: refused as replayed).
    let deadline = Instant::now() + Duration::from_secs(60);
    let st = loop {
        let st = fleet.stats("a");
        if st["dead_lettered"].as_u64() == Some(invalid) || Instant::now() > deadline {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(
        st["dead_lettered"].as_u64(),
        Some(invalid),
        "{st}\n{counts:?}"
    );
    let refused = &st["refused"];
    assert_eq!(refused["oversize"].as_u64(), Some(counts.oversize), "{st}");
    assert_eq!(
        refused["bad_signature"].as_u64(),
        Some(counts.bad_signature),
        "{st}"
    );
    let undecodable: u64 = ["malformed", "malformed_body", "bad_credential"]
        .iter()
        .filter_map(|r| refused[*r].as_u64())
        .sum();
    assert_eq!(undecodable, counts.random + counts.truncated, "{st}");
    let dead = fleet.cli(&["dead", "list", "--json"]);
    assert_eq!(dead.code, 0, "{}", dead.stderr);
    // The queue's depth from the broker itself (the listing shows at most 100).
    let text = fleet.vhost.ctl(&[
        "list_queues",
        "-p",
        &fleet.vhost.name,
        "--no-table-headers",
        "name",
        "messages",
        "arguments",
    ]);
    let dead_line = text
        .lines()
        .find(|l| l.starts_with("gearmq.dead"))
        .unwrap_or_else(|| panic!("no gearmq.dead in {text}"));
    let dead_count: u64 = dead_line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        dead_line.contains("x-max-length"),
        "gearmq.dead is unbounded: {dead_line}"
    );
    assert!(dead_count <= 10_000, "gearmq.dead grew past its max-length");
    let quiet_p = percentiles(&mut quiet);
    let loaded_p = percentiles(&mut loaded);
    observe(
        "flood_of_invalid_messages_leaves_valid_requests_answered_and_counts_every_one",
        "invalid messages (random, truncated, bad signature, oversize, replays) on a host queue during valid pings",
        json!({"valid_answered": format!("{N}/{N}"),
               "invalid_sent": {"random": counts.random, "truncated": counts.truncated,
                   "bad_signature": counts.bad_signature, "oversize": counts.oversize,
                   "replay_identical": counts.replay_identical,
                   "replay_other_bytes": counts.replay_other_bytes},
               "flood_rate_per_s": ((invalid + counts.replay_identical + counts.replay_other_bytes) as f64 / flood_secs).round(),
               "agent_dead_lettered": st["dead_lettered"], "agent_refused": st["refused"],
               "agent_received": st["received"],
               "dead_queue_depth": dead_count, "dead_queue_max_length": 10_000,
               "latency_quiet": quiet_p, "latency_under_flood": loaded_p}),
    );
    orch.close().await;
}

/// A tiny tmpfs mounted over a directory (a disk that can be filled), unmounted on
/// drop.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", dir.display());
        SmallDisk {
            dir: dir.to_path_buf(),
        }
    }

    /// Fills the disk with a file of its own; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let p = self.dir.join("filler");
        let mut f = std::fs::File::create(&p).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        p
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// The journal's records are whole: 4-byte big-endian lengths that end exactly at
/// the end of the file.
fn journal_is_whole(path: &Path) -> (bool, usize) {
    let b = std::fs::read(path).unwrap();
    let (mut at, mut n) = (0usize, 0usize);
    while at + 4 <= b.len() {
        let len = u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize;
        if at + 4 + len > b.len() {
            return (false, n);
        }
        at += 4 + len;
        n += 1;
    }
    (at == b.len(), n)
}

#[test]
fn full_state_disk_refuses_new_requests_with_a_signed_error_and_recovers() {
    let fleet = Fleet::init("fdisk", &["a"]);
    let state = fleet.host_dir("a").join("state");
    let disk = SmallDisk::mount(&state, "1m");
    // The audit log lives on another disk here: see RELIABILITY.md for a full audit
    // disk.
    let audit_dir = tempfile::tempdir().unwrap();
    let audit = audit_dir.path().join("audit.log");
    let env = [("GEARMQ_AGENT__AUDIT__FILE", audit.to_str().unwrap())];
    let mut agent = fleet.start_agent_with("a", &env);
    let ping = |t: &str| fleet.cli(&["ping", "--host", "a", "--json", "--timeout", t]);
    let ok = ping("10s");
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);

    let filler = disk.fill();
    // The first request whose reply cannot be kept finds out (records may still fit
    // in the journal's last allocated page for a few requests); from then on new
    // requests are refused with a signed error naming the cause.
    let mut served_before_refusal = 0;
    let refusal = loop {
        let out = ping("10s");
        let doc = out.json();
        let r = doc["results"][0].clone();
        if r["status"] == "ok" {
            served_before_refusal += 1;
            // Records still fit in the journal's last allocated page for a while.
            assert!(
                served_before_refusal <= 20,
                "a full disk was never noticed: {doc}"
            );
            continue;
        }
        break r;
    };
    assert_eq!(refusal["status"], "error", "{refusal}");
    assert_eq!(refusal["code"], 5, "{refusal}");
    let msg = refusal["message"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains("not writable"), "{msg}");
    assert!(msg.contains("No space left on device"), "{msg}");
    let journal = state.join("replay.journal");
    let (whole, records_full) = journal_is_whole(&journal);
    assert!(
        whole,
        "the journal holds a partial record after the failed write"
    );

    // Space returns: the next request is served, and the journal is still whole.
    std::fs::remove_file(&filler).unwrap();
    let back = ping("10s");
    assert_eq!(back.code, 0, "{}{}", back.stdout, back.stderr);
    let (whole, records_after) = journal_is_whole(&journal);
    assert!(
        whole && records_after > records_full,
        "{records_full} -> {records_after}"
    );
    let st = fleet.stats("a");
    assert!(
        st["refused"]["state_unwritable"].as_u64().unwrap() >= 1,
        "{st}"
    );

    // A restart loads every record: nothing was damaged.
    assert_eq!(agent.terminate(), Some(0));
    agent.restart();
    let log = agent.log_text();
    assert!(!log.contains("damaged record"), "{log}");
    let again = ping("10s");
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    observe(
        "full_state_disk_refuses_new_requests_with_a_signed_error_and_recovers",
        "agent state dir on a 1 MiB tmpfs filled to ENOSPC, then freed",
        json!({"served_before_refusal": served_before_refusal,
               "refusal_code": 5, "refusal_message": msg,
               "journal_whole_after_failure": true,
               "journal_records": {"at_failure": records_full, "after_recovery": records_after},
               "refused_state_unwritable": st["refused"]["state_unwritable"],
               "restart_loaded_cleanly": true}),
    );
    drop(agent);
    drop(disk);
}

#[test]
fn full_audit_disk_holds_the_reply_back_without_a_busy_loop_until_space_returns() {
    let fleet = Fleet::init("faudit", &["a"]);
    // The agent's audit log alone on a 1 MiB disk; its state dir stays on the big one.
    let audit_dir = fleet.path().join("audit-disk");
    let disk = SmallDisk::mount(&audit_dir, "1m");
    let audit = audit_dir.join("audit.log");
    let env = [("GEARMQ_AGENT__AUDIT__FILE", audit.to_str().unwrap())];
    let agent = fleet.start_agent_with("a", &env);
    let ok = fleet.cli(&["ping", "--host", "a", "--json", "--timeout", "10s"]);
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);

    let filler = disk.fill();
    let failed_lines = |log: &str| {
        log.lines()
            .filter(|l| l.contains("audit log write failed"))
            .count()
    };
    let before = failed_lines(&agent.log_text());
    let cfg = fleet.orchestrator_toml();
    let pinger = std::thread::spawn(move || {
        let out = gearmq_testkit::run_cli(&[
            "--config",
            cfg.to_str().unwrap(),
            "ping",
            "--host",
            "a",
            "--json",
            "--timeout",
            "30s",
        ]);
        (out.code, out.json())
    });
    // Never a reply that is not on record: the request waits, retried once a second
    // (the requeue pause), not in a busy loop.
    let held = Duration::from_secs(4);
    std::thread::sleep(held);
    assert!(
        !pinger.is_finished(),
        "a reply went out while the audit log could not record it"
    );
    let retries = failed_lines(&agent.log_text()) - before;
    assert!(
        (1..=8).contains(&retries),
        "{retries} failed audit writes in {held:?}: expected about one a second"
    );

    // Space returns: the held request is answered, on record.
    std::fs::remove_file(&filler).unwrap();
    let (code, doc) = pinger.join().unwrap();
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["results"][0]["status"], "ok", "{doc}");
    let v = fleet.verify_audit(&audit);
    assert_eq!(v.code, 0, "agent audit log: {}{}", v.stdout, v.stderr);
    observe(
        "full_audit_disk_holds_the_reply_back_without_a_busy_loop_until_space_returns",
        "agent audit log alone on a 1 MiB tmpfs filled to ENOSPC for 4 s, then freed",
        json!({"reply_held_while_full": true,
               "failed_audit_writes_in_4s": retries,
               "answered_after_space_returned": true,
               "audit_log_verifies": true,
               "audit_records": v.json()["records"]}),
    );
    drop(agent);
    drop(disk);
}
