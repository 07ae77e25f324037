//! Terminal events from `saga.events`: a temporary exclusive queue bound to `order.confirmed`,
//! `order.rejected` and `order.cancelled`, matched to the orders this run placed by `orderId`.
//!
//! An event can overtake the `202` of its own POST (the gateway answers after the confirm, the
//! saga may be faster than the HTTP write), so an event for an order not yet known is kept and
//! matched when the POST returns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde::Deserialize;
use tokio::task::JoinHandle;

use crate::recorder::Recorder;

/// The exchange and routing keys of the terminal events (see `messaging::topology`).
pub const EVENTS_EXCHANGE: &str = "saga.events";
pub const TERMINAL_KEYS: [(&str, &str); 3] = [
    ("order.confirmed", "CONFIRMED"),
    ("order.rejected", "REJECTED"),
    ("order.cancelled", "CANCELLED"),
];

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
}

/// Orders waiting for their terminal event, and events waiting for their order.
#[derive(Default)]
pub struct Tracker {
    inner: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    /// orderId → intended start of its POST.
    waiting: HashMap<String, Instant>,
    /// orderId → (arrival, status) of events that came before the POST returned.
    early: HashMap<String, (Instant, &'static str)>,
}

impl Tracker {
    fn with<R>(&self, f: impl FnOnce(&mut Pending) -> R) -> R {
        let mut guard = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// The POST of `order_id`, intended to start at `started`, was accepted.
    pub fn accepted(&self, recorder: &Recorder, order_id: String, started: Instant) {
        let early = self.with(|p| match p.early.remove(&order_id) {
            Some(hit) => Some(hit),
            None => {
                p.waiting.insert(order_id, started);
                None
            }
        });
        if let Some((arrived, status)) = early {
            recorder.terminal(status, arrived.saturating_duration_since(started));
        }
    }

    /// A terminal event for `order_id` arrived at `arrived`.
    pub fn event(&self, recorder: &Recorder, order_id: String, status: &'static str) {
        let arrived = Instant::now();
        let started = self.with(|p| match p.waiting.remove(&order_id) {
            Some(started) => Some(started),
            None => {
                p.early.insert(order_id, (arrived, status));
                None
            }
        });
        if let Some(started) = started {
            recorder.terminal(status, arrived.saturating_duration_since(started));
        }
    }

    /// Accepted orders still without a terminal event.
    pub fn outstanding(&self) -> usize {
        self.with(|p| p.waiting.len())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventBody {
    order_id: String,
}

/// A running listener; dropping it closes its connection and so its exclusive queue.
pub struct Listener {
    _connection: Connection,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Declares the temporary queue, binds it and starts feeding `tracker`. The queue exists when
/// this returns, so no event of an order placed afterwards can be missed.
pub async fn listen(
    amqp_url: &str,
    tracker: Arc<Tracker>,
    recorder: Arc<Recorder>,
) -> Result<Listener, EventsError> {
    let props = ConnectionProperties::default().with_connection_name("loadgen.events".into());
    let connection = Connection::connect(amqp_url, props).await?;
    let channel = connection.create_channel().await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    for (key, _) in TERMINAL_KEYS {
        channel
            .queue_bind(
                queue.name().as_str().into(),
                EVENTS_EXCHANGE.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    let mut stream = channel
        .basic_consume(
            queue.name().as_str().into(),
            "loadgen.events".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let task = tokio::spawn(async move {
        let _channel = channel;
        while let Some(Ok(delivery)) = stream.next().await {
            let key = delivery.routing_key.as_str();
            let Some((_, status)) = TERMINAL_KEYS.iter().find(|(k, _)| *k == key) else {
                continue;
            };
            match serde_json::from_slice::<EventBody>(&delivery.data) {
                Ok(body) => tracker.event(&recorder, body.order_id, status),
                Err(_) => recorder.error("undecodable-event"),
            }
        }
    });
    Ok(Listener {
        _connection: connection,
        task,
    })
}
