//! Group commit: one writer thread per database that runs every queued write transaction of
//! the moment inside a single `BEGIN IMMEDIATE … COMMIT`.
//!
//! With `synchronous=FULL` every commit is an fsync, and SQLite has one writer at a time, so
//! committing each consumer's write on its own caps a service at one message per fsync. Here
//! the writes that queued up while the previous commit was syncing share the next commit.
//! The writer also waits up to `SQLITE_COMMIT_DELAY_US` (1 ms) for more writes before it commits
//! a group that has room, so that a steady trickle shares commits too ([`commit_delay_from_env`]).
//! Nothing about a single write changes: an `Err` (or a panic) undoes exactly its own changes
//! (the others commit), and its caller hears `Ok` only after the shared `COMMIT` returned, i.e.
//! once its effect is durable. If the commit itself fails, every write of the group gets the
//! error and none of them is applied.
//!
//! How a failure undoes only its own write: the group first runs with no savepoints at all, and
//! almost always every write succeeds and the group commits. If one fails, the whole
//! transaction is rolled back and the group runs again, each write under a savepoint of its own
//! (`ROLLBACK TO` it on failure). A savepoint per write on every group cost a statement journal:
//! SQLite copies each page a write is about to change, once per savepoint, so that it could put
//! it back (`memjrnlWrite`, page copies of 4 KiB: ≈ 5 % of the publisher's CPU at saturation in
//! session 16's profile; without them orders, products and the publisher cost 5–6 % less per
//! order, docs/benchmarks.md, session 17). That is why a write is an `Fn`: it may run twice, and
//! only the outcome of its last run counts.
//!
//! Each write runs in a [`SqliteTx`] of its own, which collects the outbox rows the write
//! enqueued. The rows of a write that succeeded (in its last run) are handed to the outbox relay
//! after the group's commit succeeded (the relay's fast path, see `handoff.rs` and `outbox.rs`),
//! so the relay need not read them back. A rolled-back write's rows are forgotten with it; a row that
//! does not fit in the channel stays in the table for the relay's poll.
//!
//! Between groups the writer also keeps the inbox bounded: every [`InboxRetention::every`] it
//! deletes a batch of rows older than the retention in a transaction of its own (the next
//! batch right after the next group while a backlog lasts), so pruning never competes with the
//! writes for SQLite's one write lock. [`Writer::close`] ends the thread after the writes queued
//! before it, and closes its connection and the checkpointer's.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use deadpool_sqlite::rusqlite::{self, Connection, Transaction, TransactionBehavior};
use tokio::sync::oneshot;

use crate::config::{ConfigError, env_or};
use crate::db_error::DbError;
use crate::handoff::{OutboxRow, OutboxSink, hand_to_relay};
use crate::inbox_retention::{InboxRetention, PRUNE_BATCH, prune_inbox};
use crate::sqlite_tx::SqliteTx;

// `pg.rs` names the sink by this path.

/// At most this many writes share one commit, so one commit never holds the lock for long.
const MAX_GROUP: usize = 256;

/// A write as the writer thread sees it: it can run (again) on the open transaction, and then
/// be told how the commit went.
type Job = Box<dyn Write + Send>;

/// Whether a write runs under a savepoint of its own (see the module doc).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Guard {
    /// Straight in the group's transaction: a failure means the whole group runs again.
    Bare,
    /// Between `SAVEPOINT` and `RELEASE`: a failure rolls back this write only.
    Savepoint,
}

/// One queued write: its closure, the outcome of its last run, and its caller's answer.
trait Write {
    /// Runs the write in `tx`, replacing the outcome of an earlier run; returns whether it
    /// succeeded. With [`Guard::Bare`] a failed write may leave changes behind, which the
    /// caller must roll back with the whole transaction.
    fn run(&mut self, tx: &Transaction, guard: Guard) -> bool;
    /// The outbox rows its last run enqueued (none if it failed), for the relay.
    fn take_enqueued(&mut self) -> Vec<OutboxRow>;
    /// Answers the caller once the commit returned (`Some`: it failed with that error).
    fn answer(self: Box<Self>, commit_error: Option<Arc<rusqlite::Error>>);
}

/// The [`Write`] of [`Writer::write`]: `f` and what its last run left.
struct Queued<R, F> {
    f: F,
    outcome: Option<Result<(R, Vec<OutboxRow>), DbError>>,
    reply: oneshot::Sender<Result<R, DbError>>,
}

impl<R, F> Write for Queued<R, F>
where
    R: Send + 'static,
    F: Fn(&SqliteTx) -> Result<R, DbError>,
{
    fn run(&mut self, tx: &Transaction, guard: Guard) -> bool {
        let outcome = match guard {
            Guard::Bare => run_bare(tx, &self.f),
            Guard::Savepoint => run_in_savepoint(tx, &self.f),
        };
        let succeeded = outcome.is_ok();
        self.outcome = Some(outcome);
        succeeded
    }

    fn take_enqueued(&mut self) -> Vec<OutboxRow> {
        match &mut self.outcome {
            Some(Ok((_, enqueued))) => std::mem::take(enqueued),
            _ => Vec::new(),
        }
    }

    fn answer(self: Box<Self>, commit_error: Option<Arc<rusqlite::Error>>) {
        let outcome = match (self.outcome, &commit_error) {
            (Some(outcome), _) => outcome.map(|(value, _)| value),
            // It never ran: the group's transaction failed before it (see `run_group`).
            (None, Some(e)) => Err(DbError::GroupCommit(e.clone())),
            (None, None) => Err(DbError::WriteDropped),
        };
        let _ = (self.reply).send(outcome_after_commit(
            outcome,
            commit_error,
            DbError::GroupCommit,
        ));
    }
}

/// Tells the caller of one write of a shared transaction how it went, once the commit is known
/// (`Some`: the commit failed with that error, shared by every write of the transaction).
pub(crate) type Report<E> = Box<dyn FnOnce(Option<Arc<E>>) + Send>;

/// What the caller of a write whose own `outcome` is known hears once the commit returned: its
/// own error if it failed, else the commit's error (as `commit_failed` names it) if that failed,
/// else its value.
fn outcome_after_commit<R, E>(
    outcome: Result<R, DbError>,
    commit_error: Option<Arc<E>>,
    commit_failed: fn(Arc<E>) -> DbError,
) -> Result<R, DbError> {
    match (commit_error, outcome) {
        (Some(e), Ok(_)) => Err(commit_failed(e)),
        (_, outcome) => outcome,
    }
}

/// The [`Report`] of [`outcome_after_commit`], for PostgreSQL's batches (`pg_batch.rs`), which
/// keep their writes' reports until the batch's commit returned.
pub(crate) fn report_after_commit<R, E>(
    outcome: Result<R, DbError>,
    reply: oneshot::Sender<Result<R, DbError>>,
    commit_failed: fn(Arc<E>) -> DbError,
) -> Report<E>
where
    R: Send + 'static,
    E: Send + Sync + 'static,
{
    Box::new(move |commit_error: Option<Arc<E>>| {
        let _ = reply.send(outcome_after_commit(outcome, commit_error, commit_failed));
    })
}

/// What the writer thread is asked to do.
enum Request {
    Write(Job),
    /// Finish the writes queued before this, close the connections, then answer.
    Close(oneshot::Sender<()>),
}

/// The sending half; cloning it shares the writer thread.
#[derive(Clone)]
pub(crate) struct Writer {
    jobs: mpsc::Sender<Request>,
}

impl Writer {
    /// Opens its own connection to `path` (already created and in WAL mode) and starts the
    /// writer thread; the thread ends when every `Writer` clone is dropped.
    pub(crate) fn start(
        path: &Path,
        sink: OutboxSink,
        retention: InboxRetention,
    ) -> Result<Self, DbError> {
        let open_err = |reason: String| DbError::Open {
            path: path.display().to_string(),
            reason,
        };
        let delay = commit_delay_from_env()?;
        let conn = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Every write of a group runs under a savepoint, so SQLite keeps a statement journal
        // (the pages a savepoint may have to put back). Past 64 KiB it spills that journal to a
        // temporary file: a group of a few dozen writes created, wrote page by page and deleted
        // one such file per commit (strace of the publisher's writer at saturation: ≈ 350
        // `pwrite`s and one `openat`/`unlink` per commit). In memory it is a copy, not a syscall;
        // it is bounded by one group (at most `MAX_GROUP` writes) and gone at the commit.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        // Every statement of every write is prepared once (prepare_cached), not parsed per use.
        conn.set_prepared_statement_cache_capacity(64);
        // A thread of its own copies the WAL back into the database (below), so the checkpoint
        // SQLite still runs inside the commit that crosses 1000 WAL pages finds little left to
        // copy instead of stalling every write queued behind it. That in-commit checkpoint
        // stays: only it runs with no writer active, so only it lets the next write start the
        // WAL over (with background checkpoints alone the WAL grew by 200-400 MB a minute).
        let checkpointer = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
        let (writer_alive, writer_gone) = mpsc::channel::<()>();
        let checkpoints = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint(checkpointer, writer_gone))
            .map_err(|e| open_err(e.to_string()))?;
        let (jobs, queue) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                // Returns (closing its connection) on `Close` or when every `Writer` is gone.
                let closed = serve(conn, queue, sink, Pruner::new(retention), delay);
                drop(writer_alive);
                let _ = checkpoints.join();
                if let Some(closed) = closed {
                    let _ = closed.send(());
                }
            })
            .map_err(|e| open_err(e.to_string()))?;
        Ok(Self { jobs })
    }

    /// Lets the writes queued so far commit, then closes the writer's and the checkpointer's
    /// connections; returns once they are closed. Later writes fail.
    pub(crate) async fn close(&self) {
        let (closed, done) = oneshot::channel();
        if self.jobs.send(Request::Close(closed)).is_ok() {
            let _ = done.await;
        }
    }

    /// Runs `f` in the next group transaction and returns once that transaction committed.
    /// `f` may run twice (see the module doc); only its last run's changes and value count.
    pub(crate) async fn write<R, F>(&self, f: F) -> Result<R, DbError>
    where
        R: Send + 'static,
        F: Fn(&SqliteTx) -> Result<R, DbError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<R, DbError>>();
        let job: Job = Box::new(Queued {
            f,
            outcome: None,
            reply,
        });
        self.jobs
            .send(Request::Write(job))
            .map_err(|_| DbError::WriterStopped)?;
        answer.await.map_err(|_| DbError::WriteDropped)?
    }
}

/// Runs `f` in a [`SqliteTx`] straight in the group's transaction; on success, returns its
/// value and the outbox rows it enqueued. A failure or panic may leave some of its changes.
fn run_bare<R, F>(tx: &Transaction, f: &F) -> Result<(R, Vec<OutboxRow>), DbError>
where
    F: Fn(&SqliteTx) -> Result<R, DbError>,
{
    let write = SqliteTx::new(tx);
    match catch_unwind(AssertUnwindSafe(|| f(&write))) {
        Ok(Ok(value)) => Ok((value, write.into_enqueued())),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(DbError::Panicked),
    }
}

/// [`run_bare`] between `SAVEPOINT` and `RELEASE`, rolling its changes back when it fails or
/// panics.
fn run_in_savepoint<R, F>(tx: &Transaction, f: &F) -> Result<(R, Vec<OutboxRow>), DbError>
where
    F: Fn(&SqliteTx) -> Result<R, DbError>,
{
    tx.prepare_cached("SAVEPOINT w")?.execute([])?;
    let outcome = run_bare(tx, f);
    if outcome.is_err() {
        tx.prepare_cached("ROLLBACK TO w")?.execute([])?;
    }
    tx.prepare_cached("RELEASE w")?.execute([])?;
    outcome
}

/// Runs groups of writes and inbox pruning until asked to close (returns who asked) or until
/// every `Writer` is dropped (returns `None`); the connection closes on return.
fn serve(
    mut conn: Connection,
    queue: mpsc::Receiver<Request>,
    sink: OutboxSink,
    mut pruner: Pruner,
    delay: Duration,
) -> Option<oneshot::Sender<()>> {
    loop {
        let mut group = Vec::new();
        let mut closing = None;
        match queue.recv_timeout(pruner.until_due()) {
            Ok(Request::Write(job)) => group.push(job),
            Ok(Request::Close(closed)) => closing = Some(closed),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return None,
        }
        let gather_until = Instant::now() + delay;
        while closing.is_none() && !group.is_empty() && group.len() < MAX_GROUP {
            match next_within(&queue, gather_until) {
                Some(Request::Write(job)) => group.push(job),
                Some(Request::Close(closed)) => closing = Some(closed),
                None => break,
            }
        }
        if !group.is_empty() {
            commit_group(&mut conn, group, &sink);
        }
        if closing.is_some() {
            return closing;
        }
        pruner.run_if_due(&conn);
    }
}

/// The next request queued, waiting for one until `until` at most.
fn next_within(queue: &mpsc::Receiver<Request>, until: Instant) -> Option<Request> {
    match queue.try_recv() {
        Ok(request) => Some(request),
        Err(mpsc::TryRecvError::Empty) => {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            queue.recv_timeout(left).ok()
        }
        Err(mpsc::TryRecvError::Disconnected) => None,
    }
}

/// Runs `group` in one transaction and tells each write how the commit went.
fn commit_group(conn: &mut Connection, mut group: Vec<Job>, sink: &OutboxSink) {
    metrics::histogram!("sqlite_group_commit_size").record(group.len() as f64);
    let started = Instant::now();
    let commit_error = run_group(conn, &mut group).err().map(|e| {
        tracing::warn!(error = %e, writes = group.len(), "could not commit a group of writes");
        Arc::new(e)
    });
    metrics::histogram!("sqlite_group_commit_seconds").record(started.elapsed().as_secs_f64());
    if commit_error.is_none() {
        // The writes ran in order on one connection, so their rows are in id order.
        let committed = group
            .iter_mut()
            .flat_map(|job| job.take_enqueued())
            .collect();
        hand_to_relay(sink, committed);
    }
    for job in group {
        job.answer(commit_error.clone());
    }
}

/// Runs every write of `group` in a new transaction and commits it: all of them bare first; if
/// one fails, that transaction is rolled back and they run again in a new one, each under a
/// savepoint of its own (see the module doc).
fn run_group(conn: &mut Connection, group: &mut [Job]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if group.iter_mut().all(|job| job.run(&tx, Guard::Bare)) {
        return tx.commit();
    }
    // Dropping it rolls it back (unless SQLite already did, after an I/O error say).
    drop(tx);
    if group.len() == 1 {
        // Alone, the write's own failure was all there was to undo.
        return Ok(());
    }
    metrics::counter!("sqlite_group_reruns_total").increment(1);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for job in group.iter_mut() {
        job.run(&tx, Guard::Savepoint);
    }
    tx.commit()
}

/// When the writer next deletes a batch of old inbox rows.
struct Pruner {
    retention: InboxRetention,
    next: Instant,
}

impl Pruner {
    fn new(retention: InboxRetention) -> Self {
        Self {
            retention,
            // Not at once: a service that just started has other things to do first.
            next: Instant::now() + retention.every,
        }
    }

    fn until_due(&self) -> Duration {
        self.next.saturating_duration_since(Instant::now())
    }

    /// Deletes one batch (its own transaction, autocommit) when due. A full batch means more
    /// are waiting: the next is due at once, after the writes that queued meanwhile.
    fn run_if_due(&mut self, conn: &Connection) {
        if Instant::now() < self.next {
            return;
        }
        let mut again_in = self.retention.every;
        match prune_inbox(conn, self.retention.keep, PRUNE_BATCH) {
            Ok(deleted) => {
                metrics::counter!("inbox_pruned_total").increment(deleted as u64);
                if deleted == PRUNE_BATCH {
                    again_in = Duration::ZERO;
                }
                if deleted > 0 {
                    tracing::debug!(
                        deleted,
                        keep_secs = self.retention.keep.as_secs(),
                        "deleted inbox rows older than the retention"
                    );
                }
            }
            Err(e) => tracing::warn!(
                error = %e,
                "could not delete old inbox rows; will try again at the next pass"
            ),
        }
        self.next = Instant::now() + again_in;
    }
}

/// `SQLITE_COMMIT_DELAY_US`: how long the writer waits for more writes before it commits a group
/// that has room (default [`DEFAULT_COMMIT_DELAY_US`]; 0 commits whatever is queued at once).
///
/// Without it the writer committed as soon as one write arrived: at saturation the publisher's
/// median group was a single write (≈ 290 commits a second), and every commit writes each page it
/// touched to the WAL again and syncs it. Gathering for 1 ms makes groups larger and commits
/// fewer: −4 % CPU per order in all at 600 orders/s, −6 % at saturation, and a *lower* p99 at
/// 600/s (66–79 ms against 89–107) because the writers keep up with less work; 3 ms cost
/// latency (p99 136–179 ms) for little more (docs/benchmarks.md, session 15).
pub fn commit_delay_from_env() -> Result<Duration, ConfigError> {
    commit_delay(env_or("SQLITE_COMMIT_DELAY_US", DEFAULT_COMMIT_DELAY_US)?)
}

/// Checks a commit delay of `us` microseconds (the value of `SQLITE_COMMIT_DELAY_US`).
fn commit_delay(us: u64) -> Result<Duration, ConfigError> {
    if us > MAX_COMMIT_DELAY_US {
        return Err(ConfigError::Invalid {
            name: "SQLITE_COMMIT_DELAY_US".into(),
            value: us.to_string(),
            reason: format!(
                "at most {MAX_COMMIT_DELAY_US} (microseconds): every write waits up to this long"
            ),
        });
    }
    Ok(Duration::from_micros(us))
}

/// 1 ms (see [`commit_delay_from_env`]).
pub const DEFAULT_COMMIT_DELAY_US: u64 = 1_000;
/// 100 ms: more would add a visible pause to every write.
const MAX_COMMIT_DELAY_US: u64 = 100_000;

/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Runs a `PASSIVE` checkpoint every [`CHECKPOINT_EVERY`] until the writer thread ends, and
/// publishes the WAL's length and SQLite's memory as it goes (off the commit path).
///
/// A passive checkpoint never blocks the writer or readers; it copies what it can. Durability
/// does not depend on it: with `synchronous=FULL` a commit is durable in the WAL.
fn checkpoint(conn: Connection, writer_gone: mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = writer_gone.recv_timeout(CHECKPOINT_EVERY) {
        let frames = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1));
        match frames {
            Ok(frames) => metrics::gauge!("sqlite_wal_frames").set(frames as f64),
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed; will try again"),
        }
        record_sqlite_memory();
    }
}

/// Publishes how much memory SQLite holds in this process (page caches of every connection,
/// prepared statements), so that a growing RSS can be told apart from a growing page cache.
fn record_sqlite_memory() {
    // SAFETY: sqlite3_memory_used only reads SQLite's global memory counter.
    let used = unsafe { rusqlite::ffi::sqlite3_memory_used() };
    metrics::gauge!("sqlite_memory_bytes").set(used as f64);
}

#[cfg(test)]
mod tests {
    use crate::store::Db;

    #[test]
    fn a_commit_delay_is_bounded_and_its_error_names_the_variable() {
        use std::time::Duration;
        assert_eq!(super::commit_delay(0).unwrap(), Duration::ZERO);
        assert_eq!(
            super::commit_delay(1_000).unwrap(),
            Duration::from_millis(1)
        );
        let refused = super::commit_delay(100_001).unwrap_err().to_string();
        assert!(refused.contains("SQLITE_COMMIT_DELAY_US"), "{refused}");
    }

    const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT NOT NULL);";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_committed_outbox_rows_reach_the_relay() {
        use crate::envelope::OutgoingMessage;
        let dir = std::env::temp_dir().join(format!("group-commit-{}", uuid::Uuid::new_v4()));
        let db = Db::open(&dir.join("t.db"), SCHEMA).await.unwrap();
        let mut rows = db.committed_outbox_rows(16).unwrap();
        assert!(
            db.committed_outbox_rows(16).is_none(),
            "one relay per database"
        );
        let mut writes = Vec::new();
        for i in 0..6i64 {
            let db = db.clone();
            writes.push(tokio::spawn(async move {
                db.write(move |tx| {
                    let msg = OutgoingMessage::json("ex", "key", Some(&i.to_string()), &i)?;
                    tx.enqueue(&msg)?;
                    if i % 3 == 0 {
                        // Fails after its outbox row was written: the row must vanish.
                        tx.execute("INSERT INTO t (id, v) VALUES (?1, NULL)", [i])?;
                    }
                    Ok(())
                })
                .await
            }));
        }
        for write in writes {
            let _ = write.await.unwrap();
        }
        let mut handed = Vec::new();
        while let Ok(row) = rows.try_recv() {
            handed.push(row);
        }
        let mut orders: Vec<String> = handed
            .iter()
            .filter_map(|r| r.message.correlation_id.clone())
            .collect();
        orders.sort();
        assert_eq!(orders, ["1", "2", "4", "5"]);
        assert!(handed.windows(2).all(|w| w[0].id < w[1].id), "commit order");
        let in_table: Vec<i64> = db
            .call(|c| {
                let mut stmt = c.prepare("SELECT id FROM outbox ORDER BY id")?;
                let ids = stmt.query_map([], |r| r.get(0))?;
                ids.collect()
            })
            .await
            .unwrap();
        assert_eq!(in_table, handed.iter().map(|r| r.id).collect::<Vec<_>>());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A group of `writes` writes (a failing one at `failing`, if any) committed on a fresh
    /// database; returns how often each write ran, the callers' answers and the rows left.
    fn commit_counted(writes: i64, failing: Option<i64>) -> (Vec<usize>, Vec<bool>, Vec<i64>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, OnceLock};

        use super::{Job, Queued, commit_group};

        let mut conn = deadpool_sqlite::rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let runs: Vec<Arc<AtomicUsize>> = (0..writes).map(|_| Arc::default()).collect();
        let mut answers = Vec::new();
        let group: Vec<Job> = (0..writes)
            .map(|i| {
                let (reply, answer) = tokio::sync::oneshot::channel();
                answers.push(answer);
                let runs = runs[i as usize].clone();
                Box::new(Queued {
                    f: move |tx: &crate::sqlite_tx::SqliteTx| {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tx.execute("INSERT INTO t (id, v) VALUES (?1, 'x')", [i])?;
                        if failing == Some(i) {
                            // After a successful insert of its own: both must vanish.
                            tx.execute("INSERT INTO t (id, v) VALUES (?1, NULL)", [1000 + i])?;
                        }
                        Ok(i)
                    },
                    outcome: None,
                    reply,
                }) as Job
            })
            .collect();
        commit_group(&mut conn, group, &Arc::new(OnceLock::new()));
        let answered = answers
            .into_iter()
            .map(|mut a| a.try_recv().unwrap().is_ok())
            .collect();
        let mut stmt = conn.prepare("SELECT id FROM t ORDER BY id").unwrap();
        let rows = stmt.query_map([], |r| r.get(0)).unwrap();
        let rows = rows.collect::<Result<_, _>>().unwrap();
        let runs = runs.iter().map(|r| r.load(Ordering::SeqCst)).collect();
        (runs, answered, rows)
    }

    #[test]
    fn a_group_runs_each_write_once_unless_one_of_them_fails() {
        let (runs, answered, rows) = commit_counted(4, None);
        assert_eq!(runs, [1, 1, 1, 1]);
        assert_eq!(answered, [true; 4]);
        assert_eq!(rows, [0, 1, 2, 3]);

        // The third fails: the first two ran bare, were rolled back with it and ran again under
        // savepoints; the fourth ran only in the second round. Only the third's changes vanish.
        let (runs, answered, rows) = commit_counted(4, Some(2));
        assert_eq!(runs, [2, 2, 2, 1]);
        assert_eq!(answered, [true, true, false, true]);
        assert_eq!(rows, [0, 1, 3]);

        // A write alone that fails is not run again, and leaves nothing.
        let (runs, answered, rows) = commit_counted(1, Some(0));
        assert_eq!((runs, answered, rows), (vec![1], vec![false], vec![]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_write_rolls_back_only_itself() {
        let dir = std::env::temp_dir().join(format!("group-commit-{}", uuid::Uuid::new_v4()));
        let db = Db::open(&dir.join("t.db"), SCHEMA).await.unwrap();
        let mut writes = Vec::new();
        for i in 0..50i64 {
            let db = db.clone();
            writes.push(tokio::spawn(async move {
                db.write(move |tx| {
                    tx.execute("INSERT INTO t (id, v) VALUES (?1, 'x')", [i])?;
                    if i % 5 == 0 {
                        // NOT NULL violation after a successful insert: both must vanish.
                        tx.execute("INSERT INTO t (id, v) VALUES (?1, NULL)", [1000 + i])?;
                    }
                    Ok(i)
                })
                .await
            }));
        }
        let mut failed = 0;
        for write in writes {
            if write.await.unwrap().is_err() {
                failed += 1;
            }
        }
        assert_eq!(failed, 10);
        let (rows, failed_rows): (i64, i64) = db
            .call(|c| {
                c.query_row(
                    "SELECT COUNT(*), COUNT(*) FILTER (WHERE id % 5 = 0 OR id >= 1000) FROM t",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
            })
            .await
            .unwrap();
        assert_eq!((rows, failed_rows), (40, 0));
        let _ = std::fs::remove_dir_all(dir);
    }
}
