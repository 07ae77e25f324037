//! The deadline sweeper: a PENDING order with no stock answer by its deadline is CANCELLED.
//!
//! Deadlines live in the store (`deadline_ms`), so they survive restarts, and the sweep runs in
//! the orders service itself rather than as delayed broker messages: a classic queue's TTL
//! dead-lettering is at-most-once, and a lost timeout would leave an order PENDING forever.

//!
//! With several instances on PostgreSQL every instance sweeps: two may pick the same overdue
//! order, but the Redis lock lets one of them at a time, and the guarded `UPDATE … WHERE status
//! = 'PENDING'` lets only the first cancel it even if Redis forgot the lock.

use std::time::Duration;

use messaging::clock::now_ms;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::saga::Saga;

const BATCH: usize = 200;

pub async fn run(saga: Saga, deadline: Duration, every: Duration, shutdown: CancellationToken) {
    let reason = format!("no stock answer within {} ms", deadline.as_millis());
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => sweep(&saga, &reason).await,
        }
    }
}

async fn sweep(saga: &Saga, reason: &str) {
    let now = now_ms();
    let due = match saga.db.expired(now, BATCH).await {
        Ok(ids) => ids,
        Err(e) => return warn!(error = %e, "deadline sweep could not read the orders store"),
    };
    for order_id in due {
        if let Err(e) = saga.cancel_if_pending(&order_id, reason).await {
            // Without Redis there is no lock, and without the lock no transition.
            return warn!(%order_id, error = %e, "deadline sweep paused: redis unavailable");
        }
    }
}
