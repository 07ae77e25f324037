//! Who a caller is and what it may see: HS256 JWTs shared by the gateway (API calls) and the
//! notifier (WebSocket clients).
//!
//! A caller presents a JWT (HS256, `JWT_SECRET`) with `sub`, `role` (ADMIN | SELLER | CLIENT),
//! `seller_id` for sellers, and `exp`. ADMIN sees every order; a CLIENT the orders whose
//! `customerId` is its `sub`; a SELLER the orders whose `sellerId` is its `seller_id`.
//!
//! Layout: one file — [`Role`], [`Claims`] and [`Identity`] (with what it [`Identity::sees`]);
//! [`TokenVerifier`]; [`issue`] and [`issue_for`] (tests, `dev-token`); [`jwt_secret_from_env`]
//! (`JWT_SECRET`, read with `env-config`); `hs256`, jsonwebtoken's HS256-only crypto provider.
//! How a request presents its token is each service's (`gateway`, `webhook-publisher`,
//! `notifier`): this crate knows no HTTP.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use env_config::{AppEnv, ConfigError, secret_from_env};

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
        hs256::install();
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

/// The development secret used when `JWT_SECRET` is unset under `APP_ENV=development` (each
/// service warns about it). Anyone can read it here, so it is refused everywhere else.
pub const DEV_JWT_SECRET: &str = "dev-jwt-secret-do-not-use-in-production";

/// `JWT_SECRET`: required, at least 32 bytes, outside development; the development secret
/// with a warning in it (see [`env_config::secret_from_env`]).
pub fn jwt_secret_from_env(app_env: AppEnv) -> Result<SecretString, ConfigError> {
    secret_from_env("JWT_SECRET", app_env, DEV_JWT_SECRET, |text| Ok(text.len()))
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
    hs256::install();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
}

/// `jsonwebtoken`'s cryptography, HS256 only: its `rust_crypto` feature would also build RSA
/// (the `rsa` crate, RUSTSEC-2023-0071) and elliptic curves that nothing here uses. HMAC-SHA256
/// comes from the same `hmac`/`sha2` crates as the webhook signatures.
mod hs256 {
    use hmac::{Hmac, Mac};
    use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
    use jsonwebtoken::errors::{ErrorKind, Result};
    use jsonwebtoken::signature::{self, Signer, Verifier};
    use jsonwebtoken::{Algorithm, AlgorithmFamily};
    use sha2::Sha256;

    struct Hs256(Hmac<Sha256>);

    impl Signer<Vec<u8>> for Hs256 {
        fn try_sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
            let mut mac = self.0.clone();
            mac.update(msg);
            Ok(mac.finalize().into_bytes().to_vec())
        }
    }

    impl Verifier<Vec<u8>> for Hs256 {
        fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> std::result::Result<(), signature::Error> {
            let mut mac = self.0.clone();
            mac.update(msg);
            // Constant-time comparison.
            mac.verify_slice(sig).map_err(signature::Error::from_source)
        }
    }

    impl JwtSigner for Hs256 {
        fn algorithm(&self) -> Algorithm {
            Algorithm::HS256
        }
    }

    impl JwtVerifier for Hs256 {
        fn algorithm(&self) -> Algorithm {
            Algorithm::HS256
        }
    }

    /// Any other algorithm is refused, whatever a token's header says.
    fn hs256(algorithm: &Algorithm, family: AlgorithmFamily, key: &[u8]) -> Result<Hs256> {
        if *algorithm != Algorithm::HS256 || family != AlgorithmFamily::Hmac {
            return Err(ErrorKind::InvalidAlgorithm.into());
        }
        Hmac::<Sha256>::new_from_slice(key)
            .map(Hs256)
            .map_err(|_| ErrorKind::InvalidKeyFormat.into())
    }

    static PROVIDER: CryptoProvider = CryptoProvider {
        signer_factory: |algorithm, key| {
            Ok(Box::new(hs256(algorithm, key.family(), key.as_bytes())?))
        },
        verifier_factory: |algorithm, key| {
            Ok(Box::new(hs256(
                algorithm,
                key.family(),
                key.try_get_as_bytes()?,
            )?))
        },
        key_utils: KeyUtils::new_unimplemented(),
    };

    /// Makes it the process's provider (once; later calls change nothing).
    pub(super) fn install() {
        static INSTALLED: std::sync::Once = std::sync::Once::new();
        INSTALLED.call_once(|| {
            let _ = PROVIDER.install_default();
        });
    }
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
        // HS384 with the right secret is still refused: only HS256 is accepted.
        let hs384 = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS384),
            &claims(Role::Admin, None, later()),
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        );
        assert!(hs384.is_err(), "the provider signs HS256 only");
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
