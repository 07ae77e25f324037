//! The saga's two consumers: `orders_intake_queue` (new orders) and `orders_queue` (stock
//! answers).
//!
//! They run on channels of their own with their own prefetch, so a flood of new orders never
//! holds a stock answer back: the answers decide orders that were already accepted, the new
//! orders only add work.

use std::time::Duration;

use messaging::contracts::CreateOrder;
use messaging::topology::keys;
use messaging::{HandleError, Incoming, MessageHandler};
use tracing::info;

use crate::saga::Saga;
use messaging::clock::now_ms;

/// `orders_intake_queue`: records each new order as PENDING and asks for its stock.
#[derive(Clone)]
pub struct IntakeHandler {
    pub saga: Saga,
    /// The order's deadline counts from here, when the saga first sees it: the time it waited
    /// in the intake queue (bounded by the gateway's admission limit) is not held against it.
    pub deadline: Duration,
}

impl IntakeHandler {
    async fn create(&self, msg: Incoming) -> Result<(), HandleError> {
        let cmd: CreateOrder = msg.json()?;
        if !(1..=1000).contains(&cmd.quantity)
            || cmd.order_id.is_empty()
            || cmd.product_id.is_empty()
        {
            return Err(HandleError::Poison(format!(
                "invalid orders.create: quantity {} / empty id",
                cmd.quantity
            )));
        }
        let deadline_ms = now_ms() + self.deadline.as_millis() as i64;
        let traceparent = msg.meta.traceparent.clone();
        let order_id = cmd.order_id.clone();
        let created = self
            .saga
            .db
            .create_order(cmd, deadline_ms, traceparent)
            .await
            .map_err(|e| HandleError::Retry(format!("orders store: {e}")))?;
        if created {
            info!(%order_id, "order recorded as PENDING; stock requested");
            metrics::counter!("saga_transitions_total", "to" => "PENDING").increment(1);
        } else {
            info!(%order_id, "order exists already; duplicate create ignored");
        }
        Ok(())
    }
}

impl MessageHandler for IntakeHandler {
    async fn handle(&self, msg: Incoming) -> Result<(), HandleError> {
        match msg.meta.kind.as_str() {
            keys::ORDERS_CREATE => self.create(msg).await,
            other => Err(HandleError::Poison(format!(
                "orders_intake_queue does not take {other:?} messages"
            ))),
        }
    }
}

/// `orders_queue`: the stock answers that decide orders.
#[derive(Clone)]
pub struct AnswersHandler {
    /// Creates still in `orders_queue` from before the intake queue existed (a broker upgraded
    /// in place) are handled, not dead-lettered.
    pub intake: IntakeHandler,
}

impl MessageHandler for AnswersHandler {
    async fn handle(&self, msg: Incoming) -> Result<(), HandleError> {
        match msg.meta.kind.as_str() {
            keys::STOCK_RESERVED | keys::STOCK_REJECTED => {
                self.intake.saga.on_stock_answer(msg).await
            }
            keys::ORDERS_CREATE => self.intake.create(msg).await,
            other => Err(HandleError::Poison(format!(
                "orders_queue does not take {other:?} messages"
            ))),
        }
    }
}
