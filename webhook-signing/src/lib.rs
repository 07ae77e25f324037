//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>), shared by the sender
//! (webhook-publisher) and the receiver (notifier).
//!
//! A secret is `whsec_<base64 key>`; the signature of a request is
//! `v1,<base64 HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<body>")>`. The
//! `webhook-signature` header may carry several space-separated signatures (during a secret
//! rotation); a request is authentic when any `v1` one matches. Comparison is constant-time
//! (`Mac::verify_slice`), so a forger learns nothing from how long a refusal takes.
//! [`Secret::verify_request`] is the receiver's whole check: the three `webhook-*` headers, the
//! timestamp's freshness, then the signature.
//!
//! The key and its text live in `secrecy` boxes (zeroed when dropped, never in a `Debug` form).
//!
//! Layout: one file — [`Secret`] (parse, generate, sign, verify, verify a request), the
//! `webhook-*` headers ([`WebhookHeaders`]) and their errors, and [`webhook_secret_from_env`]
//! (`WEBHOOK_SECRET`, read with `env-config`). Property tests: tests/properties.rs.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use sha2::Sha256;

use env_config::{AppEnv, ConfigError, secret_from_env};

type HmacSha256 = Hmac<Sha256>;

pub const SECRET_PREFIX: &str = "whsec_";
/// Shortest key we accept: below 128 bits a secret can be guessed.
pub const MIN_KEY_BYTES: usize = 16;
/// The Standard Webhooks libraries refuse keys longer than this.
pub const MAX_KEY_BYTES: usize = 64;
/// The secret publisher and notifier share when `WEBHOOK_SECRET` is unset under
/// `APP_ENV=development`; both services log a warning when they fall back to it, and refuse to
/// start without a real one anywhere else.
pub const DEV_SECRET: &str = "whsec_ZGV2LW9ubHktd2ViaG9vay1zZWNyZXQtMzJieXRlcyE=";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SecretError {
    #[error("a webhook secret must start with {SECRET_PREFIX}")]
    MissingPrefix,
    #[error("the part after {SECRET_PREFIX} is not base64")]
    NotBase64,
    #[error("the key must be {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes, this one has {0}")]
    Length(usize),
}

/// Why a webhook request is not authentic (the receiver answers 401 with this text).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("webhook-id, webhook-timestamp and webhook-signature headers are required")]
    MissingHeaders,
    #[error("webhook-timestamp is not a Unix time in seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is too far from the current time")]
    Stale,
    #[error("the signature does not match the body and headers")]
    Mismatch,
}

/// The three `webhook-*` headers of a request as received (absent or not text: `None`).
#[derive(Debug, Clone, Copy, Default)]
pub struct WebhookHeaders<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// Whether `timestamp` (Unix seconds) is within `tolerance` of `now`.
pub fn timestamp_fresh(timestamp: i64, now: i64, tolerance: Duration) -> bool {
    timestamp.abs_diff(now) <= tolerance.as_secs()
}

/// A signing secret. Its `Debug` form never shows the key.
#[derive(Clone)]
pub struct Secret {
    text: SecretString,
    key: SecretSlice<u8>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(whsec_…)")
    }
}

impl Secret {
    /// Parses `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| SecretError::NotBase64)?;
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
            return Err(SecretError::Length(key.len()));
        }
        Ok(Self {
            text: SecretString::from(text.trim()),
            key: SecretSlice::from(key),
        })
    }

    /// A fresh random 32-byte secret.
    pub fn generate() -> Self {
        let key: [u8; 32] = rand::random();
        Self {
            text: SecretString::from(format!("{SECRET_PREFIX}{}", STANDARD.encode(key))),
            key: SecretSlice::from(key.to_vec()),
        }
    }

    /// The `whsec_…` form, to store or hand to the subscriber.
    pub fn expose(&self) -> &str {
        self.text.expose_secret()
    }

    /// How many bytes of key it has.
    pub fn key_len(&self) -> usize {
        self.key.expose_secret().len()
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(self.key.expose_secret())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` header value for one request.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }

    /// Whether any `v1` signature in `header` matches (constant-time per candidate).
    pub fn verify(&self, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        let expected = self.mac(id, timestamp, body);
        header
            .split(' ')
            .filter_map(|entry| entry.trim().split_once(','))
            .filter(|(version, _)| *version == "v1")
            .filter_map(|(_, sig)| STANDARD.decode(sig).ok())
            .any(|sig| expected.clone().verify_slice(&sig).is_ok())
    }

    /// The receiver's check of a request: all three headers present, the timestamp a number
    /// within `tolerance` of `now` (which bounds how long a captured request can be replayed),
    /// then the signature over the exact body. Returns the `webhook-id`.
    pub fn verify_request<'a>(
        &self,
        headers: WebhookHeaders<'a>,
        body: &[u8],
        now: i64,
        tolerance: Duration,
    ) -> Result<&'a str, VerifyError> {
        let (Some(id), Some(timestamp), Some(signature)) =
            (headers.id, headers.timestamp, headers.signature)
        else {
            return Err(VerifyError::MissingHeaders);
        };
        let timestamp: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| VerifyError::BadTimestamp)?;
        if !timestamp_fresh(timestamp, now, tolerance) {
            return Err(VerifyError::Stale);
        }
        if !self.verify(id, timestamp, body, signature) {
            return Err(VerifyError::Mismatch);
        }
        Ok(id)
    }
}

/// `WEBHOOK_SECRET` (`whsec_…`): required, with at least 32 bytes of key, outside development;
/// [`DEV_SECRET`] with a warning in it (see [`env_config::secret_from_env`]).
pub fn webhook_secret_from_env(app_env: AppEnv) -> Result<Secret, ConfigError> {
    let text = secret_from_env("WEBHOOK_SECRET", app_env, DEV_SECRET, |text| {
        Secret::parse(text)
            .map(|s| s.key_len())
            .map_err(|e| format!("is not a webhook secret: {e}"))
    })?;
    Secret::parse(text.expose_secret()).map_err(|e| ConfigError::Secret {
        name: "WEBHOOK_SECRET".into(),
        reason: format!("is not a webhook secret: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Standard Webhooks specification's published test vector (also used by the svix and
    // standard-webhooks libraries). Cross-checked with openssl:
    //   KEY=$(echo -n MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw | base64 -d | xxd -p -c 100)
    //   printf '%s' 'msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{"test": 2432232314}' \
    //     | openssl dgst -sha256 -mac HMAC -macopt hexkey:$KEY -binary | base64
    //   → g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_the_published_test_vector() {
        let secret = Secret::parse(SECRET).unwrap();
        assert_eq!(secret.sign(ID, TIMESTAMP, BODY), SIGNATURE);
        assert!(secret.verify(ID, TIMESTAMP, BODY, SIGNATURE));
    }

    #[test]
    fn refuses_any_change_to_what_was_signed() {
        let secret = Secret::parse(SECRET).unwrap();
        assert!(!secret.verify(ID, TIMESTAMP, br#"{"test": 2432232315}"#, SIGNATURE));
        assert!(!secret.verify("msg_other", TIMESTAMP, BODY, SIGNATURE));
        assert!(!secret.verify(ID, TIMESTAMP + 1, BODY, SIGNATURE));
        let other = Secret::generate();
        assert!(!other.verify(ID, TIMESTAMP, BODY, SIGNATURE));
        assert!(!secret.verify(
            ID,
            TIMESTAMP,
            BODY,
            "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        ));
        assert!(!secret.verify(ID, TIMESTAMP, BODY, "v1,not-base64"));
        assert!(!secret.verify(ID, TIMESTAMP, BODY, ""));
    }

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

    #[test]
    fn accepts_a_match_among_several_signatures() {
        let secret = Secret::parse(SECRET).unwrap();
        let header = format!("v1,Zm9v {SIGNATURE}");
        assert!(secret.verify(ID, TIMESTAMP, BODY, &header));
    }

    #[test]
    fn parses_and_refuses_secrets() {
        assert_eq!(
            Secret::parse("MfKQ9r8G").unwrap_err(),
            SecretError::MissingPrefix
        );
        assert_eq!(
            Secret::parse("whsec_***").unwrap_err(),
            SecretError::NotBase64
        );
        assert_eq!(
            Secret::parse("whsec_c2hvcnQ=").unwrap_err(),
            SecretError::Length(5)
        );
        let fresh = Secret::generate();
        assert!(fresh.expose().starts_with(SECRET_PREFIX));
        let again = Secret::parse(fresh.expose()).unwrap();
        assert_eq!(again.sign("a", 1, b"b"), fresh.sign("a", 1, b"b"));
        assert_eq!(format!("{fresh:?}"), "Secret(whsec_…)");
        assert!(Secret::parse(DEV_SECRET).is_ok());
    }
}
