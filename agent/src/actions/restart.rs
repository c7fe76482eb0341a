//! `restart`: restart a unit (starting it if stopped) and wait for its job.

use super::{Action, ActionContext, ActionError, Target, before_of};
use crate::records::Desired;
use crate::systemd::Job;
use gearmq_schemas::actions::{Change, UnitArgs, UnitChangeResult};

/// The `restart` action.
#[derive(Debug)]
pub struct Restart;

impl Action for Restart {
    const NAME: &'static str = "restart";
    type Args = UnitArgs;
    type Output = UnitChangeResult;

    async fn apply(args: UnitArgs, ctx: &ActionContext) -> Result<UnitChangeResult, ActionError> {
        let services = &ctx.services;
        let _lock = services.locks.lock(&args.unit).await;
        let target = Target::resolve(services, &args.unit, Self::NAME).await?;
        let file = target.systemd_name();
        let props = services.systemd.unit_props(&file).await?;
        // An interrupted run of this request restarted it if it runs now with another
        // main process or a later activation than the run found.
        let done_before = ctx.previous_intent().is_some_and(|i| {
            props.is_active()
                && (props.main_pid != i.before.main_pid
                    || props.active_enter_us != i.before.active_enter_us)
        });
        if !done_before {
            ctx.record_intent(
                &args.unit,
                Desired::Restarted,
                before_of(target.text(), &props),
            )
            .await?;
            services.systemd.run_job(Job::Restart, &file).await?;
        }
        Ok(UnitChangeResult {
            change: Change::Restarted,
            then: None,
            state: Some(target.state(services).await?),
        })
    }
}
