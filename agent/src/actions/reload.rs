//! `reload`: a running unit reloads its configuration (systemd's `ReloadUnit`, the
//! unit's `ExecReload=`), keeping its main process. gearmq's own units reload with
//! SIGHUP to their main process; an existing unit as it defines.

use super::{Action, ActionContext, ActionError, Target};
use crate::systemd::Job;
use gearmq_schemas::Status;
use gearmq_schemas::actions::{Change, UnitArgs, UnitChangeResult};

/// The `reload` action.
#[derive(Debug)]
pub struct Reload;

impl Action for Reload {
    const NAME: &'static str = "reload";
    type Args = UnitArgs;
    type Output = UnitChangeResult;

    async fn apply(args: UnitArgs, ctx: &ActionContext) -> Result<UnitChangeResult, ActionError> {
        let services = &ctx.services;
        let _lock = services.locks.lock(&args.unit).await;
        let target = Target::resolve(services, &args.unit, Self::NAME).await?;
        let file = target.systemd_name();
        let props = services.systemd.unit_props(&file).await?;
        // Reloading twice is harmless, so a redelivered request needs no intent record.
        if !props.is_active() {
            return Err(ActionError::new(
                Status::Conflict,
                format!(
                    "unit {} is {}: only a running unit can reload (start or restart it)",
                    target.name(),
                    props.active_state
                ),
            ));
        }
        if !services.systemd.can_reload(&file).await? {
            return Err(ActionError::new(
                Status::Conflict,
                format!(
                    "unit {} cannot reload (it has no ExecReload=); restart it instead",
                    target.name()
                ),
            ));
        }
        services.systemd.run_job(Job::Reload, &file).await?;
        Ok(UnitChangeResult {
            change: Change::Reloaded,
            then: None,
            state: Some(target.state(services).await?),
        })
    }
}
