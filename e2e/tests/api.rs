//! The HTTP API's contract: validation errors, Idempotency-Key, unknown resources.

use std::time::Duration;

use e2e::{Options, System};
use serde_json::{Value, json};
use testkit::TestEnv;

async fn problem(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(
        content_type.as_deref(),
        Some("application/problem+json"),
        "status {status}"
    );
    (status, response.json().await.unwrap())
}

async fn post_raw(
    system: &System,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    system
        .post(path)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_validation_error_is_a_clear_problem() {
    let env = TestEnv::new("validation").await.unwrap();
    let system = System::start(&env, Options::default()).await.unwrap();
    let json = "application/json";

    let (status, body) =
        problem(post_raw(&system, "/orders", json, "{\"productId\": ").await).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (400, Some("/problems/malformed-json"))
    );

    let (status, _) = problem(post_raw(&system, "/orders", "text/plain", "{}").await).await;
    assert_eq!(status, 415);

    let big = format!(
        "{{\"productId\": \"{}\", \"quantity\": 1}}",
        "x".repeat(20_000)
    );
    let (status, body) = problem(post_raw(&system, "/orders", json, big).await).await;
    assert_eq!(status, 413);
    assert_eq!(
        body["detail"], "the request body is larger than the limit of 16384 bytes",
        "the 413 says the limit in bytes"
    );

    let cases = [
        (json!({"quantity": 1}), "productId"),
        (json!({"productId": "p"}), "quantity"),
        (json!({"productId": "p", "quantity": "3"}), "quantity"),
        (json!({"productId": "p", "quantity": 1.5}), "quantity"),
        (json!({"productId": 7, "quantity": 1}), "productId"),
        (json!({"productId": "p", "quantity": 0}), "quantity"),
        (json!({"productId": "p", "quantity": 1001}), "quantity"),
        (json!({"productId": "p", "quantity": -1}), "quantity"),
        (json!({"productId": "  ", "quantity": 1}), "productId"),
        (
            json!({"productId": "p", "quantity": 1, "quantiy": 2}),
            "quantiy",
        ),
    ];
    for (body, field) in cases {
        let (status, problem) =
            problem(system.post("/orders").json(&body).send().await.unwrap()).await;
        assert_eq!(status, 422, "{body} → {problem}");
        let fields: Vec<_> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap().to_owned())
            .collect();
        assert!(
            fields.iter().any(|f| f.contains(field)),
            "{body}: expected an error on {field}, got {problem}"
        );
    }

    let products = [
        json!({"name": "", "price": 1, "stock": 1}),
        json!({"name": "a", "price": -1, "stock": 1}),
        json!({"name": "a", "price": 1.005, "stock": 1}),
        json!({"name": "a", "price": 1, "stock": -5}),
        json!({"name": "a", "price": 1}),
        json!({"name": "a", "price": "1", "stock": 1}),
    ];
    for body in products {
        let (status, problem) = problem(
            system
                .request(reqwest::Method::POST, "/products", &system.admin_token)
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 422, "{body} → {problem}");
    }

    let bad_key = system
        .post("/orders")
        .header("Idempotency-Key", "has space")
        .json(&json!({"productId": "p", "quantity": 1}));
    let (status, _) = problem(bad_key.send().await.unwrap()).await;
    assert_eq!(status, 400);

    let (status, _) = problem(
        system
            .request(
                reqwest::Method::GET,
                "/orders/no-such-order",
                &system.admin_token,
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = problem(
        system
            .http
            .get(system.url("/products/no-such-product"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);

    // None of the refused requests left an order behind.
    let db = system.orders_db().await.unwrap();
    let orders: i64 = db
        .call(|c| c.query_row("SELECT COUNT(*) FROM orders", [], |r| r.get(0)))
        .await
        .unwrap();
    assert_eq!(orders, 0);

    system.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_key_replays_and_conflicts() {
    let env = TestEnv::new("idem").await.unwrap();
    let system = System::start(&env, Options::default()).await.unwrap();
    let product = system.create_product(10).await.unwrap();

    let first = system
        .place_order(&product, 2, Some("key-1"))
        .await
        .unwrap();
    assert_eq!(first.status(), 202);
    let location = first.headers()["location"].to_str().unwrap().to_owned();
    let first: Value = first.json().await.unwrap();
    let order_id = first["orderId"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/orders/{order_id}"));
    assert_eq!(first["status"], "PENDING");

    for _ in 0..3 {
        let again = system
            .place_order(&product, 2, Some("key-1"))
            .await
            .unwrap();
        assert_eq!(again.status(), 202);
        let again: Value = again.json().await.unwrap();
        assert_eq!(again["orderId"], first["orderId"]);
    }

    let conflict = system
        .place_order(&product, 3, Some("key-1"))
        .await
        .unwrap();
    let (status, body) = problem(conflict).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (422, Some("/problems/idempotency-key-reused"))
    );

    let statuses = system
        .wait_terminal(std::slice::from_ref(&order_id), Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(statuses[&order_id], "CONFIRMED");
    // Let any replayed create arrive, then check that exactly one order and one decrement happened.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let db = system.orders_db().await.unwrap();
    let orders: i64 = db
        .call(|c| c.query_row("SELECT COUNT(*) FROM orders", [], |r| r.get(0)))
        .await
        .unwrap();
    assert_eq!(orders, 1);
    assert_eq!(system.stock(&product).await.unwrap(), 8);

    let order = system.order(&order_id).await.unwrap().unwrap();
    assert_eq!(
        (order["quantity"].as_i64(), order["productId"].as_str()),
        (Some(2), Some(product.as_str()))
    );
    for field in ["createdAt", "updatedAt", "status", "orderId"] {
        assert!(
            order.get(field).is_some(),
            "GET /orders/{{id}} lacks {field}: {order}"
        );
    }

    system.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_product_is_rejected_with_a_reason() {
    let env = TestEnv::new("unknown").await.unwrap();
    let system = System::start(&env, Options::default()).await.unwrap();
    let id = system.accepted_order("no-such-product", 1).await.unwrap();
    let statuses = system
        .wait_terminal(std::slice::from_ref(&id), Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(statuses[&id], "REJECTED");
    let order = system.order(&id).await.unwrap().unwrap();
    assert!(
        order["reason"]
            .as_str()
            .unwrap()
            .contains("unknown product"),
        "{order}"
    );
    system.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_service_reports_health_readiness_and_metrics() {
    let env = TestEnv::new("ops").await.unwrap();
    let system = System::start(&env, Options::default()).await.unwrap();
    let product = system.create_product(1).await.unwrap();
    system.accepted_order(&product, 1).await.unwrap();
    for running in [&system.gateway, &system.orders, &system.products] {
        let base = running.as_ref().unwrap().url();
        system.wait_ready(&base).await.unwrap();
        let health = system
            .http
            .get(format!("{base}/health"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
        let ready: Value = system
            .http
            .get(format!("{base}/ready"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ready["checks"]["broker"], "up", "{base}: {ready}");
        let metrics = system
            .http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("messages_published_total"),
            "{base}/metrics lacks publish counters"
        );
    }
    system.stop().await;
    env.cleanup().await;
}
