//! An operator lists dead letters with their reason and replays one to its queue.

use std::time::Duration;

use e2e::{Backend, Options, System, publish_message};
use lapin::options::{BasicGetOptions, BasicRejectOptions};
use messaging::OutgoingMessage;
use messaging::contracts::CreateOrder;
use messaging::deadletter;
use messaging::topology::{COMMANDS, ORDERS_INTAKE_QUEUE, dlq, keys};
use testkit::amqp::TestClient;
use testkit::{TestEnv, eventually};

async fn dead_letter_replayed(backend: Backend) {
    let env = TestEnv::new("dlq-replay").await.unwrap();
    let mut system = System::empty(&env, Options::on(backend));
    // Products first so the topology exists; orders is not running yet.
    system.start_products().await.unwrap();
    system.start_gateway().await.unwrap();
    let client = TestClient::connect(&env.amqp_url).await.unwrap();
    let product = system.create_product(5).await.unwrap();

    // A good order that died anyway (say its consumer crashed on it): we reject it by hand.
    let create = CreateOrder {
        order_id: "order-dlq".into(),
        product_id: product.clone(),
        quantity: 2,
        customer_id: None,
        idempotency_key: None,
        seller_id: None,
    };
    let msg =
        OutgoingMessage::json(COMMANDS, keys::ORDERS_CREATE, Some("order-dlq"), &create).unwrap();
    publish_message(&client, &msg).await.unwrap();
    let got = client
        .channel
        .basic_get(
            ORDERS_INTAKE_QUEUE.into(),
            BasicGetOptions { no_ack: false },
        )
        .await
        .unwrap()
        .expect("the order is queued");
    got.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let landed = eventually(Duration::from_secs(10), || async {
        (client.ready_count(&dlq(ORDERS_INTAKE_QUEUE)).await.ok()? == 1).then_some(())
    })
    .await;
    assert!(landed.is_some());

    let letters = deadletter::list(&client.channel, ORDERS_INTAKE_QUEUE)
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(
        (letter.reason.as_str(), letter.queue.as_str(), letter.count),
        ("rejected", ORDERS_INTAKE_QUEUE, 1)
    );
    assert_eq!(letter.message_id.as_deref(), Some(msg.message_id.as_str()));
    assert_eq!(letter.kind.as_deref(), Some(keys::ORDERS_CREATE));
    // Listing left it in place.
    let still = eventually(Duration::from_secs(10), || async {
        (client.ready_count(&dlq(ORDERS_INTAKE_QUEUE)).await.ok()? == 1).then_some(())
    })
    .await;
    assert!(still.is_some(), "listing must not consume dead letters");

    // Choosing nothing replays nothing; choosing it by id moves it back with its id.
    assert_eq!(
        deadletter::replay(&client.channel, ORDERS_INTAKE_QUEUE, |_| false)
            .await
            .unwrap(),
        0
    );
    let id = msg.message_id.clone();
    assert_eq!(
        deadletter::replay(&client.channel, ORDERS_INTAKE_QUEUE, |l| l
            .message_id
            .as_deref()
            == Some(id.as_str()))
        .await
        .unwrap(),
        1
    );
    let back = client
        .channel
        .basic_get(
            ORDERS_INTAKE_QUEUE.into(),
            BasicGetOptions { no_ack: false },
        )
        .await
        .unwrap()
        .expect("replayed to orders_intake_queue");
    assert_eq!(
        back.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string()),
        Some(msg.message_id.clone())
    );
    back.delivery
        .nack(lapin::options::BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await
        .unwrap();
    assert_eq!(
        client.ready_count(&dlq(ORDERS_INTAKE_QUEUE)).await.unwrap(),
        0
    );

    // Once orders runs, the replayed order goes through.
    system.start_orders().await.unwrap();
    let statuses = system
        .wait_terminal(&["order-dlq".to_owned()], Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(statuses["order-dlq"], "CONFIRMED");

    system.stop().await;
    env.cleanup().await;
}

e2e::on_both_backends! {
    a_dead_letter_is_listed_with_its_reason_and_replayed_with_its_id => dead_letter_replayed,
}
