//! Reads the services' SQLite files directly: the state of every order, the stock of every
//! product, and how many messages still wait in each outbox.

use std::collections::HashMap;
use std::path::Path;

use deadpool_sqlite::rusqlite::{self, Connection, OpenFlags};

#[derive(Debug, Clone)]
pub struct OrderRow {
    pub product_id: String,
    pub quantity: i64,
    pub status: String,
    pub updated_at: String,
}

/// Order id → row, from `orders.db`.
pub fn orders(data_dir: &Path) -> rusqlite::Result<HashMap<String, OrderRow>> {
    let conn = open(&data_dir.join("orders.db"))?;
    let mut stmt =
        conn.prepare("SELECT id, product_id, quantity, status, updated_at FROM orders")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            OrderRow {
                product_id: r.get(1)?,
                quantity: r.get(2)?,
                status: r.get(3)?,
                updated_at: r.get(4)?,
            },
        ))
    })?;
    rows.collect()
}

/// Product id → current stock, from `products.db`.
pub fn stock(data_dir: &Path) -> rusqlite::Result<HashMap<String, i64>> {
    let conn = open(&data_dir.join("products.db"))?;
    let mut stmt = conn.prepare("SELECT id, stock FROM products")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// Messages still waiting in a service's outbox.
pub fn outbox_len(db: &Path) -> rusqlite::Result<i64> {
    open(db)?.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    // Not read-only: a reader of a WAL database may need to create its shared-memory file.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}
