//! The publisher's tables on PostgreSQL (`DATABASE_URL`), shared by every instance.
//!
//! The same rows as `webhooks.db` and the same decisions (`plan_event`, `settled_state`,
//! `check_replay` in `store.rs`); what differs is how several instances stay out of each
//! other's way:
//! - a due delivery is **claimed** (`claimed_by` = this instance, `claimed_until` = now + the
//!   lease, and `next_attempt_at` moved to the lease's end as SQLite does) with
//!   `FOR UPDATE SKIP LOCKED`, so two instances never take the same one and at most
//!   one attempt of it is in flight; a claim whose lease ran out (its instance died) is taken by
//!   the next pass of any instance;
//! - an attempt is recorded only by the instance that still holds the claim (the delivery row
//!   is locked and its `claimed_by` checked), so a late settlement of a lost claim changes
//!   nothing;
//! - events lock the subscriptions they read (`FOR SHARE`), so a subscription deleted or
//!   disabled meanwhile never gets a pending delivery nobody would take;
//! - the default subscription is created under a table lock, once however many instances
//!   start together.
//!
//! `next_attempt_at` is Unix milliseconds of the instances' clocks, as in SQLite (the retry
//! schedule is computed there); leases are the server's clock (`now()`), so a lease never
//! depends on two instances agreeing on the time.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use messaging::pg::{INBOX_OUTBOX, Migration, PgTx};
use secrecy::SecretString;
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, GenericClient, Row};
use webhook_signing::Secret;

use super::{
    Attempt, DEFAULT_EVENTS, Delivery, DeliveryFilter, DeliveryStatus, GONE_REASON, Job, NewEvent,
    Planned, Recorded, ReplayRefused, Settlement, Subscription, check_replay, ms_to_rfc3339,
    now_ms, plan_event, settled_state, webhook_id,
};

/// The publisher's schema: the inbox and outbox every service has, then its own tables.
pub static MIGRATIONS: [Migration; 3] = [
    INBOX_OUTBOX,
    Migration {
        version: 2,
        name: "webhook subscriptions, deliveries with claims, attempts",
        sql: "
CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secret TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    disabled_reason TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE deliveries (
    id TEXT PRIMARY KEY,
    webhook_id TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    order_id TEXT,
    traceparent TEXT,
    payload BYTEA NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempt_count BIGINT NOT NULL DEFAULT 0,
    scheduled_attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    manual_next BOOLEAN NOT NULL DEFAULT false,
    last_status_code INTEGER,
    last_error TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    claimed_by TEXT,
    claimed_until TIMESTAMPTZ,
    UNIQUE (message_id, subscription_id)
);
CREATE INDEX deliveries_due ON deliveries (subscription_id, next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_next ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_finished ON deliveries (updated_at) WHERE status IN ('delivered', 'failed');
CREATE TABLE attempts (
    id BIGSERIAL PRIMARY KEY,
    delivery_id TEXT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    number BIGINT NOT NULL,
    trigger TEXT NOT NULL CHECK (trigger IN ('scheduled', 'manual')),
    status_code INTEGER,
    latency_ms BIGINT NOT NULL,
    error TEXT,
    response_body TEXT,
    attempted_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX attempts_by_delivery ON attempts (delivery_id);
",
    },
    Migration {
        version: 3,
        name: "due deliveries indexed in claim order",
        // The claim takes a subscription's due deliveries in (next_attempt_at, id) order up to
        // its LIMIT. Without `id` in the index PostgreSQL read every due delivery and sorted
        // them on each pass: 7 ms a pass with a backlog of ≈ 1,200 (docs/benchmarks.md,
        // session 9). With it, the index gives the order and the scan stops at the LIMIT.
        sql: "
CREATE INDEX deliveries_due_in_order ON deliveries (subscription_id, next_attempt_at, id)
    WHERE status = 'pending';
DROP INDEX deliveries_due;
",
    },
];

/// Timestamps are shown exactly as SQLite's `strftime('%Y-%m-%dT%H:%M:%fZ')` writes them.
macro_rules! text_time {
    ($column:literal) => {
        concat!(
            "to_char(",
            $column,
            " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
        )
    };
}

const SUBSCRIPTION_COLUMNS: &str = concat!(
    "id, url, events, status, disabled_reason, ",
    text_time!("created_at")
);

const DELIVERY_COLUMNS: &str = concat!(
    "id, webhook_id, subscription_id, message_id, event_type, order_id, status, attempt_count, ",
    "next_attempt_at, last_status_code, last_error, ",
    text_time!("created_at"),
    ", ",
    text_time!("updated_at")
);

fn subscription_row(row: &Row) -> Subscription {
    Subscription::from_stored(
        row.get(0),
        row.get(1),
        row.get::<_, &str>(2),
        row.get(3),
        row.get(4),
        row.get(5),
    )
}

fn status_code(code: Option<i32>) -> Option<u16> {
    code.and_then(|c| u16::try_from(c).ok())
}

fn delivery_row(row: &Row) -> Delivery {
    let next: Option<i64> = row.get(8);
    Delivery {
        id: row.get(0),
        webhook_id: row.get(1),
        subscription_id: row.get(2),
        message_id: row.get(3),
        event_type: row.get(4),
        order_id: row.get(5),
        status: row.get(6),
        attempt_count: row.get(7),
        next_attempt_at: next.and_then(ms_to_rfc3339),
        last_status_code: status_code(row.get(9)),
        last_error: row.get(10),
        created_at: row.get(11),
        updated_at: row.get(12),
    }
}

pub async fn insert_subscription(
    tx: &PgTx<'_>,
    url: &str,
    events: &[String],
    secret: &Secret,
) -> Result<Subscription, Error> {
    let id = uuid::Uuid::now_v7().to_string();
    // A list of strings always encodes.
    let events_json = serde_json::to_string(events).unwrap_or_else(|_| "[]".to_owned());
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO subscriptions (id, url, events, secret) VALUES ($1, $2, $3, $4)
                 RETURNING {SUBSCRIPTION_COLUMNS}"
            ),
            &[&id, &url, &events_json, &secret.expose()],
        )
        .await?;
    Ok(subscription_row(&row))
}

/// Creates the default subscription unless any subscription exists; returns it when created.
/// The table lock (which only blocks other writers of `subscriptions`, for this short
/// transaction) makes instances that start together create it once.
pub async fn ensure_default_subscription(
    tx: &PgTx<'_>,
    url: &str,
    secret: &Secret,
) -> Result<Option<Subscription>, Error> {
    tx.batch_execute("LOCK TABLE subscriptions IN SHARE ROW EXCLUSIVE MODE")
        .await?;
    let count: i64 = tx
        .query_one("SELECT COUNT(*) FROM subscriptions", &[])
        .await?
        .get(0);
    if count > 0 {
        return Ok(None);
    }
    let events = DEFAULT_EVENTS.map(str::to_owned);
    insert_subscription(tx, url, &events, secret)
        .await
        .map(Some)
}

pub async fn get_subscription(
    client: &impl GenericClient,
    id: &str,
) -> Result<Option<Subscription>, Error> {
    let row = client
        .query_opt(
            &format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = $1"),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(subscription_row))
}

pub async fn subscription_secret(
    client: &impl GenericClient,
    id: &str,
) -> Result<Option<SecretString>, Error> {
    let row = client
        .query_opt("SELECT secret FROM subscriptions WHERE id = $1", &[&id])
        .await?;
    Ok(row.map(|r| SecretString::from(r.get::<_, String>(0))))
}

pub async fn list_subscriptions(client: &impl GenericClient) -> Result<Vec<Subscription>, Error> {
    let rows = client
        .query(
            &format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions ORDER BY created_at, id"),
            &[],
        )
        .await?;
    Ok(rows.iter().map(subscription_row).collect())
}

/// Deletes a subscription and fails its pending deliveries. Returns whether it existed.
pub async fn delete_subscription(tx: &PgTx<'_>, id: &str) -> Result<bool, Error> {
    let deleted = tx
        .execute("DELETE FROM subscriptions WHERE id = $1", &[&id])
        .await?;
    if deleted == 1 {
        fail_pending_of(tx, id, "the subscription was deleted").await?;
    }
    Ok(deleted == 1)
}

/// Disables a subscription (410 Gone) and fails its pending deliveries.
async fn disable_subscription(tx: &PgTx<'_>, id: &str, reason: &str) -> Result<(), Error> {
    tx.execute(
        "UPDATE subscriptions SET status = 'disabled', disabled_reason = $2 WHERE id = $1",
        &[&id, &reason],
    )
    .await?;
    fail_pending_of(tx, id, reason).await
}

/// Fails the pending deliveries of a subscription. Their claims are left as they are: an
/// attempt in flight is still recorded by the instance that holds it.
async fn fail_pending_of(tx: &PgTx<'_>, subscription_id: &str, reason: &str) -> Result<(), Error> {
    tx.execute(
        "UPDATE deliveries SET status = 'failed', next_attempt_at = NULL, last_error = $2,
                updated_at = now()
         WHERE subscription_id = $1 AND status = 'pending'",
        &[&subscription_id, &reason],
    )
    .await?;
    Ok(())
}

/// Records one delivery per active subscription that wants `event_type` (see
/// [`plan_event`]), unless this message was recorded before (`None`). The subscriptions read
/// are share-locked until the commit, so a concurrent delete or disable waits for it (and then
/// fails the deliveries made here) instead of leaving them pending for nobody.
pub async fn record_event(tx: &PgTx<'_>, event: &NewEvent) -> Result<Option<Recorded>, Error> {
    let mut recorded = record_events(tx, std::slice::from_ref(event)).await?;
    Ok(recorded.pop().flatten())
}

/// Records many events in one transaction with three statements whatever their number (one at
/// a time, each in a savepoint of a shared batch, it was four statements an event): the inbox
/// rows in one statement, the subscriptions read and share-locked once, every event's
/// deliveries in one statement. What each event gets is what recording it alone gives:
/// `None` for a message recorded before (or earlier in `events`), else its [`Recorded`].
///
/// Nothing here fails for one event alone except on data PostgreSQL refuses (a NUL byte in a
/// text); then the whole call fails and the caller records the events one by one.
pub async fn record_events(
    tx: &PgTx<'_>,
    events: &[NewEvent],
) -> Result<Vec<Option<Recorded>>, Error> {
    let inbox = tx
        .prepare_cached(
            "INSERT INTO inbox (message_id) SELECT unnest($1::text[])
             ON CONFLICT DO NOTHING RETURNING message_id",
        )
        .await?;
    let subscriptions = tx
        .prepare_cached(&format!(
            "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE status = 'active'
             ORDER BY created_at, id FOR SHARE"
        ))
        .await?;
    let message_ids: Vec<&str> = events.iter().map(|e| e.message_id.as_str()).collect();
    // Pipelined, one round trip.
    let (fresh, subscriptions) = futures::future::join(
        tx.query(&inbox, &[&message_ids]),
        tx.query(&subscriptions, &[]),
    )
    .await;
    let mut fresh: HashSet<String> = fresh?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    let subscriptions: Vec<Subscription> = subscriptions?.iter().map(subscription_row).collect();
    let now = now_ms();
    let mut rows = DeliveryRows::default();
    let mut outcome = Vec::with_capacity(events.len());
    for event in events {
        // The first of two events with one message id is the one recorded.
        if !fresh.remove(&event.message_id) {
            outcome.push(None);
            continue;
        }
        let (planned, recorded) = plan_event(subscriptions.clone(), &event.event_type, now);
        for delivery in planned {
            rows.push(event, delivery);
        }
        outcome.push(Some(recorded));
    }
    if !rows.id.is_empty() {
        let insert = tx
            .prepare_cached(
                "INSERT INTO deliveries
                 (id, webhook_id, subscription_id, message_id, event_type, order_id, payload,
                  status, next_attempt_at, traceparent, last_error)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                      $5::text[], $6::text[], $7::bytea[], $8::text[],
                                      $9::bigint[], $10::text[], $11::text[])
                 ON CONFLICT (message_id, subscription_id) DO NOTHING",
            )
            .await?;
        let params: [&(dyn ToSql + Sync); 11] = [
            &rows.id,
            &rows.webhook_id,
            &rows.subscription_id,
            &rows.message_id,
            &rows.event_type,
            &rows.order_id,
            &rows.payload,
            &rows.status,
            &rows.next_attempt_at,
            &rows.traceparent,
            &rows.last_error,
        ];
        tx.execute(&insert, &params).await?;
    }
    Ok(outcome)
}

/// [`record_events`]' deliveries as columns, one array parameter each.
#[derive(Default)]
struct DeliveryRows<'a> {
    id: Vec<String>,
    webhook_id: Vec<String>,
    subscription_id: Vec<String>,
    message_id: Vec<&'a str>,
    event_type: Vec<&'a str>,
    order_id: Vec<Option<&'a str>>,
    payload: Vec<&'a [u8]>,
    status: Vec<DeliveryStatus>,
    next_attempt_at: Vec<Option<i64>>,
    traceparent: Vec<Option<&'a str>>,
    last_error: Vec<Option<String>>,
}

impl<'a> DeliveryRows<'a> {
    fn push(&mut self, event: &'a NewEvent, delivery: Planned) {
        self.id.push(uuid::Uuid::now_v7().to_string());
        self.webhook_id.push(webhook_id(&event.message_id));
        self.subscription_id.push(delivery.subscription_id);
        self.message_id.push(&event.message_id);
        self.event_type.push(&event.event_type);
        self.order_id.push(event.order_id.as_deref());
        self.payload.push(&event.body);
        self.status.push(delivery.status);
        self.next_attempt_at.push(delivery.next_attempt_at);
        self.traceparent.push(event.traceparent.as_deref());
        self.last_error.push(delivery.error);
    }
}

/// The ids of active subscriptions (the dispatcher's endpoints).
pub async fn active_subscription_ids(tx: &PgTx<'_>) -> Result<Vec<String>, Error> {
    let stmt = tx
        .prepare_cached("SELECT id FROM subscriptions WHERE status = 'active'")
        .await?;
    Ok(tx
        .query(&stmt, &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Who claims, and for how long.
#[derive(Debug, Clone)]
pub struct Claimant {
    /// `PgDb::instance()`.
    pub instance: String,
    pub lease: Duration,
}

/// The due deliveries of subscription `$1` at `$2`, not claimed by a live lease, in the order
/// they are attempted, at most `$3` (the first half of [`claim_due`]'s statement).
macro_rules! due_in_order {
    () => {
        "SELECT d.id, d.next_attempt_at AS due_at FROM deliveries d
         WHERE d.subscription_id = $1 AND d.status = 'pending' AND d.next_attempt_at <= $2
               AND (d.claimed_until IS NULL OR d.claimed_until < now())
         ORDER BY d.next_attempt_at, d.id LIMIT $3"
    };
}

/// What [`claim_due`] selects, for a test of its plan.
pub const DUE_IN_ORDER: &str = due_in_order!();

/// Claims up to `limit` due deliveries of one subscription for `claimant`: pending, due by
/// `now`, and not claimed by a live lease. Rows another pass is claiming at the same moment are
/// skipped (`SKIP LOCKED`), never waited for or taken twice.
///
/// A claimed delivery's `next_attempt_at` moves to the end of its lease (`now` + the lease,
/// the instance's clock, as the column is): that is when it is due again if its attempt is
/// never settled, and it takes the delivery out of the range every other pass reads. Left at
/// its due time, every pass of every instance read the deliveries in flight first, from the
/// index and then the table, only to drop them for their live lease (with two instances a
/// claim cost 3.2 ms instead of 2.0: docs/benchmarks.md, session 13). The lease itself is
/// still `claimed_until` on the server's clock; the settle sets `next_attempt_at` anew.
pub async fn claim_due(
    tx: &PgTx<'_>,
    claimant: &Claimant,
    subscription_id: &str,
    now: i64,
    limit: usize,
) -> Result<Vec<Job>, Error> {
    let stmt = tx
        .prepare_cached(concat!(
            "WITH due AS (",
            due_in_order!(),
            " FOR UPDATE SKIP LOCKED)
             UPDATE deliveries d
                SET claimed_by = $4, claimed_until = now() + make_interval(secs => $5),
                    next_attempt_at = $6
             FROM due, subscriptions s
             WHERE d.id = due.id AND s.id = d.subscription_id AND s.status = 'active'
             RETURNING d.id, d.webhook_id, d.subscription_id, s.url, s.secret, d.payload,
                       d.event_type, d.order_id, d.attempt_count, d.scheduled_attempts,
                       d.manual_next, d.traceparent, due.due_at",
        ))
        .await?;
    let rows = tx
        .query(
            &stmt,
            &[
                &subscription_id,
                &now,
                &(limit as i64),
                &claimant.instance,
                &claimant.lease.as_secs_f64(),
                &super::lease_until(now, claimant.lease),
            ],
        )
        .await?;
    let mut jobs: Vec<(i64, Job)> = rows
        .iter()
        .map(|r| {
            let job = Job {
                delivery_id: r.get(0),
                webhook_id: r.get(1),
                subscription_id: r.get(2),
                url: r.get(3),
                secret: SecretString::from(r.get::<_, String>(4)),
                payload: r.get(5),
                event_type: r.get(6),
                order_id: r.get(7),
                number: r.get::<_, i64>(8) + 1,
                scheduled_attempts: r.get(9),
                manual: r.get(10),
                traceparent: r.get(11),
            };
            (r.get::<_, Option<i64>>(12).unwrap_or(0), job)
        })
        .collect();
    jobs.sort_by(|a, b| (a.0, &a.1.delivery_id).cmp(&(b.0, &b.1.delivery_id)));
    Ok(jobs.into_iter().map(|(_, job)| job).collect())
}

/// The earliest future attempt time of a pending delivery, to know how long to sleep.
pub async fn next_due_after(tx: &PgTx<'_>, now: i64) -> Result<Option<i64>, Error> {
    let stmt = tx
        .prepare_cached(
            "SELECT MIN(next_attempt_at) FROM deliveries
             WHERE status = 'pending' AND next_attempt_at > $1",
        )
        .await?;
    Ok(tx.query_one(&stmt, &[&now]).await?.get(0))
}

/// What writing one settlement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The attempt is recorded and the delivery moved on.
    Written,
    /// This instance no longer holds the claim (its lease ran out and another instance took
    /// the delivery, or it is gone): nothing was written, the holder records its own attempt.
    ClaimLost,
}

/// Writes one finished attempt under a savepoint of its own ([`settle_together`] of one): when
/// it fails, only its own changes are undone (the delivery is attempted again after its lease)
/// and the pass goes on.
pub async fn settle_in_savepoint(
    tx: &PgTx<'_>,
    instance: &str,
    settlement: &Settlement,
) -> Result<Settled, Error> {
    let settled = settle_together(tx, instance, std::slice::from_ref(settlement)).await?;
    Ok(settled.first().copied().unwrap_or(Settled::ClaimLost))
}

/// Writes a pass's finished attempts together, in three round trips whatever their number
/// (one at a time, that is three round trips per attempt, and the dispatcher's pass, which waits
/// for them, was bound by those round trips: docs/benchmarks.md, session 10). The subscriptions
/// are share-locked before the deliveries (the order a delete takes them, so the two never
/// deadlock), an attempt is recorded only if `instance` still holds the delivery's claim
/// ([`Settled::ClaimLost`] otherwise), and the state after it is [`settled_state`]'s.
///
/// All of it runs under one savepoint: on an error nothing of it is kept, and the caller writes
/// the attempts one at a time, so that one attempt that cannot be written costs only itself.
/// The settlements must name distinct deliveries.
pub async fn settle_together(
    tx: &PgTx<'_>,
    instance: &str,
    settlements: &[Settlement],
) -> Result<Vec<Settled>, Error> {
    let lock_subscriptions = tx
        .prepare_cached(
            "SELECT id, status = 'active' FROM subscriptions WHERE id = ANY($1)
             ORDER BY id FOR SHARE",
        )
        .await?;
    let lock_held = tx
        .prepare_cached(
            "SELECT id FROM deliveries WHERE id = ANY($1) AND claimed_by = $2
             ORDER BY id FOR UPDATE",
        )
        .await?;
    let subscription_ids: Vec<&str> = settlements
        .iter()
        .map(|s| s.subscription_id.as_str())
        .collect();
    let delivery_ids: Vec<&str> = settlements.iter().map(|s| s.delivery_id.as_str()).collect();
    // Pipelined, one round trip; the server takes the locks in this order.
    let (started, active, held) = futures::future::join3(
        tx.batch_execute("SAVEPOINT settle_all"),
        tx.query(&lock_subscriptions, &[&subscription_ids]),
        tx.query(&lock_held, &[&delivery_ids, &instance]),
    )
    .await;
    started?;
    let written = match (active, held) {
        (Ok(active), Ok(held)) => write_settled(tx, settlements, &active, &held).await,
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    match written {
        Ok(settled) => {
            tx.batch_execute("RELEASE SAVEPOINT settle_all").await?;
            Ok(settled)
        }
        Err(e) => {
            tx.batch_execute("ROLLBACK TO SAVEPOINT settle_all; RELEASE SAVEPOINT settle_all")
                .await?;
            Err(e)
        }
    }
}

/// The attempts and the deliveries' new states of [`settle_together`], two statements sent
/// together; `active` and `held` are its locked rows.
async fn write_settled(
    tx: &PgTx<'_>,
    settlements: &[Settlement],
    active: &[Row],
    held: &[Row],
) -> Result<Vec<Settled>, Error> {
    let active: HashMap<String, bool> = active
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, Error>>()?;
    let held: HashSet<String> = held
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    let mut rows = SettledRows::default();
    let mut gone = Vec::new();
    let mut outcome = Vec::with_capacity(settlements.len());
    for settlement in settlements {
        if !held.contains(&settlement.delivery_id) {
            outcome.push(Settled::ClaimLost);
            continue;
        }
        let is_active = active.get(&settlement.subscription_id).copied();
        let state = settled_state(settlement, || Ok::<_, Error>(is_active.unwrap_or(false)))?;
        if state.disable_subscription && !gone.contains(&settlement.subscription_id) {
            gone.push(settlement.subscription_id.clone());
        }
        rows.push(settlement, state);
        outcome.push(Settled::Written);
    }
    let insert = tx
        .prepare_cached(
            "INSERT INTO attempts (delivery_id, number, trigger, status_code, latency_ms, error,
                                   response_body)
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::int4[],
                                  $5::bigint[], $6::text[], $7::text[])",
        )
        .await?;
    let update = tx
        .prepare_cached(
            "UPDATE deliveries d
                SET status = u.status, next_attempt_at = u.next_attempt_at,
                    last_error = u.last_error, last_status_code = u.status_code,
                    attempt_count = d.attempt_count + 1,
                    scheduled_attempts = d.scheduled_attempts + u.scheduled,
                    manual_next = false, updated_at = now(),
                    claimed_by = NULL, claimed_until = NULL
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::int4[],
                         $6::bigint[]) AS u(id, status, next_attempt_at, last_error,
                                            status_code, scheduled)
             WHERE d.id = u.id",
        )
        .await?;
    let attempts: [&(dyn ToSql + Sync); 7] = [
        &rows.delivery_id,
        &rows.number,
        &rows.trigger,
        &rows.status_code,
        &rows.latency_ms,
        &rows.error,
        &rows.response_body,
    ];
    let moved_on: [&(dyn ToSql + Sync); 6] = [
        &rows.delivery_id,
        &rows.status,
        &rows.next_attempt_at,
        &rows.last_error,
        &rows.status_code,
        &rows.scheduled,
    ];
    // Pipelined, one round trip. The first statement's error is the one to report: after it the
    // server refuses the second as "transaction aborted".
    let (inserted, updated) = futures::future::join(
        tx.execute(&insert, &attempts),
        tx.execute(&update, &moved_on),
    )
    .await;
    inserted?;
    updated?;
    for subscription_id in &gone {
        disable_subscription(tx, subscription_id, GONE_REASON).await?;
    }
    Ok(outcome)
}

/// [`settle_together`]'s rows as columns, one array parameter each.
#[derive(Default)]
struct SettledRows<'a> {
    delivery_id: Vec<&'a str>,
    number: Vec<i64>,
    trigger: Vec<&'static str>,
    status_code: Vec<Option<i32>>,
    latency_ms: Vec<i64>,
    error: Vec<Option<&'a str>>,
    response_body: Vec<Option<&'a str>>,
    status: Vec<DeliveryStatus>,
    next_attempt_at: Vec<Option<i64>>,
    last_error: Vec<Option<String>>,
    scheduled: Vec<i64>,
}

impl<'a> SettledRows<'a> {
    fn push(&mut self, settlement: &'a Settlement, state: super::SettledState) {
        let record = &settlement.record;
        self.delivery_id.push(&settlement.delivery_id);
        self.number.push(settlement.number);
        self.trigger.push(settlement.trigger());
        self.status_code.push(record.status_code.map(i32::from));
        self.latency_ms.push(record.latency_ms);
        self.error.push(record.error.as_deref());
        self.response_body.push(record.response_body.as_deref());
        self.status.push(state.status);
        self.next_attempt_at.push(state.next_attempt_at);
        self.last_error.push(state.error);
        self.scheduled.push(i64::from(!settlement.manual));
    }
}

/// Deliveries matching `filter`, newest first.
pub async fn list_deliveries(
    client: &impl GenericClient,
    filter: &DeliveryFilter,
) -> Result<Vec<Delivery>, Error> {
    let rows = client
        .query(
            &format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries
                 WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR event_type = $2)
                       AND ($3::text IS NULL OR subscription_id = $3)
                 ORDER BY id DESC LIMIT $4"
            ),
            &[
                &filter.status,
                &filter.event,
                &filter.subscription,
                &(filter.limit as i64),
            ],
        )
        .await?;
    Ok(rows.iter().map(delivery_row).collect())
}

pub async fn get_delivery(
    client: &impl GenericClient,
    id: &str,
) -> Result<Option<Delivery>, Error> {
    let row = client
        .query_opt(
            &format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = $1"),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(delivery_row))
}

/// The request body of a delivery, for the detail view.
pub async fn delivery_payload(
    client: &impl GenericClient,
    id: &str,
) -> Result<Option<Value>, Error> {
    let row = client
        .query_opt("SELECT payload FROM deliveries WHERE id = $1", &[&id])
        .await?;
    Ok(row.and_then(|r| serde_json::from_slice(r.get::<_, &[u8]>(0)).ok()))
}

pub async fn list_attempts(
    client: &impl GenericClient,
    delivery_id: &str,
) -> Result<Vec<Attempt>, Error> {
    let rows = client
        .query(
            concat!(
                "SELECT number, trigger, status_code, latency_ms, error, response_body, ",
                text_time!("attempted_at"),
                " FROM attempts WHERE delivery_id = $1 ORDER BY id"
            ),
            &[&delivery_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Attempt {
            number: r.get(0),
            trigger: r.get(1),
            status_code: status_code(r.get(2)),
            latency_ms: r.get(3),
            error: r.get(4),
            response_body: r.get(5),
            attempted_at: r.get(6),
        })
        .collect())
}

/// Puts a failed delivery back in line for one manual attempt, now ([`check_replay`]). The
/// delivery row is locked, so two replays of it (through two instances) make one attempt; the
/// subscription is locked first, in the order a delete and a settlement take them, so none of
/// them can deadlock with another.
pub async fn replay(tx: &PgTx<'_>, id: &str) -> Result<Result<Delivery, ReplayRefused>, Error> {
    let Some(subscription_id) = tx
        .query_opt(
            "SELECT subscription_id FROM deliveries WHERE id = $1",
            &[&id],
        )
        .await?
        .map(|r| r.get::<_, String>(0))
    else {
        return Ok(Err(ReplayRefused::NotFound));
    };
    let active = tx
        .query_opt(
            "SELECT 1 FROM subscriptions WHERE id = $1 AND status = 'active' FOR SHARE",
            &[&subscription_id],
        )
        .await?
        .is_some();
    let Some(delivery) = tx
        .query_opt(
            &format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = $1 FOR UPDATE"),
            &[&id],
        )
        .await?
        .as_ref()
        .map(delivery_row)
    else {
        return Ok(Err(ReplayRefused::NotFound));
    };
    if let Err(refused) = check_replay(&delivery, || Ok::<_, Error>(active))? {
        return Ok(Err(refused));
    }
    tx.execute(
        "UPDATE deliveries SET status = $3, manual_next = true, next_attempt_at = $2,
                updated_at = now(), claimed_by = NULL, claimed_until = NULL
         WHERE id = $1",
        &[&id, &now_ms(), &DeliveryStatus::Pending],
    )
    .await?;
    Ok(get_delivery(&***tx, id)
        .await?
        .ok_or(ReplayRefused::NotFound))
}

/// Deletes up to `limit` finished deliveries last changed more than `older_than` ago, oldest
/// first, with their attempts (`ON DELETE CASCADE`). Rows another instance's pruning holds are
/// skipped. Returns how many deliveries went.
pub async fn prune_history(
    tx: &PgTx<'_>,
    older_than: Duration,
    limit: usize,
) -> Result<usize, Error> {
    let deleted = tx
        .execute(
            "DELETE FROM deliveries WHERE id IN (
                 SELECT id FROM deliveries
                 WHERE status IN ('delivered', 'failed')
                       AND updated_at < now() - make_interval(secs => $1)
                 ORDER BY updated_at, id LIMIT $2
                 FOR UPDATE SKIP LOCKED)",
            &[&older_than.as_secs_f64(), &(limit as i64)],
        )
        .await?;
    Ok(deleted as usize)
}
