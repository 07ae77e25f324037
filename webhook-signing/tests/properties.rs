//! Property tests of the Standard Webhooks signatures: a signature holds for exactly what was
//! signed. `Secret::sign` against `Secret::verify` / `Secret::verify_request` under bit flips,
//! other secrets, other ids and timestamps, stale timestamps, and arbitrary header text; any
//! secret text parses or is refused with a reason.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use proptest::prelude::*;
use webhook_signing::{
    MAX_KEY_BYTES, MIN_KEY_BYTES, Secret, SecretError, VerifyError, WebhookHeaders,
};

const TOLERANCE: Duration = Duration::from_secs(300);

fn secret() -> impl Strategy<Value = Secret> {
    prop::collection::vec(any::<u8>(), MIN_KEY_BYTES..=MAX_KEY_BYTES).prop_map(|key| {
        Secret::parse(&format!("whsec_{}", STANDARD.encode(key))).expect("a valid secret")
    })
}

/// Flips bit `bit` (taken modulo the length) of `bytes`.
fn flip(bytes: &mut [u8], bit: usize) {
    let bit = bit % (bytes.len() * 8);
    bytes[bit / 8] ^= 1 << (bit % 8);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn a_signature_verifies_for_exactly_what_was_signed(
        secret in secret(),
        other in secret(),
        id in "msg_[A-Za-z0-9]{1,30}",
        timestamp in 0i64..4_000_000_000,
        body in prop::collection::vec(any::<u8>(), 0..512),
        bit in any::<usize>(),
    ) {
        let signature = secret.sign(&id, timestamp, &body);
        let ts = timestamp.to_string();
        let request = WebhookHeaders { id: Some(&id), timestamp: Some(&ts), signature: Some(&signature) };
        prop_assert!(secret.verify(&id, timestamp, &body, &signature));
        prop_assert_eq!(secret.verify_request(request, &body, timestamp, TOLERANCE), Ok(id.as_str()));

        // Any single bit of the body flipped.
        if !body.is_empty() {
            let mut changed = body.clone();
            flip(&mut changed, bit);
            prop_assert!(!secret.verify(&id, timestamp, &changed, &signature));
            prop_assert_eq!(
                secret.verify_request(request, &changed, timestamp, TOLERANCE),
                Err(VerifyError::Mismatch)
            );
        }
        // Any single bit of the tag flipped.
        let mut tag = STANDARD.decode(&signature[3..]).expect("base64 tag");
        flip(&mut tag, bit);
        let forged = format!("v1,{}", STANDARD.encode(&tag));
        prop_assert!(!secret.verify(&id, timestamp, &body, &forged));
        // Another secret, another id, another timestamp.
        if other.expose() != secret.expose() {
            prop_assert!(!other.verify(&id, timestamp, &body, &signature));
            prop_assert_eq!(
                other.verify_request(request, &body, timestamp, TOLERANCE),
                Err(VerifyError::Mismatch)
            );
        }
        let other_id = id.clone() + "x";
        prop_assert!(!secret.verify(&other_id, timestamp, &body, &signature));
        prop_assert!(!secret.verify(&id, timestamp + 1 + (bit % 1000) as i64, &body, &signature));
        // Stale: a valid signature outside the tolerance is refused before it is checked.
        let skew = 301 + (bit % 100_000) as i64;
        prop_assert_eq!(
            secret.verify_request(request, &body, timestamp + skew, TOLERANCE),
            Err(VerifyError::Stale)
        );
        prop_assert_eq!(
            secret.verify_request(request, &body, timestamp - skew, TOLERANCE),
            Err(VerifyError::Stale)
        );
        prop_assert_eq!(
            secret.verify_request(request, &body, timestamp + (bit % 301) as i64, TOLERANCE),
            Ok(id.as_str())
        );
    }

    /// Arbitrary header text: a typed refusal, and never `Ok` unless the real signature is in it.
    #[test]
    fn arbitrary_webhook_headers_are_refused_with_a_reason(
        secret in secret(),
        id in proptest::option::of(".{0,40}"),
        timestamp in proptest::option::of(prop_oneof![".{0,20}", (0i64..4_000_000_000).prop_map(|t| t.to_string())]),
        signature in proptest::option::of(prop_oneof![".{0,120}", "v1,[A-Za-z0-9+/=]{0,60}( v1,[A-Za-z0-9+/=]{0,60})?"]),
        body in prop::collection::vec(any::<u8>(), 0..128),
        now in 0i64..4_000_000_000,
    ) {
        let headers = WebhookHeaders {
            id: id.as_deref(),
            timestamp: timestamp.as_deref(),
            signature: signature.as_deref(),
        };
        match secret.verify_request(headers, &body, now, TOLERANCE) {
            Ok(got) => {
                let ts: i64 = timestamp.as_deref().unwrap_or_default().trim().parse().expect("a number");
                let real = secret.sign(got, ts, &body);
                prop_assert!(signature.as_deref().unwrap_or_default().split(' ').any(|s| s == real));
            }
            Err(VerifyError::MissingHeaders) => {
                prop_assert!(id.is_none() || timestamp.is_none() || signature.is_none());
            }
            Err(VerifyError::BadTimestamp) => {
                prop_assert!(timestamp.as_deref().unwrap_or_default().trim().parse::<i64>().is_err());
            }
            Err(VerifyError::Stale | VerifyError::Mismatch) => {}
        }
    }

    /// Any text is a secret or a typed refusal; an accepted one keeps its text and key length.
    #[test]
    fn secret_text_parses_or_is_refused_with_a_reason(
        text in prop_oneof![
            ".{0,100}",
            "whsec_[A-Za-z0-9+/=]{0,100}",
            prop::collection::vec(any::<u8>(), 0..80).prop_map(|k| format!("whsec_{}", STANDARD.encode(k))),
        ],
    ) {
        match Secret::parse(&text) {
            Ok(secret) => {
                prop_assert_eq!(secret.expose(), text.trim());
                prop_assert!((MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&secret.key_len()));
                let debug = format!("{:?}", secret);
                prop_assert!(!debug.contains(text.trim()), "Debug shows the secret: {}", debug);
            }
            Err(SecretError::MissingPrefix) => prop_assert!(!text.trim().starts_with("whsec_")),
            Err(SecretError::NotBase64) => {
                prop_assert!(STANDARD.decode(text.trim().trim_start_matches("whsec_")).is_err());
            }
            Err(SecretError::Length(n)) => {
                prop_assert!(!(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&n));
            }
        }
    }
}
