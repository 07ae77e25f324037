//! The confirming step of the saga, behind Redis markers and locks.
//!
//! For a stock answer about order `o`:
//! `GET processed:o` (seen → ack and ignore) → `SET lock:o <token> NX PX 10000` (held → retry
//! later) → guarded transition in the store (orders.db, or PostgreSQL with the order row locked) with its outbox rows → `SET processed:o EX 86400` →
//! compare-and-delete the lock. The two Redis steps before and the two after the transition
//! each run as one Lua script (`Guard::begin`, `Guard::finish`): two round trips, not four.
//! The idempotency key of this step is the order id: an order has exactly one stock answer
//! that counts. The deadline sweeper takes the same lock, so a late
//! answer and a cancellation never interleave. Without Redis nothing is confirmed: the message
//! waits (in-place retries, then requeue) until Redis is back.

use std::time::Duration;

use messaging::contracts::StockAnswer;
use messaging::idempotency::{Begin, Guard, GuardError};
use messaging::topology::keys;
use messaging::{HandleError, Incoming};
use tracing::{info, warn};

use crate::store::{Applied, Store};

pub const LOCK_TTL: Duration = Duration::from_secs(10);
pub const PROCESSED_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone)]
pub struct Saga {
    pub db: Store,
    pub guard: Guard,
}

impl Saga {
    /// Handles `product.stockReserved` / `product.stockRejected`.
    pub async fn on_stock_answer(&self, msg: Incoming) -> Result<(), HandleError> {
        let answer: StockAnswer = msg.json()?;
        let reserved = msg.meta.kind == keys::STOCK_RESERVED;
        let key = answer.order_id.clone();
        let lock = match self.guard.begin(&key, LOCK_TTL).await.map_err(redis_down)? {
            Begin::Processed => {
                info!(order_id = %key, "stock answer already processed; duplicate acked and ignored");
                metrics::counter!("saga_duplicates_skipped_total").increment(1);
                return Ok(());
            }
            Begin::Held => {
                metrics::counter!("saga_lock_contention_total").increment(1);
                return Err(HandleError::Retry(format!(
                    "lock:{key} is held by another consumer"
                )));
            }
            Begin::Locked(lock) => lock,
        };
        let traceparent = msg.meta.traceparent.clone();
        let applied = self
            .db
            .apply_stock_answer(answer, reserved, traceparent)
            .await;
        let applied = match applied {
            Ok(Applied::UnknownOrder) => Err(HandleError::Poison(format!(
                "stock answer for unknown order {key}"
            ))),
            Ok(applied) => Ok(applied),
            Err(e) => Err(HandleError::Retry(format!("orders store: {e}"))),
        };
        match applied {
            Ok(applied) => {
                Self::report(&key, &applied);
                // The marker and the release go together; if Redis fails here the message is
                // retried, finds the order decided (guarded transition) and sets the marker then.
                let ours = self
                    .guard
                    .finish(&key, lock, PROCESSED_TTL)
                    .await
                    .map_err(redis_down)?;
                if !ours {
                    warn!(order_id = %key, "the lock had expired before the step finished");
                }
                Ok(())
            }
            Err(e) => {
                if let Err(release) = self.guard.release(lock).await {
                    // The lock expires by itself within LOCK_TTL.
                    warn!(order_id = %key, error = %release, "could not release the lock; it will expire");
                }
                Err(e)
            }
        }
    }

    /// Logs and counts what a stock answer did.
    fn report(order_id: &str, applied: &Applied) {
        match applied {
            Applied::Transitioned(status) => {
                info!(%order_id, status = status.as_str(), "order decided");
                metrics::counter!("saga_transitions_total", "to" => status.as_str()).increment(1);
            }
            Applied::Compensated => {
                info!(%order_id, "reservation arrived after the order was cancelled; releasing the stock");
                metrics::counter!("saga_compensations_total").increment(1);
            }
            Applied::AlreadyDone(status) => {
                info!(%order_id, %status, "order already decided; answer ignored")
            }
            Applied::UnknownOrder => {}
        }
    }

    /// Cancels an order whose deadline passed, under the order's lock. Returns whether it did.
    pub async fn cancel_if_pending(
        &self,
        order_id: &str,
        reason: &str,
    ) -> Result<bool, GuardError> {
        let Some(lock) = self.guard.try_lock(order_id, LOCK_TTL).await? else {
            return Ok(false);
        };
        let cancelled = self.db.cancel(order_id, reason).await;
        if let Err(e) = self.guard.release(lock).await {
            warn!(%order_id, error = %e, "could not release the lock; it will expire");
        }
        match cancelled {
            Ok(true) => {
                info!(%order_id, %reason, "order cancelled");
                metrics::counter!("saga_transitions_total", "to" => "CANCELLED").increment(1);
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(e) => {
                warn!(%order_id, error = %e, "could not cancel the order; will try again");
                Ok(false)
            }
        }
    }
}

fn redis_down(e: GuardError) -> HandleError {
    HandleError::Retry(format!("redis unavailable: {e}"))
}
