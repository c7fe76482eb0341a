//! Background upkeep: rotating unit output files past their size cap, removing shipped
//! programs no unit runs any more, pruning
//! intent/outcome records no redelivery can need any more, and warning (at start and
//! daily) when the host credential nears its end.

use crate::actions::Services;
use crate::identity::{Expiry, expiry};
use crate::verifier::{now_ms, rfc3339};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// How often output files are checked against `limits.unit_log_max_bytes`.
pub const ROTATE_EVERY: Duration = Duration::from_secs(10);
/// How often old records are pruned.
pub const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// How often the host credential's expiry is looked at (the first time at start).
pub const EXPIRY_CHECK_EVERY: Duration = Duration::from_secs(86_400);

/// Runs until `shutdown`.
pub async fn run(services: Arc<Services>, shutdown: CancellationToken) {
    let mut rotate = tokio::time::interval(ROTATE_EVERY);
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    let mut credential = tokio::time::interval(EXPIRY_CHECK_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = credential.tick() => warn_of_expiry(&services),
            _ = rotate.tick() => {
                let s = services.clone();
                let _ = tokio::task::spawn_blocking(move || rotate_outputs(&s)).await;
            }
            _ = prune.tick() => {
                let s = services.clone();
                let removed = tokio::task::spawn_blocking(move || s.records.prune(SystemTime::now()))
                    .await
                    .unwrap_or(0);
                if removed > 0 {
                    debug!(removed, "pruned old request records");
                }
                let s = services.clone();
                let removed = tokio::task::spawn_blocking(move || remove_unused_artifacts(&s))
                    .await
                    .unwrap_or(0);
                if removed > 0 {
                    info!(removed, "removed shipped programs no unit runs any more");
                }
            }
        }
    }
}

fn warn_of_expiry(services: &Services) {
    let not_after = services.credential_expires_at;
    match expiry(not_after, now_ms()) {
        Expiry::Later => {}
        Expiry::Soon { left_ms } => warn!(
            expires_at = %rfc3339(not_after),
            left = %humantime::format_duration(Duration::from_secs(left_ms / 1000)),
            "the host credential expires soon; renew it (gearmq renew) and restart the agent"
        ),
        Expiry::Expired => error!(
            expired_at = %rfc3339(not_after),
            "the host credential has expired: orchestrators refuse this host's replies; renew it (gearmq renew) and restart the agent"
        ),
    }
}

/// Removes stored artifacts no managed unit's file names (after a grace period).
pub fn remove_unused_artifacts(services: &Services) -> usize {
    let units = match services.units.list() {
        Ok(u) => u,
        Err(e) => {
            warn!(error = %e, "cannot list units for artifact cleanup");
            return 0;
        }
    };
    let mut texts = Vec::with_capacity(units.len());
    for unit in units {
        match services.units.read(&unit) {
            Ok(Some(t)) => texts.push(t),
            Ok(None) => {}
            // Unsure what a unit runs: keep everything this time.
            Err(e) => {
                warn!(unit, error = %e, "cannot read a unit file; artifact cleanup skipped");
                return 0;
            }
        }
    }
    services.artifacts.remove_unused(&texts, SystemTime::now())
}

fn rotate_outputs(services: &Services) {
    let units = match services.units.list() {
        Ok(u) => u,
        Err(e) => {
            warn!(error = %e, "cannot list units for output rotation");
            return;
        }
    };
    for unit in units {
        match services.output.rotate_if_needed(&unit) {
            Ok(true) => info!(unit, "unit output rotated"),
            Ok(false) => {}
            Err(e) => warn!(unit, error = %e, "cannot rotate unit output"),
        }
    }
}
