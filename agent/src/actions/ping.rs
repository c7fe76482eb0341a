//! `ping`: proves the agent is alive, verifies requests and signs replies.

use super::{Action, ActionContext, ActionError};
use gearmq_schemas::actions::{PingArgs, PingResult};

/// The `ping` action.
#[derive(Debug)]
pub struct Ping;

impl Action for Ping {
    const NAME: &'static str = "ping";
    type Args = PingArgs;
    type Output = PingResult;

    async fn apply(_args: PingArgs, ctx: &ActionContext) -> Result<PingResult, ActionError> {
        Ok(PingResult {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: gearmq_schemas::time::duration_ms(ctx.services.agent_started.elapsed()),
        })
    }
}
