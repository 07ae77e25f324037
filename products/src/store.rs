//! `products.db`: products, their stock, and one reservation row per order.
//!
//! The reservation row makes stock changes idempotent per order (not only per message id): an
//! order is reserved at most once and released at most once, whatever arrives twice.

use deadpool_sqlite::rusqlite::{self, OptionalExtension, Transaction, params};
use messaging::contracts::{ProductView, ReleaseStock, ReserveStock, StockAnswer};
use messaging::store::{inbox_first_time, outbox_enqueue};
use messaging::topology::{EVENTS, keys};
use messaging::{Incoming, OutgoingMessage};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS products (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
    stock INTEGER NOT NULL CHECK (stock >= 0),
    seller_id TEXT,
    request_id TEXT UNIQUE,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);
CREATE TABLE IF NOT EXISTS reservations (
    order_id TEXT PRIMARY KEY,
    product_id TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('RESERVED', 'REJECTED', 'RELEASED')),
    reason TEXT,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);
";

const PRODUCT_COLUMNS: &str = "id, name, price_cents, stock, seller_id";

fn product_row(row: &rusqlite::Row) -> rusqlite::Result<ProductView> {
    Ok(ProductView {
        id: row.get(0)?,
        name: row.get(1)?,
        price_cents: row.get(2)?,
        stock: row.get(3)?,
        seller_id: row.get(4)?,
    })
}

pub fn get_product(conn: &rusqlite::Connection, id: &str) -> rusqlite::Result<Option<ProductView>> {
    conn.prepare_cached(&format!(
        "SELECT {PRODUCT_COLUMNS} FROM products WHERE id = ?1"
    ))?
    .query_row(params![id], product_row)
    .optional()
}

/// Inserts a product; a request delivered twice returns the product the first delivery made.
pub fn create_product(
    tx: &Transaction,
    request_id: &str,
    new: &messaging::contracts::CreateProduct,
) -> rusqlite::Result<ProductView> {
    let existing = tx
        .prepare_cached(&format!(
            "SELECT {PRODUCT_COLUMNS} FROM products WHERE request_id = ?1"
        ))?
        .query_row(params![request_id], product_row)
        .optional()?;
    if let Some(product) = existing {
        return Ok(product);
    }
    let id = uuid::Uuid::now_v7().to_string();
    tx.prepare_cached(
        "INSERT INTO products (id, name, price_cents, stock, seller_id, request_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![id, new.name, new.price_cents, new.stock, new.seller_id, request_id])?;
    Ok(ProductView {
        id,
        name: new.name.clone(),
        price_cents: new.price_cents,
        stock: new.stock,
        seller_id: new.seller_id.clone(),
    })
}

/// What a reserve did, for logs and metrics.
#[derive(Debug, PartialEq)]
pub enum Reserved {
    /// This message (or another one for the same order) was applied before: nothing done.
    Duplicate,
    Reserved,
    Rejected(String),
}

/// Checks and decrements the stock for one order, records the inbox row and queues the answer.
pub fn reserve(tx: &Transaction, msg: &Incoming, req: &ReserveStock) -> rusqlite::Result<Reserved> {
    if !inbox_first_time(tx, &msg.meta.message_id)? || reservation_exists(tx, &req.order_id)? {
        return Ok(Reserved::Duplicate);
    }
    let product = get_product(tx, &req.product_id)?;
    let refusal = match &product {
        None => Some(format!("unknown product {}", req.product_id)),
        Some(p) if p.stock < i64::from(req.quantity) => Some(format!(
            "insufficient stock: requested {}, available {}",
            req.quantity, p.stock
        )),
        Some(_) => None,
    };
    let (status, key) = match &refusal {
        None => {
            tx.prepare_cached("UPDATE products SET stock = stock - ?2 WHERE id = ?1")?
                .execute(params![req.product_id, req.quantity])?;
            ("RESERVED", keys::STOCK_RESERVED)
        }
        Some(_) => ("REJECTED", keys::STOCK_REJECTED),
    };
    tx.prepare_cached(
        "INSERT INTO reservations (order_id, product_id, quantity, status, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![req.order_id, req.product_id, req.quantity, status, refusal])?;
    let answer = StockAnswer {
        order_id: req.order_id.clone(),
        product_id: req.product_id.clone(),
        quantity: req.quantity,
        seller_id: product.and_then(|p| p.seller_id),
        reason: refusal.clone(),
    };
    enqueue(tx, msg, key, &req.order_id, &answer)?;
    Ok(refusal.map_or(Reserved::Reserved, Reserved::Rejected))
}

fn reservation_exists(tx: &Transaction, order_id: &str) -> rusqlite::Result<bool> {
    tx.prepare_cached("SELECT 1 FROM reservations WHERE order_id = ?1")?
        .query_row(params![order_id], |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
}

/// Gives a reserved quantity back, once. Returns the quantity released (0 when nothing was
/// reserved). A release that comes first leaves a tombstone so a later reserve does nothing.
pub fn release(tx: &Transaction, msg: &Incoming, req: &ReleaseStock) -> rusqlite::Result<i64> {
    if !inbox_first_time(tx, &msg.meta.message_id)? {
        return Ok(0);
    }
    let reserved: Option<(String, i64)> = tx
        .prepare_cached(
            "SELECT product_id, quantity FROM reservations WHERE order_id = ?1 AND status = 'RESERVED'",
        )?
        .query_row(params![req.order_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((product_id, quantity)) = reserved else {
        tx.prepare_cached(
            "INSERT OR IGNORE INTO reservations (order_id, product_id, quantity, status, reason) VALUES (?1, ?2, 0, 'RELEASED', 'released before reserved')",
        )?
        .execute(params![req.order_id, req.product_id])?;
        return Ok(0);
    };
    tx.prepare_cached(
        "UPDATE reservations SET status = 'RELEASED', updated_at = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE order_id = ?1",
    )?
    .execute(params![req.order_id])?;
    tx.prepare_cached("UPDATE products SET stock = stock + ?2 WHERE id = ?1")?
        .execute(params![product_id, quantity])?;
    Ok(quantity)
}

fn enqueue<T: serde::Serialize>(
    tx: &Transaction,
    cause: &Incoming,
    key: &str,
    order_id: &str,
    body: &T,
) -> rusqlite::Result<()> {
    let msg = OutgoingMessage::json(EVENTS, key, Some(order_id), body)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?
        .with_traceparent(cause.meta.traceparent.as_deref());
    outbox_enqueue(tx, &msg)
}
