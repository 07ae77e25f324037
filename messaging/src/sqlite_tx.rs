//! [`SqliteTx`], the SQLite write transaction: what a closure given to `Db::write` runs in.
//! Through it code records inbox ids ([`SqliteTx::inbox_first_time`]) and enqueues outbox rows
//! ([`SqliteTx::enqueue`]); it keeps the rows it enqueued, and the writer hands them to the
//! relay once the commit that holds them succeeded (`group_commit.rs`). It reads as
//! [`crate::pg::PgTx`] does for PostgreSQL.

use std::cell::RefCell;
use std::ops::Deref;

use deadpool_sqlite::rusqlite::{self, Transaction, params};

use crate::envelope::OutgoingMessage;
use crate::handoff::OutboxRow;

/// One write of a group commit: the shared transaction (through `Deref`; under a savepoint of
/// this write's own only when the group is run again after a failure) plus the inbox and outbox
/// steps every consumer takes.
pub struct SqliteTx<'a> {
    tx: &'a Transaction<'a>,
    /// The outbox rows this write enqueued, in id order. A `RefCell`: the write runs on the
    /// writer thread only, and takes `&self` like every statement it runs.
    enqueued: RefCell<Vec<OutboxRow>>,
}

impl<'a> Deref for SqliteTx<'a> {
    type Target = Transaction<'a>;
    fn deref(&self) -> &Self::Target {
        self.tx
    }
}

impl<'a> SqliteTx<'a> {
    pub(crate) fn new(tx: &'a Transaction<'a>) -> Self {
        Self {
            tx,
            enqueued: RefCell::new(Vec::new()),
        }
    }

    /// The rows this write enqueued, for the relay once they are committed.
    pub(crate) fn into_enqueued(self) -> Vec<OutboxRow> {
        self.enqueued.into_inner()
    }

    /// Records `message_id` in the inbox. Returns `false` when it was there already, i.e. the
    /// message was applied before and must not be applied again.
    pub fn inbox_first_time(&self, message_id: &str) -> rusqlite::Result<bool> {
        let inserted = self
            .tx
            .prepare_cached("INSERT OR IGNORE INTO inbox (message_id) VALUES (?1)")?
            .execute(params![message_id])?;
        Ok(inserted == 1)
    }

    /// Stores `msg` in the outbox, to be published by the relay after the transaction commits.
    pub fn enqueue(&self, msg: &OutgoingMessage) -> rusqlite::Result<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO outbox (message_id, exchange, routing_key, correlation_id, traceparent, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                msg.message_id,
                msg.exchange,
                msg.routing_key,
                msg.correlation_id,
                msg.traceparent,
                msg.body
            ])?;
        let row = OutboxRow::enqueued(self.tx.last_insert_rowid(), msg);
        self.enqueued.borrow_mut().push(row);
        Ok(())
    }
}
