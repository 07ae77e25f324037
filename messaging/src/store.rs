//! SQLite access shared by the services: a pooled database, its inbox and its outbox schema.
//!
//! Every database is in WAL mode with `synchronous=FULL`, so a committed transaction survives a
//! crash of the process and of the machine; writes run in `BEGIN IMMEDIATE` transactions so two
//! writers queue on the busy timeout instead of failing on a lock upgrade.
//!
//! Writes go through one writer thread that commits them in groups (`group_commit.rs`); each runs
//! in a [`SqliteTx`], through which it records inbox ids and enqueues outbox rows, and which hands
//! the rows to the relay once they are committed, as [`crate::pg::PgTx`] does on PostgreSQL.
//!
//! The inbox stays bounded: the writer deletes rows older than [`InboxRetention`] in small
//! batches (see `group_commit.rs`). [`Db::close`] closes every connection, so a clean stop
//! leaves the database file alone, without `-wal` or `-shm` files.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deadpool_sqlite::rusqlite::{self, Connection, Transaction, params};
use deadpool_sqlite::{Config, Hook, HookError, Pool, QueueMode, Runtime};

use crate::envelope::OutgoingMessage;
use crate::group_commit::Writer;
use crate::handoff::{OutboxSink, take_fast_path};

pub use crate::db_error::DbError;
use crate::handoff::OutboxRow;
pub use crate::inbox_retention::InboxRetention;
pub use crate::sqlite_tx::SqliteTx;

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
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| DbError::open_sqlite(path, e))?;
        }
        let pool = Config::new(path)
            .builder(Runtime::Tokio1)
            .map_err(|e| DbError::open_sqlite(path, e))?
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
            .map_err(|e| DbError::open_sqlite(path, e))?;
        let conn = pool.get().await?;
        conn.interact(move |conn| {
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.execute_batch(MESSAGING_SCHEMA)?;
            conn.execute_batch(schema)
        })
        .await
        .map_err(DbError::from_interact)??;
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
        take_fast_path(&self.outbox_sink, capacity)
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
            .map_err(DbError::from_interact)?
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
    /// commit (one fsync; see `group_commit.rs`), so `f` may run twice — when another write of
    /// its group fails — and must have no effect outside the transaction; only its last run
    /// counts. The outbox rows `f` enqueued through its [`SqliteTx`] go to the relay once the
    /// commit is done.
    pub async fn write<R, F>(&self, f: F) -> Result<R, DbError>
    where
        R: Send + 'static,
        F: Fn(&SqliteTx) -> Result<R, DbError> + Send + 'static,
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
