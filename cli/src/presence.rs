//! `gearmq hosts` and `gearmq watch`: the fleet as its signed events show it.
//!
//! Both read the `gearmq.events` stream, where every agent publishes `started`,
//! `alive` (every interval), `stopping` and unit events, each signed by its host.
//! Only events that pass every check are used; the others are counted by reason.

use crate::call::runtime;
use crate::context::Context;
use crate::render;
use anyhow::{Result, bail};
use clap::Args;
use gearmq_orchestrator::events::DOWN_AFTER_INTERVALS;
use gearmq_orchestrator::{
    EventWatch, HostPresence, Orchestrator, PresenceState, Selection, VerifiedEvent, WatchOptions,
};
use gearmq_schemas::Name;
use gearmq_schemas::event::What;
use gearmq_schemas::time::now_ms;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How much history `hosts` reads, and `watch` reads for its first view: three of
/// the agents' default 10-s intervals, and a little.
const DEFAULT_WINDOW: &str = "35s";

#[derive(Args)]
pub struct HostsCmd {
    /// Which hosts: host names (web1,web2), @all, or label clauses (role=web);
    /// default every host in the inventory.
    #[arg(value_name = "TARGETS")]
    targets: Option<String>,
    /// Hosts whose labels match (repeatable; all must hold): KEY=VALUE, KEY!=VALUE,
    /// KEY~REGEX.
    #[arg(long = "where", value_name = "EXPR", conflicts_with = "targets")]
    wheres: Vec<String>,
    /// List only the hosts that are not up (down, stopped, never seen, unknown).
    #[arg(long)]
    down: bool,
    /// Read the events signed in this much time before now. A host is down after three
    /// of its intervals without an event, so make it at least three times the agents'
    /// `[events] interval` (default 10s).
    #[arg(long, default_value = DEFAULT_WINDOW, value_parser = humantime::parse_duration)]
    since: Duration,
    /// How long to wait for the broker to deliver that history.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    wait: Duration,
    /// One JSON object: the hosts, the counts and the rejected events.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct WatchCmd {
    /// Which hosts: host names (web1,web2), @all, or label clauses (role=web);
    /// default every host in the inventory.
    #[arg(value_name = "TARGETS")]
    targets: Option<String>,
    /// Hosts whose labels match (repeatable; all must hold): KEY=VALUE, KEY!=VALUE,
    /// KEY~REGEX.
    #[arg(long = "where", value_name = "EXPR", conflicts_with = "targets")]
    wheres: Vec<String>,
    /// Also show the events signed in this much time before now (default: only what
    /// comes). The presence view always starts from the last 35s.
    #[arg(long, value_parser = humantime::parse_duration)]
    since: Option<Duration>,
    /// Stop after this many events have been shown.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Only events, no presence changes (up, down, stopped).
    #[arg(long)]
    events_only: bool,
    /// Of the `alive` events that only repeat that a host is up, write one per host
    /// per this much time to the audit log (0: every one). Every other event (started,
    /// stopping, unit, an alive after silence or from a new boot) is always written.
    /// Every event is shown either way.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    record_alive_every: Duration,
    /// One JSON object a line: {"type":"event",…} or {"type":"presence",…}.
    #[arg(long)]
    json: bool,
}

fn selection(targets: &Option<String>, wheres: &[String]) -> Result<Selection> {
    if let Some(t) = targets {
        return crate::call::hosts_selection(t);
    }
    if wheres.is_empty() {
        return Ok(Selection::All);
    }
    let clauses = wheres
        .iter()
        .map(|w| crate::call::parse_where(w))
        .collect::<Result<Vec<_>>>()?;
    Ok(Selection::Where(clauses))
}

/// The hosts `selection` denotes in the inventory; a named host not in it is an error.
fn selected(orch: &Orchestrator, selection: &Selection) -> Result<BTreeSet<Name>> {
    let resolved = orch.resolve(selection)?;
    if !resolved.unknown.is_empty() {
        bail!(
            "not in the inventory: {}",
            resolved
                .unknown
                .iter()
                .map(Name::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(resolved.hosts.into_iter().collect())
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// `3s`, `2m 5s`: how long ago `ms` was, to the second.
fn ago(ms: u64, now: u64) -> String {
    let secs = now.saturating_sub(ms) / 1000;
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

fn state_text(p: &HostPresence) -> String {
    match p.state {
        PresenceState::NeverSeen => "never seen".into(),
        PresenceState::Unknown => match p.unknown_since {
            Some(t) => format!("unknown since {}", rfc3339(t)),
            None => "unknown".into(),
        },
        s => s.as_str().into(),
    }
}

fn presence_json(p: &HostPresence) -> Value {
    json!({
        "host": p.host.as_str(),
        "state": p.state.as_str(),
        "unknown_since": p.unknown_since,
        "last_seen": p.last_seen,
        "last_event": p.last_event,
        "agent_version": p.agent_version,
        "interval_ms": p.interval_ms,
        "boot": p.boot.map(hex::encode),
        "agent_restarts_seen": p.restarts_seen,
    })
}

fn rejected_text(rejected: &BTreeMap<&'static str, u64>) -> String {
    rejected
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn hosts(ctx: &Context, a: HostsCmd) -> Result<ExitCode> {
    let config = ctx.load_config()?;
    let selection = selection(&a.targets, &a.wheres)?;
    let rt = runtime()?;
    crate::call::on_workers(&rt, async move {
        let orch = Orchestrator::connect(&config).await?;
        let hosts = selected(&orch, &selection)?;
        let watch = orch
            .events(WatchOptions {
                since: a.since,
                // A look, not a watch: nothing is recorded.
                record: false,
                yield_events: false,
                ..WatchOptions::default()
            })
            .await?;
        let complete = watch.caught_up(a.wait).await;
        let now = now_ms();
        let view: Vec<HostPresence> = watch
            .presence()
            .into_iter()
            .filter(|p| hosts.contains(&p.host))
            .collect();
        let rejected = watch.rejections();
        watch.close().await;
        orch.close().await;
        let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
        for p in &view {
            *counts.entry(p.state.as_str()).or_default() += 1;
        }
        let any_down = view.iter().any(|p| p.state != PresenceState::Up);
        let shown: Vec<&HostPresence> = view
            .iter()
            .filter(|p| !a.down || p.state != PresenceState::Up)
            .collect();
        if a.json {
            let out = json!({
                "hosts": shown.iter().map(|p| presence_json(p)).collect::<Vec<_>>(),
                "summary": {
                    "hosts": view.len(),
                    "states": counts,
                    "window_ms": gearmq_schemas::time::duration_ms(a.since),
                    "complete": complete,
                    "rejected": rejected,
                },
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            let rows: Vec<[String; 6]> = shown
                .iter()
                .map(|p| {
                    [
                        p.host.to_string(),
                        state_text(p),
                        p.last_seen.map(rfc3339).unwrap_or_else(|| "-".into()),
                        p.last_seen
                            .map(|t| ago(t, now))
                            .unwrap_or_else(|| "-".into()),
                        p.agent_version.clone().unwrap_or_else(|| "-".into()),
                        p.last_event.unwrap_or("-").to_string(),
                    ]
                })
                .collect();
            if !rows.is_empty() {
                render::print_table(
                    &["HOST", "STATE", "LAST SEEN", "AGO", "VERSION", "LAST EVENT"],
                    &rows,
                );
            }
            let states = counts
                .iter()
                .map(|(s, n)| format!("{n} {}", s.replace('_', " ")))
                .collect::<Vec<_>>()
                .join(", ");
            let mut line = format!(
                "{} hosts: {states} (events of the last {} read{})",
                view.len(),
                humantime::format_duration(a.since),
                if complete {
                    ""
                } else {
                    ", the broker had not delivered all of them in time"
                }
            );
            if !rejected.is_empty() {
                line.push_str(&format!("; rejected: {}", rejected_text(&rejected)));
            }
            println!("{line}");
        }
        Ok(if any_down {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        })
    })
}

fn event_json(ev: &VerifiedEvent) -> Value {
    let mut v = json!({
        "type": "event",
        "host": ev.host.as_str(),
        "event": ev.what.name(),
        "time": ev.time,
        "boot": hex::encode(ev.boot),
        "seq": ev.seq,
    });
    match &ev.what {
        What::Started {
            agent_version,
            labels,
            credential_not_after,
            interval_ms,
        } => {
            v["agent_version"] = json!(agent_version);
            v["labels"] = json!(labels);
            v["credential_not_after"] = json!(credential_not_after);
            v["interval_ms"] = json!(interval_ms);
        }
        What::Alive {
            agent_version,
            interval_ms,
        } => {
            v["agent_version"] = json!(agent_version);
            v["interval_ms"] = json!(interval_ms);
        }
        What::Stopping {} => {}
        What::Unit {
            unit,
            change,
            active_state,
            sub_state,
            result,
            restarts,
        } => {
            v["unit"] = json!(unit);
            v["change"] = json!(change.as_str());
            v["active_state"] = json!(active_state);
            v["sub_state"] = json!(sub_state);
            v["result"] = json!(result);
            v["restarts"] = json!(restarts);
        }
    }
    v
}

fn event_text(ev: &VerifiedEvent) -> String {
    let detail = match &ev.what {
        What::Started {
            agent_version,
            labels,
            credential_not_after,
            interval_ms,
        } => {
            let labels = labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            format!(
                "agent {agent_version}, alive every {}, labels {}, credential until {}",
                humantime::format_duration(Duration::from_millis(*interval_ms)),
                if labels.is_empty() { "-" } else { &labels },
                rfc3339(*credential_not_after)
            )
        }
        What::Alive { agent_version, .. } => format!("agent {agent_version}"),
        What::Stopping {} => "shutting down cleanly".into(),
        What::Unit {
            unit,
            change,
            active_state,
            sub_state,
            result,
            restarts,
        } => format!(
            "{unit} {} (result {result}, now {active_state}/{sub_state}, restarts {restarts})",
            change.as_str()
        ),
    };
    format!(
        "{}  {}  {:<8}  {detail}",
        rfc3339(ev.time),
        ev.host,
        ev.what.name()
    )
}

fn presence_change_text(p: &HostPresence, now: u64) -> String {
    let why = match p.state {
        PresenceState::Down => format!(
            "no event for {} intervals; last seen {}",
            DOWN_AFTER_INTERVALS,
            p.last_seen.map(rfc3339).unwrap_or_else(|| "never".into())
        ),
        PresenceState::NeverSeen => "no event since the watch began".into(),
        PresenceState::Stopped => "its agent shut down cleanly".into(),
        PresenceState::Up => p
            .agent_version
            .as_ref()
            .map(|v| format!("agent {v}"))
            .unwrap_or_default(),
        PresenceState::Unknown => "the watch could not hear it".into(),
    };
    format!("{}  {}  {:<8}  {why}", rfc3339(now), p.host, state_text(p))
}

pub fn watch(ctx: &Context, a: WatchCmd) -> Result<ExitCode> {
    let config = ctx.load_config()?;
    let selection = selection(&a.targets, &a.wheres)?;
    let rt = runtime()?;
    crate::call::on_workers(&rt, async move {
        let orch = Orchestrator::connect(&config).await?;
        let hosts = selected(&orch, &selection)?;
        let window = humantime::parse_duration(DEFAULT_WINDOW)?;
        let shown_since = a.since.unwrap_or_default();
        let started = now_ms();
        let first_shown = started.saturating_sub(gearmq_schemas::time::duration_ms(shown_since));
        let mut watch: EventWatch = orch
            .events(WatchOptions {
                since: window.max(shown_since),
                record: true,
                record_alive_every: a.record_alive_every,
                yield_events: true,
            })
            .await?;
        let deadline = a.duration.map(|d| Instant::now() + d);
        let mut shown = 0u64;
        let mut last_states: BTreeMap<Name, PresenceState> = BTreeMap::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut baseline = false;
        let end = loop {
            if a.count.is_some_and(|n| shown >= n) {
                break "count";
            }
            let until_deadline = deadline
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(3600));
            if deadline.is_some() && until_deadline.is_zero() {
                break "time";
            }
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break "interrupted",
                _ = tokio::time::sleep(until_deadline) => {}
                ev = watch.next() => match ev {
                    None => break "closed",
                    Some(ev) => {
                        if !hosts.contains(&ev.host) || ev.time < first_shown {
                            continue;
                        }
                        if a.json {
                            println!("{}", event_json(&ev));
                        } else {
                            println!("{}", event_text(&ev));
                        }
                        shown += 1;
                    }
                },
                _ = tick.tick(), if !a.events_only => {
                    // The first view is taken once the history is read: its states are
                    // the baseline, and only changes from it are shown.
                    if !baseline {
                        if !watch.caught_up(Duration::ZERO).await {
                            continue;
                        }
                        baseline = true;
                    }
                    let now = now_ms();
                    for p in watch.presence().into_iter().filter(|p| hosts.contains(&p.host)) {
                        let before = last_states.insert(p.host.clone(), p.state);
                        if before == Some(p.state) {
                            continue;
                        }
                        if a.json {
                            let mut v = presence_json(&p);
                            v["type"] = json!("presence");
                            v["time"] = json!(now);
                            println!("{v}");
                        } else {
                            println!("{}", presence_change_text(&p, now));
                        }
                    }
                }
            }
        };
        let rejected = watch.rejections();
        watch.close().await;
        let flushed = orch.flush_audit().await;
        orch.close().await;
        if !rejected.is_empty() {
            eprintln!("rejected events: {}", rejected_text(&rejected));
        }
        tracing::debug!(end, shown, "watch ended");
        if flushed.is_err() {
            return Ok(ExitCode::from(3));
        }
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_event_reads_as_one_line() {
        let ev = VerifiedEvent {
            host: Name::new("web1").unwrap(),
            boot: [0xab; 16],
            seq: 4,
            time: 1_800_000_000_000,
            what: What::Unit {
                unit: "web".into(),
                change: gearmq_schemas::event::UnitChange::Restarted,
                active_state: "activating".into(),
                sub_state: "auto-restart".into(),
                result: "exit-code".into(),
                restarts: 2,
            },
            bytes: vec![],
        };
        assert_eq!(
            event_text(&ev),
            "2027-01-15T08:00:00Z  web1  unit      web restarted (result exit-code, now activating/auto-restart, restarts 2)"
        );
        let j = event_json(&ev);
        assert_eq!(j["change"], "restarted");
        assert_eq!(j["restarts"], 2);
        assert_eq!(j["boot"], "ab".repeat(16));
    }
}
