//! The orders' saga state on PostgreSQL (`DATABASE_URL`), shared by every orders instance.
//!
//! The same tables as orders.db (`orders`, `order_history`), the same decisions
//! (`crate::decide`), and the same JSON out; what differs is how two instances are kept from
//! both applying one decision:
//! - a stock answer's transition is a guarded `UPDATE … WHERE status = 'PENDING'` (what the
//!   shared decision does to a PENDING order, applied only to one); when it changes nothing the
//!   order is locked (`SELECT … FOR UPDATE`) and the decision taken on the row as it is, so of
//!   two instances applying the same answer (or an answer and the deadline) one transitions
//!   and the other finds the order decided;
//! - a compensation is a guarded `UPDATE … SET compensated = true WHERE NOT compensated` and
//!   queues `product.releaseStock` only if it changed the row;
//! - the deadline sweep's cancel is a guarded `UPDATE … WHERE status = 'PENDING' RETURNING …`;
//! - a create is `INSERT … ON CONFLICT (id) DO NOTHING RETURNING …`: a replay inserts nothing
//!   and queues nothing.
//!
//! Timestamps are `TIMESTAMPTZ` cut to milliseconds (`statement_timestamp()`, taken after the
//! row lock, so an order's history is in order) and shown as orders.db stores them,
//! `YYYY-MM-DDTHH:MM:SS.mmmZ`.

use messaging::contracts::{
    CreateOrder, HistoryEntry, OrderView, ProductSales, ReportQuery, SalesSummary, SellerSales,
    SellersReport, StatusCounts, StockAnswer, TOP_PRODUCTS,
};
use messaging::pg::{INBOX_OUTBOX, Migration, PgTx, Row};
use messaging::store::DbError;
use messaging::{OutgoingMessage, PgDb};

use crate::decide::{self, AnswerDecision, Applied, OrderRow, OrderStatus};

/// The orders' schema on PostgreSQL: the messaging tables, then the orders' own.
pub static MIGRATIONS: [Migration; 3] = [
    INBOX_OUTBOX,
    Migration {
        version: 2,
        name: "orders",
        sql: "
CREATE TABLE orders (
    id TEXT PRIMARY KEY,
    product_id TEXT NOT NULL,
    quantity INTEGER NOT NULL CHECK (quantity > 0),
    customer_id TEXT,
    seller_id TEXT,
    idempotency_key TEXT,
    status TEXT NOT NULL CHECK (status IN ('PENDING', 'CONFIRMED', 'REJECTED', 'CANCELLED')),
    reason TEXT,
    compensated BOOLEAN NOT NULL DEFAULT false,
    deadline_ms BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT date_trunc('milliseconds', statement_timestamp()),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT date_trunc('milliseconds', statement_timestamp()),
    unit_price_cents BIGINT,
    product_name TEXT
);
CREATE INDEX orders_pending_by_deadline ON orders (deadline_ms) WHERE status = 'PENDING';
CREATE INDEX orders_by_created ON orders (created_at);
CREATE INDEX orders_by_seller ON orders (seller_id, created_at);
",
    },
    Migration {
        version: 3,
        name: "order history",
        sql: "
CREATE TABLE order_history (
    id BIGSERIAL PRIMARY KEY,
    order_id TEXT NOT NULL REFERENCES orders (id),
    status TEXT NOT NULL CHECK (status IN ('PENDING', 'CONFIRMED', 'REJECTED', 'CANCELLED')),
    reason TEXT,
    at TIMESTAMPTZ NOT NULL
);
CREATE INDEX order_history_by_order ON order_history (order_id, id);
",
    },
];

/// A timestamp column as the API shows it (orders.db's text form).
fn ts(column: &str) -> String {
    format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
}

/// The moment of a change, cut to milliseconds like orders.db's timestamps.
const NOW: &str = "date_trunc('milliseconds', statement_timestamp())";

fn order_columns() -> String {
    format!(
        "id, product_id, quantity, customer_id, seller_id, status, reason, compensated, {}, {}",
        ts("created_at"),
        ts("updated_at")
    )
}

fn order_row(row: &Row) -> Result<OrderRow, tokio_postgres::Error> {
    let quantity: i32 = row.try_get(2)?;
    Ok(OrderRow {
        id: row.try_get(0)?,
        product_id: row.try_get(1)?,
        // The CHECK keeps it positive.
        quantity: quantity.unsigned_abs(),
        customer_id: row.try_get(3)?,
        seller_id: row.try_get(4)?,
        status: row.try_get(5)?,
        reason: row.try_get(6)?,
        compensated: row.try_get(7)?,
        created_at: row.try_get(8)?,
        updated_at: row.try_get(9)?,
    })
}

/// The contract structs are plain data (strings, numbers, options; no maps, no custom
/// `Serialize`), for which `serde_json` cannot fail.
fn built(message: Result<OutgoingMessage, serde_json::Error>) -> OutgoingMessage {
    message.unwrap_or_else(|e| panic!("a contract message failed to serialize: {e}"))
}

/// Records a new PENDING order and queues `product.reserveStock` and `order.created`.
/// Returns `false` when the order exists already (a replay, on this instance or another).
pub async fn create_order(
    db: &PgDb,
    cmd: CreateOrder,
    deadline_ms: i64,
    traceparent: Option<String>,
) -> Result<bool, DbError> {
    let reserve = built(decide::reserve_message(&cmd, traceparent.as_deref()));
    db.write_in_batch(cmd.order_id.clone(), move |tx| {
        Box::pin(async move {
            let stmt = tx
                .prepare_cached(&with_history(
                    "INSERT INTO orders (id, product_id, quantity, customer_id, seller_id,
                                         idempotency_key, status, deadline_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, 'PENDING', $7)
                     ON CONFLICT (id) DO NOTHING",
                ))
                .await?;
            let quantity = i32::try_from(cmd.quantity).unwrap_or(i32::MAX);
            let inserted = tx
                .query_opt(
                    &stmt,
                    &[
                        &cmd.order_id,
                        &cmd.product_id,
                        &quantity,
                        &cmd.customer_id,
                        &cmd.seller_id,
                        &cmd.idempotency_key,
                        &deadline_ms,
                    ],
                )
                .await?;
            let Some(row) = inserted else {
                return Ok(false);
            };
            tx.enqueue(&reserve).await?;
            transitioned(tx, &order_row(&row)?, traceparent.as_deref()).await?;
            Ok(true)
        })
    })
    .await
}

/// Applies `product.stockReserved` (`reserved = true`) or `product.stockRejected`.
///
/// The common case goes first: what the shared decision does with this answer to a PENDING
/// order is applied by a guarded `UPDATE … WHERE status = 'PENDING'` (one statement, which
/// waits for any other instance's change of the row). If that changed nothing the order is
/// locked (`SELECT … FOR UPDATE`) and the decision taken on what it is now: already decided,
/// cancelled (compensation), or unknown.
pub async fn apply_stock_answer(
    db: &PgDb,
    answer: StockAnswer,
    reserved: bool,
    traceparent: Option<String>,
) -> Result<Applied, DbError> {
    db.write_in_batch(answer.order_id.clone(), move |tx| {
        Box::pin(async move {
            let tp = traceparent.as_deref();
            if let Some(applied) = transition_if_pending(tx, &answer, reserved, tp).await? {
                return Ok(applied);
            }
            let stmt = tx
                .prepare_cached(&format!(
                    "SELECT {} FROM orders WHERE id = $1 FOR UPDATE",
                    order_columns()
                ))
                .await?;
            let Some(row) = tx.query_opt(&stmt, &[&answer.order_id]).await? else {
                return Ok(Applied::UnknownOrder);
            };
            let order = order_row(&row)?;
            match decide::decide_answer(order.status, order.compensated, &answer, reserved) {
                AnswerDecision::Transition { .. } => {
                    // Created since the first statement looked; the row is locked now.
                    let applied = transition_if_pending(tx, &answer, reserved, tp).await?;
                    Ok(applied.unwrap_or(Applied::AlreadyDone(order.status)))
                }
                AnswerDecision::Compensate => {
                    // The late answer still tells whose product it was, for the seller's
                    // reports.
                    let stmt = tx
                        .prepare_cached(
                            "UPDATE orders SET compensated = true,
                                    seller_id = COALESCE(seller_id, $2)
                             WHERE id = $1 AND NOT compensated",
                        )
                        .await?;
                    let changed = tx.execute(&stmt, &[&order.id, &answer.seller_id]).await?;
                    if changed == 0 {
                        return Ok(Applied::AlreadyDone(order.status));
                    }
                    let release = built(decide::release_message(&order, tp));
                    tx.enqueue(&release).await?;
                    Ok(Applied::Compensated)
                }
                AnswerDecision::AlreadyDone(status) => Ok(Applied::AlreadyDone(status)),
            }
        })
    })
    .await
}

/// The transition the shared decision makes for a PENDING order, applied only if the order
/// is PENDING (guarded `UPDATE`), with its history row and event. `None`: it was not.
async fn transition_if_pending(
    tx: &PgTx<'_>,
    answer: &StockAnswer,
    reserved: bool,
    traceparent: Option<&str>,
) -> Result<Option<Applied>, tokio_postgres::Error> {
    let AnswerDecision::Transition { to, reason } =
        decide::decide_answer(OrderStatus::Pending, false, answer, reserved)
    else {
        return Ok(None);
    };
    // Products' answer is the truth about the seller; the gateway's lookup only came first.
    let stmt = tx
        .prepare_cached(&with_history(&format!(
            "UPDATE orders SET status = $2, reason = $3, seller_id = COALESCE($4, seller_id),
                    unit_price_cents = $5, product_name = $6, updated_at = {NOW}
             WHERE id = $1 AND status = 'PENDING'"
        )))
        .await?;
    let changed = tx
        .query_opt(
            &stmt,
            &[
                &answer.order_id,
                &to,
                &reason,
                &answer.seller_id,
                &answer.unit_price_cents,
                &answer.product_name,
            ],
        )
        .await?;
    let Some(row) = changed else {
        return Ok(None);
    };
    transitioned(tx, &order_row(&row)?, traceparent).await?;
    Ok(Some(Applied::Transitioned(to)))
}

/// PENDING orders whose deadline has passed, oldest first.
pub async fn expired(db: &PgDb, now_ms: i64, limit: usize) -> Result<Vec<String>, DbError> {
    db.read(move |client| {
        Box::pin(async move {
            let stmt = client
                .prepare_cached(
                    "SELECT id FROM orders WHERE status = 'PENDING' AND deadline_ms <= $1
                     ORDER BY deadline_ms LIMIT $2",
                )
                .await?;
            let rows = client.query(&stmt, &[&now_ms, &(limit as i64)]).await?;
            rows.iter().map(|r| r.try_get(0)).collect()
        })
    })
    .await
}

/// PENDING → CANCELLED with `reason`, and `order.cancelled`. Returns whether it happened (of
/// two instances cancelling one order at once, exactly one does).
pub async fn cancel(db: &PgDb, order_id: &str, reason: &str) -> Result<bool, DbError> {
    let (order_id, reason) = (order_id.to_owned(), reason.to_owned());
    db.write_in_batch(order_id.clone(), move |tx| {
        Box::pin(async move {
            let stmt = tx
                .prepare_cached(&with_history(&format!(
                    "UPDATE orders SET status = 'CANCELLED', reason = $2, updated_at = {NOW}
                     WHERE id = $1 AND status = 'PENDING'"
                )))
                .await?;
            let Some(row) = tx.query_opt(&stmt, &[&order_id, &reason]).await? else {
                return Ok(false);
            };
            transitioned(tx, &order_row(&row)?, None).await?;
            Ok(true)
        })
    })
    .await
}

/// `change` (an `INSERT` or `UPDATE` of one order, without `RETURNING`) with the
/// `order_history` row of the state it leaves the order in, in one statement (one round trip
/// instead of two per transition): the row's status, reason and `updated_at`, what
/// [`decide::transition_effects`] records on SQLite. Returns the changed order, or no row.
fn with_history(change: &str) -> String {
    format!(
        "WITH changed AS ({change} RETURNING *),
              history AS (INSERT INTO order_history (order_id, status, reason, at)
                          SELECT id, status, reason, updated_at FROM changed)
         SELECT {} FROM changed",
        order_columns()
    )
}

/// Queues the `order.<status>` event describing the order as it is now, in the transaction of
/// the change (whose statement, [`with_history`], wrote its history row).
async fn transitioned(
    tx: &PgTx<'_>,
    order: &OrderRow,
    traceparent: Option<&str>,
) -> Result<(), tokio_postgres::Error> {
    tx.enqueue(&built(decide::transition_event(order, traceparent)))
        .await
}

/// The first statement of a read: everything after it sees one snapshot, as the SQLite reads
/// (one read transaction) do.
const SNAPSHOT: &str = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY";

/// Runs the reads of `f` in one read-only snapshot transaction.
async fn snapshot<R, F>(db: &PgDb, f: F) -> Result<R, DbError>
where
    R: Send + 'static,
    F: 'static
        + for<'t> FnOnce(
            &'t PgTx<'t>,
        ) -> futures::future::BoxFuture<'t, Result<R, tokio_postgres::Error>>
        + Send,
{
    db.write(move |tx| {
        Box::pin(async move {
            tx.batch_execute(SNAPSHOT).await?;
            f(tx).await
        })
    })
    .await
}

/// The order with its history, oldest transition first.
pub async fn get_order(db: &PgDb, id: String) -> Result<Option<OrderView>, DbError> {
    snapshot(db, move |tx| {
        Box::pin(async move {
            let stmt = tx
                .prepare_cached(&format!(
                    "SELECT {} FROM orders WHERE id = $1",
                    order_columns()
                ))
                .await?;
            let Some(row) = tx.query_opt(&stmt, &[&id]).await? else {
                return Ok(None);
            };
            let o = order_row(&row)?;
            let history = history_rows(tx, &id).await?;
            Ok(Some(OrderView {
                order_id: o.id,
                product_id: o.product_id,
                quantity: o.quantity,
                customer_id: o.customer_id,
                seller_id: o.seller_id,
                status: o.status.as_str().to_owned(),
                reason: o.reason,
                created_at: o.created_at,
                updated_at: o.updated_at,
                history,
            }))
        })
    })
    .await
}

/// The `order_history` rows of one order, oldest first.
pub async fn order_history(db: &PgDb, id: String) -> Result<Vec<HistoryEntry>, DbError> {
    snapshot(db, move |tx| {
        Box::pin(async move { history_rows(tx, &id).await })
    })
    .await
}

async fn history_rows(tx: &PgTx<'_>, id: &str) -> Result<Vec<HistoryEntry>, tokio_postgres::Error> {
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT status, {}, reason FROM order_history WHERE order_id = $1 ORDER BY id",
            ts("at")
        ))
        .await?;
    tx.query(&stmt, &[&id])
        .await?
        .iter()
        .map(|r| {
            Ok(HistoryEntry {
                status: r.try_get(0)?,
                at: r.try_get(1)?,
                reason: r.try_get(2)?,
            })
        })
        .collect()
}

/// `from <= created_at < to` (each side optional, RFC 3339 as the gateway normalises them)
/// and, when given, one seller's orders: parameters $1 from, $2 to, $3 seller.
const REPORT_FILTER: &str = "($1::text IS NULL OR created_at >= $1::text::timestamptz)
     AND ($2::text IS NULL OR created_at < $2::text::timestamptz)
     AND ($3::text IS NULL OR seller_id = $3::text)";

/// Orders per status, confirmed units and revenue, and the best-selling products of a period
/// (as `store::sales_summary`, from one snapshot). Ties among products are broken by id in
/// byte order (`COLLATE "C"`), as SQLite compares text.
pub async fn sales_summary(db: &PgDb, query: ReportQuery) -> Result<SalesSummary, DbError> {
    snapshot(db, move |tx| {
        Box::pin(async move {
            let filter: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                [&query.from, &query.to, &query.seller_id];
            let mut orders = StatusCounts::default();
            let stmt = tx
                .prepare_cached(&format!(
                    "SELECT status, COUNT(*) FROM orders WHERE {REPORT_FILTER} GROUP BY status"
                ))
                .await?;
            for row in tx.query(&stmt, &filter).await? {
                decide::count_status(&mut orders, row.try_get(0)?, row.try_get(1)?);
            }
            let stmt = tx
                .prepare_cached(&format!(
                    "SELECT COALESCE(SUM(quantity), 0)::bigint,
                            COALESCE(SUM(quantity * unit_price_cents), 0)::bigint
                     FROM orders WHERE status = 'CONFIRMED' AND {REPORT_FILTER}"
                ))
                .await?;
            let row = tx.query_one(&stmt, &filter).await?;
            let (units_confirmed, revenue_confirmed_cents) = (row.try_get(0)?, row.try_get(1)?);
            // The name of the product at its latest confirmed reservation, as orders.db reports.
            let stmt = tx
                .prepare_cached(&format!(
                    "SELECT product_id, (array_agg(product_name ORDER BY updated_at DESC))[1],
                            SUM(quantity)::bigint AS units,
                            COALESCE(SUM(quantity * unit_price_cents), 0)::bigint AS revenue
                     FROM orders WHERE status = 'CONFIRMED' AND {REPORT_FILTER}
                     GROUP BY product_id
                     ORDER BY revenue DESC, units DESC, product_id COLLATE \"C\"
                     LIMIT {TOP_PRODUCTS}"
                ))
                .await?;
            let top_products = tx
                .query(&stmt, &filter)
                .await?
                .iter()
                .map(|r| {
                    Ok(ProductSales {
                        product_id: r.try_get(0)?,
                        name: r.try_get(1)?,
                        units_confirmed: r.try_get(2)?,
                        revenue_confirmed_cents: r.try_get(3)?,
                    })
                })
                .collect::<Result<_, tokio_postgres::Error>>()?;
            Ok(SalesSummary {
                orders,
                units_confirmed,
                revenue_confirmed_cents,
                top_products,
            })
        })
    })
    .await
}

/// Every seller with orders in the period, ranked by confirmed revenue, then units, then
/// orders, then seller id (orders without a seller first, as in SQLite).
pub async fn sellers_report(db: &PgDb, query: ReportQuery) -> Result<SellersReport, DbError> {
    snapshot(db, move |tx| {
        Box::pin(async move {
            let stmt = tx
                .prepare_cached(&format!(
                    "SELECT seller_id, COUNT(*) AS orders,
                            COALESCE(SUM(CASE WHEN status = 'CONFIRMED' THEN quantity END), 0)::bigint AS units,
                            COALESCE(SUM(CASE WHEN status = 'CONFIRMED' THEN quantity * unit_price_cents END), 0)::bigint AS revenue
                     FROM orders WHERE {REPORT_FILTER}
                     GROUP BY seller_id
                     ORDER BY revenue DESC, units DESC, orders DESC, seller_id COLLATE \"C\" NULLS FIRST"
                ))
                .await?;
            let sellers = tx
                .query(&stmt, &[&query.from, &query.to, &None::<String>])
                .await?
                .iter()
                .map(|r| {
                    Ok(SellerSales {
                        seller_id: r.try_get(0)?,
                        orders: r.try_get(1)?,
                        units_confirmed: r.try_get(2)?,
                        revenue_confirmed_cents: r.try_get(3)?,
                    })
                })
                .collect::<Result<_, tokio_postgres::Error>>()?;
            Ok(SellersReport { sellers })
        })
    })
    .await
}
