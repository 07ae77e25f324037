//! Admission control of `POST /orders`: new orders are taken only while the saga's backlog is
//! under `ORDERS_ADMISSION_LIMIT`; beyond it the gateway answers 503 with `Retry-After` at
//! once, before it claims an Idempotency-Key or publishes anything.
//!
//! The backlog is what the broker holds for undecided orders: the ready messages of
//! [`SAGA_QUEUES`] (a new order, its stock request, its stock answer — an undecided order waits
//! in at most one of them). It lives in the broker, so every gateway instance reads the same
//! number. A poller per instance reads it with passive `queue.declare`s (four round trips with
//! `webhooks_queue`, every `ORDERS_ADMISSION_POLL_MS`, on a channel of its own), and between
//! two polls the instance adds the orders it admitted itself (in flight and confirmed), so one
//! instance never admits past the limit; `n` instances together can overshoot by what the
//! others admit within one poll interval.
//!
//! Past half the limit an order is refused at random, with a probability that rises linearly to
//! 1 at the limit ([`shed_probability`]). A gate that is either open or shut refuses every
//! client at once when it shuts; clients that honour `Retry-After` then come back together, the
//! backlog drains to nothing while they wait and the saga idles, and their return fills it to
//! the limit again. Refusing early and at random spreads the refusals, and so the returns, in
//! time, and the backlog stays between half the limit and the limit (docs/decisions.md).
//! The intake queue's `x-max-length` (reject-publish) is the exact backstop behind it.
//!
//! The webhooks of the orders decided are a backlog too: the events waiting in `webhooks_queue`
//! for the webhook publisher. Under overload the saga's bound alone let them pile up without
//! end (111,000 events after 60 s at twice the sustainable rate, the notifications of the last
//! orders a minute late), because the saga's services took the CPU the webhook path needed. So
//! the same poll reads that queue too, and `ORDERS_ADMISSION_WEBHOOK_LIMIT` bounds it the same
//! way (early and at random from half of it, every order past it), with its own refusal reason.
//! See docs/decisions.md ("Admission control") for why this measure and not a Redis counter.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use lapin::Connection;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use messaging::broker::{Attachment, PublishError, attach_channel};
use messaging::topology::{SAGA_QUEUES, WEBHOOKS_QUEUE};
use tracing::{info, warn};

/// Why an order was refused: the label of `gateway_orders_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The saga's backlog is at `ORDERS_ADMISSION_LIMIT` (or past half of it: early shedding).
    Backlog,
    /// The webhooks waiting to be sent are at `ORDERS_ADMISSION_WEBHOOK_LIMIT` (or past half).
    WebhookBacklog,
    /// The intake queue is at its length limit: the broker nacked the publish.
    BrokerFull,
    /// The broker did not confirm the publish (not connected, no confirm in time, channel error).
    BrokerUnavailable,
}

impl Refusal {
    pub const ALL: [Refusal; 4] = [
        Self::Backlog,
        Self::WebhookBacklog,
        Self::BrokerFull,
        Self::BrokerUnavailable,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Backlog => "backlog",
            Self::WebhookBacklog => "webhook_backlog",
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
    limits: Limits,
    poll: Duration,
    /// Ready messages in the saga's queues at the last poll.
    backlog: AtomicU64,
    /// Ready messages in `webhooks_queue` at the last poll.
    webhook_backlog: AtomicU64,
    /// Orders admitted here whose publish has not been settled yet.
    in_flight: AtomicU64,
    /// Orders published (confirmed) here since the last poll began: in the broker, not yet in
    /// `backlog`.
    published: AtomicU64,
}

/// The bounds admission control keeps; 0 turns one off (the broker's limit still applies).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `ORDERS_ADMISSION_LIMIT`: undecided orders in the saga's queues.
    pub saga: u64,
    /// `ORDERS_ADMISSION_WEBHOOK_LIMIT`: events in `webhooks_queue`.
    pub webhooks: u64,
}

/// Why an order was refused, and the backlog and bound that refused it.
#[derive(Debug, Clone, Copy)]
pub struct Shedding {
    /// [`Refusal::Backlog`] or [`Refusal::WebhookBacklog`].
    pub cause: Refusal,
    pub backlog: u64,
    pub limit: u64,
    /// Refused at random below the limit (early shedding), not because it is reached.
    pub early: bool,
}

/// Where early shedding begins, as a share of the limit.
const EARLY_SHARE: f64 = 0.5;

/// The probability of refusing an order that would make `waiting` undecided orders: 0 up to
/// half the limit, rising linearly to 1 just past the limit.
pub fn shed_probability(waiting: u64, limit: u64) -> f64 {
    let early = limit as f64 * EARLY_SHARE;
    ((waiting as f64 - early) / (limit as f64 + 1.0 - early)).clamp(0.0, 1.0)
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
    /// Admission control with `limits` (both 0: off), the backlog read every `poll`.
    pub fn new(limits: Limits, poll: Duration) -> Self {
        for refusal in Refusal::ALL {
            // Present from the start, so alert rules see 0 rather than no series.
            metrics::counter!("gateway_orders_refused_total", "reason" => refusal.label())
                .increment(0);
        }
        metrics::gauge!("gateway_admission_open").set(1.0);
        Self {
            inner: Arc::new(Inner {
                limits,
                poll,
                backlog: AtomicU64::new(0),
                webhook_backlog: AtomicU64::new(0),
                in_flight: AtomicU64::new(0),
                published: AtomicU64::new(0),
            }),
        }
    }

    pub fn enabled(&self) -> bool {
        self.inner.limits.saga > 0 || self.inner.limits.webhooks > 0
    }

    /// Takes one order in, or says the saga is shedding. Every admission of this instance
    /// counts at once, so one instance never admits past the limit.
    pub fn try_admit(&self) -> Result<Ticket, Shedding> {
        self.admit(rand::random::<f64>())
    }

    /// [`Admission::try_admit`] with the random draw given (in `[0, 1)`; 1 never sheds early).
    fn admit(&self, draw: f64) -> Result<Ticket, Shedding> {
        let inner = &self.inner;
        if !self.enabled() {
            return Ok(Ticket { admission: None });
        }
        let ours = inner.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let ticket = Ticket {
            admission: Some(self.clone()),
        };
        let waiting =
            inner.backlog.load(Ordering::SeqCst) + inner.published.load(Ordering::SeqCst) + ours;
        let bounds = self.bounds(waiting);
        // A bound that is passed refuses outright; else the one closest to its limit may
        // refuse early.
        let refusing = match bounds.clone().find(|b| b.backlog > b.limit) {
            Some(passed) => {
                metrics::gauge!("gateway_admission_open").set(0.0);
                passed
            }
            None => {
                match bounds.max_by(|a, b| a.shed_probability().total_cmp(&b.shed_probability())) {
                    Some(nearest) if draw < nearest.shed_probability() => nearest,
                    _ => return Ok(ticket),
                }
            }
        };
        Err(Shedding {
            cause: refusing.cause,
            // The saga's count includes the order asked for; the refusal reports what waits.
            backlog: match refusing.cause {
                Refusal::Backlog => refusing.backlog - 1,
                _ => refusing.backlog,
            },
            limit: refusing.limit,
            early: refusing.backlog <= refusing.limit,
        })
    }

    /// The enabled bounds: the saga's with `waiting` orders, the webhooks' as last polled.
    fn bounds(&self, waiting: u64) -> impl Iterator<Item = Bound> + Clone + use<> {
        let inner = &self.inner;
        [
            Bound {
                cause: Refusal::Backlog,
                backlog: waiting,
                limit: inner.limits.saga,
            },
            Bound {
                cause: Refusal::WebhookBacklog,
                backlog: inner.webhook_backlog.load(Ordering::SeqCst),
                limit: inner.limits.webhooks,
            },
        ]
        .into_iter()
        .filter(|b| b.limit > 0)
    }

    /// Records a poll: `backlog` (the saga's) was read after the first `counted` publishes
    /// since the last poll had been confirmed, so those are in it; `webhook_backlog` is what
    /// waits in `webhooks_queue`.
    fn polled(&self, backlog: u64, counted: u64, webhook_backlog: u64) {
        let inner = &self.inner;
        inner.backlog.store(backlog, Ordering::SeqCst);
        inner
            .webhook_backlog
            .store(webhook_backlog, Ordering::SeqCst);
        let _ = inner
            .published
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_sub(counted))
            });
        let waiting = backlog
            + inner.published.load(Ordering::SeqCst)
            + inner.in_flight.load(Ordering::SeqCst);
        let open = self.bounds(waiting).all(|b| b.backlog < b.limit);
        metrics::gauge!("gateway_admission_open").set(if open { 1.0 } else { 0.0 });
        metrics::gauge!("gateway_saga_backlog").set(backlog as f64);
        metrics::gauge!("gateway_webhook_backlog").set(webhook_backlog as f64);
    }

    /// The bound, if any, that the last poll found reached (for the log).
    fn reached(&self) -> Option<Bound> {
        let polled = self.inner.backlog.load(Ordering::SeqCst);
        self.bounds(polled).find(|b| b.backlog >= b.limit)
    }
}

/// One backlog against its bound (0 = off, never listed).
#[derive(Debug, Clone, Copy)]
struct Bound {
    cause: Refusal,
    backlog: u64,
    limit: u64,
}

impl Bound {
    fn shed_probability(&self) -> f64 {
        shed_probability(self.backlog, self.limit)
    }
}

impl Attachment for Admission {
    /// The poller: a channel of its own, passive declares of the saga's queues and of
    /// `webhooks_queue`. A failed
    /// declare (a queue deleted under us, the channel closed) ends the task, and the broker link
    /// is rebuilt, which declares the topology again.
    fn attach(
        self: Arc<Self>,
        connection: Arc<Connection>,
    ) -> BoxFuture<'static, lapin::Result<tokio::task::JoinHandle<()>>> {
        attach_channel(connection, move |channel| async move {
            let limits = self.inner.limits;
            info!(
                limit = limits.saga,
                webhook_limit = limits.webhooks,
                poll = ?self.inner.poll,
                "admission control reads the saga's and the webhooks' backlogs"
            );
            Ok(async move {
                let mut tick = tokio::time::interval(self.inner.poll);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut shedding = false;
                loop {
                    tick.tick().await;
                    let counted = self.inner.published.load(Ordering::SeqCst);
                    let mut backlog = 0u64;
                    for queue in SAGA_QUEUES {
                        let Some(ready) = ready(&channel, queue).await else {
                            return;
                        };
                        backlog += ready;
                    }
                    let Some(webhook_backlog) = ready(&channel, WEBHOOKS_QUEUE).await else {
                        return;
                    };
                    self.polled(backlog, counted, webhook_backlog);
                    let reached = self.reached();
                    if reached.is_some() != shedding {
                        match reached {
                            Some(b) => warn!(
                                reason = b.cause.label(),
                                backlog = b.backlog,
                                limit = b.limit,
                                "a backlog is at its admission limit; refusing new orders with 503"
                            ),
                            None => info!(
                                backlog,
                                webhook_backlog,
                                "backlogs under their admission limits; admitting new orders again"
                            ),
                        }
                        shedding = reached.is_some();
                    }
                }
            })
        })
    }
}

/// The ready messages of `queue` (a passive declare); `None` (logged) if it cannot be read,
/// which ends the poller so that the broker link is rebuilt.
async fn ready(channel: &lapin::Channel, queue: &'static str) -> Option<u64> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    match channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
    {
        Ok(q) => Some(u64::from(q.message_count())),
        Err(e) => {
            warn!(queue, error = %e, "cannot read the backlog; rebuilding the broker link");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A draw that never sheds early.
    const NEVER_EARLY: f64 = 1.0;

    /// Admission control with these bounds (0: off), polled every 100 ms.
    fn bounded(saga: u64, webhooks: u64) -> Admission {
        Admission::new(Limits { saga, webhooks }, Duration::from_millis(100))
    }

    /// Admission control of the saga's backlog alone.
    fn saga_only(limit: u64) -> Admission {
        bounded(limit, 0)
    }

    /// The hard limit, with the early shedding drawn away.
    #[test]
    fn one_instance_never_admits_past_the_limit() {
        let admission = saga_only(3);
        admission.polled(1, 0, 0);
        let first = admission.admit(NEVER_EARLY).unwrap();
        let second = admission.admit(NEVER_EARLY).unwrap();
        let refused = admission.admit(NEVER_EARLY).unwrap_err();
        assert_eq!(
            (refused.cause, refused.backlog, refused.limit, refused.early),
            (Refusal::Backlog, 3, 3, false)
        );
        first.published();
        // A publish that failed gives its place back.
        drop(second);
        admission.admit(NEVER_EARLY).unwrap().published();
        assert!(admission.admit(NEVER_EARLY).is_err());
        // The next poll sees the two orders in the broker plus the one already there.
        admission.polled(3, 2, 0);
        assert!(admission.admit(NEVER_EARLY).is_err());
        // The saga drained: admitting again.
        admission.polled(0, 0, 0);
        assert!(admission.admit(NEVER_EARLY).is_ok());
    }

    #[test]
    fn shedding_rises_from_half_the_limit_to_past_it() {
        assert_eq!(shed_probability(0, 1_000), 0.0);
        assert_eq!(shed_probability(500, 1_000), 0.0);
        let p = [600, 750, 900, 1_000].map(|w| shed_probability(w, 1_000));
        assert!(p.windows(2).all(|w| w[0] < w[1]), "{p:?}");
        assert!((p[1] - 0.5).abs() < 0.01, "{p:?}");
        assert!(p[3] < 1.0, "an order at the limit may still get in: {p:?}");
        assert_eq!(shed_probability(1_001, 1_000), 1.0);
        assert_eq!(shed_probability(5_000, 1_000), 1.0);
    }

    #[test]
    fn below_the_limit_an_order_is_refused_early_by_the_draw() {
        let admission = saga_only(100);
        admission.polled(80, 0, 0);
        let refused = admission.admit(0.0).unwrap_err();
        assert_eq!(
            (refused.cause, refused.backlog, refused.limit, refused.early),
            (Refusal::Backlog, 80, 100, true)
        );
        admission.admit(0.99).unwrap();
        // Under half the limit no draw refuses.
        admission.polled(40, 0, 0);
        admission.admit(0.0).unwrap();
    }

    #[test]
    fn early_shedding_refuses_about_its_share_at_random() {
        let admission = saga_only(1_000);
        // 749 waiting: the order asked for would be the 750th, refused with probability ≈ 0.5.
        admission.polled(749, 0, 0);
        let refused = (0..2_000)
            .filter(|_| admission.try_admit().is_err())
            .count();
        // Each ticket is dropped at once, so every draw sees the same backlog.
        assert!(
            (800..1_200).contains(&refused),
            "{refused} of 2,000 refused"
        );
    }

    #[test]
    fn limit_zero_turns_it_off() {
        let admission = saga_only(0);
        admission.polled(1_000_000, 0, 1_000_000);
        assert!(!admission.enabled());
        assert!(admission.try_admit().is_ok());
    }

    #[test]
    fn the_webhook_backlog_is_bounded_too() {
        let admission = bounded(1_000, 300);
        // The saga is idle; the webhooks wait past their bound: refused, whatever the draw.
        admission.polled(0, 0, 301);
        let refused = admission.admit(NEVER_EARLY).unwrap_err();
        assert_eq!(
            (refused.cause, refused.backlog, refused.limit, refused.early),
            (Refusal::WebhookBacklog, 301, 300, false)
        );
        // Past half their bound they may refuse early, and they are the nearer bound.
        admission.polled(100, 0, 250);
        let refused = admission.admit(0.0).unwrap_err();
        assert_eq!(
            (refused.cause, refused.early),
            (Refusal::WebhookBacklog, true)
        );
        admission.admit(NEVER_EARLY).unwrap();
        // Both under half: nothing refuses.
        admission.polled(100, 0, 100);
        admission.admit(0.0).unwrap();
        // A passed saga bound refuses as the saga's, even with the webhooks nearly full.
        admission.polled(1_000, 0, 299);
        let refused = admission.admit(NEVER_EARLY).unwrap_err();
        assert_eq!(refused.cause, Refusal::Backlog);
    }

    #[test]
    fn a_webhook_bound_alone_turns_admission_on() {
        let admission = bounded(0, 10);
        assert!(admission.enabled());
        // The saga's backlog is not bounded.
        admission.polled(1_000_000, 0, 0);
        admission.admit(0.0).unwrap();
        admission.polled(0, 0, 11);
        assert_eq!(
            admission.admit(NEVER_EARLY).unwrap_err().cause,
            Refusal::WebhookBacklog
        );
    }
}
