//! How long the inbox remembers applied message ids ([`InboxRetention`]), and the SQLite
//! pass that forgets older ones ([`prune_inbox`], run by the writer between groups, see
//! `group_commit.rs`; PostgreSQL prunes in `pg.rs`).

use std::time::Duration;

use deadpool_sqlite::rusqlite::{self, Connection, params};

use crate::config::{ConfigError, env_or};

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
