//! Shared pieces of the notifier's integration tests: notifier instances on a private Redis
//! prefix, tokens, signed webhook requests, and a WebSocket client that records what it gets.

#![allow(dead_code)]

use std::time::Duration;

use messaging::contracts::OrderEvent;
use notifier::Config;
use notifier::auth::Role;
use serde_json::{Value, json};
use service_kit::Running;
use service_kit::config::CommonConfig;
use testkit::TestEnv;
use webhook_signing::Secret;

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const JWT_SECRET: &str = "test-jwt-secret";
pub const LONG: Duration = Duration::from_secs(30);

pub fn config(env: &TestEnv) -> Config {
    Config {
        common: CommonConfig {
            http_addr: "127.0.0.1:0".parse().unwrap(),
            amqp_url: env.amqp_url.clone(),
            redis_url: env.redis_url.clone(),
            redis_prefix: env.redis_prefix.clone(),
            data_dir: env.data_dir("notifier"),
        },
        webhook_secret: Secret::parse(SECRET).unwrap(),
        jwt_secret: JWT_SECRET.into(),
        tolerance: Duration::from_secs(300),
        dedupe_ttl: Duration::from_secs(600),
        client_buffer: 256,
        ping_interval: Duration::from_secs(20),
        telegram: None,
        gateway_public_url: "http://127.0.0.1:9".to_owned(),
    }
}

/// Spawns a notifier and waits until it listens on the events channel.
pub async fn start(config: Config) -> Running {
    let running = notifier::spawn(config).await.unwrap();
    testkit::wait_ready(&running.url(), LONG)
        .await
        .expect("the notifier never became ready");
    running
}

pub fn token(role: Role, sub: &str, seller_id: Option<&str>) -> String {
    notifier::auth::issue_for(
        JWT_SECRET.as_bytes(),
        sub,
        role,
        seller_id,
        Duration::from_secs(600),
    )
    .unwrap()
}

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Now in RFC 3339, for an event's `occurredAt`.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// The value of one sample in a Prometheus text exposition (0 when absent).
pub async fn metric(base: &str, sample: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

pub fn event(order_id: &str, customer: Option<&str>, seller: Option<&str>) -> OrderEvent {
    OrderEvent {
        order_id: order_id.to_owned(),
        product_id: "product-1".to_owned(),
        quantity: 2,
        customer_id: customer.map(str::to_owned),
        seller_id: seller.map(str::to_owned),
        status: "PENDING".to_owned(),
        reason: None,
        occurred_at: "2026-11-23T00:00:00Z".to_owned(),
    }
}

/// A webhook body as the publisher sends it.
pub fn body(kind: &str, event: &OrderEvent) -> Vec<u8> {
    serde_json::to_vec(&json!({"type": kind, "timestamp": event.occurred_at, "data": event}))
        .unwrap()
}

/// POSTs `body` to `/webhooks` with the given id, timestamp and signature header.
pub async fn post_raw(
    base: &str,
    id: &str,
    timestamp: i64,
    signature: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/webhooks"))
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// POSTs a correctly signed webhook and expects 200.
pub async fn post_signed(base: &str, id: &str, kind: &str, event: &OrderEvent) -> Value {
    post_signed_body(base, id, body(kind, event)).await
}

/// A `product.stockChanged` webhook body as the publisher sends it.
pub fn stock_body(
    product: &str,
    seller: Option<&str>,
    stock: i64,
    delta: i64,
    reason: &str,
) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": "product.stockChanged",
        "timestamp": "2026-11-23T00:00:00Z",
        "data": {"productId": product, "sellerId": seller, "stock": stock, "delta": delta, "reason": reason},
    }))
    .unwrap()
}

/// POSTs `body` correctly signed and expects 200.
pub async fn post_signed_body(base: &str, id: &str, body: Vec<u8>) -> Value {
    let ts = now();
    let signature = Secret::parse(SECRET).unwrap().sign(id, ts, &body);
    let response = post_raw(base, id, ts, &signature, body).await;
    assert_eq!(response.status(), 200, "a signed webhook was refused");
    response.json().await.unwrap()
}

#[allow(unused_imports)]
pub use testkit::ws::{WsClient, has_order};

/// Deletes the test's Redis keys and its vhost.
pub async fn cleanup(env: TestEnv) {
    env.cleanup().await;
}

/// Publishes `msg` as the services would (their envelope's properties) through the raw test
/// client, and waits for the confirm.
pub async fn publish_message(
    client: &testkit::amqp::TestClient,
    msg: &messaging::OutgoingMessage,
) -> anyhow::Result<()> {
    let properties = msg.properties("test");
    client
        .publish(&msg.exchange, &msg.routing_key, &msg.body, properties)
        .await
}
