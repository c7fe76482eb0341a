//! `logs`: the last lines of a unit's output, or (with `follow`) the start of a
//! stream of new lines, which the handler runs.

use super::{Action, ActionContext, ActionError, Services, Target, blocking};
use crate::journal::JournalPos;
use crate::verifier::now_ms;
use gearmq_schemas::Status;
use gearmq_schemas::actions::{LogsArgs, LogsResult};
use std::sync::Arc;

/// The `logs` action.
#[derive(Debug)]
pub struct Logs;

/// A `logs --follow` ready to stream: the lines so far, and where new ones start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowStart {
    /// The unit followed, as the request named it.
    pub unit: String,
    /// The last lines, for the first reply.
    pub initial: LogsResult,
    /// Where new lines are read from.
    pub position: Position,
}

/// Where a unit's output continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// A gearmq unit's output file (file mode), from this offset.
    File {
        /// The gearmq unit.
        unit: String,
        /// The file offset.
        offset: u64,
    },
    /// The journal (journal mode, and existing units).
    Journal {
        /// The systemd unit name.
        unit: String,
        /// After which entry, or since when.
        after: JournalPos,
    },
}

/// New lines at `pos` (with `partial`, a file's last line without newline too), at
/// most one reply's worth; `pos` moves past them.
pub async fn read_more(
    services: &Arc<Services>,
    pos: &mut Position,
    partial: bool,
) -> std::io::Result<LogsResult> {
    let max = services.limits.max_log_bytes;
    match pos {
        Position::File { unit, offset } => {
            let s = services.clone();
            let (u, o) = (unit.clone(), *offset);
            let chunk =
                tokio::task::spawn_blocking(move || s.output.read_from(&u, o, max, partial))
                    .await
                    .map_err(std::io::Error::other)??;
            *offset = chunk.next_offset;
            Ok(LogsResult {
                lines: chunk.lines,
                truncated: chunk.truncated,
            })
        }
        Position::Journal { unit, after } => {
            let journal = services
                .journal
                .as_ref()
                .ok_or_else(|| std::io::Error::other("this agent does not read the journal"))?;
            let lines = services.limits.max_log_lines as usize;
            let chunk = journal.after(unit, after, lines, max).await?;
            if let Some(c) = chunk.cursor {
                *after = JournalPos::After(c);
            }
            Ok(LogsResult {
                lines: chunk.lines,
                truncated: chunk.truncated,
            })
        }
    }
}

impl Action for Logs {
    const NAME: &'static str = "logs";
    type Args = LogsArgs;
    type Output = LogsResult;

    async fn apply(args: LogsArgs, ctx: &ActionContext) -> Result<LogsResult, ActionError> {
        Ok(open(args, ctx).await?.initial)
    }
}

/// Checks the unit and reads its last lines: from its output file (a gearmq unit in
/// file mode) or the journal (journal mode, and allowlisted existing units). The
/// position is taken first, so a line written meanwhile may appear twice but is never
/// lost.
pub async fn open(args: LogsArgs, ctx: &ActionContext) -> Result<FollowStart, ActionError> {
    let services = ctx.services.clone();
    let target = Target::resolve(&services, &args.unit, Logs::NAME).await?;
    let lines = args.lines.min(services.limits.max_log_lines) as usize;
    let max_bytes = services.limits.max_log_bytes;
    let cannot_read = |e: std::io::Error| {
        ActionError::new(
            Status::UnknownError,
            format!("cannot read the output of unit {}: {e}", args.unit),
        )
    };
    let journal = match (&target, &services.journal) {
        (_, Some(j)) => j,
        (Target::Existing { unit }, None) => {
            return Err(ActionError::new(
                Status::Conflict,
                format!(
                    "{unit} is not a unit gearmq created: its output goes to the journal, which \
                     this agent does not read (its [systemd] output is \"file\"); use \
                     journalctl -u {unit} on the host"
                ),
            ));
        }
        (Target::Managed { .. }, None) => {
            let unit = args.unit.clone();
            let (offset, initial) = blocking(move || {
                let offset = services.output.end_offset(&unit);
                (offset, services.output.tail(&unit, lines, max_bytes))
            })
            .await?;
            return Ok(FollowStart {
                position: Position::File {
                    unit: args.unit.clone(),
                    offset,
                },
                initial: initial.map_err(cannot_read)?,
                unit: args.unit,
            });
        }
    };
    let since = now_ms().saturating_mul(1000);
    let unit = target.systemd_name();
    let chunk = journal
        .tail(&unit, lines, max_bytes)
        .await
        .map_err(cannot_read)?;
    let after = match chunk.cursor {
        Some(c) => JournalPos::After(c),
        None => JournalPos::Since(since),
    };
    Ok(FollowStart {
        unit: args.unit,
        initial: LogsResult {
            lines: chunk.lines,
            truncated: chunk.truncated,
        },
        position: Position::Journal { unit, after },
    })
}
