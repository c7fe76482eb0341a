//! `cancel`: end a `logs --follow` stream the same caller started. The stream sends
//! its own final reply; this one only says the stream was told to end.

use super::{Action, ActionContext, ActionError};
use crate::streams::StreamError;
use gearmq_schemas::Status;
use gearmq_schemas::actions::{CancelArgs, CancelResult};

/// The `cancel` action.
#[derive(Debug)]
pub struct Cancel;

impl Action for Cancel {
    const NAME: &'static str = "cancel";
    type Args = CancelArgs;
    type Output = CancelResult;

    async fn apply(args: CancelArgs, ctx: &ActionContext) -> Result<CancelResult, ActionError> {
        match ctx
            .services
            .streams
            .cancel(args.request_id, &ctx.request.caller)
        {
            Ok(()) => Ok(CancelResult {
                request_id: args.request_id,
            }),
            Err(e @ StreamError::OtherCaller { .. }) => {
                Err(ActionError::new(Status::Unauthorized, e.to_string()))
            }
            Err(e @ StreamError::NotFound { .. }) => {
                Err(ActionError::new(Status::NotFound, e.to_string()))
            }
            Err(e @ StreamError::TooMany { .. }) => {
                Err(ActionError::new(Status::UnknownError, e.to_string()))
            }
        }
    }
}
