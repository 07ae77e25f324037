//! The webhook publisher: delivers every `order.*` event to the HTTP endpoints that subscribed.
//!
//! It consumes `webhooks_queue`, records one delivery per matching subscription in
//! `webhooks.db` (acking the message only after that commit), and a dispatcher sends them as
//! Standard Webhooks requests with a durable retry schedule and per-endpoint concurrency. The HTTP
//! API (ADMIN only) manages subscriptions and shows the delivery history; deliveries go only to
//! allowed addresses, over rustls, and finished ones are deleted after the retention period. See
//! `docs/webhooks.md`.

pub mod auth;
pub mod client;
pub mod consumer;
pub mod delivery;
pub mod dispatcher;
pub mod egress;
pub mod http;
pub mod retention;
pub mod schedule;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};

use messaging::MessageHandler;
use messaging::broker::{Broker, BrokerConfig};
use messaging::config::{AppEnv, CommonConfig, env_or};
use messaging::service::Running;
use messaging::signature::{Secret, webhook_secret_from_env};
use messaging::topology::WEBHOOKS_QUEUE;
use messaging::{Consumer, Db};
use tracing::{error, info};

use crate::client::{ClientSettings, TlsRoots};
use crate::dispatcher::{Dispatcher, Settings};
use crate::schedule::RetrySchedule;

pub const SERVICE: &str = "webhook-publisher";
pub const DEFAULT_PORT: u16 = 3003;
pub const DEFAULT_NOTIFIER_URL: &str = "http://127.0.0.1:8085/webhooks";

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// `NOTIFIER_URL`: where the default subscription points.
    pub notifier_url: String,
    /// `WEBHOOK_SECRET`: the default subscription's secret.
    pub webhook_secret: Secret,
    /// `JWT_SECRET`: HS256 key of the ADMIN tokens its API takes (the gateway's).
    pub jwt_secret: SecretString,
    /// `WEBHOOK_RETRY_SCHEDULE_MS` and `WEBHOOK_RETRY_JITTER_PERCENT`.
    pub schedule: RetrySchedule,
    /// `WEBHOOK_TIMEOUT_MS`: time limit of one request.
    pub timeout: Duration,
    /// `WEBHOOK_ENDPOINT_CONCURRENCY` (32): requests in flight per subscription; see
    /// "Throughput and cost of the publisher" in docs/webhooks.md for why 32.
    pub endpoint_concurrency: usize,
    /// `WEBHOOKS_PREFETCH`: unacked events the consumer may hold.
    pub prefetch: u16,
    /// `WEBHOOK_ALLOWED_NETWORKS`: forbidden addresses that subscriptions may use all the same.
    pub allowed_networks: Vec<IpNet>,
    /// `WEBHOOK_CA_FILE`: roots trusted besides the public ones.
    pub extra_roots: TlsRoots,
    /// `WEBHOOK_HISTORY_RETENTION_DAYS` (30): finished deliveries older than this are deleted.
    pub history_retention: Duration,
    /// How often the history is pruned: [`retention::PRUNE_EVERY`]; not an environment
    /// variable (tests shorten it).
    pub prune_every: Duration,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let app_env = AppEnv::from_env()?;
        let jitter: f64 = env_or("WEBHOOK_RETRY_JITTER_PERCENT", 20.0)?;
        let schedule_text: String = env_or(
            "WEBHOOK_RETRY_SCHEDULE_MS",
            "1000,2000,4000,8000,16000".to_owned(),
        )?;
        let schedule = RetrySchedule::parse_ms(&schedule_text, jitter / 100.0)
            .map_err(|e| anyhow::anyhow!("WEBHOOK_RETRY_SCHEDULE_MS: {e}"))?;
        Ok(Self {
            common: CommonConfig::from_env(DEFAULT_PORT)?,
            notifier_url: env_or("NOTIFIER_URL", DEFAULT_NOTIFIER_URL.to_owned())?,
            webhook_secret: webhook_secret_from_env(app_env)?,
            jwt_secret: messaging::auth::jwt_secret_from_env(app_env)?,
            schedule,
            timeout: Duration::from_millis(env_or("WEBHOOK_TIMEOUT_MS", 10_000)?),
            endpoint_concurrency: env_or("WEBHOOK_ENDPOINT_CONCURRENCY", 32)?,
            prefetch: env_or("WEBHOOKS_PREFETCH", 32)?,
            allowed_networks: egress::parse_allowed_networks(&env_or(
                "WEBHOOK_ALLOWED_NETWORKS",
                String::new(),
            )?)
            .map_err(|e| anyhow::anyhow!("WEBHOOK_ALLOWED_NETWORKS: {e}"))?,
            extra_roots: match env_or("WEBHOOK_CA_FILE", PathBuf::new())? {
                path if path.as_os_str().is_empty() => TlsRoots::default(),
                path => TlsRoots::from_pem_file(&path)
                    .map_err(|e| anyhow::anyhow!("WEBHOOK_CA_FILE: {e}"))?,
            },
            history_retention: days(env_or("WEBHOOK_HISTORY_RETENTION_DAYS", 30)?)
                .map_err(|e| anyhow::anyhow!("WEBHOOK_HISTORY_RETENTION_DAYS: {e}"))?,
            prune_every: retention::PRUNE_EVERY,
        })
    }
}

/// A whole number of days, at least one.
fn days(n: u64) -> Result<Duration, String> {
    if n == 0 {
        return Err("must be at least 1 day".to_owned());
    }
    n.checked_mul(86_400)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{n} days is too long"))
}

/// Opens `webhooks.db`, makes sure a subscription exists, connects to the broker and starts
/// consuming, dispatching and serving.
pub async fn spawn(config: Config) -> anyhow::Result<Running> {
    let db = Db::open(&config.common.data_dir.join("webhooks.db"), store::SCHEMA).await?;
    let (url, secret) = (config.notifier_url.clone(), config.webhook_secret.clone());
    let created = db
        .write(move |tx| store::ensure_default_subscription(tx, &url, &secret))
        .await?;
    if let Some(default) = created {
        info!(subscription_id = %default.id, url = %default.url, "created the default subscription to the notifier");
    }
    report_corrupt_filters(&db).await?;
    let policy = Arc::new(egress::Policy::new(config.allowed_networks.clone()));
    let dispatcher = Dispatcher::new(
        db.clone(),
        Settings {
            schedule: config.schedule.clone(),
            endpoint_concurrency: config.endpoint_concurrency,
            client: ClientSettings {
                timeout: config.timeout,
                extra_roots: config.extra_roots.clone(),
                policy: policy.clone(),
                trusted_url: config.notifier_url.clone(),
            },
        },
    )?;
    let broker = Broker::new(BrokerConfig::new(&config.common.amqp_url, SERVICE));
    let events = consumer::EventHandler {
        db: db.clone(),
        dispatcher: dispatcher.clone(),
    };
    // Recording an event is one short SQLite transaction; a few in flight hide its latency.
    broker.attach(Arc::new(
        Consumer::new(WEBHOOKS_QUEUE, SERVICE, events.into_handler())
            .with_prefetch(config.prefetch, usize::from(config.prefetch)),
    ));

    let ready_broker = broker.clone();
    let ready: messaging::ops::ReadyCheck = Arc::new(move || {
        let connected = ready_broker.is_connected();
        Box::pin(async move { vec![("broker", connected)] })
    });
    let app = http::router(http::AppState {
        db: db.clone(),
        dispatcher: dispatcher.clone(),
        verifier: messaging::auth::TokenVerifier::new(config.jwt_secret.expose_secret().as_bytes()),
        policy,
        trusted_url: config.notifier_url.clone(),
    })
    .layer(axum::middleware::from_fn(messaging::ops::record_request))
    .merge(messaging::ops::routes(ready))
    .fallback(messaging::problem::no_route)
    .method_not_allowed_fallback(messaging::problem::wrong_method);
    let mut running = Running::start(SERVICE, config.common.http_addr, app).await?;
    running.spawn(move |stop| broker.run(stop));
    running.spawn(move |stop| dispatcher.run(stop));
    let (retention, every) = (config.history_retention, config.prune_every);
    let pruned = db.clone();
    running.spawn(move |stop| retention::run(pruned, retention, every, stop));
    running.close_on_stop(db);
    Ok(running)
}

/// Logs an error for each subscription whose stored event filter is corrupt: it gets no event
/// until repaired (each event is recorded for it as a failed delivery instead).
async fn report_corrupt_filters(db: &Db) -> anyhow::Result<()> {
    let subscriptions = db.call(|conn| store::list_subscriptions(conn)).await?;
    for subscription in subscriptions {
        if let Some(reason) = subscription.filter_error {
            error!(subscription_id = %subscription.id, url = %subscription.url, %reason,
                "a subscription's stored event filter is corrupt: its events are recorded as failed deliveries until it is repaired");
        }
    }
    Ok(())
}
