//! The system under test as the load generator sees it: the gateway's HTTP API, the products
//! (one by default) with enough stock for the whole run, and one `POST /orders`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jwt_auth::{Claims, Role};
use serde::Deserialize;
use serde_json::json;

use crate::events::Tracker;
use crate::recorder::Recorder;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("could not sign a token: {0}")]
    Token(String),
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("creating the product answered {status}: {body}")]
    Product { status: u16, body: String },
}

/// Everything a request task needs; cheap to clone.
#[derive(Clone)]
pub struct Target {
    pub http: reqwest::Client,
    /// The first gateway (the products are created through it).
    pub gateway: String,
    /// Every gateway; orders go to them in turn (`--gateway a,b`: several instances).
    pub gateways: InTurn,
    pub client_token: String,
    /// The products ordered, in turn: one is the hot row of every reserve; several show what
    /// the stores cost apart from that row's lock.
    pub products: InTurn,
    pub idempotency_keys: bool,
    pub timeout: Duration,
}

fn token(secret: &str, sub: &str, role: Role) -> Result<String, TargetError> {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 24 * 3600;
    let claims = Claims {
        sub: sub.to_owned(),
        role,
        seller_id: None,
        exp,
    };
    jwt_auth::issue(secret.as_bytes(), &claims).map_err(|e| TargetError::Token(e.to_string()))
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

/// Creates one product with `stock` through `gateway`; returns its id.
async fn create_product(
    http: &reqwest::Client,
    gateway: &str,
    admin: &str,
    stock: i64,
) -> Result<String, TargetError> {
    let response = http
        .post(format!("{gateway}/products"))
        .bearer_auth(admin)
        .json(&json!({"name": "loadgen widget", "price": 1.0, "stock": stock, "sellerId": "loadgen-seller"}))
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(TargetError::Product {
            status: status.as_u16(),
            body,
        });
    }
    let product: Created = response.json().await?;
    Ok(product.id)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Accepted {
    order_id: String,
}

impl Target {
    /// Signs an ADMIN and a CLIENT token with `jwt_secret` and creates `products` products with
    /// `stock` each. `gateway` may list several gateways separated by commas; orders go to each
    /// in turn.
    pub async fn prepare(
        gateway: &str,
        jwt_secret: &str,
        stock: i64,
        products: usize,
        idempotency_keys: bool,
        timeout: Duration,
    ) -> Result<Self, TargetError> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(4096)
            .tcp_nodelay(true)
            .build()?;
        let gateways: Vec<String> = gateway
            .split(',')
            .map(|g| g.trim().trim_end_matches('/').to_owned())
            .filter(|g| !g.is_empty())
            .collect();
        let gateway = gateways.first().cloned().unwrap_or_default();
        let admin = token(jwt_secret, "loadgen-admin", Role::Admin)?;
        let mut product_ids = Vec::new();
        for _ in 0..products.max(1) {
            product_ids.push(create_product(&http, &gateway, &admin, stock).await?);
        }
        Ok(Self {
            http,
            gateway,
            gateways: InTurn::new(gateways),
            client_token: token(jwt_secret, "loadgen-client", Role::Client)?,
            products: InTurn::new(product_ids),
            idempotency_keys,
            timeout,
        })
    }

    /// Places one order whose POST was meant to start at `intended` and records the outcome.
    /// Latency is measured from `intended`, not from when the request actually went out, so a
    /// stalled system cannot hide its stall (no coordinated omission).
    pub async fn place_order(
        &self,
        intended: Instant,
        recorder: &Arc<Recorder>,
        tracker: &Arc<Tracker>,
    ) -> Placed {
        let mut request = self
            .http
            .post(format!("{}/orders", self.gateways.next()))
            .bearer_auth(&self.client_token)
            .json(&json!({"productId": self.products.next(), "quantity": 1}))
            .timeout(self.timeout);
        if self.idempotency_keys {
            request = request.header("Idempotency-Key", uuid::Uuid::new_v4().to_string());
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                recorder.error(error_kind(&e));
                return Placed::Failed;
            }
        };
        let status = response.status();
        if status.as_u16() == 503 {
            // The gateway shed the order (or could not hand it to the broker): a refusal the
            // client was told about, nothing was kept; not an error of the system under test.
            recorder.refused();
            return Placed::Refused {
                retry_after: retry_after(response.headers()),
            };
        }
        if status.as_u16() != 202 {
            recorder.error(&format!("http-{}", status.as_u16()));
            return Placed::Failed;
        }
        match response.json::<Accepted>().await {
            Ok(accepted) => {
                recorder.accepted(intended.elapsed());
                tracker.accepted(recorder, accepted.order_id, intended);
                Placed::Accepted
            }
            Err(e) => {
                recorder.error(error_kind(&e));
                Placed::Failed
            }
        }
    }
}

/// Names shared by every clone of a [`Target`], handed out in turn.
#[derive(Clone)]
pub struct InTurn {
    items: Arc<Vec<String>>,
    next: Arc<std::sync::atomic::AtomicUsize>,
}

impl InTurn {
    fn new(items: Vec<String>) -> Self {
        Self {
            items: Arc::new(items),
            next: Arc::default(),
        }
    }

    /// The next one (`""` when there is none).
    pub fn next(&self) -> &str {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.items
            .get(i % self.items.len().max(1))
            .map_or("", String::as_str)
    }

    pub fn all(&self) -> &[String] {
        &self.items
    }
}

/// What became of one `POST /orders`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    Accepted,
    /// A 503: the gateway kept nothing; a polite client waits `retry_after` before its next try.
    Refused {
        retry_after: Option<Duration>,
    },
    /// A transport error or an unexpected answer (recorded as an error).
    Failed,
}

/// The `Retry-After` of an answer, in whole seconds (the form the gateway sends).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let seconds = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

fn error_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_decode() {
        "bad-body"
    } else {
        "transport"
    }
}
