//! `delete`: stop a unit, disable it, remove its file, spec and output, daemon-reload.
//! Deleting a unit that is not there is fine (`absent`).

use super::{Action, ActionContext, ActionError, before_of, blocking, check_unit};
use crate::records::Desired;
use crate::systemd::Job;
use gearmq_schemas::Status;
use gearmq_schemas::actions::{Change, UnitArgs, UnitChangeResult};
use gearmq_schemas::units::unit_file_name;

/// The `delete` action.
#[derive(Debug)]
pub struct Delete;

impl Action for Delete {
    const NAME: &'static str = "delete";
    type Args = UnitArgs;
    type Output = UnitChangeResult;

    async fn apply(args: UnitArgs, ctx: &ActionContext) -> Result<UnitChangeResult, ActionError> {
        check_unit(&args.unit)?;
        let services = &ctx.services;
        let unit = args.unit;
        let _lock = services.locks.lock(&unit).await;
        let s = services.clone();
        let u = unit.clone();
        // A file gearmq did not write is "not found" and left alone.
        let text = blocking(move || s.units.read(&u)).await??;
        let has_spec = services.units.spec(&unit).is_some();
        if text.is_none() && !has_spec {
            let change = if ctx.previous_intent().is_some() {
                // An interrupted run of this request removed it.
                Change::Deleted
            } else {
                Change::Absent
            };
            return Ok(UnitChangeResult {
                change,
                then: None,
                state: None,
            });
        }
        let file = unit_file_name(&unit);
        // Reach systemd before removing anything.
        let props = services.systemd.unit_props(&file).await?;
        ctx.record_intent(&unit, Desired::Absent, before_of(text.as_deref(), &props))
            .await?;
        if props.is_active() {
            services.systemd.run_job(Job::Stop, &file).await?;
        }
        // Disabled first: no link to the file is left behind for the next boot.
        if props.unit_file_state == "enabled" && text.is_some() {
            services.systemd.disable(&file).await?;
        }
        let s = services.clone();
        let u = unit.clone();
        blocking(move || -> Result<(), ActionError> {
            s.units.remove(&u)?;
            s.units.remove_spec(&u)?;
            s.output.remove(&u).map_err(|e| {
                ActionError::new(
                    Status::UnknownError,
                    format!("cannot remove the output of unit {u}: {e}"),
                )
            })
        })
        .await??;
        services.systemd.reload().await?;
        services.systemd.reset_failed(&file).await;
        Ok(UnitChangeResult {
            change: Change::Deleted,
            then: None,
            state: None,
        })
    }
}
