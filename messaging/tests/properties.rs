//! Property tests of the project's own decoding and signature code: what a peer can send is
//! decoded to a value or a typed error (never a panic), decoding agrees with a model of what it
//! must accept, and a Standard Webhooks signature holds for exactly what was signed.
//!
//! Envelope: AMQP content-header bytes off the wire (lapin's parser) and arbitrary properties
//! and headers into `Incoming::decode` / `MessageMeta::decode`, checked against the rules a
//! consumer relies on; bodies into `Incoming::json`. Signatures: `Secret::sign` against
//! `Secret::verify` / `Secret::verify_request` under bit flips, other secrets, other ids and
//! timestamps, stale timestamps, and arbitrary header text.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::protocol::basic::parse_properties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use messaging::contracts::OrderEvent;
use messaging::envelope::{DecodeError, Incoming, MessageMeta, OutgoingMessage};
use messaging::signature::{
    MAX_KEY_BYTES, MIN_KEY_BYTES, Secret, SecretError, VerifyError, WebhookHeaders,
};
use proptest::prelude::*;

const TOLERANCE: Duration = Duration::from_secs(300);

/// Any text a peer could put in a short string (AMQP short strings hold at most 255 bytes).
fn short_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("application/json".to_owned()),
        ".{0,40}",
    ]
}

/// Header values of every AMQP type the decoder treats specially, and some it must ignore.
fn header_value() -> impl Strategy<Value = AMQPValue> {
    prop_oneof![
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        any::<i16>().prop_map(AMQPValue::ShortInt),
        any::<u16>().prop_map(AMQPValue::ShortUInt),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u8>().prop_map(AMQPValue::ShortShortUInt),
        ".{0,80}".prop_map(|s| AMQPValue::LongString(LongString::from(s))),
        ".{0,40}".prop_map(|s| AMQPValue::ShortString(ShortString::from(s))),
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<f64>().prop_map(AMQPValue::Double),
        any::<u64>().prop_map(AMQPValue::Timestamp),
        Just(AMQPValue::Void),
    ]
}

/// What `x-delivery-count` must decode to: any integer type, anything else counts as 0.
fn model_count(value: Option<&AMQPValue>) -> i64 {
    match value {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortUInt(n)) => i64::from(*n),
        _ => 0,
    }
}

/// What `traceparent` must decode to: the text of a string header, nothing otherwise.
fn model_traceparent(value: Option<&AMQPValue>) -> Option<String> {
    match value {
        Some(AMQPValue::LongString(s)) => Some(s.to_string()),
        Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// The envelope rules, written independently of the decoder: the error it must give, if any.
fn model_error(props: &BasicProperties) -> Option<DecodeError> {
    let text = |s: &Option<ShortString>| s.as_ref().map(|s| s.as_str().to_owned());
    if text(props.message_id()).is_none_or(|s| s.is_empty()) {
        return Some(DecodeError::MissingMessageId);
    }
    if text(props.kind()).is_none_or(|s| s.is_empty()) {
        return Some(DecodeError::MissingType);
    }
    match text(props.content_type()) {
        Some(ct) if ct != "application/json" => Some(DecodeError::NotJson(ct)),
        _ => None,
    }
}

/// Checks one decoding against the model.
fn check_meta(props: &BasicProperties, redelivered: bool) -> Result<(), TestCaseError> {
    let decoded = MessageMeta::decode(props, redelivered);
    match (model_error(props), decoded) {
        (Some(expected), Err(got)) => prop_assert_eq!(expected, got),
        (Some(expected), Ok(meta)) => {
            prop_assert!(false, "accepted {meta:?}, expected {expected:?}")
        }
        (None, Err(got)) => prop_assert!(false, "refused with {got:?}"),
        (None, Ok(meta)) => {
            let text = |s: &Option<ShortString>| s.as_ref().map(|s| s.as_str().to_owned());
            let header = |name: &str| props.headers().as_ref().and_then(|h| h.inner().get(name));
            prop_assert_eq!(Some(meta.message_id), text(props.message_id()));
            prop_assert_eq!(Some(meta.kind), text(props.kind()));
            prop_assert_eq!(meta.correlation_id, text(props.correlation_id()));
            prop_assert_eq!(meta.reply_to, text(props.reply_to()));
            prop_assert_eq!(meta.app_id, text(props.app_id()));
            prop_assert_eq!(meta.redelivered, redelivered);
            prop_assert_eq!(meta.delivery_count, model_count(header("x-delivery-count")));
            prop_assert_eq!(meta.traceparent, model_traceparent(header("traceparent")));
        }
    }
    Ok(())
}

prop_compose! {
    fn properties()(
        message_id in proptest::option::of(short_text()),
        kind in proptest::option::of(short_text()),
        content_type in proptest::option::of(short_text()),
        correlation_id in proptest::option::of(short_text()),
        app_id in proptest::option::of(short_text()),
        delivery_count in proptest::option::of(header_value()),
        traceparent in proptest::option::of(header_value()),
        other in proptest::option::of((".{0,12}", header_value())),
    ) -> BasicProperties {
        let mut props = BasicProperties::default();
        if let Some(s) = message_id { props = props.with_message_id(s.into()); }
        if let Some(s) = kind { props = props.with_type(s.into()); }
        if let Some(s) = content_type { props = props.with_content_type(s.into()); }
        if let Some(s) = correlation_id { props = props.with_correlation_id(s.into()); }
        if let Some(s) = app_id { props = props.with_app_id(s.into()); }
        let mut headers = FieldTable::default();
        if let Some(v) = delivery_count { headers.insert("x-delivery-count".into(), v); }
        if let Some(v) = traceparent { headers.insert("traceparent".into(), v); }
        if let Some((k, v)) = other { headers.insert(k.into(), v); }
        if !headers.inner().is_empty() { props = props.with_headers(headers); }
        props
    }
}

fn order_event() -> impl Strategy<Value = OrderEvent> {
    (
        ".{0,20}",
        ".{0,20}",
        any::<u32>(),
        proptest::option::of(".{0,20}"),
        proptest::option::of(".{0,20}"),
        prop::sample::select(vec!["PENDING", "CONFIRMED", "REJECTED", "CANCELLED"]),
        proptest::option::of(".{0,30}"),
        ".{0,25}",
    )
        .prop_map(
            |(order_id, product_id, quantity, customer_id, seller_id, status, reason, at)| {
                OrderEvent {
                    order_id,
                    product_id,
                    quantity,
                    customer_id,
                    seller_id,
                    status: status.to_owned(),
                    reason,
                    occurred_at: at,
                }
            },
        )
}

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

    /// Arbitrary content-header bytes, as lapin reads them off a connection, then the envelope.
    #[test]
    fn wire_properties_decode_to_a_value_or_a_typed_error(
        flags in any::<u16>(),
        rest in prop::collection::vec(any::<u8>(), 0..300),
        body in prop::collection::vec(any::<u8>(), 0..64),
        redelivered in any::<bool>(),
    ) {
        let mut bytes = flags.to_be_bytes().to_vec();
        bytes.extend_from_slice(&rest);
        if let Ok((_, props)) = parse_properties(&bytes[..]) {
            check_meta(&props, redelivered)?;
            let mut delivery = Delivery::mock(1, "ex".into(), "key".into(), redelivered, body.clone());
            delivery.properties = props.clone();
            match Incoming::decode(&delivery) {
                Ok(incoming) => prop_assert_eq!(incoming.body, body),
                Err(e) => prop_assert_eq!(Some(e), model_error(&props)),
            }
        }
    }

    #[test]
    fn properties_and_headers_decode_as_the_rules_say(
        props in properties(),
        redelivered in any::<bool>(),
    ) {
        check_meta(&props, redelivered)?;
    }

    /// What a service sends is what the next one reads.
    #[test]
    fn outgoing_messages_decode_to_what_was_sent(
        routing_key in "[a-z.]{1,30}",
        correlation_id in proptest::option::of(".{0,36}"),
        traceparent in proptest::option::of("00-[0-9a-f]{32}-[0-9a-f]{16}-01"),
        app_id in "[a-z-]{1,20}",
        event in order_event(),
    ) {
        let msg = OutgoingMessage::json("saga.events", &routing_key, correlation_id.as_deref(), &event)
            .expect("serialize")
            .with_traceparent(traceparent.as_deref());
        let meta = MessageMeta::decode(&msg.properties(&app_id), false).expect("our own message");
        prop_assert_eq!(&meta.message_id, &msg.message_id);
        prop_assert_eq!(&meta.kind, &routing_key);
        prop_assert_eq!(&meta.correlation_id, &correlation_id);
        prop_assert_eq!(&meta.app_id, &Some(app_id));
        prop_assert!(meta.traceparent.is_some());
        if let Some(tp) = traceparent { prop_assert_eq!(&meta.traceparent, &Some(tp)); }
        let incoming = Incoming { meta, body: msg.body.clone() };
        prop_assert_eq!(incoming.json::<OrderEvent>().expect("decode"), event);
    }

    /// A body is a contract or a `DecodeError::Body`, and what decodes re-encodes to itself.
    #[test]
    fn bodies_decode_to_the_contract_or_a_body_error(
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            order_event().prop_map(|e| serde_json::to_vec(&e).expect("serialize")),
        ],
    ) {
        let incoming = Incoming {
            meta: MessageMeta::decode(
                &BasicProperties::default().with_message_id("m".into()).with_type("t".into()),
                false,
            ).expect("meta"),
            body: body.clone(),
        };
        match incoming.json::<OrderEvent>() {
            Ok(event) => {
                prop_assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok());
                let again = serde_json::to_vec(&event).expect("serialize");
                prop_assert_eq!(serde_json::from_slice::<OrderEvent>(&again).ok(), Some(event));
            }
            Err(e) => prop_assert!(matches!(e, DecodeError::Body(_)), "{e:?}"),
        }
    }

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
