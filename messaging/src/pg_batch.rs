//! Group commit on PostgreSQL: the consumers' writes that queue up while a transaction is
//! committing share the next one, a savepoint each.
//!
//! On its own, every message is a transaction of its own: `BEGIN`, its statements, `COMMIT`
//! and the WAL flush behind it. Where many messages change one row (every reserve of a popular
//! product decrements its one `products` row) that row stays locked from the `UPDATE` to the
//! end of the flush, so the row takes one message per commit, whatever the machine could do
//! (≈ 200–340 reserves a second here). [`PgDb::write_in_batch`] queues the write for one of
//! [`LANES`] lanes instead; a lane takes every write waiting at that moment (up to
//! [`MAX_BATCH`]) and runs them one after the other in one transaction, so the row is locked
//! once and flushed once for the whole batch. It is the PostgreSQL form of SQLite's group
//! commit (`group_commit.rs`), and it promises the same:
//! - each write runs under a savepoint: an `Err` (or a panic) rolls back exactly its own
//!   changes and its caller gets its own error, the other writes of the batch go on;
//! - a caller hears `Ok` only after the shared `COMMIT` returned, i.e. once its effect is
//!   durable; if the commit fails, or the batch cannot go on (the connection broke), every kept
//!   write of the batch gets an error and none of them is applied;
//! - the outbox rows of the kept writes are inserted with the `COMMIT` (one statement, one round
//!   trip, as [`PgDb::write`] does) and handed to this instance's relay after it.
//!
//! Lock order: within a batch the writes run in the order of their `lock_key` (the row they
//! contend for: a product id, an order id), so two lanes, or two instances, that lock several
//! such rows take them in the same order and do not deadlock on them. A deadlock PostgreSQL
//! still finds (rows outside the key) aborts that batch: its writes get a retryable error.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use deadpool_postgres::Pool;
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::{Mutex as AsyncMutex, mpsc, oneshot};
use tracing::warn;

use crate::db_error::DbError;
use crate::group_commit::{Report, report_after_commit};
use crate::handoff::{OutboxSink, hand_to_relay};
use crate::pg::{OpenTx, PgDb, PgTx};

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
    report: Report<tokio_postgres::Error>,
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
                let outcome = match AssertUnwindSafe(f(tx)).catch_unwind().await {
                    Ok(Ok(value)) => Ok(value),
                    Ok(Err(e)) => Err(DbError::from(e)),
                    Err(_) => Err(DbError::Panicked),
                };
                Ran {
                    kept: outcome.is_ok(),
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
    loop {
        let mut batch = Vec::new();
        {
            let mut jobs = jobs.lock().await;
            if jobs.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return;
            }
        }
        run_batch(&context, batch).await;
    }
}

/// Runs `batch` in one transaction and tells each write how it went. When the transaction
/// cannot begin or go on, the writes not yet reported are dropped: their callers get
/// [`DbError::WriteDropped`], which is retryable, and nothing of the batch is kept.
async fn run_batch(context: &LaneContext, mut batch: Vec<Job>) {
    metrics::histogram!("pg_batch_size").record(batch.len() as f64);
    batch.sort_by(|a, b| a.lock_key.cmp(&b.lock_key));
    let writes = batch.len();
    let open = match context.pool.get().await {
        Ok(client) => OpenTx::begin(client).await.map_err(DbError::from),
        Err(e) => Err(DbError::from(e)),
    };
    let open = match open {
        Ok(open) => open,
        Err(e) => {
            warn!(error = %e, writes, "could not begin a batch of writes; they will be retried");
            return;
        }
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
