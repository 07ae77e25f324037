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
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use messaging::problem::Problem;
use messaging::signature::Secret;
use serde_json::json;
use tracing::{error, info, warn};

use crate::AppState;
use crate::event::{BodyError, EventData, WebhookEvent};

/// Whether `timestamp` (Unix seconds) is within `tolerance` of `now`.
pub fn timestamp_fresh(timestamp: i64, now: i64, tolerance: Duration) -> bool {
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    timestamp.abs_diff(now) <= tolerance.unsigned_abs()
}

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
    let (Some(id), Some(timestamp), Some(signature)) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    ) else {
        return Err(unauthorized(
            "webhook-id, webhook-timestamp and webhook-signature headers are required",
        ));
    };
    let timestamp: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| unauthorized("webhook-timestamp is not a Unix time in seconds"))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if !timestamp_fresh(timestamp, now, tolerance) {
        return Err(unauthorized(
            "webhook-timestamp is too far from the current time",
        ));
    }
    if !secret.verify(id, timestamp, body, signature) {
        return Err(unauthorized(
            "the signature does not match the body and headers",
        ));
    }
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
        .accept(&signed.id, &event)
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
    Ok((
        StatusCode::OK,
        axum::Json(json!({ "received": true, "duplicate": !fresh })),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_within_five_minutes_are_fresh() {
        let five = Duration::from_secs(300);
        assert!(timestamp_fresh(1_000, 1_000, five));
        assert!(timestamp_fresh(1_000 - 300, 1_000, five));
        assert!(timestamp_fresh(1_000 + 300, 1_000, five));
        assert!(!timestamp_fresh(1_000 - 301, 1_000, five));
        assert!(!timestamp_fresh(1_000 + 301, 1_000, five));
        assert!(!timestamp_fresh(i64::MIN, 1_000, five));
    }
}
