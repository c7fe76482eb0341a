//! `install`: write a unit file from a spec (atomically), daemon-reload, enable it (or
//! disable it with `enable: false`), and start it if asked — restarting it when it was
//! running and its file changed.

use super::{Action, ActionContext, ActionError, before_of, blocking, check_unit, unit_state};
use crate::artifacts::ArtifactError;
use crate::records::Desired;
use crate::systemd::Job;
use crate::systemd::render::render_unit;
use crate::unit_files::UnitFileError;
use gearmq_schemas::Status;
use gearmq_schemas::actions::{Change, InstallArgs, UnitChangeResult};
use gearmq_schemas::units::unit_file_name;

/// The `install` action.
#[derive(Debug)]
pub struct Install;

impl Action for Install {
    const NAME: &'static str = "install";
    type Args = InstallArgs;
    type Output = UnitChangeResult;

    async fn apply(
        args: InstallArgs,
        ctx: &ActionContext,
    ) -> Result<UnitChangeResult, ActionError> {
        // An existing unit's name: gearmq never writes a unit it did not create (6).
        check_unit(&args.spec.unit)?;
        // Checked again here whatever the CLI did: status 4 naming the field.
        args.validate()?;
        let InstallArgs {
            mut spec,
            start,
            enable,
            artifact,
        } = args;
        let services = &ctx.services;
        if let Some(a) = artifact {
            // The program comes with the request: stored by digest once it matches
            // what the request signs, before anything else is written; the unit runs
            // the stored file.
            services
                .policy
                .check_artifact_dir(services.artifacts.dir())?;
            let store = services.artifacts.clone();
            let path = store.ensure(&a).await.map_err(|e| {
                let status = match e {
                    ArtifactError::Mismatch { .. } | ArtifactError::TooLarge { .. } => {
                        Status::InvalidData
                    }
                    ArtifactError::Fetch { .. } | ArtifactError::Io { .. } => Status::UnknownError,
                };
                ActionError::new(status, e.to_string())
            })?;
            spec.exec = match gearmq_schemas::actions::artifact_tree_path(&spec.exec) {
                // A .tar.gz tree: unpacked beside the archive, PATH in it runs.
                Some(rel) => {
                    let (store, a, rel) = (services.artifacts.clone(), a.clone(), rel.to_string());
                    let tree = blocking(move || store.unpack(&a))
                        .await?
                        .map_err(|e| ActionError::new(Status::InvalidData, e.to_string()))?;
                    tree.join(rel).to_string_lossy().into_owned()
                }
                None => path.to_string_lossy().into_owned(),
            };
        }
        // The host's policy, before anything is written: no loader variable it does
        // not allow, no program whose resolved path is outside its prefixes.
        services.policy.check_env(spec.env.keys())?;
        let policy = services.policy.clone();
        let exec = spec.exec.clone();
        blocking(move || policy.check_exec(&exec)).await??;
        let output_file = services.output.path(&spec.unit);
        let text = render_unit(&spec, &services.policy.render_settings(&output_file))?;
        let unit = spec.unit.clone();
        let _lock = services.locks.lock(&unit).await;
        let s = services.clone();
        let u = unit.clone();
        let current = match blocking(move || s.units.read(&u)).await? {
            Ok(c) => c,
            Err(e @ UnitFileError::NotManaged { .. }) => {
                return Err(ActionError::new(Status::Conflict, e.to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        // Reach systemd before writing anything: an unreachable manager leaves no
        // half-installed unit behind.
        let file = unit_file_name(&unit);
        let props = services.systemd.unit_props(&file).await?;
        let before = match ctx.previous_intent() {
            Some(i) => i.before.clone(),
            None => before_of(current.as_deref(), &props),
        };
        let digest = gearmq_schemas::sha256(text.as_bytes());
        let change = match &before.file_digest {
            None => Change::Created,
            Some(d) if d.into_array() == digest => Change::Unchanged,
            Some(_) => Change::Updated,
        };
        let desired = if start {
            Desired::Active
        } else {
            Desired::Installed
        };
        ctx.record_intent(&unit, desired, before.clone()).await?;
        if current.as_deref() != Some(text.as_str()) {
            let s = services.clone();
            let t = text.clone();
            let sp = spec.clone();
            blocking(move || -> Result<(), ActionError> {
                s.output.ensure_dir().map_err(|e| {
                    ActionError::new(
                        Status::UnknownError,
                        format!("cannot create the unit output directory: {e}"),
                    )
                })?;
                s.units.save_spec(&sp)?;
                s.units.write(&sp.unit, &t)?;
                Ok(())
            })
            .await??;
            services.systemd.reload().await?;
        } else if services.units.spec(&unit).is_none() {
            let s = services.clone();
            blocking(move || s.units.save_spec(&spec)).await??;
        }
        // Enabled at boot, or not, as asked: idempotent, so a redelivery does it again.
        let loaded = services.systemd.unit_props(&file).await?;
        let enabled = loaded.unit_file_state == "enabled";
        if enable && !enabled {
            services.systemd.enable(&file).await?;
        } else if !enable && enabled {
            services.systemd.disable(&file).await?;
        }
        let then = if start {
            let now = services.systemd.unit_props(&file).await?;
            let resumed = ctx.previous_intent().is_some();
            Some(if change == Change::Updated && before.active {
                if resumed && now.is_active() && now.main_pid != before.main_pid {
                    // The interrupted run restarted it already.
                    Change::Restarted
                } else {
                    services.systemd.run_job(Job::Restart, &file).await?;
                    Change::Restarted
                }
            } else if now.is_active() {
                if before.active {
                    Change::AlreadyRunning
                } else {
                    // Only an interrupted run of this request gets here.
                    Change::Started
                }
            } else {
                services.systemd.run_job(Job::Start, &file).await?;
                Change::Started
            })
        } else {
            None
        };
        let state = unit_state(services, &unit, &text).await?;
        Ok(UnitChangeResult {
            change,
            then,
            state: Some(state),
        })
    }
}
