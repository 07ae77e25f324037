//! An order's history through the gateway: every state it went through, oldest first, written in
//! the transaction of each transition; and an orders.db from before the history gets one.

use std::time::Duration;

use e2e::{Options, System};
use serde_json::{Value, json};
use testkit::TestEnv;

/// `(status, reason)` of each history entry, and checks that the times run forward and match
/// the order's own `createdAt` / `updatedAt`.
fn steps(order: &Value) -> Vec<(String, Option<String>)> {
    let history = order["history"].as_array().expect("history is a list");
    let times: Vec<&str> = history.iter().map(|h| h["at"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{order}");
    assert_eq!(
        times.first().copied(),
        order["createdAt"].as_str(),
        "{order}"
    );
    assert_eq!(
        times.last().copied(),
        order["updatedAt"].as_str(),
        "{order}"
    );
    history
        .iter()
        .map(|h| {
            (
                h["status"].as_str().unwrap().to_owned(),
                h["reason"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_order_shows_every_transition_oldest_first() {
    let env = TestEnv::new("history").await.unwrap();
    let mut system = System::start(&env, Options::default()).await.unwrap();
    let product = system.create_product(3).await.unwrap();

    // One after the other: two orders in flight at once may reach products in either order.
    let confirmed = system.accepted_order(&product, 2).await.unwrap();
    system
        .wait_terminal(std::slice::from_ref(&confirmed), Duration::from_secs(30))
        .await
        .unwrap();
    let rejected = system.accepted_order(&product, 2).await.unwrap();
    let both = [confirmed.clone(), rejected.clone()];
    let statuses = system
        .wait_terminal(&both, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(statuses[&confirmed], "CONFIRMED");
    assert_eq!(statuses[&rejected], "REJECTED");

    system.stop_products().await;
    system
        .restart_orders(Duration::from_millis(800))
        .await
        .unwrap();
    let cancelled = system.accepted_order(&product, 1).await.unwrap();
    system
        .wait_terminal(std::slice::from_ref(&cancelled), Duration::from_secs(30))
        .await
        .unwrap();

    let order = system.order(&confirmed).await.unwrap().unwrap();
    assert_eq!(
        steps(&order),
        [("PENDING".into(), None), ("CONFIRMED".into(), None)]
    );
    let order = system.order(&rejected).await.unwrap().unwrap();
    let reason = "insufficient stock: requested 2, available 1".to_owned();
    assert_eq!(
        steps(&order),
        [("PENDING".into(), None), ("REJECTED".into(), Some(reason))]
    );
    let order = system.order(&cancelled).await.unwrap().unwrap();
    assert_eq!(
        steps(&order),
        [
            ("PENDING".into(), None),
            (
                "CANCELLED".into(),
                Some("no stock answer within 800 ms".into())
            )
        ]
    );
    // The customer who placed it sees the same history.
    let own: Value = system
        .request(
            reqwest::Method::GET,
            &format!("/orders/{confirmed}"),
            &system.client_token,
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(own["history"].as_array().map(Vec::len), Some(2), "{own}");

    // One history row per transition, nothing else: duplicates and restarts added none.
    let db = system.orders_db().await.unwrap();
    let rows: i64 = db
        .call(|c| c.query_row("SELECT COUNT(*) FROM order_history", [], |r| r.get(0)))
        .await
        .unwrap();
    assert_eq!(rows, 6);

    system.stop().await;
    env.cleanup().await;
}

/// orders.db as the first release created it: no unit price, no product name, no history.
const OLD_SCHEMA: &str = "
CREATE TABLE orders (
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
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);
INSERT INTO orders (id, product_id, quantity, customer_id, seller_id, status, reason, deadline_ms, created_at, updated_at)
VALUES ('old-rejected', 'p', 1, 'customer-1', 's', 'REJECTED', 'insufficient stock', 0,
        '2026-01-01T10:00:00.000Z', '2026-01-01T10:00:00.020Z'),
       ('old-confirmed', 'p', 2, 'customer-1', 's', 'CONFIRMED', NULL, 0,
        '2026-01-01T11:00:00.000Z', '2026-01-01T11:00:00.030Z');
";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_older_orders_db_is_migrated_and_its_orders_get_a_history() {
    let env = TestEnv::new("history-migration").await.unwrap();
    let path = env.dir.path().join("orders.db");
    let old = messaging::Db::open(&path, OLD_SCHEMA).await.unwrap();
    drop(old);

    let system = System::start(&env, Options::default()).await.unwrap();
    let order = system.order("old-rejected").await.unwrap().unwrap();
    assert_eq!(
        order["history"],
        json!([
            {"status": "PENDING", "at": "2026-01-01T10:00:00.000Z"},
            {"status": "REJECTED", "at": "2026-01-01T10:00:00.020Z", "reason": "insufficient stock"},
        ])
    );
    // The old confirmed order counts in units; its revenue was never recorded.
    let summary: Value = system
        .request(
            reqwest::Method::GET,
            "/reports/summary",
            &system.admin_token,
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(summary["orders"]["CONFIRMED"], 1, "{summary}");
    assert_eq!(summary["unitsConfirmed"], 2, "{summary}");

    // New orders work on the migrated file, and a second start migrates nothing twice.
    let product = system.create_product(5).await.unwrap();
    let id = system.accepted_order(&product, 1).await.unwrap();
    system
        .wait_terminal(std::slice::from_ref(&id), Duration::from_secs(30))
        .await
        .unwrap();
    let mut system = system;
    system
        .restart_orders(Duration::from_secs(30))
        .await
        .unwrap();
    let order = system.order(&id).await.unwrap().unwrap();
    assert_eq!(
        order["history"].as_array().map(Vec::len),
        Some(2),
        "{order}"
    );
    let order = system.order("old-confirmed").await.unwrap().unwrap();
    assert_eq!(
        order["history"].as_array().map(Vec::len),
        Some(2),
        "{order}"
    );

    system.stop().await;
    env.cleanup().await;
}
