//! [`DbError`], what a store operation on either backend (SQLite `store.rs`, PostgreSQL
//! `pg.rs`) fails with. Every variant that wraps another error keeps it as its `source`, so
//! the chain reaches the log intact.

use std::sync::Arc;

use deadpool_sqlite::rusqlite;

use crate::config::ConfigError;

/// What opening a SQLite database failed on (a directory, the pool, a connection, a thread).
pub type OpenError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The PostgreSQL pool could not be built (see `pg.rs`).
    #[error("could not open database {path}: {reason}")]
    Open { path: String, reason: String },
    /// The SQLite file, its pool or its writer could not be set up.
    #[error("could not open database {path}: {source}")]
    OpenSqlite {
        path: String,
        #[source]
        source: OpenError,
    },
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_sqlite::PoolError),
    /// A closure given to `Db::call` or `Db::write` panicked (its changes were rolled back);
    /// the panic's payload is not an error, so only the fact is kept.
    #[error("database worker: a database closure panicked")]
    Panicked,
    /// The closure given to `Db::call` was cancelled before it ran.
    #[error("database worker: the read was cancelled")]
    Cancelled,
    #[error("database worker: the database writer stopped")]
    WriterStopped,
    #[error("database worker: the database writer dropped a write")]
    WriteDropped,
    /// The shared `COMMIT` of a group of writes failed: none of them is applied.
    #[error("database worker: group commit failed: {0}")]
    GroupCommit(#[source] Arc<rusqlite::Error>),
    /// The fast path of committed outbox rows has one reader, and it is taken.
    #[error("this database already has an outbox relay")]
    RelayTaken,
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A message or a stored document could not be written as JSON.
    #[error("JSON encoding: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The shared `COMMIT` of a batch of PostgreSQL writes (`pg_batch.rs`) failed: none of them
    /// is applied.
    #[error("postgres: batch commit failed: {}", described(.0))]
    PgGroupCommit(#[source] Arc<tokio_postgres::Error>),
    #[error("postgres: {}", described(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgres pool: {0}")]
    PgPool(#[from] deadpool_postgres::PoolError),
    #[error(
        "the database schema is at version {found}, newer than this binary knows ({known}); run the newer release or restore the database"
    )]
    SchemaTooNew { found: i64, known: i64 },
    #[error("migration {version} ({name}) failed: {}", described(.source))]
    Migration {
        version: i64,
        name: &'static str,
        source: tokio_postgres::Error,
    },
}

/// A PostgreSQL error as an operator reads it. tokio-postgres shows a server's error only as
/// "db error" and keeps the server's words in its source; they are what tells what went wrong
/// (`invalid byte sequence …`, `deadlock detected`), so they go into the message.
pub fn described(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{e}: {}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
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

    /// `Db::call`'s closure did not return: it panicked or was cancelled.
    pub(crate) fn from_interact(e: deadpool_sqlite::InteractError) -> Self {
        match e {
            deadpool_sqlite::InteractError::Panic(_) => Self::Panicked,
            deadpool_sqlite::InteractError::Cancelled => Self::Cancelled,
        }
    }

    pub(crate) fn open_sqlite(path: &std::path::Path, source: impl Into<OpenError>) -> Self {
        Self::OpenSqlite {
            path: path.display().to_string(),
            source: source.into(),
        }
    }
}
