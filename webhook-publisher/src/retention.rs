//! Bounded history: finished deliveries older than `WEBHOOK_HISTORY_RETENTION_DAYS` (default 30)
//! are deleted with their attempts.
//!
//! Every [`PRUNE_EVERY`] the task deletes in batches of [`BATCH`], one short write transaction
//! each, so consumer and dispatcher writes interleave and never wait long behind it. Only
//! delivered and failed deliveries go, by the time of their last change (a replayed delivery
//! starts a new period); a pending delivery is never deleted, however old. With several
//! instances on PostgreSQL each prunes; rows one is deleting are skipped by the others.

use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::Started;
use crate::storage::Store;

/// Deliveries deleted per transaction.
pub const BATCH: usize = 500;
/// How often the history is pruned: as often as the inbox, so each round has half a minute of
/// history to delete rather than a whole one.
pub const PRUNE_EVERY: Duration = Duration::from_secs(30);

/// Prunes every `every` until `stop`.
pub async fn run(
    store: Store,
    started: Started,
    retention: Duration,
    every: Duration,
    stop: CancellationToken,
) {
    if !started.wait(&stop).await {
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        prune(&store, retention, &stop).await;
    }
}

/// Deletes what is due, batch after batch. Returns how many deliveries went.
pub async fn prune(store: &Store, retention: Duration, stop: &CancellationToken) -> usize {
    let mut deleted = 0;
    loop {
        match store.prune_history(retention, BATCH).await {
            Ok(n) => {
                deleted += n;
                if n < BATCH || stop.is_cancelled() {
                    break;
                }
            }
            Err(e) => {
                error!(error = %e, store = store.name(), "could not delete old delivery history; trying again at the next round");
                break;
            }
        }
    }
    if deleted > 0 {
        info!(
            deleted,
            retention_secs = retention.as_secs(),
            "deleted finished deliveries older than the history retention"
        );
        metrics::counter!("webhook_history_deleted_total").increment(deleted as u64);
    }
    deleted
}
