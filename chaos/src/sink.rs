//! The webhook sink: a subscriber of the webhook publisher, served by the harness on a free port.
//!
//! It verifies every request's Standard Webhooks signature with the secret its subscription got,
//! and records each webhook it accepted by `webhook-id`, with the event type and order id. To put
//! the publisher "mid-retry" when it is killed, it refuses (503) the first two attempts of about
//! one webhook in five, chosen by the webhook id, so deliveries wait for their 1 s / 2 s retries.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use webhook_signing::Secret;

/// One webhook as the sink saw it.
#[derive(Debug, Clone, Default)]
pub struct Received {
    pub event_type: String,
    pub order_id: String,
    /// Requests answered 2xx.
    pub accepted: u32,
    /// Requests the sink refused on purpose.
    pub refused: u32,
}

#[derive(Default)]
struct Inner {
    secret: Option<Secret>,
    by_webhook: HashMap<String, Received>,
    bad_signatures: u64,
    bad_bodies: u64,
}

/// What the sink saw, for the checks.
#[derive(Debug, Default, Clone)]
pub struct SinkReport {
    pub by_webhook: HashMap<String, Received>,
    pub bad_signatures: u64,
    pub bad_bodies: u64,
}

pub struct Sink {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    stop: CancellationToken,
}

#[derive(Deserialize)]
struct Body {
    #[serde(rename = "type")]
    kind: String,
    data: Data,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    order_id: String,
}

impl Sink {
    pub async fn start() -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Mutex::new(Inner::default()));
        let stop = CancellationToken::new();
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(inner.clone());
        let token = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await;
        });
        Ok(Self { addr, inner, stop })
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Subscribes the sink to every `order.*` event on the publisher (with an ADMIN token) and
    /// keeps the secret.
    pub async fn subscribe(
        &self,
        http: &reqwest::Client,
        publisher: &str,
        admin_token: &str,
    ) -> Result<()> {
        let body = serde_json::json!({ "url": self.url(), "events": ["order.*"] });
        let response = http
            .post(format!("{publisher}/subscriptions"))
            .bearer_auth(admin_token)
            .json(&body)
            .send()
            .await
            .context("POST /subscriptions")?;
        if response.status() != StatusCode::CREATED {
            bail!("POST /subscriptions answered {}", response.status());
        }
        let created: serde_json::Value = response.json().await?;
        let text = created["secret"]
            .as_str()
            .context("subscription without secret")?;
        let secret = Secret::parse(text).context("the subscription's secret")?;
        if let Ok(mut inner) = self.inner.lock() {
            inner.secret = Some(secret);
        }
        Ok(())
    }

    pub fn stop(&self) -> SinkReport {
        self.stop.cancel();
        self.inner
            .lock()
            .map(|i| SinkReport {
                by_webhook: i.by_webhook.clone(),
                bad_signatures: i.bad_signatures,
                bad_bodies: i.bad_bodies,
            })
            .unwrap_or_default()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// About one webhook in five has its first two attempts refused.
fn refuse(webhook_id: &str, attempt: u32) -> bool {
    let hash = webhook_id
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    hash % 5 == 0 && attempt <= 2
}

async fn receive(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(timestamp), Some(signature)) = (
        header("webhook-id"),
        header("webhook-timestamp").and_then(|t| t.parse::<i64>().ok()),
        header("webhook-signature"),
    ) else {
        if let Ok(mut inner) = inner.lock() {
            inner.bad_signatures += 1;
        }
        return StatusCode::UNAUTHORIZED;
    };
    let Ok(mut inner) = inner.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR;
    };
    let verified = inner
        .secret
        .as_ref()
        .is_some_and(|s| s.verify(id, timestamp, &body, signature));
    if !verified {
        inner.bad_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(parsed) = serde_json::from_slice::<Body>(&body) else {
        inner.bad_bodies += 1;
        return StatusCode::UNPROCESSABLE_ENTITY;
    };
    let entry = inner.by_webhook.entry(id.to_owned()).or_default();
    entry.event_type = parsed.kind;
    entry.order_id = parsed.data.order_id;
    if refuse(id, entry.refused + entry.accepted + 1) && entry.accepted == 0 {
        entry.refused += 1;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    entry.accepted += 1;
    StatusCode::OK
}
