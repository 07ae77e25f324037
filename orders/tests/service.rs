//! Two orders services (two "instances", each with its own pool, relay, consumers and deadline
//! sweeper) on one PostgreSQL database, a vhost of their own and a Redis prefix of their own,
//! with the test playing products. Every create and every stock answer is delivered twice:
//! each order is still recorded once, decided once, and an order whose reservation comes after
//! its deadline is cancelled once and its stock released once. Neither instance writes a file
//! to its DATA_DIR.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use messaging::contracts::{CreateOrder, ReleaseStock, ReserveStock, StockAnswer};
use messaging::pg::PgConfig;
use messaging::topology::{COMMANDS, EVENTS, PRODUCTS_QUEUE, keys};
use messaging::{
    Broker, BrokerConfig, Consumer, HandleError, Incoming, MessageHandler, OutgoingMessage,
};
use service_kit::config::CommonConfig;
use testkit::{TestDatabase, Vhost};
use tokio_util::sync::CancellationToken;

const CONFIRMED: usize = 24;
const REJECTED: usize = 8;
const LATE: usize = 8;
const DEADLINE: Duration = Duration::from_millis(1500);
const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// What the fake products received.
#[derive(Default)]
struct Received {
    reserve: HashMap<String, usize>,
    release: HashMap<String, usize>,
}

/// Plays products: answers each `product.reserveStock` twice (two message ids, as a
/// redelivery would), reserved for `p-ok`, rejected for `p-out`, reserved only after the
/// order's deadline for `p-slow`.
#[derive(Clone)]
struct FakeProducts {
    broker: Broker,
    received: Arc<Mutex<Received>>,
}

impl FakeProducts {
    async fn answer_twice(broker: Broker, answer: StockAnswer, kind: &'static str) {
        for _ in 0..2 {
            let msg =
                OutgoingMessage::json(EVENTS, kind, Some(&answer.order_id), &answer).expect("json");
            broker.publish(&msg).await.expect("answer published");
        }
    }
}

impl MessageHandler for FakeProducts {
    async fn handle(&self, msg: Incoming) -> Result<(), HandleError> {
        if msg.meta.kind == keys::RELEASE_STOCK {
            let release: ReleaseStock = msg.json()?;
            let mut received = self.received.lock().unwrap();
            *received.release.entry(release.order_id).or_default() += 1;
            return Ok(());
        }
        let reserve: ReserveStock = msg.json()?;
        *self
            .received
            .lock()
            .unwrap()
            .reserve
            .entry(reserve.order_id.clone())
            .or_default() += 1;
        let mut answer = StockAnswer {
            order_id: reserve.order_id,
            product_id: reserve.product_id.clone(),
            quantity: reserve.quantity,
            seller_id: Some("seller-1".into()),
            reason: None,
            unit_price_cents: Some(500),
            product_name: Some("Widget".into()),
        };
        let broker = self.broker.clone();
        match reserve.product_id.as_str() {
            "p-ok" => Self::answer_twice(broker, answer, keys::STOCK_RESERVED).await,
            "p-out" => {
                answer.reason = Some("insufficient stock".into());
                Self::answer_twice(broker, answer, keys::STOCK_REJECTED).await
            }
            _ => {
                tokio::spawn(async move {
                    tokio::time::sleep(DEADLINE * 3).await;
                    Self::answer_twice(broker, answer, keys::STOCK_RESERVED).await
                });
            }
        }
        Ok(())
    }
}

async fn ready(url: &str) -> Option<serde_json::Value> {
    let response = reqwest::get(format!("{url}/ready")).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_postgres_record_decide_cancel_and_compensate_each_order_once() {
    let db = TestDatabase::create("orders_two_instances").await.unwrap();
    let vhost = Vhost::create("orders-pg").await.unwrap();
    let queues = format!(
        "{}/api/queues/{}",
        testkit::rabbit::management_url(),
        vhost.name
    );
    let prefix = format!("test-orders-pg-{}:", uuid::Uuid::new_v4().simple());
    let scenario = tokio::spawn(scenario(
        db.url.clone(),
        vhost.url(),
        queues,
        prefix.clone(),
    ));
    let outcome = scenario.await;
    vhost.delete().await;
    testkit::redis::delete_keys(REDIS_URL, &prefix)
        .await
        .unwrap();
    db.drop().await.unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// How many consumers `queue` has (management API).
async fn consumers(queues: &str, queue: &str) -> i64 {
    let body: serde_json::Value = reqwest::Client::new()
        .get(format!("{queues}/{queue}"))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["consumers"].as_i64().unwrap_or(0)
}

async fn scenario(database_url: String, amqp_url: String, queues: String, prefix: String) {
    let dir = tempfile::tempdir().unwrap();
    let mut database = PgConfig::parse(&database_url).unwrap();
    database.pool_size = orders::default_pool_size(16, 16);
    let config = |name: &str| orders::Config {
        common: CommonConfig {
            http_addr: "127.0.0.1:0".parse().unwrap(),
            amqp_url: amqp_url.clone(),
            redis_url: REDIS_URL.into(),
            redis_prefix: prefix.clone(),
            data_dir: dir.path().join(name),
        },
        deadline: DEADLINE,
        prefetch: 16,
        intake_prefetch: 16,
        database: Some(database.clone()),
    };
    let instances = [
        orders::spawn(config("data-a")).await.unwrap(),
        orders::spawn(config("data-b")).await.unwrap(),
    ];

    let stop = CancellationToken::new();
    let broker = Broker::new(BrokerConfig::new(&amqp_url, "products"));
    let received = Arc::new(Mutex::new(Received::default()));
    let products = FakeProducts {
        broker: broker.clone(),
        received: received.clone(),
    };
    broker.attach(Arc::new(Consumer::new(
        PRODUCTS_QUEUE,
        "products",
        products.into_handler(),
    )));
    tokio::spawn(broker.clone().run(stop.clone()));
    assert!(broker.wait_connected(Duration::from_secs(20)).await);

    for running in &instances {
        let url = running.url();
        let checks = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Some(body) = ready(&url).await {
                    return body;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .expect("both instances ready within 30 s");
        assert_eq!(checks["checks"]["postgres"], "up", "{checks}");
    }
    // Both instances compete for the same queues.
    for queue in ["orders_intake_queue", "orders_queue", "orders_rpc"] {
        let found = tokio::time::timeout(Duration::from_secs(10), async {
            while consumers(&queues, queue).await < 2 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        assert!(found.is_ok(), "{queue} has not two consumers");
    }

    let mut expected = HashMap::new();
    for (product, count, status) in [
        ("p-ok", CONFIRMED, "CONFIRMED"),
        ("p-out", REJECTED, "REJECTED"),
        ("p-slow", LATE, "CANCELLED"),
    ] {
        for i in 0..count {
            let cmd = CreateOrder {
                order_id: format!("{product}-{i}-{}", uuid::Uuid::now_v7()),
                product_id: product.into(),
                quantity: 1,
                customer_id: Some("c-1".into()),
                idempotency_key: None,
                seller_id: None,
            };
            // Twice, as a redelivered create would come.
            for _ in 0..2 {
                let msg =
                    OutgoingMessage::json(COMMANDS, keys::ORDERS_CREATE, Some(&cmd.order_id), &cmd)
                        .unwrap();
                broker.publish(&msg).await.unwrap();
            }
            expected.insert(cmd.order_id, status);
        }
    }

    let (client, connection) = tokio_postgres::connect(&database_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    // Every order decided, every late reservation released, every outbox row published.
    let settled = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let row = client
                .query_one(
                    "SELECT (SELECT COUNT(*) FROM orders WHERE status <> 'PENDING'),
                            (SELECT COUNT(*) FROM orders WHERE compensated),
                            (SELECT COUNT(*) FROM outbox)",
                    &[],
                )
                .await
                .unwrap();
            let (decided, compensated, outbox): (i64, i64, i64) =
                (row.get(0), row.get(1), row.get(2));
            let released = received.lock().unwrap().release.len();
            if decided as usize == expected.len()
                && compensated as usize == LATE
                && outbox == 0
                && released == LATE
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(settled.is_ok(), "the orders did not settle within 60 s");
    // Give a duplicate publication, if there were one, the time to arrive.
    tokio::time::sleep(Duration::from_secs(1)).await;

    for row in client
        .query(
            "SELECT o.id, o.status, array_agg(h.status ORDER BY h.id)
             FROM orders o JOIN order_history h ON h.order_id = o.id GROUP BY o.id, o.status",
            &[],
        )
        .await
        .unwrap()
    {
        let (id, status, history): (String, String, Vec<String>) =
            (row.get(0), row.get(1), row.get(2));
        assert_eq!(Some(&status.as_str()), expected.get(&id), "{id}");
        assert_eq!(history, ["PENDING", status.as_str()], "{id}");
    }
    let count: i64 = client
        .query_one("SELECT COUNT(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count as usize, expected.len());
    {
        let received = received.lock().unwrap();
        assert_eq!(received.reserve.len(), expected.len());
        assert!(
            received.reserve.values().all(|n| *n == 1),
            "a reserveStock published twice: {:?}",
            received.reserve
        );
        assert!(
            received.release.values().all(|n| *n == 1),
            "a releaseStock published twice: {:?}",
            received.release
        );
        assert!(
            received
                .release
                .keys()
                .all(|id| expected[id.as_str()] == "CANCELLED")
        );
    }

    stop.cancel();
    for running in instances {
        running.stop().await;
    }
    for name in ["data-a", "data-b"] {
        assert!(
            !dir.path().join(name).exists(),
            "an instance on PostgreSQL created its DATA_DIR"
        );
    }
}

/// A free local port for a binary's `HTTP_ADDR`.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the orders binary as one instance; killed (SIGKILL) when dropped.
fn orders_binary(
    port: u16,
    database_url: &str,
    amqp_url: &str,
    prefix: &str,
    data_dir: &std::path::Path,
) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_orders"))
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("DATABASE_URL", database_url)
        .env("AMQP_URL", amqp_url)
        .env("REDIS_URL", REDIS_URL)
        .env("REDIS_KEY_PREFIX", prefix)
        .env("DATA_DIR", data_dir)
        .env("OUTBOX_LEASE_SECS", "2")
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .env_remove("DATABASE_POOL_SIZE")
        .env_remove("ORDER_DEADLINE_MS")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_mid_run_leaves_every_order_decided_once() {
    let db = TestDatabase::create("orders_instance_killed")
        .await
        .unwrap();
    let vhost = Vhost::create("orders-pg-kill").await.unwrap();
    let prefix = format!("test-orders-pg-{}:", uuid::Uuid::new_v4().simple());
    let scenario = tokio::spawn(killed_scenario(db.url.clone(), vhost.url(), prefix.clone()));
    let outcome = scenario.await;
    vhost.delete().await;
    testkit::redis::delete_keys(REDIS_URL, &prefix)
        .await
        .unwrap();
    db.drop().await.unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn killed_scenario(database_url: String, amqp_url: String, prefix: String) {
    const TOTAL: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port()];
    let mut instances: Vec<_> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            orders_binary(
                *port,
                &database_url,
                &amqp_url,
                &prefix,
                &dir.path().join(format!("data-{i}")),
            )
        })
        .collect();
    for port in ports {
        let url = format!("http://127.0.0.1:{port}");
        let up = tokio::time::timeout(Duration::from_secs(60), async {
            while ready(&url).await.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        assert!(up.is_ok(), "instance on port {port} not ready within 60 s");
    }

    let stop = CancellationToken::new();
    let broker = Broker::new(BrokerConfig::new(&amqp_url, "products"));
    let received = Arc::new(Mutex::new(Received::default()));
    let products = FakeProducts {
        broker: broker.clone(),
        received: received.clone(),
    };
    broker.attach(Arc::new(Consumer::new(
        PRODUCTS_QUEUE,
        "products",
        products.into_handler(),
    )));
    tokio::spawn(broker.clone().run(stop.clone()));
    assert!(broker.wait_connected(Duration::from_secs(20)).await);

    let mut expected = HashMap::new();
    for i in 0..TOTAL {
        let product = if i % 4 == 0 { "p-out" } else { "p-ok" };
        let cmd = CreateOrder {
            order_id: format!("k-{i}-{}", uuid::Uuid::now_v7()),
            product_id: product.into(),
            quantity: 1,
            customer_id: None,
            idempotency_key: None,
            seller_id: None,
        };
        let msg = OutgoingMessage::json(COMMANDS, keys::ORDERS_CREATE, Some(&cmd.order_id), &cmd)
            .unwrap();
        broker.publish(&msg).await.unwrap();
        expected.insert(
            cmd.order_id,
            if product == "p-ok" {
                "CONFIRMED"
            } else {
                "REJECTED"
            },
        );
        if i == TOTAL / 2 {
            // The first instance dies mid-run, holding whatever it had.
            instances[0].start_kill().unwrap();
            instances[0].wait().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let (client, connection) = tokio_postgres::connect(&database_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let settled = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            let row = client
                .query_one(
                    "SELECT (SELECT COUNT(*) FROM orders WHERE status <> 'PENDING'),
                            (SELECT COUNT(*) FROM outbox)",
                    &[],
                )
                .await
                .unwrap();
            let (decided, outbox): (i64, i64) = (row.get(0), row.get(1));
            if decided as usize == TOTAL && outbox == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        settled.is_ok(),
        "not every order was decided and published within 90 s of the kill"
    );
    for row in client
        .query(
            "SELECT o.id, o.status, array_agg(h.status ORDER BY h.id)
             FROM orders o JOIN order_history h ON h.order_id = o.id GROUP BY o.id, o.status",
            &[],
        )
        .await
        .unwrap()
    {
        let (id, status, history): (String, String, Vec<String>) =
            (row.get(0), row.get(1), row.get(2));
        assert_eq!(Some(&status.as_str()), expected.get(&id), "{id}");
        assert_eq!(history, ["PENDING", status.as_str()], "{id}: decided once");
    }
    // Every order asked for its stock (a copy more only where the dead instance published a
    // row whose deletion it did not commit: at-least-once, absorbed by products' inbox).
    assert_eq!(received.lock().unwrap().reserve.len(), TOTAL);

    stop.cancel();
    for mut instance in instances {
        let _ = instance.start_kill();
        let _ = instance.wait().await;
    }
    for i in 0..2 {
        assert!(!dir.path().join(format!("data-{i}")).exists());
    }
}
