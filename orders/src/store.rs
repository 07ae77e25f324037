//! `orders.db`: the saga state of every order, and the transitions between states.
//!
//! Every transition is a guarded `UPDATE … WHERE status = 'PENDING'` committed together with the
//! outbox rows that announce it, so a transition happens once even if Redis forgot everything,
//! and its messages go out even if the process dies right after the commit.

use deadpool_sqlite::rusqlite::{self, OptionalExtension, Transaction, params};
use messaging::OutgoingMessage;
use messaging::contracts::{
    CreateOrder, OrderEvent, OrderView, ReleaseStock, ReserveStock, StockAnswer,
};
use messaging::store::outbox_enqueue;
use messaging::topology::{COMMANDS, EVENTS, keys};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY,
    product_id TEXT NOT NULL,
    quantity INTEGER NOT NULL CHECK (quantity > 0),
    customer_id TEXT,
    seller_id TEXT,
    idempotency_key TEXT,
    status TEXT NOT NULL CHECK (status IN ('PENDING', 'CONFIRMED', 'REJECTED', 'CANCELLED')),
    reason TEXT,
    compensated INTEGER NOT NULL DEFAULT 0,
    deadline_ms INTEGER NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);
CREATE INDEX IF NOT EXISTS orders_pending_by_deadline ON orders (deadline_ms) WHERE status = 'PENDING';
";

const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ','now')";

/// An order's row, as far as the saga needs it.
#[derive(Debug, Clone)]
struct OrderRow {
    id: String,
    product_id: String,
    quantity: u32,
    customer_id: Option<String>,
    seller_id: Option<String>,
    status: String,
    reason: Option<String>,
    compensated: bool,
    created_at: String,
    updated_at: String,
}

const ORDER_COLUMNS: &str = "id, product_id, quantity, customer_id, seller_id, status, reason, compensated, created_at, updated_at";

fn order_row(row: &rusqlite::Row) -> rusqlite::Result<OrderRow> {
    Ok(OrderRow {
        id: row.get(0)?,
        product_id: row.get(1)?,
        quantity: row.get(2)?,
        customer_id: row.get(3)?,
        seller_id: row.get(4)?,
        status: row.get(5)?,
        reason: row.get(6)?,
        compensated: row.get(7)?,
        created_at: row.get(8)?,
        updated_at: row.get(9)?,
    })
}

fn load(conn: &rusqlite::Connection, id: &str) -> rusqlite::Result<Option<OrderRow>> {
    conn.prepare_cached(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = ?1"))?
        .query_row(params![id], order_row)
        .optional()
}

pub fn get_order(conn: &rusqlite::Connection, id: &str) -> rusqlite::Result<Option<OrderView>> {
    Ok(load(conn, id)?.map(|o| OrderView {
        order_id: o.id,
        product_id: o.product_id,
        quantity: o.quantity,
        customer_id: o.customer_id,
        seller_id: o.seller_id,
        status: o.status,
        reason: o.reason,
        created_at: o.created_at,
        updated_at: o.updated_at,
    }))
}

/// Records a new PENDING order and queues `product.reserveStock` and `order.created`.
/// Returns `false` when the order exists already (a replayed or redelivered create).
pub fn create_order(
    tx: &Transaction,
    cmd: &CreateOrder,
    deadline_ms: i64,
    traceparent: Option<&str>,
) -> rusqlite::Result<bool> {
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO orders (id, product_id, quantity, customer_id, idempotency_key, status, deadline_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, 'PENDING', ?6)",
    )?;
    let inserted = insert.execute(params![
        cmd.order_id,
        cmd.product_id,
        cmd.quantity,
        cmd.customer_id,
        cmd.idempotency_key,
        deadline_ms
    ])?;
    if inserted == 0 {
        return Ok(false);
    }
    let reserve = ReserveStock {
        order_id: cmd.order_id.clone(),
        product_id: cmd.product_id.clone(),
        quantity: cmd.quantity,
    };
    enqueue(
        tx,
        COMMANDS,
        keys::RESERVE_STOCK,
        &cmd.order_id,
        &reserve,
        traceparent,
    )?;
    announce(tx, &cmd.order_id, traceparent)?;
    Ok(true)
}

/// What a stock answer did to its order.
#[derive(Debug, PartialEq)]
pub enum Applied {
    /// PENDING → CONFIRMED or REJECTED.
    Transitioned(&'static str),
    /// The order was cancelled before the reservation landed: `product.releaseStock` queued.
    Compensated,
    /// Nothing to do: the order is already in a terminal state (the answer is a duplicate).
    AlreadyDone(String),
    /// No such order in orders.db.
    UnknownOrder,
}

/// Applies `product.stockReserved` (`reserved = true`) or `product.stockRejected`.
pub fn apply_stock_answer(
    tx: &Transaction,
    answer: &StockAnswer,
    reserved: bool,
    traceparent: Option<&str>,
) -> rusqlite::Result<Applied> {
    let Some(order) = load(tx, &answer.order_id)? else {
        return Ok(Applied::UnknownOrder);
    };
    match order.status.as_str() {
        "PENDING" => {
            let (status, reason) = if reserved {
                ("CONFIRMED", None)
            } else {
                ("REJECTED", answer.reason.clone())
            };
            let changed = tx.prepare_cached(
                &format!("UPDATE orders SET status = ?2, reason = ?3, seller_id = ?4, updated_at = {NOW} WHERE id = ?1 AND status = 'PENDING'"),
            )?
            .execute(params![order.id, status, reason, answer.seller_id])?;
            if changed == 0 {
                return Ok(Applied::AlreadyDone(order.status));
            }
            announce(tx, &order.id, traceparent)?;
            Ok(Applied::Transitioned(status))
        }
        "CANCELLED" if reserved && !order.compensated => {
            tx.prepare_cached(
                "UPDATE orders SET compensated = 1 WHERE id = ?1 AND compensated = 0",
            )?
            .execute(params![order.id])?;
            let release = ReleaseStock {
                order_id: order.id.clone(),
                product_id: order.product_id.clone(),
            };
            enqueue(
                tx,
                COMMANDS,
                keys::RELEASE_STOCK,
                &order.id,
                &release,
                traceparent,
            )?;
            Ok(Applied::Compensated)
        }
        _ => Ok(Applied::AlreadyDone(order.status)),
    }
}

/// PENDING orders whose deadline has passed, oldest first.
pub fn expired(
    conn: &rusqlite::Connection,
    now_ms: i64,
    limit: usize,
) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT id FROM orders WHERE status = 'PENDING' AND deadline_ms <= ?1 ORDER BY deadline_ms LIMIT ?2")?;
    let ids = stmt.query_map(params![now_ms, limit as i64], |r| r.get(0))?;
    ids.collect()
}

/// PENDING → CANCELLED with `reason`, and `order.cancelled`. Returns whether it happened.
pub fn cancel(tx: &Transaction, order_id: &str, reason: &str) -> rusqlite::Result<bool> {
    let changed = tx.prepare_cached(
        &format!("UPDATE orders SET status = 'CANCELLED', reason = ?2, updated_at = {NOW} WHERE id = ?1 AND status = 'PENDING'"),
    )?
    .execute(params![order_id, reason])?;
    if changed == 1 {
        announce(tx, order_id, None)?;
    }
    Ok(changed == 1)
}

/// Queues the `order.<status>` event describing the order as it is now.
fn announce(tx: &Transaction, order_id: &str, traceparent: Option<&str>) -> rusqlite::Result<()> {
    let Some(order) = load(tx, order_id)? else {
        return Ok(());
    };
    let key = match order.status.as_str() {
        "PENDING" => keys::ORDER_CREATED,
        "CONFIRMED" => keys::ORDER_CONFIRMED,
        "REJECTED" => keys::ORDER_REJECTED,
        _ => keys::ORDER_CANCELLED,
    };
    let event = OrderEvent {
        order_id: order.id,
        product_id: order.product_id,
        quantity: order.quantity,
        customer_id: order.customer_id,
        seller_id: order.seller_id,
        status: order.status,
        reason: order.reason,
        occurred_at: order.updated_at,
    };
    enqueue(tx, EVENTS, key, order_id, &event, traceparent)
}

fn enqueue<T: serde::Serialize>(
    tx: &Transaction,
    exchange: &str,
    key: &str,
    order_id: &str,
    body: &T,
    traceparent: Option<&str>,
) -> rusqlite::Result<()> {
    let msg = OutgoingMessage::json(exchange, key, Some(order_id), body)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?
        .with_traceparent(traceparent);
    outbox_enqueue(tx, &msg)
}
