//! The notifier: receives the publisher's signed webhooks and pushes the events to WebSocket
//! clients, filtered by who they are.
//!
//! `POST /webhooks` verifies and deduplicates a webhook and adds it to the Redis stream
//! `<prefix>events`; every instance reads that stream and fans the events out to its own
//! clients (`GET /ws?token=<JWT>`), so any number of instances behind a load balancer all
//! deliver. `GET /` is the live dashboard (`docs/dashboard.md`), which reads the gateway's
//! reports and `GET /decisions` (decisions per minute); new decisions also go to Telegram when
//! it is configured (`telegram.rs`). See `docs/webhooks.md`.
//!
//! Layout:
//! - `receive` — `POST /webhooks`: signature, deduplication, hand-off to the bus.
//! - `event` — the webhook bodies it understands.
//! - `bus` — the Redis side: deduplication, stats, order owners, the `events` stream.
//! - `hub` — who is connected to this instance and the fan-out of each event; `ws` — one
//!   WebSocket connection.
//! - `page` — the live dashboard; `decisions` — its decisions-per-minute chart.
//! - `telegram` — decisions sent to a Telegram chat.

/// Tokens and roles are shared with the gateway.
pub use jwt_auth as auth;
pub mod bus;
pub mod decisions;
pub mod event;
pub mod hub;
pub mod page;
pub mod receive;
pub mod telegram;
pub mod ws;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use jwt_auth::TokenVerifier;
use service_kit::Running;
use service_kit::config::{AppEnv, CommonConfig, ExposeSecret, SecretString, env_or};
use tracing::info;
use webhook_signing::{Secret, webhook_secret_from_env};

use crate::bus::Bus;
use crate::hub::Hub;

pub const SERVICE: &str = "notifier";
pub const DEFAULT_PORT: u16 = 8085;
#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// `WEBHOOK_SECRET`: the secret the publisher signs with.
    pub webhook_secret: Secret,
    /// `JWT_SECRET`: HS256 key of WebSocket tokens.
    pub jwt_secret: SecretString,
    /// How far a webhook's timestamp may be from now (Standard Webhooks: 5 minutes).
    pub tolerance: Duration,
    /// `WEBHOOK_DEDUPE_TTL_SECS`: how long a webhook id is remembered.
    pub dedupe_ttl: Duration,
    /// `WS_CLIENT_BUFFER`: messages queued per client before it counts as too slow.
    pub client_buffer: usize,
    /// `WS_PING_INTERVAL_MS`.
    pub ping_interval: Duration,
    /// `TELEGRAM_*`: the Telegram sink, off (`None`) when `TELEGRAM_BOT_TOKEN` is unset.
    pub telegram: Option<telegram::Settings>,
    /// `GATEWAY_PUBLIC_URL`: where the dashboard's browser reaches the gateway's reports.
    pub gateway_public_url: String,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let app_env = AppEnv::from_env()?;
        let webhook_secret = webhook_secret_from_env(app_env)?;
        let jwt_secret = jwt_auth::jwt_secret_from_env(app_env)?;
        Ok(Self {
            common: CommonConfig::from_env(DEFAULT_PORT)?,
            webhook_secret,
            jwt_secret,
            tolerance: Duration::from_secs(300),
            dedupe_ttl: Duration::from_secs(env_or("WEBHOOK_DEDUPE_TTL_SECS", 86_400)?),
            client_buffer: env_or("WS_CLIENT_BUFFER", 256)?,
            ping_interval: Duration::from_millis(env_or("WS_PING_INTERVAL_MS", 20_000)?),
            telegram: telegram::Settings::from_env()?,
            gateway_public_url: page::gateway_url_from_env()?,
        })
    }
}

/// What the HTTP handlers share. axum clones the state for every request, so it is one `Arc`
/// (its fields as [`Shared`]): cloning the fields themselves (strings, keys, the bus) was a few
/// per cent of the notifier's CPU per webhook.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
pub struct Shared {
    pub bus: Bus,
    pub hub: Arc<Hub>,
    pub tokens: TokenVerifier,
    pub webhook_secret: Secret,
    pub tolerance: Duration,
    pub ping_interval: Duration,
    /// Where new decisions go for Telegram, when it is on.
    pub telegram: Option<telegram::Outbox>,
    /// The dashboard page, with its configuration in it.
    pub page: Arc<str>,
}

/// Connects to Redis, starts listening on the events channel and serves HTTP.
pub async fn spawn(config: Config) -> anyhow::Result<Running> {
    let redis = messaging::idempotency::shared_redis(&config.common.redis_url)?;
    let bus = Bus::new(
        redis.clone(),
        &config.common.redis_prefix,
        config.dedupe_ttl,
    );
    let hub = Arc::new(Hub::new(config.client_buffer));
    let subscribed = Arc::new(AtomicBool::new(false));
    let (telegram, telegram_task) = match config.telegram.clone() {
        Some(settings) => {
            let (outbox, task) = telegram::start(settings)?;
            (Some(outbox), Some(task))
        }
        None => {
            info!("Telegram notifications are off: TELEGRAM_BOT_TOKEN is not set");
            (None, None)
        }
    };
    let state = AppState(Arc::new(Shared {
        bus: bus.clone(),
        hub: hub.clone(),
        tokens: TokenVerifier::new(config.jwt_secret.expose_secret().as_bytes()),
        webhook_secret: config.webhook_secret.clone(),
        tolerance: config.tolerance,
        ping_interval: config.ping_interval,
        telegram,
        page: page::render(&config.gateway_public_url).into(),
    }));
    let ready_subscribed = subscribed.clone();
    let ready: service_kit::ops::ReadyCheck = Arc::new(move || {
        let redis = redis.clone();
        let listening = ready_subscribed.load(Ordering::SeqCst);
        Box::pin(async move {
            vec![
                ("redis", messaging::idempotency::ping(&redis).await),
                ("events_subscription", listening),
            ]
        })
    });
    let app = Router::new()
        .route("/", get(page::page))
        .route("/dashboard.js", get(page::script))
        .route("/dashboard.css", get(page::style))
        .route("/decisions", get(decisions::decisions))
        .route("/webhooks", post(receive::receive))
        .route("/ws", get(ws::upgrade))
        .with_state(state)
        .layer(axum::middleware::from_fn(service_kit::ops::record_request))
        .merge(service_kit::ops::routes(ready))
        .fallback(service_kit::problem::no_route)
        .method_not_allowed_fallback(service_kit::problem::wrong_method);
    let mut running = Running::start(SERVICE, config.common.http_addr, app).await?;
    let (redis_url, channel, listener_hub) =
        (config.common.redis_url.clone(), bus.channel(), hub.clone());
    running.spawn(move |stop| bus::listen(redis_url, channel, listener_hub, subscribed, stop));
    if let Some(task) = telegram_task {
        running.spawn(task);
    }
    // Upgraded connections outlive the HTTP server's graceful shutdown: close them ourselves.
    running.spawn(move |stop| async move {
        stop.cancelled().await;
        hub.close_all();
    });
    Ok(running)
}
