//! The publisher's one storage interface over its two backends: `webhooks.db` (SQLite, one
//! instance, `store.rs`) or a PostgreSQL database shared by every instance (`DATABASE_URL`,
//! `store/pg.rs`). The consumer, the dispatcher, the retention task and the HTTP API only talk
//! to [`Store`]; the decisions (which subscriptions get an event, where a delivery goes after an
//! attempt, what may be replayed) are the shared functions of `store.rs`, so both backends make
//! them the same way.

use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use messaging::store::{Backend, DbError};
use messaging::{Db, PgDb};
use secrecy::SecretString;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};
use webhook_signing::Secret;

use crate::store::pg::{Claimant, Settled};
use crate::store::{
    self, Attempt, Delivery, DeliveryFilter, Job, Recorded, ReplayRefused, Settlement,
    Subscription, now_ms,
};

/// Where the publisher keeps subscriptions, deliveries and attempts. Cheap to clone.
#[derive(Clone)]
pub enum Store {
    Sqlite(Db),
    Postgres(PgDb),
}

pub use crate::store::NewEvent;

/// What one dispatcher pass found.
pub struct Pass {
    pub jobs: Vec<Job>,
    pub next_due: Option<i64>,
    /// An endpoint had no more free permits than deliveries due: more may be due now.
    pub backlog: bool,
}

impl Store {
    /// The database as the service life cycle sees it (`Running::run_broker`, readiness).
    pub fn backend(&self) -> Backend {
        match self {
            Self::Sqlite(db) => db.clone().into(),
            Self::Postgres(pg) => pg.clone().into(),
        }
    }

    /// Names the store in log messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "webhooks.db",
            Self::Postgres(_) => "the PostgreSQL database",
        }
    }

    /// Resolves `true` once the schema is up to date (at once for SQLite), `false` if `stop`
    /// came first.
    pub async fn wait_ready(&self, stop: &CancellationToken) -> bool {
        match self {
            Self::Sqlite(_) => true,
            Self::Postgres(pg) => pg.wait_ready(stop).await,
        }
    }

    pub async fn ensure_default_subscription(
        &self,
        url: String,
        secret: Secret,
    ) -> Result<Option<Subscription>, DbError> {
        match self {
            Self::Sqlite(db) => {
                db.write(move |tx| store::ensure_default_subscription(tx, &url, &secret))
                    .await
            }
            Self::Postgres(pg) => {
                pg.write(move |tx| {
                    Box::pin(async move {
                        store::pg::ensure_default_subscription(tx, &url, &secret).await
                    })
                })
                .await
            }
        }
    }

    pub async fn insert_subscription(
        &self,
        url: String,
        events: Vec<String>,
        secret: Secret,
    ) -> Result<Subscription, DbError> {
        match self {
            Self::Sqlite(db) => {
                db.write(move |tx| store::insert_subscription(tx, &url, &events, &secret))
                    .await
            }
            Self::Postgres(pg) => {
                pg.write(move |tx| {
                    Box::pin(async move {
                        store::pg::insert_subscription(tx, &url, &events, &secret).await
                    })
                })
                .await
            }
        }
    }

    pub async fn get_subscription(&self, id: String) -> Result<Option<Subscription>, DbError> {
        match self {
            Self::Sqlite(db) => {
                db.call(move |conn| store::get_subscription(conn, &id))
                    .await
            }
            Self::Postgres(pg) => {
                pg.read(move |c| {
                    Box::pin(async move { store::pg::get_subscription(&**c, &id).await })
                })
                .await
            }
        }
    }

    pub async fn subscription_secret(&self, id: String) -> Result<Option<SecretString>, DbError> {
        match self {
            Self::Sqlite(db) => {
                db.call(move |conn| store::subscription_secret(conn, &id))
                    .await
            }
            Self::Postgres(pg) => {
                pg.read(move |c| {
                    Box::pin(async move { store::pg::subscription_secret(&**c, &id).await })
                })
                .await
            }
        }
    }

    pub async fn list_subscriptions(&self) -> Result<Vec<Subscription>, DbError> {
        match self {
            Self::Sqlite(db) => db.call(|conn| store::list_subscriptions(conn)).await,
            Self::Postgres(pg) => {
                pg.read(|c| Box::pin(async move { store::pg::list_subscriptions(&**c).await }))
                    .await
            }
        }
    }

    /// Deletes a subscription and fails its pending deliveries; `false` if there was none.
    pub async fn delete_subscription(&self, id: String) -> Result<bool, DbError> {
        match self {
            Self::Sqlite(db) => {
                db.write(move |tx| Ok(store::delete_subscription(tx, &id)?))
                    .await
            }
            Self::Postgres(pg) => {
                pg.write(move |tx| {
                    Box::pin(async move { store::pg::delete_subscription(tx, &id).await })
                })
                .await
            }
        }
    }

    /// Records the deliveries of one event with its inbox row, in one transaction; `None` for
    /// a message recorded before.
    pub async fn record_event(&self, event: NewEvent) -> Result<Option<Recorded>, DbError> {
        match self {
            Self::Sqlite(db) => db.write(move |tx| store::record_event(tx, &event)).await,
            // A transaction of its own: on PostgreSQL the consumer records events in batches
            // (`recorder.rs`), and this is its way of recording one that failed there alone.
            Self::Postgres(pg) => {
                pg.write(move |tx| {
                    Box::pin(async move { store::pg::record_event(tx, &event).await })
                })
                .await
            }
        }
    }

    /// Records many events in one transaction, each as [`Store::record_event`] would (on
    /// PostgreSQL [`store::pg::record_events`]); fails as a whole.
    pub async fn record_events(
        &self,
        events: Arc<Vec<NewEvent>>,
    ) -> Result<Vec<Option<Recorded>>, DbError> {
        match self {
            Self::Sqlite(db) => {
                db.write(move |tx| {
                    let recorded = events.iter().map(|event| store::record_event(tx, event));
                    recorded.collect::<Result<Vec<_>, _>>()
                })
                .await
            }
            Self::Postgres(pg) => {
                pg.write(move |tx| {
                    Box::pin(async move { store::pg::record_events(tx, &events).await })
                })
                .await
            }
        }
    }

    pub async fn list_deliveries(&self, filter: DeliveryFilter) -> Result<Vec<Delivery>, DbError> {
        match self {
            Self::Sqlite(db) => {
                db.call(move |conn| store::list_deliveries(conn, &filter))
                    .await
            }
            Self::Postgres(pg) => {
                pg.read(move |c| {
                    Box::pin(async move { store::pg::list_deliveries(&**c, &filter).await })
                })
                .await
            }
        }
    }

    /// A delivery with every attempt and its request body.
    pub async fn delivery_detail(
        &self,
        id: String,
    ) -> Result<Option<(Delivery, Vec<Attempt>, Option<Value>)>, DbError> {
        match self {
            Self::Sqlite(db) => {
                db.call(move |conn| {
                    let Some(delivery) = store::get_delivery(conn, &id)? else {
                        return Ok(None);
                    };
                    let attempts = store::list_attempts(conn, &id)?;
                    let payload = store::delivery_payload(conn, &id)?;
                    Ok(Some((delivery, attempts, payload)))
                })
                .await
            }
            Self::Postgres(pg) => {
                pg.read(move |c| {
                    Box::pin(async move {
                        let Some(delivery) = store::pg::get_delivery(&**c, &id).await? else {
                            return Ok(None);
                        };
                        let attempts = store::pg::list_attempts(&**c, &id).await?;
                        let payload = store::pg::delivery_payload(&**c, &id).await?;
                        Ok(Some((delivery, attempts, payload)))
                    })
                })
                .await
            }
        }
    }

    /// Puts a failed delivery back in line for one manual attempt.
    pub async fn replay(&self, id: String) -> Result<Result<Delivery, ReplayRefused>, DbError> {
        match self {
            Self::Sqlite(db) => db.write(move |tx| Ok(store::replay(tx, &id)?)).await,
            Self::Postgres(pg) => {
                pg.write(move |tx| Box::pin(async move { store::pg::replay(tx, &id).await }))
                    .await
            }
        }
    }

    /// Deletes up to `limit` finished deliveries older than `older_than`; returns how many.
    pub async fn prune_history(
        &self,
        older_than: Duration,
        limit: usize,
    ) -> Result<usize, DbError> {
        match self {
            Self::Sqlite(db) => {
                db.write(move |tx| Ok(store::prune_history(tx, older_than, limit)?))
                    .await
            }
            Self::Postgres(pg) => {
                pg.write(move |tx| Box::pin(store::pg::prune_history(tx, older_than, limit)))
                    .await
            }
        }
    }

    /// Writes finished attempts, each on its own (the dispatcher's last write at shutdown).
    pub async fn settle(&self, settlements: Vec<Settlement>) -> Result<(), DbError> {
        match self {
            Self::Sqlite(db) => {
                db.write(move |tx| {
                    settle_all_sqlite(tx, &settlements);
                    Ok(())
                })
                .await
            }
            Self::Postgres(pg) => {
                let instance = pg.instance().to_owned();
                pg.write_replanned(move |tx| {
                    Box::pin(async move {
                        settle_all_pg(tx, &instance, &settlements).await;
                        Ok(())
                    })
                })
                .await
            }
        }
    }

    /// One dispatcher pass, one write transaction: record the finished attempts, then claim
    /// per active subscription as many due deliveries as `room` says it has free permits, for
    /// `lease` (on PostgreSQL at least `OUTBOX_LEASE_SECS`), then read the next due time. On
    /// PostgreSQL the pass's statements are planned for the deliveries as they are now
    /// ([`PgDb::write_replanned`]): the due backlog swings faster than statistics follow.
    ///
    /// [`PgDb::write_replanned`]: messaging::PgDb::write_replanned
    pub async fn pass<R>(
        &self,
        settlements: Arc<Vec<Settlement>>,
        room: R,
        lease: Duration,
    ) -> Result<Pass, DbError>
    where
        R: Fn(Vec<String>) -> Vec<(String, usize)> + Send + Sync + 'static,
    {
        match self {
            Self::Sqlite(db) => {
                db.write(move |tx| {
                    settle_all_sqlite(tx, &settlements);
                    let now = now_ms();
                    let (mut jobs, mut backlog) = (Vec::new(), false);
                    for (id, free) in room(store::active_subscription_ids(tx)?) {
                        if free > 0 {
                            let due = store::claim_due(
                                tx,
                                &id,
                                now,
                                store::lease_until(now, lease),
                                free,
                            )?;
                            backlog |= due.len() == free;
                            jobs.extend(due);
                        }
                    }
                    let next_due = store::next_due_after(tx, now)?;
                    Ok(Pass {
                        jobs,
                        next_due,
                        backlog,
                    })
                })
                .await
            }
            Self::Postgres(pg) => {
                let claimant = Claimant {
                    instance: pg.instance().to_owned(),
                    lease: lease.max(pg.lease()),
                };
                pg.write_replanned(move |tx| {
                    Box::pin(async move {
                        settle_all_pg(tx, &claimant.instance, &settlements).await;
                        let now = now_ms();
                        let (mut jobs, mut backlog) = (Vec::new(), false);
                        for (id, free) in room(store::pg::active_subscription_ids(tx).await?) {
                            if free > 0 {
                                let due =
                                    store::pg::claim_due(tx, &claimant, &id, now, free).await?;
                                backlog |= due.len() == free;
                                jobs.extend(due);
                            }
                        }
                        let next_due = store::pg::next_due_after(tx, now).await?;
                        Ok(Pass {
                            jobs,
                            next_due,
                            backlog,
                        })
                    })
                })
                .await
            }
        }
    }
}

/// Records every finished attempt: all together first ([`store::settle_together`]); if that
/// fails, each on its own, so that one that cannot be written is logged and attempted again
/// after its lease, and the others are kept.
fn settle_all_sqlite(tx: &deadpool_sqlite::rusqlite::Transaction, settlements: &[Settlement]) {
    if settlements.len() > 1 {
        match store::settle_together(tx, settlements) {
            Ok(()) => return,
            Err(e) => warn!(error = %e, attempts = settlements.len(),
                "could not record the finished attempts together; recording them one at a time"),
        }
    }
    for settlement in settlements {
        if let Err(e) = store::settle_in_savepoint(tx, settlement) {
            log_settle_error(settlement, &e);
        }
    }
}

/// [`settle_all_sqlite`] on PostgreSQL, where an attempt whose claim this instance lost is
/// not recorded (the instance holding the claim records its own). All of them together first
/// ([`store::pg::settle_together`], a few round trips for the whole pass); if that fails, one at
/// a time, so that an attempt that cannot be written holds back only itself.
async fn settle_all_pg(tx: &messaging::pg::PgTx<'_>, instance: &str, settlements: &[Settlement]) {
    if settlements.len() > 1 && distinct_deliveries(settlements) {
        match store::pg::settle_together(tx, instance, settlements).await {
            Ok(settled) => {
                for (settlement, settled) in settlements.iter().zip(settled) {
                    note_settled(settlement, settled);
                }
                return;
            }
            Err(e) => {
                warn!(error = %messaging::pg::described(&e), attempts = settlements.len(),
                    "could not record the finished attempts together; recording them one at a time");
            }
        }
    }
    for settlement in settlements {
        match store::pg::settle_in_savepoint(tx, instance, settlement).await {
            Ok(settled) => note_settled(settlement, settled),
            Err(e) => log_settle_error(settlement, &messaging::pg::described(&e)),
        }
    }
}

/// Whether no delivery has two settlements (an attempt whose write failed, waiting for the next
/// pass, and a later attempt of the same delivery after its lease ran out): those are written
/// one after the other.
fn distinct_deliveries(settlements: &[Settlement]) -> bool {
    let mut ids: Vec<&str> = settlements.iter().map(|s| s.delivery_id.as_str()).collect();
    ids.sort_unstable();
    ids.windows(2).all(|pair| pair[0] != pair[1])
}

fn note_settled(settlement: &Settlement, settled: Settled) {
    if settled == Settled::ClaimLost {
        warn!(delivery_id = %settlement.delivery_id, attempt = settlement.number,
            "an attempt finished after this instance's claim on the delivery ran out; another instance holds it now, so this attempt is not recorded");
        metrics::counter!("webhook_claims_lost_total").increment(1);
    }
}

fn log_settle_error(settlement: &Settlement, e: &dyn Display) {
    error!(delivery_id = %settlement.delivery_id, error = %e,
        "could not record the attempt; the delivery will be attempted again after its lease");
}

#[cfg(test)]
mod tests {
    use deadpool_sqlite::rusqlite::Connection;

    use super::settle_all_sqlite;
    use crate::store::{AttemptRecord, Next, SCHEMA, Settlement};

    fn delivered(delivery_id: &str, number: i64) -> Settlement {
        Settlement {
            delivery_id: delivery_id.to_owned(),
            subscription_id: "s".to_owned(),
            number,
            manual: false,
            record: AttemptRecord {
                status_code: Some(200),
                latency_ms: 3,
                error: None,
                response_body: None,
            },
            next: Next::Delivered,
        }
    }

    /// (attempts, status) of each delivery, by id.
    fn state(conn: &Connection) -> Vec<(String, i64, String)> {
        let mut stmt = conn
            .prepare(
                "SELECT d.id, (SELECT COUNT(*) FROM attempts a WHERE a.delivery_id = d.id), d.status
                 FROM deliveries d ORDER BY d.id",
            )
            .unwrap();
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }

    #[test]
    fn a_pass_writes_its_attempts_together_and_one_by_one_when_one_cannot_be_written() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        // An attempt SQLite refuses, as a broken row or a full disk would make it.
        conn.execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON attempts WHEN NEW.delivery_id = 'c'
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
        )
        .unwrap();
        for id in ["a", "b", "c", "d"] {
            conn.execute(
                "INSERT INTO deliveries (id, webhook_id, subscription_id, message_id, event_type, payload, status, next_attempt_at)
                 VALUES (?1, ?1, 's', ?1, 'order.created', x'7b7d', 'pending', 0)",
                [id],
            )
            .unwrap();
        }
        let tx = conn.transaction().unwrap();
        settle_all_sqlite(&tx, &[delivered("a", 1), delivered("b", 1)]);
        // The refused one holds back only itself: the others before and after it are written.
        settle_all_sqlite(
            &tx,
            &[delivered("b", 2), delivered("c", 1), delivered("d", 1)],
        );
        tx.commit().unwrap();
        let delivered = |id: &str, n| (id.to_owned(), n, "delivered".to_owned());
        assert_eq!(
            state(&conn),
            [
                delivered("a", 1),
                delivered("b", 2),
                ("c".to_owned(), 0, "pending".to_owned()),
                delivered("d", 1),
            ]
        );
    }
}
