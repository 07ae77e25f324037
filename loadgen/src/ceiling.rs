//! The broker's own ceiling on this machine: persistent messages of an order message's size
//! through quorum queues, published with confirms (a sliding window of unconfirmed messages,
//! like the outbox relay's pipelined batch) and consumed with manual acks at the services'
//! prefetch. Nothing but the broker does work here, so `msgs/s` is what RabbitMQ alone can
//! carry; the saga can at best reach `ceiling ÷ messages per order` orders/s.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use tokio::sync::Semaphore;

#[derive(Debug, thiserror::Error)]
pub enum CeilingError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
}

/// How the ceiling is measured.
#[derive(Debug, Clone)]
pub struct Settings {
    pub amqp_url: String,
    /// Quorum queues loaded in parallel (the saga has three work queues).
    pub queues: usize,
    pub body_size: usize,
    /// Unconfirmed publishes in flight per queue.
    pub window: usize,
    pub prefetch: u16,
    pub duration: Duration,
    /// Excluded from the rate at the start, while queues and Raft logs warm up.
    pub warmup: Duration,
    /// Messages published but not yet consumed, per queue, before the publisher waits: keeps
    /// the queue short, as in the saga, so publishing cannot starve consuming and the rate
    /// measured is a steady state, not a queue filling up.
    pub backlog: usize,
    /// Ack the deliveries at hand with one `multiple=true` ack, as the services' consumers do
    /// (`messaging::consumer`); otherwise one ack per message.
    pub coalesce_acks: bool,
}

/// What one ceiling run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub confirmed_per_sec: f64,
    pub consumed_per_sec: f64,
    pub nacked: u64,
    pub measured_for: Duration,
}

#[derive(Default)]
struct Counters {
    confirmed: AtomicU64,
    nacked: AtomicU64,
    consumed: AtomicU64,
}

fn properties(seq: u64) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(
            format!("00-{:032x}-{:016x}-01", seq as u128 + 1, seq + 1)
                .as_bytes()
                .into(),
        ),
    );
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
        .with_message_id(uuid::Uuid::now_v7().to_string().into())
        .with_correlation_id(uuid::Uuid::now_v7().to_string().into())
        .with_type("bench.ceiling".into())
        .with_app_id("loadgen".into())
        .with_timestamp(0)
        .with_headers(headers)
}

/// Measures the ceiling; declares `loadgen_ceiling_<n>` quorum queues and deletes them after.
pub async fn run(settings: &Settings) -> Result<Outcome, CeilingError> {
    let props = ConnectionProperties::default().with_connection_name("loadgen.ceiling".into());
    let publisher_conn = Connection::connect(&settings.amqp_url, props.clone()).await?;
    let consumer_conn = Connection::connect(&settings.amqp_url, props).await?;
    let counters = Arc::new(Counters::default());
    let body = Arc::new(vec![b'x'; settings.body_size]);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut names = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();

    for n in 0..settings.queues.max(1) {
        let name = format!("loadgen_ceiling_{n}");
        let setup = publisher_conn.create_channel().await?;
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        setup
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await?;
        names.push(name.clone());

        let consumer = consumer_conn.create_channel().await?;
        consumer
            .basic_qos(settings.prefetch, BasicQosOptions::default())
            .await?;
        let mut stream = consumer
            .basic_consume(
                name.as_str().into(),
                format!("loadgen.ceiling.{n}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let c = counters.clone();
        let backlog = Arc::new(Semaphore::new(settings.backlog.max(1)));
        let consumed = backlog.clone();
        let coalesce = settings.coalesce_acks;
        tasks.spawn(async move {
            while let Some(Ok(delivery)) = stream.next().await {
                // The deliveries already received are "finished" together, like handlers
                // whose writes shared one commit in the services.
                let (mut last, mut count) = (delivery.delivery_tag, 1usize);
                while coalesce && let Some(Some(Ok(next))) = stream.next().now_or_never() {
                    (last, count) = (next.delivery_tag, count + 1);
                }
                let multiple = count > 1;
                if consumer
                    .basic_ack(last, BasicAckOptions { multiple })
                    .await
                    .is_ok()
                {
                    c.consumed.fetch_add(count as u64, Ordering::Relaxed);
                }
                consumed.add_permits(count);
            }
        });

        let channel = publisher_conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let window = Arc::new(Semaphore::new(settings.window.max(1)));
        let (c, body, stop) = (counters.clone(), body.clone(), stop.clone());
        tasks.spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Ok(queued) = backlog.acquire().await else {
                    break;
                };
                // Given back by the consumer when it has the message.
                queued.forget();
                let Ok(permit) = window.clone().acquire_owned().await else {
                    break;
                };
                seq += 1;
                let published = channel
                    .basic_publish(
                        "".into(),
                        name.as_str().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        &body,
                        properties(seq),
                    )
                    .await;
                let Ok(pending) = published else { break };
                let c = c.clone();
                tokio::spawn(async move {
                    match pending.await {
                        Ok(Confirmation::Ack(_)) => c.confirmed.fetch_add(1, Ordering::Relaxed),
                        _ => c.nacked.fetch_add(1, Ordering::Relaxed),
                    };
                    drop(permit);
                });
            }
        });
    }

    tokio::time::sleep(settings.warmup).await;
    let (c0, k0, t0) = (
        counters.confirmed.load(Ordering::Relaxed),
        counters.consumed.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(settings.duration).await;
    let (c1, k1, elapsed) = (
        counters.confirmed.load(Ordering::Relaxed),
        counters.consumed.load(Ordering::Relaxed),
        t0.elapsed(),
    );
    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    tasks.abort_all();
    let cleanup = publisher_conn.create_channel().await?;
    for name in &names {
        let _ = cleanup
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = publisher_conn.close(200, "done".into()).await;
    let _ = consumer_conn.close(200, "done".into()).await;
    let secs = elapsed.as_secs_f64();
    Ok(Outcome {
        confirmed_per_sec: (c1 - c0) as f64 / secs,
        consumed_per_sec: (k1 - k0) as f64 / secs,
        nacked: counters.nacked.load(Ordering::Relaxed),
        measured_for: elapsed,
    })
}
