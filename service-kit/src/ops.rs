//! The operational HTTP endpoints every service serves: `/health`, `/ready`, `/metrics`, and
//! the server loop with graceful shutdown.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use messaging::broker::Broker;
use messaging::shared_redis::SharedRedis;

/// Names a dependency and says whether it answers.
pub type ReadyCheck = Arc<dyn Fn() -> BoxFuture<'static, Vec<(&'static str, bool)>> + Send + Sync>;

/// The usual check: the broker link is up and Redis answers `PING`.
pub fn broker_and_redis(broker: Broker, redis: SharedRedis) -> ReadyCheck {
    Arc::new(move || {
        let broker = broker.clone();
        let redis = redis.clone();
        Box::pin(async move {
            vec![
                ("broker", broker.is_connected()),
                ("redis", messaging::idempotency::ping(&redis).await),
            ]
        })
    })
}

/// [`broker_and_redis`], plus `postgres` (schema up to date and answering) when the service's
/// database is PostgreSQL; a SQLite file is local and needs no check.
pub fn broker_redis_and_store(
    broker: Broker,
    redis: SharedRedis,
    db: &messaging::store::Backend,
) -> ReadyCheck {
    let base = broker_and_redis(broker, redis);
    let messaging::store::Backend::Postgres(pg) = db.clone() else {
        return base;
    };
    Arc::new(move || {
        let (base, pg) = (base.clone(), pg.clone());
        Box::pin(async move {
            let mut checks = base().await;
            checks.push(("postgres", pg.is_ready().await));
            checks
        })
    })
}

/// The process-wide Prometheus recorder (installed on first use).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; then ours just is not the global one.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// How often recorded histogram samples are folded into their summaries.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// Folds histogram samples into their summaries every few seconds, until `stop`.
///
/// The recorder is built without the exporter's own upkeep task, and it keeps every histogram
/// sample (one per request, per message, per group commit) until `/metrics` is rendered: a
/// service nobody scrapes grew by about 1 MiB a minute under load (the soak in
/// docs/benchmarks.md; found in the webhook-publisher). Every service runs this.
pub async fn metrics_upkeep(stop: tokio_util::sync::CancellationToken) {
    let handle = metrics_handle();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(METRICS_UPKEEP) => handle.run_upkeep(),
        }
    }
}

/// `/health`, `/ready` and `/metrics`, to merge into a service's router.
pub fn routes(ready: ReadyCheck) -> Router {
    let metrics = metrics_handle();
    Router::new()
        .route(
            "/health",
            get(|| async { axum::Json(json!({ "status": "ok" })) }),
        )
        .route("/ready", get(move || readiness(ready.clone())))
        .route("/metrics", get(move || async move { metrics.render() }))
        .layer(middleware::from_fn(record_request))
}

/// Middleware: one span and one duration sample per request, labelled by route and status.
pub async fn record_request(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let span = info_span!("request", %method, %route, request_id = %uuid::Uuid::now_v7(), subject = tracing::field::Empty);
    let started = std::time::Instant::now();
    let response = next.run(req).instrument(span).await;
    let status = response.status().as_u16().to_string();
    let elapsed = started.elapsed().as_secs_f64();
    let labels = [("route", route), ("method", method), ("status", status)];
    metrics::histogram!("http_request_duration_seconds", &labels).record(elapsed);
    metrics::counter!("http_requests_total", &labels).increment(1);
    response
}

async fn readiness(ready: ReadyCheck) -> impl IntoResponse {
    let checks = ready().await;
    let all_ok = checks.iter().all(|(_, ok)| *ok);
    let body: serde_json::Map<String, serde_json::Value> = checks
        .into_iter()
        .map(|(name, ok)| (name.to_owned(), json!(if ok { "up" } else { "down" })))
        .collect();
    let status = if all_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({ "ready": all_ok, "checks": body })),
    )
}

/// Serves `app` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Resolves when the process gets Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
