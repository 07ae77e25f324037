//! The `webhooks_queue` consumer: turns each `order.*` event into one delivery per subscription.
//!
//! The deliveries and the inbox row of the message commit in one transaction, and the message is
//! acked only after that commit; a redelivered message finds its inbox row and creates nothing.
//! Sending happens later, in the dispatcher, so a slow endpoint never holds a broker delivery.

use messaging::contracts::OrderEvent;
use messaging::{Db, HandleError, Incoming, MessageHandler};
use tracing::{error, info};

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
        let Some(recorded) = recorded else {
            info!(%order_id, "event already recorded; duplicate message ignored");
            return Ok(());
        };
        for (subscription_id, reason) in &recorded.unsendable {
            error!(%order_id, message_id = %msg.meta.message_id, %subscription_id, %reason,
                "event NOT sent to a subscription whose stored event filter is corrupt; recorded as a failed delivery");
            metrics::counter!("webhook_filter_errors_total", "subscription_id" => subscription_id.clone())
                .increment(1);
        }
        info!(%order_id, event = %msg.meta.kind, deliveries = recorded.created, "event recorded for delivery");
        metrics::counter!("webhook_deliveries_created_total").increment(recorded.created as u64);
        self.dispatcher.wake();
        Ok(())
    }
}
