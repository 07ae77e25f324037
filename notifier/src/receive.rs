//! `POST /webhooks`: the receiving end of the publisher's Standard Webhooks requests.
//!
//! Order of checks: the three `webhook-*` headers, the timestamp within the tolerance (±5 min,
//! which bounds how long a captured request could be replayed), the signature over the exact
//! body bytes (constant-time), and only then the body. Any authentication failure is a 401
//! problem; a body we cannot read after a valid signature is a 400 (422 for an event type we do
//! not know). An accepted webhook is deduplicated by its `webhook-id` and published on Redis (see
//! `bus.rs`); a duplicate gets 200 too, so the sender stops retrying it. A new decision is also
//! handed to the Telegram sink, when there is one (see `telegram.rs`).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use service_kit::problem::Problem;
use tracing::{error, info, warn};
use webhook_signing::{Secret, WebhookHeaders};

use crate::AppState;
use crate::event::{BodyError, EventData, WebhookEvent};

fn unauthorized(detail: &str) -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "invalid-signature",
        "Webhook not authenticated",
        detail,
    )
}

/// The verified headers of a request.
struct Signed {
    id: String,
}

fn authenticate(
    secret: &Secret,
    tolerance: Duration,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Signed, Problem> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let received = WebhookHeaders {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let id = secret
        .verify_request(received, body, now, tolerance)
        .map_err(|e| unauthorized(&e.to_string()))?;
    Ok(Signed { id: id.to_owned() })
}

pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let signed = authenticate(
        &state.webhook_secret,
        state.tolerance,
        &headers,
        body.as_ref(),
    )
    .inspect_err(|p| {
        warn!(reason = %p.detail, webhook_id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or(""), "refused a webhook");
        metrics::counter!("webhooks_received_total", "outcome" => "unauthorized").increment(1);
    })?;
    let event = WebhookEvent::parse(&body).map_err(|e| match e {
        BodyError::UnknownType(_) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown-event",
            "Unknown event type",
            e.to_string(),
        ),
        BodyError::NotAWebhook(_) | BodyError::BadData { .. } => Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-body",
            "Invalid webhook body",
            e.to_string(),
        ),
    })?;
    let (order_id, product_id) = match &event.data {
        EventData::Order(order) => (order.order_id.clone(), order.product_id.clone()),
        EventData::Stock(stock) => (String::new(), stock.product_id.clone()),
    };
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let fresh = state
        .bus
        .accept(&signed.id, &event, &body)
        .await
        .map_err(|e| {
            error!(error = %e, webhook_id = %signed.id, %order_id, %product_id, "could not publish a webhook on Redis; the sender will retry");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Temporarily unavailable",
                "the event could not be published; try again",
            )
            .with_retry_after(1)
        })?;
    let outcome = if fresh { "published" } else { "duplicate" };
    metrics::counter!("webhooks_received_total", "outcome" => outcome).increment(1);
    if fresh {
        info!(webhook_id = %signed.id, %order_id, %product_id, %traceparent, event = %event.kind, "webhook accepted and published");
        // Only the instance whose SET NX won sees `fresh`: Telegram hears of a webhook once.
        if let Some(telegram) = &state.telegram {
            telegram.offer(&signed.id, &event);
        }
    } else {
        info!(webhook_id = %signed.id, %order_id, %product_id, event = %event.kind, "duplicate webhook ignored");
    }
    // Two fixed answers, written once instead of built as a JSON tree per webhook.
    let answer = if fresh { FRESH } else { DUPLICATE };
    Ok((StatusCode::OK, [(CONTENT_TYPE, "application/json")], answer).into_response())
}

/// The answer to a webhook seen for the first time.
const FRESH: &str = r#"{"received":true,"duplicate":false}"#;
/// The answer to a webhook whose id was seen before (200 as well, so the sender stops).
const DUPLICATE: &str = r#"{"received":true,"duplicate":true}"#;
