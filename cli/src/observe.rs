//! `gearmq stats`: what each agent did with the requests it received.

use crate::call::{self, CallOpts, Display, Invocation, TargetArgs, View};
use crate::context::Context;
use crate::render;
use anyhow::Result;
use clap::Args;
use gearmq_orchestrator::{CallResult, HostStatus};
use gearmq_schemas::actions::{StatsArgs, StatsResult};
use gearmq_schemas::codec;
use std::process::ExitCode;
use std::time::Duration;

/// Largest `stats` result decoded (a few counters and reason labels).
const MAX_STATS_BYTES: usize = 16 * 1024;

#[derive(Args)]
pub struct StatsCmd {
    #[command(flatten)]
    targets: TargetArgs,
    #[command(flatten)]
    opts: CallOpts,
}

struct StatsView;

impl View for StatsView {
    fn print_human(&self, result: &CallResult, display: Display) {
        let mut rows = Vec::new();
        for r in result.results.iter().filter(|r| display.shows(r)) {
            if r.status != HostStatus::Ok {
                render::print_problem(r);
                continue;
            }
            let Some(s) = r.data.as_deref().and_then(|d| {
                codec::decode::<StatsResult>("stats result", d, MAX_STATS_BYTES).ok()
            }) else {
                continue;
            };
            rows.push([
                r.host.to_string(),
                humantime::format_duration(Duration::from_secs(s.uptime_ms / 1000)).to_string(),
                s.verified.to_string(),
                s.executed.to_string(),
                refused_text(&s),
                s.dead_lettered.to_string(),
                s.reconnects.to_string(),
            ]);
        }
        render::print_table(
            &[
                "HOST",
                "UPTIME",
                "VERIFIED",
                "EXECUTED",
                "REFUSED",
                "DEAD",
                "RECONNECTS",
            ],
            &rows,
        );
        render::print_summary(result);
    }
}

/// The total refusals, then each reason: `3 (expired 2, replayed 1)`.
fn refused_text(s: &StatsResult) -> String {
    let total: u64 = s.refused.values().sum();
    if total == 0 {
        return "0".into();
    }
    let parts: Vec<String> = s.refused.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!("{total} ({})", parts.join(", "))
}

pub fn stats(ctx: &Context, a: StatsCmd) -> Result<ExitCode> {
    let inv = Invocation {
        selection: a.targets.selection()?,
        action: "stats",
        args: codec::encode(&StatsArgs {}),
        rollout: a.targets.rollout.clone(),
        opts: a.opts,
        ship: None,
    };
    call::run(ctx, inv, &StatsView)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_show_the_total_then_each_reason() {
        let mut s = StatsResult::default();
        assert_eq!(refused_text(&s), "0");
        s.refused.insert("expired".into(), 2);
        s.refused.insert("replayed".into(), 1);
        assert_eq!(refused_text(&s), "3 (expired 2, replayed 1)");
    }
}
