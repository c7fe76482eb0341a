//! Seeing what agents do, end to end: `gearmq stats` and `gearmq dead` against a real
//! broker and a real agent.

use gearmq_testkit::{Fleet, random_bytes};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Runs `args` until `done` holds for its JSON output (the agent counts and the broker
/// dead-letters asynchronously), then returns that output.
fn json_until(fleet: &Fleet, args: &[&str], done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = fleet.cli(args);
        assert_eq!(out.code, 0, "gearmq {args:?}: {}{}", out.stdout, out.stderr);
        let v = out.json();
        if done(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "gearmq {args:?} never showed the expected state: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn stats_and_dead_letters_show_what_the_agent_refused() {
    let fleet = Fleet::init("observe", &["a"]);
    let _agent = fleet.start_agent("a");
    let ping = fleet.cli(&["ping", "--host", "a"]);
    assert_eq!(ping.code, 0, "{}{}", ping.stdout, ping.stderr);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        fleet.forward_request(&random_bytes(64), "a").await;
        fleet.forward_request(&random_bytes(200), "a").await;
    });

    let stats = json_until(&fleet, &["stats", "--host", "a", "--json"], |v| {
        v["results"][0]["data"]["dead_lettered"].as_u64() == Some(2)
    });
    let r = &stats["results"][0];
    assert_eq!(r["host"], "a");
    assert_eq!(r["status"], "ok");
    let d = &r["data"];
    assert!(d["verified"].as_u64().unwrap() >= 1, "{d}");
    assert!(d["executed"].as_u64().unwrap() >= 1, "{d}");
    assert_eq!(d["dead_lettered"], 2, "{d}");
    assert_eq!(d["refused"]["malformed"], 2, "{d}");

    // The human table has a row for the host.
    let table = fleet.cli(&["stats", "--host", "a"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(table.stdout.contains("RECONNECTS"), "{}", table.stdout);

    let list = json_until(&fleet, &["dead", "list", "--json"], |v| v["count"] == 2);
    let messages = list["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    let mut sizes: Vec<u64> = messages
        .iter()
        .map(|m| m["size"].as_u64().unwrap())
        .collect();
    sizes.sort();
    assert_eq!(sizes, [64, 200]);
    for m in messages {
        assert_eq!(m["reason"], "rejected", "{m}");
        assert_eq!(m["routing_key"], "host.a", "{m}");
        assert_eq!(m["queue"], "gearmq.host.a", "{m}");
        assert!(
            m["decoded"]
                .as_str()
                .unwrap()
                .starts_with("not a signed envelope"),
            "{m}"
        );
    }

    // Listing left them in place; show prints one with its bytes.
    let again = json_until(&fleet, &["dead", "list", "--json"], |v| v["count"] == 2);
    assert_eq!(again["count"], 2);
    let show = fleet.cli(&["dead", "show", "1"]);
    assert_eq!(show.code, 0, "{}", show.stderr);
    assert!(
        show.stdout.contains("reason:      rejected"),
        "{}",
        show.stdout
    );
    assert!(show.stdout.contains("00000000  "), "{}", show.stdout);

    let purge = fleet.cli(&["dead", "purge"]);
    assert_eq!(purge.code, 0, "{}", purge.stderr);
    assert!(
        purge.stdout.contains("purged 2 message(s)"),
        "{}",
        purge.stdout
    );
    let empty = fleet.cli(&["dead", "list", "--json"]);
    assert_eq!(empty.code, 0, "{}", empty.stderr);
    assert_eq!(empty.json()["count"], 0);
}
