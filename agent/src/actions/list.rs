//! `list`: every unit gearmq manages on this host, with its state.

use super::status::all_units;
use super::{Action, ActionContext, ActionError};
use gearmq_schemas::actions::{ListArgs, UnitsResult};

/// The `list` action.
#[derive(Debug)]
pub struct List;

impl Action for List {
    const NAME: &'static str = "list";
    type Args = ListArgs;
    type Output = UnitsResult;

    async fn apply(_args: ListArgs, ctx: &ActionContext) -> Result<UnitsResult, ActionError> {
        all_units(&ctx.services).await
    }
}
