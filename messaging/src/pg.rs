//! PostgreSQL, the scale-out store: several instances of a service share one database.
//!
//! `DATABASE_URL=postgres://…` selects it (see [`PgConfig::from_env`]); unset, a service keeps
//! its SQLite file (`store.rs`). What this module gives every service:
//! - [`PgDb`]: a `deadpool-postgres` pool whose connections carry a statement timeout, built
//!   without connecting, so a service starts (and answers `/ready` false) while PostgreSQL is
//!   still unreachable;
//! - versioned [`Migration`]s applied by [`PgDb::run`] under a transaction-scoped advisory lock,
//!   so instances starting together apply each migration once; a database whose schema is newer
//!   than the binary is a fatal [`DbError::SchemaTooNew`];
//! - [`PgTx`], the write transaction: through it code records inbox ids and enqueues outbox
//!   rows, and after the commit it hands the rows it enqueued to this instance's relay;
//! - the outbox claims the relay uses with several instances: a row is inserted already
//!   claimed by the instance that wrote it, for [`PgConfig::lease`]; another instance's poll
//!   takes it only once that lease has run out (its writer died), with `FOR UPDATE SKIP LOCKED`
//!   so two polls never take the same row.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{ConfigError, env_or};
use crate::db_error::DbError;
pub use crate::db_error::described;
use crate::envelope::OutgoingMessage;
use crate::handoff::{OutboxRow, OutboxSink, hand_to_relay, take_fast_path};
use crate::inbox_retention::{InboxRetention, PRUNE_BATCH};
use crate::pg_batch::{LaneContext, Lanes};

pub use deadpool_postgres::ClientWrapper as Client;
pub use tokio_postgres::Row;

/// How old this instance's own outbox rows must be before its poll takes them
/// ([`PgDb::claim_outbox`]): well past the time the fast path takes to publish a row and
/// delete it (tens of milliseconds, seconds when the relay is far behind).
pub const OWN_ROWS_AFTER: Duration = Duration::from_secs(2);

/// How a service reaches its PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PgConfig {
    /// Parsed from `DATABASE_URL` (its `Debug` does not show the password).
    pub pg: tokio_postgres::Config,
    /// `DATABASE_POOL_SIZE`: connections at most.
    pub pool_size: usize,
    /// `DATABASE_STATEMENT_TIMEOUT_MS`: a statement running longer is cancelled by the server.
    pub statement_timeout: Duration,
    /// `OUTBOX_LEASE_SECS`: how long a claimed outbox row (or delivery) belongs to the instance
    /// that claimed it before another may take it over.
    pub lease: Duration,
}

impl PgConfig {
    pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);
    /// The most connections one consumer's deliveries take by default: past this, deliveries
    /// queue briefly for a connection rather than make every instance's pool larger than
    /// PostgreSQL's 100 connections allow (docs/operations.md, "Pool sizing").
    pub const CONSUMER_CONNECTIONS: u16 = 32;

    /// The default connections of a consumer with `prefetch`: one per delivery it may be
    /// handling at once (each in one transaction), up to [`Self::CONSUMER_CONNECTIONS`]. A
    /// service's default pool is the sum over its consumers plus its background tasks.
    pub fn consumer_connections(prefetch: u16) -> usize {
        usize::from(prefetch.min(Self::CONSUMER_CONNECTIONS))
    }

    /// `None` when `DATABASE_URL` is unset or empty (the service uses SQLite). `default_pool`
    /// is the service's own sizing (its consumers' prefetch plus its background tasks).
    pub fn from_env(default_pool: usize) -> Result<Option<Self>, ConfigError> {
        let url: String = env_or("DATABASE_URL", String::new())?;
        if url.trim().is_empty() {
            return Ok(None);
        }
        let pool_size: usize = env_or("DATABASE_POOL_SIZE", default_pool)?;
        if pool_size == 0 {
            return Err(invalid("DATABASE_POOL_SIZE", "0", "must be at least 1"));
        }
        let timeout_ms: u64 = env_or(
            "DATABASE_STATEMENT_TIMEOUT_MS",
            Self::DEFAULT_STATEMENT_TIMEOUT.as_millis() as u64,
        )?;
        let lease_secs: u64 = env_or("OUTBOX_LEASE_SECS", Self::DEFAULT_LEASE.as_secs())?;
        if lease_secs == 0 {
            return Err(invalid(
                "OUTBOX_LEASE_SECS",
                "0",
                "must be at least 1 (seconds)",
            ));
        }
        let mut config = Self::parse(&url)?;
        config.pool_size = pool_size;
        config.statement_timeout = Duration::from_millis(timeout_ms);
        config.lease = Duration::from_secs(lease_secs);
        Ok(Some(config))
    }

    /// Parses a `postgres://user[:pass]@host[:port]/db` URL (key=value strings are refused:
    /// the variable is documented as a URL), with the default pool size, timeout and lease.
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let shown = "(not shown: it may hold a password)";
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(invalid(
                "DATABASE_URL",
                shown,
                "must start with postgres:// or postgresql://",
            ));
        }
        let pg = tokio_postgres::Config::from_str(url)
            .map_err(|e| invalid("DATABASE_URL", shown, &format!("not a PostgreSQL URL: {e}")))?;
        if pg.get_hosts().is_empty() {
            return Err(invalid("DATABASE_URL", shown, "names no host"));
        }
        if pg.get_dbname().is_none() {
            return Err(invalid(
                "DATABASE_URL",
                shown,
                "names no database (…/<db> at the end); each service has its own",
            ));
        }
        Ok(Self {
            pg,
            pool_size: 16,
            statement_timeout: Self::DEFAULT_STATEMENT_TIMEOUT,
            lease: Self::DEFAULT_LEASE,
        })
    }
}

fn invalid(name: &str, value: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        name: name.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

/// One step of a service's schema. Versions start at 1 and increase by one; a released
/// migration is never edited, a change is a new one.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Version 1 of every service's schema: the inbox (message ids already applied) and the
/// outbox (messages still to publish, with the claim of the instance publishing them).
pub const INBOX_OUTBOX: Migration = Migration {
    version: 1,
    name: "inbox and outbox",
    sql: "
CREATE TABLE inbox (
    message_id TEXT PRIMARY KEY,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX inbox_by_received ON inbox (received_at);
CREATE TABLE outbox (
    id BIGSERIAL PRIMARY KEY,
    message_id TEXT NOT NULL UNIQUE,
    exchange TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    correlation_id TEXT,
    traceparent TEXT,
    body BYTEA NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    claimed_by TEXT,
    claimed_until TIMESTAMPTZ
);
",
};

/// A pooled PostgreSQL database of one service instance. Cheap to clone.
#[derive(Clone)]
pub struct PgDb {
    pool: Pool,
    service: &'static str,
    /// Names this instance in outbox claims (`orders@host:pid:…`), unique per start.
    instance: Arc<str>,
    lease: Duration,
    retention: InboxRetention,
    migrations: &'static [Migration],
    /// `true` once the schema is up to date; consumers start only then.
    migrated: Arc<watch::Sender<bool>>,
    outbox_sink: OutboxSink,
    /// The queue of [`PgDb::write_in_batch`] (`pg_batch.rs`), started by its first write.
    lanes: Lanes,
}

impl PgDb {
    /// The pool of `config`, for `service` with its `migrations`. Does not connect: [`run`]
    /// does, retrying until PostgreSQL answers.
    ///
    /// [`run`]: PgDb::run
    pub fn new(
        config: &PgConfig,
        service: &'static str,
        migrations: &'static [Migration],
        retention: InboxRetention,
    ) -> Result<Self, DbError> {
        check_migrations(migrations);
        let mut pg = config.pg.clone();
        pg.options(format!(
            "-c statement_timeout={}",
            config.statement_timeout.as_millis()
        ));
        pg.application_name(service);
        pg.connect_timeout(Duration::from_secs(5));
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            // A request for a connection fails (and the message is retried) instead of hanging
            // while PostgreSQL is away.
            .create_timeout(Some(Duration::from_secs(5)))
            .wait_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| DbError::Open {
                path: "DATABASE_URL".into(),
                reason: e.to_string(),
            })?;
        let instance = format!(
            "{service}@{}:{}:{}",
            crate::config::hostname(),
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        Ok(Self {
            pool,
            service,
            instance: instance.into(),
            lease: config.lease,
            retention,
            migrations,
            migrated: Arc::new(watch::Sender::new(false)),
            outbox_sink: OutboxSink::default(),
            lanes: Lanes::default(),
        })
    }

    /// This instance's name in claims.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// How long a claim lasts.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    pub(crate) fn lanes(&self) -> &Lanes {
        &self.lanes
    }

    /// What the batch lanes need to run and commit writes as this instance.
    pub(crate) fn lane_context(&self) -> LaneContext {
        LaneContext {
            pool: self.pool.clone(),
            instance: self.instance.clone(),
            lease_secs: self.lease.as_secs_f64(),
            sink: self.outbox_sink.clone(),
        }
    }

    /// Brings the schema up to date (retrying with backoff while PostgreSQL is unreachable),
    /// then prunes the inbox until `stop`. Returns `Err` only for what no retry mends: a schema
    /// newer than this binary, or a migration the server refused.
    pub async fn run(self, stop: CancellationToken) -> Result<(), DbError> {
        let attempt = || async { self.migrate().await };
        let migrated = attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(5))
                    .without_max_times(),
            )
            .when(|e: &DbError| e.is_transient())
            .notify(|e, after| {
                warn!(service = self.service, error = %e, retry_in = ?after, "PostgreSQL is not reachable yet; the service waits for it");
            });
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            result = migrated => result?,
        }
        self.migrated.send_replace(true);
        self.prune_inbox(stop).await;
        Ok(())
    }

    /// Resolves `true` once the schema is up to date, `false` if `stop` came first.
    pub async fn wait_ready(&self, stop: &CancellationToken) -> bool {
        let mut ready = self.migrated.subscribe();
        tokio::select! {
            _ = stop.cancelled() => false,
            r = ready.wait_for(|m| *m) => r.is_ok(),
        }
    }

    /// For `/ready`: the schema is up to date and a connection answers within a second.
    pub async fn is_ready(&self) -> bool {
        if !*self.migrated.borrow() {
            return false;
        }
        let ping = async {
            let client = self.pool.get().await.ok()?;
            client.simple_query("SELECT 1").await.ok()
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), ping).await,
            Ok(Some(_))
        )
    }

    async fn migrate(&self) -> Result<(), DbError> {
        let mut client = self.pool.get().await?;
        let applied = migrate(&mut client, self.service, self.migrations).await?;
        match applied {
            0 => info!(service = self.service, "database schema is up to date"),
            n => info!(
                service = self.service,
                migrations = n,
                "database schema migrated"
            ),
        }
        Ok(())
    }

    /// Runs `f` with a pooled connection (reads: RPC answers, sweeps, reports).
    pub async fn read<R, F>(&self, f: F) -> Result<R, DbError>
    where
        F: for<'c> FnOnce(&'c Client) -> BoxFuture<'c, Result<R, tokio_postgres::Error>>,
    {
        let client = self.pool.get().await?;
        Ok(f(&client).await?)
    }

    /// Runs `f` in a transaction and commits it; `f`'s changes are kept only if it returns
    /// `Ok`. The outbox rows it enqueued are inserted together with the commit (one round trip:
    /// see [`OpenTx::commit`]) and go to this instance's relay once the commit is done.
    pub async fn write<R, F>(&self, f: F) -> Result<R, DbError>
    where
        F: for<'t> FnOnce(&'t PgTx<'t>) -> BoxFuture<'t, Result<R, tokio_postgres::Error>>,
    {
        self.write_starting_with(Begin::Plain, f).await
    }

    /// [`write`](PgDb::write) for statements over tables whose size swings faster than their
    /// statistics follow (a queue's backlog: the publisher's due deliveries): every statement
    /// of the transaction is planned for its parameters and the table as it is now
    /// (`plan_cache_mode = force_custom_plan`), never with a cached generic plan. A generic
    /// plan made while such a table was small stays in use as it grows (nothing invalidates it
    /// until the next `ANALYZE`) and scans all of it: on a fresh database under load the
    /// publisher's claim and settle statements took 7–14 ms a call that way, 0.5–1.6 ms
    /// replanned (docs/benchmarks.md, session 11). Planning each call costs ≈ 0.1–0.3 ms, so
    /// the rest of the writes keep their cached plans.
    pub async fn write_replanned<R, F>(&self, f: F) -> Result<R, DbError>
    where
        F: for<'t> FnOnce(&'t PgTx<'t>) -> BoxFuture<'t, Result<R, tokio_postgres::Error>>,
    {
        self.write_starting_with(Begin::Replanned, f).await
    }

    async fn write_starting_with<R, F>(&self, begin: Begin, f: F) -> Result<R, DbError>
    where
        F: for<'t> FnOnce(&'t PgTx<'t>) -> BoxFuture<'t, Result<R, tokio_postgres::Error>>,
    {
        let open = OpenTx::begin(self.pool.get().await?, begin).await?;
        let tx = PgTx::new(open.client());
        let outcome = f(&tx).await;
        let pending = tx.into_enqueued();
        match outcome {
            Ok(result) => {
                let rows = open
                    .commit(pending, &self.instance, self.lease.as_secs_f64())
                    .await?;
                hand_to_relay(&self.outbox_sink, rows);
                Ok(result)
            }
            Err(e) => {
                open.rollback().await;
                Err(e.into())
            }
        }
    }

    /// The outbox rows of every later commit, for the one relay of this instance.
    pub(crate) fn committed_outbox_rows(
        &self,
        capacity: usize,
    ) -> Option<tokio::sync::mpsc::Receiver<OutboxRow>> {
        take_fast_path(&self.outbox_sink, capacity)
    }

    /// Claims up to `limit` outbox rows nobody holds (never claimed, lease run out, or this
    /// instance's own, claimed at least [`OWN_ROWS_AFTER`] ago), oldest first, for one lease.
    ///
    /// This instance's rows younger than that are left alone: nearly all of them are on the
    /// fast path or in flight, and claiming them again rewrote (and read back, bodies and all)
    /// 15 % of the rows with one instance and 27 % with two, to publish none of them
    /// (docs/benchmarks.md, session 13). The ones the fast path did not carry (the broker was
    /// down, the hand-over channel was full) are published that much later.
    pub(crate) async fn claim_outbox(&self, limit: usize) -> Result<Vec<OutboxRow>, DbError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE outbox SET claimed_by = $1, claimed_until = now() + make_interval(secs => $2)
                 WHERE id IN (SELECT id FROM outbox
                              WHERE claimed_until IS NULL OR claimed_until < now()
                                    OR (claimed_by = $1
                                        AND claimed_until < now() + make_interval(secs => $4))
                              ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)
                 RETURNING id, message_id, exchange, routing_key, correlation_id, traceparent, body",
            )
            .await?;
        let lease = self.lease.as_secs_f64();
        // A row is inserted claimed until its commit + the lease: one claimed at least
        // OWN_ROWS_AFTER ago has less than (lease − OWN_ROWS_AFTER) of it left.
        let claimed_long_ago = lease - OWN_ROWS_AFTER.as_secs_f64();
        let rows = client
            .query(
                &stmt,
                &[&&*self.instance, &lease, &(limit as i64), &claimed_long_ago],
            )
            .await?;
        let mut rows: Vec<OutboxRow> = rows.iter().map(outbox_row).collect();
        rows.sort_by_key(|r| r.id);
        Ok(rows)
    }

    /// Deletes the confirmed rows; the refused ones are released for any instance's next poll.
    pub(crate) async fn settle_outbox(
        &self,
        sent: &[i64],
        failed: &[(i64, String)],
    ) -> Result<(), DbError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        if !sent.is_empty() {
            tx.execute("DELETE FROM outbox WHERE id = ANY($1)", &[&sent])
                .await?;
        }
        for (id, error) in failed {
            tx.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = $2, claimed_by = NULL,
                        claimed_until = NULL
                 WHERE id = $1",
                &[id, error],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The outbox's row count and the age in seconds of its oldest row.
    pub(crate) async fn outbox_backlog(&self) -> Result<(i64, Option<f64>), DbError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT COUNT(*), EXTRACT(EPOCH FROM now() - MIN(created_at))::float8 FROM outbox",
                &[],
            )
            .await?;
        Ok((row.get(0), row.get(1)))
    }

    /// Deletes inbox rows older than the retention, a batch at a time, every `retention.every`.
    async fn prune_inbox(&self, stop: CancellationToken) {
        let keep = self.retention.keep.as_secs_f64();
        loop {
            let pruned = async {
                let client = self.pool.get().await?;
                let n = client
                    .execute(
                        "DELETE FROM inbox WHERE message_id IN (
                             SELECT message_id FROM inbox
                             WHERE received_at < now() - make_interval(secs => $1) LIMIT $2)",
                        &[&keep, &(PRUNE_BATCH as i64)],
                    )
                    .await?;
                Ok::<_, DbError>(n)
            }
            .await;
            let pause = match pruned {
                Ok(n) if n as usize == PRUNE_BATCH => Duration::ZERO,
                Ok(n) => {
                    if n > 0 {
                        metrics::counter!("inbox_pruned_total").increment(n);
                    }
                    self.retention.every
                }
                Err(e) => {
                    warn!(error = %e, "could not prune the inbox; will try again");
                    self.retention.every
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Closes the pool: connections in use close when returned.
    pub fn close(&self) {
        self.pool.close();
    }
}

fn outbox_row(row: &Row) -> OutboxRow {
    OutboxRow {
        id: row.get(0),
        message: OutgoingMessage {
            message_id: row.get(1),
            exchange: row.get(2),
            routing_key: row.get(3),
            correlation_id: row.get(4),
            traceparent: row.get(5),
            body: row.get(6),
            reply_to: None,
            mandatory: true,
        },
    }
}

/// A write transaction of [`PgDb::write`]: the connection inside `BEGIN` (through `Deref`)
/// plus the inbox and outbox steps every consumer takes.
pub struct PgTx<'a> {
    client: &'a Client,
    /// Outbox messages to insert with the commit.
    enqueued: Mutex<Vec<OutgoingMessage>>,
}

impl std::ops::Deref for PgTx<'_> {
    type Target = Client;
    fn deref(&self) -> &Self::Target {
        self.client
    }
}

impl<'a> PgTx<'a> {
    pub(crate) fn new(client: &'a Client) -> Self {
        Self {
            client,
            enqueued: Mutex::new(Vec::new()),
        }
    }

    /// The outbox messages this transaction enqueued, in order.
    pub(crate) fn into_enqueued(self) -> Vec<OutgoingMessage> {
        self.enqueued
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Records `message_id` in the inbox. Returns `false` when it was there already, i.e. the
    /// message was applied before (by this instance or another) and must not be applied again.
    pub async fn inbox_first_time(&self, message_id: &str) -> Result<bool, tokio_postgres::Error> {
        let stmt = self
            .client
            .prepare_cached("INSERT INTO inbox (message_id) VALUES ($1) ON CONFLICT DO NOTHING")
            .await?;
        Ok(self.client.execute(&stmt, &[&message_id]).await? == 1)
    }

    /// Stores `msg` in the outbox, claimed by this instance, to be published after the commit.
    /// The row is written by the commit itself (all of a transaction's rows in one statement
    /// sent with `COMMIT`), so enqueueing costs no round trip of its own; a row that cannot be
    /// written (a duplicate message id) fails the commit, and the transaction with it.
    pub async fn enqueue(&self, msg: &OutgoingMessage) -> Result<(), tokio_postgres::Error> {
        if let Ok(mut rows) = self.enqueued.lock() {
            rows.push(OutgoingMessage {
                reply_to: None,
                mandatory: true,
                ..msg.clone()
            });
        }
        Ok(())
    }
}

/// Inserts a transaction's outbox rows in one statement, claimed by `$7` for `$8` seconds,
/// in the order they were enqueued (so their ids, and so their publishing order, follow it).
const OUTBOX_INSERT: &str = "
INSERT INTO outbox (message_id, exchange, routing_key, correlation_id, traceparent, body,
                    claimed_by, claimed_until)
SELECT m.message_id, m.exchange, m.routing_key, m.correlation_id, m.traceparent, m.body,
       $7, now() + make_interval(secs => $8)
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[])
     WITH ORDINALITY AS m(message_id, exchange, routing_key, correlation_id, traceparent, body, n)
ORDER BY m.n
RETURNING id, message_id";

/// A pooled connection inside `BEGIN`. Ended by [`commit`](OpenTx::commit) or
/// [`rollback`](OpenTx::rollback); dropped while still open (the write's future was cancelled,
/// or a step failed so that its outcome is unknown), the connection is taken out of the pool
/// and closed, and the server rolls the transaction back: a connection never goes back to the
/// pool in the middle of a transaction.
pub(crate) struct OpenTx {
    client: Option<Object>,
}

/// How a transaction of [`OpenTx`] starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Begin {
    Plain,
    /// Its statements never use a cached generic plan ([`PgDb::write_replanned`]).
    Replanned,
}

impl OpenTx {
    /// `BEGIN`, and for [`Begin::Replanned`] the setting sent with it (one round trip).
    pub(crate) async fn begin(client: Object, begin: Begin) -> Result<Self, tokio_postgres::Error> {
        let open = Self {
            client: Some(client),
        };
        let sql = match begin {
            Begin::Plain => "BEGIN",
            Begin::Replanned => "BEGIN; SET LOCAL plan_cache_mode = force_custom_plan",
        };
        open.client().batch_execute(sql).await?;
        Ok(open)
    }

    pub(crate) fn client(&self) -> &Client {
        self.client
            .as_deref()
            .expect("an OpenTx holds its connection until it is ended")
    }

    /// Inserts `pending` (claimed by `instance` for `lease_secs`) and commits, in one round
    /// trip: the `INSERT` and the `COMMIT` are pipelined (tokio-postgres sends requests in the
    /// order their futures are first polled, and the statement is prepared beforehand so the
    /// first poll sends it). If the `INSERT` fails the server turns the `COMMIT` into a
    /// rollback, and the error is returned: nothing of the transaction is kept.
    pub(crate) async fn commit(
        mut self,
        pending: Vec<OutgoingMessage>,
        instance: &str,
        lease_secs: f64,
    ) -> Result<Vec<OutboxRow>, tokio_postgres::Error> {
        let client = self.client();
        if pending.is_empty() {
            client.batch_execute("COMMIT").await?;
            self.release();
            return Ok(Vec::new());
        }
        let stmt = client.prepare_cached(OUTBOX_INSERT).await?;
        let ids: Vec<&str> = pending.iter().map(|m| m.message_id.as_str()).collect();
        let exchanges: Vec<&str> = pending.iter().map(|m| m.exchange.as_str()).collect();
        let keys: Vec<&str> = pending.iter().map(|m| m.routing_key.as_str()).collect();
        let correlations: Vec<Option<&str>> = pending
            .iter()
            .map(|m| m.correlation_id.as_deref())
            .collect();
        let traces: Vec<Option<&str>> = pending.iter().map(|m| m.traceparent.as_deref()).collect();
        let bodies: Vec<&[u8]> = pending.iter().map(|m| m.body.as_slice()).collect();
        let params: [&(dyn ToSql + Sync); 8] = [
            &ids,
            &exchanges,
            &keys,
            &correlations,
            &traces,
            &bodies,
            &instance,
            &lease_secs,
        ];
        let (inserted, committed) =
            futures::future::join(client.query(&stmt, &params), client.batch_execute("COMMIT"))
                .await;
        // An unanswered COMMIT leaves the outcome unknown: the connection is closed (drop).
        committed?;
        self.release();
        let mut inserted: Vec<(i64, String)> = inserted?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()?;
        Ok(pending
            .into_iter()
            .filter_map(|message| {
                let at = inserted
                    .iter()
                    .position(|(_, id)| *id == message.message_id)?;
                let (id, _) = inserted.swap_remove(at);
                Some(OutboxRow { id, message })
            })
            .collect())
    }

    /// Rolls back; a connection that cannot even do that is closed instead.
    pub(crate) async fn rollback(mut self) {
        if self.client().batch_execute("ROLLBACK").await.is_ok() {
            self.release();
        }
    }

    /// The transaction is over: the connection may go back to the pool.
    fn release(&mut self) {
        drop(self.client.take());
    }
}

impl Drop for OpenTx {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Detached from the pool, the client is dropped here and its connection closes.
            drop(Object::take(client));
        }
    }
}

/// Panics on a list that is not 1, 2, 3, …: that is a programming error caught by any test.
fn check_migrations(migrations: &[Migration]) {
    for (i, m) in migrations.iter().enumerate() {
        assert_eq!(
            m.version,
            i as i64 + 1,
            "migration {:?} is out of sequence",
            m.name
        );
    }
}

/// The advisory lock key of `service`'s migrations (FNV-1a of its name: stable across builds,
/// unlike `std`'s hasher).
fn lock_key(service: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in format!("saga-migrations:{service}").bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

/// Applies the migrations newer than the database's version, in one transaction holding the
/// service's advisory lock: a second instance starting at the same moment waits on the lock,
/// then finds nothing left to apply. Returns how many it applied.
pub async fn migrate(
    client: &mut Client,
    service: &str,
    migrations: &[Migration],
) -> Result<usize, DbError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key(service)])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version BIGINT PRIMARY KEY,
             name TEXT NOT NULL,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let found: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await?
        .get(0);
    let known = migrations.last().map_or(0, |m| m.version);
    if found > known {
        return Err(DbError::SchemaTooNew { found, known });
    }
    let pending: Vec<_> = migrations.iter().filter(|m| m.version > found).collect();
    for m in &pending {
        tx.batch_execute(m.sql)
            .await
            .map_err(|source| DbError::Migration {
                version: m.version,
                name: m.name,
                source,
            })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(pending.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_parsed_and_its_password_never_shown() {
        let config = PgConfig::parse("postgres://app:s3cret@127.0.0.1:5433/orders").unwrap();
        assert_eq!(config.pg.get_dbname(), Some("orders"));
        assert_eq!(config.pg.get_ports(), &[5433]);
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn a_malformed_url_is_an_error_naming_database_url_without_the_password() {
        for bad in [
            "mysql://app:s3cret@host/db",
            "host=localhost password=s3cret",
            "postgres://app:s3cret@host:notaport/db",
            "postgres://app:s3cret@host:5432",
        ] {
            let err = PgConfig::parse(bad).unwrap_err().to_string();
            assert!(err.contains("DATABASE_URL"), "{bad}: {err}");
            assert!(!err.contains("s3cret"), "{bad}: the password leaked: {err}");
        }
    }

    #[test]
    fn lock_keys_differ_per_service_and_stay_put() {
        assert_ne!(lock_key("orders"), lock_key("products"));
        assert_eq!(lock_key("orders"), lock_key("orders"));
    }

    fn outgoing(n: usize) -> OutgoingMessage {
        OutgoingMessage {
            exchange: "saga.events".into(),
            routing_key: "order.confirmed".into(),
            message_id: format!("own-rows-{n}-{}", uuid::Uuid::now_v7()),
            correlation_id: Some(format!("order-{n}")),
            reply_to: None,
            traceparent: None,
            body: b"{}".to_vec(),
            mandatory: true,
        }
    }

    /// When the latest claim on an outbox row runs out.
    async fn latest_claim(db: &PgDb) -> std::time::SystemTime {
        let client = db.pool.get().await.unwrap();
        let row = client
            .query_one("SELECT max(claimed_until) FROM outbox", &[])
            .await
            .unwrap();
        row.get(0)
    }

    /// An instance's poll leaves the rows it has just written to its fast path, and takes them
    /// once they are [`OWN_ROWS_AFTER`] old (the fast path did not carry them); another
    /// instance takes them only after the lease. Nothing is updated by a poll that takes none.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_poll_takes_its_own_rows_only_once_the_fast_path_had_its_chance() {
        let test_db = testkit::TestDatabase::create("own_rows").await.unwrap();
        let db = |lease| {
            let mut config = PgConfig::parse(&test_db.url).unwrap();
            config.pool_size = 2;
            config.lease = lease;
            PgDb::new(
                &config,
                "pgtest",
                &[INBOX_OUTBOX],
                InboxRetention::default(),
            )
            .unwrap()
        };
        let (writer, other) = (db(Duration::from_secs(60)), db(Duration::from_secs(60)));
        let stop = CancellationToken::new();
        tokio::spawn(writer.clone().run(stop.clone()));
        assert!(writer.wait_ready(&stop).await);
        writer
            .write(|tx| {
                Box::pin(async move {
                    for n in 0..5 {
                        tx.enqueue(&outgoing(n)).await?;
                    }
                    Ok(())
                })
            })
            .await
            .unwrap();
        let written = std::time::Instant::now();
        let lease_at_commit = latest_claim(&writer).await;

        assert!(writer.claim_outbox(100).await.unwrap().is_empty());
        assert!(other.claim_outbox(100).await.unwrap().is_empty());
        assert_eq!(
            latest_claim(&writer).await,
            lease_at_commit,
            "a poll that took nothing rewrote the rows"
        );

        tokio::time::sleep(OWN_ROWS_AFTER.saturating_sub(written.elapsed())).await;
        assert_eq!(writer.claim_outbox(100).await.unwrap().len(), 5);
        assert!(other.claim_outbox(100).await.unwrap().is_empty());
        assert!(latest_claim(&writer).await > lease_at_commit);
        stop.cancel();
        drop((writer, other));
        test_db.drop().await.unwrap();
    }
}
