//! The load: a bounded number of `POST /orders`, spread evenly over the run, each with its own
//! `Idempotency-Key`, against a few products with limited stock.
//!
//! Clients behave like real ones: each of 50 customers has its own CLIENT token (the gateway
//! rate-limits per subject); a 503, a 429 or a connection error (refused, reset, timed out) is
//! retried with the same key and the same body after a capped, jittered backoff (honouring
//! `Retry-After`), a bounded number of times. Some accepted orders are replayed once more with
//! their key, and the replay must name the same order.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use jwt_auth::Role;
use rand::Rng;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{debug, warn};

/// How many customers (token subjects) the orders come from.
pub const CUSTOMERS: usize = 50;

/// Signs the bearer tokens of the harness's clients with the run's `JWT_SECRET`.
#[derive(Clone)]
pub struct Tokens {
    secret: String,
}

impl Tokens {
    pub fn new(secret: &str) -> Self {
        Self {
            secret: secret.to_owned(),
        }
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// A token for `sub` with `role`, valid for two hours (longer than any run).
    pub fn issue(&self, sub: &str, role: Role) -> Result<String> {
        jwt_auth::issue_for(
            self.secret.as_bytes(),
            sub,
            role,
            None,
            std::time::Duration::from_secs(7200),
        )
        .context("sign a token")
    }
}

/// A product the load orders from.
#[derive(Debug, Clone)]
pub struct Product {
    pub id: String,
    pub initial_stock: i64,
}

/// An order that got a 202.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub product_id: String,
    pub quantity: i64,
    pub key: String,
    /// How many requests it took.
    pub attempts: u32,
    /// When the 202 came, since the start of the load.
    pub at: Duration,
}

#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub orders: usize,
    pub duration: Duration,
    pub concurrency: usize,
    pub max_attempts: u32,
    /// Share of accepted orders replayed once with the same key (0.0–1.0).
    pub replay_share: f64,
}

/// What the clients saw.
#[derive(Debug, Default)]
pub struct LoadOutcome {
    /// Order id → what was ordered.
    pub accepted: HashMap<String, Accepted>,
    pub retried_503: u64,
    pub retried_429: u64,
    pub retried_connection: u64,
    pub retried_other_5xx: u64,
    /// Orders whose client gave up after `max_attempts` (never accepted: not counted as lost).
    pub gave_up: u64,
    /// Answers no correct server gives (4xx to a valid request, 202 without an order id, a
    /// replay naming another order).
    pub unexpected: Vec<String>,
    pub replays: u64,
    pub elapsed: Duration,
}

#[derive(Default)]
struct Counters {
    retried_503: AtomicU64,
    retried_429: AtomicU64,
    retried_connection: AtomicU64,
    retried_other_5xx: AtomicU64,
    gave_up: AtomicU64,
    replays: AtomicU64,
}

/// Creates `count` products through the gateway: the first one with little stock (so that
/// rejections happen early), the others with about 90 % of what the load will ask of them, so
/// that confirmations go on through every kill and the end of the run sees stock run out.
pub async fn create_products(
    http: &reqwest::Client,
    gateway: &str,
    tokens: &Tokens,
    count: usize,
    orders: usize,
) -> Result<Vec<Product>> {
    let count = count.max(1);
    // Quantities are 1..=3, so an order asks for 2 on average.
    let demand = (orders * 2 / count).max(1) as i64;
    let admin = tokens.issue("chaos-admin", Role::Admin)?;
    let mut products = Vec::new();
    for i in 0..count {
        let stock = if i == 0 && count > 1 {
            (demand / 20).max(5)
        } else {
            demand * 9 / 10
        };
        let body = json!({
            "name": format!("chaos product {i}"),
            "price": 9.99,
            "stock": stock,
            "sellerId": format!("seller-{}", i % 2),
        });
        let mut last = String::new();
        let mut created = None;
        for _ in 0..20 {
            match http
                .post(format!("{gateway}/products"))
                .bearer_auth(&admin)
                .json(&body)
                .send()
                .await
            {
                Ok(r) if r.status() == 201 => {
                    let product: Value = r.json().await.context("product body")?;
                    created = product["id"].as_str().map(str::to_owned);
                    break;
                }
                Ok(r) => last = format!("status {}", r.status()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let Some(id) = created else {
            bail!("could not create product {i}: {last}");
        };
        products.push(Product {
            id,
            initial_stock: stock,
        });
    }
    Ok(products)
}

/// Runs the load to its end (every order accepted or given up) and reports what happened.
/// Clients spread over `gateways`: each sends its first attempt to one of them and its retries
/// to the next, as behind a load balancer.
pub async fn run(
    http: reqwest::Client,
    gateways: Vec<String>,
    tokens: Tokens,
    products: Vec<Product>,
    plan: LoadPlan,
) -> LoadOutcome {
    let started = Instant::now();
    let (customers, unexpected_at_start) = customers(&tokens);
    if customers.is_empty() {
        return LoadOutcome {
            unexpected: unexpected_at_start,
            ..Default::default()
        };
    }
    let counters = Arc::new(Counters::default());
    let orders = Arc::new(Orders {
        next: AtomicUsize::new(0),
        total: plan.orders,
        started,
        spacing: plan.duration / plan.orders.max(1) as u32,
        replay_share: plan.replay_share,
        products,
        customers,
        accepted: Mutex::new(HashMap::new()),
        unexpected: Mutex::new(Vec::new()),
    });
    let mut workers = tokio::task::JoinSet::new();
    let gateways = Arc::new(gateways);
    for worker in 0..plan.concurrency.max(1) {
        let client = Client {
            http: http.clone(),
            gateways: gateways.clone(),
            first: worker,
            counters: counters.clone(),
            max_attempts: plan.max_attempts,
        };
        workers.spawn(orders.clone().place_all(client));
    }
    while workers.join_next().await.is_some() {}
    let accepted = std::mem::take(&mut *orders.accepted.lock().await);
    let mut unexpected = std::mem::take(&mut *orders.unexpected.lock().await);
    unexpected.extend(unexpected_at_start);
    LoadOutcome {
        accepted,
        retried_503: counters.retried_503.load(Ordering::Relaxed),
        retried_429: counters.retried_429.load(Ordering::Relaxed),
        retried_connection: counters.retried_connection.load(Ordering::Relaxed),
        retried_other_5xx: counters.retried_other_5xx.load(Ordering::Relaxed),
        gave_up: counters.gave_up.load(Ordering::Relaxed),
        unexpected,
        replays: counters.replays.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    }
}

/// The load's customers, `(sub, token)` each, and the errors of the tokens that could not be
/// issued.
fn customers(tokens: &Tokens) -> (Vec<(String, String)>, Vec<String>) {
    let mut errors = Vec::new();
    let customers = (0..CUSTOMERS)
        .filter_map(|i| {
            let sub = format!("customer-{i}");
            match tokens.issue(&sub, Role::Client) {
                Ok(token) => Some((sub, token)),
                Err(e) => {
                    errors.push(format!("{e:#}"));
                    None
                }
            }
        })
        .collect();
    (customers, errors)
}

/// The orders of the load, shared by the clients: which one is next, when each is due, and what
/// became of them.
struct Orders {
    next: AtomicUsize,
    total: usize,
    started: Instant,
    /// Order `i` is due at `started + spacing × i`.
    spacing: Duration,
    replay_share: f64,
    products: Vec<Product>,
    customers: Vec<(String, String)>,
    accepted: Mutex<HashMap<String, Accepted>>,
    unexpected: Mutex<Vec<String>>,
}

impl Orders {
    /// One client: takes the next order, waits until it is due and places it, until none is
    /// left.
    async fn place_all(self: Arc<Self>, client: Client) {
        loop {
            let i = self.next.fetch_add(1, Ordering::SeqCst);
            if i >= self.total {
                break;
            }
            tokio::time::sleep_until(self.started + self.spacing * i as u32).await;
            self.place(&client, i).await;
        }
    }

    /// Places order `i` (a random product and quantity, replayed once with the same key for a
    /// share of them) and records what happened.
    async fn place(&self, client: &Client, i: usize) {
        let (product, quantity, replay) = {
            let mut rng = rand::rng();
            let p = rng.random_range(0..self.products.len());
            (
                self.products[p].id.clone(),
                rng.random_range(1..=3i64),
                rng.random_bool(self.replay_share),
            )
        };
        let key = format!("chaos-{}", uuid::Uuid::new_v4());
        let (customer, token) = &self.customers[i % self.customers.len()];
        let body = json!({
            "productId": product,
            "quantity": quantity,
            "customerId": customer,
        });
        match client.place(&key, token, &body).await {
            Placed::Accepted { order_id, attempts } => {
                let accepted_at = self.started.elapsed();
                if replay {
                    client.counters.replays.fetch_add(1, Ordering::Relaxed);
                    if let Placed::Accepted {
                        order_id: again, ..
                    } = client.place(&key, token, &body).await
                        && again != order_id
                    {
                        self.unexpected.lock().await.push(format!(
                            "replay of key {key} named order {again}, not {order_id}"
                        ));
                    }
                }
                self.accepted.lock().await.insert(
                    order_id,
                    Accepted {
                        product_id: product,
                        quantity,
                        key,
                        attempts,
                        at: accepted_at,
                    },
                );
            }
            Placed::GaveUp => {
                client.counters.gave_up.fetch_add(1, Ordering::Relaxed);
            }
            Placed::Unexpected(what) => self.unexpected.lock().await.push(what),
        }
    }
}

enum Placed {
    Accepted { order_id: String, attempts: u32 },
    GaveUp,
    Unexpected(String),
}

struct Client {
    http: reqwest::Client,
    gateways: Arc<Vec<String>>,
    /// Which gateway the first attempt goes to (then the next one per retry).
    first: usize,
    counters: Arc<Counters>,
    max_attempts: u32,
}

impl Client {
    fn gateway(&self, attempt: u32) -> &str {
        let n = self.gateways.len().max(1);
        self.gateways
            .get((self.first + attempt as usize) % n)
            .map_or("", String::as_str)
    }

    /// `POST /orders` until a 202 or a final answer, retrying with the same key.
    async fn place(&self, key: &str, token: &str, body: &Value) -> Placed {
        let mut backoff = Duration::from_millis(200);
        for attempt in 1..=self.max_attempts {
            let sent = self
                .http
                .post(format!("{}/orders", self.gateway(attempt)))
                .header("Idempotency-Key", key)
                .bearer_auth(token)
                .json(body)
                .send()
                .await;
            let mut wait = backoff;
            match sent {
                Ok(r) if r.status() == 202 => {
                    let order_id = match r.json::<Value>().await {
                        Ok(v) => v["orderId"].as_str().map(str::to_owned),
                        Err(_) => None,
                    };
                    return match order_id {
                        Some(order_id) => Placed::Accepted {
                            order_id,
                            attempts: attempt,
                        },
                        None => Placed::Unexpected(format!("202 without orderId for key {key}")),
                    };
                }
                Ok(r) if r.status() == 503 || r.status() == 429 => {
                    let counter = if r.status() == 503 {
                        &self.counters.retried_503
                    } else {
                        &self.counters.retried_429
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    let retry_after = r
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(Duration::from_secs);
                    if let Some(after) = retry_after {
                        wait = wait.max(after);
                    }
                    debug!(key, attempt, status = %r.status(), "retrying with the same key");
                }
                Ok(r) if r.status().is_server_error() => {
                    self.counters
                        .retried_other_5xx
                        .fetch_add(1, Ordering::Relaxed);
                    warn!(key, status = %r.status(), "server error; retrying with the same key");
                }
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    return Placed::Unexpected(format!("key {key}: {status} {text}"));
                }
                Err(e) => {
                    self.counters
                        .retried_connection
                        .fetch_add(1, Ordering::Relaxed);
                    debug!(key, attempt, error = %e, "connection error; retrying with the same key");
                }
            }
            let jitter = rand::rng().random_range(0.8..1.2);
            tokio::time::sleep(wait.mul_f64(jitter)).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        Placed::GaveUp
    }
}

/// The longest stretch of the load without a new 202: `(start, length)` in seconds since the
/// start of the load, between two acceptances (or the start of the load and the first one).
/// `None` without any accepted order.
pub fn longest_intake_gap(times: impl IntoIterator<Item = Duration>) -> Option<(f64, f64)> {
    let mut times: Vec<f64> = times.into_iter().map(|t| t.as_secs_f64()).collect();
    if times.is_empty() {
        return None;
    }
    times.sort_by(f64::total_cmp);
    let mut best = (0.0, times[0]);
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        if gap > best.1 {
            best = (pair[0], gap);
        }
    }
    Some(best)
}

#[cfg(test)]
mod gap_tests {
    use super::*;

    #[test]
    fn the_longest_gap_is_found_wherever_it_is() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|m| Duration::from_millis(*m))
                .collect::<Vec<_>>()
        };
        assert_eq!(longest_intake_gap(ms(&[])), None);
        assert_eq!(longest_intake_gap(ms(&[500])), Some((0.0, 0.5)));
        let (from, len) = longest_intake_gap(ms(&[100, 200, 4200, 4300, 300])).unwrap();
        assert!(
            (from - 0.3).abs() < 1e-9 && (len - 3.9).abs() < 1e-9,
            "{from} {len}"
        );
        let (from, len) = longest_intake_gap(ms(&[3000, 3100])).unwrap();
        assert!(from == 0.0 && (len - 3.0).abs() < 1e-9);
    }
}
