//! `logs`: the last lines of a unit's output, or (with `follow`) the start of a
//! stream of new lines, which the handler runs.

use super::{Action, ActionContext, ActionError, blocking, check_unit, managed_unit_text};
use gearmq_schemas::Status;
use gearmq_schemas::actions::{LogsArgs, LogsResult};

/// The `logs` action.
#[derive(Debug)]
pub struct Logs;

/// A `logs --follow` ready to stream: the lines so far, and where new ones start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowStart {
    /// The unit followed.
    pub unit: String,
    /// The last lines, for the first reply.
    pub initial: LogsResult,
    /// The output file offset new lines are read from.
    pub offset: u64,
}

impl Action for Logs {
    const NAME: &'static str = "logs";
    type Args = LogsArgs;
    type Output = LogsResult;

    async fn apply(args: LogsArgs, ctx: &ActionContext) -> Result<LogsResult, ActionError> {
        Ok(open(args, ctx).await?.initial)
    }
}

/// Checks the unit and reads its last lines; the offset is taken first, so a line
/// written meanwhile may appear twice but is never lost.
pub async fn open(args: LogsArgs, ctx: &ActionContext) -> Result<FollowStart, ActionError> {
    check_unit(&args.unit)?;
    let services = ctx.services.clone();
    managed_unit_text(&services, &args.unit).await?;
    let lines = args.lines.min(services.limits.max_log_lines) as usize;
    let max_bytes = services.limits.max_log_bytes;
    let unit = args.unit.clone();
    let (offset, initial) = blocking(move || {
        let offset = services.output.end_offset(&unit);
        (offset, services.output.tail(&unit, lines, max_bytes))
    })
    .await?;
    let initial = initial.map_err(|e| {
        ActionError::new(
            Status::UnknownError,
            format!("cannot read the output of unit {}: {e}", args.unit),
        )
    })?;
    Ok(FollowStart {
        unit: args.unit,
        initial,
        offset,
    })
}
