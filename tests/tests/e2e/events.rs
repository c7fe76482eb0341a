//! Signed presence and unit events, end to end: real agents publishing `started`,
//! `alive`, `stopping` and unit events to `gearmq.events`, the library's watch
//! verifying them and keeping the presence view, the CLI's `hosts` and `watch`, and a
//! real `systemd --user` whose units fail and are restarted.

use gearmq_orchestrator::{
    EventWatch, Orchestrator, OrchestratorConfig, PresenceState, VerifiedEvent, WatchOptions,
};
use gearmq_schemas::Signed;
use gearmq_schemas::event::{Event, UnitChange, What};
use gearmq_schemas::time::now_ms;
use gearmq_testkit::systemd::UserSystemd;
use gearmq_testkit::{Fleet, name};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Agents of these tests send `alive` every second.
const FAST: &str = "[events]\ninterval = \"1s\"\n";

fn fast_fleet(tag: &str, hosts: &[&str]) -> Fleet {
    let fleet = Fleet::init(tag, hosts);
    for h in hosts {
        fleet.append_agent_toml(h, FAST);
    }
    fleet
}

async fn watch(fleet: &Fleet, since: Duration) -> (Orchestrator, EventWatch) {
    watch_with(&fleet.orchestrator_config(), since).await
}

async fn watch_with(config: &OrchestratorConfig, since: Duration) -> (Orchestrator, EventWatch) {
    let orch = Orchestrator::connect(config)
        .await
        .expect("orchestrator connects");
    let w = orch
        .events(WatchOptions {
            since,
            record: true,
            yield_events: true,
            // The default (five minutes): within a test, no routine alive is recorded.
            ..WatchOptions::default()
        })
        .await
        .expect("watch starts");
    (orch, w)
}

fn state_of(w: &EventWatch, host: &str) -> PresenceState {
    w.presence()
        .into_iter()
        .find(|p| p.host.as_str() == host)
        .unwrap_or_else(|| panic!("{host} is not in the presence view"))
        .state
}

/// Waits until `host` is in `state`; how long that took.
async fn wait_state(w: &EventWatch, host: &str, state: PresenceState, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if state_of(w, host) == state {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{host} not {state:?} within {limit:?}: {:?}",
            w.presence()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next verified event `pick` wants (others are passed over), within `limit`.
async fn next_event(
    w: &mut EventWatch,
    limit: Duration,
    mut pick: impl FnMut(&VerifiedEvent) -> bool,
) -> VerifiedEvent {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, w.next()).await {
            Ok(Some(ev)) if pick(&ev) => return ev,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the watch ended"),
            Err(_) => panic!("no such event within {limit:?}"),
        }
    }
}

fn unit_event(ev: &VerifiedEvent, want_unit: &str) -> Option<(UnitChange, u32, String)> {
    match &ev.what {
        What::Unit {
            unit,
            change,
            restarts,
            result,
            ..
        } if unit == want_unit => Some((*change, *restarts, result.clone())),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_agent_is_down_within_three_intervals_and_up_after_it_continues() {
    let fleet = fast_fleet("presence", &["web1", "web2"]);
    let mut web1 = fleet.start_agent("web1");
    let web2 = fleet.start_agent("web2");
    let (orch, w) = watch(&fleet, Duration::from_secs(5)).await;
    for h in ["web1", "web2"] {
        wait_state(&w, h, PresenceState::Up, Duration::from_secs(15)).await;
    }
    let p = w.presence();
    assert!(
        p.iter().all(
            |h| h.agent_version.as_deref() == Some(env!("CARGO_PKG_VERSION"))
                && h.interval_ms == Some(1000)
        ),
        "{p:?}"
    );

    // Frozen: no alive from web2 any more. Down once three 1-s intervals passed since
    // its last event, which was at most when it was stopped.
    web2.signal("STOP");
    let down = wait_state(&w, "web2", PresenceState::Down, Duration::from_secs(10)).await;
    assert!(down <= Duration::from_millis(3_600), "down after {down:?}");
    assert_eq!(state_of(&w, "web1"), PresenceState::Up);

    // The CLI says the same, and exits 1.
    let out = fleet.cli(&["hosts", "--json", "--since", "5s"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let doc = out.json();
    let states: BTreeMap<&str, &str> = doc["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["host"].as_str().unwrap(), h["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        BTreeMap::from([("web1", "up"), ("web2", "down")]),
        "{doc} (stderr: {})",
        out.stderr
    );
    assert_eq!(doc["summary"]["complete"], true, "{doc}");
    let only_down = fleet.cli(&["hosts", "--down", "--since", "5s"]);
    assert_eq!(only_down.code, 1, "{}", only_down.stderr);
    assert!(
        only_down.stdout.contains("web2  down"),
        "{}",
        only_down.stdout
    );
    assert!(!only_down.stdout.contains("web1 "), "{}", only_down.stdout);
    assert!(
        only_down.stdout.contains("2 hosts: 1 down, 1 up"),
        "{}",
        only_down.stdout
    );

    // Continued: up again at its next alive.
    web2.signal("CONT");
    wait_state(&w, "web2", PresenceState::Up, Duration::from_secs(5)).await;
    let out = fleet.cli(&["hosts", "web1,web2", "--since", "5s"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);

    // A clean shutdown says so.
    assert_eq!(web1.terminate(), Some(0));
    wait_state(&w, "web1", PresenceState::Stopped, Duration::from_secs(5)).await;

    // What told something new is in the orchestrator's audit log, which verifies:
    // each host's first event, web2 back after its silence, web1's stop; none of the
    // routine alives in between (one per host per five minutes is the default).
    assert!(w.rejections().is_empty(), "{:?}", w.rejections());
    w.close().await;
    orch.flush_audit().await.unwrap();
    orch.close().await;
    let log = std::fs::read(fleet.audit_log()).unwrap();
    let mut recorded: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    for f in gearmq_schemas::audit::frames(&log) {
        let v = gearmq_schemas::audit::read_record(f.unwrap().bytes).unwrap();
        if let gearmq_schemas::audit::Entry::EventAccepted { event } = &v.record.entry {
            let (ev, _) = gearmq_schemas::audit::peek_signed::<Event>(event, 1 << 20).unwrap();
            recorded
                .entry(ev.host.to_string())
                .or_default()
                .push(ev.what.name());
        }
    }
    assert_eq!(recorded["web1"].len(), 2, "{recorded:?}");
    assert_eq!(recorded["web1"][1], "stopping", "{recorded:?}");
    assert_eq!(recorded["web2"].len(), 2, "{recorded:?}");
    assert_eq!(recorded["web2"][1], "alive", "{recorded:?}");
    let verified = fleet.verify_audit(&fleet.audit_log());
    assert_eq!(verified.code, 0, "{}{}", verified.stdout, verified.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_that_fail_or_are_restarted_by_systemd_are_told_at_once() {
    let fleet = fast_fleet("unitev", &["a"]);
    fleet.append_agent_toml(
        "a",
        "[[existing]]\nunits = [\"ext-*.service\"]\nactions = [\"status\"]\n",
    );
    let sd = UserSystemd::start();
    let _agent = fleet.start_agent_on("a", &sd);
    let (orch, mut w) = watch(&fleet, Duration::ZERO).await;

    // Exits non-zero half a second after it started: `failed`, within 2 s of that.
    let out = fleet.cli(&[
        "install",
        "a",
        "crash",
        "--exec",
        "/bin/sh",
        "--arg",
        "-c",
        "--arg",
        "sleep 0.5; exit 1",
        "--start",
    ]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let installed = Instant::now();
    let ev = next_event(&mut w, Duration::from_secs(10), |e| {
        unit_event(e, "crash").is_some()
    })
    .await;
    let took = installed.elapsed();
    let (change, restarts, result) = unit_event(&ev, "crash").unwrap();
    assert_eq!(
        (change, restarts, result.as_str()),
        (UnitChange::Failed, 0, "exit-code")
    );
    assert!(
        took < Duration::from_millis(2_500),
        "failed event after {took:?}"
    );

    // Restarted by systemd's Restart=on-failure: `restarted`, with the count rising.
    let out = fleet.cli(&[
        "install",
        "a",
        "flap",
        "--exec",
        "/bin/sh",
        "--arg",
        "-c",
        "--arg",
        "sleep 0.3; exit 3",
        "--restart",
        "on-failure",
        "--start",
    ]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let mut counts = Vec::new();
    while counts.len() < 2 {
        let ev = next_event(&mut w, Duration::from_secs(10), |e| {
            unit_event(e, "flap").is_some()
        })
        .await;
        let (change, restarts, _) = unit_event(&ev, "flap").unwrap();
        if change == UnitChange::Restarted {
            counts.push(restarts);
        }
    }
    assert!(counts[0] >= 1 && counts[1] > counts[0], "{counts:?}");
    let out = fleet.cli(&["delete", "a", "flap"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);

    // The host's own units: an allowlisted one is told by its full name, another never.
    let failing = "[Service]\nExecStart=/bin/sh -c 'sleep 0.3; exit 2'\n";
    sd.start_foreign_unit("stranger.service", failing);
    sd.start_foreign_unit("ext-db.service", failing);
    let ev = next_event(&mut w, Duration::from_secs(10), |e| {
        unit_event(e, "ext-db.service").is_some() || unit_event(e, "stranger.service").is_some()
    })
    .await;
    let (change, _, result) = unit_event(&ev, "ext-db.service").expect("the allowlisted unit");
    assert_eq!((change, result.as_str()), (UnitChange::Failed, "exit-code"));

    // A unit the operator stops is not reported as having exited on its own.
    let out = fleet.cli(&[
        "install",
        "a",
        "idle",
        "--exec",
        "/bin/sleep",
        "--arg",
        "600",
        "--start",
    ]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let out = fleet.cli(&["stop", "a", "idle"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let quiet = tokio::time::timeout(Duration::from_millis(1_500), async {
        loop {
            match w.next().await {
                Some(ev) if unit_event(&ev, "idle").is_some() => return ev,
                Some(_) => {}
                None => std::future::pending::<()>().await,
            }
        }
    })
    .await;
    assert!(
        quiet.is_err(),
        "an event for a unit gearmq stopped: {quiet:?}"
    );

    // The CLI's watch shows the same events, one JSON object a line.
    let out = fleet.cli(&[
        "watch",
        "a",
        "--json",
        "--since",
        "60s",
        "--for",
        "2s",
        "--events-only",
        // Every alive to the audit log, not one per five minutes (checked below).
        "--record-alive-every",
        "0",
    ]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "started" && l["host"] == "a"),
        "{}",
        out.stdout
    );
    assert!(
        lines.iter().any(|l| l["event"] == "unit"
            && l["unit"] == "crash"
            && l["change"] == "failed"
            && l["result"] == "exit-code"),
        "{}",
        out.stdout
    );
    assert!(
        !lines.iter().any(|l| l["unit"] == "stranger.service"),
        "a unit neither gearmq's nor allowlisted was told: {}",
        out.stdout
    );
    w.close().await;
    orch.flush_audit().await.unwrap();
    orch.close().await;

    // The CLI's watch recorded every alive it showed (the library watch above only
    // news: none of the routine ones).
    let shown = lines.iter().filter(|l| l["event"] == "alive").count();
    assert!(shown >= 2, "{}", out.stdout);
    let log = std::fs::read(fleet.audit_log()).unwrap();
    let recorded = gearmq_schemas::audit::frames(&log)
        .filter(|f| {
            let v = gearmq_schemas::audit::read_record(f.as_ref().unwrap().bytes).unwrap();
            matches!(&v.record.entry, gearmq_schemas::audit::Entry::EventAccepted { event }
                if gearmq_schemas::audit::peek_signed::<Event>(event, 1 << 20)
                    .unwrap().0.what.name() == "alive")
        })
        .count();
    assert!(recorded >= shown, "{recorded} alive records, {shown} shown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_garbage_events_are_rejected_and_counted() {
    let fleet = fast_fleet("evforge", &["web1", "web2"]);
    let _web1 = fleet.start_agent("web1");
    let (orch, mut w) = watch(&fleet, Duration::ZERO).await;
    let genuine = next_event(&mut w, Duration::from_secs(10), |e| {
        e.host.as_str() == "web1" && matches!(e.what, What::Alive { .. })
    })
    .await;

    let publish = |key: &'static str, bytes: Vec<u8>| {
        let fleet = &fleet;
        async move {
            let r = fleet.publish("gearmq.events", key, &bytes, None).await;
            assert_eq!(r, Ok(true), "publishing to {key}");
        }
    };
    // Not an event at all.
    publish("web1.alive", b"\x93not an event".to_vec()).await;
    // web2's key signing an event that names web1.
    let web2 = fleet.host_identity("web2");
    let forged = Event::new(
        name("web1"),
        genuine.boot,
        genuine.seq + 1_000,
        now_ms(),
        What::Stopping {},
    );
    publish(
        "web1.stopping",
        Signed::seal(&forged, &web2.key, &web2.credential),
    )
    .await;
    // web2's own event, under web1's routing key.
    let misrouted = Event::new(name("web2"), [9; 16], 0, now_ms(), What::Stopping {});
    publish(
        "web1.stopping",
        Signed::seal(&misrouted, &web2.key, &web2.credential),
    )
    .await;
    // web1's genuine alive, again.
    publish("web1.alive", genuine.bytes.clone()).await;

    let want = BTreeMap::from([("forged", 2), ("malformed", 1), ("replayed", 1)]);
    gearmq_testkit::wait_until(
        "the rejections are counted",
        Duration::from_secs(10),
        || w.rejections() == want,
    );
    // web1 is still up, and its next alive is still taken: nothing forged moved it.
    let next = next_event(&mut w, Duration::from_secs(5), |e| {
        e.host.as_str() == "web1"
    })
    .await;
    assert!(next.seq > genuine.seq);
    assert_eq!(state_of(&w, "web1"), PresenceState::Up);

    // `hosts` reads the same history and counts the same rejections.
    let out = fleet.cli(&["hosts", "web1", "--json", "--since", "30s"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let doc = out.json();
    assert_eq!(
        doc["summary"]["rejected"],
        serde_json::json!({"forged": 2, "malformed": 1, "replayed": 1}),
        "{doc} (stderr: {})",
        out.stderr
    );
    w.close().await;
    orch.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_stream_is_read_to_its_end_without_a_quiet_moment() {
    // A fleet's alives arrive every few ms: the stream is never silent for the half
    // second that tells a quiet one is read. The watch must know it caught up anyway.
    let fleet = fast_fleet("evbusy", &["web1"]);
    let _web1 = fleet.start_agent("web1");
    let conn = fleet.amqp().await;
    let ch = conn.create_channel().await.unwrap();
    let publish = |ch: lapin::Channel| async move {
        ch.basic_publish(
            "gearmq.events".into(),
            "web1.alive".into(),
            Default::default(),
            b"\x93not an event",
            Default::default(),
        )
        .await
        .map(|_| ())
    };
    // History first, then a message every 20 ms for as long as the test runs.
    for _ in 0..200 {
        publish(ch.clone()).await.unwrap();
    }
    let flooding = tokio::spawn({
        let ch = ch.clone();
        async move {
            while publish(ch.clone()).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let orch = Orchestrator::connect(&fleet.orchestrator_config())
        .await
        .unwrap();
    let started = Instant::now();
    let w = orch
        .events(WatchOptions {
            since: Duration::from_secs(60),
            record: false,
            yield_events: false,
            ..WatchOptions::default()
        })
        .await
        .unwrap();
    assert!(
        w.caught_up(Duration::from_millis(2_500)).await,
        "not caught up in {:?} on a busy stream",
        started.elapsed()
    );
    // And what it read is the history: web1 is up, the garbage counted.
    assert_eq!(state_of(&w, "web1"), PresenceState::Up);
    assert!(
        w.rejections().get("malformed").copied().unwrap_or(0) >= 200,
        "{:?}",
        w.rejections()
    );
    flooding.abort();
    w.close().await;
    orch.close().await;
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_finds_its_window_in_a_long_stream_and_reads_from_there() {
    // The watch locates where its window begins by looking at offsets, not by asking
    // the broker for a timestamp (which RabbitMQ 3.10 sometimes answers with nothing
    // but new messages). Before the window: 1,500 events web1 signed five minutes ago,
    // each followed by a message that is not an event. How many of those the watch
    // counts as malformed tells how far before the window it began to read.
    const OLD: usize = 1_500;
    let fleet = fast_fleet("evlocate", &["web1", "web2"]);
    let web1 = fleet.host_identity("web1");
    let conn = fleet.amqp().await;
    let ch = conn.create_channel().await.unwrap();
    gearmq_io::topology::declare_events(&ch, false, Duration::from_secs(30))
        .await
        .unwrap();
    // An empty stream has no history: the watch is caught up at once and then takes
    // what comes.
    let (orch0, empty) = watch(&fleet, Duration::from_secs(60)).await;
    assert!(
        empty.caught_up(Duration::from_secs(10)).await,
        "an empty stream's history not read"
    );
    assert_eq!(state_of(&empty, "web1"), PresenceState::NeverSeen);
    let old = now_ms() - 300_000;
    for i in 0..OLD {
        let alive = Event::new(
            name("web1"),
            [7; 16],
            i as u64,
            old + i as u64,
            What::Alive {
                agent_version: env!("CARGO_PKG_VERSION").into(),
                interval_ms: 1000,
            },
        );
        for bytes in [
            Signed::seal(&alive, &web1.key, &web1.credential),
            b"\x93not an event".to_vec(),
        ] {
            ch.basic_publish(
                "gearmq.events".into(),
                "web1.alive".into(),
                Default::default(),
                &bytes,
                Default::default(),
            )
            .await
            .unwrap();
        }
    }
    gearmq_testkit::wait_until(
        "the watch begun on the empty stream counts what came",
        Duration::from_secs(10),
        || empty.rejections().get("malformed").copied() == Some(OLD as u64),
    );
    empty.close().await;
    orch0.close().await;
    // A quiet stream whose last chunk is already before the window: read from there
    // (the broker wrote the burst in chunks of a few hundred), nothing in the window.
    {
        let last_chunk = first_offset_from(&ch, "last").await;
        let (orch, w) = watch(&fleet, Duration::from_secs(60)).await;
        assert!(
            w.caught_up(Duration::from_secs(10)).await,
            "history not read"
        );
        assert_eq!(state_of(&w, "web1"), PresenceState::NeverSeen);
        assert_eq!(state_of(&w, "web2"), PresenceState::NeverSeen);
        // Half of the last chunk's messages are not events; the chunk may begin with
        // either kind.
        let in_last_chunk = (2 * OLD) as u64 - last_chunk;
        let malformed = w.rejections().get("malformed").copied().unwrap_or(0);
        assert!(
            malformed <= in_last_chunk.div_ceil(2),
            "{malformed} malformed read; the last chunk holds {in_last_chunk}: {:?}",
            w.rejections()
        );
        w.close().await;
        orch.close().await;
    }
    // The window: web2's agent, alive every second.
    let _web2 = fleet.start_agent("web2");
    let (orch, w) = watch(&fleet, Duration::from_secs(60)).await;
    assert!(
        w.caught_up(Duration::from_secs(10)).await,
        "history not read"
    );
    wait_state(&w, "web2", PresenceState::Up, Duration::from_secs(5)).await;
    // web1 was heard only before the window.
    assert_eq!(state_of(&w, "web1"), PresenceState::NeverSeen);
    let malformed = w.rejections().get("malformed").copied().unwrap_or(0);
    assert!(
        malformed <= 200,
        "read {malformed} of the {OLD} malformed messages before the window: {:?}",
        w.rejections()
    );
    // The window located, the whole of it is read: a watch from long before the
    // stream began reads everything, and counts every malformed message.
    let (orch2, all) = watch(&fleet, Duration::from_secs(3_600)).await;
    assert!(
        all.caught_up(Duration::from_secs(10)).await,
        "history not read"
    );
    gearmq_testkit::wait_until(
        "every malformed message is counted",
        Duration::from_secs(10),
        || all.rejections().get("malformed").copied() == Some(OLD as u64),
    );
    assert_eq!(state_of(&all, "web2"), PresenceState::Up);
    all.close().await;
    orch2.close().await;
    w.close().await;
    orch.close().await;
    let _ = conn.close(200, "done".into()).await;
}

/// The offset of the first message a consumer of the events stream attached at `spec`
/// (`last`: the start of the last chunk) receives.
async fn first_offset_from(ch: &lapin::Channel, spec: &str) -> u64 {
    use futures_util::StreamExt;
    ch.basic_qos(1, Default::default()).await.unwrap();
    let mut args = lapin::types::FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        lapin::types::AMQPValue::LongString(spec.into()),
    );
    let tag = format!("first-offset-{}", gearmq_testkit::rand_u32());
    let mut consumer = ch
        .basic_consume(
            "gearmq.events".into(),
            tag.as_str().into(),
            Default::default(),
            args,
        )
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a message from the stream")
        .unwrap()
        .unwrap();
    ch.basic_cancel(tag.as_str().into(), Default::default())
        .await
        .unwrap();
    let headers = d.properties.headers().clone().unwrap();
    match headers.inner().get("x-stream-offset") {
        Some(lapin::types::AMQPValue::LongLongInt(o)) => *o as u64,
        other => panic!("x-stream-offset: {other:?}"),
    }
}

/// Closes the vhost's connections whose client named itself `gearmq-watch …`; how many.
fn close_watch_connections(fleet: &Fleet) -> usize {
    let listed = fleet.vhost.ctl(&[
        "list_connections",
        "--no-table-headers",
        "pid",
        "vhost",
        "client_properties",
    ]);
    let mut closed = 0;
    for line in listed.lines() {
        let mut cols = line.splitn(3, '\t');
        let (Some(pid), Some(vhost), Some(props)) = (cols.next(), cols.next(), cols.next()) else {
            continue;
        };
        if vhost == fleet.vhost.name && props.contains("{\"connection_name\",\"gearmq-watch ") {
            fleet
                .vhost
                .ctl(&["close_connection", pid, "test: the watch's link dropped"]);
            closed += 1;
        }
    }
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_loses_the_broker_resumes_after_the_last_event_it_read() {
    // Only the watch's connection drops, and it waits 2-4 s before it reconnects: the
    // agent's alives of that time are in the stream, and the watch reads them when it
    // is back, each once, so web1's sequence numbers run on without a gap.
    let fleet = fast_fleet("evresume", &["web1"]);
    let _web1 = fleet.start_agent("web1");
    let mut config = fleet.orchestrator_config();
    config.broker.reconnect_initial = Duration::from_secs(4);
    config.broker.reconnect_max = Duration::from_secs(4);
    let (orch, mut w) = watch_with(&config, Duration::from_secs(5)).await;
    let is_web1 = |e: &VerifiedEvent| e.host.as_str() == "web1";
    let before = next_event(&mut w, Duration::from_secs(10), is_web1).await;
    assert_eq!(close_watch_connections(&fleet), 1, "one watch connection");
    // Away for its backoff (at least 2 s: two alives), then back.
    let listening_is = |want: bool, limit: Duration| {
        let w = &w;
        async move {
            let start = Instant::now();
            while w.is_listening() != want {
                assert!(start.elapsed() < limit, "listening never became {want}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            start.elapsed()
        }
    };
    listening_is(false, Duration::from_secs(5)).await;
    let away = listening_is(true, Duration::from_secs(10)).await;
    assert!(
        away >= Duration::from_millis(1_500),
        "away for {away:?} only"
    );
    // Every one of web1's events across the drop, in order, none missed or repeated.
    let mut seqs = vec![before.seq];
    while seqs.len() < 8 {
        let ev = next_event(&mut w, Duration::from_secs(15), is_web1).await;
        assert_eq!(ev.boot, before.boot, "web1 did not restart");
        seqs.push(ev.seq);
    }
    let want: Vec<u64> = (before.seq..before.seq + 8).collect();
    assert_eq!(seqs, want, "web1's events across the drop");
    // Nothing was read twice, and nothing of the time away was lost.
    assert_eq!(w.rejections(), BTreeMap::new());
    assert_eq!(state_of(&w, "web1"), PresenceState::Up);
    w.close().await;
    orch.close().await;
}
