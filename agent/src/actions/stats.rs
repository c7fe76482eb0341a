//! `stats`: the agent's counters, so an operator can see what it did with requests.

use super::{Action, ActionContext, ActionError};
use gearmq_schemas::actions::{StatsArgs, StatsResult};

/// The `stats` action.
#[derive(Debug)]
pub struct Stats;

impl Action for Stats {
    const NAME: &'static str = "stats";
    type Args = StatsArgs;
    type Output = StatsResult;

    async fn apply(_args: StatsArgs, ctx: &ActionContext) -> Result<StatsResult, ActionError> {
        let s = ctx.services.stats.snapshot();
        Ok(StatsResult {
            uptime_ms: gearmq_schemas::time::duration_ms(ctx.services.agent_started.elapsed()),
            received: s.received,
            verified: s.verified,
            executed: s.executed,
            not_target: s.not_target,
            dead_lettered: s.dead_lettered,
            reconnects: s.reconnects,
            refused: s
                .refused
                .into_iter()
                .map(|(reason, n)| (reason.to_string(), n))
                .collect(),
            audited: s.audited,
            audited_repeats: s.audited_repeats,
            resent: s.resent,
            replay_entries: s.replay_entries,
            replay_bytes: s.replay_bytes,
        })
    }
}
