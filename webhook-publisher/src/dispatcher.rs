//! The dispatcher: finds due deliveries in `webhooks.db` and sends them, endpoint by endpoint.
//!
//! Each subscription has its own small pool of permits (`WEBHOOK_ENDPOINT_CONCURRENCY`). A pass
//! claims, per subscription, at most as many due deliveries as it has free permits, so a slow or
//! dead endpoint only ever holds its own permits and its backlog never hides other endpoints'
//! due deliveries. The dispatcher wakes when the consumer records new deliveries, when a replay
//! is asked for, when an attempt finishes, and otherwise at the next due time (at most every
//! second). All state is in the database, so a restart simply carries on with the schedule.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use messaging::Db;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::delivery::{self, Sent};
use crate::schedule::RetrySchedule;
use crate::store::{self, Job, Next, now_ms};

/// How the dispatcher sends.
#[derive(Debug, Clone)]
pub struct Settings {
    pub schedule: RetrySchedule,
    /// Time limit of one request.
    pub timeout: Duration,
    /// Requests in flight per subscription.
    pub endpoint_concurrency: usize,
}

#[derive(Clone)]
pub struct Dispatcher {
    db: Db,
    client: reqwest::Client,
    settings: Settings,
    wake: Arc<Notify>,
    endpoints: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

/// The longest pause between two passes when nothing is due.
const IDLE: Duration = Duration::from_secs(1);
/// How long in-flight attempts may finish after a stop is asked for.
const DRAIN: Duration = Duration::from_secs(5);

impl Dispatcher {
    pub fn new(db: Db, settings: Settings) -> anyhow::Result<Self> {
        Ok(Self {
            db,
            client: delivery::http_client(settings.timeout)?,
            settings,
            wake: Arc::new(Notify::new()),
            endpoints: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// Wakes the loop: something may be due now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// A claimed delivery that is not settled within this time is taken again.
    fn lease(&self) -> i64 {
        i64::try_from((self.settings.timeout + Duration::from_secs(5)).as_millis())
            .unwrap_or(i64::MAX / 2)
    }

    pub async fn run(self, stop: CancellationToken) {
        let mut in_flight = JoinSet::new();
        loop {
            let pause = match self.dispatch_due(&mut in_flight).await {
                Ok(pause) => pause,
                Err(e) => {
                    error!(error = %e, "could not read due deliveries from webhooks.db; trying again");
                    IDLE
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
                Some(_) = in_flight.join_next() => {}
            }
            while in_flight.try_join_next().is_some() {}
        }
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
    }

    fn permits_of(&self, subscription_id: &str) -> Arc<Semaphore> {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        endpoints
            .entry(subscription_id.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.settings.endpoint_concurrency.max(1))))
            .clone()
    }

    /// Claims and starts every due delivery there is room for; returns how long to pause.
    async fn dispatch_due(
        &self,
        in_flight: &mut JoinSet<()>,
    ) -> Result<Duration, messaging::store::DbError> {
        let subscriptions = self
            .db
            .call(|conn| store::active_subscription_ids(conn))
            .await?;
        let room: Vec<(String, usize)> = subscriptions
            .into_iter()
            .map(|id| {
                let free = self.permits_of(&id).available_permits();
                (id, free)
            })
            .filter(|(_, free)| *free > 0)
            .collect();
        let lease = self.lease();
        let jobs = self
            .db
            .write(move |tx| {
                let now = now_ms();
                let mut jobs = Vec::new();
                for (id, free) in &room {
                    jobs.extend(store::claim_due(tx, id, now, now + lease, *free)?);
                }
                Ok(jobs)
            })
            .await?;
        for job in jobs {
            match self.permits_of(&job.subscription_id).try_acquire_owned() {
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
        let now = now_ms();
        let next = self
            .db
            .call(move |conn| store::next_due_after(conn, now))
            .await?;
        Ok(next.map_or(IDLE, |at| {
            Duration::from_millis(u64::try_from(at - now).unwrap_or(0)).min(IDLE)
        }))
    }

    async fn attempt(self, job: Job, permit: OwnedSemaphorePermit) {
        let sent = delivery::send(&self.client, &job).await;
        drop(permit);
        let next = delivery::next_step(&job, &sent, &self.settings.schedule);
        log_outcome(&job, &sent, &next);
        let (job_for_db, record, next_for_db) = (job.clone(), sent.record.clone(), next.clone());
        let settled = self
            .db
            .write(move |tx| store::settle_attempt(tx, &job_for_db, &record, &next_for_db))
            .await;
        if let Err(e) = settled {
            error!(error = %e, "could not record the attempt in webhooks.db; the delivery will be attempted again after its lease");
        }
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
