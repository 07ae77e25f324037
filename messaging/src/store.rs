//! SQLite access shared by the services: a pooled database, its inbox and its outbox schema.
//!
//! Every database is in WAL mode with `synchronous=FULL`, so a committed transaction survives a
//! crash of the process and of the machine; writes run in `BEGIN IMMEDIATE` transactions so two
//! writers queue on the busy timeout instead of failing on a lock upgrade.
//!
//! The inbox stays bounded: the writer deletes rows older than [`InboxRetention`] in small
//! batches (see `group_commit.rs`). [`Db::close`] closes every connection, so a clean stop
//! leaves the database file alone, without `-wal` or `-shm` files.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deadpool_sqlite::rusqlite::{self, Connection, Transaction, params};
use deadpool_sqlite::{Config, Hook, HookError, Pool, QueueMode, Runtime};

use crate::config::{ConfigError, env_or};
use crate::envelope::OutgoingMessage;
use crate::group_commit::{OutboxSink, Writer, note_outbox_row};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("could not open database {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_sqlite::PoolError),
    #[error("database worker: {0}")]
    Interact(String),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgres pool: {0}")]
    PgPool(#[from] deadpool_postgres::PoolError),
    #[error(
        "the database schema is at version {found}, newer than this binary knows ({known}); run the newer release or restore the database"
    )]
    SchemaTooNew { found: i64, known: i64 },
    #[error("migration {version} ({name}) failed: {source}")]
    Migration {
        version: i64,
        name: &'static str,
        source: tokio_postgres::Error,
    },
}

impl DbError {
    /// Whether trying again later may succeed (the database is away or busy), as opposed to
    /// a fault no retry mends (a newer schema, a migration the server refused).
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            Self::SchemaTooNew { .. } | Self::Migration { .. } | Self::Config(_)
        )
    }
}

/// A service's database: the embedded SQLite file, or the PostgreSQL database its instances
/// share (`DATABASE_URL`).
#[derive(Clone)]
pub enum Backend {
    Sqlite(Db),
    Postgres(crate::pg::PgDb),
}

impl From<Db> for Backend {
    fn from(db: Db) -> Self {
        Self::Sqlite(db)
    }
}

impl From<crate::pg::PgDb> for Backend {
    fn from(db: crate::pg::PgDb) -> Self {
        Self::Postgres(db)
    }
}

impl Backend {
    /// Closes the database once the service's tasks have ended (see [`Db::close`]).
    pub async fn close(&self) {
        match self {
            Self::Sqlite(db) => db.close().await,
            Self::Postgres(db) => db.close(),
        }
    }
}

/// How long an inbox row (the id of a message already applied) is kept, and how often the
/// writer looks for older ones.
///
/// A message redelivered after its row was deleted would be applied again, so `keep` must
/// exceed the longest time between a message's first application and its last possible
/// redelivery (docs/operations.md, "Inbox retention").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxRetention {
    /// `INBOX_RETENTION_SECS`: rows older than this are deleted.
    pub keep: Duration,
    /// How often the writer looks for rows to delete (a full batch is followed by the next one
    /// at once).
    pub every: Duration,
}

impl InboxRetention {
    /// Seven days: far longer than any redelivery the system itself makes, and a week for an
    /// operator to replay dead letters.
    pub const DEFAULT_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);
    /// At least once a minute, as the issue asks; twice, so one failed pass is not noticed.
    pub const DEFAULT_EVERY: Duration = Duration::from_secs(30);

    /// `INBOX_RETENTION_SECS` (default seven days; zero is refused: it would forget every
    /// message at once and let redeliveries apply twice).
    pub fn from_env() -> Result<Self, ConfigError> {
        let secs: u64 = env_or("INBOX_RETENTION_SECS", Self::DEFAULT_KEEP.as_secs())?;
        if secs == 0 {
            return Err(ConfigError::Invalid {
                name: "INBOX_RETENTION_SECS".into(),
                value: "0".into(),
                reason: "must be at least 1 (seconds); see docs/operations.md".into(),
            });
        }
        Ok(Self {
            keep: Duration::from_secs(secs),
            ..Self::default()
        })
    }
}

impl Default for InboxRetention {
    fn default() -> Self {
        Self {
            keep: Self::DEFAULT_KEEP,
            every: Self::DEFAULT_EVERY,
        }
    }
}

/// Inbox rows deleted per transaction: a backlog of old rows is worked off in steps this small,
/// so the write lock is never held long and the writes queued meanwhile go in between.
pub(crate) const PRUNE_BATCH: usize = 500;

/// Deletes up to `batch` inbox rows older than `keep`; returns how many it deleted.
///
/// It looks only at the `batch` oldest rows (rowid order is arrival order: rows are only ever
/// appended, and only the oldest are deleted), so a pass reads at most `batch` rows and needs no
/// index on `received_at`, even when nothing is old enough.
pub(crate) fn prune_inbox(
    conn: &Connection,
    keep: Duration,
    batch: usize,
) -> rusqlite::Result<usize> {
    let modifier = format!("-{:.3} seconds", keep.as_secs_f64());
    conn.prepare_cached(
        "DELETE FROM inbox WHERE rowid IN (
             SELECT rowid FROM (SELECT rowid, received_at FROM inbox ORDER BY rowid LIMIT ?2)
             WHERE received_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1))",
    )?
    .execute(params![modifier, batch as i64])
}

/// The inbox (message ids already applied) and outbox (messages still to publish) tables.
pub const MESSAGING_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS inbox (
    message_id TEXT PRIMARY KEY,
    received_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    exchange TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    correlation_id TEXT,
    traceparent TEXT,
    body BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);
";

/// Pooled connections for reads (RPC answers, the relay's poll, sweeps); writes have their own.
const READ_CONNECTIONS: usize = 4;

#[derive(Clone)]
pub struct Db {
    path: Arc<PathBuf>,
    /// Reads (and the schema) go through the pool.
    pool: Pool,
    /// Every write transaction goes through the one writer, which commits them in groups.
    writer: Writer,
    /// Where the writer sends outbox rows once they are committed (the relay's fast path).
    outbox_sink: OutboxSink,
}

impl Db {
    /// Opens (creating if needed) the database at `path` and applies `schema` and the
    /// messaging tables; the inbox is kept for `INBOX_RETENTION_SECS`.
    pub async fn open(path: &Path, schema: &'static str) -> Result<Self, DbError> {
        Self::open_with(path, schema, InboxRetention::from_env()?).await
    }

    /// [`Db::open`] with the inbox retention given (tests use a short one).
    pub async fn open_with(
        path: &Path,
        schema: &'static str,
        retention: InboxRetention,
    ) -> Result<Self, DbError> {
        let open_err = |reason: String| DbError::Open {
            path: path.display().to_string(),
            reason,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        }
        let pool = Config::new(path)
            .builder(Runtime::Tokio1)
            .map_err(|e| open_err(e.to_string()))?
            // Each connection keeps its own page cache (SQLite's default, ≈ 2 MiB). Handing out
            // the most recently used connection first keeps reads on one or two warm caches
            // instead of filling all of them, which showed as slow RSS growth in the soak.
            .max_size(READ_CONNECTIONS)
            .queue_mode(QueueMode::Lifo)
            .post_create(Hook::async_fn(|conn, _| {
                Box::pin(async move {
                    conn.interact(|c| c.pragma_update(None, "synchronous", "FULL"))
                        .await
                        .map_err(|e| HookError::Message(e.to_string().into()))?
                        .map_err(HookError::Backend)
                })
            }))
            .build()
            .map_err(|e| open_err(e.to_string()))?;
        let conn = pool.get().await?;
        conn.interact(move |conn| {
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.execute_batch(MESSAGING_SCHEMA)?;
            conn.execute_batch(schema)
        })
        .await
        .map_err(|e| DbError::Interact(e.to_string()))??;
        drop(conn);
        let outbox_sink = OutboxSink::default();
        let writer = Writer::start(path, outbox_sink.clone(), retention)?;
        Ok(Self {
            path: Arc::new(path.to_owned()),
            pool,
            writer,
            outbox_sink,
        })
    }

    /// The outbox rows of every later commit, in commit (= id) order, for the one relay of this
    /// database; `None` if a relay took them already. Rows that find the channel full are not
    /// sent and stay in the table.
    pub(crate) fn committed_outbox_rows(
        &self,
        capacity: usize,
    ) -> Option<tokio::sync::mpsc::Receiver<OutboxRow>> {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        self.outbox_sink.set(tx).ok().map(|()| rx)
    }

    /// Runs `f` on a pooled connection in the blocking pool.
    pub async fn call<R, F>(&self, f: F) -> Result<R, DbError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, rusqlite::Error> + Send + 'static,
    {
        let conn = self.pool.get().await?;
        conn.interact(move |conn| f(conn))
            .await
            .map_err(|e| DbError::Interact(e.to_string()))?
            .map_err(DbError::from)
    }

    /// Closes every connection of this database (its clones included): SQLite then copies the
    /// WAL into the database file and removes the `-wal` and `-shm` files. Writes queued before
    /// it still commit; later reads and writes fail. `Running::stop` calls it once the
    /// service's tasks have ended.
    pub async fn close(&self) {
        self.pool.close();
        self.writer.close().await;
        // deadpool drops pooled connections on blocking threads of their own, and only the
        // last connection to close removes the WAL: a short-lived one more, after them, does.
        let path = self.path.clone();
        let _ = tokio::task::spawn_blocking(move || remove_wal(&path)).await;
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction and returns once it committed; `f`'s
    /// changes are kept only if it returns `Ok`. Writes queued at the same moment share one
    /// commit (one fsync), each under its own savepoint (see `group_commit.rs`).
    pub async fn write<R, F>(&self, f: F) -> Result<R, DbError>
    where
        R: Send + 'static,
        F: FnOnce(&Transaction) -> Result<R, rusqlite::Error> + Send + 'static,
    {
        self.writer.write(f).await
    }
}

/// How long [`Db::close`] waits for other connections (a reader in the same process, a pooled
/// connection still being dropped) before it leaves the WAL to the next open.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

fn remove_wal(path: &Path) {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal = PathBuf::from(wal);
    let deadline = std::time::Instant::now() + CLOSE_WAIT;
    while wal.exists() {
        // A connection that read something and closes last checkpoints and deletes the WAL.
        if let Ok(conn) = Connection::open(path) {
            let _ = conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |_| Ok(()));
            let _ = conn.close();
        }
        if !wal.exists() || std::time::Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if wal.exists() {
        tracing::debug!(path = %path.display(), "another connection still has the database open; its WAL stays until the next open");
    }
}

/// Records `message_id` in the inbox. Returns `false` when it was there already, i.e. the
/// message was applied before and must not be applied again.
pub fn inbox_first_time(tx: &Transaction, message_id: &str) -> rusqlite::Result<bool> {
    let inserted = tx
        .prepare_cached("INSERT OR IGNORE INTO inbox (message_id) VALUES (?1)")?
        .execute(params![message_id])?;
    Ok(inserted == 1)
}

/// Stores `msg` in the outbox, to be published by the relay after the transaction commits.
pub fn outbox_enqueue(tx: &Transaction, msg: &OutgoingMessage) -> rusqlite::Result<()> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO outbox (message_id, exchange, routing_key, correlation_id, traceparent, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    insert.execute(params![
        msg.message_id,
        msg.exchange,
        msg.routing_key,
        msg.correlation_id,
        msg.traceparent,
        msg.body
    ])?;
    note_outbox_row(|| OutboxRow {
        id: tx.last_insert_rowid(),
        message: OutgoingMessage {
            reply_to: None,
            mandatory: true,
            ..msg.clone()
        },
    });
    Ok(())
}

/// A row of the outbox.
#[derive(Debug)]
pub(crate) struct OutboxRow {
    pub id: i64,
    pub message: OutgoingMessage,
}

pub(crate) fn outbox_batch(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<OutboxRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, message_id, exchange, routing_key, correlation_id, traceparent, body
         FROM outbox ORDER BY id LIMIT ?1",
    )?;
    let rows = stmt.query_map(params![limit as i64], |row| {
        Ok(OutboxRow {
            id: row.get(0)?,
            message: OutgoingMessage {
                message_id: row.get(1)?,
                exchange: row.get(2)?,
                routing_key: row.get(3)?,
                correlation_id: row.get(4)?,
                traceparent: row.get(5)?,
                body: row.get(6)?,
                reply_to: None,
                mandatory: true,
            },
        })
    })?;
    rows.collect()
}

pub(crate) fn outbox_settle(
    tx: &Transaction,
    sent: &[i64],
    failed: &[(i64, String)],
) -> rusqlite::Result<()> {
    let mut delete = tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?;
    for id in sent {
        delete.execute(params![id])?;
    }
    let mut keep = tx.prepare_cached(
        "UPDATE outbox SET attempts = attempts + 1, last_error = ?2 WHERE id = ?1",
    )?;
    for (id, error) in failed {
        keep.execute(params![id, error])?;
    }
    Ok(())
}

/// How many messages wait in the outbox (for metrics and tests).
pub async fn outbox_len(db: &Db) -> Result<i64, DbError> {
    db.call(|conn| conn.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0)))
        .await
}
