//! [`System`]: gateway, orders and products running in this process on random ports against a
//! [`TestEnv`], with an HTTP client for the API and direct read access to the SQLite files.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use messaging::Db;
use messaging::auth::Role;
use messaging::config::CommonConfig;
use messaging::service::Running;
use serde_json::{Value, json};

use crate::TestEnv;

/// The secret the tests sign their tokens with.
pub const JWT_SECRET: &str = "e2e-jwt-secret";
/// The customer whose token `place_order` uses.
pub const CUSTOMER: &str = "customer-1";

/// How a test wants the system set up.
#[derive(Clone)]
pub struct Options {
    pub deadline: Duration,
    /// Redis for orders and gateway (defaults to the env's shared Redis).
    pub redis_url: Option<String>,
    /// Requests per second and burst per subject; `None` turns rate limiting off.
    pub rate_limit: Option<(f64, u32)>,
    /// The gateway's `ORDERS_ADMISSION_LIMIT` (0 = off).
    pub admission_limit: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(30),
            redis_url: None,
            rate_limit: None,
            admission_limit: 1_000,
        }
    }
}

/// A token signed with [`JWT_SECRET`], valid for an hour.
pub fn token(sub: &str, role: Role, seller_id: Option<&str>) -> String {
    messaging::auth::issue_for(
        JWT_SECRET.as_bytes(),
        sub,
        role,
        seller_id,
        Duration::from_secs(3600),
    )
    .expect("sign a test token")
}

/// The webhook secret shared by publisher and notifier in tests.
pub const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

pub struct System {
    pub gateway: Option<Running>,
    pub orders: Option<Running>,
    pub products: Option<Running>,
    pub notifier: Option<Running>,
    pub webhook_publisher: Option<Running>,
    pub http: reqwest::Client,
    /// CLIENT token of [`CUSTOMER`] and an ADMIN token.
    pub client_token: String,
    pub admin_token: String,
    gateway_url: String,
    common: CommonConfig,
    options: Options,
}

impl System {
    /// Starts all three services.
    pub async fn start(env: &TestEnv, options: Options) -> Result<Self> {
        let mut system = Self::empty(env, options);
        system.start_products().await?;
        system.start_orders().await?;
        system.start_gateway().await?;
        Ok(system)
    }

    /// Starts nothing yet; use the `start_*` methods.
    pub fn empty(env: &TestEnv, options: Options) -> Self {
        let common = CommonConfig {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            amqp_url: env.amqp_url.clone(),
            redis_url: options
                .redis_url
                .clone()
                .unwrap_or_else(|| env.redis_url.clone()),
            redis_prefix: env.redis_prefix.clone(),
            data_dir: env.dir.path().to_path_buf(),
        };
        Self {
            gateway: None,
            orders: None,
            products: None,
            notifier: None,
            webhook_publisher: None,
            http: reqwest::Client::new(),
            client_token: token(CUSTOMER, Role::Client, None),
            admin_token: token("admin", Role::Admin, None),
            gateway_url: String::new(),
            common,
            options,
        }
    }

    pub async fn start_products(&mut self) -> Result<()> {
        let config = products::Config {
            common: self.common.clone(),
            prefetch: 32,
        };
        self.products = Some(products::spawn(config).await?);
        Ok(())
    }

    pub async fn start_orders(&mut self) -> Result<()> {
        let config = orders::Config {
            common: self.common.clone(),
            deadline: self.options.deadline,
            prefetch: 32,
            intake_prefetch: 32,
        };
        self.orders = Some(orders::spawn(config).await?);
        Ok(())
    }

    pub async fn start_gateway(&mut self) -> Result<()> {
        let running = self.spawn_gateway().await?;
        self.gateway_url = running.url();
        self.gateway = Some(running);
        Ok(())
    }

    /// Starts one more gateway instance on the same broker and Redis (the caller stops it);
    /// `start_gateway` uses this for the system's own.
    pub async fn spawn_gateway(&self) -> Result<Running> {
        let (rate_limit_per_sec, rate_limit_burst) = self.options.rate_limit.unwrap_or((0.0, 1));
        let config = gateway::Config {
            common: self.common.clone(),
            rpc_timeout: Duration::from_secs(5),
            max_body_bytes: 16 * 1024,
            jwt_secret: JWT_SECRET.into(),
            rate_limit_per_sec,
            rate_limit_burst,
            admission_limit: self.options.admission_limit,
            admission_poll: Duration::from_millis(100),
        };
        let running = gateway::spawn(config).await?;
        self.wait_ready(&running.url()).await?;
        Ok(running)
    }

    /// Starts the notifier, then the webhook publisher with its default subscription pointing
    /// at it (retries after 100, 200, 400 ms so tests stay short).
    pub async fn start_realtime(&mut self) -> Result<()> {
        let secret = messaging::signature::Secret::parse(WEBHOOK_SECRET)?;
        let notifier_config = notifier::Config {
            common: CommonConfig {
                data_dir: self.common.data_dir.join("notifier"),
                ..self.common.clone()
            },
            webhook_secret: secret.clone(),
            jwt_secret: JWT_SECRET.into(),
            tolerance: Duration::from_secs(300),
            dedupe_ttl: Duration::from_secs(600),
            client_buffer: 256,
            ping_interval: Duration::from_secs(20),
            telegram: None,
            // The dashboard reads the reports from this system's gateway (start it first).
            gateway_public_url: self.gateway_url.clone(),
        };
        let notifier = notifier::spawn(notifier_config).await?;
        let notifier_url = notifier.url();
        self.notifier = Some(notifier);
        self.wait_ready(&notifier_url).await?;
        let publisher_config = webhook_publisher::Config {
            common: CommonConfig {
                data_dir: self.common.data_dir.join("webhook-publisher"),
                ..self.common.clone()
            },
            notifier_url: format!("{notifier_url}/webhooks"),
            webhook_secret: secret,
            jwt_secret: JWT_SECRET.into(),
            schedule: webhook_publisher::schedule::RetrySchedule::parse_ms("100,200,400", 0.2)?,
            timeout: Duration::from_secs(5),
            endpoint_concurrency: 4,
            prefetch: 32,
            // Tests send webhooks to sinks on this machine.
            allowed_networks: webhook_publisher::egress::parse_allowed_networks("127.0.0.0/8")
                .map_err(anyhow::Error::msg)?,
            extra_roots: Default::default(),
            history_retention: Duration::from_secs(30 * 86_400),
            prune_every: webhook_publisher::retention::PRUNE_EVERY,
            // SQLite in the data dir.
            database: None,
        };
        let publisher = webhook_publisher::spawn(publisher_config).await?;
        let publisher_url = publisher.url();
        self.webhook_publisher = Some(publisher);
        self.wait_ready(&publisher_url).await
    }

    /// The notifier's base URL (after `start_realtime`).
    pub fn notifier_url(&self) -> String {
        self.notifier.as_ref().map(Running::url).unwrap_or_default()
    }

    /// Waits until a service's `/ready` says 200.
    pub async fn wait_ready(&self, base: &str) -> Result<()> {
        crate::wait_ready(base, Duration::from_secs(20)).await
    }

    /// Stops orders and starts it again with another order deadline (orders.db is kept).
    pub async fn restart_orders(&mut self, deadline: Duration) -> Result<()> {
        if let Some(running) = self.orders.take() {
            running.stop().await;
        }
        self.options.deadline = deadline;
        self.start_orders().await
    }

    pub async fn stop_products(&mut self) {
        if let Some(running) = self.products.take() {
            running.stop().await;
        }
    }

    pub async fn stop(mut self) {
        let all = [
            self.gateway.take(),
            self.webhook_publisher.take(),
            self.notifier.take(),
            self.orders.take(),
            self.products.take(),
        ];
        for running in all.into_iter().flatten() {
            running.stop().await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway_url)
    }

    /// A POST to the gateway as the test customer (CLIENT).
    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(self.url(path))
            .bearer_auth(&self.client_token)
    }

    /// A request to the gateway with `token`.
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
    ) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(token)
    }

    /// `POST /products`; returns the new product's id.
    pub async fn create_product(&self, stock: i64) -> Result<String> {
        let body =
            json!({ "name": "widget", "price": 9.99, "stock": stock, "sellerId": "seller-1" });
        let response = self
            .request(reqwest::Method::POST, "/products", &self.admin_token)
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == 201,
            "create product: {} {}",
            response.status(),
            response.text().await?
        );
        let product: Value = response.json().await?;
        product["id"]
            .as_str()
            .map(str::to_owned)
            .context("product without id")
    }

    pub async fn stock(&self, product_id: &str) -> Result<i64> {
        let product: Value = self
            .http
            .get(self.url(&format!("/products/{product_id}")))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        product["stock"].as_i64().context("product without stock")
    }

    /// `POST /orders` with an optional Idempotency-Key.
    pub async fn place_order(
        &self,
        product_id: &str,
        quantity: i64,
        key: Option<&str>,
    ) -> Result<reqwest::Response> {
        let mut request = self
            .post("/orders")
            .json(&json!({ "productId": product_id, "quantity": quantity }));
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        Ok(request.send().await?)
    }

    /// Places an order that must be accepted; returns its id.
    pub async fn accepted_order(&self, product_id: &str, quantity: i64) -> Result<String> {
        let response = self.place_order(product_id, quantity, None).await?;
        anyhow::ensure!(
            response.status() == 202,
            "order not accepted: {}",
            response.status()
        );
        let body: Value = response.json().await?;
        body["orderId"]
            .as_str()
            .map(str::to_owned)
            .context("202 without orderId")
    }

    /// `GET /orders/{id}` as JSON (None on 404).
    pub async fn order(&self, id: &str) -> Result<Option<Value>> {
        let response = self
            .request(
                reqwest::Method::GET,
                &format!("/orders/{id}"),
                &self.admin_token,
            )
            .send()
            .await?;
        if response.status() == 404 {
            return Ok(None);
        }
        Ok(Some(response.error_for_status()?.json().await?))
    }

    /// orders.db, read directly.
    pub async fn orders_db(&self) -> Result<Db> {
        Ok(Db::open(&self.common.data_dir.join("orders.db"), "").await?)
    }

    /// Waits until none of `ids` is PENDING any more; returns status by id.
    pub async fn wait_terminal(
        &self,
        ids: &[String],
        timeout: Duration,
    ) -> Result<HashMap<String, String>> {
        let db = self.orders_db().await?;
        let wanted: Vec<String> = ids.to_vec();
        let statuses = crate::eventually(timeout, || {
            let (db, wanted) = (db.clone(), wanted.clone());
            async move {
                let all = db
                    .call(|conn| {
                        let mut stmt = conn.prepare("SELECT id, status FROM orders")?;
                        let rows = stmt.query_map([], |r| {
                            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                        })?;
                        rows.collect::<Result<HashMap<_, _>, _>>()
                    })
                    .await
                    .ok()?;
                let done = wanted
                    .iter()
                    .all(|id| all.get(id).is_some_and(|s| s != "PENDING"));
                done.then(|| {
                    wanted
                        .iter()
                        .map(|id| (id.clone(), all[id].clone()))
                        .collect()
                })
            }
        })
        .await;
        statuses.context("orders did not all reach a terminal state in time")
    }
}

/// How many of `statuses` are `status`.
pub fn count(statuses: &HashMap<String, String>, status: &str) -> usize {
    statuses.values().filter(|s| *s == status).count()
}
