//! The hand-off of committed outbox rows from a write to the outbox relay (its fast path, see
//! `outbox.rs`): a write transaction collects the rows it enqueued ([`crate::store::SqliteTx`],
//! [`crate::pg::PgTx`]), and once its commit succeeded the backend offers them to the relay over
//! a bounded channel. A row that does not fit stays in the table for the relay's poll.

use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;

use crate::envelope::OutgoingMessage;

/// A row of the outbox.
#[derive(Debug)]
pub(crate) struct OutboxRow {
    pub id: i64,
    pub message: OutgoingMessage,
}

impl OutboxRow {
    /// The row `msg` was just stored as, under `id`, as the relay publishes it.
    pub(crate) fn enqueued(id: i64, msg: &OutgoingMessage) -> Self {
        Self {
            id,
            message: OutgoingMessage {
                reply_to: None,
                mandatory: true,
                ..msg.clone()
            },
        }
    }
}

/// Where committed outbox rows go: the relay's fast path, once a relay asked for it.
pub(crate) type OutboxSink = Arc<OnceLock<mpsc::Sender<OutboxRow>>>;

/// Offers the rows of a commit that succeeded to the relay, if one listens; a row that finds the
/// channel full stays in the table for the relay's poll.
pub(crate) fn hand_to_relay(sink: &OutboxSink, rows: Vec<OutboxRow>) {
    let Some(sink) = sink.get() else {
        return;
    };
    for row in rows {
        if sink.try_send(row).is_err() {
            metrics::counter!("outbox_fast_path_skipped_total").increment(1);
        }
    }
}

/// The receiving end of a fresh fast path for `sink`; `None` if a relay took it already.
pub(crate) fn take_fast_path(
    sink: &OutboxSink,
    capacity: usize,
) -> Option<mpsc::Receiver<OutboxRow>> {
    let (tx, rx) = mpsc::channel(capacity);
    sink.set(tx).ok().map(|()| rx)
}
