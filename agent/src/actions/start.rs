//! `start`: start a unit and wait for its job; a running unit is left alone.

use super::{
    Action, ActionContext, ActionError, before_of, check_unit, managed_unit_text, unit_state,
};
use crate::records::Desired;
use crate::systemd::Job;
use gearmq_schemas::actions::{Change, UnitArgs, UnitChangeResult};
use gearmq_schemas::units::unit_file_name;

/// The `start` action.
#[derive(Debug)]
pub struct Start;

impl Action for Start {
    const NAME: &'static str = "start";
    type Args = UnitArgs;
    type Output = UnitChangeResult;

    async fn apply(args: UnitArgs, ctx: &ActionContext) -> Result<UnitChangeResult, ActionError> {
        check_unit(&args.unit)?;
        let services = &ctx.services;
        let _lock = services.locks.lock(&args.unit).await;
        let text = managed_unit_text(services, &args.unit).await?;
        let file = unit_file_name(&args.unit);
        let props = services.systemd.unit_props(&file).await?;
        let change = match ctx.previous_intent() {
            // An interrupted run of this request found it stopped; it runs now, so
            // that run started it.
            Some(i) if !i.before.active && props.is_active() => Change::Started,
            _ if props.is_active() => Change::AlreadyRunning,
            _ => {
                ctx.record_intent(&args.unit, Desired::Active, before_of(Some(&text), &props))
                    .await?;
                services.systemd.run_job(Job::Start, &file).await?;
                Change::Started
            }
        };
        Ok(UnitChangeResult {
            change,
            then: None,
            state: Some(unit_state(services, &args.unit, &text).await?),
        })
    }
}
