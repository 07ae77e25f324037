//! `GET /decisions` (header `Authorization: Bearer <JWT>`): decisions per minute over the last
//! hour, for the dashboard's chart: `{"minutes": [{at, confirmed, rejected, cancelled}, …]}`,
//! 60 entries oldest first, `at` the minute's start in Unix milliseconds.
//!
//! An ADMIN gets every order's decisions, a SELLER those on its own products, a CLIENT a 403.
//! The counts are kept by the webhook receiver (see `bus.rs`) for two hours, by the minute the
//! decision happened (the event's `occurredAt`).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use serde_json::{Value, json};
use service_kit::problem::Problem;
use tracing::{error, warn};

use crate::AppState;
use crate::auth::Role;

/// How many minutes the chart shows.
pub const MINUTES: i64 = 60;

pub async fn decisions(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, Problem> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let identity = state.tokens.verify(token).map_err(|e| {
        warn!(reason = %e, "refused a decisions request");
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "invalid-token",
            "Not authenticated",
            e.to_string(),
        )
    })?;
    let seller = match identity.role {
        Role::Admin => None,
        Role::Seller => identity.seller_id.as_deref(),
        Role::Client => {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "Not allowed",
                "decisions per minute are for ADMIN and SELLER tokens",
            ));
        }
    };
    let minutes = state
        .bus
        .decisions(seller, time::OffsetDateTime::now_utc(), MINUTES)
        .await
        .map_err(|e| {
            error!(error = %e, "could not read the decisions per minute from Redis");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Temporarily unavailable",
                "the decisions could not be read; try again",
            )
            .with_retry_after(1)
        })?;
    Ok(Json(json!({ "minutes": minutes })))
}
