//! Property tests of the project's own decoding code: what a peer can send is decoded to a value
//! or a typed error (never a panic), and decoding agrees with a model of what it must accept.
//! (The signatures' properties are `webhook-signing`'s tests/properties.rs.)
//!
//! Envelope: AMQP content-header bytes off the wire (lapin's parser) and arbitrary properties
//! and headers into `Incoming::decode` / `MessageMeta::decode`, checked against the rules a
//! consumer relies on; bodies into `Incoming::json`.

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::protocol::basic::parse_properties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use messaging::contracts::OrderEvent;
use messaging::envelope::{DecodeError, Incoming, MessageMeta, OutgoingMessage};
use proptest::prelude::*;

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
}
