//! Adds what this worker counted to the shared throughput figures in Redis every few seconds
//! (the console's "per minute" and "today"), and once more when the worker stops.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    metrics::Metrics,
    store::{Stats, StoreError, Tally},
};

/// How often the counts are added.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_secs(5);

/// Runs until `stop`, then flushes a last time. A flush that could not reach Redis keeps its
/// counts for the next one.
pub(crate) async fn report(metrics: Metrics, stats: Stats, stop: CancellationToken) {
    let mut flushed = Tally::default();
    loop {
        let stopping = tokio::select! {
            () = stop.cancelled() => true,
            () = tokio::time::sleep(FLUSH_EVERY) => false,
        };
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
