//! `products.db`: products, their stock, and one reservation row per order.
//!
//! The reservation row makes stock changes idempotent per order (not only per message id): an
//! order is reserved at most once and released at most once, whatever arrives twice.
//!
//! Every stock change (creation, reservation, release) also queues `product.stockChanged` in the
//! same transaction, so the event goes out exactly when the change committed.
//!
//! This file is the SQLite backend; `store/pg.rs` is the PostgreSQL one. What both decide (may
//! this order have the stock, what the answer and the events say) is written once here
//! ([`refusal`], [`answer`], [`stock_event`]); each backend only reads rows and applies writes.
//! [`Store`] is the interface the consumers use over either.

pub mod pg;

use deadpool_sqlite::rusqlite::{self, OptionalExtension, params};
use messaging::contracts::{
    CreateProduct, ProductView, ReleaseStock, ReserveStock, StockAnswer, StockChangeReason,
    StockChanged,
};
use messaging::store::{Backend, DbError, SqliteTx};
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

/// Inserts a product and queues its `product.stockChanged` (`created`); a request delivered
/// twice returns the product the first delivery made, and announces nothing again.
pub fn create_product(
    tx: &SqliteTx,
    request_id: &str,
    new: &messaging::contracts::CreateProduct,
    traceparent: Option<&str>,
) -> Result<ProductView, DbError> {
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
    let product = ProductView {
        id,
        name: new.name.clone(),
        price_cents: new.price_cents,
        stock: new.stock,
        seller_id: new.seller_id.clone(),
    };
    let reason = StockChangeReason::Created;
    stock_changed(tx, &product, new.stock, reason, traceparent, &product.id)?;
    Ok(product)
}

/// The state of an order's reservation (`reservations.status`). `Released` is also the
/// tombstone of a release that came before its reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationStatus {
    Reserved,
    Rejected,
    Released,
}

impl ReservationStatus {
    pub const ALL: [Self; 3] = [Self::Reserved, Self::Rejected, Self::Released];

    /// As stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "RESERVED",
            Self::Rejected => "REJECTED",
            Self::Released => "RELEASED",
        }
    }
}

messaging::text_column!(ReservationStatus, "reservation status");

/// What a reserve did, for logs and metrics.
#[derive(Debug, PartialEq)]
pub enum Reserved {
    /// This message (or another one for the same order) was applied before: nothing done.
    Duplicate,
    Reserved,
    Rejected(String),
}

/// Checks and decrements the stock for one order, records the inbox row and queues the answer.
pub fn reserve(tx: &SqliteTx, msg: &Incoming, req: &ReserveStock) -> Result<Reserved, DbError> {
    if !tx.inbox_first_time(&msg.meta.message_id)? || reservation_exists(tx, &req.order_id)? {
        return Ok(Reserved::Duplicate);
    }
    let product = get_product(tx, &req.product_id)?;
    let refusal = refusal(product.as_ref(), req);
    let (status, key) = match (&refusal, &product) {
        (None, Some(p)) => {
            tx.prepare_cached("UPDATE products SET stock = stock - ?2 WHERE id = ?1")?
                .execute(params![req.product_id, req.quantity])?;
            let delta = -i64::from(req.quantity);
            let after = ProductView {
                stock: p.stock + delta,
                ..p.clone()
            };
            let cause = msg.meta.traceparent.as_deref();
            stock_changed(
                tx,
                &after,
                delta,
                StockChangeReason::Reserved,
                cause,
                &req.order_id,
            )?;
            (ReservationStatus::Reserved, keys::STOCK_RESERVED)
        }
        _ => (ReservationStatus::Rejected, keys::STOCK_REJECTED),
    };
    tx.prepare_cached(
        "INSERT INTO reservations (order_id, product_id, quantity, status, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![req.order_id, req.product_id, req.quantity, status, refusal])?;
    let answer = answer(req, product.as_ref(), refusal.as_deref());
    enqueue(
        tx,
        msg.meta.traceparent.as_deref(),
        key,
        &req.order_id,
        &answer,
    )?;
    Ok(refusal.map_or(Reserved::Reserved, Reserved::Rejected))
}

/// The decision of a reserve, for both backends: why `product` cannot give `req.quantity`
/// (unknown, or not enough stock), or `None` when it can.
pub fn refusal(product: Option<&ProductView>, req: &ReserveStock) -> Option<String> {
    match product {
        None => Some(format!("unknown product {}", req.product_id)),
        Some(p) if p.stock < i64::from(req.quantity) => Some(format!(
            "insufficient stock: requested {}, available {}",
            req.quantity, p.stock
        )),
        Some(_) => None,
    }
}

/// The answer to a reserve (`product.stockReserved` when `refusal` is `None`, else
/// `product.stockRejected`), for both backends.
pub fn answer(
    req: &ReserveStock,
    product: Option<&ProductView>,
    refusal: Option<&str>,
) -> StockAnswer {
    StockAnswer {
        order_id: req.order_id.clone(),
        product_id: req.product_id.clone(),
        quantity: req.quantity,
        unit_price_cents: product.map(|p| p.price_cents),
        product_name: product.map(|p| p.name.clone()),
        seller_id: product.and_then(|p| p.seller_id.clone()),
        reason: refusal.map(str::to_owned),
    }
}

/// `product.stockChanged` for `product` as it is after a change of `delta`.
pub fn stock_event(product: &ProductView, delta: i64, reason: StockChangeReason) -> StockChanged {
    StockChanged {
        product_id: product.id.clone(),
        seller_id: product.seller_id.clone(),
        stock: product.stock,
        delta,
        reason,
    }
}

/// The outbox message of an event on `saga.events`, correlated with `correlation_id` (the order
/// id, or the product id for a creation), carrying the trace of the message that caused it.
pub fn event_message<T: serde::Serialize>(
    traceparent: Option<&str>,
    key: &str,
    correlation_id: &str,
    body: &T,
) -> Result<OutgoingMessage, serde_json::Error> {
    Ok(
        OutgoingMessage::json(EVENTS, key, Some(correlation_id), body)?
            .with_traceparent(traceparent),
    )
}

fn reservation_exists(tx: &rusqlite::Connection, order_id: &str) -> rusqlite::Result<bool> {
    tx.prepare_cached("SELECT 1 FROM reservations WHERE order_id = ?1")?
        .query_row(params![order_id], |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
}

/// Gives a reserved quantity back, once. Returns the quantity released (0 when nothing was
/// reserved). A release that comes first leaves a tombstone so a later reserve does nothing.
pub fn release(tx: &SqliteTx, msg: &Incoming, req: &ReleaseStock) -> Result<i64, DbError> {
    if !tx.inbox_first_time(&msg.meta.message_id)? {
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
    if let Some(product) = get_product(tx, &product_id)? {
        let cause = msg.meta.traceparent.as_deref();
        stock_changed(
            tx,
            &product,
            quantity,
            StockChangeReason::Released,
            cause,
            &req.order_id,
        )?;
    }
    Ok(quantity)
}

/// Queues `product.stockChanged` for `product` as it is after the change of `delta`.
fn stock_changed(
    tx: &SqliteTx,
    product: &ProductView,
    delta: i64,
    reason: StockChangeReason,
    traceparent: Option<&str>,
    correlation_id: &str,
) -> Result<(), DbError> {
    let event = stock_event(product, delta, reason);
    enqueue(tx, traceparent, keys::STOCK_CHANGED, correlation_id, &event)
}

/// Queues an event on `saga.events`, correlated with `correlation_id` (the order id, or the
/// product id for a creation), carrying the trace of the message that caused it.
fn enqueue<T: serde::Serialize>(
    tx: &SqliteTx,
    traceparent: Option<&str>,
    key: &str,
    correlation_id: &str,
    body: &T,
) -> Result<(), DbError> {
    let msg = event_message(traceparent, key, correlation_id, body)?;
    Ok(tx.enqueue(&msg)?)
}

/// The products database on either backend: what the consumers call.
#[derive(Clone)]
pub enum Store {
    Sqlite(messaging::Db),
    Postgres(messaging::PgDb),
}

impl Store {
    pub async fn get_product(&self, id: String) -> Result<Option<ProductView>, DbError> {
        match self {
            Self::Sqlite(db) => db.call(move |conn| get_product(conn, &id)).await,
            Self::Postgres(db) => pg::get_product(db, id).await,
        }
    }

    pub async fn create_product(
        &self,
        request_id: String,
        new: CreateProduct,
        traceparent: Option<String>,
    ) -> Result<ProductView, DbError> {
        match self {
            Self::Sqlite(db) => {
                db.write(move |tx| create_product(tx, &request_id, &new, traceparent.as_deref()))
                    .await
            }
            Self::Postgres(db) => pg::create_product(db, request_id, new, traceparent).await,
        }
    }

    pub async fn reserve(&self, msg: Incoming, req: ReserveStock) -> Result<Reserved, DbError> {
        match self {
            Self::Sqlite(db) => db.write(move |tx| reserve(tx, &msg, &req)).await,
            Self::Postgres(db) => pg::reserve(db, msg, req).await,
        }
    }

    pub async fn release(&self, msg: Incoming, req: ReleaseStock) -> Result<i64, DbError> {
        match self {
            Self::Sqlite(db) => db.write(move |tx| release(tx, &msg, &req)).await,
            Self::Postgres(db) => pg::release(db, msg, req).await,
        }
    }

    /// The database for the relay, the broker link and `/ready`.
    pub fn backend(&self) -> Backend {
        match self {
            Self::Sqlite(db) => db.clone().into(),
            Self::Postgres(db) => db.clone().into(),
        }
    }
}
