//! The outbox relay: publishes what a transaction left in the `outbox` table, with confirms.
//!
//! A service writes its state change and the messages that announce it in one SQLite
//! transaction (see [`crate::store::outbox_enqueue`]) and then calls [`Relay::wake`]. The relay
//! publishes the rows in id order, pipelining the confirms of a batch, and deletes a row only
//! once the broker confirmed it. A crash between publish and delete publishes the row again with
//! the same message id, which consumers deduplicate; nothing committed is ever lost.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::broker::Broker;
use crate::store::{Db, outbox_batch, outbox_settle};

const BATCH: usize = 200;
/// Rows are also picked up without a wake-up, e.g. those left by a previous run.
const POLL: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct Relay {
    db: Db,
    broker: Broker,
    wake: Arc<Notify>,
}

impl Relay {
    pub fn new(db: Db, broker: Broker) -> Self {
        Self {
            db,
            broker,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Tells the relay that a transaction just committed outbox rows.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Relays until `shutdown`. Run it in its own task.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            let pause = match self.relay_batch().await {
                Ok(0) => {
                    failures = 0;
                    POLL
                }
                Ok(_) => {
                    failures = 0;
                    continue;
                }
                Err(reason) => {
                    failures += 1;
                    if failures == 1 || failures % 20 == 0 {
                        warn!(%reason, failures, "outbox relay could not publish; will retry");
                    }
                    Duration::from_millis(100 * u64::from(failures.min(30)))
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Publishes one batch; returns how many rows it sent, or why none went out.
    async fn relay_batch(&self) -> Result<usize, String> {
        let rows = self
            .db
            .call(|conn| outbox_batch(conn, BATCH))
            .await
            .map_err(|e| e.to_string())?;
        if rows.is_empty() {
            return Ok(0);
        }
        if !self.broker.is_connected() {
            return Err("not connected to the broker".into());
        }
        // Publishing every row before awaiting any confirm pipelines the confirms.
        let results =
            futures::future::join_all(rows.iter().map(|row| self.broker.publish(&row.message)))
                .await;
        let mut sent = Vec::new();
        let mut failed = Vec::new();
        for (row, result) in rows.iter().zip(results) {
            match result {
                Ok(()) => sent.push(row.id),
                Err(e) => {
                    warn!(message_id = %row.message.message_id, order_id = row.message.correlation_id.as_deref().unwrap_or(""),
                        routing_key = %row.message.routing_key, error = %e, "outbox message not confirmed; keeping it");
                    failed.push((row.id, e.to_string()));
                }
            }
        }
        let count = sent.len();
        let first_error = failed.first().map(|(_, e)| e.clone());
        self.db
            .write(move |tx| outbox_settle(tx, &sent, &failed))
            .await
            .map_err(|e| e.to_string())?;
        debug!(count, "outbox rows relayed");
        metrics::counter!("outbox_relayed_total").increment(count as u64);
        match first_error {
            Some(e) if count == 0 => Err(e),
            _ => Ok(count),
        }
    }
}
