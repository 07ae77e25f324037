//! The webhook publisher: delivers every `order.*` event to the HTTP endpoints that subscribed.
//!
//! It consumes `webhooks_queue`, records one delivery per matching subscription in its store
//! (`webhooks.db`, or with `DATABASE_URL` a PostgreSQL database shared by several instances;
//! `storage.rs`) (acking the message only after that commit), and a dispatcher sends them as
//! Standard Webhooks requests with a durable retry schedule and per-endpoint concurrency. The HTTP
//! API (ADMIN only) manages subscriptions and shows the delivery history; deliveries go only to
//! allowed addresses, over rustls, and finished ones are deleted after the retention period. See
//! `docs/webhooks.md`.
//!
//! Layout:
//! - `consumer` — events from `webhooks_queue` into deliveries, one per matching subscription;
//!   `recorder` — records them in batches on PostgreSQL.
//! - `dispatcher` — finds due deliveries and sends them; `delivery` — one attempt and what it
//!   means; `schedule` — the retry schedule; `client` — the HTTP clients (TLS, no redirects);
//!   `egress` — the addresses it may send to.
//! - `http` — the API (subscriptions, delivery history, replay); `auth` — its ADMIN guard.
//! - `storage` — the storage interface over `store.rs` (SQLite, `webhooks.db`) and
//!   `store/pg.rs` (PostgreSQL); `retention` — deleting old history.

pub mod auth;
pub mod client;
pub mod consumer;
pub mod delivery;
pub mod dispatcher;
pub mod egress;
pub mod http;
pub mod recorder;
pub mod retention;
pub mod schedule;
pub mod storage;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};

use messaging::MessageHandler;
use messaging::broker::{Broker, BrokerConfig};
use messaging::pg::PgConfig;
use messaging::store::InboxRetention;
use messaging::topology::WEBHOOKS_QUEUE;
use messaging::{Consumer, Db, PgDb};
use service_kit::Running;
use service_kit::config::{AppEnv, CommonConfig, env_or};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use webhook_signing::{Secret, webhook_secret_from_env};

use crate::client::{ClientSettings, TlsRoots};
use crate::dispatcher::{Dispatcher, Settings};
use crate::schedule::RetrySchedule;
use crate::storage::Store;

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
    /// `WEBHOOK_ENDPOINT_CONCURRENCY` (128): requests in flight per subscription; see
    /// "Throughput and cost of the publisher" in docs/webhooks.md for why 128.
    pub endpoint_concurrency: usize,
    /// `WEBHOOKS_PREFETCH` (256): unacked events the consumer may hold.
    pub prefetch: u16,
    /// `WEBHOOK_ALLOWED_NETWORKS`: forbidden addresses that subscriptions may use all the same.
    pub allowed_networks: Vec<IpNet>,
    /// `WEBHOOK_CA_FILE`: roots trusted besides the public ones.
    pub extra_roots: TlsRoots,
    /// `WEBHOOK_HISTORY_RETENTION_DAYS` (30), or `WEBHOOK_HISTORY_RETENTION_SECS`: finished
    /// deliveries older than this are deleted.
    pub history_retention: Duration,
    /// How often the history is pruned: [`retention::PRUNE_EVERY`]; not an environment
    /// variable (tests shorten it).
    pub prune_every: Duration,
    /// `DATABASE_URL` (with `DATABASE_POOL_SIZE`, `DATABASE_STATEMENT_TIMEOUT_MS`,
    /// `OUTBOX_LEASE_SECS`): the PostgreSQL database every instance shares; `None` keeps
    /// `webhooks.db` in `DATA_DIR`. The pool defaults to [`default_pool_size`].
    pub database: Option<PgConfig>,
}

/// Connections the publisher may use at once by default: one per event the consumer may be
/// recording (`WEBHOOKS_PREFETCH`, but at most 32: [`PgConfig::consumer_connections`]), one for
/// the dispatcher's pass (attempts in flight hold no connection: they are written by the next
/// pass), one for the history pruning, and four for the HTTP API and `/ready`.
pub fn default_pool_size(prefetch: u16) -> usize {
    PgConfig::consumer_connections(prefetch) + 6
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
        // 256 events and 128 requests per endpoint in flight: at ≈ 1,500 orders/s (3 webhooks
        // each) 128 events and 64 requests fell behind, as 32 of each had at ≈ 1,000/s
        // (docs/benchmarks.md, sessions 16 and 18).
        let prefetch = env_or("WEBHOOKS_PREFETCH", 256)?;
        Ok(Self {
            common: CommonConfig::from_env(DEFAULT_PORT)?,
            notifier_url: env_or("NOTIFIER_URL", DEFAULT_NOTIFIER_URL.to_owned())?,
            webhook_secret: webhook_secret_from_env(app_env)?,
            jwt_secret: jwt_auth::jwt_secret_from_env(app_env)?,
            schedule,
            timeout: Duration::from_millis(env_or("WEBHOOK_TIMEOUT_MS", 10_000)?),
            endpoint_concurrency: env_or("WEBHOOK_ENDPOINT_CONCURRENCY", 128)?,
            prefetch,
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
            history_retention: history_retention()?,
            prune_every: retention::PRUNE_EVERY,
            database: PgConfig::from_env(default_pool_size(prefetch))?,
        })
    }
}

/// `WEBHOOK_HISTORY_RETENTION_SECS` when set (short-lived set-ups, and soaks that must see the
/// pruning at work within minutes), else `WEBHOOK_HISTORY_RETENTION_DAYS` (30).
fn history_retention() -> anyhow::Result<Duration> {
    let secs = env_or("WEBHOOK_HISTORY_RETENTION_SECS", String::new())?;
    if secs.trim().is_empty() {
        return days(env_or("WEBHOOK_HISTORY_RETENTION_DAYS", 30)?)
            .map_err(|e| anyhow::anyhow!("WEBHOOK_HISTORY_RETENTION_DAYS: {e}"));
    }
    match secs.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(Duration::from_secs(n)),
        _ => anyhow::bail!(
            "WEBHOOK_HISTORY_RETENTION_SECS: {secs:?} is not a whole number of seconds, at least 1"
        ),
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

/// Whether the publisher has started: its store is ready and the default subscription exists.
/// Events are recorded, deliveries dispatched and history pruned only then.
#[derive(Clone)]
pub struct Started(watch::Receiver<bool>);

impl Started {
    /// Resolves `true` once started, `false` if `stop` (or the end of the startup task)
    /// came first.
    pub async fn wait(&self, stop: &CancellationToken) -> bool {
        let mut started = self.0.clone();
        tokio::select! {
            _ = stop.cancelled() => false,
            r = started.wait_for(|s| *s) => r.is_ok(),
        }
    }

    pub fn is_started(&self) -> bool {
        *self.0.borrow()
    }
}

/// Opens the store (`webhooks.db`, or the PostgreSQL pool without connecting), makes sure a
/// subscription exists, connects to the broker and starts consuming, dispatching and serving.
///
/// On SQLite the default subscription is made before this returns. On PostgreSQL, which may
/// not be reachable yet, a task waits for the schema (`PgDb::run`, a critical task of
/// `Running::run_broker`), then makes it (retrying while PostgreSQL is away); until then
/// `/ready` is false and nothing is recorded, dispatched or pruned.
pub async fn spawn(config: Config) -> anyhow::Result<Running> {
    let store = match &config.database {
        None => Store::Sqlite(
            Db::open(&config.common.data_dir.join("webhooks.db"), store::SCHEMA).await?,
        ),
        Some(pg) => Store::Postgres(PgDb::new(
            pg,
            SERVICE,
            &store::pg::MIGRATIONS,
            InboxRetention::from_env()?,
        )?),
    };
    let (started_tx, started_rx) = watch::channel(false);
    let started = Started(started_rx);
    let mut startup = None;
    match &store {
        Store::Sqlite(_) => {
            ensure_default(&store, &config).await?;
            report_corrupt_filters(&store).await?;
            started_tx.send_replace(true);
        }
        Store::Postgres(_) => startup = Some(started_tx),
    }
    let policy = Arc::new(egress::Policy::new(config.allowed_networks.clone()));
    let dispatcher = Dispatcher::new(
        store.clone(),
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
        recorder: recorder::Recorder::new(store.clone()),
        dispatcher: dispatcher.clone(),
        started: started.clone(),
    };
    // Recording an event is one short transaction; a few in flight hide its latency.
    broker.attach(Arc::new(
        Consumer::new(WEBHOOKS_QUEUE, SERVICE, events.into_handler())
            .with_prefetch(config.prefetch, usize::from(config.prefetch)),
    ));

    let (ready_broker, ready_store, ready_started) =
        (broker.clone(), store.clone(), started.clone());
    let ready: service_kit::ops::ReadyCheck = Arc::new(move || {
        let connected = ready_broker.is_connected();
        let (store, started) = (ready_store.clone(), ready_started.clone());
        Box::pin(async move {
            let mut checks = vec![("broker", connected)];
            if let Store::Postgres(pg) = &store {
                // Schema up to date, answering, and the default subscription made.
                checks.push(("postgres", started.is_started() && pg.is_ready().await));
            }
            checks
        })
    });
    let app = http::router(http::AppState {
        store: store.clone(),
        dispatcher: dispatcher.clone(),
        verifier: jwt_auth::TokenVerifier::new(config.jwt_secret.expose_secret().as_bytes()),
        policy,
        trusted_url: config.notifier_url.clone(),
    })
    .layer(axum::middleware::from_fn(service_kit::ops::record_request))
    .merge(service_kit::ops::routes(ready))
    .fallback(service_kit::problem::no_route)
    .method_not_allowed_fallback(service_kit::problem::wrong_method);
    let mut running = Running::start(SERVICE, config.common.http_addr, app).await?;
    if let Some(started_tx) = startup {
        let (store, config) = (store.clone(), config.clone());
        running.spawn(move |stop| start_on_postgres(store, config, started_tx, stop));
    }
    running.run_broker(broker, store.backend());
    let dispatched = started.clone();
    running.spawn(move |stop| dispatcher.run(dispatched, stop));
    let (retention, every) = (config.history_retention, config.prune_every);
    let pruned = store.clone();
    running.spawn(move |stop| retention::run(pruned, started, retention, every, stop));
    Ok(running)
}

/// Creates the default subscription unless any subscription exists (once, however many
/// instances start together).
async fn ensure_default(store: &Store, config: &Config) -> anyhow::Result<()> {
    let created = store
        .ensure_default_subscription(config.notifier_url.clone(), config.webhook_secret.clone())
        .await?;
    if let Some(default) = created {
        info!(subscription_id = %default.id, url = %default.url, "created the default subscription to the notifier");
    }
    Ok(())
}

/// The PostgreSQL startup: once the schema is ready, the default subscription, retried while
/// PostgreSQL is away; then `started`. Dropping `started` on stop releases whoever waits.
async fn start_on_postgres(
    store: Store,
    config: Config,
    started: watch::Sender<bool>,
    stop: CancellationToken,
) {
    if !store.wait_ready(&stop).await {
        return;
    }
    let mut pause = Duration::from_millis(200);
    loop {
        let done = async {
            ensure_default(&store, &config).await?;
            report_corrupt_filters(&store).await
        };
        match done.await {
            Ok(()) => break,
            Err(e) => {
                warn!(error = %e, retry_in = ?pause, "could not make sure the default subscription exists; trying again");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
    started.send_replace(true);
    // Keep the sender until the stop, so waiters see `true` rather than a closed channel.
    stop.cancelled().await;
}

/// Logs an error for each subscription whose stored event filter is corrupt: it gets no event
/// until repaired (each event is recorded for it as a failed delivery instead).
async fn report_corrupt_filters(store: &Store) -> anyhow::Result<()> {
    let subscriptions = store.list_subscriptions().await?;
    for subscription in subscriptions {
        if let Some(reason) = subscription.filter_error {
            error!(subscription_id = %subscription.id, url = %subscription.url, %reason,
                "a subscription's stored event filter is corrupt: its events are recorded as failed deliveries until it is repaired");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::default_pool_size;

    #[test]
    fn the_default_pool_follows_the_prefetch_up_to_32_recording_connections() {
        assert_eq!(default_pool_size(16), 22);
        assert_eq!(default_pool_size(32), 38);
        // The default prefetch of 256 keeps the pool that fits PostgreSQL's 100 connections.
        assert_eq!(default_pool_size(256), 38);
    }
}
