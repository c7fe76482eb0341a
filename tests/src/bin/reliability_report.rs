//! Renders RELIABILITY.md from the observations the fault tests wrote (JSON lines, see
//! `gearmq_testkit::observe`): `reliability-report OBSERVATIONS.jsonl > RELIABILITY.md`.
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
        "tests/tests/e2e/faults.rs::orchestrator_reconnects_when_its_connection_drops_mid_call",
    ),
    (
        "Broker connections dropped mid-call of a call published once on `all`",
        "a ping to a host list of 2 of 3 hosts (`broadcast_min_hosts = 2`: one publish on `all`) while one named agent is stopped; every connection of the vhost closed, the agent restarted: the reconnect republishes on `all`",
        "tests/tests/e2e/faults.rs::a_call_published_once_is_republished_once_on_all_after_a_reconnect",
    ),
    (
        "Broker restart mid fan-out, transient read",
        "a RabbitMQ node of the test's own is stopped (`rabbitmqctl stop`) and booted again while a 3-host ping (transient, the default for reads) waits for one host whose request is queued, and a second call starts while the node is down; the queued copy is lost with the restart and the reconnect's republished copy is answered",
        "tests/tests/e2e/faults.rs::broker_restart_mid_fan_out_ends_with_every_host_answered_once",
    ),
    (
        "Broker restart mid fan-out, persistent request",
        "the same with `defaults.persistent_reads = true` (the delivery of every mutation): the queued copy survives the restart",
        "tests/tests/e2e/faults.rs::broker_restart_mid_fan_out_keeps_a_persistent_request_queued",
    ),
    (
        "Agent SIGKILL during install/start",
        "`gearmq install --start`; the agent is SIGKILLed as soon as the unit's program has appended its start line, then restarted",
        "tests/tests/e2e/faults.rs::agent_sigkill_while_starting_a_unit_leaves_it_started_once",
    ),
    (
        "Agent crash between action and outcome record",
        "fault seam `GEARMQ_AGENT_FAULT=crash-after-execute` aborts the agent after the start, before the outcome record and reply",
        "agent/tests/e2e/units.rs::crash_after_execute_is_resolved_from_records_and_starts_once",
    ),
    (
        "Orchestrator crash mid-call",
        "the `gearmq` CLI is SIGKILLed while a call waits for a frozen (SIGSTOP) host; `gearmq audit verify` then runs on its log and a new CLI calls at once",
        "tests/tests/e2e/faults.rs::orchestrator_killed_mid_call_leaves_a_verifiable_log_and_a_new_one_works",
    ),
    (
        "Disk full under the agent's state dir",
        "state dir on a 1 MiB tmpfs filled to ENOSPC, then the filler removed; the agent restarted afterwards",
        "tests/tests/e2e/faults.rs::full_state_disk_refuses_new_requests_with_a_signed_error_and_recovers",
    ),
    (
        "Disk full under the agent's audit log",
        "the audit log alone on a 1 MiB tmpfs filled to ENOSPC while a ping waits, freed after 4 s; `gearmq audit verify` on the log after",
        "tests/tests/e2e/faults.rs::full_audit_disk_holds_the_reply_back_without_a_busy_loop_until_space_returns",
    ),
    (
        "Flood of invalid messages",
        "random bytes, truncated and bad-signature requests, oversize messages and replays published straight onto a host queue while 40 valid pings are timed",
        "tests/tests/e2e/faults.rs::flood_of_invalid_messages_leaves_valid_requests_answered_and_counts_every_one",
    ),
    (
        "Three-node cluster, node of the agent stopped",
        "three RabbitMQ nodes clustered on this machine, quorum queues; the node the agent and orchestrator use is drained (`rabbitmq-upgrade drain`) and stopped mid-traffic, then started again (see Broker cluster below)",
        "tests/tests/e2e/cluster.rs::agent_fails_over_when_its_cluster_node_stops",
    ),
    (
        "Clock skew within / beyond the limit",
        "requests issued 1.5 s and 4.5 s in the future and expired 1.5 s and 4.5 s ago, with `clock_skew = 3s`: inside accepted, beyond refused with a reason naming `allowed clock skew 3s`",
        "agent/tests/e2e/bounds.rs::clock_skew_within_the_limit_is_accepted_and_beyond_is_refused_naming_it",
    ),
    (
        "Request lifetime cap",
        "lifetime exactly `max_request_lifetime` (10 s) and 1 ms over",
        "agent/tests/e2e/bounds.rs::request_lifetime_at_the_cap_is_accepted_and_one_ms_over_is_refused",
    ),
    (
        "Max message size",
        "signed requests of exactly `max_message_bytes` and one byte more",
        "agent/tests/e2e/bounds.rs::message_of_exactly_max_bytes_is_served_and_one_byte_more_is_dead_lettered",
    ),
    (
        "Max requests in flight per agent",
        "5 requests to a frozen agent with `prefetch = 2`: the broker holds 3 ready, 2 unacked; all 5 answered after SIGCONT",
        "agent/tests/e2e/bounds.rs::no_more_than_prefetch_requests_are_in_flight_at_the_agent",
    ),
    (
        "Max log bytes per reply",
        "`max_log_bytes = 1024` and a unit that wrote 5,000 bytes: a `logs` reply holds only the newest whole 50-byte lines that fit (18 seen: 900 bytes) and says `truncated`; a request for 5 lines is not cut",
        "agent/tests/e2e/units.rs::logs_reply_holds_at_most_max_log_bytes_and_says_it_was_cut",
    ),
    (
        "Max follow duration",
        "`max_follow = 2s` and a `logs --follow` request valid for 60 s: the stream sends its final reply after 2 s",
        "agent/tests/e2e/units.rs::follow_stream_ends_at_max_follow_not_at_the_request_expiry",
    ),
    (
        "Malformed bytes into every decoder",
        "fuzz targets (request, reply, envelope, credential, revocation list, audit log, unit spec) with a seed corpus from the test vectors, replayed on stable",
        "schemas/tests/fuzz_corpus.rs::every_corpus_and_crash_file_decodes_without_panic",
    ),
];

/// Every attack a hostile review tried: (attack, what stops it, test). Tests that write
/// observations have them shown too.
const ATTACKS: &[(&str, &str, &str)] = &[
    (
        "A call narrowed by `--limit` or `--batch` (the canary first) is captured and its bytes published unchanged to every other host's queue (anyone allowed to publish to `host.*`, a delegating host among them)",
        "a narrowed call signs the explicit host list of that publish; only a call reaching everything its selector (or `all`) denotes signs the selector; the other hosts count `not_target` and run nothing (ping and restart: main PIDs unchanged)",
        "tests/tests/e2e/attacks.rs::forwarded_copy_of_a_limited_or_batched_call_runs_nowhere_else",
    ),
    (
        "A selector request for some hosts published to a host it does not select",
        "the selector travels signed; the host judges its own credential labels and acks silently",
        "tests/tests/e2e/targeting.rs::non_matching_host_that_receives_a_selector_request_ignores_it",
    ),
    (
        "A credential with no rights sends 20,000 requests with fresh ids and the longest allowed lifetime, to fill the replay store and lock the operator out",
        "role, policy, arguments and token are checked before the replay store reserves anything; a refusal keeps nothing; the operator is served at once",
        "tests/tests/e2e/attacks.rs::refusals_reserve_no_ids_and_cannot_fill_the_replay_store",
    ),
    (
        "Another signer uses the id of the operator's request first (seen on a shared target) so that the operator's request is refused as `replayed`",
        "replay entries are keyed by (caller, id); a caller's own id with other bytes is still `replayed`",
        "tests/tests/e2e/attacks.rs::refusals_reserve_no_ids_and_cannot_fill_the_replay_store",
    ),
    (
        "One captured request (expired, or already answered) published to a host's queue over and over, each copy a full audit record",
        "the first copy is recorded in full, every later one answered with the very same reply bytes and recorded by two digests (`request_repeated`, ~660 bytes); the log rotates by size and the family verifies as one chain",
        "tests/tests/e2e/attacks.rs::repeated_requests_cost_the_agent_log_a_digest_and_the_log_rotates_by_size",
    ),
    (
        "A flood into a host's queue pushes out requests already queued (drop-head overflow)",
        "host queues hold 10,000 with `reject-publish`: the broker refuses what does not fit (the flooder's nack), a caller is told its request was refused, queued requests stay",
        "tests/tests/e2e/attacks.rs::full_host_queue_refuses_new_requests_instead_of_dropping_queued_ones",
    ),
    (
        "A genuine streamed reply (seq 0) delivered a second time into the caller's reply queue during `logs --follow`",
        "a host's replies are taken in strictly increasing `seq`, none after its final one; the copy is a counted duplicate, not shown, recorded as rejected; `audit verify` checks the same order",
        "tests/tests/e2e/attacks.rs::a_streamed_reply_delivered_twice_is_shown_once_and_the_log_verifies",
    ),
    (
        "Every broker connection dropped mid-stream: the caller republishes its request and the agent resends the stored seq 0",
        "the resent seq 0 is a duplicate; the stream goes on on the agent's next session with the next seq; every reply shown once; the log verifies",
        "tests/tests/e2e/attacks.rs::a_stream_cut_by_a_dropped_connection_takes_nothing_twice_and_the_log_verifies",
    ),
    (
        "100,000 junk replies from four publishers at once into a waiting call's reply queue (random bytes, and replies signed by another host's key)",
        "acks and a prefetch of 256: the backlog waits in the broker, whose length limit refuses the rest; the first 64 rejected per call (and per minute untied) recorded one by one, the rest summed in `replies_rejected`; an accepted reply always gets its record, a missing one shows in `audit_missing` and exit code 3",
        "tests/tests/e2e/attacks.rs::a_reply_flood_from_several_publishers_is_bounded_counted_and_on_record",
    ),
    (
        "A request larger than an audit record can hold with its reply: answered (or refused) but left out of the log",
        "`limits.max_message_bytes` is capped at 748 KiB (a 1 MiB record holds it with the largest reply, 256 KiB, and the host credential); an agent configured past it does not start",
        "tests/tests/e2e/attacks.rs::an_agent_whose_requests_could_outgrow_an_audit_record_does_not_start",
    ),
    (
        "A selector `eq`/`ne` value of 100,000 characters (or with control characters)",
        "selector values follow the label value rule (≤ 128 characters, no control character); the request does not decode",
        "schemas/src/request.rs::tests::selector_values_are_bounded_like_label_values",
    ),
    (
        "`install` with `LD_PRELOAD`, `LD_LIBRARY_PATH`, `LD_AUDIT`, `PYTHONPATH`, `NODE_OPTIONS`… so that an allowed program loads the caller's code",
        "loader variables are refused unless `systemd.allowed_loader_env` names them: a signed status 6, nothing written",
        "agent/tests/e2e/hardening.rs::install_with_a_loader_env_variable_is_refused_signed_and_writes_nothing",
    ),
    (
        "A symlink inside an allowed prefix pointing at `/bin/sh` or any program outside it",
        "`allowed_exec_prefixes` is checked on the path resolved on the host (symlinks followed), by whole components (`/opt/app` does not allow `/opt/apple`)",
        "agent/tests/e2e/hardening.rs::symlink_inside_an_allowed_prefix_to_a_program_outside_is_refused",
    ),
    (
        "A host key or sealing key left readable by other local users (mode 0644)",
        "every private key (host, sealing, operator, issuer, TLS client, broker password, CA) goes through one loader that refuses group/other bits; the agent does not start and names the file, mode and `chmod 600`",
        "agent/tests/e2e/hardening.rs::agent_with_a_host_key_others_can_read_refuses_to_start",
    ),
    (
        "An `@` in the broker URL's query makes the password land in the query string (and in logs)",
        "both programs splice the password into the authority only, with one tested function",
        "io/src/broker.rs::tests::password_from_the_file_goes_into_the_authority_only",
    ),
    (
        "Someone with broker admin rights adds a user with rights on the fleet's vhost, a tag on a host user, a topic permission, or a queue bound to `gearmq.requests` that copies every request",
        "`broker check` reports every extra user, tag, permission, topic permission and binding on the fleet's vhost, not only missing ones, and exits 1",
        "tests/tests/e2e/provisioning.rs::broker_check_names_every_extra_user_tag_permission_and_binding",
    ),
    (
        "A host enrolled under an operator's name gets that operator's broker user and rights",
        "`init`, `enroll` and `broker provision` refuse a host and an operator sharing a name",
        "tests/tests/e2e/provisioning.rs::provision_refuses_a_host_named_like_an_operator",
    ),
    (
        "Someone holding the bootstrap password asks to enroll under an existing host's name (or any name) with keys of its own",
        "a request is signed by the key it names; with a secret, the HMAC binds the name and every key; without one, `pending` shows the key for the operator to compare with the host's; `approve` refuses a name already in the inventory",
        "tests/tests/e2e/enrollment.rs::three_hosts_enroll_over_the_broker_and_answer_a_tls_ping",
    ),
    (
        "A bootstrap secret used a second time (by another request), or after it expired",
        "the operator keeps each secret with its name, expiry and the digest of the request that used it; another request with it is listed `refused: …` and cannot be approved; the host gets nothing",
        "tests/tests/e2e/enrollment.rs::three_hosts_enroll_over_the_broker_and_answer_a_tls_ping",
    ),
    (
        "A forged or misrouted enrollment answer (signed by another key, for another request, or carrying a credential for other keys)",
        "the host opens only an answer signed by the issuer key it was given, bound to the digest of the request it sent, whose credential names it with the keys it made",
        "schemas/tests/vectors/enroll.rs::enrollment_must_refuse_vectors_are_refused_at_the_stated_step",
    ),
    (
        "A host runs a request its signer may not make and logs it with a failure status, so that the auditor's checks skip it",
        "`audit verify` applies the role, action, caller, credential-window and request-window checks whatever the status: only the refusal those checks give passes",
        "schemas/tests/audit.rs::a_request_its_signer_may_not_make_must_have_been_refused_whatever_the_status",
    ),
    (
        "A host executes one request twice (a replay that got through)",
        "`audit verify` reports two execution records of one (caller, id) whose replies differ",
        "schemas/tests/audit.rs::a_request_executed_twice_by_one_host_is_caught",
    ),
    (
        "A revoked credential is used before agents or orchestrators reload the revocation list",
        "`audit verify --revocations FILE` lists every record signed with it after the list revoked it, and exits 3",
        "tests/tests/e2e/audit.rs::audit_verify_lists_records_signed_after_a_revocation",
    ),
    (
        "Records cut off the end of a log",
        "`--expect-head` catches it; without it the output says a cut tail cannot be detected",
        "tests/tests/e2e/audit.rs::orchestrator_log_of_a_real_run_verifies_and_tampering_is_named",
    ),
    (
        "A forged `request_repeated` record claims an answer never logged",
        "an earlier `request_handled` of the chain must hold both digests",
        "schemas/tests/audit.rs::a_request_repeated_whose_request_is_not_in_the_chain_is_caught",
    ),
    (
        "Streamed replies recorded as accepted out of order, twice, or after the final one",
        "`audit verify` requires strictly increasing `seq` per (request, host), none after the final",
        "schemas/tests/audit.rs::streamed_replies_accepted_twice_out_of_order_or_after_the_final_are_caught",
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

/// What the two broker-restart rows show, and what each delivery guarantees.
const DURABILITY: &str = "## What a request's durability buys\n\
\n\
Requests that change a host (`install`, `start`, `stop`, `restart`, `reload`, `delete`,\n\
`enable`, `disable`, `revocation`) are persistent messages in durable queues: a copy\n\
queued for a host survives a restart of its classic-queue node, and a quorum queue keeps\n\
it through the loss of a node. Reads (`ping`, `status`, `list`, `logs`, `facts`, `cancel`,\n\
`stats`) are transient unless `defaults.persistent_reads = true`: a restart drops a\n\
queued read from a classic queue, and it is the orchestrator that brings it back — the\n\
restart closes its connection too, and the reconnect publishes every call still in\n\
flight again, byte for byte, until the call's deadline. Either way each host answers\n\
once: a copy it has already answered gets the stored reply, and the orchestrator counts\n\
a second reply as a duplicate. What transient reads give up: a read queued for a host\n\
that is away when a broker restarts *and* whose caller is gone by then is lost — it had\n\
no one to answer anyway. What they buy (BENCHMARKS.md, run F): the broker's disk write\n\
before every confirm, a third of a 1,000-host ping's time. The two broker-restart rows\n\
above show both deliveries: the transient copy lost and the republished one answered\n\
once, the persistent copy kept; each host executed each call once. A call published\n\
once on `all` is republished on `all`: the hosts it does not select receive the copy\n\
again and drop it again (`not_target`), as the row for it above shows.\n\
\n\
";

/// What events guarantee, and what they do not (after the durability section).
const EVENTS: &str = "## Events\n\
\n\
Events (`started`, `alive`, `stopping`, unit events) are best effort, unlike requests:\n\
they are published transient, without publisher confirms, into a stream that keeps an\n\
hour (or 1 GiB). An agent cut off from the broker does not store its `alive` events for\n\
later — its silence is what marks it down — but keeps up to 64 unit events and sends\n\
them when it is connected again, late and still signed with the time they happened. A\n\
watch that loses the broker, or reads past what the stream already dropped, does not\n\
invent what it missed: its presence view says `unknown since` for that time. What a\n\
watch recorded is in its audit log (`event_accepted`) and verifies offline: every event\n\
that told it something new, and of the routine `alive`s one per host per\n\
`record_alive_every` (5 minutes by default); what it never received is nowhere. Failure detection therefore means \"silent for three intervals\",\n\
not \"crashed\": a SIGSTOPped agent, a partitioned host and a broker user whose\n\
connection was closed look the same. The end-to-end tests prove the first (down within\n\
three intervals, up again after SIGCONT).\n\
\n\
A watch's history is its window's events as the stream holds them, found by offset\n\
(`gearmq hosts` says `complete` once the reader took the last offset the stream held\n\
when it began). RabbitMQ 3.10.8 sometimes started a consumer attached at a recent\n\
timestamp at the next new message, with no error, so no watch relies on that; the\n\
end-to-end tests read a window out of a 3,000-message stream and count what they\n\
read before it, and drop a watch's connection for 2–4 s: it reads every event of that\n\
time when it is back, each once.\n\
";

/// What the cluster row cannot say in a cell: how to stop a node, and why.
const BROKER_CLUSTER: &str = "## Broker cluster\n\
\n\
Stop a RabbitMQ 3.10 cluster node for maintenance with `rabbitmq-upgrade drain` first:\n\
it moves its quorum queue leaders to the other members and closes its client\n\
connections, and gearmq's agents and orchestrators fail over to the next URL of their\n\
lists without losing a request (the cluster row above). A node stopped without draining\n\
can leave a quorum host queue's leader record naming the stopped node; RabbitMQ 3.10's\n\
channel then checks that node before the first publish to the queue and, finding it\n\
down, refuses (nacks) every publish from every channel opened since, until the record is\n\
repaired. The orchestrator publishes again with backoff until the call's deadline and\n\
then reports `the broker refused the request until the deadline`; nothing is run twice,\n\
but nothing gets through either. Seen twice in CI runs of the undrained test (20 of 20\n\
requests refused for 30 s each); the test now prints the queue's leader, members and the\n\
surviving nodes' logs if it loses a request.\n\
";

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
    println!("\n{}", DURABILITY.trim_end());
    println!("\n{}", EVENTS.trim_end());
    println!("\n{BROKER_CLUSTER}");
    println!("## Attacks\n");
    println!(
        "What a hostile review of gearmq tried, as an attacker would (a compromised host, a\n\
         broker user allowed to publish, someone with the broker's admin rights or a local\n\
         account on a host), what stops it, and the test that shows it stopped.\n"
    );
    println!("| Attack | What stops it | Test | Observed |");
    println!("|---|---|---|---|");
    for (attack, stops, test) in ATTACKS {
        let observed = match seen.get(test_name(test)) {
            Some(runs) => runs.iter().map(render).collect::<Vec<_>>().join("<br>"),
            None => "assertions only".into(),
        };
        println!("| {attack} | {stops} | `{test}` | {observed} |");
    }
    Ok(())
}
