//! `enable` and `disable`: whether a unit gearmq manages is started at boot (its
//! `[Install]` section's target pulls it in), through the manager's
//! `EnableUnitFiles`/`DisableUnitFiles`, never `systemctl`.

use super::{Action, ActionContext, ActionError, check_unit, managed_unit_text, unit_state};
use gearmq_schemas::actions::{Change, UnitArgs, UnitChangeResult};
use gearmq_schemas::units::unit_file_name;

/// The `enable` action.
#[derive(Debug)]
pub struct Enable;

/// The `disable` action.
#[derive(Debug)]
pub struct Disable;

/// Enables (`on`) or disables a managed unit; idempotent, so a redelivered request
/// needs no intent record.
async fn set_enabled(
    args: UnitArgs,
    ctx: &ActionContext,
    on: bool,
) -> Result<UnitChangeResult, ActionError> {
    check_unit(&args.unit)?;
    let services = &ctx.services;
    let _lock = services.locks.lock(&args.unit).await;
    let text = managed_unit_text(services, &args.unit).await?;
    let file = unit_file_name(&args.unit);
    let props = services.systemd.unit_props(&file).await?;
    let enabled = props.unit_file_state == "enabled";
    let change = match (on, enabled) {
        (true, true) => Change::AlreadyEnabled,
        (false, false) => Change::AlreadyDisabled,
        (true, false) => {
            services.systemd.enable(&file).await?;
            Change::Enabled
        }
        (false, true) => {
            services.systemd.disable(&file).await?;
            Change::Disabled
        }
    };
    Ok(UnitChangeResult {
        change,
        then: None,
        state: Some(unit_state(services, &args.unit, &text).await?),
    })
}

impl Action for Enable {
    const NAME: &'static str = "enable";
    type Args = UnitArgs;
    type Output = UnitChangeResult;

    async fn apply(args: UnitArgs, ctx: &ActionContext) -> Result<UnitChangeResult, ActionError> {
        set_enabled(args, ctx, true).await
    }
}

impl Action for Disable {
    const NAME: &'static str = "disable";
    type Args = UnitArgs;
    type Output = UnitChangeResult;

    async fn apply(args: UnitArgs, ctx: &ActionContext) -> Result<UnitChangeResult, ActionError> {
        set_enabled(args, ctx, false).await
    }
}
