//! The consumer loop: manual acks, bounded prefetch, and one place that decides what happens to
//! a message after its handler ran.
//!
//! - `Ok` → ack (the handler only returns once its effect is durable). Acks are coalesced: the
//!   loop acks the longest finished prefix of the channel's deliveries with one `multiple=true`
//!   ack, and a finished delivery stuck behind a slow one is acked on its own after
//!   [`ACK_PATIENCE`] (see `acks.rs`).
//! - [`HandleError::Poison`] or an undecodable envelope → reject without requeue, so the queue
//!   dead-letters it to `<queue>.dlq`; the reason is logged with the message id.
//! - [`HandleError::Retry`] (Redis down, lock held, database busy) → the handler is run again in
//!   place with a capped backoff, holding the delivery, for up to `retry_budget`; after that the
//!   message is given back to the queue (nack + requeue). Retrying in place keeps a short outage
//!   from burning through the quorum queue's delivery limit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use futures::future::BoxFuture;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::{Semaphore, mpsc};
use tracing::{Instrument, error, info, info_span, warn};

use crate::acks::Acks;
use crate::broker::{Attachment, attach_channel};
use crate::envelope::{DecodeError, Incoming};

/// What a handler can say instead of "done".
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The message can never be processed: dead-letter it.
    #[error("poison message: {0}")]
    Poison(String),
    /// Something we depend on is unavailable right now: try again later.
    #[error("transient failure: {0}")]
    Retry(String),
}

impl From<DecodeError> for HandleError {
    fn from(e: DecodeError) -> Self {
        Self::Poison(e.to_string())
    }
}

/// How long a finished delivery waits for the deliveries before it to finish, so that one
/// `multiple=true` ack covers them all, before it is acked on its own. Short: a slow message
/// must not hold the prefetch window shut.
pub const ACK_PATIENCE: Duration = Duration::from_millis(10);

/// What became of a delivery, as its handler task tells the consume loop.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// Its effect is durable: ack it.
    Done,
    /// Rejected or nacked on its own: nothing more to send for it.
    Settled,
}

/// A message handler: returns once the message's effect is durable.
pub type Handler =
    Arc<dyn Fn(Incoming) -> BoxFuture<'static, Result<(), HandleError>> + Send + Sync>;

/// What a service implements to handle the messages of one queue.
pub trait MessageHandler: Clone + Send + Sync + 'static {
    /// Returns once the message's effect is durable, or says why not.
    fn handle(
        &self,
        msg: Incoming,
    ) -> impl std::future::Future<Output = Result<(), HandleError>> + Send;

    /// The handler in the form the consumer loop takes.
    fn into_handler(self) -> Handler {
        Arc::new(move |msg| {
            let this = self.clone();
            Box::pin(async move { this.handle(msg).await })
        })
    }
}

/// One consumer on one queue.
pub struct Consumer {
    pub queue: String,
    /// Shown in the management UI next to the connection name.
    pub tag: String,
    pub prefetch: u16,
    /// How many deliveries are handled at once (≤ prefetch).
    pub concurrency: usize,
    pub retry_budget: Duration,
    /// Whether `correlation_id` is an order id (saga queues) or a request id (RPC queues); it
    /// decides the name under which logs carry it.
    pub correlates_orders: bool,
    pub handler: Handler,
}

impl Consumer {
    pub fn new(queue: &str, service: &str, handler: Handler) -> Self {
        Self {
            queue: queue.to_owned(),
            tag: format!("{service}.{queue}"),
            prefetch: 32,
            concurrency: 8,
            retry_budget: Duration::from_secs(30),
            correlates_orders: true,
            handler,
        }
    }

    pub fn with_prefetch(mut self, prefetch: u16, concurrency: usize) -> Self {
        self.prefetch = prefetch;
        self.concurrency = concurrency.clamp(1, usize::from(prefetch.max(1)));
        self
    }

    /// For request/response queues: the correlation id is a request id, not an order id.
    pub fn for_requests(mut self) -> Self {
        self.correlates_orders = false;
        self
    }

    pub fn with_retry_budget(mut self, budget: Duration) -> Self {
        self.retry_budget = budget;
        self
    }
}

impl Attachment for Consumer {
    fn attach(
        self: Arc<Self>,
        connection: Arc<Connection>,
    ) -> BoxFuture<'static, lapin::Result<tokio::task::JoinHandle<()>>> {
        attach_channel(connection, move |channel| async move {
            channel
                .basic_qos(self.prefetch, BasicQosOptions::default())
                .await?;
            let stream = channel
                .basic_consume(
                    self.queue.as_str().into(),
                    self.tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            info!(queue = %self.queue, prefetch = self.prefetch, "consuming");
            Ok(async move {
                self.consume(&channel, stream).await;
            })
        })
    }
}

impl Consumer {
    /// Hands every delivery to a handler task and acks what they report, coalesced.
    async fn consume(self: Arc<Self>, channel: &Channel, mut stream: lapin::Consumer) {
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let (report, mut reports) = mpsc::unbounded_channel::<(u64, Outcome)>();
        let mut acks = Acks::default();
        loop {
            let straggler_at = acks.next_straggler_at(ACK_PATIENCE);
            tokio::select! {
                Some(first) = reports.recv() => {
                    note(&mut acks, first);
                    while let Ok(next) = reports.try_recv() {
                        note(&mut acks, next);
                    }
                    if let Some(prefix) = acks.take_prefix() {
                        self.ack(channel, prefix.up_to, true, prefix.count).await;
                    }
                }
                next = stream.next() => {
                    let delivery = match next {
                        Some(Ok(delivery)) => delivery,
                        Some(Err(e)) => {
                            warn!(queue = %self.queue, error = %e, "consumer stream failed");
                            break;
                        }
                        None => break,
                    };
                    acks.received(delivery.delivery_tag);
                    self.spawn_handler(delivery, slots.clone(), report.clone());
                }
                () = sleep_until(straggler_at) => {
                    for tag in acks.take_stragglers(Instant::now(), ACK_PATIENCE) {
                        self.ack(channel, tag, false, 1).await;
                    }
                }
            }
        }
    }

    fn spawn_handler(
        self: &Arc<Self>,
        delivery: Delivery,
        slots: Arc<Semaphore>,
        report: mpsc::UnboundedSender<(u64, Outcome)>,
    ) {
        let this = self.clone();
        // Detached on purpose: when the link drops, a handler in the middle of its step
        // finishes it (commit, marker, lock release) instead of being cut off between two
        // awaits and leaving a lock to expire. Its ack then fails and the broker redelivers.
        tokio::spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            let tag = delivery.delivery_tag;
            if let Some(outcome) = this.process(delivery).await {
                // The loop is gone when the channel is: the message will be redelivered.
                let _ = report.send((tag, outcome));
            }
        });
    }

    /// Sends one ack (`multiple` covers every outstanding delivery up to `tag`).
    async fn ack(&self, channel: &Channel, tag: u64, multiple: bool, count: usize) {
        let queue = self.queue.as_str();
        match channel.basic_ack(tag, BasicAckOptions { multiple }).await {
            Ok(()) => {
                metrics::counter!("messages_acked_total", "queue" => queue.to_owned())
                    .increment(count as u64);
                metrics::histogram!("consumer_ack_batch_size", "queue" => queue.to_owned())
                    .record(count as f64);
            }
            Err(e) => {
                warn!(queue, delivery_tag = tag, count, error = %e, "ack failed; the broker will redeliver these messages and they will be deduplicated");
            }
        }
    }

    /// Decodes and handles one delivery; `None` when it could not be settled (the channel is
    /// gone, so the broker will redeliver it).
    async fn process(&self, delivery: Delivery) -> Option<Outcome> {
        let queue = self.queue.as_str();
        metrics::counter!("messages_consumed_total", "queue" => queue.to_owned()).increment(1);
        if delivery.redelivered {
            metrics::counter!("messages_redelivered_total", "queue" => queue.to_owned())
                .increment(1);
        }
        let incoming = match Incoming::decode(&delivery) {
            Ok(incoming) => incoming,
            Err(e) => {
                error!(queue, delivery_tag = delivery.delivery_tag, reason = %e, "dead-lettering a message whose envelope cannot be read");
                return dead_letter(&delivery, queue).await;
            }
        };
        let correlation = incoming.meta.correlation_id.as_deref().unwrap_or("");
        let (order_id, request_id) = if self.correlates_orders {
            (correlation, "")
        } else {
            ("", correlation)
        };
        let span = info_span!(
            "message",
            queue,
            message_id = %incoming.meta.message_id,
            kind = %incoming.meta.kind,
            order_id,
            request_id,
            traceparent = incoming.meta.traceparent.as_deref().unwrap_or(""),
        );
        self.handle(&delivery, incoming).instrument(span).await
    }

    /// Runs the handler (retrying in place) and settles what cannot be acked.
    async fn handle(&self, delivery: &Delivery, incoming: Incoming) -> Option<Outcome> {
        let queue = self.queue.as_str();
        let started = Instant::now();
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(3))
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            match (self.handler)(incoming.clone()).await {
                Ok(()) => {
                    metrics::histogram!("message_handle_seconds", "queue" => queue.to_owned())
                        .record(started.elapsed().as_secs_f64());
                    return Some(Outcome::Done);
                }
                Err(HandleError::Poison(reason)) => {
                    error!(%reason, "dead-lettering a message that cannot be processed");
                    return dead_letter(delivery, queue).await;
                }
                Err(HandleError::Retry(reason)) if started.elapsed() >= self.retry_budget => {
                    warn!(%reason, budget = ?self.retry_budget, "still failing after the retry budget; giving the message back to the queue");
                    let requeue = BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    };
                    if let Ok(true) = delivery.nack(requeue).await {
                        metrics::counter!("messages_nacked_total", "queue" => queue.to_owned())
                            .increment(1);
                        return Some(Outcome::Settled);
                    }
                    return None;
                }
                Err(HandleError::Retry(reason)) if delivery.acker.poisoned() => {
                    warn!(%reason, "channel closed while retrying; the broker will redeliver the message");
                    return None;
                }
                Err(HandleError::Retry(reason)) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(3));
                    warn!(%reason, retry_in = ?delay, "transient failure; retrying");
                    metrics::counter!("messages_retried_total", "queue" => queue.to_owned())
                        .increment(1);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// Rejects without requeue, so the queue dead-letters the message.
async fn dead_letter(delivery: &Delivery, queue: &str) -> Option<Outcome> {
    match delivery.reject(BasicRejectOptions { requeue: false }).await {
        Ok(true) => {
            metrics::counter!("messages_dead_lettered_total", "queue" => queue.to_owned())
                .increment(1);
            Some(Outcome::Settled)
        }
        Ok(false) => {
            warn!(
                queue,
                "reject not sent (channel closed); the message will be redelivered"
            );
            None
        }
        Err(e) => {
            warn!(queue, error = %e, "reject failed; the message will be redelivered");
            None
        }
    }
}

fn note(acks: &mut Acks, (tag, outcome): (u64, Outcome)) {
    match outcome {
        Outcome::Done => acks.done(tag, Instant::now()),
        Outcome::Settled => acks.settled(tag),
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
