//! Group commit on PostgreSQL: the consumers' writes that queue up while a transaction is
//! committing share the next one.
//!
//! On its own, every message is a transaction of its own: `BEGIN`, its statements, `COMMIT`
//! and the WAL flush behind it. Where many messages change one row (every reserve of a popular
//! product decrements its one `products` row) that row stays locked from the `UPDATE` to the
//! end of the flush, so the row takes one message per commit, whatever the machine could do
//! (≈ 200–340 reserves a second here). [`PgDb::write_in_batch`] queues the write for one of
//! [`LANES`] lanes instead; a lane takes every write waiting at that moment (up to
//! [`MAX_BATCH`]) and runs them in one transaction, so the row is locked once and flushed once
//! for the whole batch. It is the PostgreSQL form of SQLite's group commit (`group_commit.rs`).
//!
//! A lane runs a batch's writes in one of two ways:
//! - **together** (the usual way, [`run_together`]): all at once, each write's statements sent
//!   as soon as it issues them, no savepoints, so the batch costs the round trips of its longest
//!   write rather than the sum of all of them. If a write fails, the batch is rolled back: that
//!   write's caller gets its error, the others [`DbError::WriteDropped`] (retryable: their
//!   messages are redelivered), and the lane runs one by one for [`CAREFUL_FOR`];
//! - **one by one** ([`run_one_by_one`]): each write under a savepoint, sent with its first
//!   statement; an `Err` (or a panic) rolls back exactly its own changes and only its caller
//!   hears of it, the other writes of the batch go on.
//!
//! Either way a caller hears `Ok` only after the shared `COMMIT` returned, i.e. once its effect
//! is durable; if the commit fails, or the batch cannot go on (the connection broke), every kept
//! write of the batch gets an error and none of them is applied. The outbox rows of the kept
//! writes are inserted with the `COMMIT` (one statement, one round trip, as [`PgDb::write`]
//! does) and handed to this instance's relay after it.
//!
//! Lock order: the writes of a batch start in the order of their `lock_key` (the row they contend
//! for: a product id, an order id), so two lanes, or two instances, that lock several such rows
//! take them in the same order and do not deadlock on them. A deadlock PostgreSQL still finds
//! (rows outside the key, or a write's later statements run together with others) aborts that
//! batch: its writes get a retryable error.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::{Mutex as AsyncMutex, mpsc, oneshot};
use tokio_postgres::error::SqlState;
use tracing::warn;

use crate::db_error::DbError;
use crate::group_commit::{Report, report_after_commit};
use crate::handoff::{OutboxSink, hand_to_relay};
use crate::pg::{Begin, OpenTx, PgDb, PgTx};

/// Transactions one instance's batched writes run in at once. Two, so that one lane collects
/// and runs the next batch while the other waits for its flush.
pub const LANES: usize = 2;

/// At most this many writes share one transaction, so a batch never holds its locks for long.
pub const MAX_BATCH: usize = 64;

/// A queued write, its result type erased: run it in the open transaction, get its [`Ran`].
type Run = Box<dyn for<'t> FnOnce(&'t PgTx<'t>) -> BoxFuture<'t, Ran> + Send>;

pub(crate) struct Job {
    lock_key: String,
    run: Run,
}

/// A write that ran: whether its changes are kept (it returned `Ok`), and how to tell its
/// caller once the batch's commit is known (its error, shared by the batch, if it failed).
struct Ran {
    kept: bool,
    /// It failed only because another write of its batch had failed before it ("current
    /// transaction is aborted"), which happens when the writes run [together](run_together).
    victim: bool,
    report: Report<tokio_postgres::Error>,
}

impl Ran {
    /// It failed on its own account, not as the victim of another write of its batch.
    fn failed_itself(&self) -> bool {
        !self.kept && !self.victim
    }
}

/// Where [`PgDb::write_in_batch`] queues writes; the lanes start with the first one.
pub(crate) type Lanes = Arc<std::sync::OnceLock<mpsc::UnboundedSender<Job>>>;

/// What a lane needs of its [`PgDb`] (not the `PgDb` itself, which holds the queue: the lanes
/// end once every `PgDb` clone, and so the queue's sender, is gone).
#[derive(Clone)]
pub(crate) struct LaneContext {
    pub pool: Pool,
    pub instance: Arc<str>,
    pub lease_secs: f64,
    pub sink: OutboxSink,
}

impl PgDb {
    /// Runs `f` in the next batch transaction of this instance (see the module doc) and returns
    /// once that transaction committed. `lock_key` names the row the write contends for; the
    /// writes of a batch run in its order.
    ///
    /// Unlike [`PgDb::write`], `f` shares its transaction: it must not end it, change its
    /// isolation, or rely on being its first statement.
    pub async fn write_in_batch<R, F>(
        &self,
        lock_key: impl Into<String>,
        f: F,
    ) -> Result<R, DbError>
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t PgTx<'t>) -> BoxFuture<'t, Result<R, tokio_postgres::Error>>
            + Send
            + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<R, DbError>>();
        let run: Run = Box::new(move |tx| {
            Box::pin(async move {
                let mut victim = false;
                let outcome = match AssertUnwindSafe(f(tx)).catch_unwind().await {
                    Ok(Ok(value)) => Ok(value),
                    Ok(Err(e)) => {
                        victim = e.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION);
                        Err(DbError::from(e))
                    }
                    Err(_) => Err(DbError::Panicked),
                };
                Ran {
                    kept: outcome.is_ok(),
                    victim,
                    report: report_after_commit(outcome, reply, DbError::PgGroupCommit),
                }
            })
        });
        let job = Job {
            lock_key: lock_key.into(),
            run,
        };
        self.batch_queue()
            .send(job)
            .map_err(|_| DbError::WriterStopped)?;
        answer.await.map_err(|_| DbError::WriteDropped)?
    }

    fn batch_queue(&self) -> &mpsc::UnboundedSender<Job> {
        self.lanes().get_or_init(|| {
            let (queue, jobs) = mpsc::unbounded_channel();
            let jobs = Arc::new(AsyncMutex::new(jobs));
            for _ in 0..LANES {
                tokio::spawn(lane(self.lane_context(), jobs.clone()));
            }
            queue
        })
    }
}

/// Takes the writes waiting (at least one, at most [`MAX_BATCH`]) and runs them as one
/// transaction, until every sender is gone.
async fn lane(context: LaneContext, jobs: Arc<AsyncMutex<mpsc::UnboundedReceiver<Job>>>) {
    let mut careful_until: Option<Instant> = None;
    loop {
        let mut batch = Vec::new();
        {
            let mut jobs = jobs.lock().await;
            if jobs.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return;
            }
        }
        metrics::histogram!("pg_batch_size").record(batch.len() as f64);
        batch.sort_by(|a, b| a.lock_key.cmp(&b.lock_key));
        if careful_until.is_some_and(|until| Instant::now() < until) {
            run_one_by_one(&context, batch).await;
        } else if run_together(&context, batch).await == Together::WriteFailed {
            careful_until = Some(Instant::now() + CAREFUL_FOR);
        }
    }
}

/// How long a lane runs its writes one by one, each under a savepoint, after a batch in which a
/// write failed: long enough for the writes of that batch to be retried (their messages
/// redelivered), so that each then fails or succeeds on its own.
const CAREFUL_FOR: Duration = Duration::from_secs(5);

/// How [`run_together`] ended.
#[derive(Debug, PartialEq, Eq)]
enum Together {
    /// Committed, or the transaction could not begin or commit (every write told).
    Done,
    /// A write failed: the batch was rolled back.
    WriteFailed,
}

/// Opens the batch's transaction, or says why not (its writes are then dropped, and their
/// callers get the retryable [`DbError::WriteDropped`]).
async fn begin(context: &LaneContext, writes: usize) -> Option<OpenTx> {
    let open = match context.pool.get().await {
        Ok(client) => OpenTx::begin(client, Begin::Plain)
            .await
            .map_err(DbError::from),
        Err(e) => Err(DbError::from(e)),
    };
    match open {
        Ok(open) => Some(open),
        Err(e) => {
            warn!(error = %e, writes, "could not begin a batch of writes; they will be retried");
            None
        }
    }
}

/// Runs the writes of `batch` all at once in one transaction, without savepoints: each write's
/// statements go out as soon as it issues them, so the whole batch costs the round trips of its
/// longest write, not the sum of all of them (on a busy machine each round trip waits for the
/// backend to be scheduled: docs/benchmarks.md, session 10). The first statements go out in
/// lock-key order.
///
/// If every write succeeds, the batch commits as in [`run_one_by_one`]. If one fails, nothing of
/// the batch can be kept (its statements are interleaved with the others', and the transaction
/// is aborted): the batch is rolled back, the writes that failed get their own error, the others
/// the retryable [`DbError::WriteDropped`] (their messages are retried), and the lane runs the
/// next batches [one by one](run_one_by_one) for [`CAREFUL_FOR`].
async fn run_together(context: &LaneContext, batch: Vec<Job>) -> Together {
    let writes = batch.len();
    let Some(open) = begin(context, writes).await else {
        return Together::Done;
    };
    let txs: Vec<PgTx<'_>> = batch.iter().map(|_| PgTx::new(open.client())).collect();
    let runs = batch.into_iter().zip(&txs).map(|(job, tx)| (job.run)(tx));
    let ran: Vec<Ran> = futures::future::join_all(runs).await;
    if ran.iter().all(|r| r.kept) {
        let pending = txs.into_iter().flat_map(PgTx::into_enqueued).collect();
        let reports = ran.into_iter().map(|r| r.report).collect();
        commit_and_report(context, open, pending, reports, writes).await;
        return Together::Done;
    }
    drop(txs);
    open.rollback().await;
    let failed = ran.iter().filter(|r| r.failed_itself()).count();
    warn!(
        writes,
        failed,
        "a write of a batch failed: the batch is rolled back, its other writes will be retried, and the next batches run their writes one by one for a while"
    );
    for ran in ran {
        if ran.failed_itself() {
            (ran.report)(None);
        }
    }
    Together::WriteFailed
}

/// Runs `batch`'s writes one after the other in one transaction, each under a savepoint, and
/// tells each write how it went: a write that fails rolls back to its savepoint and only its
/// caller hears of it. When the transaction cannot begin or go on, the writes not yet reported
/// are dropped: their callers get [`DbError::WriteDropped`], which is retryable, and nothing of
/// the batch is kept.
async fn run_one_by_one(context: &LaneContext, batch: Vec<Job>) {
    let writes = batch.len();
    let Some(open) = begin(context, writes).await else {
        return;
    };
    let mut reports = Vec::with_capacity(writes);
    let mut pending = Vec::new();
    // Whether the previous write's savepoint is still open (released with the next one's).
    let mut savepoint = false;
    for job in batch {
        let tx = PgTx::new(open.client());
        let start = if savepoint {
            "RELEASE SAVEPOINT w; SAVEPOINT w"
        } else {
            "SAVEPOINT w"
        };
        // Pipelined: the savepoint goes out with the write's first statement.
        let (started, ran) =
            futures::future::join(open.client().batch_execute(start), (job.run)(&tx)).await;
        if let Err(e) = started {
            warn!(error = %e, writes, "a batch of writes broke off; they will be retried");
            return;
        }
        if ran.kept {
            pending.extend(tx.into_enqueued());
            savepoint = true;
        } else {
            let undone = open
                .client()
                .batch_execute("ROLLBACK TO SAVEPOINT w; RELEASE SAVEPOINT w")
                .await;
            if let Err(e) = undone {
                warn!(error = %e, writes, "a batch of writes broke off; they will be retried");
                return;
            }
            savepoint = false;
        }
        reports.push(ran.report);
    }
    commit_and_report(context, open, pending, reports, writes).await;
}

/// Commits the batch with the outbox rows of its kept writes, hands those to the relay, and
/// tells every write (the commit's error, if it failed).
async fn commit_and_report(
    context: &LaneContext,
    open: OpenTx,
    pending: Vec<crate::OutgoingMessage>,
    reports: Vec<Report<tokio_postgres::Error>>,
    writes: usize,
) {
    match open
        .commit(pending, &context.instance, context.lease_secs)
        .await
    {
        Ok(rows) => {
            hand_to_relay(&context.sink, rows);
            for report in reports {
                report(None);
            }
        }
        Err(e) => {
            warn!(error = %e, writes, "a batch of writes failed to commit; they will be retried");
            let e = Arc::new(e);
            for report in reports {
                report(Some(e.clone()));
            }
        }
    }
}
