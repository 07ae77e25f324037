//! Bounded history: finished deliveries older than `WEBHOOK_HISTORY_RETENTION_DAYS` (default 30)
//! are deleted with their attempts.
//!
//! Every [`PRUNE_EVERY`] the task deletes in batches of [`BATCH`], one short write transaction
//! each, so consumer and dispatcher writes interleave and never wait long behind it. Only
//! delivered and failed deliveries go, by the time of their last change (a replayed delivery
//! starts a new period); a pending delivery is never deleted, however old.

use std::time::Duration;

use messaging::Db;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::store;

/// Deliveries deleted per transaction.
pub const BATCH: usize = 500;
/// How often the history is pruned.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Prunes every `every` until `stop`.
pub async fn run(db: Db, retention: Duration, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        prune(&db, retention, &stop).await;
    }
}

/// Deletes what is due, batch after batch. Returns how many deliveries went.
pub async fn prune(db: &Db, retention: Duration, stop: &CancellationToken) -> usize {
    let mut deleted = 0;
    loop {
        match db
            .write(move |tx| store::prune_history(tx, retention, BATCH))
            .await
        {
            Ok(n) => {
                deleted += n;
                if n < BATCH || stop.is_cancelled() {
                    break;
                }
            }
            Err(e) => {
                error!(error = %e, "could not delete old delivery history from webhooks.db; trying again at the next round");
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
