//! Two orders services (two "instances", each with its own pool, relay, consumers and deadline
//! sweeper) on one PostgreSQL database, a vhost of their own and a Redis prefix of their own,
//! with the test playing products. Every create and every stock answer is delivered twice:
//! each order is still recorded once, decided once, and an order whose reservation comes after
//! its deadline is cancelled once and its stock released once. Neither instance writes a file
//! to its DATA_DIR.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use messaging::config::CommonConfig;
use messaging::contracts::{CreateOrder, ReleaseStock, ReserveStock, StockAnswer};
use messaging::pg::PgConfig;
use messaging::topology::{COMMANDS, EVENTS, PRODUCTS_QUEUE, keys};
use messaging::{
    Broker, BrokerConfig, Consumer, HandleError, Incoming, MessageHandler, OutgoingMessage,
};
use testkit::TestDatabase;
use tokio_util::sync::CancellationToken;

const CONFIRMED: usize = 24;
const REJECTED: usize = 8;
const LATE: usize = 8;
const DEADLINE: Duration = Duration::from_millis(1500);

/// A vhost of the test's own on the shared broker (removed at the end).
struct Vhost {
    name: String,
    management: String,
}

impl Vhost {
    async fn new(test: &str) -> Self {
        let management = std::env::var("RABBITMQ_MANAGEMENT_URL")
            .unwrap_or_else(|_| "http://127.0.0.1:15672".into());
        let name = format!(
            "test-{test}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let http = reqwest::Client::new();
        for path in [
            format!("/api/vhosts/{name}"),
            format!("/api/permissions/{name}/guest"),
        ] {
            let body = serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"});
            let status = http
                .put(format!("{management}{path}"))
                .basic_auth("guest", Some("guest"))
                .json(&body)
                .send()
                .await
                .expect("the shared broker's management API answers")
                .status();
            assert!(status.is_success(), "PUT {path}: {status}");
        }
        Self { name, management }
    }

    fn url(&self) -> String {
        let base = std::env::var("TEST_AMQP_BASE")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".into());
        format!("{base}/{}", self.name)
    }

    async fn delete(self) {
        let _ = reqwest::Client::new()
            .delete(format!("{}/api/vhosts/{}", self.management, self.name))
            .basic_auth("guest", Some("guest"))
            .send()
            .await;
    }
}

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
    let vhost = Vhost::new("orders-pg").await;
    let queues = format!("{}/api/queues/{}", vhost.management, vhost.name);
    let scenario = tokio::spawn(scenario(db.url.clone(), vhost.url(), queues));
    let outcome = scenario.await;
    vhost.delete().await;
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

async fn scenario(database_url: String, amqp_url: String, queues: String) {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("test-orders-pg-{}:", uuid::Uuid::new_v4().simple());
    let mut database = PgConfig::parse(&database_url).unwrap();
    database.pool_size = orders::default_pool_size(16, 16);
    let config = |name: &str| orders::Config {
        common: CommonConfig {
            http_addr: "127.0.0.1:0".parse().unwrap(),
            amqp_url: amqp_url.clone(),
            redis_url: "redis://127.0.0.1:6379".into(),
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
