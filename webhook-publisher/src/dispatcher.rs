//! The dispatcher: finds due deliveries in the store (`webhooks.db`, or the PostgreSQL database
//! every instance shares) and sends them, endpoint by endpoint.
//!
//! Each subscription has its own small pool of permits (`WEBHOOK_ENDPOINT_CONCURRENCY`). A pass
//! claims, per subscription, at most as many due deliveries as it has free permits, so a slow or
//! dead endpoint only ever holds its own permits and its backlog never hides other endpoints'
//! due deliveries. The dispatcher wakes when the consumer records new deliveries, when a replay
//! is asked for, when an attempt finishes, and otherwise at the next due time (at most every
//! second). All state is in the database, so a restart simply carries on with the schedule.
//!
//! Passes are at least [`PASS_GAP`] apart unless the last one left due deliveries behind (an
//! endpoint had fewer free permits than deliveries due): at a steady rate every finished attempt
//! and every recorded event wakes the loop, and without the gap each delivery paid for a pass of
//! its own (measured: 17 % of the publisher's CPU per delivery at 1,200/s, docs/benchmarks.md).
//! A backlog is still drained pass after pass, as fast as permits free up.
//!
//! A pass is **one** write transaction: it records every attempt that finished since the last
//! pass (together under one savepoint, or each under its own if that fails), lists the active
//! subscriptions, claims what there is room for and reads the next due time. Wake-ups that arrive while a pass runs fold into one next
//! pass, so a burst of finished attempts costs one commit, not one each. Attempts finished but
//! not yet written keep their lease; if the process dies before the pass commits, they are
//! attempted again after it, as for a crash mid-attempt. At shutdown the last ones are written
//! after the in-flight attempts drained.
//!
//! With several instances on PostgreSQL each runs this loop; a pass claims deliveries with a
//! lease (`store/pg.rs`), so every due delivery is taken by one instance, at most one attempt of
//! it is in flight, and a delivery claimed by an instance that died goes out from another once
//! the lease runs out. Permits are per instance: an endpoint sees at most
//! `WEBHOOK_ENDPOINT_CONCURRENCY` requests per instance.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::Started;
use crate::client::{ClientSettings, Clients};
use crate::delivery::{self, Sent};
use crate::schedule::RetrySchedule;
use crate::storage::{Pass, Store};
use crate::store::{Job, Next, Settlement, now_ms};

/// How the dispatcher sends.
#[derive(Debug, Clone)]
pub struct Settings {
    pub schedule: RetrySchedule,
    /// Requests in flight per subscription.
    pub endpoint_concurrency: usize,
    /// Time limit, TLS roots and address policy of the requests.
    pub client: ClientSettings,
}

#[derive(Clone)]
pub struct Dispatcher {
    store: Store,
    clients: Clients,
    settings: Settings,
    wake: Arc<Notify>,
    endpoints: Arc<Endpoints>,
    /// Attempts that finished and wait for the next pass to be written. At most one per
    /// permit, so bounded by the endpoints' concurrency.
    finished: Arc<Mutex<Vec<Settlement>>>,
}

/// The permits of every active subscription.
struct Endpoints {
    permits: Mutex<HashMap<String, Arc<Semaphore>>>,
    concurrency: usize,
}

impl Endpoints {
    fn permits_of(&self, subscription_id: &str) -> Arc<Semaphore> {
        let mut permits = self.permits.lock().unwrap_or_else(|p| p.into_inner());
        permits
            .entry(subscription_id.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.concurrency.max(1))))
            .clone()
    }

    /// Free permits of each subscription; forgets subscriptions that are no longer active (an
    /// attempt still in flight keeps its semaphore alive through its permit).
    fn room(&self, active: Vec<String>) -> Vec<(String, usize)> {
        let room: Vec<(String, usize)> = active
            .into_iter()
            .map(|id| {
                let free = self.permits_of(&id).available_permits();
                (id, free)
            })
            .collect();
        let mut permits = self.permits.lock().unwrap_or_else(|p| p.into_inner());
        permits.retain(|id, _| room.iter().any(|(active, _)| active == id));
        room
    }

    /// Whether every known subscription has all its permits in use.
    fn all_busy(&self) -> bool {
        let permits = self.permits.lock().unwrap_or_else(|p| p.into_inner());
        !permits.is_empty() && permits.values().all(|s| s.available_permits() == 0)
    }
}

/// What the loop does after a pass.
struct AfterPass {
    /// The longest wait before the next pass.
    pause: Duration,
    /// Whether the next pass may come at once (a backlog), or only [`PASS_GAP`] after this one.
    at_once: bool,
}

/// The longest pause between two passes when nothing is due.
const IDLE: Duration = Duration::from_secs(1);
/// How long in-flight attempts may finish after a stop is asked for.
const DRAIN: Duration = Duration::from_secs(5);
/// The shortest time between two passes when the last one left nothing due behind: wake-ups
/// within it fold into one pass. A new delivery's first attempt waits at most this much longer.
pub const PASS_GAP: Duration = Duration::from_millis(5);

impl Dispatcher {
    pub fn new(store: Store, settings: Settings) -> anyhow::Result<Self> {
        Ok(Self {
            store,
            clients: Clients::new(&settings.client)?,
            endpoints: Arc::new(Endpoints {
                permits: Mutex::new(HashMap::new()),
                concurrency: settings.endpoint_concurrency,
            }),
            settings,
            wake: Arc::new(Notify::new()),
            finished: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// Wakes the loop: something may be due now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// A claimed delivery that is not settled within this time is taken again: longer than
    /// an attempt may take. (On PostgreSQL at least `OUTBOX_LEASE_SECS`.)
    fn lease(&self) -> Duration {
        self.settings.client.timeout + Duration::from_secs(5)
    }

    /// Dispatches until `stop`, once the store is ready and the default subscription exists
    /// (`started`).
    pub async fn run(self, started: Started, stop: CancellationToken) {
        if !started.wait(&stop).await {
            return;
        }
        let mut in_flight = JoinSet::new();
        loop {
            let started = tokio::time::Instant::now();
            let after = self.dispatch_due(&mut in_flight).await;
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(after.pause) => {}
            }
            if !after.at_once {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep_until(started + PASS_GAP) => {}
                }
            }
            while in_flight.try_join_next().is_some() {}
        }
        self.drain(in_flight).await;
    }

    /// Lets in-flight attempts finish (for a while), then writes what they gave.
    async fn drain(&self, mut in_flight: JoinSet<()>) {
        let drained = tokio::time::timeout(DRAIN, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                "attempts still in flight at shutdown were cut off; they will be sent again after their lease"
            );
            in_flight.shutdown().await;
        }
        let finished = self.take_finished();
        if finished.is_empty() {
            return;
        }
        if let Err(e) = self.store.settle(finished).await {
            error!(error = %e, store = self.store.name(), "could not record the last attempts; they will be attempted again after their lease");
        }
    }

    fn take_finished(&self) -> Vec<Settlement> {
        std::mem::take(&mut *self.finished.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts settlements back for the next pass (their write failed).
    fn requeue(&self, settlements: Vec<Settlement>) {
        let mut finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        finished.extend(settlements);
    }

    /// Runs one pass and starts what it claimed; says when the next one may run.
    async fn dispatch_due(&self, in_flight: &mut JoinSet<()>) -> AfterPass {
        let settlements = Arc::new(self.take_finished());
        if settlements.is_empty() && self.endpoints.all_busy() {
            // Nothing to write and no room: the next finished attempt wakes the loop, and
            // deliveries may be waiting for it.
            return AfterPass {
                pause: IDLE,
                at_once: true,
            };
        }
        match self.pass(settlements.clone()).await {
            Ok(pass) => {
                self.start(pass.jobs, in_flight);
                let now = now_ms();
                let pause = pass.next_due.map_or(IDLE, |at| {
                    Duration::from_millis(u64::try_from(at - now).unwrap_or(0)).min(IDLE)
                });
                AfterPass {
                    pause,
                    at_once: pass.backlog,
                }
            }
            Err(e) => {
                error!(error = %e, store = self.store.name(), "a dispatcher pass failed; trying again");
                self.requeue(Arc::unwrap_or_clone(settlements));
                AfterPass {
                    pause: IDLE,
                    at_once: false,
                }
            }
        }
    }

    /// One write transaction: settle, then claim per subscription, then the next due time.
    async fn pass(
        &self,
        settlements: Arc<Vec<Settlement>>,
    ) -> Result<Pass, messaging::store::DbError> {
        let endpoints = self.endpoints.clone();
        self.store
            .pass(
                settlements,
                move |active| endpoints.room(active),
                self.lease(),
            )
            .await
    }

    fn start(&self, jobs: Vec<Job>, in_flight: &mut JoinSet<()>) {
        for job in jobs {
            match self
                .endpoints
                .permits_of(&job.subscription_id)
                .try_acquire_owned()
            {
                Ok(permit) => {
                    let this = self.clone();
                    let span = info_span!("webhook", webhook_id = %job.webhook_id, delivery_id = %job.delivery_id,
                        order_id = job.order_id.as_deref().unwrap_or(""), url = %job.url);
                    in_flight.spawn(this.attempt(job, permit).instrument(span));
                }
                // Only this loop takes permits, so this does not happen; the lease covers it.
                Err(_) => {
                    warn!(delivery_id = %job.delivery_id, "no free permit for a claimed delivery; it will be retried after its lease")
                }
            }
        }
    }

    async fn attempt(self, job: Job, permit: OwnedSemaphorePermit) {
        let sent = delivery::send(&self.clients, &job).await;
        drop(permit);
        let next = delivery::next_step(&job, &sent, &self.settings.schedule);
        log_outcome(&job, &sent, &next);
        let settlement = Settlement::of(&job, sent.record, next);
        self.finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(settlement);
        self.wake();
    }
}

fn log_outcome(job: &Job, sent: &Sent, next: &Next) {
    let status = sent
        .record
        .status_code
        .map_or_else(|| "no response".to_owned(), |code| code.to_string());
    let latency_ms = sent.record.latency_ms;
    let error = sent.record.error.as_deref().unwrap_or("");
    let attempt = job.number;
    let outcome = match next {
        Next::Delivered => {
            info!(attempt, %status, latency_ms, event = %job.event_type, "webhook delivered");
            "delivered"
        }
        Next::RetryAt(at) => {
            let retry_in_ms = at - now_ms();
            warn!(
                attempt,
                %status,
                latency_ms,
                error,
                retry_in_ms,
                "webhook attempt failed; will retry"
            );
            "retry"
        }
        Next::Failed(reason) => {
            warn!(attempt, %status, latency_ms, %reason, "webhook delivery failed for good; it can be replayed");
            "failed"
        }
        Next::Gone => {
            warn!(attempt, subscription_id = %job.subscription_id, "endpoint answered 410 Gone; subscription disabled");
            "gone"
        }
    };
    metrics::counter!("webhook_attempts_total", "outcome" => outcome).increment(1);
    metrics::histogram!("webhook_attempt_latency_seconds").record(latency_ms as f64 / 1000.0);
}
