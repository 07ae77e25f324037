//! Property tests: no input a peer can send makes message decoding panic. Every consumer reads
//! its deliveries through `Incoming::decode` / `MessageMeta::decode` and `Incoming::json`, so
//! these cover the decoding of each of them; a body that does not fit is an `Err`, which the
//! consumer loop turns into a dead letter.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use messaging::contracts::{
    CreateOrder, CreateProduct, Found, GetById, OrderEvent, OrderView, ProductView, ReleaseStock,
    ReserveStock, StockAnswer,
};
use messaging::envelope::{Incoming, MessageMeta};
use proptest::prelude::*;

fn decode_every_contract(incoming: &Incoming) {
    let _ = incoming.json::<CreateOrder>();
    let _ = incoming.json::<ReserveStock>();
    let _ = incoming.json::<ReleaseStock>();
    let _ = incoming.json::<StockAnswer>();
    let _ = incoming.json::<OrderEvent>();
    let _ = incoming.json::<GetById>();
    let _ = incoming.json::<CreateProduct>();
    let _ = incoming.json::<Found<OrderView>>();
    let _ = incoming.json::<Found<ProductView>>();
}

fn incoming(body: Vec<u8>) -> Incoming {
    let props = BasicProperties::default()
        .with_message_id("m".into())
        .with_type("t".into());
    Incoming {
        meta: MessageMeta::decode(&props, false).expect("valid meta"),
        body,
    }
}

/// JSON-ish bodies: objects with the contracts' field names and values of any type.
fn json_like() -> impl Strategy<Value = Vec<u8>> {
    let key = prop::sample::select(vec![
        "orderId",
        "productId",
        "quantity",
        "customerId",
        "sellerId",
        "reason",
        "status",
        "id",
        "name",
        "priceCents",
        "stock",
        "found",
        "idempotencyKey",
        "occurredAt",
    ]);
    let value = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null)),
        ".{0,40}".prop_map(serde_json::Value::from),
        Just(serde_json::json!([1, "x", {}])),
    ];
    prop::collection::btree_map(key, value, 0..10).prop_map(|m| {
        serde_json::to_vec(
            &m.into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect::<serde_json::Map<_, _>>(),
        )
        .unwrap_or_default()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_every_contract(&incoming(body));
    }

    #[test]
    fn json_shaped_bodies_never_panic(body in json_like()) {
        decode_every_contract(&incoming(body));
    }

    #[test]
    fn arbitrary_properties_never_panic(
        message_id in proptest::option::of(".{0,64}"),
        kind in proptest::option::of(".{0,64}"),
        content_type in proptest::option::of(".{0,32}"),
        delivery_count in any::<i64>(),
        traceparent in proptest::option::of(".{0,80}"),
        redelivered in any::<bool>(),
    ) {
        let mut props = BasicProperties::default();
        if let Some(id) = message_id { props = props.with_message_id(id.as_str().into()); }
        if let Some(kind) = kind { props = props.with_type(kind.as_str().into()); }
        if let Some(ct) = content_type { props = props.with_content_type(ct.as_str().into()); }
        let mut headers = FieldTable::default();
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(delivery_count));
        if let Some(tp) = traceparent { headers.insert("traceparent".into(), AMQPValue::LongString(tp.into())); }
        let props = props.with_headers(headers);
        if let Ok(meta) = MessageMeta::decode(&props, redelivered) {
            prop_assert!(!meta.message_id.is_empty() && !meta.kind.is_empty());
            prop_assert_eq!(meta.delivery_count, delivery_count);
        }
    }
}
