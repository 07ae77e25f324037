//! `Caller`: the authenticated, rate-limited subject of a request.
//!
//! A request carries `Authorization: Bearer <JWT>` (HS256, `JWT_SECRET`). A missing, malformed,
//! badly signed or expired token is 401 with `WWW-Authenticate: Bearer`. Each subject then
//! spends one token of its bucket (see `ratelimit.rs`); an empty bucket is 429 with
//! `Retry-After`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jwt_auth::{Identity, Role};
use service_kit::problem::Problem;
use tracing::{Span, warn};

use crate::http::AppState;

/// The caller of an authenticated route.
#[derive(Debug, Clone)]
pub struct Caller(pub Identity);

/// A refusal before the handler runs.
pub struct Refused(Problem, bool);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let unauthenticated = self.1;
        let mut response = self.0.into_response();
        if unauthenticated {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Refused> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let identity = state.verifier.verify(token).map_err(|e| {
            let problem = Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Unauthenticated",
                format!("{e}; send Authorization: Bearer <token>"),
            );
            Refused(problem, true)
        })?;
        Span::current().record("subject", identity.sub.as_str());
        if let Some(wait) = state.limiter.spend(&identity.sub).await {
            warn!(subject = %identity.sub, retry_after = wait, "rate limit reached");
            let problem = Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
                "this subject's request budget is spent; retry later",
            )
            .with_retry_after(wait);
            return Err(Refused(problem, false));
        }
        Ok(Self(identity))
    }
}

impl Caller {
    pub fn is(&self, role: Role) -> bool {
        self.0.role == role
    }

    /// 403 unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), Problem> {
        if roles.contains(&self.0.role) {
            return Ok(());
        }
        Err(forbidden(&format!(
            "the {:?} role may not do this",
            self.0.role
        )))
    }
}

pub fn forbidden(detail: &str) -> Problem {
    Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
}
