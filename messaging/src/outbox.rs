//! The outbox relay: publishes what a transaction left in the `outbox` table, with confirms.
//!
//! A service writes its state change and the messages that announce it in one transaction
//! (see [`crate::store::SqliteTx::enqueue`] for SQLite, [`crate::pg::PgTx::enqueue`] for
//! PostgreSQL). The relay deletes a row only once the
//! broker confirmed it; a crash between publish and delete publishes the row again with the
//! same message id, which consumers deduplicate. Nothing committed is ever lost.
//!
//! Rows reach the relay two ways:
//! - **fast path**: right after each commit the write transaction hands over the rows that
//!   commit made durable (`handoff.rs`), so the relay publishes them at once without
//!   reading them back;
//! - **poll**: every [`POLL`] (and at start) the relay reads the oldest rows of the table (on
//!   PostgreSQL: claims those no live instance holds, see `pg.rs`), for
//!   rows the fast path did not carry — left by a previous run, refused by the broker, or that
//!   did not fit in the channel.
//!
//! Publishes are pipelined: up to [`WINDOW`] await their confirms at once (a sliding window,
//! not batch-at-a-time), and confirmed rows are deleted in batches by a write that runs while
//! the next messages are already being published. A row is "in flight" from its publish until
//! its delete (or failure) is committed; neither path publishes an in-flight row again.
//!
//! Deletes are at least [`SETTLE_GAP`] apart unless [`SETTLE_BATCH`] rows wait: at a steady rate
//! a delete per confirm was a commit (an fsync) of its own about once per message. A row confirmed
//! but not yet deleted is still in flight, so nothing publishes it again; a crash in between
//! sends it again with its message id, as for a crash before any delete.
//!
//! Every [`BACKLOG_EVERY`] the relay also measures the table for the alerts, whether or not the
//! broker is reachable: gauges `outbox_pending_rows` (rows not yet deleted) and
//! `outbox_oldest_age_seconds` (how long the oldest of them has waited; 0 when empty).

use std::collections::HashSet;
use std::time::Duration;

use deadpool_sqlite::rusqlite::{self, Connection};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::broker::{Broker, PublishError};
use crate::handoff::OutboxRow;
use crate::store::{Backend, DbError, outbox_batch, outbox_settle};

/// Unconfirmed publishes at most; the fast path waits while the window is full.
const WINDOW: usize = 512;
/// Committed rows the fast path may hold before the writer leaves them to the poll.
const CHANNEL: usize = 4096;
/// Rows read by one poll.
const POLL_BATCH: usize = 500;
/// How often the table is read for rows the fast path did not carry.
const POLL: Duration = Duration::from_millis(500);
/// How long a stopping relay waits for its outstanding confirms and deletes.
const DRAIN: Duration = Duration::from_secs(2);
/// The shortest time between two deletes of confirmed rows...
const SETTLE_GAP: Duration = Duration::from_millis(50);
/// ... unless this many rows wait to be deleted.
const SETTLE_BATCH: usize = 256;
/// How often the backlog gauges are refreshed.
const BACKLOG_EVERY: Duration = Duration::from_secs(2);

type Confirm = BoxFuture<'static, (OutboxRow, Result<(), PublishError>)>;
type Settled = BoxFuture<'static, (Vec<i64>, Result<(), DbError>)>;

pub struct Relay {
    db: Backend,
    broker: Broker,
    rows: mpsc::Receiver<OutboxRow>,
}

impl Relay {
    /// The relay of `db` (this instance's, on PostgreSQL). Fails if `db` already has one: the
    /// fast path has one reader.
    pub fn new(db: impl Into<Backend>, broker: Broker) -> Result<Self, DbError> {
        let db = db.into();
        let rows = match &db {
            Backend::Sqlite(db) => db.committed_outbox_rows(CHANNEL),
            Backend::Postgres(db) => db.committed_outbox_rows(CHANNEL),
        }
        .ok_or(DbError::RelayTaken)?;
        Ok(Self { db, broker, rows })
    }

    /// Relays until `shutdown`. Run it in its own task.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut state = State::default();
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backlog = tokio::time::interval(BACKLOG_EVERY);
        backlog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_settle = Instant::now();
        loop {
            let room = state.confirms.len() < WINDOW;
            let waiting = state.settling.is_empty() && state.has_settlements();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(row) = self.rows.recv(), if room => {
                    // Not connected: the row stays in the table and the poll sends it later.
                    // At or below what a poll saw: that poll (or an earlier publish) sent it.
                    if self.broker.is_connected() && row.id > state.polled_up_to {
                        self.publish(&mut state, row);
                    }
                }
                Some((row, result)) = state.confirms.next() => state.confirmed(row, result),
                Some((ids, result)) = state.settling.next() => state.settled(ids, result),
                _ = poll.tick(), if room => self.poll(&mut state).await,
                _ = backlog.tick() => self.measure_backlog().await,
                _ = tokio::time::sleep_until(last_settle + SETTLE_GAP), if waiting => {}
            }
            let due = last_settle.elapsed() >= SETTLE_GAP || state.done.len() >= SETTLE_BATCH;
            if state.settling.is_empty() && state.has_settlements() && due {
                let settle = self.settle(&mut state);
                state.settling.push(settle);
                last_settle = Instant::now();
            }
        }
        self.drain(state).await;
    }

    /// Starts publishing `row` unless it is already in flight; returns whether it did.
    fn publish(&self, state: &mut State, row: OutboxRow) -> bool {
        if !state.in_flight.insert(row.id) {
            return false;
        }
        let broker = self.broker.clone();
        state.confirms.push(Box::pin(async move {
            let result = broker.publish(&row.message).await;
            (row, result)
        }));
        true
    }

    /// Reads the oldest rows not in flight and publishes them.
    async fn poll(&self, state: &mut State) {
        if !self.broker.is_connected() {
            return;
        }
        let rows = match &self.db {
            Backend::Sqlite(db) => db.call(|conn| outbox_batch(conn, POLL_BATCH)).await,
            Backend::Postgres(db) => db.claim_outbox(POLL_BATCH).await,
        };
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                warn!(error = %e, "could not read the outbox; will try again");
                return;
            }
        };
        // SQLite commits rows in id order (one writer); PostgreSQL does not, so there a
        // fast-path row is never taken as seen by a poll (the in-flight set catches repeats).
        if let (Backend::Sqlite(_), Some(last)) = (&self.db, rows.last()) {
            state.polled_up_to = state.polled_up_to.max(last.id);
        }
        let started = rows
            .into_iter()
            .map(|row| self.publish(state, row))
            .filter(|&started| started)
            .count();
        if started > 0 {
            debug!(rows = started, "outbox rows found by the poll");
        }
    }

    /// Sets the backlog gauges from the table (rows in flight included: they are not delivered
    /// until their delete commits).
    async fn measure_backlog(&self) {
        let measured = match &self.db {
            Backend::Sqlite(db) => db.call(|conn| backlog(conn)).await,
            Backend::Postgres(db) => db.outbox_backlog().await,
        };
        match measured {
            Ok((rows, oldest_age)) => {
                metrics::gauge!("outbox_pending_rows").set(rows as f64);
                metrics::gauge!("outbox_oldest_age_seconds").set(oldest_age.unwrap_or(0.0));
            }
            Err(e) => warn!(error = %e, "could not measure the outbox backlog; will try again"),
        }
    }

    /// Deletes the confirmed rows and records the failures, in one write.
    fn settle(&self, state: &mut State) -> Settled {
        let done = std::mem::take(&mut state.done);
        let failed = std::mem::take(&mut state.failed);
        let ids: Vec<i64> = done
            .iter()
            .chain(failed.iter().map(|(id, _)| id))
            .copied()
            .collect();
        let db = self.db.clone();
        Box::pin(async move {
            let count = done.len();
            let result = match db {
                Backend::Sqlite(db) => {
                    db.write(move |tx| Ok(outbox_settle(tx, &done, &failed)?))
                        .await
                }
                Backend::Postgres(db) => db.settle_outbox(&done, &failed).await,
            };
            if result.is_ok() {
                metrics::counter!("outbox_relayed_total").increment(count as u64);
            }
            (ids, result)
        })
    }

    /// On shutdown: lets outstanding confirms arrive and deletes what was confirmed, briefly.
    async fn drain(self, mut state: State) {
        let drained = tokio::time::timeout(DRAIN, async {
            while let Some((row, result)) = state.confirms.next().await {
                state.confirmed(row, result);
            }
            while state.settling.next().await.is_some() {}
            if state.has_settlements() {
                let _ = self.settle(&mut state).await;
            }
        })
        .await;
        if drained.is_err() {
            debug!("relay stopped with confirms outstanding; those rows are sent again next start");
        }
    }
}

/// The outbox's row count and the age in seconds of its oldest row (by id, which follows
/// commit order), `None` when it is empty.
fn backlog(conn: &Connection) -> rusqlite::Result<(i64, Option<f64>)> {
    conn.prepare_cached(
        "SELECT COUNT(*), (SELECT (julianday('now') - julianday(created_at)) * 86400.0
                           FROM outbox ORDER BY id LIMIT 1)
         FROM outbox",
    )?
    .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
}

/// What the relay has in the air.
#[derive(Default)]
struct State {
    /// Row ids published and not yet settled in the table.
    in_flight: HashSet<i64>,
    /// Publishes awaiting their confirm.
    confirms: FuturesUnordered<Confirm>,
    /// Confirmed rows to delete.
    done: Vec<i64>,
    /// Refused rows to mark (they stay for the poll).
    failed: Vec<(i64, String)>,
    /// The settle write in progress (at most one, so the next one collects a bigger batch).
    settling: FuturesUnordered<Settled>,
    /// Consecutive refused publishes, for logging without flooding.
    failures: u32,
    /// The highest row id a poll has read: rows are committed in id order, so a fast-path row
    /// at or below it was committed before that poll and has been published already.
    polled_up_to: i64,
}

impl State {
    /// Whether confirmed or refused rows wait to be written.
    fn has_settlements(&self) -> bool {
        !(self.done.is_empty() && self.failed.is_empty())
    }

    fn confirmed(&mut self, row: OutboxRow, result: Result<(), PublishError>) {
        match result {
            Ok(()) => {
                self.failures = 0;
                self.done.push(row.id);
            }
            Err(e) => {
                self.failures += 1;
                if self.failures == 1 || self.failures % 100 == 0 {
                    warn!(message_id = %row.message.message_id, order_id = row.message.correlation_id.as_deref().unwrap_or(""),
                        routing_key = %row.message.routing_key, error = %e, failures = self.failures,
                        "outbox message not confirmed; keeping it for the next poll");
                }
                self.failed.push((row.id, e.to_string()));
            }
        }
    }

    fn settled(&mut self, ids: Vec<i64>, result: Result<(), DbError>) {
        if let Err(e) = result {
            // The rows stay in the table; the poll publishes them again (same message ids).
            warn!(error = %e, rows = ids.len(), "could not settle relayed outbox rows; they will be sent again");
        }
        for id in ids {
            self.in_flight.remove(&id);
        }
    }
}
