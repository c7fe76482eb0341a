//! `stop`: stop a unit and wait for its job; a stopped unit is left alone.

use super::{Action, ActionContext, ActionError, Target, before_of};
use crate::records::Desired;
use crate::systemd::Job;
use gearmq_schemas::actions::{Change, UnitArgs, UnitChangeResult};

/// The `stop` action.
#[derive(Debug)]
pub struct Stop;

impl Action for Stop {
    const NAME: &'static str = "stop";
    type Args = UnitArgs;
    type Output = UnitChangeResult;

    async fn apply(args: UnitArgs, ctx: &ActionContext) -> Result<UnitChangeResult, ActionError> {
        let services = &ctx.services;
        let _lock = services.locks.lock(&args.unit).await;
        let target = Target::resolve(services, &args.unit, Self::NAME).await?;
        let file = target.systemd_name();
        let props = services.systemd.unit_props(&file).await?;
        let change = match ctx.previous_intent() {
            Some(i) if i.before.active && !props.is_active() => Change::Stopped,
            _ if !props.is_active() => Change::AlreadyStopped,
            _ => {
                ctx.record_intent(
                    &args.unit,
                    Desired::Inactive,
                    before_of(target.text(), &props),
                )
                .await?;
                services.systemd.run_job(Job::Stop, &file).await?;
                Change::Stopped
            }
        };
        Ok(UnitChangeResult {
            change,
            then: None,
            state: Some(target.state(services).await?),
        })
    }
}
