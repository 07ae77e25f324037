//! The HTTP API: subscriptions and delivery history. Errors are `application/problem+json`.
//!
//! - `POST /subscriptions {url, events}` → 201 with the subscription and its `whsec_…` secret
//!   (the only time the secret is shown);
//! - `GET /subscriptions`, `DELETE /subscriptions/{id}`;
//! - `GET /deliveries?status=&event=&subscription=&limit=`, `GET /deliveries/{id}` (with every
//!   attempt), `POST /deliveries/{id}/replay` (a failed delivery gets one more attempt).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use messaging::Db;
use messaging::problem::{FieldError, Problem};
use messaging::signature::Secret;
use serde::Deserialize;
use serde_json::json;
use tracing::{error, info};

use crate::dispatcher::Dispatcher;
use crate::store::{self, DeliveryFilter, EVENT_TYPES, ReplayRefused};

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub dispatcher: Dispatcher,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/subscriptions",
            post(create_subscription).get(list_subscriptions),
        )
        .route("/subscriptions/{id}", delete(delete_subscription))
        .route("/deliveries", get(list_deliveries))
        .route("/deliveries/{id}", get(get_delivery))
        .route("/deliveries/{id}/replay", post(replay))
        .with_state(state)
}

fn internal(e: messaging::store::DbError) -> Problem {
    error!(error = %e, "webhooks.db failed while serving a request");
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "Internal error",
        "the delivery database could not be read or written; try again",
    )
}

fn invalid(errors: Vec<FieldError>) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
        "Invalid request",
        "some fields are invalid, see errors",
    )
    .with_errors(errors)
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

/// Checks a new subscription; every complaint is returned at once.
fn validate(new: &NewSubscription) -> Result<(), Problem> {
    let mut errors = Vec::new();
    match reqwest::Url::parse(&new.url) {
        Ok(url) if !matches!(url.scheme(), "http" | "https") => {
            errors.push(field("url", "must be an http or https URL"))
        }
        Ok(url) if url.host_str().is_none_or(str::is_empty) => {
            errors.push(field("url", "must name a host"))
        }
        Ok(_) => {}
        Err(e) => errors.push(field("url", format!("is not an absolute URL: {e}"))),
    }
    if new.events.is_empty() {
        errors.push(field("events", "must name at least one event type"));
    }
    for event in &new.events {
        let known = event == "*" || event == "order.*" || EVENT_TYPES.contains(&event.as_str());
        if !known {
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

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Problem> {
    serde_json::from_slice(body).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-body",
            "Invalid JSON body",
            format!("the body is not the expected JSON: {e}"),
        )
    })
}

async fn create_subscription(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, Problem> {
    let new: NewSubscription = parse_json(&body)?;
    validate(&new)?;
    let secret = Secret::generate();
    let secret_text = secret.expose().to_owned();
    let created = state
        .db
        .write(move |tx| store::insert_subscription(tx, &new.url, &new.events, &secret))
        .await
        .map_err(internal)?;
    info!(subscription_id = %created.id, url = %created.url, events = ?created.events, "subscription created");
    let location = format!("/subscriptions/{}", created.id);
    let mut body = serde_json::to_value(&created).unwrap_or_default();
    body["secret"] = json!(secret_text);
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

async fn list_subscriptions(State(state): State<AppState>) -> Result<Response, Problem> {
    let list = state
        .db
        .call(|conn| store::list_subscriptions(conn))
        .await
        .map_err(internal)?;
    Ok(Json(list).into_response())
}

async fn delete_subscription(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let key = id.clone();
    let deleted = state
        .db
        .write(move |tx| store::delete_subscription(tx, &key))
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

const STATUSES: [&str; 3] = ["pending", "delivered", "failed"];
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
    let status = empty_to_none(query.status);
    if let Some(s) = &status
        && !STATUSES.contains(&s.as_str())
    {
        return Err(invalid(vec![field(
            "status",
            format!("{s:?} is not one of {}", STATUSES.join(", ")),
        )]));
    }
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
        .db
        .call(move |conn| store::list_deliveries(conn, &filter))
        .await
        .map_err(internal)?;
    Ok(Json(list).into_response())
}

async fn get_delivery(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let key = id.clone();
    let found = state
        .db
        .call(move |conn| {
            let Some(delivery) = store::get_delivery(conn, &key)? else {
                return Ok(None);
            };
            let attempts = store::list_attempts(conn, &key)?;
            let payload = store::delivery_payload(conn, &key)?;
            Ok(Some((delivery, attempts, payload)))
        })
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
    let key = id.clone();
    let outcome = state
        .db
        .write(move |tx| store::replay(tx, &key))
        .await
        .map_err(internal)?;
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

    #[test]
    fn validation_names_every_bad_field() {
        assert!(validate(&new("http://127.0.0.1:9/hook", &["order.*"])).is_ok());
        assert!(validate(&new("https://example.com/h", &["*", "order.created"])).is_ok());
        let problem = validate(&new("ftp://example.com", &["order.shipped"])).unwrap_err();
        assert_eq!(problem.status, 422);
        let fields: Vec<_> = problem.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["url", "events"]);
        assert!(validate(&new("not a url", &[])).unwrap_err().errors.len() == 2);
    }
}
