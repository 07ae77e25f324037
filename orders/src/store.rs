//! The orders' storage interface, [`Store`]: `orders.db` (SQLite, this file) or the PostgreSQL
//! database every orders instance shares ([`pg`], with `DATABASE_URL`). Both apply the same
//! decisions (`crate::decide`); they differ only in how they load, lock and write rows.
//!
//! `orders.db`: the saga state of every order, and the transitions between states.
//!
//! Every transition is a guarded `UPDATE … WHERE status = 'PENDING'` committed together with the
//! outbox rows that announce it and its `order_history` row, so a transition happens once even if
//! Redis forgot everything, its messages go out even if the process dies right after the commit,
//! and the history never disagrees with the state.
//!
//! The sales reports (`orders.report.*`) are read from the same rows: the unit price and product
//! name are fixed on the order when products reserved the stock.

pub mod pg;

use std::path::Path;

use deadpool_sqlite::rusqlite::{self, OptionalExtension, Transaction, params};
use messaging::contracts::{
    CreateOrder, HistoryEntry, OrderView, ProductSales, ReportQuery, SalesSummary, SellerSales,
    SellersReport, StatusCounts, StockAnswer, TOP_PRODUCTS,
};
use messaging::store::{Backend, DbError, SqliteTx};
use messaging::{Db, PgDb};

use crate::decide::{self, AnswerDecision};
pub use crate::decide::{Applied, OrderRow, OrderStatus};

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
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    unit_price_cents INTEGER,
    product_name TEXT
);
CREATE INDEX IF NOT EXISTS orders_pending_by_deadline ON orders (deadline_ms) WHERE status = 'PENDING';
CREATE INDEX IF NOT EXISTS orders_by_created ON orders (created_at);
CREATE TABLE IF NOT EXISTS order_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('PENDING', 'CONFIRMED', 'REJECTED', 'CANCELLED')),
    reason TEXT,
    at TEXT NOT NULL,
    order_seq INTEGER
);
";

/// How an order's history rows are found: by `order_seq`, the rowid of the order in `orders`,
/// not by the order id. Order ids are random (UUIDv5 of an Idempotency-Key, or chosen by the
/// client), so an index on them puts every new row on a leaf page of its own: at saturation
/// `order_history_by_order (order_id, id)` was 28 of the 62 pages each commit wrote to the WAL
/// (docs/benchmarks.md, session 19). Rowids grow with the orders, so new rows land on the last
/// pages of this index. Created by [`migrate`] (a file from before has no `order_seq` when the
/// schema runs).
const HISTORY_INDEX: &str = "
CREATE INDEX IF NOT EXISTS order_history_by_seq ON order_history (order_seq, id);
DROP INDEX IF EXISTS order_history_by_order;
";

/// Gives history rows written without `order_seq` (by version 1 of the migration, or by an
/// older release that ran on this file) their order's rowid. Runs at every start; with none
/// left it reads only the start of [`HISTORY_INDEX`] (NULLs sort first).
const HISTORY_SEQ_BACKFILL: &str = "
UPDATE order_history SET order_seq = (SELECT rowid FROM orders WHERE orders.id = order_history.order_id)
WHERE order_seq IS NULL;
";

/// Columns added to `orders` after its first release: `(name, type)`. `CREATE TABLE IF NOT
/// EXISTS` leaves an existing table as it is, so [`migrate`] adds them to an older orders.db.
const ADDED_COLUMNS: [(&str, &str); 2] =
    [("unit_price_cents", "INTEGER"), ("product_name", "TEXT")];

/// The schema version [`migrate`] brings orders.db to (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 2;

/// Opens orders.db with its schema and brings an older file up to date.
pub async fn open(path: &Path) -> Result<Db, DbError> {
    let db = Db::open(path, SCHEMA).await?;
    db.write(|tx| Ok(migrate(tx)?)).await?;
    Ok(db)
}

/// Version 1: the reservation's unit price and product name on each order, and a history row
/// for every order that predates `order_history` (PENDING at its creation, then its current
/// state at its last update), so every order has a history. Version 2: history rows found by
/// their order's rowid ([`HISTORY_INDEX`]). Runs in one transaction; on an up-to-date file it
/// only looks for history rows without `order_seq` ([`HISTORY_SEQ_BACKFILL`]) and for the old
/// index, which an older release would have made again.
pub fn migrate(tx: &Transaction) -> rusqlite::Result<()> {
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version < 1 {
        add_missing_columns(tx, "orders", &ADDED_COLUMNS)?;
        history_for_older_orders(tx)?;
    }
    add_missing_columns(tx, "order_history", &[("order_seq", "INTEGER")])?;
    tx.execute_batch(HISTORY_INDEX)?;
    tx.execute_batch(HISTORY_SEQ_BACKFILL)?;
    if version < SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    Ok(())
}

/// `ALTER TABLE … ADD COLUMN` for each of `columns` that `table` does not have yet.
fn add_missing_columns(
    tx: &Transaction,
    table: &str,
    columns: &[(&str, &str)],
) -> rusqlite::Result<()> {
    let existing: Vec<String> = tx
        .prepare("SELECT name FROM pragma_table_info(?1)")?
        .query_map([table], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for (column, kind) in columns {
        if !existing.iter().any(|c| c == column) {
            tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))?;
        }
    }
    Ok(())
}

/// Version 1's history rows for orders that predate `order_history`.
fn history_for_older_orders(tx: &Transaction) -> rusqlite::Result<()> {
    tx.execute_batch(
        "INSERT INTO order_history (order_id, status, reason, at)
             SELECT id, 'PENDING', NULL, created_at FROM orders
             WHERE id NOT IN (SELECT order_id FROM order_history) ORDER BY created_at;
         INSERT INTO order_history (order_id, status, reason, at)
             SELECT id, status, reason, updated_at FROM orders
             WHERE status <> 'PENDING'
               AND id NOT IN (SELECT order_id FROM order_history WHERE status <> 'PENDING')
             ORDER BY updated_at;",
    )
}

const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ','now')";

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

/// The order with its history, oldest transition first.
pub fn get_order(conn: &rusqlite::Connection, id: &str) -> rusqlite::Result<Option<OrderView>> {
    let Some(o) = load(conn, id)? else {
        return Ok(None);
    };
    let history = order_history(conn, id)?;
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
}

/// The history rows of order `?1`, oldest first (see [`order_history`]).
const HISTORY_OF_ORDER: &str = "SELECT status, at, reason FROM order_history
     WHERE order_seq = (SELECT rowid FROM orders WHERE id = ?1) AND order_id = ?1
     ORDER BY order_seq, id";

/// The `order_history` rows of one order, oldest first. Found by the order's rowid, and checked
/// against its id as well: SQLite keeps a rowid through `VACUUM` for a table with indexes, as
/// `orders` has, but a table rebuilt by hand could renumber them, and then a history must read
/// empty (until `order_seq` is set to NULL and the next start fills it again), never wrong.
pub fn order_history(conn: &rusqlite::Connection, id: &str) -> rusqlite::Result<Vec<HistoryEntry>> {
    conn.prepare_cached(HISTORY_OF_ORDER)?
        .query_map(params![id], |r| {
            Ok(HistoryEntry {
                status: r.get(0)?,
                at: r.get(1)?,
                reason: r.get(2)?,
            })
        })?
        .collect()
}

/// Records a new PENDING order and queues `product.reserveStock` and `order.created`.
/// Returns `false` when the order exists already (a replayed or redelivered create).
pub fn create_order(
    tx: &SqliteTx,
    cmd: &CreateOrder,
    deadline_ms: i64,
    traceparent: Option<&str>,
) -> Result<bool, DbError> {
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO orders (id, product_id, quantity, customer_id, seller_id, idempotency_key, status, deadline_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'PENDING', ?7)",
    )?;
    let inserted = insert.execute(params![
        cmd.order_id,
        cmd.product_id,
        cmd.quantity,
        cmd.customer_id,
        cmd.seller_id,
        cmd.idempotency_key,
        deadline_ms
    ])?;
    if inserted == 0 {
        return Ok(false);
    }
    tx.enqueue(&decide::reserve_message(cmd, traceparent)?)?;
    transitioned(tx, &cmd.order_id, traceparent)?;
    Ok(true)
}

/// Applies `product.stockReserved` (`reserved = true`) or `product.stockRejected`.
pub fn apply_stock_answer(
    tx: &SqliteTx,
    answer: &StockAnswer,
    reserved: bool,
    traceparent: Option<&str>,
) -> Result<Applied, DbError> {
    let Some(order) = load(tx, &answer.order_id)? else {
        return Ok(Applied::UnknownOrder);
    };
    match decide::decide_answer(order.status, order.compensated, answer, reserved) {
        AnswerDecision::Transition { to, reason } => {
            // Products' answer is the truth about the seller; the gateway's lookup only came first.
            let changed = tx.prepare_cached(
                &format!("UPDATE orders SET status = ?2, reason = ?3, seller_id = COALESCE(?4, seller_id),
                          unit_price_cents = ?5, product_name = ?6, updated_at = {NOW}
                          WHERE id = ?1 AND status = 'PENDING'"),
            )?
            .execute(params![
                order.id,
                to,
                reason,
                answer.seller_id,
                answer.unit_price_cents,
                answer.product_name
            ])?;
            if changed == 0 {
                return Ok(Applied::AlreadyDone(order.status));
            }
            transitioned(tx, &order.id, traceparent)?;
            Ok(Applied::Transitioned(to))
        }
        AnswerDecision::Compensate => {
            // The late answer still tells whose product it was, for the seller's reports.
            tx.prepare_cached(
                "UPDATE orders SET compensated = 1, seller_id = COALESCE(seller_id, ?2) WHERE id = ?1 AND compensated = 0",
            )?
            .execute(params![order.id, answer.seller_id])?;
            tx.enqueue(&decide::release_message(&order, traceparent)?)?;
            Ok(Applied::Compensated)
        }
        AnswerDecision::AlreadyDone(status) => Ok(Applied::AlreadyDone(status)),
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
pub fn cancel(tx: &SqliteTx, order_id: &str, reason: &str) -> Result<bool, DbError> {
    let changed = tx.prepare_cached(
        &format!("UPDATE orders SET status = 'CANCELLED', reason = ?2, updated_at = {NOW} WHERE id = ?1 AND status = 'PENDING'"),
    )?
    .execute(params![order_id, reason])?;
    if changed == 1 {
        transitioned(tx, order_id, None)?;
    }
    Ok(changed == 1)
}

/// Records the state the order just entered: its `order_history` row and the `order.<status>`
/// event describing the order as it is now, both in the transaction of the change.
fn transitioned(tx: &SqliteTx, order_id: &str, traceparent: Option<&str>) -> Result<(), DbError> {
    let Some(order) = load(tx, order_id)? else {
        return Ok(());
    };
    let (history, event) = decide::transition_effects(&order, traceparent)?;
    tx.prepare_cached(
        "INSERT INTO order_history (order_id, order_seq, status, reason, at)
         VALUES (?1, (SELECT rowid FROM orders WHERE id = ?1), ?2, ?3, ?4)",
    )?
    .execute(params![
        history.order_id,
        history.status,
        history.reason,
        history.at
    ])?;
    Ok(tx.enqueue(&event)?)
}

/// `from <= created_at < to` (each side optional) and, when given, one seller's orders:
/// parameters ?1 from, ?2 to, ?3 seller.
const REPORT_FILTER: &str = "(?1 IS NULL OR created_at >= ?1) AND (?2 IS NULL OR created_at < ?2)
     AND (?3 IS NULL OR seller_id = ?3)";

/// Orders per status, confirmed units and revenue, and the best-selling products of a period.
/// Revenue is `quantity × unit_price_cents` summed in integer cents; an order confirmed before
/// unit prices were recorded counts in units but adds no revenue.
pub fn sales_summary(
    conn: &rusqlite::Connection,
    query: &ReportQuery,
) -> rusqlite::Result<SalesSummary> {
    let filter = params![query.from, query.to, query.seller_id];
    let mut orders = StatusCounts::default();
    let mut by_status = conn.prepare_cached(&format!(
        "SELECT status, COUNT(*) FROM orders WHERE {REPORT_FILTER} GROUP BY status"
    ))?;
    let mut rows = by_status.query(filter)?;
    while let Some(row) = rows.next()? {
        decide::count_status(&mut orders, row.get(0)?, row.get(1)?);
    }
    let (units_confirmed, revenue_confirmed_cents) = conn
        .prepare_cached(&format!(
            "SELECT COALESCE(SUM(quantity), 0), COALESCE(SUM(quantity * unit_price_cents), 0)
             FROM orders WHERE status = 'CONFIRMED' AND {REPORT_FILTER}"
        ))?
        .query_row(filter, |r| Ok((r.get(0)?, r.get(1)?)))?;
    // SQLite takes the bare `product_name` from the row that holds MAX(updated_at): the name
    // of the product at its latest confirmed reservation.
    let top_products = conn
        .prepare_cached(&format!(
            "SELECT product_id, product_name, MAX(updated_at), SUM(quantity) AS units,
                    COALESCE(SUM(quantity * unit_price_cents), 0) AS revenue
             FROM orders WHERE status = 'CONFIRMED' AND {REPORT_FILTER}
             GROUP BY product_id ORDER BY revenue DESC, units DESC, product_id LIMIT {TOP_PRODUCTS}"
        ))?
        .query_map(filter, |r| {
            Ok(ProductSales {
                product_id: r.get(0)?,
                name: r.get(1)?,
                units_confirmed: r.get(3)?,
                revenue_confirmed_cents: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(SalesSummary {
        orders,
        units_confirmed,
        revenue_confirmed_cents,
        top_products,
    })
}

/// Every seller with orders in the period, ranked by confirmed revenue, then units, then orders.
/// `query.seller_id` is ignored: this report is about all sellers.
pub fn sellers_report(
    conn: &rusqlite::Connection,
    query: &ReportQuery,
) -> rusqlite::Result<SellersReport> {
    let sellers = conn
        .prepare_cached(&format!(
            "SELECT seller_id, COUNT(*) AS orders,
                    COALESCE(SUM(CASE WHEN status = 'CONFIRMED' THEN quantity END), 0) AS units,
                    COALESCE(SUM(CASE WHEN status = 'CONFIRMED' THEN quantity * unit_price_cents END), 0) AS revenue
             FROM orders WHERE {REPORT_FILTER}
             GROUP BY seller_id ORDER BY revenue DESC, units DESC, orders DESC, seller_id"
        ))?
        .query_map(params![query.from, query.to, None::<String>], |r| {
            Ok(SellerSales {
                seller_id: r.get(0)?,
                orders: r.get(1)?,
                units_confirmed: r.get(2)?,
                revenue_confirmed_cents: r.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(SellersReport { sellers })
}

/// The orders' storage interface: orders.db in `DATA_DIR` (SQLite, one instance), or the
/// PostgreSQL database every orders instance shares (`DATABASE_URL`). The decisions are the
/// same (`crate::decide`); each backend loads rows and applies the writes they name.
#[derive(Clone)]
pub enum Store {
    Sqlite(Db),
    Postgres(PgDb),
}

impl Store {
    /// PostgreSQL when `database` is given (nothing is written to `data_dir` then, and the
    /// pool connects later: see `PgDb::run`), else orders.db in `data_dir`.
    pub async fn open(
        data_dir: &Path,
        database: Option<&messaging::pg::PgConfig>,
    ) -> Result<Self, DbError> {
        match database {
            Some(config) => Ok(Self::Postgres(PgDb::new(
                config,
                crate::SERVICE,
                &pg::MIGRATIONS,
                messaging::store::InboxRetention::from_env()?,
            )?)),
            None => Ok(Self::Sqlite(open(&data_dir.join("orders.db")).await?)),
        }
    }

    /// The database, for the relay, the broker link and the readiness check.
    pub fn backend(&self) -> Backend {
        match self {
            Self::Sqlite(db) => db.clone().into(),
            Self::Postgres(db) => db.clone().into(),
        }
    }

    /// Records a new PENDING order with its `product.reserveStock` and `order.created`.
    /// `false`: the order exists already (a replayed create), nothing written.
    pub async fn create_order(
        &self,
        cmd: CreateOrder,
        deadline_ms: i64,
        traceparent: Option<String>,
    ) -> Result<bool, DbError> {
        match self {
            Self::Sqlite(db) => {
                db.write(move |tx| create_order(tx, &cmd, deadline_ms, traceparent.as_deref()))
                    .await
            }
            Self::Postgres(db) => pg::create_order(db, cmd, deadline_ms, traceparent).await,
        }
    }

    /// Applies `product.stockReserved` (`reserved`) or `product.stockRejected`.
    pub async fn apply_stock_answer(
        &self,
        answer: StockAnswer,
        reserved: bool,
        traceparent: Option<String>,
    ) -> Result<Applied, DbError> {
        match self {
            Self::Sqlite(db) => {
                db.write(move |tx| {
                    apply_stock_answer(tx, &answer, reserved, traceparent.as_deref())
                })
                .await
            }
            Self::Postgres(db) => pg::apply_stock_answer(db, answer, reserved, traceparent).await,
        }
    }

    /// Up to `limit` PENDING orders whose deadline (`deadline_ms`) is at or before `now_ms`.
    pub async fn expired(&self, now_ms: i64, limit: usize) -> Result<Vec<String>, DbError> {
        match self {
            Self::Sqlite(db) => db.call(move |conn| expired(conn, now_ms, limit)).await,
            Self::Postgres(db) => pg::expired(db, now_ms, limit).await,
        }
    }

    /// PENDING → CANCELLED with `reason` and `order.cancelled`; whether it happened.
    pub async fn cancel(&self, order_id: &str, reason: &str) -> Result<bool, DbError> {
        match self {
            Self::Sqlite(db) => {
                let (id, why) = (order_id.to_owned(), reason.to_owned());
                db.write(move |tx| cancel(tx, &id, &why)).await
            }
            Self::Postgres(db) => pg::cancel(db, order_id, reason).await,
        }
    }

    /// The order with its history (`orders.get`).
    pub async fn get_order(&self, id: String) -> Result<Option<OrderView>, DbError> {
        match self {
            Self::Sqlite(db) => sqlite_snapshot(db, move |conn| get_order(conn, &id)).await,
            Self::Postgres(db) => pg::get_order(db, id).await,
        }
    }

    /// The `order_history` rows of an order, oldest first.
    pub async fn order_history(&self, id: String) -> Result<Vec<HistoryEntry>, DbError> {
        match self {
            Self::Sqlite(db) => sqlite_snapshot(db, move |conn| order_history(conn, &id)).await,
            Self::Postgres(db) => pg::order_history(db, id).await,
        }
    }

    /// `orders.report.summary`.
    pub async fn sales_summary(&self, query: ReportQuery) -> Result<SalesSummary, DbError> {
        match self {
            Self::Sqlite(db) => sqlite_snapshot(db, move |conn| sales_summary(conn, &query)).await,
            Self::Postgres(db) => pg::sales_summary(db, query).await,
        }
    }

    /// `orders.report.sellers`.
    pub async fn sellers_report(&self, query: ReportQuery) -> Result<SellersReport, DbError> {
        match self {
            Self::Sqlite(db) => sqlite_snapshot(db, move |conn| sellers_report(conn, &query)).await,
            Self::Postgres(db) => pg::sellers_report(db, query).await,
        }
    }
}

/// Runs `read` in one read transaction, so an order and its history, or the several sums of
/// a report, come from the same snapshot even while the saga writes.
async fn sqlite_snapshot<R, F>(db: &Db, read: F) -> Result<R, DbError>
where
    R: Send + 'static,
    F: FnOnce(&rusqlite::Connection) -> rusqlite::Result<R> + Send + 'static,
{
    db.call(move |conn| {
        let snapshot = conn.transaction()?;
        read(&snapshot)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// orders.db as version 1 made it: `order_history` without `order_seq`, indexed by order id.
    const VERSION_1: &str = "
        CREATE TABLE orders (id TEXT PRIMARY KEY, product_id TEXT NOT NULL, quantity INTEGER NOT NULL,
            customer_id TEXT, seller_id TEXT, idempotency_key TEXT, status TEXT NOT NULL,
            reason TEXT, compensated INTEGER NOT NULL DEFAULT 0, deadline_ms INTEGER NOT NULL,
            created_at TEXT NOT NULL, updated_at TEXT NOT NULL, unit_price_cents INTEGER,
            product_name TEXT);
        CREATE TABLE order_history (id INTEGER PRIMARY KEY AUTOINCREMENT, order_id TEXT NOT NULL,
            status TEXT NOT NULL, reason TEXT, at TEXT NOT NULL);
        CREATE INDEX order_history_by_order ON order_history (order_id, id);
        INSERT INTO orders (id, product_id, quantity, status, deadline_ms, created_at, updated_at)
        VALUES ('b', 'p', 1, 'CONFIRMED', 0, 't1', 't2'), ('a', 'p', 1, 'PENDING', 0, 't3', 't3');
        INSERT INTO order_history (order_id, status, at)
        VALUES ('b', 'PENDING', 't1'), ('a', 'PENDING', 't3'), ('b', 'CONFIRMED', 't2');
        PRAGMA user_version = 1;";

    fn indexes(conn: &rusqlite::Connection) -> Vec<String> {
        conn.prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'order_history'",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
    }

    fn statuses(conn: &rusqlite::Connection, id: &str) -> Vec<String> {
        order_history(conn, id)
            .unwrap()
            .into_iter()
            .map(|h| h.status)
            .collect()
    }

    fn migrated(conn: &mut rusqlite::Connection) {
        let tx = conn.transaction().unwrap();
        migrate(&tx).unwrap();
        tx.commit().unwrap();
    }

    #[test]
    fn version_1_history_is_found_by_the_orders_rowid_after_the_migration() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(VERSION_1).unwrap();
        migrated(&mut conn);
        assert_eq!(indexes(&conn), ["order_history_by_seq"]);
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 2);
        let unmatched: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM order_history h
                 WHERE order_seq IS NOT (SELECT rowid FROM orders o WHERE o.id = h.order_id)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(unmatched, 0);
        assert_eq!(statuses(&conn, "b"), ["PENDING", "CONFIRMED"]);
        assert_eq!(statuses(&conn, "a"), ["PENDING"]);
        assert!(statuses(&conn, "unknown").is_empty());

        // An older release ran on the migrated file: it made its index again and wrote a row
        // without `order_seq`. The next start repairs both.
        conn.execute_batch(
            "CREATE INDEX order_history_by_order ON order_history (order_id, id);
             INSERT INTO order_history (order_id, status, at) VALUES ('a', 'CANCELLED', 't4');",
        )
        .unwrap();
        migrated(&mut conn);
        assert_eq!(indexes(&conn), ["order_history_by_seq"]);
        assert_eq!(statuses(&conn, "a"), ["PENDING", "CANCELLED"]);

        // Rows that point at another order's rowid (a table renumbered by hand) are not shown.
        conn.execute_batch("UPDATE order_history SET order_seq = (SELECT rowid FROM orders WHERE id = 'b') WHERE order_id = 'a'")
            .unwrap();
        assert_eq!(statuses(&conn, "b"), ["PENDING", "CONFIRMED"]);
        assert!(statuses(&conn, "a").is_empty());
    }

    #[test]
    fn an_orders_history_is_read_through_the_rowid_index_in_order() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        migrated(&mut conn);
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {HISTORY_OF_ORDER}"))
            .unwrap()
            .query_map(["x"], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|step| step.contains("USING INDEX order_history_by_seq (order_seq=?)")),
            "{plan:?}"
        );
        assert!(
            !plan.iter().any(|step| step.contains("TEMP B-TREE")),
            "{plan:?}"
        );
    }
}
