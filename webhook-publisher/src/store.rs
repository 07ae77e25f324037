//! `webhooks.db`: subscriptions, deliveries (one per event and subscription) and the history of
//! every attempt.
//!
//! A delivery is `pending` until it is `delivered` (a 2xx) or `failed` (retries exhausted, 410,
//! subscription removed). `next_attempt_at` (Unix ms) is when the dispatcher may try it next;
//! claiming a delivery pushes it forward by a lease, so an attempt interrupted by a crash is simply
//! tried again once the lease runs out. Everything the retry schedule needs is in this file, which
//! is why pending retries survive a restart.
//!
//! This file is the SQLite backend and what both backends share: the rows (`Subscription`,
//! `Delivery`, `Job`, …) and the **decisions** — which subscriptions get a delivery of an event
//! ([`plan_event`]), where a delivery goes after an attempt ([`settled_state`]), whether a
//! delivery may be replayed ([`check_replay`]). `store/pg.rs` is the PostgreSQL backend; it
//! loads rows and applies writes with the same decisions. `storage.rs` picks one of the two.

pub mod pg;

use deadpool_sqlite::rusqlite::{self, Connection, OptionalExtension, Row, Transaction, params};
use messaging::store::{DbError, SqliteTx};
use secrecy::SecretString;
use serde::Serialize;
use serde_json::Value;
use webhook_signing::Secret;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS subscriptions (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secret TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    disabled_reason TEXT,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    webhook_id TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    order_id TEXT,
    traceparent TEXT,
    payload BLOB NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempt_count INTEGER NOT NULL DEFAULT 0,
    scheduled_attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    manual_next INTEGER NOT NULL DEFAULT 0,
    last_status_code INTEGER,
    last_error TEXT,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    UNIQUE (message_id, subscription_id)
);
DROP INDEX IF EXISTS deliveries_due;
DROP INDEX IF EXISTS deliveries_next;
DROP INDEX IF EXISTS deliveries_finished;
CREATE INDEX IF NOT EXISTS deliveries_pending_due ON deliveries (subscription_id, next_attempt_at, id)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_pending_next ON deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_done ON deliveries (status, updated_at)
    WHERE status <> 'pending';
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    delivery_id TEXT NOT NULL REFERENCES deliveries (id),
    number INTEGER NOT NULL,
    trigger TEXT NOT NULL CHECK (trigger IN ('scheduled', 'manual')),
    status_code INTEGER,
    latency_ms INTEGER NOT NULL,
    error TEXT,
    response_body TEXT,
    attempted_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);
CREATE INDEX IF NOT EXISTS attempts_by_delivery ON attempts (delivery_id);
";

const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ','now')";

/// The event types a subscription can ask for, besides the wildcards `*` and `order.*`.
pub const EVENT_TYPES: [&str; 5] = [
    "order.created",
    "order.confirmed",
    "order.rejected",
    "order.cancelled",
    "product.stockChanged",
];

/// What the default subscription (the notifier) receives.
pub const DEFAULT_EVENTS: [&str; 2] = ["order.*", "product.stockChanged"];

/// Whether `filter` is one a subscription may ask for: `*`, `order.*` or one of [`EVENT_TYPES`].
pub fn known_filter(filter: &str) -> bool {
    filter == "*" || filter == "order.*" || EVENT_TYPES.contains(&filter)
}

/// Reads a subscription's stored event filter: a non-empty JSON list of known filters. Anything
/// else is corrupt (the API never stores such a thing) and is reported, never read as "no event".
pub fn parse_stored_filter(text: &str) -> Result<Vec<String>, String> {
    let events: Vec<String> = serde_json::from_str(text).map_err(|e| {
        format!("the stored event filter {text:?} is not a JSON list of strings: {e}")
    })?;
    if events.is_empty() {
        return Err("the stored event filter is an empty list".to_owned());
    }
    if let Some(unknown) = events.iter().find(|f| !known_filter(f)) {
        return Err(format!(
            "the stored event filter names {unknown:?}, which is not an event filter"
        ));
    }
    Ok(events)
}

/// Whether an event filter (`*`, `order.*` or an exact type) takes `event_type`.
pub fn filter_matches(filter: &str, event_type: &str) -> bool {
    match filter.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => filter == event_type,
    }
}

/// Current time in Unix milliseconds, the unit of `next_attempt_at`.
pub use messaging::clock::now_ms;

/// When a delivery claimed at `now` (Unix ms) for `lease` is due again if its attempt is never
/// settled: the `next_attempt_at` a claim writes, on either backend. Saturating, so no lease,
/// however long, overflows it.
pub fn lease_until(now: i64, lease: std::time::Duration) -> i64 {
    now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub status: SubscriptionStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    pub created_at: String,
    /// Set when the stored event filter is corrupt (`events` is then empty): no event is sent
    /// to this subscription, each one is recorded as a failed delivery instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter_error: Option<String>,
}

const SUBSCRIPTION_COLUMNS: &str = "id, url, events, status, disabled_reason, created_at";

fn subscription_row(row: &Row) -> rusqlite::Result<Subscription> {
    Ok(Subscription::from_stored(
        row.get(0)?,
        row.get(1)?,
        &row.get::<_, String>(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

impl Subscription {
    /// A subscription as stored (either backend): its event filter is read strictly, a corrupt
    /// one is kept as `filter_error`.
    pub fn from_stored(
        id: String,
        url: String,
        events: &str,
        status: SubscriptionStatus,
        disabled_reason: Option<String>,
        created_at: String,
    ) -> Self {
        let (events, filter_error) = match parse_stored_filter(events) {
            Ok(events) => (events, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        Self {
            id,
            url,
            events,
            status,
            disabled_reason,
            created_at,
            filter_error,
        }
    }

    pub fn is_active(&self) -> bool {
        self.status == SubscriptionStatus::Active
    }
}

/// The state of a subscription (`subscriptions.status`, and `status` in the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscriptionStatus {
    /// Gets the events its filter matches.
    Active,
    /// Its endpoint answered 410 Gone: gets no events, its pending deliveries were failed.
    Disabled,
}

impl SubscriptionStatus {
    pub const ALL: [Self; 2] = [Self::Active, Self::Disabled];

    /// As stored in the `status` column and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
        }
    }
}

messaging::text_column!(SubscriptionStatus, "subscription status");

/// The state of a delivery (`deliveries.status`, and `status` in the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// To be attempted at `next_attempt_at`.
    Pending,
    /// An attempt got a 2xx.
    Delivered,
    /// Retries exhausted, 410, subscription removed or filter corrupt; may be replayed.
    Failed,
}

impl DeliveryStatus {
    pub const ALL: [Self; 3] = [Self::Pending, Self::Delivered, Self::Failed];

    /// As stored in the `status` column and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }
}

impl std::fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

messaging::text_column!(DeliveryStatus, "delivery status");

pub fn insert_subscription(
    tx: &Transaction,
    url: &str,
    events: &[String],
    secret: &Secret,
) -> Result<Subscription, DbError> {
    let id = uuid::Uuid::now_v7().to_string();
    let events_json = serde_json::to_string(events)?;
    tx.execute(
        "INSERT INTO subscriptions (id, url, events, secret) VALUES (?1, ?2, ?3, ?4)",
        params![id, url, events_json, secret.expose()],
    )?;
    Ok(tx.query_row(
        &format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = ?1"),
        params![id],
        subscription_row,
    )?)
}

/// Creates the default subscription unless any subscription exists. Returns it when created.
pub fn ensure_default_subscription(
    tx: &Transaction,
    url: &str,
    secret: &Secret,
) -> Result<Option<Subscription>, DbError> {
    let count: i64 = tx.query_row("SELECT COUNT(*) FROM subscriptions", [], |r| r.get(0))?;
    if count > 0 {
        return Ok(None);
    }
    let events = DEFAULT_EVENTS.map(str::to_owned);
    insert_subscription(tx, url, &events, secret).map(Some)
}

pub fn get_subscription(conn: &Connection, id: &str) -> rusqlite::Result<Option<Subscription>> {
    conn.query_row(
        &format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = ?1"),
        params![id],
        subscription_row,
    )
    .optional()
}

/// The signing secret of a subscription, for the one API call that shows it.
pub fn subscription_secret(conn: &Connection, id: &str) -> rusqlite::Result<Option<SecretString>> {
    conn.query_row(
        "SELECT secret FROM subscriptions WHERE id = ?1",
        params![id],
        |r| r.get::<_, String>(0),
    )
    .optional()
    .map(|secret| secret.map(SecretString::from))
}

pub fn list_subscriptions(conn: &Connection) -> rusqlite::Result<Vec<Subscription>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions ORDER BY created_at, id"
    ))?;
    let rows = stmt.query_map([], subscription_row)?;
    rows.collect()
}

/// Deletes a subscription and fails its pending deliveries (nobody will take them any more).
/// Returns whether it existed.
pub fn delete_subscription(tx: &Transaction, id: &str) -> rusqlite::Result<bool> {
    let deleted = tx.execute("DELETE FROM subscriptions WHERE id = ?1", params![id])?;
    if deleted == 1 {
        fail_pending_of(tx, id, "the subscription was deleted")?;
    }
    Ok(deleted == 1)
}

/// Disables a subscription (its endpoint answered 410 Gone) and fails its pending deliveries.
pub fn disable_subscription(tx: &Transaction, id: &str, reason: &str) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE subscriptions SET status = 'disabled', disabled_reason = ?2 WHERE id = ?1",
        params![id, reason],
    )?;
    fail_pending_of(tx, id, reason)
}

fn fail_pending_of(tx: &Transaction, subscription_id: &str, reason: &str) -> rusqlite::Result<()> {
    tx.execute(
        &format!(
            "UPDATE deliveries SET status = 'failed', next_attempt_at = NULL, last_error = ?2, updated_at = {NOW}
             WHERE subscription_id = ?1 AND status = 'pending'"
        ),
        params![subscription_id, reason],
    )?;
    Ok(())
}

/// The JSON body of every request for one event: `{type, timestamp, data}`; the timestamp is
/// when it happened (`occurred_at`) or, for events that do not say, now.
pub fn webhook_body<T: Serialize>(
    event_type: &str,
    occurred_at: Option<&str>,
    data: &T,
) -> serde_json::Result<Vec<u8>> {
    let timestamp = match occurred_at {
        Some(at) if !at.is_empty() => at.to_owned(),
        _ => messaging_now_rfc3339(),
    };
    serde_json::to_vec(&serde_json::json!({
        "type": event_type,
        "timestamp": timestamp,
        "data": data,
    }))
}

fn messaging_now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The `webhook-id` of an event: the same for every attempt and every subscriber, derived from
/// the AMQP message id so a redelivered message keeps it.
pub fn webhook_id(message_id: &str) -> String {
    format!("msg_{message_id}")
}

/// One event to record (see [`record_event`]).
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub message_id: String,
    pub event_type: String,
    pub order_id: Option<String>,
    pub body: Vec<u8>,
    pub traceparent: Option<String>,
}

/// What recording one event did.
#[derive(Debug, Default, PartialEq)]
pub struct Recorded {
    /// Deliveries created, to be sent.
    pub created: usize,
    /// Subscriptions whose stored event filter is corrupt, with the reason: each got a failed
    /// delivery for this event instead (it can be replayed once the filter is repaired).
    pub unsendable: Vec<(String, String)>,
}

/// A delivery to create for one event: its subscription and first state.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub subscription_id: String,
    pub status: DeliveryStatus,
    pub next_attempt_at: Option<i64>,
    pub error: Option<String>,
}

/// Decides which of `subscriptions` get a delivery of an event of `event_type` (both
/// backends): every active one whose filter takes it, pending from `now`; every active one
/// whose stored filter is corrupt, failed at once (so the event is not silently lost for it).
pub fn plan_event(
    subscriptions: Vec<Subscription>,
    event_type: &str,
    now: i64,
) -> (Vec<Planned>, Recorded) {
    let mut recorded = Recorded::default();
    let mut planned = Vec::new();
    for subscription in subscriptions {
        if !subscription.is_active() {
            continue;
        }
        let (status, next_attempt_at, error) = match &subscription.filter_error {
            Some(reason) => {
                let error = format!(
                    "not sent: the subscription's event filter is corrupt ({reason}); repair its events column, then replay"
                );
                recorded
                    .unsendable
                    .push((subscription.id.clone(), reason.clone()));
                (DeliveryStatus::Failed, None, Some(error))
            }
            None if subscription
                .events
                .iter()
                .any(|f| filter_matches(f, event_type)) =>
            {
                recorded.created += 1;
                (DeliveryStatus::Pending, Some(now), None)
            }
            None => continue,
        };
        planned.push(Planned {
            subscription_id: subscription.id,
            status,
            next_attempt_at,
            error,
        });
    }
    (planned, recorded)
}

/// Records one delivery of `body` (see [`webhook_body`]) per active subscription that wants
/// `event_type`, unless this message was recorded before (`None` for a duplicate message).
pub fn record_event(tx: &SqliteTx, event: &NewEvent) -> Result<Option<Recorded>, DbError> {
    if !tx.inbox_first_time(&event.message_id)? {
        return Ok(None);
    }
    let (planned, recorded) = plan_event(list_subscriptions(tx)?, &event.event_type, now_ms());
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO deliveries
         (id, webhook_id, subscription_id, message_id, event_type, order_id, payload, status,
          next_attempt_at, traceparent, last_error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    for delivery in planned {
        insert.execute(params![
            uuid::Uuid::now_v7().to_string(),
            webhook_id(&event.message_id),
            delivery.subscription_id,
            event.message_id,
            event.event_type,
            event.order_id,
            event.body,
            delivery.status,
            delivery.next_attempt_at,
            event.traceparent,
            delivery.error
        ])?;
    }
    Ok(Some(recorded))
}

/// Everything one attempt needs, read when the delivery is claimed.
#[derive(Debug, Clone)]
pub struct Job {
    pub delivery_id: String,
    pub webhook_id: String,
    pub subscription_id: String,
    pub url: String,
    pub secret: SecretString,
    pub payload: Vec<u8>,
    pub event_type: String,
    pub order_id: Option<String>,
    /// The trace of the order, sent on as the request's `traceparent` header.
    pub traceparent: Option<String>,
    /// 1 for the first attempt.
    pub number: i64,
    pub scheduled_attempts: i64,
    pub manual: bool,
}

/// The ids of active subscriptions (the dispatcher's endpoints).
pub fn active_subscription_ids(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT id FROM subscriptions WHERE status = 'active'")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    rows.collect()
}

/// The due deliveries of one subscription, oldest first (`?1` subscription, `?2` now, `?3` at
/// most how many).
///
/// `LIMIT ?3 + 0`, not `LIMIT ?3`: SQLite reads a bare bound LIMIT when it plans the statement
/// and then re-prepares (re-parses and re-plans) the cached statement whenever that binding
/// changes, which the free permits of a pass make it do on nearly every pass: the publisher's
/// profile showed `sqlite3Reprepare` at ≈ 4 % of its CPU (docs/benchmarks.md, session 9). An
/// expression is not read at planning time; the plan is the same.
pub const CLAIM_DUE: &str =
    "SELECT d.id, d.webhook_id, d.subscription_id, s.url, s.secret, d.payload, d.event_type,
        d.order_id, d.attempt_count, d.scheduled_attempts, d.manual_next, d.traceparent
 FROM deliveries d JOIN subscriptions s ON s.id = d.subscription_id
 WHERE d.subscription_id = ?1 AND d.status = 'pending' AND d.next_attempt_at <= ?2
       AND s.status = 'active'
 ORDER BY d.next_attempt_at, d.id LIMIT ?3 + 0";

/// Claims up to `limit` due deliveries of one subscription: their next attempt time moves to
/// `lease_until`, so no other pass takes them while they are in flight, and a crash mid-attempt
/// only delays them until the lease runs out.
pub fn claim_due(
    tx: &Transaction,
    subscription_id: &str,
    now: i64,
    lease_until: i64,
    limit: usize,
) -> rusqlite::Result<Vec<Job>> {
    let mut stmt = tx.prepare_cached(CLAIM_DUE)?;
    let jobs: Vec<Job> = stmt
        .query_map(params![subscription_id, now, limit as i64], |r| {
            Ok(Job {
                delivery_id: r.get(0)?,
                webhook_id: r.get(1)?,
                subscription_id: r.get(2)?,
                url: r.get(3)?,
                secret: SecretString::from(r.get::<_, String>(4)?),
                payload: r.get(5)?,
                event_type: r.get(6)?,
                order_id: r.get(7)?,
                number: r.get::<_, i64>(8)? + 1,
                scheduled_attempts: r.get(9)?,
                manual: r.get::<_, i64>(10)? != 0,
                traceparent: r.get(11)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut lease =
        tx.prepare_cached("UPDATE deliveries SET next_attempt_at = ?2 WHERE id = ?1")?;
    for job in &jobs {
        lease.execute(params![job.delivery_id, lease_until])?;
    }
    Ok(jobs)
}

/// The earliest attempt time after `?1` of a pending delivery (read through the partial index
/// `deliveries_pending_next`).
const NEXT_DUE_AFTER: &str =
    "SELECT MIN(next_attempt_at) FROM deliveries WHERE status = 'pending' AND next_attempt_at > ?1";

/// The earliest future attempt time of a pending delivery, to know how long to sleep.
pub fn next_due_after(conn: &Connection, now: i64) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(NEXT_DUE_AFTER)?
        .query_row(params![now], |r| r.get(0))
}

/// What one HTTP attempt gave.
#[derive(Debug, Clone, Default)]
pub struct AttemptRecord {
    pub status_code: Option<u16>,
    pub latency_ms: i64,
    pub error: Option<String>,
    pub response_body: Option<String>,
}

/// Where the delivery goes after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    Delivered,
    RetryAt(i64),
    Failed(String),
    /// 410 Gone: the subscription is disabled and the delivery failed.
    Gone,
}

/// The outcome of one finished attempt, waiting to be written by the dispatcher's next pass.
#[derive(Debug, Clone)]
pub struct Settlement {
    pub delivery_id: String,
    pub subscription_id: String,
    /// The attempt's number (1 for the first).
    pub number: i64,
    pub manual: bool,
    pub record: AttemptRecord,
    pub next: Next,
}

impl Settlement {
    pub fn of(job: &Job, record: AttemptRecord, next: Next) -> Self {
        Self {
            delivery_id: job.delivery_id.clone(),
            subscription_id: job.subscription_id.clone(),
            number: job.number,
            manual: job.manual,
            record,
            next,
        }
    }

    /// What made the attempt, as `attempts.trigger` stores it.
    pub fn trigger(&self) -> &'static str {
        if self.manual { "manual" } else { "scheduled" }
    }
}

/// Every finished attempt of a pass under one savepoint: on an error none of them is kept, and
/// the caller writes them one at a time ([`settle_in_savepoint`]), so that one attempt that
/// cannot be written holds back only itself. One savepoint, not one per attempt: SQLite copies
/// every page a savepoint's statements change the first time they do (its statement journal),
/// and the attempts of a pass change the same few pages (docs/benchmarks.md, session 17).
pub fn settle_together(tx: &Transaction, settlements: &[Settlement]) -> rusqlite::Result<()> {
    // Prepared once (cached), like every statement of the hot paths.
    let run = |sql: &str| tx.prepare_cached(sql)?.execute([]).map(drop);
    run("SAVEPOINT settle_all")?;
    match settlements.iter().try_for_each(|s| settle_attempt(tx, s)) {
        Ok(()) => run("RELEASE settle_all"),
        Err(e) => {
            run("ROLLBACK TO settle_all")?;
            run("RELEASE settle_all")?;
            Err(e)
        }
    }
}

/// [`settle_attempt`] under a savepoint of its own ([`settle_together`] of one): when it fails,
/// only its own changes are undone (the delivery is then attempted again after its lease) and
/// the rest of the transaction goes on.
pub fn settle_in_savepoint(tx: &Transaction, settlement: &Settlement) -> rusqlite::Result<()> {
    settle_together(tx, std::slice::from_ref(settlement))
}

/// Writes the attempt row and moves the delivery on, in one transaction.
pub fn settle_attempt(tx: &Transaction, settlement: &Settlement) -> rusqlite::Result<()> {
    insert_attempt(tx, settlement)?;
    let state = settled_state(settlement, || {
        subscription_active(tx, &settlement.subscription_id)
    })?;
    // `updated_at` as in `NOW`, spelt out so that the statement is a constant for the cache.
    tx.prepare_cached(
        "UPDATE deliveries SET status = ?2, next_attempt_at = ?3, last_error = ?4, last_status_code = ?5,
            attempt_count = attempt_count + 1,
            scheduled_attempts = scheduled_attempts + ?6,
            manual_next = 0, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ','now')
         WHERE id = ?1",
    )?
    .execute(params![
        settlement.delivery_id,
        state.status,
        state.next_attempt_at,
        state.error,
        settlement.record.status_code,
        i64::from(!settlement.manual)
    ])?;
    if state.disable_subscription {
        disable_subscription(tx, &settlement.subscription_id, GONE_REASON)?;
    }
    Ok(())
}

/// Where a delivery goes after an attempt, as written (both backends).
#[derive(Debug, Clone, PartialEq)]
pub struct SettledState {
    pub status: DeliveryStatus,
    pub next_attempt_at: Option<i64>,
    pub error: Option<String>,
    /// 410 Gone: the subscription is disabled (and its other pending deliveries failed).
    pub disable_subscription: bool,
}

/// Decides the delivery's state after an attempt (both backends). `subscription_active` is
/// asked only for a retry: the subscription may have been deleted or disabled while this
/// attempt was in flight, and then nobody will take the retry, so the delivery ends here
/// instead of staying pending forever.
pub fn settled_state<E>(
    settlement: &Settlement,
    subscription_active: impl FnOnce() -> Result<bool, E>,
) -> Result<SettledState, E> {
    let state = |status, next_attempt_at, error: Option<String>| SettledState {
        status,
        next_attempt_at,
        error,
        disable_subscription: false,
    };
    Ok(match &settlement.next {
        Next::Delivered => state(DeliveryStatus::Delivered, None, None),
        Next::RetryAt(_) if !subscription_active()? => state(
            DeliveryStatus::Failed,
            None,
            Some("the subscription was deleted or disabled".to_owned()),
        ),
        Next::RetryAt(at) => state(
            DeliveryStatus::Pending,
            Some(*at),
            settlement.record.error.clone(),
        ),
        Next::Failed(reason) => state(DeliveryStatus::Failed, None, Some(reason.clone())),
        Next::Gone => SettledState {
            disable_subscription: true,
            ..state(DeliveryStatus::Failed, None, Some(GONE_REASON.to_owned()))
        },
    })
}

fn insert_attempt(tx: &Transaction, settlement: &Settlement) -> rusqlite::Result<()> {
    let trigger = settlement.trigger();
    let record = &settlement.record;
    tx.prepare_cached(
        "INSERT INTO attempts (delivery_id, number, trigger, status_code, latency_ms, error, response_body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        settlement.delivery_id,
        settlement.number,
        trigger,
        record.status_code,
        record.latency_ms,
        record.error,
        record.response_body
    ])?;
    Ok(())
}

fn subscription_active(tx: &Transaction, id: &str) -> rusqlite::Result<bool> {
    tx.prepare_cached("SELECT 1 FROM subscriptions WHERE id = ?1 AND status = 'active'")?
        .query_row(params![id], |_| Ok(()))
        .optional()
        .map(|found| found.is_some())
}

pub const GONE_REASON: &str = "the endpoint answered 410 Gone: subscription disabled";

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub id: String,
    pub webhook_id: String,
    pub subscription_id: String,
    pub message_id: String,
    pub event_type: String,
    pub order_id: Option<String>,
    pub status: DeliveryStatus,
    pub attempt_count: i64,
    /// RFC 3339, only while pending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

const DELIVERY_COLUMNS: &str =
    "id, webhook_id, subscription_id, message_id, event_type, order_id, status,
    attempt_count, next_attempt_at, last_status_code, last_error, created_at, updated_at";

fn delivery_row(row: &Row) -> rusqlite::Result<Delivery> {
    let next: Option<i64> = row.get(8)?;
    Ok(Delivery {
        id: row.get(0)?,
        webhook_id: row.get(1)?,
        subscription_id: row.get(2)?,
        message_id: row.get(3)?,
        event_type: row.get(4)?,
        order_id: row.get(5)?,
        status: row.get(6)?,
        attempt_count: row.get(7)?,
        next_attempt_at: next.and_then(ms_to_rfc3339),
        last_status_code: row.get(9)?,
        last_error: row.get(10)?,
        created_at: row.get(11)?,
        updated_at: row.get(12)?,
    })
}

pub(crate) fn ms_to_rfc3339(ms: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// Filters of `GET /deliveries`.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub status: Option<DeliveryStatus>,
    pub event: Option<String>,
    pub subscription: Option<String>,
    pub limit: usize,
}

/// Deliveries matching `filter`, newest first.
pub fn list_deliveries(
    conn: &Connection,
    filter: &DeliveryFilter,
) -> rusqlite::Result<Vec<Delivery>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM deliveries
         WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR event_type = ?2)
               AND (?3 IS NULL OR subscription_id = ?3)
         ORDER BY id DESC LIMIT ?4"
    ))?;
    let rows = stmt.query_map(
        params![
            filter.status,
            filter.event,
            filter.subscription,
            filter.limit as i64
        ],
        delivery_row,
    )?;
    rows.collect()
}

pub fn get_delivery(conn: &Connection, id: &str) -> rusqlite::Result<Option<Delivery>> {
    conn.query_row(
        &format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ?1"),
        params![id],
        delivery_row,
    )
    .optional()
}

/// The request body of a delivery, for the detail view.
pub fn delivery_payload(conn: &Connection, id: &str) -> rusqlite::Result<Option<Value>> {
    let payload: Option<Vec<u8>> = conn
        .query_row(
            "SELECT payload FROM deliveries WHERE id = ?1",
            params![id],
            |r| r.get(0),
        )
        .optional()?;
    Ok(payload.and_then(|p| serde_json::from_slice(&p).ok()))
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub number: i64,
    pub trigger: String,
    pub status_code: Option<u16>,
    pub latency_ms: i64,
    pub error: Option<String>,
    pub response_body: Option<String>,
    pub attempted_at: String,
}

pub fn list_attempts(conn: &Connection, delivery_id: &str) -> rusqlite::Result<Vec<Attempt>> {
    let mut stmt = conn.prepare_cached(
        "SELECT number, trigger, status_code, latency_ms, error, response_body, attempted_at
         FROM attempts WHERE delivery_id = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map(params![delivery_id], |r| {
        Ok(Attempt {
            number: r.get(0)?,
            trigger: r.get(1)?,
            status_code: r.get(2)?,
            latency_ms: r.get(3)?,
            error: r.get(4)?,
            response_body: r.get(5)?,
            attempted_at: r.get(6)?,
        })
    })?;
    rows.collect()
}

/// Why a replay was refused.
#[derive(Debug, PartialEq)]
pub enum ReplayRefused {
    NotFound,
    NotFailed(DeliveryStatus),
    SubscriptionInactive,
}

/// Whether `delivery` may be replayed (both backends): only a failed one, and only while its
/// subscription is active (`subscription_active` is asked only then).
pub fn check_replay<E>(
    delivery: &Delivery,
    subscription_active: impl FnOnce() -> Result<bool, E>,
) -> Result<Result<(), ReplayRefused>, E> {
    if delivery.status != DeliveryStatus::Failed {
        return Ok(Err(ReplayRefused::NotFailed(delivery.status)));
    }
    if !subscription_active()? {
        return Ok(Err(ReplayRefused::SubscriptionInactive));
    }
    Ok(Ok(()))
}

/// Puts a failed delivery back in line for one manual attempt, now.
pub fn replay(tx: &Transaction, id: &str) -> rusqlite::Result<Result<Delivery, ReplayRefused>> {
    let Some(delivery) = get_delivery(tx, id)? else {
        return Ok(Err(ReplayRefused::NotFound));
    };
    if let Err(refused) = check_replay(&delivery, || {
        subscription_active(tx, &delivery.subscription_id)
    })? {
        return Ok(Err(refused));
    }
    tx.execute(
        &format!(
            "UPDATE deliveries SET status = 'pending', manual_next = 1, next_attempt_at = ?2, updated_at = {NOW}
             WHERE id = ?1"
        ),
        params![id, now_ms()],
    )?;
    Ok(get_delivery(tx, id)?.ok_or(ReplayRefused::NotFound))
}

/// The oldest deliveries of one finished status (`?1`) last changed before now + `?2` (a
/// negative SQLite time modifier), at most `?3`. `status <> 'pending'` is the condition of the
/// partial index `deliveries_done`, spelt out so that SQLite may read it (it cannot tell that a
/// bound `?1` is never `pending`).
const DUE_FOR_PRUNING: &str = "SELECT id FROM deliveries
     WHERE status <> 'pending' AND status = ?1
       AND updated_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?2)
     ORDER BY updated_at LIMIT ?3";

/// Deletes up to `limit` finished (delivered or failed) deliveries last changed more than
/// `older_than` ago, oldest first within each status, with their attempts. A pending delivery
/// is never deleted.
/// Returns how many deliveries went.
pub fn prune_history(
    tx: &Transaction,
    older_than: std::time::Duration,
    limit: usize,
) -> rusqlite::Result<usize> {
    // `updated_at` has the format of `NOW`, so text order is time order. One status at a
    // time: `status IN (…) ORDER BY updated_at` cannot walk the (status, updated_at) index in
    // order, so SQLite sorted every due row for each batch (72 ms a batch at 100,000 rows,
    // against 2 ms this way), all of it inside the writer's transaction.
    let age = format!("-{:.3} seconds", older_than.as_secs_f64());
    let mut due = tx.prepare_cached(DUE_FOR_PRUNING)?;
    let mut ids: Vec<String> = Vec::with_capacity(limit);
    for status in [DeliveryStatus::Delivered, DeliveryStatus::Failed] {
        let left = (limit - ids.len()) as i64;
        if left == 0 {
            break;
        }
        for id in due.query_map(params![status, age, left], |r| r.get(0))? {
            ids.push(id?);
        }
    }
    let mut attempts = tx.prepare_cached("DELETE FROM attempts WHERE delivery_id = ?1")?;
    let mut delivery = tx.prepare_cached("DELETE FROM deliveries WHERE id = ?1")?;
    for id in &ids {
        attempts.execute(params![id])?;
        delivery.execute(params![id])?;
    }
    Ok(ids.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite's plan for `sql` with `params`, one line per step.
    pub(super) fn query_plan(
        conn: &Connection,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> String {
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(params, |r| r.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        plan.join("\n")
    }

    #[test]
    fn a_claim_is_due_again_at_the_end_of_its_lease_and_never_overflows() {
        let lease = std::time::Duration::from_secs(2);
        assert_eq!(lease_until(1_000, lease), 3_000);
        assert_eq!(lease_until(i64::MAX - 5, lease), i64::MAX);
        assert_eq!(lease_until(0, std::time::Duration::MAX), i64::MAX);
    }

    #[test]
    fn a_pruning_batch_reads_the_index_in_order_without_sorting() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let plan = query_plan(
            &conn,
            DUE_FOR_PRUNING,
            params!["delivered", "-1 seconds", 500],
        );
        assert!(plan.contains("USING INDEX deliveries_done"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }

    #[test]
    fn a_database_with_the_old_indexes_gets_the_partial_ones() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        // Back to the indexes of webhooks.db before the partial ones (session 15).
        conn.execute_batch(
            "DROP INDEX deliveries_done;
             DROP INDEX deliveries_pending_due;
             DROP INDEX deliveries_pending_next;
             CREATE INDEX deliveries_due ON deliveries (subscription_id, status, next_attempt_at);
             CREATE INDEX deliveries_next ON deliveries (status, next_attempt_at);
             CREATE INDEX deliveries_finished ON deliveries (status, updated_at);",
        )
        .unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'deliveries' AND sql IS NOT NULL ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            indexes,
            [
                "deliveries_done",
                "deliveries_pending_due",
                "deliveries_pending_next"
            ]
        );
    }

    #[test]
    fn pruning_takes_old_finished_deliveries_and_their_attempts_only() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let tx = conn.transaction().unwrap();
        let old = "2020-01-01T00:00:00.000Z";
        let rows = [
            ("old-delivered", "delivered", Some(old)),
            ("old-failed", "failed", Some(old)),
            ("old-failed-2", "failed", Some(old)),
            ("old-pending", "pending", Some(old)),
            ("new-delivered", "delivered", None),
        ];
        for (id, status, updated_at) in rows {
            tx.execute(
                "INSERT INTO deliveries (id, webhook_id, subscription_id, message_id, event_type, payload, status)
                 VALUES (?1, 'w', 's', ?1, 'order.created', x'7b7d', ?2)",
                params![id, status],
            )
            .unwrap();
            if let Some(at) = updated_at {
                tx.execute(
                    "UPDATE deliveries SET updated_at = ?2 WHERE id = ?1",
                    params![id, at],
                )
                .unwrap();
            }
            tx.execute(
                "INSERT INTO attempts (delivery_id, number, trigger, latency_ms) VALUES (?1, 1, 'scheduled', 1)",
                params![id],
            )
            .unwrap();
        }
        let day = std::time::Duration::from_secs(86_400);
        // Batches: two, then the last old finished one, then nothing.
        assert_eq!(prune_history(&tx, day, 2).unwrap(), 2);
        assert_eq!(prune_history(&tx, day, 2).unwrap(), 1);
        assert_eq!(prune_history(&tx, day, 2).unwrap(), 0);
        let left = |table: &str, column: &str| -> Vec<String> {
            let mut stmt = tx
                .prepare(&format!("SELECT {column} FROM {table} ORDER BY {column}"))
                .unwrap();
            stmt.query_map([], |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        };
        assert_eq!(left("deliveries", "id"), ["new-delivered", "old-pending"]);
        assert_eq!(
            left("attempts", "delivery_id"),
            ["new-delivered", "old-pending"]
        );
        // With a retention shorter than its age, the recent finished one goes too; the
        // pending one never does.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let tiny = std::time::Duration::from_millis(5);
        assert_eq!(prune_history(&tx, tiny, 10).unwrap(), 1);
        assert_eq!(left("deliveries", "id"), ["old-pending"]);
    }

    fn subscription(id: &str, events: &str, status: SubscriptionStatus) -> Subscription {
        Subscription::from_stored(
            id.to_owned(),
            format!("http://127.0.0.1:9/{id}"),
            events,
            status,
            None,
            "2026-12-02T00:00:00.000Z".to_owned(),
        )
    }

    #[test]
    fn an_event_is_planned_for_active_matching_subscriptions_and_fails_for_corrupt_filters() {
        let subscriptions = vec![
            subscription("all", r#"["*"]"#, SubscriptionStatus::Active),
            subscription(
                "confirmed",
                r#"["order.confirmed"]"#,
                SubscriptionStatus::Active,
            ),
            subscription("off", r#"["*"]"#, SubscriptionStatus::Disabled),
            subscription("corrupt", "order.created", SubscriptionStatus::Active),
        ];
        let (planned, recorded) = plan_event(subscriptions, "order.created", 42);
        assert_eq!(recorded.created, 1);
        assert_eq!(recorded.unsendable.len(), 1);
        assert_eq!(recorded.unsendable[0].0, "corrupt");
        assert_eq!(planned.len(), 2);
        assert_eq!(
            planned[0],
            Planned {
                subscription_id: "all".to_owned(),
                status: DeliveryStatus::Pending,
                next_attempt_at: Some(42),
                error: None,
            }
        );
        assert_eq!(planned[1].subscription_id, "corrupt");
        assert_eq!(planned[1].status, DeliveryStatus::Failed);
        assert_eq!(planned[1].next_attempt_at, None);
        assert!(planned[1].error.as_deref().unwrap().starts_with("not sent"));
    }

    fn settlement(next: Next) -> Settlement {
        Settlement {
            delivery_id: "d".to_owned(),
            subscription_id: "s".to_owned(),
            number: 2,
            manual: false,
            record: AttemptRecord {
                status_code: Some(503),
                latency_ms: 5,
                error: Some("the endpoint answered 503".to_owned()),
                response_body: None,
            },
            next,
        }
    }

    #[test]
    fn the_state_after_an_attempt_is_decided_once_for_both_backends() {
        let asked = std::cell::Cell::new(0);
        let active = |answer: bool| {
            let asked = &asked;
            move || {
                asked.set(asked.get() + 1);
                Ok::<_, ()>(answer)
            }
        };
        let retry = settled_state(&settlement(Next::RetryAt(7)), active(true)).unwrap();
        assert_eq!(retry.status, DeliveryStatus::Pending);
        assert_eq!(retry.next_attempt_at, Some(7));
        assert_eq!(retry.error.as_deref(), Some("the endpoint answered 503"));
        assert!(!retry.disable_subscription);
        let orphan = settled_state(&settlement(Next::RetryAt(7)), active(false)).unwrap();
        assert_eq!(orphan.status, DeliveryStatus::Failed);
        assert_eq!(orphan.next_attempt_at, None);
        assert_eq!(asked.get(), 2);
        // Only a retry asks whether the subscription is still active.
        let done = settled_state(&settlement(Next::Delivered), active(false)).unwrap();
        assert_eq!((done.status, done.error), (DeliveryStatus::Delivered, None));
        let gone = settled_state(&settlement(Next::Gone), active(true)).unwrap();
        assert_eq!(gone.status, DeliveryStatus::Failed);
        assert!(gone.disable_subscription);
        assert_eq!(gone.error.as_deref(), Some(GONE_REASON));
        let failed = settled_state(
            &settlement(Next::Failed("gave up".to_owned())),
            active(true),
        )
        .unwrap();
        assert_eq!(failed.status, DeliveryStatus::Failed);
        assert_eq!(failed.error.as_deref(), Some("gave up"));
        assert_eq!(asked.get(), 2);
    }

    #[test]
    fn only_a_failed_delivery_of_an_active_subscription_is_replayed() {
        let delivery = |status: DeliveryStatus| Delivery {
            id: "d".to_owned(),
            webhook_id: "w".to_owned(),
            subscription_id: "s".to_owned(),
            message_id: "m".to_owned(),
            event_type: "order.created".to_owned(),
            order_id: None,
            status,
            attempt_count: 6,
            next_attempt_at: None,
            last_status_code: None,
            last_error: None,
            created_at: String::new(),
            updated_at: String::new(),
        };
        let yes = || Ok::<_, ()>(true);
        let no = || Ok::<_, ()>(false);
        assert_eq!(
            check_replay(&delivery(DeliveryStatus::Failed), yes),
            Ok(Ok(()))
        );
        assert_eq!(
            check_replay(&delivery(DeliveryStatus::Failed), no),
            Ok(Err(ReplayRefused::SubscriptionInactive))
        );
        assert_eq!(
            check_replay(&delivery(DeliveryStatus::Delivered), yes),
            Ok(Err(ReplayRefused::NotFailed(DeliveryStatus::Delivered)))
        );
    }

    #[test]
    fn stored_filters_are_read_strictly() {
        assert_eq!(
            parse_stored_filter(r#"["order.*","order.created"]"#).unwrap(),
            ["order.*", "order.created"]
        );
        for corrupt in ["", "order.*", "[1]", "{}", "[]", r#"["order.shipped"]"#] {
            let e = parse_stored_filter(corrupt).unwrap_err();
            assert!(e.starts_with("the stored event filter"), "{corrupt}: {e}");
        }
    }

    #[test]
    fn filters_match_exact_types_and_wildcards() {
        assert!(filter_matches("*", "order.created"));
        assert!(filter_matches("order.*", "order.rejected"));
        assert!(filter_matches("order.confirmed", "order.confirmed"));
        assert!(!filter_matches("order.confirmed", "order.created"));
        assert!(!filter_matches("product.*", "order.created"));
    }
}

#[cfg(test)]
mod claim_tests {
    use super::tests::query_plan;
    use super::*;

    #[test]
    fn the_next_due_time_reads_the_pending_index() {
        let conn = store_with_due(0);
        let plan = query_plan(&conn, NEXT_DUE_AFTER, params![1_000]);
        assert!(plan.contains("deliveries_pending_next"), "{plan}");
    }

    #[test]
    fn the_delivery_indexes_hold_only_the_rows_they_are_read_for() {
        // A pending delivery is in the two pending indexes only while it is pending, a finished
        // one only in `deliveries_done`: fewer index entries to write per delivery, and the
        // pending indexes stay as small as the backlog.
        let conn = store_with_due(0);
        let partial: Vec<(String, bool)> = conn
            .prepare("SELECT name, partial FROM pragma_index_list('deliveries') WHERE origin = 'c' ORDER BY name")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let names = [
            "deliveries_done",
            "deliveries_pending_due",
            "deliveries_pending_next",
        ];
        assert_eq!(partial, names.map(|n| (n.to_owned(), true)));
    }

    fn store_with_due(n: usize) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn.execute(
            "INSERT INTO subscriptions (id, url, events, secret) VALUES ('s', 'http://x', '[\"*\"]', 'k')",
            [],
        )
        .unwrap();
        for i in 0..n {
            conn.execute(
                "INSERT INTO deliveries (id, webhook_id, subscription_id, message_id, event_type, payload, status, next_attempt_at)
                 VALUES (?1, 'w', 's', ?1, 'order.created', x'7b7d', 'pending', ?2)",
                params![format!("d{i:03}"), i as i64],
            )
            .unwrap();
        }
        conn
    }

    #[test]
    fn claiming_with_another_limit_does_not_re_prepare_the_statement() {
        let mut conn = store_with_due(40);
        let tx = conn.transaction().unwrap();
        let mut claimed = Vec::new();
        for limit in [3, 5, 2, 7] {
            let jobs = claim_due(&tx, "s", 1_000, 1_000_000, limit).unwrap();
            assert_eq!(jobs.len(), limit);
            claimed.extend(jobs.into_iter().map(|j| j.delivery_id));
        }
        // Oldest first, each once.
        let expected: Vec<String> = (0..17).map(|i| format!("d{i:03}")).collect();
        assert_eq!(claimed, expected);
        let stmt = tx.prepare_cached(CLAIM_DUE).unwrap();
        assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0);
    }

    #[test]
    fn the_claim_reads_the_due_index_in_order_without_sorting() {
        let conn = store_with_due(0);
        let plan = query_plan(&conn, CLAIM_DUE, params!["s", 1_000, 32]);
        assert!(
            plan.contains("USING INDEX deliveries_pending_due"),
            "{plan}"
        );
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }
}
