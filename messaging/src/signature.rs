//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>), shared by the sender
//! (webhook-publisher) and the receiver (notifier).
//!
//! A secret is `whsec_<base64 key>`; the signature of a request is
//! `v1,<base64 HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<body>")>`. The
//! `webhook-signature` header may carry several space-separated signatures (during a secret
//! rotation); a request is authentic when any `v1` one matches. Comparison is constant-time
//! (`Mac::verify_slice`), so a forger learns nothing from how long a refusal takes.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

pub const SECRET_PREFIX: &str = "whsec_";
/// Shortest key we accept: below 128 bits a secret can be guessed.
pub const MIN_KEY_BYTES: usize = 16;
/// The Standard Webhooks libraries refuse keys longer than this.
pub const MAX_KEY_BYTES: usize = 64;
/// The secret publisher and notifier share when `WEBHOOK_SECRET` is unset: for development
/// only, both services log a warning when they fall back to it.
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

/// A signing secret. Its `Debug` form never shows the key.
#[derive(Clone)]
pub struct Secret {
    text: String,
    key: Vec<u8>,
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
            text: text.trim().to_owned(),
            key,
        })
    }

    /// A fresh random 32-byte secret.
    pub fn generate() -> Self {
        let key: [u8; 32] = rand::random();
        Self {
            text: format!("{SECRET_PREFIX}{}", STANDARD.encode(key)),
            key: key.to_vec(),
        }
    }

    /// The `whsec_…` form, to store or hand to the subscriber.
    pub fn expose(&self) -> &str {
        &self.text
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.key)
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
