//! The HTTP API: subscriptions and delivery history. Errors are `application/problem+json`;
//! a JSON body is read as the gateway reads one (`service_kit::json_body`: 400 when it is not
//! JSON, 422 with the offending fields when it has the wrong shape or fails the checks below).
//! Every route needs an ADMIN token (`auth.rs`).
//!
//! - `POST /subscriptions {url, events}` → 201 with the subscription and its `whsec_…` secret
//!   (shown here, and later only on `GET /subscriptions/{id}/secret`); the URL must be allowed
//!   by the egress policy (`egress.rs`);
//! - `GET /subscriptions`, `GET /subscriptions/{id}` (never with the secret),
//!   `GET /subscriptions/{id}/secret`, `DELETE /subscriptions/{id}`;
//! - `GET /deliveries?status=&event=&subscription=&limit=`, `GET /deliveries/{id}` (with every
//!   attempt), `POST /deliveries/{id}/replay` (a failed delivery gets one more attempt).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jwt_auth::TokenVerifier;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;
use service_kit::json_body::{self, invalid};
use service_kit::problem::{FieldError, Problem};
use tracing::{error, info};
use webhook_signing::Secret;

use crate::auth::{Admin, require_admin};
use crate::dispatcher::Dispatcher;
use crate::egress::{self, Policy};
use crate::storage::Store;
use crate::store::{self, DeliveryFilter, DeliveryStatus, EVENT_TYPES, ReplayRefused};

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub dispatcher: Dispatcher,
    /// Checks the ADMIN token of every request.
    pub verifier: TokenVerifier,
    /// Which subscription URLs may be registered.
    pub policy: Arc<Policy>,
    /// `NOTIFIER_URL`: trusted, registered without the address check.
    pub trusted_url: String,
}

pub fn router(state: AppState) -> Router {
    let guard = axum::middleware::from_fn_with_state(state.verifier.clone(), require_admin);
    Router::new()
        .route(
            "/subscriptions",
            post(create_subscription).get(list_subscriptions),
        )
        .route(
            "/subscriptions/{id}",
            get(get_subscription).delete(delete_subscription),
        )
        .route("/subscriptions/{id}/secret", get(subscription_secret))
        .route("/deliveries", get(list_deliveries))
        .route("/deliveries/{id}", get(get_delivery))
        .route("/deliveries/{id}/replay", post(replay))
        .route_layer(guard)
        .with_state(state)
}

fn internal(e: messaging::store::DbError) -> Problem {
    error!(error = %e, "the delivery database failed while serving a request");
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "Internal error",
        "the delivery database could not be read or written; try again",
    )
}

fn field(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_owned(),
        message: message.into(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSubscription {
    url: String,
    events: Vec<String>,
}

/// Checks a new subscription; every complaint is returned at once. The URL's host must be
/// allowed by `policy` (resolving it if it is a name), unless the URL is the trusted one.
async fn validate(
    new: &NewSubscription,
    policy: &Policy,
    trusted_url: &str,
) -> Result<(), Problem> {
    let mut errors = Vec::new();
    match reqwest::Url::parse(&new.url) {
        Ok(url) if !matches!(url.scheme(), "http" | "https") => {
            errors.push(field("url", "must be an http or https URL"))
        }
        Ok(url) if url.host_str().is_none_or(str::is_empty) => {
            errors.push(field("url", "must name a host"))
        }
        Ok(_) if new.url == trusted_url => {}
        Ok(url) => {
            if let Err(e) = egress::check_subscription_url(policy, &url).await {
                errors.push(field("url", e));
            }
        }
        Err(e) => errors.push(field("url", format!("is not an absolute URL: {e}"))),
    }
    if new.events.is_empty() {
        errors.push(field("events", "must name at least one event type"));
    }
    for event in &new.events {
        if !store::known_filter(event) {
            errors.push(field(
                "events",
                format!(
                    "{event:?} is not one of *, order.*, {}",
                    EVENT_TYPES.join(", ")
                ),
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(invalid(errors))
    }
}

/// A response that shows a secret: no cache may keep it.
fn with_secret(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn create_subscription(
    State(state): State<AppState>,
    Extension(admin): Extension<Admin>,
    body: Bytes,
) -> Result<Response, Problem> {
    let new: NewSubscription = json_body::parse(&body)?;
    validate(&new, &state.policy, &state.trusted_url).await?;
    let secret = Secret::generate();
    let shown = secret.clone();
    let created = state
        .store
        .insert_subscription(new.url, new.events, secret)
        .await
        .map_err(internal)?;
    info!(subscription_id = %created.id, url = %created.url, events = ?created.events, by = %admin.0, "subscription created");
    let location = format!("/subscriptions/{}", created.id);
    let mut body = serde_json::to_value(&created).unwrap_or_default();
    body["secret"] = json!(shown.expose());
    let mut response = with_secret(StatusCode::CREATED, body);
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

async fn get_subscription(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let found = state
        .store
        .get_subscription(id.clone())
        .await
        .map_err(internal)?;
    match found {
        Some(subscription) => Ok(Json(subscription).into_response()),
        None => Err(Problem::not_found("subscription", &id)),
    }
}

/// The one call besides creation that shows a subscription's secret; each use is logged.
async fn subscription_secret(
    State(state): State<AppState>,
    Extension(admin): Extension<Admin>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let secret = state
        .store
        .subscription_secret(id.clone())
        .await
        .map_err(internal)?
        .ok_or_else(|| Problem::not_found("subscription", &id))?;
    info!(subscription_id = %id, by = %admin.0, "subscription secret shown on request");
    Ok(with_secret(
        StatusCode::OK,
        json!({"id": id, "secret": secret.expose_secret()}),
    ))
}

async fn list_subscriptions(State(state): State<AppState>) -> Result<Response, Problem> {
    let list = state.store.list_subscriptions().await.map_err(internal)?;
    Ok(Json(list).into_response())
}

async fn delete_subscription(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let deleted = state
        .store
        .delete_subscription(id.clone())
        .await
        .map_err(internal)?;
    if !deleted {
        return Err(Problem::not_found("subscription", &id));
    }
    info!(subscription_id = %id, "subscription deleted; its pending deliveries are failed");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveryQuery {
    status: Option<String>,
    event: Option<String>,
    subscription: Option<String>,
    limit: Option<usize>,
}

const MAX_LIMIT: usize = 500;

async fn list_deliveries(
    State(state): State<AppState>,
    query: Result<Query<DeliveryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(query) = query.map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-query",
            "Invalid query",
            e.body_text(),
        )
    })?;
    let empty_to_none = |v: Option<String>| v.filter(|s| !s.is_empty());
    let status = match empty_to_none(query.status) {
        None => None,
        Some(s) => Some(s.parse::<DeliveryStatus>().map_err(|_| {
            let known = DeliveryStatus::ALL.map(DeliveryStatus::as_str);
            invalid(vec![field(
                "status",
                format!("{s:?} is not one of {}", known.join(", ")),
            )])
        })?),
    };
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(invalid(vec![field(
            "limit",
            format!("must be 1 to {MAX_LIMIT}"),
        )]));
    }
    let filter = DeliveryFilter {
        status,
        event: empty_to_none(query.event),
        subscription: empty_to_none(query.subscription),
        limit,
    };
    let list = state
        .store
        .list_deliveries(filter)
        .await
        .map_err(internal)?;
    Ok(Json(list).into_response())
}

async fn get_delivery(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let found = state
        .store
        .delivery_detail(id.clone())
        .await
        .map_err(internal)?;
    let Some((delivery, attempts, payload)) = found else {
        return Err(Problem::not_found("delivery", &id));
    };
    let mut body = serde_json::to_value(&delivery).unwrap_or_default();
    body["attempts"] = json!(attempts);
    body["payload"] = payload.unwrap_or_default();
    Ok(Json(body).into_response())
}

async fn replay(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let outcome = state.store.replay(id.clone()).await.map_err(internal)?;
    match outcome {
        Ok(delivery) => {
            info!(delivery_id = %id, webhook_id = %delivery.webhook_id, "replay requested");
            state.dispatcher.wake();
            Ok((StatusCode::ACCEPTED, Json(delivery)).into_response())
        }
        Err(ReplayRefused::NotFound) => Err(Problem::not_found("delivery", &id)),
        Err(ReplayRefused::NotFailed(status)) => Err(Problem::new(
            StatusCode::CONFLICT,
            "not-replayable",
            "Delivery cannot be replayed",
            format!("only failed deliveries can be replayed; this one is {status}"),
        )),
        Err(ReplayRefused::SubscriptionInactive) => Err(Problem::new(
            StatusCode::CONFLICT,
            "subscription-inactive",
            "Delivery cannot be replayed",
            "its subscription was deleted or disabled",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(url: &str, events: &[&str]) -> NewSubscription {
        NewSubscription {
            url: url.to_owned(),
            events: events.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[tokio::test]
    async fn validation_names_every_bad_field() {
        let open = Policy::new(egress::parse_allowed_networks("127.0.0.0/8").unwrap());
        let check = |sub: NewSubscription| {
            let open = open.clone();
            async move { validate(&sub, &open, "http://10.9.9.9/trusted").await }
        };
        assert!(
            check(new("http://127.0.0.1:9/hook", &["order.*"]))
                .await
                .is_ok()
        );
        assert!(
            check(new("https://93.184.216.34/h", &["*", "order.created"]))
                .await
                .is_ok()
        );
        assert!(check(new("http://10.9.9.9/trusted", &["*"])).await.is_ok());
        let problem = check(new("http://10.9.9.9/other", &["*"]))
            .await
            .unwrap_err();
        assert_eq!(problem.status, 422);
        assert_eq!(problem.errors[0].field, "url");
        assert!(
            problem.errors[0].message.contains("private-network"),
            "{problem:?}"
        );
        let problem = check(new("ftp://example.com", &["order.shipped"]))
            .await
            .unwrap_err();
        assert_eq!(problem.status, 422);
        let fields: Vec<_> = problem.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["url", "events"]);
        assert!(check(new("not a url", &[])).await.unwrap_err().errors.len() == 2);
    }
}
