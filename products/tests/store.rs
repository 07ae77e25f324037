//! The stock logic on both backends (SQLite file, PostgreSQL database per test): reserve,
//! reject, release, duplicates applied once; and on PostgreSQL, two instances reserving from
//! one product at the same time never oversell.

use std::time::Duration;

use messaging::contracts::{CreateProduct, ReleaseStock, ReserveStock};
use messaging::pg::PgConfig;
use messaging::store::InboxRetention;
use messaging::topology::keys;
use messaging::{Db, Incoming, MessageMeta, PgDb};
use products::store::{self, Reserved, Store};
use testkit::TestDatabase;
use tokio_util::sync::CancellationToken;

/// A store on one backend, and what the test must tidy up.
struct Backend {
    store: Store,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(TestDatabase, CancellationToken)>,
}

impl Backend {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("products.db"), store::SCHEMA)
            .await
            .unwrap();
        Self {
            store: Store::Sqlite(db),
            _dir: Some(dir),
            pg: None,
        }
    }

    async fn postgres(hint: &str) -> Self {
        let database = TestDatabase::create(hint).await.unwrap();
        let stop = CancellationToken::new();
        let store = Store::Postgres(pg_instance(&database, &stop).await);
        Self {
            store,
            _dir: None,
            pg: Some((database, stop)),
        }
    }

    /// The routing keys in the outbox, oldest first.
    async fn outbox(&self) -> Vec<String> {
        match &self.store {
            Store::Sqlite(db) => db
                .call(|c| {
                    let mut stmt = c.prepare("SELECT routing_key FROM outbox ORDER BY id")?;
                    let keys = stmt.query_map([], |r| r.get(0))?;
                    keys.collect()
                })
                .await
                .unwrap(),
            Store::Postgres(db) => db
                .read(|c| {
                    Box::pin(async move {
                        let rows = c
                            .query("SELECT routing_key FROM outbox ORDER BY id", &[])
                            .await?;
                        Ok(rows.iter().map(|r| r.get(0)).collect())
                    })
                })
                .await
                .unwrap(),
        }
    }

    async fn cleanup(self) {
        if let Some((database, stop)) = self.pg {
            stop.cancel();
            if let Store::Postgres(db) = &self.store {
                db.close();
            }
            database.drop().await.unwrap();
        }
    }
}

/// One instance's pool on `database`, its schema migrated.
async fn pg_instance(database: &TestDatabase, stop: &CancellationToken) -> PgDb {
    let mut config = PgConfig::parse(&database.url).unwrap();
    config.pool_size = 8;
    let db = PgDb::new(
        &config,
        products::SERVICE,
        &store::pg::MIGRATIONS,
        InboxRetention::default(),
    )
    .unwrap();
    tokio::spawn(db.clone().run(stop.clone()));
    let ready = tokio::time::timeout(Duration::from_secs(20), db.wait_ready(stop)).await;
    assert_eq!(ready, Ok(true), "schema not migrated within 20 s");
    db
}

fn incoming(kind: &str, message_id: &str) -> Incoming {
    Incoming {
        meta: MessageMeta {
            message_id: message_id.into(),
            kind: kind.into(),
            correlation_id: None,
            reply_to: None,
            app_id: Some("orders".into()),
            traceparent: None,
            redelivered: false,
            delivery_count: 0,
        },
        body: Vec::new(),
    }
}

fn reserve_req(order: &str, product: &str, quantity: u32) -> ReserveStock {
    ReserveStock {
        order_id: order.into(),
        product_id: product.into(),
        quantity,
    }
}

async fn product(store: &Store, stock: i64) -> String {
    let new = CreateProduct {
        name: "widget".into(),
        price_cents: 999,
        stock,
        seller_id: Some("seller-1".into()),
    };
    let request = uuid::Uuid::new_v4().to_string();
    store.create_product(request, new, None).await.unwrap().id
}

async fn stock(store: &Store, id: &str) -> i64 {
    store
        .get_product(id.into())
        .await
        .unwrap()
        .expect("product exists")
        .stock
}

/// Reserve 3 of 10 twice, refuse 5, release the first, and the events of each step.
async fn reserve_reject_release(backend: &Backend) {
    let store = &backend.store;
    let p = product(store, 10).await;
    assert_eq!(backend.outbox().await, [keys::STOCK_CHANGED]);

    let r = store.reserve(
        incoming(keys::RESERVE_STOCK, "m1"),
        reserve_req("o1", &p, 3),
    );
    assert_eq!(r.await.unwrap(), Reserved::Reserved);
    let r = store.reserve(
        incoming(keys::RESERVE_STOCK, "m2"),
        reserve_req("o2", &p, 3),
    );
    assert_eq!(r.await.unwrap(), Reserved::Reserved);
    assert_eq!(stock(store, &p).await, 4);

    let r = store.reserve(
        incoming(keys::RESERVE_STOCK, "m3"),
        reserve_req("o3", &p, 5),
    );
    match r.await.unwrap() {
        Reserved::Rejected(reason) => assert_eq!(
            reason, "insufficient stock: requested 5, available 4",
            "the same words on both backends"
        ),
        other => panic!("expected a rejection, got {other:?}"),
    }
    let r = store.reserve(
        incoming(keys::RESERVE_STOCK, "m4"),
        reserve_req("o4", "nope", 1),
    );
    assert_eq!(
        r.await.unwrap(),
        Reserved::Rejected("unknown product nope".into())
    );
    assert_eq!(stock(store, &p).await, 4);

    let release = ReleaseStock {
        order_id: "o1".into(),
        product_id: p.clone(),
    };
    let released = store.release(incoming(keys::RELEASE_STOCK, "m5"), release.clone());
    assert_eq!(released.await.unwrap(), 3);
    assert_eq!(stock(store, &p).await, 7);
    // Released again under another message id: nothing more comes back.
    let again = store.release(incoming(keys::RELEASE_STOCK, "m6"), release);
    assert_eq!(again.await.unwrap(), 0);
    assert_eq!(stock(store, &p).await, 7);

    // A release before its reserve leaves a tombstone: the late reserve does nothing.
    let early = ReleaseStock {
        order_id: "o7".into(),
        product_id: p.clone(),
    };
    let released = store.release(incoming(keys::RELEASE_STOCK, "m7"), early);
    assert_eq!(released.await.unwrap(), 0);
    let late = store.reserve(
        incoming(keys::RESERVE_STOCK, "m8"),
        reserve_req("o7", &p, 1),
    );
    assert_eq!(late.await.unwrap(), Reserved::Duplicate);
    assert_eq!(stock(store, &p).await, 7);

    assert_eq!(
        backend.outbox().await,
        [
            keys::STOCK_CHANGED,
            // o1
            keys::STOCK_CHANGED,
            keys::STOCK_RESERVED,
            // o2
            keys::STOCK_CHANGED,
            keys::STOCK_RESERVED,
            // o3, o4
            keys::STOCK_REJECTED,
            keys::STOCK_REJECTED,
            // release of o1
            keys::STOCK_CHANGED,
        ]
    );
}

/// The same message three times, and the same order under another message id: applied once.
async fn duplicates_are_applied_once(backend: &Backend) {
    let store = &backend.store;
    let p = product(store, 10).await;
    for _ in 0..3 {
        store
            .reserve(
                incoming(keys::RESERVE_STOCK, "dup-1"),
                reserve_req("o1", &p, 2),
            )
            .await
            .unwrap();
    }
    let other_id = store.reserve(
        incoming(keys::RESERVE_STOCK, "dup-2"),
        reserve_req("o1", &p, 2),
    );
    assert_eq!(other_id.await.unwrap(), Reserved::Duplicate);
    assert_eq!(stock(store, &p).await, 8);
    let release = ReleaseStock {
        order_id: "o1".into(),
        product_id: p.clone(),
    };
    for _ in 0..3 {
        store
            .release(incoming(keys::RELEASE_STOCK, "dup-3"), release.clone())
            .await
            .unwrap();
    }
    assert_eq!(stock(store, &p).await, 10);
    // The creation, one reservation (event + answer), one release.
    assert_eq!(backend.outbox().await.len(), 4);

    // A creation request delivered twice makes one product.
    let new = CreateProduct {
        name: "gadget".into(),
        price_cents: 100,
        stock: 1,
        seller_id: None,
    };
    let first = store
        .create_product("req-1".into(), new.clone(), None)
        .await
        .unwrap();
    let second = store
        .create_product("req-1".into(), new, None)
        .await
        .unwrap();
    assert_eq!(first, second);
    assert_eq!(backend.outbox().await.len(), 5);
}

macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let backend = super::Backend::sqlite().await;
                    super::$scenario(&backend).await;
                    backend.cleanup().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let backend = super::Backend::postgres(stringify!($scenario)).await;
                    super::$scenario(&backend).await;
                    backend.cleanup().await;
                }
            )*
        }
    };
}

on_both_backends!(reserve_reject_release, duplicates_are_applied_once);

/// Runs `op` until it succeeds (a unique-key conflict with the other instance's copy fails the
/// transaction; the consumer would retry it as a redelivery), at most 20 times.
async fn retried<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, messaging::store::DbError>>,
{
    let mut last = None;
    for _ in 0..20 {
        match op().await {
            Ok(value) => return value,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what} kept failing: {last:?}");
}

/// Two instances, 400 orders of 1 against 100 in stock, all at once: exactly 100 reserved,
/// stock 0, never below. Each message is delivered to both instances (a redelivery racing its
/// first delivery) and counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_never_oversell() {
    let database = TestDatabase::create("products_two_instances")
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let a = Store::Postgres(pg_instance(&database, &stop).await);
    let b = Store::Postgres(pg_instance(&database, &stop).await);
    let p = product(&a, 100).await;

    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..400 {
        for store in [a.clone(), b.clone()] {
            let p = p.clone();
            tasks.spawn(async move {
                let (order, id) = (format!("order-{n}"), format!("reserve-{n}"));
                retried("reserve", || {
                    store.reserve(
                        incoming(keys::RESERVE_STOCK, &id),
                        reserve_req(&order, &p, 1),
                    )
                })
                .await
            });
        }
    }
    let (mut reserved, mut rejected, mut duplicate) = (0, 0, 0);
    while let Some(outcome) = tasks.join_next().await {
        match outcome.unwrap() {
            Reserved::Reserved => reserved += 1,
            Reserved::Rejected(_) => rejected += 1,
            Reserved::Duplicate => duplicate += 1,
        }
    }
    assert_eq!((reserved, rejected, duplicate), (100, 300, 400));
    assert_eq!(stock(&a, &p).await, 0);
    assert_eq!(stock(&b, &p).await, 0);

    let client = database.connect().await.unwrap();
    let row = client
        .query_one(
            "SELECT COUNT(*) FILTER (WHERE status = 'RESERVED'),
                    COUNT(*) FILTER (WHERE status = 'REJECTED'),
                    COALESCE(SUM(quantity) FILTER (WHERE status = 'RESERVED'), 0)::BIGINT
             FROM reservations",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2)
        ),
        (100, 300, 100)
    );
    // The stock events tell the same story: the creation at 100, then each reserve announced
    // once, 99 down to 0, each level once (so never below 0).
    let events = client
        .query(
            "SELECT body FROM outbox WHERE routing_key = $1",
            &[&keys::STOCK_CHANGED],
        )
        .await
        .unwrap();
    let mut levels: Vec<i64> = events
        .iter()
        .map(|r| {
            let body: Vec<u8> = r.get(0);
            let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
            event["stock"].as_i64().unwrap()
        })
        .collect();
    levels.sort_unstable();
    assert_eq!(levels, (0..=100).collect::<Vec<_>>());

    // Every order released on both instances at once, under two message ids: exactly 100 back.
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..400 {
        for (i, store) in [a.clone(), b.clone()].into_iter().enumerate() {
            let p = p.clone();
            tasks.spawn(async move {
                let release = ReleaseStock {
                    order_id: format!("order-{n}"),
                    product_id: p,
                };
                let id = format!("release-{n}-{i}");
                retried("release", || {
                    store.release(incoming(keys::RELEASE_STOCK, &id), release.clone())
                })
                .await
            });
        }
    }
    let mut given_back = 0;
    while let Some(q) = tasks.join_next().await {
        given_back += q.unwrap();
    }
    assert_eq!(given_back, 100);
    assert_eq!(stock(&a, &p).await, 100);

    stop.cancel();
    for store in [a, b] {
        if let Store::Postgres(db) = store {
            db.close();
        }
    }
    database.drop().await.unwrap();
}

/// A release that arrives while the reserve it undoes is still open on another connection (two
/// instances) waits for it and gives the stock back, instead of leaving a "released before
/// reserved" tombstone next to a live reservation (which would keep the stock forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_racing_its_reserve_gives_the_stock_back() {
    let database = TestDatabase::create("products_release_race").await.unwrap();
    let stop = CancellationToken::new();
    let store = Store::Postgres(pg_instance(&database, &stop).await);
    let p = product(&store, 10).await;

    // The reserve of another instance, caught between its writes and its commit.
    let mut other = database.connect().await.unwrap();
    let reserve = other.transaction().await.unwrap();
    reserve
        .execute(
            "INSERT INTO reservations (order_id, product_id, quantity, status)
             VALUES ('o-race', $1, 3, 'RESERVED')",
            &[&p],
        )
        .await
        .unwrap();
    reserve
        .execute("UPDATE products SET stock = stock - 3 WHERE id = $1", &[&p])
        .await
        .unwrap();

    let release = {
        let store = store.clone();
        let p = p.clone();
        tokio::spawn(async move {
            let req = ReleaseStock {
                order_id: "o-race".into(),
                product_id: p,
            };
            store
                .release(incoming(keys::RELEASE_STOCK, "m-release"), req)
                .await
        })
    };
    // Long enough for the release to be waiting on the reservation's key.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !release.is_finished(),
        "the release must wait for the open reserve"
    );
    reserve.commit().await.unwrap();

    let released = tokio::time::timeout(Duration::from_secs(10), release)
        .await
        .expect("the release ends once the reserve committed")
        .unwrap()
        .unwrap();
    assert_eq!(released, 3, "the reserved quantity is given back");
    assert_eq!(stock(&store, &p).await, 10);
    let client = database.connect().await.unwrap();
    let status: String = client
        .query_one(
            "SELECT status FROM reservations WHERE order_id = 'o-race'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "RELEASED");

    stop.cancel();
    if let Store::Postgres(db) = store {
        db.close();
    }
    drop((client, other));
    database.drop().await.unwrap();
}
