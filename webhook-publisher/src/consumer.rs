//! The `webhooks_queue` consumer: turns each event (`order.*`, `product.stockChanged`) into one
//! delivery per subscription that wants it.
//!
//! The deliveries and the inbox row of the message commit in one transaction (either backend), and the message is
//! acked only after that commit; a redelivered message finds its inbox row and creates nothing.
//! Sending happens later, in the dispatcher, so a slow endpoint never holds a broker delivery.

use messaging::contracts::{OrderEvent, StockChanged};
use messaging::topology::keys;
use messaging::{HandleError, Incoming, MessageHandler};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::Started;
use crate::dispatcher::Dispatcher;
use crate::recorder::Recorder;
use crate::storage::NewEvent;
use crate::store;

#[derive(Clone)]
pub struct EventHandler {
    /// Records events, in batches on PostgreSQL.
    pub recorder: Recorder,
    pub dispatcher: Dispatcher,
    /// Set once the default subscription exists: no event is recorded before, or the default
    /// subscriber would miss it.
    pub started: Started,
}

impl EventHandler {
    /// The order the event is about (order events only) and the body of its webhooks.
    fn decode(msg: &Incoming) -> Result<(Option<String>, Vec<u8>), HandleError> {
        let event_type = msg.meta.kind.as_str();
        let (order_id, body) = if event_type.starts_with("order.") {
            let event: OrderEvent = msg.json()?;
            let body = store::webhook_body(event_type, Some(&event.occurred_at), &event);
            (Some(event.order_id), body)
        } else if event_type == keys::STOCK_CHANGED {
            let event: StockChanged = msg.json()?;
            (None, store::webhook_body(event_type, None, &event))
        } else {
            return Err(HandleError::Poison(format!(
                "webhooks_queue only takes order.* and {} events, not {event_type:?}",
                keys::STOCK_CHANGED
            )));
        };
        let body = body.map_err(|e| HandleError::Poison(format!("unencodable event: {e}")))?;
        Ok((order_id, body))
    }
}

impl MessageHandler for EventHandler {
    async fn handle(&self, msg: Incoming) -> Result<(), HandleError> {
        let (order_id, body) = Self::decode(&msg)?;
        if !self.started.wait(&CancellationToken::new()).await {
            return Err(HandleError::Retry(
                "the publisher is not started".to_owned(),
            ));
        }
        let event = NewEvent {
            message_id: msg.meta.message_id.clone(),
            event_type: msg.meta.kind.clone(),
            order_id: order_id.clone(),
            body,
            traceparent: msg.meta.traceparent.clone(),
        };
        let recorded = self
            .recorder
            .record(event)
            .await
            .map_err(|e| HandleError::Retry(format!("{}: {e}", self.recorder.store_name())))?;
        let order_id = order_id.unwrap_or_default();
        let Some(recorded) = recorded else {
            info!(%order_id, message_id = %msg.meta.message_id, "event already recorded; duplicate message ignored");
            return Ok(());
        };
        for (subscription_id, reason) in &recorded.unsendable {
            error!(%order_id, message_id = %msg.meta.message_id, %subscription_id, %reason,
                "event NOT sent to a subscription whose stored event filter is corrupt; recorded as a failed delivery");
            metrics::counter!("webhook_filter_errors_total", "subscription_id" => subscription_id.clone())
                .increment(1);
        }
        info!(%order_id, message_id = %msg.meta.message_id, event = %msg.meta.kind, deliveries = recorded.created, "event recorded for delivery");
        metrics::counter!("webhook_deliveries_created_total").increment(recorded.created as u64);
        self.dispatcher.wake();
        Ok(())
    }
}
