//! What the orders' store tests share: a store on either backend (SQLite in a temp dir, or a
//! PostgreSQL database of its own, migrated and dropped at the end), and a look at its outbox.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use messaging::contracts::{CreateOrder, StockAnswer};
use messaging::pg::PgConfig;
use orders::store::Store;
use testkit::TestDatabase;
use tokio_util::sync::CancellationToken;

/// Which backend a test runs on, and what it must clean up.
pub enum Kind {
    Sqlite(tempfile::TempDir),
    Postgres(TestDatabase),
}

pub struct Fixture {
    pub store: Store,
    pub kind: Kind,
    stop: CancellationToken,
}

impl Fixture {
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), None).await.unwrap();
        Self {
            store,
            kind: Kind::Sqlite(dir),
            stop: CancellationToken::new(),
        }
    }

    pub async fn postgres(hint: &str) -> Self {
        let db = TestDatabase::create(hint).await.unwrap();
        let stop = CancellationToken::new();
        let store = pg_store(&db, &stop).await;
        Self {
            store,
            kind: Kind::Postgres(db),
            stop,
        }
    }

    /// Another instance's store on the same PostgreSQL database (a pool of its own).
    pub async fn another_instance(&self) -> Store {
        let Kind::Postgres(db) = &self.kind else {
            panic!("only PostgreSQL is shared by several instances");
        };
        pg_store(db, &self.stop).await
    }

    /// Runs `scenario` on this store, then cleans up (drops the database) whether it passed
    /// or panicked.
    pub async fn run<F, Fut>(self, scenario: F)
    where
        F: FnOnce(Probe) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let probe = Probe {
            store: self.store.clone(),
            pg_url: match &self.kind {
                Kind::Postgres(db) => Some(db.url.clone()),
                Kind::Sqlite(_) => None,
            },
        };
        let outcome = tokio::spawn(scenario(probe)).await;
        self.stop.cancel();
        self.store.backend().close().await;
        if let Kind::Postgres(db) = self.kind {
            db.drop().await.unwrap();
        }
        if let Err(e) = outcome {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// A migrated store on `db`, as an orders instance opens it.
async fn pg_store(db: &TestDatabase, stop: &CancellationToken) -> Store {
    let mut config = PgConfig::parse(&db.url).unwrap();
    config.pool_size = 8;
    let store = Store::open(std::path::Path::new("/nonexistent"), Some(&config))
        .await
        .unwrap();
    let Store::Postgres(pg) = &store else {
        panic!("DATABASE_URL given but not PostgreSQL");
    };
    tokio::spawn(pg.clone().run(stop.clone()));
    let ready = tokio::time::timeout(Duration::from_secs(20), pg.wait_ready(stop)).await;
    assert_eq!(ready, Ok(true), "the orders schema was not migrated");
    store
}

/// The store under test plus a look at what it queued.
#[derive(Clone)]
pub struct Probe {
    pub store: Store,
    pg_url: Option<String>,
}

impl Probe {
    /// The routing keys of the outbox rows of `order_id`, in the order they were queued.
    pub async fn outbox(&self, order_id: &str) -> Vec<String> {
        let id = order_id.to_owned();
        match &self.store {
            Store::Sqlite(db) => db
                .call(move |conn| {
                    conn.prepare(
                        "SELECT routing_key FROM outbox WHERE correlation_id = ?1 ORDER BY id",
                    )?
                    .query_map([id], |r| r.get(0))?
                    .collect()
                })
                .await
                .unwrap(),
            Store::Postgres(_) => {
                let client = connect(self.pg_url.as_deref().unwrap()).await;
                client
                    .query(
                        "SELECT routing_key FROM outbox WHERE correlation_id = $1 ORDER BY id",
                        &[&id],
                    )
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect()
            }
        }
    }

    /// How many outbox rows there are with `routing_key`.
    pub async fn outbox_count(&self, routing_key: &str) -> i64 {
        let key = routing_key.to_owned();
        match &self.store {
            Store::Sqlite(db) => db
                .call(move |conn| {
                    conn.query_row(
                        "SELECT COUNT(*) FROM outbox WHERE routing_key = ?1",
                        [key],
                        |r| r.get(0),
                    )
                })
                .await
                .unwrap(),
            Store::Postgres(_) => {
                let client = connect(self.pg_url.as_deref().unwrap()).await;
                client
                    .query_one(
                        "SELECT COUNT(*) FROM outbox WHERE routing_key = $1",
                        &[&key],
                    )
                    .await
                    .unwrap()
                    .get(0)
            }
        }
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

pub fn create(
    order_id: &str,
    product_id: &str,
    quantity: u32,
    seller: Option<&str>,
) -> CreateOrder {
    CreateOrder {
        order_id: order_id.into(),
        product_id: product_id.into(),
        quantity,
        customer_id: Some("c-1".into()),
        idempotency_key: None,
        seller_id: seller.map(str::to_owned),
    }
}

pub fn answer(order: &CreateOrder, unit_price_cents: i64, name: &str) -> StockAnswer {
    StockAnswer {
        order_id: order.order_id.clone(),
        product_id: order.product_id.clone(),
        quantity: order.quantity,
        seller_id: Some("seller-a".into()),
        reason: None,
        unit_price_cents: Some(unit_price_cents),
        product_name: Some(name.into()),
    }
}

pub fn rejection(order: &CreateOrder) -> StockAnswer {
    StockAnswer {
        reason: Some("insufficient stock".into()),
        unit_price_cents: None,
        product_name: None,
        ..answer(order, 0, "")
    }
}

/// A deadline well in the future (ms since the epoch).
pub fn later() -> i64 {
    now_ms() + 3_600_000
}

/// A deadline already passed.
pub fn overdue() -> i64 {
    now_ms() - 1_000
}

pub use messaging::clock::now_ms;
