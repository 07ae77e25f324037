//! The consumer's events recorded in batches on PostgreSQL.
//!
//! Each event from `webhooks_queue` is handled on its own (the consumer acks it once its
//! deliveries are committed), but on PostgreSQL recording it alone cost four statements and two
//! round trips in a savepoint of a shared transaction, and the publisher fell behind the saga:
//! at ≈ 330 orders/s the queue grew by ≈ 500 events a second (docs/benchmarks.md, session 10).
//! [`Recorder::record`] queues the event for one of [`LANES`] lanes instead; a lane takes every
//! event waiting at that moment (up to [`MAX_BATCH`]) and records them together
//! ([`store::pg::record_events`](crate::store::pg::record_events): three statements for the
//! whole batch, one transaction). Each caller hears back once that transaction committed, with
//! what recording its event alone would have said.
//!
//! If the batch fails, each of its events is recorded in a transaction of its own, so an event
//! PostgreSQL refuses fails alone and the others are recorded. On SQLite, whose writer already
//! commits in groups, events go straight to the store.

use std::sync::{Arc, OnceLock};

use messaging::store::DbError;
use tokio::sync::{Mutex as AsyncMutex, mpsc, oneshot};
use tracing::warn;

use crate::storage::{NewEvent, Store};
use crate::store::Recorded;

/// Batches recorded at once by one instance: one collects while the other commits.
pub const LANES: usize = 2;

/// At most this many events share one transaction.
pub const MAX_BATCH: usize = 64;

type Answer = Result<Option<Recorded>, DbError>;

struct Job {
    event: NewEvent,
    reply: oneshot::Sender<Answer>,
}

/// Records events (see the module doc). Cheap to clone; the lanes start with the first event
/// and end once every clone is gone.
#[derive(Clone)]
pub struct Recorder {
    store: Store,
    queue: Arc<OnceLock<mpsc::UnboundedSender<Job>>>,
}

impl Recorder {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            queue: Arc::new(OnceLock::new()),
        }
    }

    /// Records `event`'s deliveries with its inbox row; `None` for a message recorded before.
    /// Returns once they are committed.
    pub async fn record(&self, event: NewEvent) -> Answer {
        if let Store::Sqlite(_) = self.store {
            return self.store.record_event(event).await;
        }
        let (reply, answer) = oneshot::channel();
        self.queue()
            .send(Job { event, reply })
            .map_err(|_| DbError::WriterStopped)?;
        answer.await.map_err(|_| DbError::WriteDropped)?
    }

    /// The store's name, for messages.
    pub fn store_name(&self) -> &'static str {
        self.store.name()
    }

    fn queue(&self) -> &mpsc::UnboundedSender<Job> {
        self.queue.get_or_init(|| {
            let (queue, jobs) = mpsc::unbounded_channel();
            let jobs = Arc::new(AsyncMutex::new(jobs));
            for _ in 0..LANES {
                tokio::spawn(lane(self.store.clone(), jobs.clone()));
            }
            queue
        })
    }
}

/// Takes the events waiting (at least one, at most [`MAX_BATCH`]) and records them, until every
/// sender is gone.
async fn lane(store: Store, jobs: Arc<AsyncMutex<mpsc::UnboundedReceiver<Job>>>) {
    loop {
        let mut batch = Vec::new();
        {
            let mut jobs = jobs.lock().await;
            if jobs.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return;
            }
        }
        record_batch(&store, batch).await;
    }
}

/// Records `batch` together, or each of its events on its own if that fails.
async fn record_batch(store: &Store, batch: Vec<Job>) {
    metrics::histogram!("webhook_record_batch_size").record(batch.len() as f64);
    let (events, replies): (Vec<NewEvent>, Vec<_>) =
        batch.into_iter().map(|job| (job.event, job.reply)).unzip();
    let events = Arc::new(events);
    if events.len() > 1 {
        match store.record_events(events.clone()).await {
            Ok(recorded) => {
                for (reply, recorded) in replies.into_iter().zip(recorded) {
                    let _ = reply.send(Ok(recorded));
                }
                return;
            }
            Err(e) => {
                warn!(error = %e, events = events.len(),
                    "could not record a batch of events together; recording them one by one");
            }
        }
    }
    // Each in a transaction of its own, so that only an event that fails is refused.
    let alone = events.iter().zip(replies).map(|(event, reply)| async move {
        let _ = reply.send(store.record_event(event.clone()).await);
    });
    futures::future::join_all(alone).await;
}
