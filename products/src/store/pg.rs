//! The products database on PostgreSQL: the same tables as `products.db`, shared by every
//! instance of the service.
//!
//! What makes it safe with several instances:
//! - a reserve decrements with one guarded `UPDATE … SET stock = stock - $1 WHERE id = $2 AND
//!   stock >= $1`, which waits for any other writer of the row and re-checks the guard on the
//!   row as it is then; the table's `CHECK (stock >= 0)` is the last line: stock never goes
//!   negative, whichever instance writes;
//! - the reservation row (primary key: the order id) is written before the decrement, so two
//!   messages for one order racing on two instances cannot both decrement: the second waits on
//!   the first's key and then finds it taken (a duplicate, nothing done);
//! - a release locks the `RESERVED` row (`FOR UPDATE`) and moves it with a guarded `UPDATE`, so
//!   a reservation is given back once; a release racing the reserve it undoes waits for it and
//!   then gives it back, instead of leaving a tombstone next to a live reservation.
//!
//! The decisions themselves (refusal, answer, events) are the ones of `store.rs`.

use messaging::contracts::{
    CreateProduct, ProductView, ReleaseStock, ReserveStock, StockChangeReason,
};
use messaging::pg::{INBOX_OUTBOX, Migration, PgTx, Row};
use messaging::store::DbError;
use messaging::topology::keys;
use messaging::{Incoming, PgDb};
use tokio_postgres::types::ToSql;

use super::{ReservationStatus, Reserved, answer, event_message, refusal, stock_event};

/// The schema: the inbox and outbox every service has, then products and reservations.
pub static MIGRATIONS: [Migration; 2] = [
    INBOX_OUTBOX,
    Migration {
        version: 2,
        name: "products and reservations",
        sql: "
CREATE TABLE products (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    price_cents BIGINT NOT NULL CHECK (price_cents >= 0),
    stock BIGINT NOT NULL CHECK (stock >= 0),
    seller_id TEXT,
    request_id TEXT UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE reservations (
    order_id TEXT PRIMARY KEY,
    product_id TEXT NOT NULL,
    quantity BIGINT NOT NULL CHECK (quantity >= 0),
    status TEXT NOT NULL CHECK (status IN ('RESERVED', 'REJECTED', 'RELEASED')),
    reason TEXT,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
",
    },
];

const PRODUCT_COLUMNS: &str = "id, name, price_cents, stock, seller_id";

fn product_row(row: &Row) -> ProductView {
    ProductView {
        id: row.get(0),
        name: row.get(1),
        price_cents: row.get(2),
        stock: row.get(3),
        seller_id: row.get(4),
    }
}

/// Queues an event on `saga.events` in `tx`.
async fn enqueue<T: serde::Serialize>(
    tx: &PgTx<'_>,
    traceparent: Option<&str>,
    key: &str,
    correlation_id: &str,
    body: &T,
) -> Result<(), tokio_postgres::Error> {
    // The bodies are plain structs of strings, numbers and unit enums: serde_json cannot fail
    // on them (it fails only on maps with non-string keys or custom serializers).
    let msg = event_message(traceparent, key, correlation_id, body)
        .expect("a stock event or answer serializes to JSON");
    tx.enqueue(&msg).await
}

pub async fn get_product(db: &PgDb, id: String) -> Result<Option<ProductView>, DbError> {
    db.read(move |client| {
        Box::pin(async move {
            let stmt = client
                .prepare_cached(&format!(
                    "SELECT {PRODUCT_COLUMNS} FROM products WHERE id = $1"
                ))
                .await?;
            Ok(client
                .query_opt(&stmt, &[&id])
                .await?
                .as_ref()
                .map(product_row))
        })
    })
    .await
}

/// Inserts a product and queues its `product.stockChanged` (`created`); a request delivered
/// twice returns the product the first delivery made (two deliveries racing on two instances:
/// the second fails on the unique `request_id`, and its retry finds the first's product).
pub async fn create_product(
    db: &PgDb,
    request_id: String,
    new: CreateProduct,
    traceparent: Option<String>,
) -> Result<ProductView, DbError> {
    db.write(move |tx| {
        Box::pin(async move {
            let stmt = tx
                .prepare_cached(&format!(
                    "SELECT {PRODUCT_COLUMNS} FROM products WHERE request_id = $1"
                ))
                .await?;
            if let Some(row) = tx.query_opt(&stmt, &[&request_id]).await? {
                return Ok(product_row(&row));
            }
            let product = ProductView {
                id: uuid::Uuid::now_v7().to_string(),
                name: new.name.clone(),
                price_cents: new.price_cents,
                stock: new.stock,
                seller_id: new.seller_id.clone(),
            };
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO products (id, name, price_cents, stock, seller_id, request_id)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .await?;
            tx.execute(
                &stmt,
                &[
                    &product.id,
                    &product.name,
                    &product.price_cents,
                    &product.stock,
                    &product.seller_id,
                    &request_id,
                ],
            )
            .await?;
            let event = stock_event(&product, new.stock, StockChangeReason::Created);
            enqueue(
                tx,
                traceparent.as_deref(),
                keys::STOCK_CHANGED,
                &product.id,
                &event,
            )
            .await?;
            Ok(product)
        })
    })
    .await
}

/// Checks and decrements the stock for one order, records the inbox row and queues the answer.
///
/// Every order of a popular product goes through that product's one row, so the row's lock is
/// what limits how many reserves a second the database takes. Reserves therefore share
/// transactions ([`PgDb::write_in_batch`], keyed by the product): the row is locked once and
/// flushed once for every reserve waiting at that moment, instead of once per order. Within a
/// write the row is touched last: the inbox row and the reservation row (whose primary key, the
/// order id, makes a second message for the same order a duplicate, on any instance) are
/// written first; then one guarded `UPDATE … WHERE stock >= $1 RETURNING` decides. A refusal
/// takes no lock at all: the `UPDATE` matched nothing, and the product is read to say why.
pub async fn reserve(db: &PgDb, msg: Incoming, req: ReserveStock) -> Result<Reserved, DbError> {
    db.write_in_batch(req.product_id.clone(), move |tx| {
        Box::pin(async move {
            let quantity = i64::from(req.quantity);
            // The inbox row and the reservation row in one statement: the reservation is
            // written only if the message is new (a message seen before finds its inbox row),
            // and only if the order has none yet.
            let stmt = tx
                .prepare_cached(
                    "WITH fresh AS (INSERT INTO inbox (message_id) VALUES ($5)
                                    ON CONFLICT DO NOTHING RETURNING 1)
                     INSERT INTO reservations (order_id, product_id, quantity, status)
                     SELECT $1::text, $2::text, $3::bigint, $4::text FROM fresh
                     ON CONFLICT (order_id) DO NOTHING",
                )
                .await?;
            let status = ReservationStatus::Reserved;
            let params: [&(dyn ToSql + Sync); 5] = [
                &req.order_id,
                &req.product_id,
                &quantity,
                &status,
                &msg.meta.message_id,
            ];
            if tx.execute(&stmt, &params).await? == 0 {
                // Seen before, or reserved, rejected or released (a release that came first)
                // already.
                return Ok(Reserved::Duplicate);
            }
            let cause = msg.meta.traceparent.as_deref();
            let stmt = tx
                .prepare_cached(&format!(
                    "UPDATE products SET stock = stock - $1 WHERE id = $2 AND stock >= $1
                     RETURNING {PRODUCT_COLUMNS}"
                ))
                .await?;
            if let Some(row) = tx.query_opt(&stmt, &[&quantity, &req.product_id]).await? {
                let after = product_row(&row);
                let event = stock_event(&after, -quantity, StockChangeReason::Reserved);
                enqueue(tx, cause, keys::STOCK_CHANGED, &req.order_id, &event).await?;
                let answer = answer(&req, Some(&after), None);
                enqueue(tx, cause, keys::STOCK_RESERVED, &req.order_id, &answer).await?;
                return Ok(Reserved::Reserved);
            }
            // Unknown product, or not enough of it: read it (no lock) to say which.
            let stmt = tx
                .prepare_cached(&format!(
                    "SELECT {PRODUCT_COLUMNS} FROM products WHERE id = $1"
                ))
                .await?;
            let product = tx
                .query_opt(&stmt, &[&req.product_id])
                .await?
                .as_ref()
                .map(product_row);
            let reason = refusal(product.as_ref(), &req).unwrap_or_else(|| {
                // In stock now: a release landed between the two statements. The answer is
                // still the refusal the UPDATE made.
                format!("insufficient stock: requested {}", req.quantity)
            });
            let stmt = tx
                .prepare_cached(
                    "UPDATE reservations SET status = $3, reason = $2 WHERE order_id = $1",
                )
                .await?;
            let status = ReservationStatus::Rejected;
            tx.execute(&stmt, &[&req.order_id, &reason, &status])
                .await?;
            let answer = answer(&req, product.as_ref(), Some(&reason));
            enqueue(tx, cause, keys::STOCK_REJECTED, &req.order_id, &answer).await?;
            Ok(Reserved::Rejected(reason))
        })
    })
    .await
}

/// Gives a reserved quantity back, once. Returns the quantity released (0 when nothing was
/// reserved). A release that comes first leaves a tombstone so a later reserve does nothing.
pub async fn release(db: &PgDb, msg: Incoming, req: ReleaseStock) -> Result<i64, DbError> {
    db.write_in_batch(req.product_id.clone(), move |tx| {
        Box::pin(async move {
            if !tx.inbox_first_time(&msg.meta.message_id).await? {
                return Ok(0);
            }
            let stmt = tx
                .prepare_cached(
                    "SELECT product_id, quantity FROM reservations
                     WHERE order_id = $1 AND status = 'RESERVED' FOR UPDATE",
                )
                .await?;
            let reserved = match tx.query_opt(&stmt, &[&req.order_id]).await? {
                Some(row) => row,
                None => {
                    let tombstone = tx
                        .prepare_cached(
                            "INSERT INTO reservations (order_id, product_id, quantity, status, reason)
                             VALUES ($1, $2, 0, 'RELEASED', 'released before reserved')
                             ON CONFLICT (order_id) DO NOTHING",
                        )
                        .await?;
                    if tx
                        .execute(&tombstone, &[&req.order_id, &req.product_id])
                        .await?
                        == 1
                    {
                        return Ok(0);
                    }
                    // The order has a reservation row the first look did not see: a reserve on
                    // another connection committed it meanwhile (the insert above waited for
                    // it). A fresh statement sees it; if it is RESERVED it is given back now.
                    match tx.query_opt(&stmt, &[&req.order_id]).await? {
                        Some(row) => row,
                        None => return Ok(0),
                    }
                }
            };
            let (product_id, quantity): (String, i64) = (reserved.try_get(0)?, reserved.try_get(1)?);
            let stmt = tx
                .prepare_cached(
                    "UPDATE reservations SET status = 'RELEASED', updated_at = now()
                     WHERE order_id = $1 AND status = 'RESERVED'",
                )
                .await?;
            tx.execute(&stmt, &[&req.order_id]).await?;
            let stmt = tx
                .prepare_cached(&format!(
                    "UPDATE products SET stock = stock + $2 WHERE id = $1
                     RETURNING {PRODUCT_COLUMNS}"
                ))
                .await?;
            if let Some(row) = tx.query_opt(&stmt, &[&product_id, &quantity]).await? {
                let product = product_row(&row);
                let event = stock_event(&product, quantity, StockChangeReason::Released);
                let cause = msg.meta.traceparent.as_deref();
                enqueue(tx, cause, keys::STOCK_CHANGED, &req.order_id, &event).await?;
            }
            Ok(quantity)
        })
    })
    .await
}
