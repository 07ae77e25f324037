//! Shared pieces of the notifier's integration tests: notifier instances on a private Redis
//! prefix, tokens, signed webhook requests, and a WebSocket client that records what it gets.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::TestEnv;
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use messaging::config::CommonConfig;
use messaging::contracts::OrderEvent;
use messaging::service::Running;
use messaging::signature::Secret;
use notifier::Config;
use notifier::auth::{Claims, Role};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

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
        jwt_secret: JWT_SECRET.to_owned(),
        tolerance: Duration::from_secs(300),
        dedupe_ttl: Duration::from_secs(600),
        client_buffer: 256,
        ping_interval: Duration::from_secs(20),
    }
}

/// Spawns a notifier and waits until it listens on the events channel.
pub async fn start(config: Config) -> Running {
    let running = notifier::spawn(config).await.unwrap();
    let ready = format!("{}/ready", running.url());
    let up = e2e::eventually(LONG, || {
        let ready = ready.clone();
        async move {
            let response = reqwest::get(&ready).await.ok()?;
            response.status().is_success().then_some(())
        }
    })
    .await;
    assert!(up.is_some(), "the notifier never became ready");
    running
}

pub fn token(role: Role, sub: &str, seller_id: Option<&str>) -> String {
    let claims = Claims {
        sub: sub.to_owned(),
        role,
        seller_id: seller_id.map(str::to_owned),
        exp: jsonwebtoken::get_current_timestamp() + 600,
    };
    notifier::auth::issue(JWT_SECRET.as_bytes(), &claims).unwrap()
}

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
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
    let body = body(kind, event);
    let ts = now();
    let signature = Secret::parse(SECRET).unwrap().sign(id, ts, &body);
    let response = post_raw(base, id, ts, &signature, body).await;
    assert_eq!(response.status(), 200, "a signed webhook was refused");
    response.json().await.unwrap()
}

type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;

/// A WebSocket client that records every JSON message it receives.
pub struct WsClient {
    pub name: String,
    sink: tokio::sync::Mutex<Sink>,
    received: Arc<Mutex<Vec<Value>>>,
    closed: Arc<Mutex<bool>>,
}

impl WsClient {
    /// Connects with `token` and waits for the welcome message.
    pub async fn connect(base: &str, name: &str, token: &str) -> Self {
        let url = format!("{}/ws?token={token}", base.replacen("http", "ws", 1));
        let (stream, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let (sink, mut stream) = stream.split();
        let received = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(Mutex::new(false));
        let (r, c) = (received.clone(), closed.clone());
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                if let Message::Text(text) = message {
                    r.lock()
                        .unwrap()
                        .push(serde_json::from_str(text.as_str()).unwrap());
                }
            }
            *c.lock().unwrap() = true;
        });
        let client = Self {
            name: name.to_owned(),
            sink: tokio::sync::Mutex::new(sink),
            received,
            closed,
        };
        client.wait_for(|m| m["type"] == "welcome").await;
        client
    }

    pub async fn send(&self, message: Value) {
        self.sink
            .lock()
            .await
            .send(Message::Text(message.to_string().into()))
            .await
            .unwrap();
    }

    pub fn messages(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }

    pub fn is_closed(&self) -> bool {
        *self.closed.lock().unwrap()
    }

    /// Waits for a message matching `pred` and returns it.
    pub async fn wait_for(&self, pred: impl Fn(&Value) -> bool) -> Value {
        let found = e2e::eventually(LONG, || async {
            self.messages().into_iter().find(|m| pred(m))
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "{} never got the expected message; got {:?}",
                self.name,
                self.messages()
            )
        })
    }

    /// `(type, orderId)` of every order event received, in order.
    pub fn order_events(&self) -> Vec<(String, String)> {
        self.messages()
            .into_iter()
            .filter(|m| m["type"].as_str().is_some_and(|t| t.starts_with("order.")))
            .map(|m| {
                (
                    m["type"].as_str().unwrap().to_owned(),
                    m["data"]["orderId"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    pub fn of_type(&self, kind: &str) -> Vec<Value> {
        self.messages()
            .into_iter()
            .filter(|m| m["type"] == kind)
            .collect()
    }
}

pub fn has_order(order_id: &str) -> impl Fn(&Value) -> bool + '_ {
    move |m: &Value| {
        m["data"]["orderId"] == order_id
            && m["type"].as_str().is_some_and(|t| t.starts_with("order."))
    }
}

/// Deletes the test's Redis keys (stats, dedupe markers, order owners) and its vhost.
pub async fn cleanup(env: TestEnv) {
    let client = redis::Client::open(env.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", env.redis_prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    env.cleanup().await;
}
