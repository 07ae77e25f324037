//! The broker's own ceiling on this machine: persistent messages of an order message's size
//! through quorum queues, published with confirms (a sliding window of unconfirmed messages,
//! like the outbox relay's pipelined batch) and consumed with manual acks at the services'
//! prefetch. Nothing but the broker does work here, so `msgs/s` is what RabbitMQ alone can
//! carry; the saga can at best reach `ceiling ÷ messages per order` orders/s.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    let stop = Arc::new(AtomicBool::new(false));
    let mut names = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();

    for n in 0..settings.queues.max(1) {
        let name = format!("loadgen_ceiling_{n}");
        declare_quorum_queue(&publisher_conn, &name).await?;
        names.push(name.clone());
        // Places in the queue: the publisher takes one per message, the consumer gives it back.
        let backlog = Arc::new(Semaphore::new(settings.backlog.max(1)));
        let consumer = consume(
            &consumer_conn,
            n,
            &name,
            settings,
            counters.clone(),
            backlog.clone(),
        )
        .await?;
        tasks.spawn(consumer);
        let publisher = publish(
            &publisher_conn,
            name,
            settings,
            (counters.clone(), body.clone(), stop.clone()),
            backlog,
        )
        .await?;
        tasks.spawn(publisher);
    }

    let measured = measure(settings, &counters).await;
    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    tasks.abort_all();
    clean_up(&publisher_conn, &consumer_conn, &names).await?;
    Ok(measured.outcome(&counters))
}

/// Declares the durable quorum queue `name`.
async fn declare_quorum_queue(conn: &Connection, name: &str) -> Result<(), CeilingError> {
    let setup = conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    setup
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    Ok(())
}

/// Subscribes to queue `name` (consumer `n`) at the services' prefetch; the returned task acks
/// what it receives, counts it, and gives its places in the backlog back.
async fn consume(
    conn: &Connection,
    n: usize,
    name: &str,
    settings: &Settings,
    counters: Arc<Counters>,
    backlog: Arc<Semaphore>,
) -> Result<impl Future<Output = ()> + Send + 'static, CeilingError> {
    let consumer = conn.create_channel().await?;
    consumer
        .basic_qos(settings.prefetch, BasicQosOptions::default())
        .await?;
    let mut stream = consumer
        .basic_consume(
            name.into(),
            format!("loadgen.ceiling.{n}").as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let coalesce = settings.coalesce_acks;
    Ok(async move {
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
                counters.consumed.fetch_add(count as u64, Ordering::Relaxed);
            }
            backlog.add_permits(count);
        }
    })
}

/// Opens a confirming channel; the returned task publishes to queue `name` until `stop`, each
/// message once it has a place in the backlog and in the window of unconfirmed publishes, and
/// counts the confirms.
async fn publish(
    conn: &Connection,
    name: String,
    settings: &Settings,
    (counters, body, stop): (Arc<Counters>, Arc<Vec<u8>>, Arc<AtomicBool>),
    backlog: Arc<Semaphore>,
) -> Result<impl Future<Output = ()> + Send + 'static, CeilingError> {
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let window = Arc::new(Semaphore::new(settings.window.max(1)));
    Ok(async move {
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
            let counters = counters.clone();
            tokio::spawn(async move {
                match pending.await {
                    Ok(Confirmation::Ack(_)) => counters.confirmed.fetch_add(1, Ordering::Relaxed),
                    _ => counters.nacked.fetch_add(1, Ordering::Relaxed),
                };
                drop(permit);
            });
        }
    })
}

/// What was confirmed and consumed in the measured window.
struct Measured {
    confirmed: u64,
    consumed: u64,
    elapsed: Duration,
}

impl Measured {
    fn outcome(&self, counters: &Counters) -> Outcome {
        let secs = self.elapsed.as_secs_f64();
        Outcome {
            confirmed_per_sec: self.confirmed as f64 / secs,
            consumed_per_sec: self.consumed as f64 / secs,
            nacked: counters.nacked.load(Ordering::Relaxed),
            measured_for: self.elapsed,
        }
    }
}

/// Lets the queues warm up, then counts confirms and deliveries over `settings.duration`.
async fn measure(settings: &Settings, counters: &Counters) -> Measured {
    tokio::time::sleep(settings.warmup).await;
    let (c0, k0, t0) = (
        counters.confirmed.load(Ordering::Relaxed),
        counters.consumed.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(settings.duration).await;
    Measured {
        confirmed: counters.confirmed.load(Ordering::Relaxed) - c0,
        consumed: counters.consumed.load(Ordering::Relaxed) - k0,
        elapsed: t0.elapsed(),
    }
}

/// Deletes the queues and closes both connections.
async fn clean_up(
    publisher_conn: &Connection,
    consumer_conn: &Connection,
    names: &[String],
) -> Result<(), CeilingError> {
    let cleanup = publisher_conn.create_channel().await?;
    for name in names {
        let _ = cleanup
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = publisher_conn.close(200, "done".into()).await;
    let _ = consumer_conn.close(200, "done".into()).await;
    Ok(())
}
