//! Redelivered and duplicated messages are applied once.

use std::time::Duration;

use e2e::{Backend, Options, System, publish_message};
use messaging::OutgoingMessage;
use messaging::contracts::{ReserveStock, StockAnswer};
use messaging::topology::{COMMANDS, EVENTS, ORDERS_QUEUE, WEBHOOKS_QUEUE, keys};
use testkit::amqp::TestClient;
use testkit::{TestEnv, eventually};

async fn stock_reserved_five_times(backend: Backend) {
    let env = TestEnv::new("dup-reply").await.unwrap();
    // No products service: the order stays PENDING until we answer for products ourselves.
    let mut system = System::empty(&env, Options::on(backend));
    system.start_orders().await.unwrap();
    system.start_gateway().await.unwrap();
    let client = TestClient::connect(&env.amqp_url).await.unwrap();

    let order_id = system.accepted_order("product-x", 2).await.unwrap();
    let recorded = eventually(Duration::from_secs(10), || async {
        let all = system.order_statuses().await.ok()?;
        all.contains_key(&order_id).then_some(())
    })
    .await;
    assert!(recorded.is_some(), "order never recorded");

    let answer = StockAnswer {
        order_id: order_id.clone(),
        product_id: "product-x".into(),
        quantity: 2,
        seller_id: Some("s".into()),
        reason: None,
        unit_price_cents: Some(999),
        product_name: Some("widget".into()),
    };
    let reply =
        OutgoingMessage::json(EVENTS, keys::STOCK_RESERVED, Some(&order_id), &answer).unwrap();
    let sends = (0..5).map(|_| publish_message(&client, &reply));
    for sent in futures::future::join_all(sends).await {
        sent.unwrap();
    }

    let statuses = system
        .wait_terminal(std::slice::from_ref(&order_id), Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(statuses[&order_id], "CONFIRMED");
    // Wait until orders has consumed all five copies, then count the events it emitted.
    let drained = eventually(Duration::from_secs(20), || async {
        (client.ready_count(ORDERS_QUEUE).await.ok()? == 0).then_some(())
    })
    .await;
    assert!(drained.is_some());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events = client.drain(WEBHOOKS_QUEUE).await.unwrap();
    let confirmed = events
        .iter()
        .filter(|m| {
            m.delivery.properties.kind().as_ref().map(|k| k.as_str()) == Some(keys::ORDER_CONFIRMED)
        })
        .count();
    let created = events
        .iter()
        .filter(|m| {
            m.delivery.properties.kind().as_ref().map(|k| k.as_str()) == Some(keys::ORDER_CREATED)
        })
        .count();
    assert_eq!(
        (created, confirmed),
        (1, 1),
        "events: {:?}",
        events
            .iter()
            .map(|m| m.delivery.properties.kind().clone())
            .collect::<Vec<_>>()
    );

    // The Redis side: a processed marker with a 24 h TTL, and no lock left behind.
    let redis = redis::Client::open(env.redis_url.as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{}processed:{order_id}", env.redis_prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        (86_000..=86_400).contains(&ttl),
        "processed marker TTL {ttl}"
    );
    let lock: i64 = redis::cmd("EXISTS")
        .arg(format!("{}lock:{order_id}", env.redis_prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(lock, 0, "lock left behind");

    system.stop().await;
    env.cleanup().await;
}

async fn reserve_stock_twice(backend: Backend) {
    let env = TestEnv::new("dup-reserve").await.unwrap();
    // No orders service: the answers stay in orders_queue where the test can count them.
    let mut system = System::empty(&env, Options::on(backend));
    system.start_products().await.unwrap();
    system.start_gateway().await.unwrap();
    let client = TestClient::connect(&env.amqp_url).await.unwrap();
    let product = system.create_product(10).await.unwrap();

    let reserve = ReserveStock {
        order_id: "order-1".into(),
        product_id: product.clone(),
        quantity: 4,
    };
    let msg =
        OutgoingMessage::json(COMMANDS, keys::RESERVE_STOCK, Some("order-1"), &reserve).unwrap();
    publish_message(&client, &msg).await.unwrap();
    publish_message(&client, &msg).await.unwrap();
    // Another message id for the same order is a duplicate too (the reservation is per order).
    let again =
        OutgoingMessage::json(COMMANDS, keys::RESERVE_STOCK, Some("order-1"), &reserve).unwrap();
    publish_message(&client, &again).await.unwrap();

    let answered = eventually(Duration::from_secs(20), || async {
        (client.ready_count(ORDERS_QUEUE).await.ok()? >= 1).then_some(())
    })
    .await;
    assert!(answered.is_some(), "products never answered");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(system.stock(&product).await.unwrap(), 6);
    let answers = client.drain(ORDERS_QUEUE).await.unwrap();
    assert_eq!(answers.len(), 1, "one answer per order");
    assert_eq!(
        answers[0]
            .delivery
            .properties
            .kind()
            .as_ref()
            .map(|k| k.as_str()),
        Some(keys::STOCK_RESERVED)
    );
    let body: StockAnswer = serde_json::from_slice(&answers[0].delivery.data).unwrap();
    assert_eq!(
        (body.order_id.as_str(), body.seller_id.as_deref()),
        ("order-1", Some("seller-1"))
    );

    system.stop().await;
    env.cleanup().await;
}

e2e::on_both_backends! {
    the_same_stock_reserved_five_times_confirms_once => stock_reserved_five_times,
    the_same_reserve_stock_twice_decrements_once => reserve_stock_twice,
}
