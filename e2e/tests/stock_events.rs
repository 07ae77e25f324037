//! Stock events end to end: creating a product, an order's reservation and the release of a
//! reservation that came too late each put `product.stockChanged` on `saga.events` (captured on
//! the broker), the webhook publisher turns them into webhooks that reach a subscriber and the
//! default (notifier) subscription, and `order.created` names the seller.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::post;
use e2e::{Options, System};
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use messaging::topology::{EVENTS, keys};
use serde_json::{Value, json};
use testkit::amqp::TestClient;
use testkit::{TestEnv, eventually};

const CAPTURE: &str = "test.stock_events.capture";

/// An HTTP endpoint that keeps every webhook it receives: `(webhook-id, body)`.
async fn sink() -> (String, Arc<Mutex<Vec<(String, Value)>>>) {
    let seen: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let keep = seen.clone();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let keep = keep.clone();
            async move {
                let id = headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                keep.lock().unwrap().push((id, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

/// The `data` of every captured message of type `kind`.
fn of_kind(captured: &[(String, Value)], kind: &str) -> Vec<Value> {
    captured
        .iter()
        .filter(|(k, _)| k == kind)
        .map(|(_, body)| body.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stock_changes_reach_the_broker_and_the_subscribers() {
    let env = TestEnv::new("stock-events").await.unwrap();
    let mut system = System::start(&env, Options::default()).await.unwrap();
    system.start_realtime().await.unwrap();
    let publisher = system.webhook_publisher.as_ref().unwrap().url();
    let http = reqwest::Client::new();

    // Capture what goes over saga.events, as any other consumer would.
    let client = TestClient::connect(&env.amqp_url).await.unwrap();
    client
        .channel
        .queue_declare(
            CAPTURE.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for key in [keys::STOCK_CHANGED, keys::ORDER_CREATED] {
        client
            .channel
            .queue_bind(
                CAPTURE.into(),
                EVENTS.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    // A subscriber of stock events only.
    let (url, received) = sink().await;
    let response = http
        .post(format!("{publisher}/subscriptions"))
        .bearer_auth(&system.admin_token)
        .json(&json!({"url": url, "events": [keys::STOCK_CHANGED]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());

    // Created (seller-1, stock 5), one order reserves 2, one order is cancelled while products
    // is down and its late reservation of 1 is released when products is back.
    let product = system.create_product(5).await.unwrap();
    let confirmed = system.accepted_order(&product, 2).await.unwrap();
    system
        .wait_terminal(std::slice::from_ref(&confirmed), Duration::from_secs(30))
        .await
        .unwrap();
    system.stop_products().await;
    system
        .restart_orders(Duration::from_millis(800))
        .await
        .unwrap();
    let cancelled = system.accepted_order(&product, 1).await.unwrap();
    let statuses = system
        .wait_terminal(std::slice::from_ref(&cancelled), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(statuses[&cancelled], "CANCELLED");
    system.start_products().await.unwrap();

    let expected = vec![
        json!({"productId": product, "sellerId": "seller-1", "stock": 5, "delta": 5, "reason": "created"}),
        json!({"productId": product, "sellerId": "seller-1", "stock": 3, "delta": -2, "reason": "reserved"}),
        json!({"productId": product, "sellerId": "seller-1", "stock": 2, "delta": -1, "reason": "reserved"}),
        json!({"productId": product, "sellerId": "seller-1", "stock": 3, "delta": 1, "reason": "released"}),
    ];
    let wanted = expected.len();
    let captured: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let all = eventually(Duration::from_secs(30), || {
        let (client, captured) = (&client, captured.clone());
        async move {
            for m in client.drain(CAPTURE).await.ok()? {
                let kind = m.delivery.properties.kind().as_ref()?.to_string();
                let body: Value = serde_json::from_slice(&m.delivery.data).ok()?;
                captured.lock().unwrap().push((kind, body));
            }
            let now = captured.lock().unwrap().clone();
            (of_kind(&now, keys::STOCK_CHANGED).len() >= wanted).then_some(now)
        }
    })
    .await
    .expect("the stock events did not all reach saga.events");
    assert_eq!(of_kind(&all, keys::STOCK_CHANGED), expected);

    // order.created names the seller (the gateway knew it), like the later events.
    let created = of_kind(&all, keys::ORDER_CREATED);
    assert_eq!(created.len(), 2, "{created:?}");
    assert!(
        created.iter().all(|e| e["sellerId"] == "seller-1"),
        "{created:?}"
    );

    // The subscriber gets each as a webhook {type, timestamp, data}, once per event.
    let arrived = eventually(Duration::from_secs(30), || {
        let received = received.clone();
        async move { (received.lock().unwrap().len() >= wanted).then_some(()) }
    })
    .await;
    assert!(
        arrived.is_some(),
        "the stock webhooks did not reach the subscriber"
    );
    tokio::time::sleep(Duration::from_millis(500)).await; // room for a duplicate to show
    let webhooks = received.lock().unwrap().clone();
    let mut ids: Vec<&String> = webhooks.iter().map(|(id, _)| id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), expected.len(), "{webhooks:?}");
    assert_eq!(webhooks.len(), expected.len(), "{webhooks:?}");
    let mut data: Vec<Value> = webhooks
        .iter()
        .map(|(id, body)| {
            assert!(id.starts_with("msg_"), "{id}");
            assert_eq!(body["type"], keys::STOCK_CHANGED);
            assert!(body["timestamp"].is_string(), "{body}");
            body["data"].clone()
        })
        .collect();
    let order = |v: &Value| (v["reason"].to_string(), v["delta"].as_i64());
    data.sort_by_key(order);
    let mut want = expected.clone();
    want.sort_by_key(order);
    assert_eq!(data, want);

    // The default subscription (the notifier) asked for them too.
    let subscriptions: Vec<Value> = http
        .get(format!("{publisher}/subscriptions"))
        .bearer_auth(&system.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let default = subscriptions
        .iter()
        .find(|s| s["url"] == format!("{}/webhooks", system.notifier_url()))
        .expect("the default subscription");
    assert_eq!(default["events"], json!(["order.*", keys::STOCK_CHANGED]));
    let deliveries: Vec<Value> = http
        .get(format!(
            "{publisher}/deliveries?event={}&subscription={}",
            keys::STOCK_CHANGED,
            default["id"].as_str().unwrap()
        ))
        .bearer_auth(&system.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(deliveries.len(), expected.len(), "{deliveries:?}");

    system.stop().await;
    env.cleanup().await;
}
