//! The guard of the HTTP API: every route but `/health`, `/ready` and `/metrics` needs an ADMIN
//! token.
//!
//! The token is the gateway's (HS256 with `JWT_SECRET`, claims `sub`, `role`, `exp`), checked by
//! the shared `jwt_auth::TokenVerifier`. No token, or a malformed, badly signed or expired
//! one, is 401 with `WWW-Authenticate: Bearer`; a SELLER or CLIENT token is 403. Both are
//! problem+json. The API can make the publisher POST to new places, shows order data and hands
//! out signing secrets, so only an operator may use it.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jwt_auth::{Role, TokenVerifier};
use service_kit::problem::Problem;
use tracing::warn;

/// The subject of the ADMIN token of the request, for the handlers' logs.
#[derive(Debug, Clone)]
pub struct Admin(pub String);

/// `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
}

/// Middleware: lets ADMIN requests through, answers 401 or 403 to the rest.
pub async fn require_admin(
    State(verifier): State<TokenVerifier>,
    mut request: Request,
    next: Next,
) -> Response {
    let identity = match verifier.verify(bearer(request.headers())) {
        Ok(identity) => identity,
        Err(e) => {
            let mut response = Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Unauthenticated",
                format!("{e}; send Authorization: Bearer <ADMIN token>"),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    };
    if identity.role != Role::Admin {
        warn!(subject = %identity.sub, role = ?identity.role, path = %request.uri().path(),
            "refused a call to the publisher's API: only ADMIN may use it");
        return Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden",
            format!(
                "the {:?} role may not use the webhook publisher's API; it needs an ADMIN token",
                identity.role
            ),
        )
        .into_response();
    }
    request.extensions_mut().insert(Admin(identity.sub));
    next.run(request).await
}
