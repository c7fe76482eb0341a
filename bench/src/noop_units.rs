//! The emulator's unit backend: every job succeeds at once and only changes the state
//! this keeps; nothing runs (see `emulate.rs`).

use futures_util::future::BoxFuture;
use gearmq_agent::systemd::{Job, SystemdError, UnitBackend, UnitProps};

/// The no-op unit backend: no systemd and no process behind it, only each unit's
/// state as the jobs asked for it would leave it, so that unit actions answer as on a
/// host where every job succeeds. The emulator's own: no real agent has it.
#[derive(Debug)]
pub struct NoopUnits {
    /// Where the unit files are: `reload` loads what is there.
    unit_dir: std::path::PathBuf,
    units: std::sync::Mutex<std::collections::HashMap<String, UnitProps>>,
    next_pid: std::sync::atomic::AtomicU32,
}

impl NoopUnits {
    fn units(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, UnitProps>> {
        self.units.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// daemon-reload: units whose files exist are loaded (inactive when new), units
    /// whose files are gone are forgotten.
    fn reload_units(&self) {
        let present: std::collections::HashSet<String> = std::fs::read_dir(&self.unit_dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.ends_with(".service"))
                    .collect()
            })
            .unwrap_or_default();
        let mut units = self.units();
        units.retain(|name, _| present.contains(name));
        for name in present {
            units.entry(name).or_insert_with(|| UnitProps {
                load_state: "loaded".into(),
                unit_file_state: "disabled".into(),
                ..NoopUnits::not_found()
            });
        }
    }

    fn not_found() -> UnitProps {
        UnitProps {
            load_state: "not-found".into(),
            active_state: "inactive".into(),
            sub_state: "dead".into(),
            main_pid: 0,
            active_enter_us: 0,
            memory_current: u64::MAX,
            n_restarts: 0,
            unit_file_state: String::new(),
        }
    }

    fn props(&self, unit: &str) -> UnitProps {
        self.units()
            .get(unit)
            .cloned()
            .unwrap_or_else(NoopUnits::not_found)
    }

    fn apply_job(&self, job: Job, unit: &str) -> Result<(), SystemdError> {
        let mut units = self.units();
        let Some(u) = units.get_mut(unit) else {
            return Err(SystemdError::Call {
                what: format!("{} {unit}", job.verb()),
                reason: format!("Unit {unit} not found."),
            });
        };
        let start = |u: &mut UnitProps| {
            u.active_state = "active".into();
            u.sub_state = "running".into();
            u.main_pid = self
                .next_pid
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            u.active_enter_us = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64);
        };
        match job {
            Job::Start if u.is_active() => {}
            Job::Start | Job::Restart => start(u),
            // A reload keeps the main process.
            Job::Reload => {}
            Job::Stop => {
                u.active_state = "inactive".into();
                u.sub_state = "dead".into();
                u.main_pid = 0;
            }
        }
        Ok(())
    }
}

impl NoopUnits {
    /// Sets a loaded unit's file state; whether it changed.
    fn set_file_state(&self, unit: &str, state: &str) -> bool {
        match self.units().get_mut(unit) {
            Some(u) if u.unit_file_state != state => {
                u.unit_file_state = state.to_string();
                true
            }
            _ => false,
        }
    }

    /// A backend for unit files in `unit_dir`.
    pub fn new(unit_dir: &std::path::Path) -> Self {
        NoopUnits {
            unit_dir: unit_dir.to_path_buf(),
            units: Default::default(),
            next_pid: std::sync::atomic::AtomicU32::new(1000),
        }
    }
}

impl UnitBackend for NoopUnits {
    fn describe(&self) -> String {
        "the emulator's no-op unit backend".into()
    }
    fn ensure_connected(&self) -> BoxFuture<'_, Result<(), SystemdError>> {
        Box::pin(async { Ok(()) })
    }
    fn reload(&self) -> BoxFuture<'_, Result<(), SystemdError>> {
        self.reload_units();
        Box::pin(async { Ok(()) })
    }
    fn unit_props<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<UnitProps, SystemdError>> {
        let props = self.props(unit);
        Box::pin(async move { Ok(props) })
    }
    fn run_job<'a>(&'a self, job: Job, unit: &'a str) -> BoxFuture<'a, Result<(), SystemdError>> {
        let result = self.apply_job(job, unit);
        Box::pin(async move { result })
    }
    fn reset_failed<'a>(&'a self, _unit: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
    fn can_reload<'a>(&'a self, _unit: &'a str) -> BoxFuture<'a, Result<bool, SystemdError>> {
        Box::pin(async { Ok(true) })
    }
    fn enable<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<bool, SystemdError>> {
        Box::pin(async move { Ok(self.set_file_state(unit, "enabled")) })
    }
    fn disable<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<bool, SystemdError>> {
        Box::pin(async move { Ok(self.set_file_state(unit, "disabled")) })
    }
    fn manager_cgroup(&self) -> BoxFuture<'_, Result<String, SystemdError>> {
        Box::pin(async { Ok(String::new()) })
    }
}
