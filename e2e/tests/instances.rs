//! Several instances of every service on PostgreSQL, all consuming the same queues: two
//! gateways, three orders, three products, two webhook publishers.
//!
//! - 400 orders of 1 through both gateways against 100 in stock: exactly 100 CONFIRMED, 300
//!   REJECTED, stock 0, each order decided once (one terminal history row, one reservation, one
//!   decision webhook delivered to the notifier);
//! - the same with one orders and one products instance crashed mid-run: still each order
//!   decided once;
//! - the deadline with two orders instances and products away: each overdue order cancelled
//!   once, and once products is back, each late reservation released once (stock back).

use std::collections::HashMap;
use std::time::Duration;

use e2e::system::count;
use e2e::{Backend, Instances, Options, Service, System};
use futures::StreamExt;
use serde_json::{Value, json};
use testkit::{TestEnv, eventually};

const ORDERS: usize = 400;
const STOCK: i64 = 100;
/// Requests in flight at once while placing orders.
const IN_FLIGHT: usize = 40;

/// One of these tests at a time: each runs up to eight instances with their own pools, and
/// PostgreSQL's `max_connections` (100 by default) is shared with every other test.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn several() -> Options {
    Options {
        instances: Instances {
            gateways: 2,
            orders: 3,
            products: 3,
            webhook_publishers: 2,
        },
        ..Options::on(Backend::Postgres)
    }
}

/// Places `n` orders of 1 of `product`, alternating between the gateways; returns their ids.
async fn place(system: &System, product: &str, n: usize, first: usize) -> Vec<String> {
    let gateways = system.gateway_urls();
    assert!(gateways.len() >= 2, "{gateways:?}");
    let placed = futures::stream::iter(first..first + n)
        .map(|i| {
            let url = format!("{}/orders", gateways[i % gateways.len()]);
            let request = system
                .http
                .post(url)
                .bearer_auth(&system.client_token)
                .json(&json!({ "productId": product, "quantity": 1 }));
            async move {
                let response = request.send().await.expect("POST /orders");
                assert_eq!(response.status(), 202, "order {i} not accepted");
                let body: Value = response.json().await.expect("202 body");
                body["orderId"].as_str().expect("orderId").to_owned()
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    assert_eq!(placed.len(), n);
    placed
}

/// Every order decided exactly once, read from both databases: one terminal row in its
/// history, one reservation (RESERVED for a confirmed order, REJECTED for a rejected one).
async fn decided_once(system: &System, statuses: &HashMap<String, String>) {
    let orders = system.pg(Service::Orders).await.unwrap();
    let rows = orders
        .query(
            "SELECT order_id, COUNT(*) FILTER (WHERE status <> 'PENDING')::BIGINT
             FROM order_history GROUP BY order_id",
            &[],
        )
        .await
        .unwrap();
    let terminal: HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for id in statuses.keys() {
        assert_eq!(
            terminal.get(id),
            Some(&1),
            "order {id}: terminal history rows"
        );
    }
    let products = system.pg(Service::Products).await.unwrap();
    let rows = products
        .query("SELECT order_id, status FROM reservations", &[])
        .await
        .unwrap();
    let reservations: HashMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for (id, status) in statuses {
        let expected = match status.as_str() {
            "CONFIRMED" => "RESERVED",
            "REJECTED" => "REJECTED",
            other => panic!("order {id} ended {other}"),
        };
        assert_eq!(
            reservations.get(id).map(String::as_str),
            Some(expected),
            "order {id}"
        );
    }
    let reserved = products
        .query_one(
            "SELECT COALESCE(SUM(quantity), 0)::BIGINT FROM reservations WHERE status = 'RESERVED'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(reserved, STOCK, "units reserved in all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_hundred_orders_through_two_gateways_on_three_instances_each() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::new("instances").await.unwrap();
    let mut system = System::start(&env, several()).await.unwrap();
    system.start_realtime().await.unwrap();
    assert_eq!(
        [
            Service::Gateway,
            Service::Orders,
            Service::Products,
            Service::WebhookPublisher
        ]
        .map(|s| system.running(s)),
        [2, 3, 3, 2]
    );
    let product = system.create_product(STOCK).await.unwrap();

    let ids = place(&system, &product, ORDERS, 0).await;
    let statuses = system
        .wait_terminal(&ids, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(count(&statuses, "CONFIRMED"), 100);
    assert_eq!(count(&statuses, "REJECTED"), 300);
    assert_eq!(system.stock(&product).await.unwrap(), 0);
    decided_once(&system, &statuses).await;

    // The webhook side: the two publishers (one shared database) delivered one decision per
    // order to the notifier, the one that matches the order's status.
    let publisher = system.pg(Service::WebhookPublisher).await.unwrap();
    let delivered = eventually(Duration::from_secs(60), || async {
        let rows = publisher
            .query(
                "SELECT order_id, event_type, status FROM deliveries
                 WHERE event_type IN ('order.confirmed', 'order.rejected')",
                &[],
            )
            .await
            .ok()?;
        let done = rows.len() >= ORDERS && rows.iter().all(|r| r.get::<_, &str>(2) == "delivered");
        done.then_some(rows)
    })
    .await
    .expect("every decision delivered to the notifier within 60 s");
    let mut decisions: HashMap<String, Vec<String>> = HashMap::new();
    for row in &delivered {
        decisions
            .entry(row.get(0))
            .or_default()
            .push(row.get::<_, String>(1));
    }
    assert_eq!(decisions.len(), ORDERS);
    for (id, status) in &statuses {
        let expected = format!("order.{}", status.to_lowercase());
        assert_eq!(decisions[id], [expected], "order {id}: decisions delivered");
    }

    system.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_orders_and_a_products_instance_crash_mid_run_and_each_order_is_still_decided_once() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::new("instances-crash").await.unwrap();
    let mut system = System::start(&env, several()).await.unwrap();
    let product = system.create_product(STOCK).await.unwrap();

    // The first half goes in; while it is being worked on, one orders and one products
    // instance die where they stand. Their unacked messages go back to the queues, their
    // open transactions roll back, their outbox rows wait for the lease.
    let mut ids = place(&system, &product, ORDERS / 2, 0).await;
    system.crash(Service::Orders).await.unwrap();
    system.crash(Service::Products).await.unwrap();
    let at_crash = system.order_statuses().await.unwrap();
    let undecided = ids
        .iter()
        .filter(|id| at_crash.get(*id).is_none_or(|s| s == "PENDING"))
        .count();
    eprintln!(
        "at the crash: {undecided} of {} orders placed were not decided yet",
        ids.len()
    );
    assert_eq!(
        (
            system.running(Service::Orders),
            system.running(Service::Products)
        ),
        (2, 2)
    );
    ids.extend(place(&system, &product, ORDERS / 2, ORDERS / 2).await);

    let statuses = system
        .wait_terminal(&ids, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(count(&statuses, "CONFIRMED"), 100);
    assert_eq!(count(&statuses, "REJECTED"), 300);
    assert_eq!(system.stock(&product).await.unwrap(), 0);
    decided_once(&system, &statuses).await;

    system.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_orders_instances_cancel_each_overdue_order_once_and_compensate_it_once() {
    let _turn = ONE_AT_A_TIME.lock().await;
    const N: usize = 30;
    let env = TestEnv::new("instances-deadline").await.unwrap();
    let options = Options {
        deadline: Duration::from_millis(1500),
        instances: Instances {
            gateways: 2,
            orders: 2,
            products: 2,
            webhook_publishers: 1,
        },
        ..Options::on(Backend::Postgres)
    };
    let mut system = System::start(&env, options).await.unwrap();
    let product = system.create_product(STOCK).await.unwrap();

    system.stop_products().await;
    let ids = place(&system, &product, N, 0).await;
    let statuses = system
        .wait_terminal(&ids, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(count(&statuses, "CANCELLED"), N, "{statuses:?}");

    // Products comes back (two instances), reserves for the cancelled orders, and orders gives
    // every unit back, once.
    system.start_products().await.unwrap();
    let released = eventually(Duration::from_secs(60), || async {
        let products = system.pg(Service::Products).await.ok()?;
        let n: i64 = products
            .query_one(
                "SELECT COUNT(*) FROM reservations WHERE status = 'RELEASED' AND quantity = 1",
                &[],
            )
            .await
            .ok()?
            .get(0);
        (n == N as i64).then_some(())
    })
    .await;
    assert!(
        released.is_some(),
        "not every late reservation was released"
    );
    // Nothing more arrives: give a duplicate release time to show up in the stock.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(system.stock(&product).await.unwrap(), STOCK);

    let orders = system.pg(Service::Orders).await.unwrap();
    let row = orders
        .query_one(
            "SELECT COUNT(*) FILTER (WHERE status = 'CANCELLED'),
                    COUNT(*) FILTER (WHERE compensated)
             FROM orders",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (N as i64, N as i64)
    );
    let rows = orders
        .query(
            "SELECT order_id, COUNT(*) FILTER (WHERE status = 'CANCELLED')::BIGINT,
                    COUNT(*) FILTER (WHERE status NOT IN ('PENDING', 'CANCELLED'))::BIGINT
             FROM order_history GROUP BY order_id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), N);
    for row in rows {
        let id: String = row.get(0);
        assert_eq!(
            (row.get::<_, i64>(1), row.get::<_, i64>(2)),
            (1, 0),
            "order {id}: cancelled once, nothing else"
        );
    }
    // Every released unit announced once by products.
    let products = system.pg(Service::Products).await.unwrap();
    let released_events: i64 = products
        .query_one(
            "SELECT COUNT(*) FROM reservations WHERE status = 'RELEASED'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(released_events, N as i64);

    system.stop().await;
    env.cleanup().await;
}
