//! Adds what this worker counted to the shared throughput figures in Redis every few seconds
//! (the console's "per minute" and "today"), and once more when the worker stops; and says,
//! as often, that it is alive, whether it is ready and which provider circuits it has open.

use std::time::Duration;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    job::ProviderName,
    metrics::{Health, Metrics},
    store::{Heartbeat, Stats, StoreError, Tally},
};

/// This machine's name, for the console's list of workers.
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// How often the counts are added.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_secs(5);

/// Runs until `stop`, then flushes a last time. A flush that could not reach Redis keeps its
/// counts for the next one.
pub(crate) async fn report(
    metrics: Metrics,
    health: Arc<Health>,
    stats: Stats,
    name: String,
    stop: CancellationToken,
) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let name = format!("{} pid {} ({name})", host(), std::process::id());
    let beat = |stats: &Stats| {
        let beat = Heartbeat {
            name: name.clone(),
            not_ready: health.not_ready(),
            circuits_open: ProviderName::ALL
                .iter()
                .filter(|p| metrics.circuit_open.with_label_values(&[p.as_str()]).get() > 0)
                .map(|p| p.as_str().to_owned())
                .collect(),
            at: crate::clock::now_rfc3339(),
        };
        let stats = stats.clone();
        let id = id.clone();
        async move {
            if let Err(e) = stats.heartbeat(&id, &beat).await {
                debug!(error = %e, "could not send the worker's heartbeat");
            }
        }
    };
    beat(&stats).await;
    let mut flushed = Tally::default();
    loop {
        let stopping = tokio::select! {
            () = stop.cancelled() => true,
            () = tokio::time::sleep(FLUSH_EVERY) => false,
        };
        if stopping {
            let _ = stats.forget(&id).await;
        } else {
            beat(&stats).await;
        }
        let now = metrics.totals();
        let delta = now.since(&flushed);
        match stats.add(time::OffsetDateTime::now_utc(), &delta).await {
            Ok(()) => flushed = now,
            Err(StoreError::Corrupt(e)) => {
                // Partly applied: never again, or the figures would grow at every flush.
                warn!(error = %e, "Redis refused part of the throughput counts (a stats key edited by hand?); those counts are dropped");
                flushed = now;
            }
            Err(e) => debug!(error = %e, "could not add the throughput counts; next time"),
        }
        if stopping {
            return;
        }
    }
}
