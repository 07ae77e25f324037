//! The `webhooks_queue` consumer: turns each `order.*` event into one delivery per subscription.
//!
//! The deliveries and the inbox row of the message commit in one transaction, and the message is
//! acked only after that commit; a redelivered message finds its inbox row and creates nothing.
//! Sending happens later, in the dispatcher, so a slow endpoint never holds a broker delivery.

use messaging::contracts::OrderEvent;
use messaging::{Db, HandleError, Incoming, MessageHandler};
use tracing::info;

use crate::dispatcher::Dispatcher;
use crate::store;

#[derive(Clone)]
pub struct EventHandler {
    pub db: Db,
    pub dispatcher: Dispatcher,
}

impl EventHandler {}

impl MessageHandler for EventHandler {
    async fn handle(&self, msg: Incoming) -> Result<(), HandleError> {
        let event_type = msg.meta.kind.clone();
        if !event_type.starts_with("order.") {
            return Err(HandleError::Poison(format!(
                "webhooks_queue only takes order.* events, not {event_type:?}"
            )));
        }
        let event: OrderEvent = msg.json()?;
        let message_id = msg.meta.message_id.clone();
        let order_id = event.order_id.clone();
        let traceparent = msg.meta.traceparent.clone();
        let recorded = self
            .db
            .write(move |tx| {
                store::record_event(tx, &message_id, &event_type, &event, traceparent.as_deref())
            })
            .await
            .map_err(|e| HandleError::Retry(format!("webhooks.db: {e}")))?;
        match recorded {
            Some(count) => {
                info!(%order_id, event = %msg.meta.kind, deliveries = count, "event recorded for delivery");
                metrics::counter!("webhook_deliveries_created_total").increment(count as u64);
                self.dispatcher.wake();
            }
            None => info!(%order_id, "event already recorded; duplicate message ignored"),
        }
        Ok(())
    }
}
