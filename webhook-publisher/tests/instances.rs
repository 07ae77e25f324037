//! Several publishers on one PostgreSQL database and one broker vhost (issue 12 point 6):
//! competing consumers of `webhooks_queue` and competing dispatchers. Every event is delivered
//! once per subscription; a publisher killed mid-retry leaves its retries to another; a
//! subscription made through one instance is used by the others; instances starting together
//! make one default subscription.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use messaging::topology::{WEBHOOKS_QUEUE, dlq, keys};
use testkit::TestEnv;
use testkit::amqp::TestClient;
use webhook_publisher::Config;

/// The configuration every instance of a test shares: one vhost, one PostgreSQL database.
fn instance_config(env: &TestEnv, store: &TestStore, url: &str, schedule: &str) -> Config {
    store.apply(config(env, url, schedule))
}

/// How many requests each webhook id got at `endpoint`.
fn per_webhook_id(endpoint: &Endpoint) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for request in endpoint.received() {
        *counts
            .entry(request.header("webhook-id").to_owned())
            .or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_publishers_deliver_every_event_once_per_subscription() {
    let env = TestEnv::new("wh-two").await.unwrap();
    let store = TestStore::new(Kind::Postgres, "wh_two").await;
    let notifier = Endpoint::start(vec![], Answer::Status(200)).await;
    let other = Endpoint::start(vec![], Answer::Status(200)).await;
    let cfg = instance_config(&env, &store, &notifier.url(), "100,100,100");
    let a = start(cfg.clone()).await;
    let b = start(cfg.clone()).await;
    subscribe(&a.url(), &other.url(), &["order.*"]).await;
    let client = TestClient::connect(&env.amqp_url).await.unwrap();

    const EVENTS: usize = 150;
    let mut ids = Vec::new();
    for i in 0..EVENTS {
        let msg = publish(&client, keys::ORDER_CREATED, &format!("order-two-{i}")).await;
        ids.push(format!("msg_{}", msg.message_id));
    }
    let all = testkit::eventually(LONG, || async {
        let done = notifier.received().len() >= EVENTS && other.received().len() >= EVENTS;
        done.then_some(())
    })
    .await;
    assert!(
        all.is_some(),
        "delivered {} and {} of {EVENTS}",
        notifier.received().len(),
        other.received().len()
    );
    let delivered = testkit::eventually(LONG, || async {
        let n = store
            .count(
                &cfg,
                "SELECT COUNT(*) FROM deliveries WHERE status = 'delivered'",
            )
            .await;
        (n == 2 * EVENTS as i64).then_some(())
    })
    .await;
    assert!(
        delivered.is_some(),
        "not every delivery was recorded as delivered"
    );
    // A little longer: a second attempt of anything would show up now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for endpoint in [&notifier, &other] {
        let counts = per_webhook_id(endpoint);
        assert_eq!(counts.len(), EVENTS, "an event is missing");
        for id in &ids {
            assert_eq!(
                counts.get(id),
                Some(&1),
                "{id} was not delivered exactly once"
            );
        }
    }
    assert_eq!(
        store.count(&cfg, "SELECT COUNT(*) FROM attempts").await,
        2 * EVENTS as i64,
        "one attempt per delivery"
    );
    // Both instances consumed and dispatched (their settled attempts are in one history):
    // nothing is left claimed, pending, queued or dead-lettered.
    assert_eq!(
        store
            .count(
                &cfg,
                "SELECT COUNT(*) FROM deliveries WHERE claimed_by IS NOT NULL"
            )
            .await,
        0
    );
    assert_eq!(client.ready_count(WEBHOOKS_QUEUE).await.unwrap(), 0);
    assert_eq!(client.ready_count(&dlq(WEBHOOKS_QUEUE)).await.unwrap(), 0);

    a.stop().await;
    b.stop().await;
    store.finish(&env).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_killed_mid_retry_leaves_its_retries_to_the_other() {
    let env = TestEnv::new("wh-takeover").await.unwrap();
    let store = TestStore::new(Kind::Postgres, "wh_takeover").await;
    let endpoint =
        Endpoint::start(vec![Answer::Status(503), Answer::Status(503)], Answer::Hang).await;
    let mut cfg = instance_config(&env, &store, &endpoint.url(), "100,100,100,100,100");
    // The delivery lease is the timeout + 5 s (longer than the one-second OUTBOX_LEASE_SECS
    // of the tests): the takeover comes about 8 s after the claim. The timeout leaves B 3 s
    // to start before A's hanging attempt would end on its own.
    cfg.timeout = Duration::from_secs(3);
    let a = start(cfg.clone()).await;
    let client = TestClient::connect(&env.amqp_url).await.unwrap();
    let msg = publish(&client, keys::ORDER_CONFIRMED, "order-takeover").await;

    // Two failed attempts, and the third in flight, all from A (the only instance yet).
    let third = testkit::eventually(LONG, || async {
        (endpoint.received().len() == 3).then_some(())
    })
    .await;
    assert!(third.is_some(), "A did not make three attempts");
    let b = start(cfg.clone()).await;
    // A dies abruptly mid-retry: no drain, no settlement, its claim stays until the lease.
    drop(a);
    let killed_at = std::time::Instant::now();
    endpoint.answer_always(Answer::Status(200));
    endpoint.release();

    let detail = wait_for_status(&b.url(), "order-takeover", "delivered").await;
    let codes: Vec<_> = detail["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["statusCode"].as_u64().unwrap())
        .collect();
    // A's cut-off attempt left no record; B sent it again once A's claim ran out.
    assert_eq!(codes, [503, 503, 200]);
    assert_eq!(endpoint.received().len(), 4);
    assert!(
        killed_at.elapsed() >= Duration::from_secs(3),
        "B took the delivery before A's lease ran out"
    );
    let ids = per_webhook_id(&endpoint);
    assert_eq!(ids.len(), 1, "the retry must keep the webhook-id");
    assert_eq!(ids[&format!("msg_{}", msg.message_id)], 4);

    b.stop().await;
    store.finish(&env).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_made_through_one_instance_is_delivered_to_by_another() {
    let env = TestEnv::new("wh-shared-sub").await.unwrap();
    let store = TestStore::new(Kind::Postgres, "wh_shared_sub").await;
    let notifier = Endpoint::start(vec![], Answer::Status(200)).await;
    let late = Endpoint::start(vec![], Answer::Status(200)).await;
    let cfg = instance_config(&env, &store, &notifier.url(), "100");
    let a = start(cfg.clone()).await;
    let b = start(cfg.clone()).await;
    let created = subscribe(&a.url(), &late.url(), &["order.confirmed"]).await;
    let id = created["id"].as_str().unwrap().to_owned();
    // Only B is left to record and deliver.
    a.stop().await;
    let shown = get_json(&format!("{}/subscriptions/{id}", b.url())).await;
    assert_eq!(shown["url"], late.url());
    let secret = get_json(&format!("{}/subscriptions/{id}/secret", b.url())).await;
    assert_eq!(secret["secret"], created["secret"]);

    let client = TestClient::connect(&env.amqp_url).await.unwrap();
    publish(&client, keys::ORDER_CONFIRMED, "order-shared").await;
    let got = testkit::eventually(LONG, || async {
        (late.received().len() == 1).then_some(())
    })
    .await;
    assert!(
        got.is_some(),
        "B never delivered to the subscription made through A"
    );
    let request = &late.received()[0];
    assert!(
        request.signed_with(created["secret"].as_str().unwrap()),
        "not signed with the subscription's secret"
    );
    assert_eq!(request.json()["data"]["orderId"], "order-shared");

    b.stop().await;
    store.finish(&env).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_together_make_one_default_subscription() {
    let env = TestEnv::new("wh-one-default").await.unwrap();
    let store = TestStore::new(Kind::Postgres, "wh_one_default").await;
    let notifier = Endpoint::start(vec![], Answer::Status(200)).await;
    let cfg = instance_config(&env, &store, &notifier.url(), "100");
    let starts: Vec<_> = (0..3).map(|_| tokio::spawn(start(cfg.clone()))).collect();
    let mut instances = Vec::new();
    for started in starts {
        instances.push(started.await.unwrap());
    }
    for instance in &instances {
        let list = get_json(&format!("{}/subscriptions", instance.url())).await;
        let list = list.as_array().unwrap();
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0]["url"], notifier.url());
    }
    assert_eq!(
        store
            .count(&cfg, "SELECT COUNT(*) FROM subscriptions")
            .await,
        1
    );
    for instance in instances {
        instance.stop().await;
    }
    store.finish(&env).await;
    env.cleanup().await;
}
