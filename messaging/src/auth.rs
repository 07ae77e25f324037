//! Who a caller is and what it may see: HS256 JWTs shared by the gateway (API calls) and the
//! notifier (WebSocket clients).
//!
//! A caller presents a JWT (HS256, `JWT_SECRET`) with `sub`, `role` (ADMIN | SELLER | CLIENT),
//! `seller_id` for sellers, and `exp`. ADMIN sees every order; a CLIENT the orders whose
//! `customerId` is its `sub`; a SELLER the orders whose `sellerId` is its `seller_id`.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    Admin,
    Seller,
    Client,
}

/// The claims of a WebSocket token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seller_id: Option<String>,
    pub exp: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("no token was presented")]
    Missing,
    #[error("the token is invalid or expired: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("a SELLER token needs a seller_id claim")]
    SellerWithoutId,
    #[error("the token has an empty sub claim")]
    EmptySubject,
}

/// An authenticated client.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub sub: String,
    pub role: Role,
    pub seller_id: Option<String>,
}

/// Checks tokens against `JWT_SECRET`. Cheap to clone (handlers get a clone per request).
#[derive(Clone)]
pub struct TokenVerifier {
    inner: std::sync::Arc<VerifierInner>,
}

struct VerifierInner {
    key: DecodingKey,
    validation: Validation,
}

impl TokenVerifier {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        // A few seconds of clock skew between the token issuer and us.
        validation.leeway = 5;
        Self {
            inner: std::sync::Arc::new(VerifierInner {
                key: DecodingKey::from_secret(secret),
                validation,
            }),
        }
    }

    pub fn verify(&self, token: Option<&str>) -> Result<Identity, TokenError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(TokenError::Missing)?;
        let claims =
            jsonwebtoken::decode::<Claims>(token, &self.inner.key, &self.inner.validation)?.claims;
        if claims.sub.is_empty() {
            return Err(TokenError::EmptySubject);
        }
        let seller_id = claims.seller_id.filter(|s| !s.is_empty());
        if claims.role == Role::Seller && seller_id.is_none() {
            return Err(TokenError::SellerWithoutId);
        }
        Ok(Identity {
            sub: claims.sub,
            role: claims.role,
            seller_id,
        })
    }
}

/// The development secret used when `JWT_SECRET` is unset (each service warns about it).
pub const DEV_JWT_SECRET: &str = "dev-jwt-secret-do-not-use-in-production";

/// `JWT_SECRET`, or the development secret with a warning.
pub fn jwt_secret_from_env() -> String {
    match std::env::var("JWT_SECRET") {
        Ok(secret) if !secret.is_empty() => secret,
        _ => {
            tracing::warn!(
                "JWT_SECRET is not set: using the development secret; never do this in production"
            );
            DEV_JWT_SECRET.to_owned()
        }
    }
}

/// Issues a token for `sub` valid for `lifetime` from now (tests, the chaos load and the
/// `dev-token` command).
pub fn issue_for(
    secret: &[u8],
    sub: &str,
    role: Role,
    seller_id: Option<&str>,
    lifetime: std::time::Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = Claims {
        sub: sub.to_owned(),
        role,
        seller_id: seller_id.map(str::to_owned),
        exp: now + lifetime.as_secs(),
    };
    issue(secret, &claims)
}

/// Issues a token with the given claims.
pub fn issue(secret: &[u8], claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
}

impl Identity {
    /// Whether an order with these owners is visible to this client.
    pub fn sees(&self, customer_id: Option<&str>, seller_id: Option<&str>) -> bool {
        match self.role {
            Role::Admin => true,
            Role::Client => customer_id == Some(self.sub.as_str()),
            Role::Seller => seller_id.is_some() && seller_id == self.seller_id.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret";

    fn claims(role: Role, seller_id: Option<&str>, exp: u64) -> Claims {
        Claims {
            sub: "u1".into(),
            role,
            seller_id: seller_id.map(str::to_owned),
            exp,
        }
    }

    fn later() -> u64 {
        jsonwebtoken::get_current_timestamp() + 600
    }

    #[test]
    fn accepts_good_tokens_and_refuses_bad_ones() {
        let verifier = TokenVerifier::new(SECRET);
        let token = issue(SECRET, &claims(Role::Seller, Some("s1"), later())).unwrap();
        let who = verifier.verify(Some(&token)).unwrap();
        assert_eq!(who.role, Role::Seller);
        assert_eq!(who.seller_id.as_deref(), Some("s1"));

        let expired = issue(SECRET, &claims(Role::Admin, None, 1_000)).unwrap();
        assert!(matches!(
            verifier.verify(Some(&expired)),
            Err(TokenError::Invalid(_))
        ));
        let foreign = issue(b"other", &claims(Role::Admin, None, later())).unwrap();
        assert!(verifier.verify(Some(&foreign)).is_err());
        let seller = issue(SECRET, &claims(Role::Seller, None, later())).unwrap();
        assert!(matches!(
            verifier.verify(Some(&seller)),
            Err(TokenError::SellerWithoutId)
        ));
        assert!(matches!(verifier.verify(None), Err(TokenError::Missing)));
        assert!(verifier.verify(Some("not.a.jwt")).is_err());
    }

    #[test]
    fn each_role_sees_its_own_orders() {
        let who = |role, seller: Option<&str>| Identity {
            sub: "c1".into(),
            role,
            seller_id: seller.map(str::to_owned),
        };
        let admin = who(Role::Admin, None);
        let client = who(Role::Client, None);
        let seller = who(Role::Seller, Some("s1"));
        assert!(admin.sees(None, None));
        assert!(client.sees(Some("c1"), Some("s9")));
        assert!(!client.sees(Some("c2"), Some("s1")));
        assert!(!client.sees(None, None));
        assert!(seller.sees(Some("c9"), Some("s1")));
        assert!(!seller.sees(Some("c1"), Some("s2")));
        assert!(!seller.sees(Some("c1"), None));
    }
}
