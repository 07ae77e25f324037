//! The `orders_queue` consumer: new orders and stock answers.

use std::time::Duration;

use messaging::contracts::CreateOrder;
use messaging::topology::keys;
use messaging::{HandleError, Incoming, MessageHandler};
use tracing::info;

use crate::deadline::now_ms;
use crate::saga::Saga;
use crate::store;

#[derive(Clone)]
pub struct OrdersHandler {
    pub saga: Saga,
    pub deadline: Duration,
}

impl OrdersHandler {
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
            .write(move |tx| store::create_order(tx, &cmd, deadline_ms, traceparent.as_deref()))
            .await
            .map_err(|e| HandleError::Retry(format!("orders.db: {e}")))?;
        if created {
            info!(%order_id, "order recorded as PENDING; stock requested");
            metrics::counter!("saga_transitions_total", "to" => "PENDING").increment(1);
        } else {
            info!(%order_id, "order exists already; duplicate create ignored");
        }
        Ok(())
    }
}

impl MessageHandler for OrdersHandler {
    async fn handle(&self, msg: Incoming) -> Result<(), HandleError> {
        match msg.meta.kind.as_str() {
            keys::ORDERS_CREATE => self.create(msg).await,
            keys::STOCK_RESERVED | keys::STOCK_REJECTED => self.saga.on_stock_answer(msg).await,
            other => Err(HandleError::Poison(format!(
                "orders_queue does not take {other:?} messages"
            ))),
        }
    }
}
