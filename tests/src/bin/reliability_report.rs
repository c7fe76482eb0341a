//! Renders RELIABILITY.md from the observations the fault tests wrote (JSON lines, see
//! `gearmq_tests::faults::observe`): `reliability-report OBSERVATIONS.jsonl > RELIABILITY.md`.
//! Run by `deploy/reliability.sh`.
#![forbid(unsafe_code)]

use anyhow::{Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;

/// Every fault and hostile input tried: (what, how it is tested, test name). A test
/// that writes observations has them shown in the last column.
const ROWS: &[(&str, &str, &str)] = &[
    (
        "Broker connection dropped mid-call",
        "`rabbitmqctl close_all_connections` on the fleet's vhost while a ping waits for a stopped agent; the agent is then restarted",
        "tests/tests/faults.rs::orchestrator_reconnects_when_its_connection_drops_mid_call",
    ),
    (
        "Broker restart mid fan-out",
        "a RabbitMQ node of the test's own is stopped (`rabbitmqctl stop`) and booted again while a 3-host ping waits for one host whose request is queued, and a second call starts while the node is down",
        "tests/tests/faults.rs::broker_restart_mid_fan_out_ends_with_every_host_answered_once",
    ),
    (
        "Agent SIGKILL during install/start",
        "`gearmq install --start`; the agent is SIGKILLed as soon as the unit's program has appended its start line, then restarted",
        "tests/tests/faults.rs::agent_sigkill_while_starting_a_unit_leaves_it_started_once",
    ),
    (
        "Agent crash between action and outcome record",
        "fault seam `GEARMQ_AGENT_FAULT=crash-after-execute` aborts the agent after the start, before the outcome record and reply",
        "agent/tests/units_e2e.rs::crash_after_execute_is_resolved_from_records_and_starts_once",
    ),
    (
        "Orchestrator crash mid-call",
        "the `gearmq` CLI is SIGKILLed while a call waits for a frozen (SIGSTOP) host; `gearmq audit verify` then runs on its log and a new CLI calls at once",
        "tests/tests/faults.rs::orchestrator_killed_mid_call_leaves_a_verifiable_log_and_a_new_one_works",
    ),
    (
        "Disk full under the agent's state dir",
        "state dir on a 1 MiB tmpfs filled to ENOSPC, then the filler removed; the agent restarted afterwards",
        "tests/tests/faults.rs::full_state_disk_refuses_new_requests_with_a_signed_error_and_recovers",
    ),
    (
        "Disk full under the agent's audit log",
        "the audit log alone on a 1 MiB tmpfs filled to ENOSPC while a ping waits, freed after 4 s; `gearmq audit verify` on the log after",
        "tests/tests/faults.rs::full_audit_disk_holds_the_reply_back_without_a_busy_loop_until_space_returns",
    ),
    (
        "Flood of invalid messages",
        "random bytes, truncated and bad-signature requests, oversize messages and replays published straight onto a host queue while 40 valid pings are timed",
        "tests/tests/faults.rs::flood_of_invalid_messages_leaves_valid_requests_answered_and_counts_every_one",
    ),
    (
        "Three-node cluster, node of the agent stopped",
        "three RabbitMQ nodes clustered on this machine, quorum queues; the node the agent and orchestrator use is stopped mid-traffic, then started again",
        "tests/tests/cluster.rs::agent_fails_over_when_its_cluster_node_stops",
    ),
    (
        "Clock skew within / beyond the limit",
        "requests issued 1.5 s and 4.5 s in the future and expired 1.5 s and 4.5 s ago, with `clock_skew = 3s`: inside accepted, beyond refused with a reason naming `allowed clock skew 3s`",
        "agent/tests/bounds_e2e.rs::clock_skew_within_the_limit_is_accepted_and_beyond_is_refused_naming_it",
    ),
    (
        "Request lifetime cap",
        "lifetime exactly `max_request_lifetime` (10 s) and 1 ms over",
        "agent/tests/bounds_e2e.rs::request_lifetime_at_the_cap_is_accepted_and_one_ms_over_is_refused",
    ),
    (
        "Max message size",
        "signed requests of exactly `max_message_bytes` and one byte more",
        "agent/tests/bounds_e2e.rs::message_of_exactly_max_bytes_is_served_and_one_byte_more_is_dead_lettered",
    ),
    (
        "Max requests in flight per agent",
        "5 requests to a frozen agent with `prefetch = 2`: the broker holds 3 ready, 2 unacked; all 5 answered after SIGCONT",
        "agent/tests/bounds_e2e.rs::no_more_than_prefetch_requests_are_in_flight_at_the_agent",
    ),
    (
        "Max log bytes per reply",
        "`max_log_bytes = 1024` and a unit that wrote 5,000 bytes: a `logs` reply holds only the newest whole 50-byte lines that fit (18 seen: 900 bytes) and says `truncated`; a request for 5 lines is not cut",
        "agent/tests/units_e2e.rs::logs_reply_holds_at_most_max_log_bytes_and_says_it_was_cut",
    ),
    (
        "Max follow duration",
        "`max_follow = 2s` and a `logs --follow` request valid for 60 s: the stream sends its final reply after 2 s",
        "agent/tests/units_e2e.rs::follow_stream_ends_at_max_follow_not_at_the_request_expiry",
    ),
    (
        "Malformed bytes into every decoder",
        "fuzz targets (request, reply, envelope, credential, revocation list, audit log, unit spec) with a seed corpus from the test vectors, replayed on stable",
        "schemas/tests/fuzz_corpus.rs::every_corpus_and_crash_file_decodes_without_panic",
    ),
];

fn test_name(path: &str) -> &str {
    path.rsplit("::").next().unwrap_or(path)
}

/// A compact rendering of an observation object.
fn render(v: &Value) -> String {
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}: {}", render(v)))
            .collect::<Vec<_>>()
            .join("; "),
        Value::String(s) => s.replace('|', "\\|"),
        other => other.to_string(),
    }
}

fn main() -> Result<()> {
    let path = std::env::args()
        .nth(1)
        .context("usage: reliability-report OBSERVATIONS.jsonl")?;
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let mut seen: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Value =
            serde_json::from_str(line).with_context(|| format!("{path}:{}: not JSON", i + 1))?;
        let test = v["test"].as_str().unwrap_or_default().to_string();
        seen.entry(test).or_default().push(v["observed"].clone());
    }
    println!("# Reliability\n");
    println!(
        "Every fault and hostile input gearmq is tested against, how, and what the last run of\n\
         `deploy/reliability.sh` observed. Regenerate with `bash deploy/reliability.sh` (it runs\n\
         the tests below with `GEARMQ_RELIABILITY_OUT` set and renders this file). Rows\n\
         without observations are checked by assertions only (see the test).\n"
    );
    println!("| Fault / hostile input | How | Test | Observed |");
    println!("|---|---|---|---|");
    for (what, how, test) in ROWS {
        let observed = match seen.get(test_name(test)) {
            Some(runs) => runs.iter().map(render).collect::<Vec<_>>().join("<br>"),
            None => "assertions only".into(),
        };
        println!("| {what} | {how} | `{test}` | {observed} |");
    }
    Ok(())
}
