//! The gateway: the HTTP API of the saga.
//!
//! `POST /orders` publishes `orders.create` and answers 202 only after the broker confirmed it;
//! reads and product creation go to the owning service over AMQP request/response.
//!
//! Layout:
//! - `http` — the routes and what each answers; `openapi` — their OpenAPI 3.1 description.
//! - `requests` — the request and response bodies and their validation rules.
//! - `auth` — the caller of a request (JWT) and its rate limit (`ratelimit`, a Redis bucket).
//! - `idempotency` — the `Idempotency-Key` of `POST /orders`.
//! - `admission` — refusing new orders with 503 while the saga's backlog, or the webhooks
//!   waiting to be sent, are at their bound (and, at random, a rising share of them from half
//!   the bound on).
//! - `sellers` — who sells a product, remembered so `orders.create` carries it.
//! - `bin/dev-token.rs` — a signed token for local use.

pub mod admission;
pub mod auth;
pub mod http;
pub mod idempotency;
pub mod openapi;
pub mod ratelimit;
pub mod requests;
pub mod sellers;

use std::sync::Arc;
use std::time::Duration;

use messaging::broker::{Broker, BrokerConfig};
use messaging::idempotency::shared_redis;
use messaging::rpc::RpcClient;
use messaging::topology::INTAKE_MAX_LENGTH;
use service_kit::Running;
use service_kit::config::{AppEnv, CommonConfig, ExposeSecret, SecretString, env_or};

pub const SERVICE: &str = "gateway";
pub const DEFAULT_PORT: u16 = 3000;

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// `RPC_TIMEOUT_MS`: how long a read waits for the owning service before 504.
    pub rpc_timeout: Duration,
    /// `MAX_BODY_BYTES`: larger request bodies get 413.
    pub max_body_bytes: usize,
    /// `JWT_SECRET`: HS256 secret of the bearer tokens.
    pub jwt_secret: SecretString,
    /// `RATE_LIMIT_PER_SEC` (0 = off) and `RATE_LIMIT_BURST`: each subject's token bucket.
    pub rate_limit_per_sec: f64,
    pub rate_limit_burst: u32,
    /// `ORDERS_ADMISSION_LIMIT` (0 = off): undecided orders waiting in the saga's queues beyond
    /// which `POST /orders` answers 503.
    pub admission_limit: u64,
    /// `ORDERS_ADMISSION_WEBHOOK_LIMIT` (0 = off): events waiting in `webhooks_queue` beyond
    /// which `POST /orders` answers 503.
    pub webhook_admission_limit: u64,
    /// `ORDERS_ADMISSION_POLL_MS`: how often the saga's backlog is read from the broker.
    pub admission_poll: Duration,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let app_env = AppEnv::from_env()?;
        Ok(Self {
            common: CommonConfig::from_env(DEFAULT_PORT)?,
            rpc_timeout: Duration::from_millis(env_or("RPC_TIMEOUT_MS", 3_000)?),
            max_body_bytes: env_or("MAX_BODY_BYTES", 16 * 1024)?,
            jwt_secret: jwt_auth::jwt_secret_from_env(app_env)?,
            rate_limit_per_sec: env_or("RATE_LIMIT_PER_SEC", 20.0)?,
            rate_limit_burst: env_or("RATE_LIMIT_BURST", 40)?,
            admission_limit: env_or("ORDERS_ADMISSION_LIMIT", 1_000)?,
            webhook_admission_limit: env_or("ORDERS_ADMISSION_WEBHOOK_LIMIT", 10_000)?,
            admission_poll: Duration::from_millis(positive(
                "ORDERS_ADMISSION_POLL_MS",
                env_or("ORDERS_ADMISSION_POLL_MS", 100)?,
            )?),
        })
    }
}

fn positive(name: &str, value: u64) -> anyhow::Result<u64> {
    anyhow::ensure!(
        value > 0,
        "environment variable {name}={value} must be above 0"
    );
    Ok(value)
}

/// Connects to the broker and Redis and starts serving the API.
pub async fn spawn(config: Config) -> anyhow::Result<Running> {
    let redis = shared_redis(&config.common.redis_url)?;
    let broker = Broker::new(BrokerConfig::new(&config.common.amqp_url, SERVICE));
    let rpc = RpcClient::new(&broker);
    let limits = admission::Limits {
        saga: config.admission_limit,
        webhooks: config.webhook_admission_limit,
    };
    let admission = admission::Admission::new(limits, config.admission_poll);
    if admission.enabled() {
        if config.admission_limit >= INTAKE_MAX_LENGTH as u64 {
            tracing::warn!(
                limit = config.admission_limit,
                broker_limit = INTAKE_MAX_LENGTH,
                "ORDERS_ADMISSION_LIMIT is not below the intake queue's length limit; the broker will refuse first"
            );
        }
        broker.attach(Arc::new(admission.clone()));
    }
    let state = http::AppState::new(http::Shared {
        broker: broker.clone(),
        rpc,
        admission,
        keys: idempotency::IdempotencyStore::new(redis.clone(), &config.common.redis_prefix),
        rpc_timeout: config.rpc_timeout,
        verifier: jwt_auth::TokenVerifier::new(config.jwt_secret.expose_secret().as_bytes()),
        limiter: ratelimit::RateLimiter::new(
            redis.clone(),
            &config.common.redis_prefix,
            config.rate_limit_per_sec,
            config.rate_limit_burst,
        ),
        sellers: sellers::SellerCache::default(),
    });
    let ready = service_kit::ops::broker_and_redis(broker.clone(), redis);
    let router = http::router(state, config.max_body_bytes).merge(service_kit::ops::routes(ready));
    let mut running = Running::start(SERVICE, config.common.http_addr, router).await?;
    running.spawn(move |stop| broker.run(stop));
    Ok(running)
}
