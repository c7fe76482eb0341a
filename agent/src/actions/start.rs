//! `start`: start a unit and wait for its job; a running unit is left alone.

use super::{Action, ActionContext, ActionError, Target, before_of};
use crate::records::Desired;
use crate::systemd::Job;
use gearmq_schemas::actions::{Change, UnitArgs, UnitChangeResult};

/// The `start` action.
#[derive(Debug)]
pub struct Start;

impl Action for Start {
    const NAME: &'static str = "start";
    type Args = UnitArgs;
    type Output = UnitChangeResult;

    async fn apply(args: UnitArgs, ctx: &ActionContext) -> Result<UnitChangeResult, ActionError> {
        let services = &ctx.services;
        let _lock = services.locks.lock(&args.unit).await;
        let target = Target::resolve(services, &args.unit, Self::NAME).await?;
        let file = target.systemd_name();
        let props = services.systemd.unit_props(&file).await?;
        let change = match ctx.previous_intent() {
            // An interrupted run of this request found it stopped; it runs now, so
            // that run started it.
            Some(i) if !i.before.active && props.is_active() => Change::Started,
            _ if props.is_active() => Change::AlreadyRunning,
            _ => {
                ctx.record_intent(
                    &args.unit,
                    Desired::Active,
                    before_of(target.text(), &props),
                )
                .await?;
                services.systemd.run_job(Job::Start, &file).await?;
                Change::Started
            }
        };
        Ok(UnitChangeResult {
            change,
            then: None,
            state: Some(target.state(services).await?),
        })
    }
}
