//! The event tap: a durable quorum queue of our own (`chaos.events`) bound to `saga.events` with
//! `order.*`, so it keeps every order event through the broker kills, and a consumer that
//! reconnects until the run ends and records each event by order id.
//!
//! Broker-level redeliveries and outbox re-publications carry the same `message_id`, so events
//! are counted by distinct message id: two `order.confirmed` with two different message ids
//! mean the order was confirmed twice.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use messaging::topology::EVENTS;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub const TAP_QUEUE: &str = "chaos.events";

/// Order id → event kind (`order.confirmed`, …) → distinct message ids seen.
pub type EventsByOrder = HashMap<String, HashMap<String, BTreeSet<String>>>;

#[derive(Default)]
struct Seen {
    by_order: EventsByOrder,
    deliveries: u64,
}

/// The running tap; [`EventTap::stop`] ends it and hands over what it saw.
pub struct EventTap {
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// What the tap saw.
pub struct TapReport {
    pub by_order: EventsByOrder,
    pub deliveries: u64,
}

impl EventTap {
    /// Declares the tap queue (so that no event published from now on can miss it) and starts
    /// consuming it.
    pub async fn start(amqp_url: &str) -> lapin::Result<Self> {
        let connection = connect(amqp_url).await?;
        declare(&connection).await?;
        let _ = connection.close(200, "declared".into()).await;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(consume_until(
            amqp_url.to_owned(),
            seen.clone(),
            stop.clone(),
        ));
        Ok(Self {
            seen,
            stop,
            task: Some(task),
        })
    }

    pub async fn stop(mut self) -> TapReport {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let seen = self
            .seen
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default();
        TapReport {
            by_order: seen.by_order,
            deliveries: seen.deliveries,
        }
    }
}

impl Drop for EventTap {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Connects to the broker: `amqp_url` may list a cluster's nodes, the first that answers serves.
async fn connect(amqp_url: &str) -> lapin::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name("chaos-event-tap".into());
    let nodes: Vec<String> = amqp_url.split(',').map(|u| u.trim().to_owned()).collect();
    messaging::broker::connect_any(&nodes, props).await
}

async fn declare(connection: &Connection) -> lapin::Result<()> {
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(
            EVENTS.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            TAP_QUEUE.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    channel
        .queue_bind(
            TAP_QUEUE.into(),
            EVENTS.into(),
            "order.*".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

async fn consume_until(amqp_url: String, seen: Arc<Mutex<Seen>>, stop: CancellationToken) {
    let mut failures = 0u32;
    while !stop.is_cancelled() {
        let before = seen.lock().map(|s| s.deliveries).unwrap_or(0);
        tokio::select! {
            _ = stop.cancelled() => break,
            result = consume(&amqp_url, &seen) => {
                // One line per outage, not one per reconnect attempt.
                if seen.lock().map(|s| s.deliveries).unwrap_or(0) > before {
                    failures = 0;
                }
                failures += 1;
                if failures == 1 {
                    match result {
                        Ok(()) => warn!("event tap: consumer ended; reconnecting"),
                        Err(e) => warn!(error = %e, "event tap: lost the broker; reconnecting"),
                    }
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

async fn consume(amqp_url: &str, seen: &Mutex<Seen>) -> lapin::Result<()> {
    let connection = connect(amqp_url).await?;
    declare(&connection).await?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(500, BasicQosOptions::default()).await?;
    let mut stream = channel
        .basic_consume(
            TAP_QUEUE.into(),
            "chaos.tap".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    info!("event tap consuming {TAP_QUEUE}");
    while let Some(delivery) = stream.next().await {
        let delivery = delivery?;
        let props = &delivery.properties;
        let text = |v: &Option<lapin::types::ShortString>| {
            v.as_ref().map(|s| s.to_string()).unwrap_or_default()
        };
        let (order_id, kind, message_id) = (
            text(props.correlation_id()),
            text(props.kind()),
            text(props.message_id()),
        );
        if let Ok(mut seen) = seen.lock() {
            seen.deliveries += 1;
            seen.by_order
                .entry(order_id)
                .or_default()
                .entry(kind)
                .or_default()
                .insert(message_id);
        }
        delivery.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}
