//! `status`: one unit's state (gearmq's own, or an allowlisted existing one), or
//! every unit gearmq manages.

use super::{
    Action, ActionContext, ActionError, Services, Target, blocking, managed_unit_text, unit_state,
};
use gearmq_schemas::actions::{StatusArgs, UnitsResult};
use std::sync::Arc;

/// The `status` action.
#[derive(Debug)]
pub struct UnitStatus;

impl Action for UnitStatus {
    const NAME: &'static str = "status";
    type Args = StatusArgs;
    type Output = UnitsResult;

    async fn apply(args: StatusArgs, ctx: &ActionContext) -> Result<UnitsResult, ActionError> {
        match args.unit {
            Some(unit) => {
                let target = Target::resolve(&ctx.services, &unit, Self::NAME).await?;
                Ok(UnitsResult {
                    units: vec![target.state(&ctx.services).await?],
                })
            }
            None => all_units(&ctx.services).await,
        }
    }
}

/// The state of every unit gearmq manages here, in name order.
pub async fn all_units(services: &Arc<Services>) -> Result<UnitsResult, ActionError> {
    // Even with no unit installed, an unreachable systemd is an error, not "none".
    services.systemd.ensure_connected().await?;
    let s = services.clone();
    let names = blocking(move || s.units.list()).await??;
    let mut units = Vec::with_capacity(names.len());
    for unit in names {
        // A unit deleted between the listing and now is simply not shown.
        let Ok(text) = managed_unit_text(services, &unit).await else {
            continue;
        };
        units.push(unit_state(services, &unit, &text).await?);
    }
    Ok(UnitsResult { units })
}
