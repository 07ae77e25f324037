//! The products database on PostgreSQL: the same tables as `products.db`, shared by every
//! instance of the service.
//!
//! What makes it safe with several instances:
//! - a reserve locks its product row (`SELECT … FOR UPDATE`) before deciding, and decrements
//!   with a guarded `UPDATE … SET stock = stock - $1 WHERE id = $2 AND stock >= $1`; the table's
//!   `CHECK (stock >= 0)` is the last line: stock never goes negative, whichever instance writes;
//! - the reservation row (primary key: the order id) is inserted with a plain `INSERT`, so two
//!   messages for one order racing on two instances cannot both commit: the loser's transaction
//!   fails on the key, rolls back (its decrement with it), and its redelivery finds the row and
//!   does nothing;
//! - a release locks the `RESERVED` row (`FOR UPDATE`) and moves it with a guarded `UPDATE`, so
//!   a reservation is given back once.
//!
//! The decisions themselves (refusal, answer, events) are the ones of `store.rs`.

use messaging::contracts::{
    CreateProduct, ProductView, ReleaseStock, ReserveStock, StockChangeReason,
};
use messaging::pg::{INBOX_OUTBOX, Migration, PgTx, Row};
use messaging::store::DbError;
use messaging::topology::keys;
use messaging::{Incoming, PgDb};

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
pub async fn reserve(db: &PgDb, msg: Incoming, req: ReserveStock) -> Result<Reserved, DbError> {
    db.write(move |tx| {
        Box::pin(async move {
            if !tx.inbox_first_time(&msg.meta.message_id).await? {
                return Ok(Reserved::Duplicate);
            }
            // Lock the product first: another message for the same order waits here, and then
            // (a fresh statement, a fresh snapshot) sees the reservation the first one made.
            let stmt = tx
                .prepare_cached(&format!(
                    "SELECT {PRODUCT_COLUMNS} FROM products WHERE id = $1 FOR UPDATE"
                ))
                .await?;
            let product = tx
                .query_opt(&stmt, &[&req.product_id])
                .await?
                .as_ref()
                .map(product_row);
            let stmt = tx
                .prepare_cached("SELECT 1 FROM reservations WHERE order_id = $1")
                .await?;
            if tx.query_opt(&stmt, &[&req.order_id]).await?.is_some() {
                return Ok(Reserved::Duplicate);
            }
            let quantity = i64::from(req.quantity);
            let mut refused = refusal(product.as_ref(), &req);
            let cause = msg.meta.traceparent.as_deref();
            if refused.is_none() {
                let stmt = tx
                    .prepare_cached(&format!(
                        "UPDATE products SET stock = stock - $1 WHERE id = $2 AND stock >= $1
                         RETURNING {PRODUCT_COLUMNS}"
                    ))
                    .await?;
                match tx.query_opt(&stmt, &[&quantity, &req.product_id]).await? {
                    Some(row) => {
                        let after = product_row(&row);
                        let event = stock_event(&after, -quantity, StockChangeReason::Reserved);
                        enqueue(tx, cause, keys::STOCK_CHANGED, &req.order_id, &event).await?;
                    }
                    // Cannot happen under the row lock; were it to, the guard refuses.
                    None => {
                        refused = Some(format!("insufficient stock: requested {}", req.quantity))
                    }
                }
            }
            let (status, key) = match refused {
                None => (ReservationStatus::Reserved, keys::STOCK_RESERVED),
                Some(_) => (ReservationStatus::Rejected, keys::STOCK_REJECTED),
            };
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO reservations (order_id, product_id, quantity, status, reason)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .await?;
            tx.execute(
                &stmt,
                &[&req.order_id, &req.product_id, &quantity, &status, &refused],
            )
            .await?;
            let answer = answer(&req, product.as_ref(), refused.as_deref());
            enqueue(tx, cause, key, &req.order_id, &answer).await?;
            Ok(refused.map_or(Reserved::Reserved, Reserved::Rejected))
        })
    })
    .await
}

/// Gives a reserved quantity back, once. Returns the quantity released (0 when nothing was
/// reserved). A release that comes first leaves a tombstone so a later reserve does nothing.
pub async fn release(db: &PgDb, msg: Incoming, req: ReleaseStock) -> Result<i64, DbError> {
    db.write(move |tx| {
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
            let Some(reserved) = tx.query_opt(&stmt, &[&req.order_id]).await? else {
                let stmt = tx
                    .prepare_cached(
                        "INSERT INTO reservations (order_id, product_id, quantity, status, reason)
                         VALUES ($1, $2, 0, 'RELEASED', 'released before reserved')
                         ON CONFLICT (order_id) DO NOTHING",
                    )
                    .await?;
                tx.execute(&stmt, &[&req.order_id, &req.product_id]).await?;
                return Ok(0);
            };
            let (product_id, quantity): (String, i64) = (reserved.get(0), reserved.get(1));
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
