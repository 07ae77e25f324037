//! [`System`]: gateway, orders and products running in this process on random ports against a
//! [`TestEnv`], with an HTTP client for the API and direct read access to the services' data.
//!
//! On [`Backend::Sqlite`] (the default) each stateful service keeps its file in the env's temp
//! directory, one instance each. On [`Backend::Postgres`] each service gets a database of its own
//! for the test ([`TestEnv::database`]), and [`Options::instances`] instances of it run on that
//! database, all consuming the same queues; [`System::crash`] ends one abruptly.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use jwt_auth::Role;
use messaging::Db;
use messaging::pg::PgConfig;
use serde_json::{Value, json};
use service_kit::Running;
use service_kit::config::CommonConfig;
use tokio::sync::OnceCell;

use testkit::TestEnv;
use testkit::env::Databases;

/// The secret the tests sign their tokens with.
pub const JWT_SECRET: &str = "e2e-jwt-secret";
/// The customer whose token `place_order` uses.
pub const CUSTOMER: &str = "customer-1";

/// Where orders and products keep their state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file per service in the env's temp directory (one instance each).
    #[default]
    Sqlite,
    /// A PostgreSQL database per service for the test, shared by its instances.
    Postgres,
}

/// How many instances of each service [`System`] starts. More than one orders, products or
/// webhook publisher needs [`Backend::Postgres`] (a SQLite file has one writer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Instances {
    pub gateways: usize,
    pub orders: usize,
    pub products: usize,
    pub webhook_publishers: usize,
}

impl Default for Instances {
    fn default() -> Self {
        Self {
            gateways: 1,
            orders: 1,
            products: 1,
            webhook_publishers: 1,
        }
    }
}

/// A service the system runs instances of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Gateway,
    Orders,
    Products,
    WebhookPublisher,
}

/// Connections per instance on PostgreSQL: small, as a test may run a dozen instances on a
/// server shared with the other tests (`max_connections` is 100 by default).
pub const PG_POOL_SIZE: usize = 6;
/// The outbox lease in tests: short, so the rows of a crashed instance move on quickly.
pub const PG_LEASE: Duration = Duration::from_secs(3);

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
    /// The gateway's `ORDERS_ADMISSION_WEBHOOK_LIMIT` (0 = off).
    pub webhook_admission_limit: u64,
    pub backend: Backend,
    pub instances: Instances,
}

impl Options {
    /// The defaults on `backend`.
    pub fn on(backend: Backend) -> Self {
        Self {
            backend,
            ..Self::default()
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(30),
            redis_url: None,
            rate_limit: None,
            admission_limit: 1_000,
            webhook_admission_limit: 10_000,
            backend: Backend::Sqlite,
            instances: Instances::default(),
        }
    }
}

/// A token signed with [`JWT_SECRET`], valid for an hour.
pub fn token(sub: &str, role: Role, seller_id: Option<&str>) -> String {
    jwt_auth::issue_for(
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
    /// The first instance of each service (the one `url` and the `start_*` methods talk to).
    pub gateway: Option<Running>,
    pub orders: Option<Running>,
    pub products: Option<Running>,
    pub notifier: Option<Running>,
    pub webhook_publisher: Option<Running>,
    /// Every further instance ([`Options::instances`]).
    pub extra: Vec<(Service, Running)>,
    pub http: reqwest::Client,
    /// CLIENT token of [`CUSTOMER`] and an ADMIN token.
    pub client_token: String,
    pub admin_token: String,
    gateway_url: String,
    common: CommonConfig,
    options: Options,
    vhost: String,
    databases: Databases,
    /// Connections for assertions, per service database (PostgreSQL only).
    readers: [OnceCell<tokio_postgres::Client>; 3],
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
            extra: Vec::new(),
            http: reqwest::Client::new(),
            client_token: token(CUSTOMER, Role::Client, None),
            admin_token: token("admin", Role::Admin, None),
            gateway_url: String::new(),
            common,
            options,
            vhost: env.vhost.clone(),
            databases: env.databases(),
            readers: Default::default(),
        }
    }

    pub fn backend(&self) -> Backend {
        self.options.backend
    }

    /// The `database` setting of `service`: `None` on SQLite, else its test database (created
    /// on first use) with the test pool size and lease.
    async fn database(&self, service: &str) -> Result<Option<PgConfig>> {
        if self.options.backend == Backend::Sqlite {
            return Ok(None);
        }
        let db = testkit::env::database(&self.databases, &self.vhost, service).await?;
        let mut config = PgConfig::parse(&db.url)?;
        config.pool_size = PG_POOL_SIZE;
        config.lease = PG_LEASE;
        Ok(Some(config))
    }

    /// How many instances of `service` to start; more than one of a stateful service needs
    /// PostgreSQL.
    fn count(&self, service: Service) -> Result<usize> {
        let i = &self.options.instances;
        let n = match service {
            Service::Gateway => i.gateways,
            Service::Orders => i.orders,
            Service::Products => i.products,
            Service::WebhookPublisher => i.webhook_publishers,
        }
        .max(1);
        ensure!(
            n == 1 || service == Service::Gateway || self.options.backend == Backend::Postgres,
            "{service:?} × {n} needs Backend::Postgres (a SQLite file has one writer)"
        );
        Ok(n)
    }

    fn slot(&mut self, service: Service) -> &mut Option<Running> {
        match service {
            Service::Gateway => &mut self.gateway,
            Service::Orders => &mut self.orders,
            Service::Products => &mut self.products,
            Service::WebhookPublisher => &mut self.webhook_publisher,
        }
    }

    /// Keeps a started instance: the first one of its service in its field, the rest in `extra`.
    fn keep(&mut self, service: Service, running: Running) {
        let slot = self.slot(service);
        if slot.is_none() {
            *slot = Some(running);
        } else {
            self.extra.push((service, running));
        }
    }

    /// Every running instance of `service`, taken out of the system.
    fn take_all(&mut self, service: Service) -> Vec<Running> {
        let mut all: Vec<Running> = self.slot(service).take().into_iter().collect();
        let (these, others): (Vec<_>, Vec<_>) = std::mem::take(&mut self.extra)
            .into_iter()
            .partition(|(s, _)| *s == service);
        self.extra = others;
        all.extend(these.into_iter().map(|(_, r)| r));
        all
    }

    /// How many instances of `service` run.
    pub fn running(&self, service: Service) -> usize {
        let first = match service {
            Service::Gateway => self.gateway.is_some(),
            Service::Orders => self.orders.is_some(),
            Service::Products => self.products.is_some(),
            Service::WebhookPublisher => self.webhook_publisher.is_some(),
        };
        usize::from(first) + self.extra.iter().filter(|(s, _)| *s == service).count()
    }

    /// Ends one instance of `service` abruptly ([`Running::kill`]: no drain, its in-flight
    /// messages go back to the queue for the others, its outbox claims wait for the lease).
    pub async fn crash(&mut self, service: Service) -> Result<()> {
        let running = match self.slot(service).take() {
            Some(running) => running,
            None => {
                let at = self
                    .extra
                    .iter()
                    .position(|(s, _)| *s == service)
                    .with_context(|| format!("no {service:?} instance left to crash"))?;
                self.extra.remove(at).1
            }
        };
        running.kill().await;
        // The next instance becomes the first (for `url` and friends).
        if let Some(at) = self.extra.iter().position(|(s, _)| *s == service) {
            let (_, next) = self.extra.remove(at);
            if service == Service::Gateway {
                self.gateway_url = next.url();
            }
            *self.slot(service) = Some(next);
        }
        Ok(())
    }

    /// Starts [`Instances::products`] products instances (on PostgreSQL: waits until each is
    /// ready, i.e. its schema is migrated and its consumers run).
    pub async fn start_products(&mut self) -> Result<()> {
        for _ in 0..self.count(Service::Products)? {
            let config = products::Config {
                common: self.common.clone(),
                prefetch: 32,
                database: self.database("products").await?,
            };
            let running = products::spawn(config).await?;
            if self.options.backend == Backend::Postgres {
                self.wait_ready(&running.url()).await?;
            }
            self.keep(Service::Products, running);
        }
        Ok(())
    }

    /// Starts [`Instances::orders`] orders instances (waiting for each on PostgreSQL).
    pub async fn start_orders(&mut self) -> Result<()> {
        for _ in 0..self.count(Service::Orders)? {
            let config = orders::Config {
                common: self.common.clone(),
                deadline: self.options.deadline,
                prefetch: 32,
                intake_prefetch: 32,
                database: self.database("orders").await?,
            };
            let running = orders::spawn(config).await?;
            if self.options.backend == Backend::Postgres {
                self.wait_ready(&running.url()).await?;
            }
            self.keep(Service::Orders, running);
        }
        Ok(())
    }

    /// Starts [`Instances::gateways`] gateways; the first one is the system's [`System::url`].
    pub async fn start_gateway(&mut self) -> Result<()> {
        for _ in 0..self.count(Service::Gateway)? {
            let running = self.spawn_gateway().await?;
            if self.gateway.is_none() {
                self.gateway_url = running.url();
            }
            self.keep(Service::Gateway, running);
        }
        Ok(())
    }

    /// The base URL of every running gateway.
    pub fn gateway_urls(&self) -> Vec<String> {
        let extra = self
            .extra
            .iter()
            .filter(|(s, _)| *s == Service::Gateway)
            .map(|(_, r)| r.url());
        self.gateway.iter().map(Running::url).chain(extra).collect()
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
            webhook_admission_limit: self.options.webhook_admission_limit,
            admission_poll: Duration::from_millis(100),
        };
        let running = gateway::spawn(config).await?;
        self.wait_ready(&running.url()).await?;
        Ok(running)
    }

    /// Starts the notifier, then the webhook publisher with its default subscription pointing
    /// at it (retries after 100, 200, 400 ms so tests stay short).
    pub async fn start_realtime(&mut self) -> Result<()> {
        let secret = webhook_signing::Secret::parse(WEBHOOK_SECRET)?;
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
        for n in 0..self.count(Service::WebhookPublisher)? {
            self.start_publisher(n, &notifier_url, secret.clone())
                .await?;
        }
        Ok(())
    }

    /// Starts webhook publisher number `n` delivering to the notifier (on PostgreSQL all share
    /// the test's publisher database; the data directory then stays empty).
    async fn start_publisher(
        &mut self,
        n: usize,
        notifier_url: &str,
        secret: webhook_signing::Secret,
    ) -> Result<()> {
        let dir = match n {
            0 => "webhook-publisher".to_owned(),
            n => format!("webhook-publisher-{n}"),
        };
        let publisher_config = webhook_publisher::Config {
            common: CommonConfig {
                data_dir: self.common.data_dir.join(dir),
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
            // SQLite in its data dir, or the test's publisher database every instance shares.
            database: self.database("webhook-publisher").await?,
        };
        let publisher = webhook_publisher::spawn(publisher_config).await?;
        let publisher_url = publisher.url();
        self.keep(Service::WebhookPublisher, publisher);
        self.wait_ready(&publisher_url).await
    }

    /// The notifier's base URL (after `start_realtime`).
    pub fn notifier_url(&self) -> String {
        self.notifier.as_ref().map(Running::url).unwrap_or_default()
    }

    /// Waits until a service's `/ready` says 200.
    pub async fn wait_ready(&self, base: &str) -> Result<()> {
        testkit::wait_ready(base, Duration::from_secs(20)).await
    }

    /// Stops orders and starts it again with another order deadline (its data is kept).
    pub async fn restart_orders(&mut self, deadline: Duration) -> Result<()> {
        self.stop_orders().await;
        self.options.deadline = deadline;
        self.start_orders().await
    }

    /// Stops every orders instance (cleanly).
    pub async fn stop_orders(&mut self) {
        for running in self.take_all(Service::Orders) {
            running.stop().await;
        }
    }

    /// Stops every products instance (cleanly).
    pub async fn stop_products(&mut self) {
        for running in self.take_all(Service::Products) {
            running.stop().await;
        }
    }

    pub async fn stop(mut self) {
        let mut all = self.take_all(Service::Gateway);
        all.extend(self.take_all(Service::WebhookPublisher));
        all.extend(self.notifier.take());
        all.extend(self.take_all(Service::Orders));
        all.extend(self.take_all(Service::Products));
        for running in all {
            running.stop().await;
        }
        if self.options.backend == Backend::Postgres {
            // With DATABASE_URL set a service writes no SQLite file: on PostgreSQL the test
            // really ran on PostgreSQL.
            let webhooks = Path::new("webhook-publisher").join("webhooks.db");
            for file in [Path::new("orders.db"), Path::new("products.db"), &webhooks] {
                let path = self.common.data_dir.join(file);
                assert!(!path.exists(), "{} written on PostgreSQL", path.display());
            }
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

    /// orders.db, read directly (SQLite only; see [`System::order_statuses`] for both).
    pub async fn orders_db(&self) -> Result<Db> {
        ensure!(
            self.options.backend == Backend::Sqlite,
            "orders.db exists on SQLite only"
        );
        Ok(Db::open(&self.common.data_dir.join("orders.db"), "").await?)
    }

    /// A connection to `service`'s test database (PostgreSQL only), for assertions.
    pub async fn pg(&self, service: Service) -> Result<&tokio_postgres::Client> {
        ensure!(
            self.options.backend == Backend::Postgres,
            "the system runs on SQLite"
        );
        let (cell, name) = match service {
            Service::Orders => (&self.readers[0], "orders"),
            Service::Products => (&self.readers[1], "products"),
            Service::WebhookPublisher => (&self.readers[2], "webhook-publisher"),
            Service::Gateway => anyhow::bail!("the gateway keeps no database"),
        };
        cell.get_or_try_init(|| async {
            let db = testkit::env::database(&self.databases, &self.vhost, name).await?;
            db.connect().await
        })
        .await
    }

    /// Every order's status by id, read from orders' store (either backend).
    pub async fn order_statuses(&self) -> Result<HashMap<String, String>> {
        match self.options.backend {
            Backend::Sqlite => {
                let db = self.orders_db().await?;
                let all = db
                    .call(|conn| {
                        let mut stmt = conn.prepare("SELECT id, status FROM orders")?;
                        let rows = stmt.query_map([], |r| {
                            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                        })?;
                        rows.collect::<Result<HashMap<_, _>, _>>()
                    })
                    .await?;
                db.close().await;
                Ok(all)
            }
            Backend::Postgres => {
                let client = self.pg(Service::Orders).await?;
                let rows = client
                    .query("SELECT id::text, status::text FROM orders", &[])
                    .await?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            }
        }
    }

    /// The status of `order_id`'s reservation in products' store (either backend).
    pub async fn reservation_status(&self, order_id: &str) -> Result<Option<String>> {
        match self.options.backend {
            Backend::Sqlite => {
                let db = Db::open(&self.common.data_dir.join("products.db"), "").await?;
                let id = order_id.to_owned();
                let status = db
                    .call(move |c| {
                        use deadpool_sqlite::rusqlite::OptionalExtension;
                        c.query_row(
                            "SELECT status FROM reservations WHERE order_id = ?1",
                            [id],
                            |r| r.get(0),
                        )
                        .optional()
                    })
                    .await?;
                db.close().await;
                Ok(status)
            }
            Backend::Postgres => {
                let client = self.pg(Service::Products).await?;
                let row = client
                    .query_opt(
                        "SELECT status FROM reservations WHERE order_id = $1",
                        &[&order_id],
                    )
                    .await?;
                Ok(row.map(|r| r.get(0)))
            }
        }
    }

    /// Waits until none of `ids` is PENDING any more; returns status by id.
    pub async fn wait_terminal(
        &self,
        ids: &[String],
        timeout: Duration,
    ) -> Result<HashMap<String, String>> {
        let wanted: Vec<String> = ids.to_vec();
        let sqlite = match self.options.backend {
            Backend::Sqlite => Some(self.orders_db().await?),
            Backend::Postgres => None,
        };
        let statuses = testkit::eventually(timeout, || {
            let (sqlite, wanted) = (sqlite.clone(), wanted.clone());
            async move {
                let all = match sqlite {
                    // One handle for the whole wait, as before.
                    Some(db) => db
                        .call(|conn| {
                            let mut stmt = conn.prepare("SELECT id, status FROM orders")?;
                            let rows = stmt.query_map([], |r| {
                                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                            })?;
                            rows.collect::<Result<HashMap<_, _>, _>>()
                        })
                        .await
                        .ok()?,
                    None => self.order_statuses().await.ok()?,
                };
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
