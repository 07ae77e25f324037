//! A message that cannot be processed lands in its queue's DLQ, and the consumer keeps going.

use std::time::Duration;

use e2e::{Backend, Options, System};
use lapin::BasicProperties;
use messaging::topology::{
    COMMANDS, EVENTS, ORDERS_INTAKE_QUEUE, ORDERS_QUEUE, PRODUCTS_QUEUE, dlq, keys,
};
use testkit::amqp::TestClient;
use testkit::{TestEnv, eventually};

fn props(message_id: Option<&str>, kind: &str) -> BasicProperties {
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_type(kind.into())
        .with_delivery_mode(2);
    match message_id {
        Some(id) => props.with_message_id(id.into()),
        None => props,
    }
}

async fn poison_dead_lettered(backend: Backend) {
    let env = TestEnv::new("poison").await.unwrap();
    let system = System::start(&env, Options::on(backend)).await.unwrap();
    let client = TestClient::connect(&env.amqp_url).await.unwrap();

    // orders_intake_queue: not JSON; no message id; wrong shape. orders_queue: a stock answer
    // for an order nobody placed.
    client
        .publish(
            COMMANDS,
            keys::ORDERS_CREATE,
            b"not json",
            props(Some("p-1"), keys::ORDERS_CREATE),
        )
        .await
        .unwrap();
    client
        .publish(
            COMMANDS,
            keys::ORDERS_CREATE,
            b"{}",
            props(None, keys::ORDERS_CREATE),
        )
        .await
        .unwrap();
    client
        .publish(
            COMMANDS,
            keys::ORDERS_CREATE,
            br#"{"orderId": 5}"#,
            props(Some("p-2"), keys::ORDERS_CREATE),
        )
        .await
        .unwrap();
    let orphan = br#"{"orderId":"ghost","productId":"p","quantity":1,"sellerId":null}"#;
    client
        .publish(
            EVENTS,
            keys::STOCK_RESERVED,
            orphan,
            props(Some("p-3"), keys::STOCK_RESERVED),
        )
        .await
        .unwrap();
    // products_queue: not JSON; zero quantity.
    client
        .publish(
            COMMANDS,
            keys::RESERVE_STOCK,
            b"\xff\xfe",
            props(Some("p-4"), keys::RESERVE_STOCK),
        )
        .await
        .unwrap();
    let zero = br#"{"orderId":"o","productId":"p","quantity":0}"#;
    client
        .publish(
            COMMANDS,
            keys::RESERVE_STOCK,
            zero,
            props(Some("p-5"), keys::RESERVE_STOCK),
        )
        .await
        .unwrap();

    let expect = [
        (ORDERS_INTAKE_QUEUE, 3usize),
        (ORDERS_QUEUE, 1usize),
        (PRODUCTS_QUEUE, 2usize),
    ];
    for (queue, n) in expect {
        let dlq = dlq(queue);
        let landed = eventually(Duration::from_secs(20), || async {
            (client.ready_count(&dlq).await.ok()? as usize >= n).then_some(())
        })
        .await;
        assert!(landed.is_some(), "{dlq} did not receive {n} messages");
        let dead = client.drain(&dlq).await.unwrap();
        assert_eq!(dead.len(), n, "{dlq}");
        for msg in &dead {
            let headers = msg
                .delivery
                .properties
                .headers()
                .as_ref()
                .expect("x-death header");
            assert!(
                headers.inner().contains_key("x-death"),
                "dead letter without x-death: {headers:?}"
            );
        }
    }

    // The consumers are still there: an order goes all the way through.
    let product = system.create_product(5).await.unwrap();
    let id = system.accepted_order(&product, 1).await.unwrap();
    let statuses = system
        .wait_terminal(std::slice::from_ref(&id), Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(statuses[&id], "CONFIRMED");
    assert_eq!(client.ready_count(&dlq(ORDERS_QUEUE)).await.unwrap(), 0);
    assert_eq!(
        client.ready_count(&dlq(ORDERS_INTAKE_QUEUE)).await.unwrap(),
        0
    );

    system.stop().await;
    env.cleanup().await;
}

e2e::on_both_backends! {
    poison_messages_are_dead_lettered_and_service_goes_on => poison_dead_lettered,
}
