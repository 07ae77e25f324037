//! Admission control of `POST /orders`: new orders are taken only while the saga's backlog is
//! under `ORDERS_ADMISSION_LIMIT`; beyond it the gateway answers 503 with `Retry-After` at
//! once, before it claims an Idempotency-Key or publishes anything.
//!
//! The backlog is what the broker holds for undecided orders: the ready messages of
//! [`SAGA_QUEUES`] (a new order, its stock request, its stock answer — an undecided order waits
//! in at most one of them). It lives in the broker, so every gateway instance reads the same
//! number. A poller per instance reads it with passive `queue.declare`s (three round trips
//! every `ORDERS_ADMISSION_POLL_MS`, on a channel of its own), and between two polls the
//! instance adds the orders it admitted itself (in flight and confirmed), so one instance never
//! admits past the limit; `n` instances together can overshoot by what the others admit
//! within one poll interval.
//! The intake queue's `x-max-length` (reject-publish) is the exact backstop behind it.
//! See docs/decisions.md ("Admission control") for why this measure and not a Redis counter.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use lapin::Connection;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use messaging::broker::{Attachment, PublishError, attach_channel};
use messaging::topology::SAGA_QUEUES;
use tracing::{info, warn};

/// Why an order was refused: the label of `gateway_orders_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The saga's backlog is at `ORDERS_ADMISSION_LIMIT`.
    Backlog,
    /// The intake queue is at its length limit: the broker nacked the publish.
    BrokerFull,
    /// The broker did not confirm the publish (not connected, no confirm in time, channel error).
    BrokerUnavailable,
}

impl Refusal {
    pub const ALL: [Refusal; 3] = [Self::Backlog, Self::BrokerFull, Self::BrokerUnavailable];

    pub fn label(self) -> &'static str {
        match self {
            Self::Backlog => "backlog",
            Self::BrokerFull => "broker_full",
            Self::BrokerUnavailable => "broker_unavailable",
        }
    }

    /// Why a publish of `orders.create` that was not confirmed refused the order.
    pub fn of_publish(e: &PublishError) -> Self {
        match e {
            PublishError::Nacked => Self::BrokerFull,
            _ => Self::BrokerUnavailable,
        }
    }

    /// Counts one refused order.
    pub fn count(self) {
        metrics::counter!("gateway_orders_refused_total", "reason" => self.label()).increment(1);
    }
}

/// The admission state one gateway instance keeps; cheap to clone.
#[derive(Clone, Debug)]
pub struct Admission {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// 0: admission control is off (the broker's limit still applies).
    limit: u64,
    poll: Duration,
    /// Ready messages in the saga's queues at the last poll.
    backlog: AtomicU64,
    /// Orders admitted here whose publish has not been settled yet.
    in_flight: AtomicU64,
    /// Orders published (confirmed) here since the last poll began: in the broker, not yet in
    /// `backlog`.
    published: AtomicU64,
}

/// The saga's backlog when an order was refused.
#[derive(Debug, Clone, Copy)]
pub struct Shedding {
    pub backlog: u64,
    pub limit: u64,
}

/// One admitted order's place in the backlog. [`Ticket::published`] once the broker confirmed
/// it; dropped without that (refused, failed, the request ended early), it gives the place back.
#[derive(Debug)]
pub struct Ticket {
    admission: Option<Admission>,
}

impl Ticket {
    pub fn published(mut self) {
        if let Some(admission) = self.admission.take() {
            let inner = &admission.inner;
            // Counted as published before it stops being in flight: never under the truth.
            inner.published.fetch_add(1, Ordering::SeqCst);
            inner.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(admission) = self.admission.take() {
            admission.inner.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Admission {
    /// `limit` 0 turns admission control off.
    pub fn new(limit: u64, poll: Duration) -> Self {
        for refusal in Refusal::ALL {
            // Present from the start, so alert rules see 0 rather than no series.
            metrics::counter!("gateway_orders_refused_total", "reason" => refusal.label())
                .increment(0);
        }
        metrics::gauge!("gateway_admission_open").set(1.0);
        Self {
            inner: Arc::new(Inner {
                limit,
                poll,
                backlog: AtomicU64::new(0),
                in_flight: AtomicU64::new(0),
                published: AtomicU64::new(0),
            }),
        }
    }

    pub fn enabled(&self) -> bool {
        self.inner.limit > 0
    }

    /// Takes one order in, or says the saga is shedding. Every admission of this instance
    /// counts at once, so one instance never admits past the limit.
    pub fn try_admit(&self) -> Result<Ticket, Shedding> {
        let inner = &self.inner;
        if inner.limit == 0 {
            return Ok(Ticket { admission: None });
        }
        let ours = inner.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let ticket = Ticket {
            admission: Some(self.clone()),
        };
        let waiting =
            inner.backlog.load(Ordering::SeqCst) + inner.published.load(Ordering::SeqCst) + ours;
        if waiting > inner.limit {
            metrics::gauge!("gateway_admission_open").set(0.0);
            return Err(Shedding {
                backlog: waiting - 1,
                limit: inner.limit,
            });
        }
        Ok(ticket)
    }

    /// Records a poll: `backlog` was read after the first `counted` publishes since the last
    /// poll had been confirmed, so those are in it.
    fn polled(&self, backlog: u64, counted: u64) {
        let inner = &self.inner;
        inner.backlog.store(backlog, Ordering::SeqCst);
        let _ = inner
            .published
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_sub(counted))
            });
        let waiting = backlog
            + inner.published.load(Ordering::SeqCst)
            + inner.in_flight.load(Ordering::SeqCst);
        let open = waiting < inner.limit;
        metrics::gauge!("gateway_admission_open").set(if open { 1.0 } else { 0.0 });
        metrics::gauge!("gateway_saga_backlog").set(backlog as f64);
    }
}

impl Attachment for Admission {
    /// The poller: a channel of its own, passive declares of the saga's queues. A failed
    /// declare (a queue deleted under us, the channel closed) ends the task, and the broker link
    /// is rebuilt, which declares the topology again.
    fn attach(
        self: Arc<Self>,
        connection: Arc<Connection>,
    ) -> BoxFuture<'static, lapin::Result<tokio::task::JoinHandle<()>>> {
        attach_channel(connection, move |channel| async move {
            info!(limit = self.inner.limit, poll = ?self.inner.poll, "admission control reads the saga's backlog");
            Ok(async move {
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                };
                let mut tick = tokio::time::interval(self.inner.poll);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut shedding = false;
                loop {
                    tick.tick().await;
                    let counted = self.inner.published.load(Ordering::SeqCst);
                    let mut backlog = 0u64;
                    for queue in SAGA_QUEUES {
                        match channel
                            .queue_declare(queue.into(), passive, FieldTable::default())
                            .await
                        {
                            Ok(q) => backlog += u64::from(q.message_count()),
                            Err(e) => {
                                warn!(queue, error = %e, "cannot read the saga's backlog; rebuilding the broker link");
                                return;
                            }
                        }
                    }
                    self.polled(backlog, counted);
                    let now_shedding = backlog >= self.inner.limit;
                    if now_shedding != shedding {
                        if now_shedding {
                            warn!(
                                backlog,
                                limit = self.inner.limit,
                                "saga backlog at the admission limit; refusing new orders with 503"
                            );
                        } else {
                            info!(
                                backlog,
                                limit = self.inner.limit,
                                "saga backlog under the admission limit; admitting new orders again"
                            );
                        }
                        shedding = now_shedding;
                    }
                }
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_instance_never_admits_past_the_limit() {
        let admission = Admission::new(3, Duration::from_millis(100));
        admission.polled(1, 0);
        let first = admission.try_admit().unwrap();
        let second = admission.try_admit().unwrap();
        let refused = admission.try_admit().unwrap_err();
        assert_eq!((refused.backlog, refused.limit), (3, 3));
        first.published();
        // A publish that failed gives its place back.
        drop(second);
        admission.try_admit().unwrap().published();
        assert!(admission.try_admit().is_err());
        // The next poll sees the two orders in the broker plus the one already there.
        admission.polled(3, 2);
        assert!(admission.try_admit().is_err());
        // The saga drained: admitting again.
        admission.polled(0, 0);
        assert!(admission.try_admit().is_ok());
    }

    #[test]
    fn limit_zero_turns_it_off() {
        let admission = Admission::new(0, Duration::from_millis(100));
        admission.polled(1_000_000, 0);
        assert!(!admission.enabled());
        assert!(admission.try_admit().is_ok());
    }
}
