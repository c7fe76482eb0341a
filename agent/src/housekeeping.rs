//! Background upkeep of the state dir: rotating unit output files past their size cap
//! and pruning intent/outcome records no redelivery can need any more.

use crate::actions::Services;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How often output files are checked against `limits.unit_log_max_bytes`.
pub const ROTATE_EVERY: Duration = Duration::from_secs(10);
/// How often old records are pruned.
pub const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Runs until `shutdown`.
pub async fn run(services: Arc<Services>, shutdown: CancellationToken) {
    let mut rotate = tokio::time::interval(ROTATE_EVERY);
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
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
            }
        }
    }
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
