//! Attacks from a hostile review, each shown closed end to end: real agents, a real
//! `systemd --user` per host where units are involved, the real broker and CLI.
//! RELIABILITY.md's "Attacks" table points here.

use gearmq_schemas::audit::peek_signed;
use gearmq_schemas::{Name, Request, Targets};
use gearmq_testkit::{Fleet, RawCaller, Streaming, UserSystemd, observe, stat, write_program};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The main PID of `unit` on `host`.
fn main_pid(fleet: &Fleet, host: &str, unit: &str) -> u64 {
    let out = fleet.cli(&["status", host, unit, "--json", "--timeout", "30s"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let doc = out.json();
    doc["results"][0]["data"]["units"][0]["main_pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no main pid: {doc}"))
}

/// Publishes `bytes` to each of `hosts` and checks that every one of them counted it
/// as not for it and executed nothing because of it.
async fn forwarded_copy_is_ignored(fleet: &Fleet, bytes: &[u8], hosts: &[&str]) {
    for h in hosts {
        let before = fleet.stats(h);
        fleet.forward_request(bytes, h).await;
        fleet.expect_not_target(h, &before, 1);
    }
}

/// Runs `args` with the CLI and returns the requests it sent, in order.
fn sent_by(fleet: &Fleet, args: &[&str]) -> Vec<Vec<u8>> {
    let n0 = fleet.sent_requests().len();
    let out = fleet.cli(args);
    assert_eq!(out.code, 0, "{args:?}: {}{}", out.stdout, out.stderr);
    fleet.sent_requests().split_off(n0)
}

fn signed_targets(request: &[u8]) -> Targets {
    peek_signed::<Request>(request, 1 << 20).unwrap().0.targets
}

fn hosts(names: &[&str]) -> Targets {
    Targets::hosts(names.iter().map(|n| Name::new(*n).unwrap()))
}

/// `--limit 1` and each `--batch 1` sign exactly the hosts they publish to: the copy
/// sent to `a`, published unchanged to `b` and `c`, is not for them. Of ping and of
/// restart (which would otherwise give `b`'s and `c`'s service a new main PID).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_copy_of_a_limited_or_batched_call_runs_nowhere_else() {
    let fleet = Fleet::init("atk-scope", &["a", "b", "c"]);
    let systemds: Vec<UserSystemd> = (0..3).map(|_| UserSystemd::start()).collect();
    let _agents: Vec<_> = ["a", "b", "c"]
        .iter()
        .zip(&systemds)
        .map(|(h, sd)| fleet.start_agent_on(h, sd))
        .collect();
    let work = tempfile::tempdir().unwrap();
    let prog = write_program(work.path(), "svc.sh", "exec sleep 600");
    let out = fleet.cli(&[
        "install",
        "@all",
        "svc",
        "--exec",
        prog.to_str().unwrap(),
        "--start",
        "--json",
        "--timeout",
        "30s",
    ]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);

    // A call to everything its selector denotes may sign the selector itself.
    let whole = sent_by(&fleet, &["ping", "--all", "--json"]);
    assert_eq!(signed_targets(&whole[0]), Targets::All);

    for (what, args) in [
        ("ping --limit 1", vec!["ping", "--all", "--limit", "1"]),
        ("ping --batch 1", vec!["ping", "--all", "--batch", "1"]),
        (
            "restart --limit 1",
            vec!["restart", "@all", "svc", "--limit", "1"],
        ),
        (
            "restart --batch 1",
            vec!["restart", "@all", "svc", "--batch", "1"],
        ),
    ] {
        let mut args = args;
        args.extend(["--json", "--timeout", "30s"]);
        let sent = sent_by(&fleet, &args);
        let expected_requests = if what.contains("batch") { 3 } else { 1 };
        assert_eq!(sent.len(), expected_requests, "{what}");
        for (i, host) in ["a", "b", "c"].iter().take(sent.len()).enumerate() {
            assert_eq!(
                signed_targets(&sent[i]),
                hosts(&[host]),
                "{what}: request {i}"
            );
        }
        // The canary's (or the limited call's) bytes, forwarded to the others.
        let pids: Vec<u64> = ["b", "c"]
            .iter()
            .map(|h| main_pid(&fleet, h, "svc"))
            .collect();
        forwarded_copy_is_ignored(&fleet, &sent[0], &["b", "c"]).await;
        let after: Vec<u64> = ["b", "c"]
            .iter()
            .map(|h| main_pid(&fleet, h, "svc"))
            .collect();
        assert_eq!(pids, after, "{what}: a forwarded copy restarted a service");
    }
}

/// Appends `lines` to the `[limits]` of `host`'s agent.toml (a section of its own).
fn set_limits(fleet: &Fleet, host: &str, lines: &str) {
    fleet.append_agent_toml(host, &format!("[limits]\n{lines}"));
}

/// A credential with no rights sends 20,000 requests with fresh ids and the longest
/// lifetime the agent accepts: each is refused before the replay store is asked, so
/// the store holds nothing of them and the operator is served at once after. And an id
/// first used by another signer (allowed or not) is no replay of the operator's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_reserve_no_ids_and_cannot_fill_the_replay_store() {
    use gearmq_schemas::actions::PingArgs;
    use gearmq_schemas::{Status, codec};
    use uuid::Uuid;
    const FLOOD: u64 = 20_000;
    let fleet = Fleet::init("atk-replay", &["a"]);
    // 20,000 stored refusals (~1 KB each) would fill a 4 MiB store.
    set_limits(&fleet, "a", "max_stored_reply_bytes = 4194304");
    let _agent = fleet.start_agent("a");
    let ping = codec::encode(&PingArgs {});
    let lifetime = Duration::from_secs(3600); // the agent's default cap

    let nobody = RawCaller::connect(&fleet.url(), fleet.mint_operator("nobody", &[])).await;
    let before = fleet.stats("a");
    let started = Instant::now();
    // A flooder that gets its requests in: each one the full queue refuses (a nack,
    // reject-publish) is published again until the broker takes it.
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let mut sent = 0;
    while sent < FLOOD || !batch.is_empty() {
        while batch.len() < 1000 && sent < FLOOD {
            // Replies go to a queue nobody declared: the agent's publish comes back
            // unroutable, as for a flood whose sender does not listen.
            batch.push(nobody.request(
                Uuid::now_v7(),
                "a",
                "ping",
                ping.clone(),
                lifetime,
                Some("gearmq.reply.nobody.gone"),
            ));
            sent += 1;
        }
        let mut confirms = Vec::new();
        for bytes in &batch {
            confirms.push(nobody.publish(bytes, "a").await);
        }
        let mut refused = Vec::new();
        for (bytes, c) in batch.drain(..).zip(confirms) {
            if c.await.unwrap().is_nack() {
                refused.push(bytes);
            }
        }
        if !refused.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        batch = refused;
    }
    let mut polls = 0u64;
    let after = loop {
        let s = fleet.stats("a");
        polls += 1;
        let refused = s["refused"]["unauthorized"].as_u64().unwrap_or(0);
        if refused >= FLOOD {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "only {refused} of {FLOOD} refused so far: {s}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let flood_s = started.elapsed().as_secs_f64();
    assert_eq!(after["refused"]["unauthorized"], FLOOD, "{after}");
    // Only the operator's own stats calls were kept (each is an executed request).
    assert_eq!(
        stat(&after, "replay_entries"),
        stat(&before, "replay_entries") + polls,
        "{before} -> {after}"
    );
    nobody.close().await;
    observe(
        "refusals_reserve_no_ids_and_cannot_fill_the_replay_store",
        "20,000 fresh-id requests from a credential with no rights",
        serde_json::json!({
            "refused_unauthorized": after["refused"]["unauthorized"],
            "seconds": (flood_s * 10.0).round() / 10.0,
            "replay_entries_added_by_the_flood": stat(&after, "replay_entries")
                - stat(&before, "replay_entries") - polls,
        }),
    );

    // The operator is served right after.
    let out = fleet.cli(&["ping", "--host", "a", "--json"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);

    // Ids first used by others: an allowed operator, and one without rights.
    let mut ops = RawCaller::connect(&fleet.url(), fleet.operator()).await;
    let mut ops2 = RawCaller::connect(&fleet.url(), fleet.mint_operator("ops2", &["ping"])).await;
    let mut none = RawCaller::connect(&fleet.url(), fleet.mint_operator("nobody", &[])).await;
    let wait = Duration::from_secs(10);
    for (squatter, expect) in [(&mut ops2, Status::Ok), (&mut none, Status::Unauthorized)] {
        let id = Uuid::now_v7();
        let first = squatter.request(id, "a", "ping", ping.clone(), lifetime, None);
        assert_eq!(squatter.call(&first, "a", wait).await.status, expect);
        let mine = ops.request(id, "a", "ping", ping.clone(), lifetime, None);
        let r = ops.call(&mine, "a", wait).await;
        assert_eq!(
            r.status,
            Status::Ok,
            "the operator's request with an id {} used first: {:?}",
            squatter.identity.name,
            r.error
        );
        // The operator's own id with other bytes is still a replay.
        let shorter = lifetime - Duration::from_secs(1);
        let again = ops.request(id, "a", "ping", ping.clone(), shorter, None);
        let r = ops.call(&again, "a", wait).await;
        assert_eq!(r.status, Status::Replayed, "{:?}", r.error);
    }
    for c in [ops, ops2, none] {
        c.close().await;
    }
    let v = fleet.verify_audit(&fleet.agent_audit_log("a"));
    assert_eq!(v.code, 0, "{}{}", v.stdout, v.stderr);
}

/// The audit log files of `log` (rotated ones first, oldest first, then `log`).
fn log_family(log: &Path) -> Vec<PathBuf> {
    let dir = log.parent().unwrap();
    let name = log.file_name().unwrap().to_str().unwrap();
    let mut rotated: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let n = e
                .file_name()
                .to_str()?
                .strip_prefix(&format!("{name}."))?
                .parse()
                .ok()?;
            Some((n, e.path()))
        })
        .collect();
    rotated.sort();
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    files.push(log.to_path_buf());
    files
}

fn log_bytes(files: &[PathBuf]) -> u64 {
    files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// One captured request published to a host's queue over and over: an expired one (each
/// copy refused the same way) and an answered one (each copy an identical redelivery).
/// The first copy is recorded in full, every later one by two digests, with the same
/// reply bytes sent again; the agent's log rotates by size and the rotated family
/// verifies as one chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_requests_cost_the_agent_log_a_digest_and_the_log_rotates_by_size() {
    use gearmq_schemas::actions::PingArgs;
    use gearmq_schemas::{Status, codec};
    use uuid::Uuid;
    const COPIES: usize = 200;
    let fleet = Fleet::init("atk-repeat", &["a"]);
    fleet.append_agent_toml("a", "[audit]\nmax_bytes = 65536");
    let _agent = fleet.start_agent("a");
    let log = fleet.agent_audit_log("a");
    let ping = codec::encode(&PingArgs {});
    let mut ops = RawCaller::connect(&fleet.url(), fleet.operator()).await;
    let wait = Duration::from_secs(10);

    let expired = ops.expired_request(Uuid::now_v7(), "a", "ping", ping.clone());
    let answered = ops.request(
        Uuid::now_v7(),
        "a",
        "ping",
        ping.clone(),
        Duration::from_secs(600),
        None,
    );
    for (what, bytes, status) in [
        ("expired", &expired, Status::Expired),
        ("answered", &answered, Status::Ok),
    ] {
        let first = ops.call(bytes, "a", wait).await;
        assert_eq!(first.status, status, "{what}: {:?}", first.error);
        let before = fleet.stats("a");
        let size_before = log_bytes(&log_family(&log));
        for _ in 0..COPIES {
            ops.publish(bytes, "a").await.await.unwrap();
        }
        for i in 0..COPIES {
            let r = ops.call_next(wait).await;
            // The very reply sent for the first copy, every time.
            assert_eq!(
                (r.started_at, r.finished_at, r.status),
                (first.started_at, first.finished_at, first.status),
                "{what}: copy {i}"
            );
        }
        let after = fleet.stats("a");
        let repeats = stat(&after, "audited_repeats") - stat(&before, "audited_repeats");
        assert_eq!(repeats, COPIES as u64, "{what}: {before} -> {after}");
        let grown = log_bytes(&log_family(&log)) - size_before;
        // A repeat record is ~650 bytes (two digests, and the chain fields, signature
        // and writer credential every record has); a full one also holds the request
        // and the reply (~1.8 KB). The one stats call adds ~10 bytes a copy here.
        let per_copy = grown / COPIES as u64;
        observe(
            "repeated_requests_cost_the_agent_log_a_digest_and_the_log_rotates_by_size",
            what,
            serde_json::json!({
                "copies": COPIES,
                "recorded_by_digest": repeats,
                "log_bytes_per_copy": per_copy,
            }),
        );
        assert!(per_copy < 800, "{what}: {per_copy} bytes a copy");
    }
    ops.close().await;

    // Several files by now (64 KiB each), verified as one chain.
    let files = log_family(&log);
    assert!(files.len() >= 3, "{files:?}");
    let files: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let out = fleet.verify_audit_files(&files, &["--json"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    // The newest file alone is not a chain (it starts with a rotation record).
    let last_only = fleet.verify_audit(files.last().unwrap());
    assert_ne!(last_only.code, 0, "{}", last_only.stdout);
}

/// A flood into a host's queue while its agent is down: the queue keeps what it holds
/// (the operator's request queued first is answered once the agent is back) and the
/// broker refuses what does not fit, with a nack the flooder sees; a request sent while
/// the queue is full is reported refused, not lost silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_host_queue_refuses_new_requests_instead_of_dropping_queued_ones() {
    use gearmq_orchestrator::Orchestrator;
    use gearmq_testkit::{hosts, ping_spec};
    use lapin::options::BasicPublishOptions;
    let fleet = Fleet::init("atk-overflow", &["a"]);
    let mut agent = fleet.start_agent("a");
    // The agent declared its queue; now it is down.
    assert_eq!(agent.terminate(), Some(0));

    let orch = Orchestrator::connect(&fleet.orchestrator_config())
        .await
        .unwrap();
    let spec = |timeout| ping_spec(hosts(&["a"]), timeout);
    let queued = orch.start(spec(Duration::from_secs(90))).await.unwrap();

    // 10,000 fit in the queue (one is the operator's request); 200 more do not.
    let conn = fleet.amqp().await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let mut confirms = Vec::new();
    for i in 0..10_199u32 {
        let c = ch
            .basic_publish(
                "gearmq.requests".into(),
                "host.a".into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                lapin::BasicProperties::default(),
            )
            .await
            .unwrap();
        confirms.push(c);
    }
    let mut nacked = 0;
    for c in confirms {
        if c.await.unwrap().is_nack() {
            nacked += 1;
        }
    }
    assert_eq!(nacked, 200, "the broker refused what did not fit");

    // While it is full, a new request is refused, and the caller says so.
    let refused = orch
        .start(spec(Duration::from_secs(2)))
        .await
        .unwrap()
        .finish()
        .await;
    assert_eq!(refused.summary.ok, 0);
    let detail = refused.results[0].message.clone().unwrap_or_default();
    assert!(detail.contains("refused"), "{detail}");

    // Back up: the request queued first is answered (the junk is dead-lettered).
    let _agent = fleet.start_agent("a");
    let r = queued.finish().await;
    assert_eq!(r.summary.ok, 1, "{:?}", r.results);
    orch.close().await;
    let _ = conn.close(200, "done".into()).await;
}

/// `gearmq logs HOST UNIT --follow --json` running in the background, and every
/// document it printed so far.
struct Follow {
    cli: Streaming,
    seen: Vec<Value>,
}

impl Follow {
    fn start(fleet: &Fleet, host: &str, unit: &str, timeout: &str) -> Follow {
        let cfg = fleet.orchestrator_toml();
        let cli = Streaming::start(&[
            "--config",
            cfg.to_str().unwrap(),
            "logs",
            host,
            unit,
            "--lines",
            "1",
            "--follow",
            "--json",
            "--timeout",
            timeout,
        ]);
        Follow {
            cli,
            seen: Vec::new(),
        }
    }

    /// Waits for the next line that is a streamed reply with `seq`.
    fn wait_seq(&mut self, seq: u64, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self.cli.next_json(&format!("reply {seq}"), left);
            self.seen.push(v.clone());
            if v["seq"].as_u64() == Some(seq) {
                return v;
            }
        }
    }

    /// Ctrl-C (a signed cancel), then every line printed, from the first, until exit.
    fn stop(self) -> Vec<Value> {
        let (_, rest) = self.cli.interrupt(Duration::from_secs(30));
        let mut all = self.seen;
        all.extend(
            rest.iter()
                .map(|l| serde_json::from_str::<Value>(l).unwrap()),
        );
        all
    }
}

/// How many lines of `all` are the streamed reply `seq`.
fn shown(all: &[Value], seq: u64) -> usize {
    all.iter()
        .filter(|v| v["seq"].as_u64() == Some(seq))
        .count()
}

/// The genuine signed seq-0 reply of the agent's first `logs --follow` stream, from its
/// audit log (where it is recorded with the request).
fn first_partial_reply(fleet: &Fleet, host: &str) -> Vec<u8> {
    use gearmq_schemas::audit::{Entry, frames, read_record};
    let log = fleet.host_dir(host).join("state").join("audit.log");
    let bytes = std::fs::read(log).unwrap();
    frames(&bytes)
        .filter_map(|f| match read_record(f.ok()?.bytes).ok()?.record.entry {
            Entry::RequestHandled {
                reply: Some(reply), ..
            } => Some(reply.into_vec()),
            _ => None,
        })
        .find(|r| {
            peek_signed::<gearmq_schemas::Reply>(r, 1 << 20)
                .is_ok_and(|(b, _)| !b.is_final && b.seq == 0)
        })
        .expect("a seq-0 partial reply in the agent's log")
}

/// The `gearmq` CLI's reply queue on the fleet's vhost (one CLI running).
fn cli_reply_queue(fleet: &Fleet) -> String {
    fleet
        .vhost
        .queues()
        .into_iter()
        .map(|q| q.name)
        .find(|q| q.starts_with("gearmq.reply.ops."))
        .expect("the CLI's reply queue")
}

fn install_ticker(fleet: &Fleet, host: &str, dir: &Path) {
    let prog = write_program(
        dir,
        "tick.sh",
        "i=0\nwhile true; do i=$((i+1)); echo \"tick $i\"; sleep 0.2; done",
    );
    let out = fleet.cli(&[
        "install",
        host,
        "ticker",
        "--exec",
        prog.to_str().unwrap(),
        "--start",
        "--timeout",
        "30s",
    ]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
}

fn orchestrator_log_verifies(fleet: &Fleet) {
    let v = fleet.verify_audit(&fleet.audit_log());
    assert_eq!(v.code, 0, "{}{}", v.stdout, v.stderr);
}

/// A host's genuine seq-0 partial delivered a second time into the caller's reply queue
/// during `logs --follow`: shown once, counted as a duplicate, and the caller's audit
/// log (which records it as rejected, not accepted) verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_reply_delivered_twice_is_shown_once_and_the_log_verifies() {
    let fleet = Fleet::init("atk-seq", &["a"]);
    let sd = UserSystemd::start();
    let _agent = fleet.start_agent_on("a", &sd);
    let work = tempfile::tempdir().unwrap();
    install_ticker(&fleet, "a", work.path());

    let mut follow = Follow::start(&fleet, "a", "ticker", "60s");
    follow.wait_seq(0, Duration::from_secs(20));
    follow.wait_seq(1, Duration::from_secs(20));
    let again = first_partial_reply(&fleet, "a");
    let queue = cli_reply_queue(&fleet);
    let sent = fleet
        .publish("gearmq.replies", &queue, &again, Some("guest"))
        .await;
    assert_eq!(sent, Ok(true));
    follow.wait_seq(3, Duration::from_secs(20));
    let all = follow.stop();
    let summary = all.last().expect("summary");
    assert_eq!(summary["summary"]["duplicates"], 1, "{summary}");
    assert_eq!(shown(&all, 0), 1, "{all:?}");
    orchestrator_log_verifies(&fleet);
}

/// The broker drops every connection mid-stream: the caller reconnects and publishes its
/// request again, the agent answers with the stored seq-0 reply, which the caller takes
/// as the duplicate it is, and the stream goes on on the agent's new session with the
/// next seq. Every reply is shown once and the caller's audit log verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_by_a_dropped_connection_takes_nothing_twice_and_the_log_verifies() {
    let fleet = Fleet::init("atk-seqdrop", &["a"]);
    let sd = UserSystemd::start();
    let _agent = fleet.start_agent_on("a", &sd);
    let work = tempfile::tempdir().unwrap();
    install_ticker(&fleet, "a", work.path());

    let mut follow = Follow::start(&fleet, "a", "ticker", "60s");
    follow.wait_seq(1, Duration::from_secs(20));
    fleet.vhost.close_connections("test: dropped");
    // Reconnected and answered again: the stored seq 0 came back and was refused.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sent = fleet.stats("a");
        if stat(&sent, "resent") >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the agent never resent: {sent}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The stream goes on where it was cut, on the agent's new session.
    follow.wait_seq(5, Duration::from_secs(30));
    let all = follow.stop();
    let summary = all.last().expect("summary");
    assert_eq!(summary["summary"]["ok"], 1, "{summary}");
    assert!(
        summary["summary"]["duplicates"].as_u64() >= Some(1),
        "{summary}"
    );
    for seq in 0..=5 {
        assert_eq!(shown(&all, seq), 1, "reply {seq}: {all:?}");
    }
    orchestrator_log_verifies(&fleet);
}

/// Peak resident memory of process `pid` while `running` holds, sampled every 10 ms.
fn sample_rss(
    pid: u32,
    running: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0u64;
        while running.load(std::sync::atomic::Ordering::Relaxed) {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            if let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak = peak.max(kb * 1024);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        peak
    })
}

/// Publishes `n` copies of what `make` returns into reply queue `queue` on a connection
/// of its own; returns how many the broker took (acked) and refused (nacked).
async fn flood_replies(
    fleet: &Fleet,
    queue: String,
    n: usize,
    make: fn() -> Vec<u8>,
) -> (u64, u64) {
    let conn = fleet.amqp().await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let (mut acked, mut nacked) = (0, 0);
    let mut confirms = Vec::new();
    for i in 0..n {
        let c = ch
            .basic_publish(
                "gearmq.replies".into(),
                queue.as_str().into(),
                Default::default(),
                &make(),
                lapin::BasicProperties::default(),
            )
            .await
            .unwrap();
        confirms.push(c);
        if confirms.len() == 500 || i + 1 == n {
            for c in confirms.drain(..) {
                if c.await.unwrap().is_nack() {
                    nacked += 1;
                } else {
                    acked += 1;
                }
            }
        }
    }
    let _ = conn.close(200, "done".into()).await;
    (acked, nacked)
}

/// Four publishers at once push 100,000 junk messages into a waiting call's reply queue
/// (half random bytes, half replies validly signed by host b that claim to be host a's
/// answer to the call) while the CLI is frozen: the broker holds 20,000 (the queue's
/// limit) and refuses the rest, since the CLI takes at most 256 unacked. Then the call
/// completes with the right results, its summary counts every junk message the broker
/// took, the CLI's memory stays under 64 MiB, its warnings and its audit log grow by a
/// bounded number of lines and records (the first 64 rejected per call and per window,
/// the rest in summaries; under 1 MiB), and the log verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_flood_from_several_publishers_is_bounded_counted_and_on_record() {
    use gearmq_testkit::signal;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, OnceLock};
    const PER_PUBLISHER: usize = 25_000;
    const RSS_BOUND: u64 = 64 << 20;
    const LOG_GROWTH_BOUND: u64 = 1 << 20;
    let fleet = Fleet::init("atk-rflood", &["a", "b"]);
    let cfg = fleet.orchestrator_toml();
    // A smaller queue than the default, so that the flood meets its limit.
    fleet.edit_orchestrator_toml(|t| {
        t.replacen(
            "[broker]\n",
            "[broker]\nreply_queue_max_length = 20000\n",
            1,
        )
    });
    let _a = fleet.start_agent("a");
    let b = fleet.start_agent("b");
    // b answers only after the flood, so the call waits through it.
    b.signal("STOP");
    let log = fleet.audit_log();
    let n0 = fleet.sent_requests().len();
    let log_before = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);

    let err_dir = tempfile::tempdir().unwrap();
    let err_path = err_dir.path().join("stderr");
    let mut cli = std::process::Command::new(gearmq_testkit::bin("gearmq"))
        .args(["--config", cfg.to_str().unwrap(), "ping", "--host", "a,b"])
        .args(["--json", "--timeout", "90s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let running = Arc::new(AtomicBool::new(true));
    let rss = sample_rss(cli.id(), running.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    let request = loop {
        if let Some(r) = fleet.sent_requests().get(n0) {
            break r.clone();
        }
        assert!(Instant::now() < deadline, "the CLI sent no request");
        std::thread::sleep(Duration::from_millis(20));
    };
    let queue = cli_reply_queue(&fleet);
    let (req, _) = peek_signed::<Request>(&request, 1 << 20).unwrap();
    let body = gearmq_schemas::Signed::decode(&request, 1 << 20)
        .unwrap()
        .body;
    static FORGED: OnceLock<Vec<u8>> = OnceLock::new();
    let reply = fleet
        .host_identity("b")
        .reply(req.id, gearmq_schemas::sha256(&body), "a");
    FORGED.get_or_init(|| reply);
    fn junk() -> Vec<u8> {
        gearmq_testkit::random_bytes(200 + (gearmq_testkit::rand_u32() % 800) as usize)
    }
    fn forged() -> Vec<u8> {
        FORGED.get().cloned().unwrap_or_default()
    }
    // The CLI is frozen through the flood: what it does not take waits in the broker,
    // up to the queue's limit; past it the broker refuses (the flooders' nacks).
    signal(cli.id(), "STOP");
    let started = Instant::now();
    let floods = futures_util::future::join_all([
        flood_replies(&fleet, queue.clone(), PER_PUBLISHER, junk),
        flood_replies(&fleet, queue.clone(), PER_PUBLISHER, junk),
        flood_replies(&fleet, queue.clone(), PER_PUBLISHER, forged),
        flood_replies(&fleet, queue.clone(), PER_PUBLISHER, forged),
    ])
    .await;
    let (junk_taken, forged_taken) = (floods[0].0 + floods[1].0, floods[2].0 + floods[3].0);
    let refused: u64 = floods.iter().map(|f| f.1).sum();
    let flood_s = started.elapsed().as_secs_f64();
    let taken = junk_taken + forged_taken;
    assert!(
        (20_000..=20_000 + 256).contains(&taken),
        "the queue's limit (20,000, and 256 in flight) held: {taken} taken"
    );
    assert_eq!(refused, 4 * PER_PUBLISHER as u64 - taken);
    signal(cli.id(), "CONT");
    b.signal("CONT");

    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(s) = cli.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = cli.kill();
            let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
            panic!(
                "the call did not end: {:?}\n{}",
                fleet.vhost.queues(),
                stderr.lines().rev().take(40).collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    running.store(false, Ordering::Relaxed);
    let peak = rss.join().unwrap();
    let mut stdout = String::new();
    use std::io::Read;
    cli.stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    // Rejections are logged like they are recorded: a bounded number of lines.
    let warned = stderr.matches("reply rejected").count();
    assert!(warned <= 2 * 64 + 8, "{warned} lines of warnings");
    assert_eq!(status.code(), Some(0), "{stdout}\n{stderr}");
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    let summary = &doc["summary"];
    assert_eq!(summary["ok"], 2, "{summary}");
    assert_eq!(summary["audit_missing"], 0, "{summary}");
    assert_eq!(summary["rejected"]["forged"], forged_taken, "{summary}");
    assert_eq!(summary["rejected"]["malformed"], junk_taken, "{summary}");
    let grown = std::fs::metadata(&log).unwrap().len() - log_before;
    observe(
        "a_reply_flood_from_several_publishers_is_bounded_counted_and_on_record",
        "100,000 junk replies from 4 publishers into a frozen CLI's reply queue",
        serde_json::json!({
            "flood_seconds": (flood_s * 10.0).round() / 10.0,
            "broker_took": taken,
            "broker_refused": refused,
            "summary_forged": summary["rejected"]["forged"],
            "summary_malformed": summary["rejected"]["malformed"],
            "cli_peak_rss_mib": (peak as f64 / 1048576.0 * 10.0).round() / 10.0,
            "audit_log_growth_kib": grown / 1024,
        }),
    );
    assert!(peak > 0 && peak < RSS_BOUND, "peak RSS {peak}");
    assert!(grown < LOG_GROWTH_BOUND, "audit log grew {grown} bytes");
    let v = fleet.verify_audit(&log);
    assert_eq!(v.code, 0, "{}{}", v.stdout, v.stderr);
    let verified: Value = serde_json::from_str(&v.stdout).unwrap();
    assert_eq!(verified["rejection_summaries"], 2, "{verified}");
    assert_eq!(
        verified["rejected"].as_u64().unwrap() + verified["rejected_summarised"].as_u64().unwrap(),
        taken,
        "every junk message the broker took is on record, alone or summed: {verified}"
    );
}

/// An agent whose message limit would let in a request that an audit record cannot
/// hold with its reply does not start: no request is ever run (or refused) off the
/// record. (Before, with a 2 MiB limit, a 1.5 MiB request was refused at its arguments
/// and its refusal, too big for a record, was sent unrecorded.)
#[test]
fn an_agent_whose_requests_could_outgrow_an_audit_record_does_not_start() {
    let fleet = Fleet::init("atk-recsize", &["a"]);
    set_limits(&fleet, "a", "max_message_bytes = 2097152");
    let config = fleet.agent_toml("a");
    let out =
        gearmq_testkit::run_program("gearmq-agent", &["--config", config.to_str().unwrap()], &[]);
    let stderr = out.stderr;
    assert_eq!(out.code, 2, "{stderr}");
    assert!(
        stderr.contains("limits.max_message_bytes") && stderr.contains("audit record"),
        "{stderr}"
    );
}
