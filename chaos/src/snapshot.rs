//! Reads the services' stores directly (their SQLite files, or with `--postgres` their
//! databases): the state of every order, its history, the stock of every product, and how many
//! messages still wait in each outbox.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

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

/// Order id → how many terminal states (CONFIRMED, REJECTED, CANCELLED) its `order_history`
/// holds; orders with none are absent.
pub fn terminal_history(data_dir: &Path) -> rusqlite::Result<HashMap<String, usize>> {
    let conn = open(&data_dir.join("orders.db"))?;
    let mut stmt = conn.prepare(TERMINAL_HISTORY)?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as usize))
    })?;
    rows.collect()
}

const TERMINAL_HISTORY: &str = "SELECT order_id, COUNT(*) FROM order_history \
     WHERE status IN ('CONFIRMED', 'REJECTED', 'CANCELLED') GROUP BY order_id";

/// Where a run's orders and stock are: the services' SQLite files, or (`--postgres`) their
/// databases on the run's private PostgreSQL. Every read opens its own connection, so a read
/// while PostgreSQL is down fails instead of hanging on to a dead one.
#[derive(Debug, Clone)]
pub enum Stores {
    Sqlite { orders: PathBuf, products: PathBuf },
    Postgres { orders: String, products: String },
}

impl Stores {
    pub async fn orders(&self) -> anyhow::Result<HashMap<String, OrderRow>> {
        match self {
            Stores::Sqlite { orders: dir, .. } => Ok(orders(dir)?),
            Stores::Postgres { orders: url, .. } => {
                let rows = pg_rows(
                    url,
                    "SELECT id::text, product_id::text, quantity::text, status::text, updated_at::text FROM orders",
                )
                .await?;
                rows.into_iter()
                    .map(|r| {
                        Ok((
                            r[0].clone(),
                            OrderRow {
                                product_id: r[1].clone(),
                                quantity: r[2].parse()?,
                                status: r[3].clone(),
                                updated_at: rfc3339(&r[4]),
                            },
                        ))
                    })
                    .collect()
            }
        }
    }

    pub async fn stock(&self) -> anyhow::Result<HashMap<String, i64>> {
        match self {
            Stores::Sqlite { products, .. } => Ok(stock(products)?),
            Stores::Postgres { products, .. } => {
                let rows = pg_rows(products, "SELECT id::text, stock::text FROM products").await?;
                rows.into_iter()
                    .map(|r| Ok((r[0].clone(), r[1].parse()?)))
                    .collect()
            }
        }
    }

    /// Messages still waiting in the orders and products outboxes together.
    pub async fn outboxes(&self) -> anyhow::Result<i64> {
        match self {
            Stores::Sqlite { orders, products } => {
                Ok(outbox_len(&orders.join("orders.db"))?
                    + outbox_len(&products.join("products.db"))?)
            }
            Stores::Postgres { orders, products } => {
                let mut total = 0;
                for url in [orders, products] {
                    let rows = pg_rows(url, "SELECT COUNT(*)::text FROM outbox").await?;
                    total += rows
                        .first()
                        .and_then(|r| r.first())
                        .map_or(Ok(0), |n| n.parse())?;
                }
                Ok(total)
            }
        }
    }

    /// See [`terminal_history`].
    pub async fn terminal_history(&self) -> anyhow::Result<HashMap<String, usize>> {
        match self {
            Stores::Sqlite { orders, .. } => Ok(terminal_history(orders)?),
            Stores::Postgres { orders, .. } => {
                let sql = TERMINAL_HISTORY.replace("order_id,", "order_id::text,");
                let rows = pg_rows(
                    orders,
                    &format!("SELECT a, b::text FROM ({sql}) AS h(a, b)"),
                )
                .await?;
                rows.into_iter()
                    .map(|r| Ok((r[0].clone(), r[1].parse()?)))
                    .collect()
            }
        }
    }
}

/// Every row of `sql` as text (the simple query protocol), whatever the column types are.
async fn pg_rows(url: &str, sql: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let connection = tokio::spawn(connection);
    let messages = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        client.simple_query(&format!("SET TimeZone = 'UTC'; {sql}")),
    )
    .await??;
    drop(client);
    let _ = connection.await;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or_default().to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

/// A timestamp as RFC 3339: PostgreSQL prints a TIMESTAMPTZ as `2026-12-02 15:54:40.123+00`;
/// a TEXT column already holds RFC 3339.
fn rfc3339(value: &str) -> String {
    if !value.contains(' ') {
        return value.to_owned();
    }
    let mut v = value.replacen(' ', "T", 1);
    // A zone offset of hours only (`+00`) gets its minutes.
    if let Some(i) = v.rfind(['+', '-']).filter(|i| *i > 10)
        && v.len() - i == 3
    {
        v.push_str(":00");
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_timestamps_become_rfc3339() {
        use time::OffsetDateTime;
        use time::format_description::well_known::Rfc3339;
        for (pg, want) in [
            (
                "2026-12-02 15:54:40.123+00",
                "2026-12-02T15:54:40.123+00:00",
            ),
            ("2026-12-02 15:54:40+00", "2026-12-02T15:54:40+00:00"),
            ("2026-12-02 15:54:40.5+05:30", "2026-12-02T15:54:40.5+05:30"),
            ("2026-12-02T15:54:40.123Z", "2026-12-02T15:54:40.123Z"),
        ] {
            assert_eq!(rfc3339(pg), want);
            assert!(
                OffsetDateTime::parse(&rfc3339(pg), &Rfc3339).is_ok(),
                "{pg}"
            );
        }
    }
}
