//! The publisher on the real broker and real HTTP endpoints: signed requests, the retry
//! schedule, replay, isolation of a dead endpoint, restarts, 410 and Retry-After.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use messaging::topology::{WEBHOOKS_QUEUE, dlq, keys};
use testkit::TestEnv;
use testkit::amqp::TestClient;

on_both_backends!(
    an_endpoint_failing_twice_gets_three_signed_attempts_and_one_delivery,
    an_endpoint_always_failing_fails_after_six_attempts_and_replay_delivers,
    a_dead_endpoint_does_not_delay_a_healthy_one,
    pending_retries_resume_after_a_restart,
    gone_disables_the_subscription_and_retry_after_is_honoured,
    subscriptions_api_validates_and_a_bad_event_goes_to_the_dlq,
    timeouts_and_long_answers_are_recorded_in_the_history,
    an_answer_with_nul_bytes_is_recorded_once,
    a_publisher_killed_mid_attempt_retries_after_the_lease,
);

async fn an_endpoint_failing_twice_gets_three_signed_attempts_and_one_delivery(kind: Kind) {
    let env = TestEnv::new("wh-three").await.unwrap();
    let store = TestStore::new(kind, "wh-three").await;
    let endpoint = Endpoint::start(
        vec![Answer::Status(500), Answer::Redirect],
        Answer::Status(204),
    )
    .await;
    let publisher = start(store.apply(config(&env, &endpoint.url(), "100,200,400,800,1600"))).await;
    let base = publisher.url();
    let client = TestClient::connect(&env.amqp_url).await.unwrap();

    let msg = publish(&client, keys::ORDER_CONFIRMED, "order-3").await;
    let detail = wait_for_status(&base, "order-3", "delivered").await;

    let attempts = detail["attempts"].as_array().unwrap();
    let codes: Vec<_> = attempts
        .iter()
        .map(|a| a["statusCode"].as_u64().unwrap())
        .collect();
    // A redirect is a failure and is not followed.
    assert_eq!(codes, [500, 307, 204]);
    assert_eq!(endpoint.followed(), 0);
    assert!(attempts.iter().all(|a| a["trigger"] == "scheduled"));
    assert_eq!(detail["attemptCount"], 3);
    assert_eq!(detail["webhookId"], format!("msg_{}", msg.message_id));

    let received = endpoint.received();
    assert_eq!(received.len(), 3);
    for request in &received {
        assert_eq!(
            request.header("webhook-id"),
            format!("msg_{}", msg.message_id)
        );
        assert!(
            request.signed_with(SECRET),
            "attempt not signed with the subscription's secret"
        );
        assert_eq!(
            request.body, received[0].body,
            "the body changed between attempts"
        );
        assert!(request.header("webhook-signature").starts_with("v1,"));
    }
    let body = received[0].json();
    assert_eq!(body["type"], "order.confirmed");
    assert_eq!(body["data"]["orderId"], "order-3");
    assert_eq!(body["data"]["customerId"], "c1");
    assert!(body["timestamp"].is_string());

    // The same AMQP message again (a redelivery) creates nothing; a new one does.
    publish_message(&client, &msg).await.unwrap();
    publish(&client, keys::ORDER_CREATED, "order-3b").await;
    wait_for_status(&base, "order-3b", "delivered").await;
    let for_order = deliveries(&base, "").await;
    assert_eq!(
        for_order
            .iter()
            .filter(|d| d["orderId"] == "order-3")
            .count(),
        1,
        "a redelivered message made a second delivery"
    );

    publisher.stop().await;
    store.finish(&env).await;
    env.cleanup().await;
}

async fn an_endpoint_always_failing_fails_after_six_attempts_and_replay_delivers(kind: Kind) {
    let env = TestEnv::new("wh-six").await.unwrap();
    let store = TestStore::new(kind, "wh-six").await;
    let endpoint = Endpoint::start(vec![], Answer::Status(500)).await;
    let publisher = start(store.apply(config(&env, &endpoint.url(), "50,50,50,50,50"))).await;
    let base = publisher.url();
    let client = TestClient::connect(&env.amqp_url).await.unwrap();

    publish(&client, keys::ORDER_REJECTED, "order-6").await;
    let detail = wait_for_status(&base, "order-6", "failed").await;
    assert_eq!(detail["attempts"].as_array().unwrap().len(), 6);
    assert_eq!(endpoint.received().len(), 6);
    assert!(
        detail["lastError"]
            .as_str()
            .unwrap()
            .contains("gave up after 6 attempts")
    );
    let failed = deliveries(&base, "status=failed&event=order.rejected").await;
    assert_eq!(failed.len(), 1);

    // The endpoint is back: a replay sends it once more and it is delivered.
    endpoint.answer_always(Answer::Status(200));
    let id = detail["id"].as_str().unwrap();
    let http = api();
    let replay = http
        .post(format!("{base}/deliveries/{id}/replay"))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 202);
    let detail = wait_for_status(&base, "order-6", "delivered").await;
    let attempts = detail["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 7);
    assert_eq!(attempts[6]["trigger"], "manual");
    assert_eq!(attempts[6]["statusCode"], 200);
    assert_eq!(endpoint.received().len(), 7);

    // Only a failed delivery can be replayed.
    let again = http
        .post(format!("{base}/deliveries/{id}/replay"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    assert_eq!(again.headers()["content-type"], "application/problem+json");
    let unknown = http
        .post(format!("{base}/deliveries/nope/replay"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    publisher.stop().await;
    store.finish(&env).await;
    env.cleanup().await;
}

async fn a_dead_endpoint_does_not_delay_a_healthy_one(kind: Kind) {
    let env = TestEnv::new("wh-dead").await.unwrap();
    let store = TestStore::new(kind, "wh-dead").await;
    let dead = Endpoint::start(vec![], Answer::Hang).await;
    let healthy = Endpoint::start(vec![], Answer::Status(200)).await;
    let mut cfg = store.apply(config(&env, &dead.url(), "100,100,100,100,100"));
    // Longer than this test waits: no attempt to the dead endpoint can finish meanwhile.
    cfg.timeout = Duration::from_secs(60);
    let publisher = start(cfg).await;
    let base = publisher.url();
    subscribe(&base, &healthy.url(), &["order.*"]).await;
    let client = TestClient::connect(&env.amqp_url).await.unwrap();

    for i in 0..10 {
        publish(&client, keys::ORDER_CREATED, &format!("order-d{i}")).await;
    }
    let all_there = testkit::eventually(LONG, || async {
        (healthy.received().len() == 10).then_some(())
    })
    .await;
    assert!(
        all_there.is_some(),
        "the healthy endpoint got {} of 10",
        healthy.received().len()
    );
    // The healthy endpoint answered them all while the dead one holds only its own permits and
    // has not finished a single attempt: the healthy deliveries never waited for it.
    let delivered = testkit::eventually(LONG, || async {
        (deliveries(&base, "status=delivered").await.len() == 10).then_some(())
    })
    .await;
    assert!(
        delivered.is_some(),
        "the healthy deliveries were not all recorded as delivered"
    );
    let dead_busy = testkit::eventually(LONG, || async {
        (dead.received().len() == 2).then_some(())
    })
    .await;
    assert!(
        dead_busy.is_some(),
        "the dead endpoint did not get its two requests"
    );
    assert_eq!(
        dead.max_in_flight(),
        2,
        "per-endpoint concurrency is not bounded at 2"
    );
    assert_eq!(deliveries(&base, "status=pending").await.len(), 10);
    assert_eq!(
        dead.received().len(),
        2,
        "more requests than permits reached the dead endpoint"
    );

    dead.release();
    publisher.stop().await;
    store.finish(&env).await;
    env.cleanup().await;
}

async fn pending_retries_resume_after_a_restart(kind: Kind) {
    let env = TestEnv::new("wh-restart").await.unwrap();
    let store = TestStore::new(kind, "wh-restart").await;
    let endpoint = Endpoint::start(vec![], Answer::Status(503)).await;
    let cfg = store.apply(config(&env, &endpoint.url(), "300,300,300,300,300"));
    let publisher = start(cfg.clone()).await;
    let client = TestClient::connect(&env.amqp_url).await.unwrap();
    publish(&client, keys::ORDER_CANCELLED, "order-r").await;

    let two = testkit::eventually(LONG, || async {
        (endpoint.received().len() >= 2).then_some(())
    })
    .await;
    assert!(two.is_some());
    publisher.stop().await;
    let before_restart = endpoint.received().len();
    assert!(
        before_restart < 6,
        "the schedule ran out before the restart"
    );

    endpoint.answer_always(Answer::Status(200));
    let publisher = start(cfg).await;
    let base = publisher.url();
    let detail = wait_for_status(&base, "order-r", "delivered").await;
    let attempts = detail["attempts"].as_array().unwrap();
    assert_eq!(
        attempts.len(),
        endpoint.received().len(),
        "every request is in the history"
    );
    assert!(attempts.len() > before_restart);
    assert_eq!(attempts.last().unwrap()["statusCode"], 200);
    assert_eq!(deliveries(&base, "").await.len(), 1);
    // The message was acked before the stop: nothing is left in the queue or its DLQ.
    assert_eq!(client.ready_count(WEBHOOKS_QUEUE).await.unwrap(), 0);
    assert_eq!(client.ready_count(&dlq(WEBHOOKS_QUEUE)).await.unwrap(), 0);

    publisher.stop().await;
    store.finish(&env).await;
    env.cleanup().await;
}

async fn gone_disables_the_subscription_and_retry_after_is_honoured(kind: Kind) {
    let env = TestEnv::new("wh-gone").await.unwrap();
    let store = TestStore::new(kind, "wh-gone").await;
    let gone = Endpoint::start(vec![], Answer::Status(410)).await;
    let busy = Endpoint::start(vec![Answer::RetryAfter(429, 1)], Answer::Status(200)).await;
    let publisher = start(store.apply(config(&env, &gone.url(), "50,50,2000"))).await;
    let base = publisher.url();
    let busy_sub = subscribe(&base, &busy.url(), &["order.created"]).await;
    let client = TestClient::connect(&env.amqp_url).await.unwrap();

    publish(&client, keys::ORDER_CREATED, "order-g").await;
    let delivered = testkit::eventually(LONG, || async {
        let list = deliveries(
            &base,
            &format!("subscription={}", busy_sub["id"].as_str().unwrap()),
        )
        .await;
        (list.first()?["status"] == "delivered").then_some(())
    })
    .await;
    assert!(delivered.is_some());
    let busy_requests = busy.received();
    assert_eq!(busy_requests.len(), 2);
    let waited = busy_requests[1].at - busy_requests[0].at;
    assert!(
        waited >= Duration::from_millis(900),
        "Retry-After: 1 was not honoured ({waited:?})"
    );

    // The 410 is settled independently of the other endpoint: wait for it.
    let default = testkit::eventually(LONG, || async {
        let subscriptions = get_json(&format!("{base}/subscriptions")).await;
        let default = subscriptions
            .as_array()?
            .iter()
            .find(|s| s["url"] == gone.url())?
            .clone();
        (default["status"] == "disabled").then_some(default)
    })
    .await
    .expect("the subscription answering 410 was not disabled");
    assert!(
        default.get("secret").is_none(),
        "the list must not show secrets"
    );
    assert_eq!(gone.received().len(), 1, "a 410 must not be retried");

    // A disabled subscription gets no new deliveries.
    publish(&client, keys::ORDER_CREATED, "order-g2").await;
    let second = testkit::eventually(LONG, || async {
        let list = deliveries(&base, "event=order.created").await;
        list.iter()
            .any(|d| d["orderId"] == "order-g2")
            .then_some(list)
    })
    .await
    .unwrap();
    assert_eq!(
        second.iter().filter(|d| d["orderId"] == "order-g2").count(),
        1
    );

    publisher.stop().await;
    store.finish(&env).await;
    env.cleanup().await;
}

async fn subscriptions_api_validates_and_a_bad_event_goes_to_the_dlq(kind: Kind) {
    let env = TestEnv::new("wh-api").await.unwrap();
    let store = TestStore::new(kind, "wh-api").await;
    let endpoint = Endpoint::start(vec![], Answer::Status(200)).await;
    let publisher = start(store.apply(config(&env, &endpoint.url(), "50"))).await;
    let base = publisher.url();
    let http = api();

    let bad = http
        .post(format!("{base}/subscriptions"))
        .json(&serde_json::json!({"url": "ftp://x", "events": ["order.shipped"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    assert_eq!(bad.headers()["content-type"], "application/problem+json");
    let problem: serde_json::Value = bad.json().await.unwrap();
    assert_eq!(problem["errors"].as_array().unwrap().len(), 2);
    let malformed = http
        .post(format!("{base}/subscriptions"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);

    let created = subscribe(&base, &endpoint.url(), &["order.confirmed"]).await;
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    let id = created["id"].as_str().unwrap();
    let list = get_json(&format!("{base}/subscriptions")).await;
    assert_eq!(list.as_array().unwrap().len(), 2, "default + created");
    let deleted = http
        .delete(format!("{base}/subscriptions/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let again = http
        .delete(format!("{base}/subscriptions/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
    let bad_filter = http
        .get(format!("{base}/deliveries?status=lost"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_filter.status(), 422);
    let unknown = http
        .get(format!("{base}/deliveries/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let no_route = http
        .get(format!("{base}/nothing-here"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_route.status(), 404);
    assert_eq!(
        no_route.headers()["content-type"],
        "application/problem+json"
    );
    let wrong_method = http
        .put(format!("{base}/subscriptions"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(
        wrong_method.headers()["content-type"],
        "application/problem+json"
    );

    // An order event whose body is not an OrderEvent is dead-lettered, not retried forever.
    let client = TestClient::connect(&env.amqp_url).await.unwrap();
    let mut poison = event_message(
        keys::ORDER_CREATED,
        &order_event("o", None, None, "PENDING"),
    );
    poison.body = br#"{"orderId": 42}"#.to_vec();
    publish_message(&client, &poison).await.unwrap();
    let dead = testkit::eventually(LONG, || async {
        let n = client.ready_count(&dlq(WEBHOOKS_QUEUE)).await.ok()?;
        (n == 1).then_some(())
    })
    .await;
    assert!(
        dead.is_some(),
        "the malformed event did not reach webhooks_queue.dlq"
    );
    assert!(deliveries(&base, "").await.is_empty());

    publisher.stop().await;
    store.finish(&env).await;
    env.cleanup().await;
}

async fn timeouts_and_long_answers_are_recorded_in_the_history(kind: Kind) {
    let env = TestEnv::new("wh-history").await.unwrap();
    let store = TestStore::new(kind, "wh-history").await;
    let slow = Endpoint::start(vec![], Answer::Hang).await;
    let chatty = Endpoint::start(vec![], Answer::Big(500, 5000)).await;
    let mut cfg = store.apply(config(&env, &slow.url(), "50"));
    cfg.timeout = Duration::from_millis(300);
    let publisher = start(cfg).await;
    let base = publisher.url();
    let chatty_id = subscribe(&base, &chatty.url(), &["*"]).await["id"].clone();
    let client = TestClient::connect(&env.amqp_url).await.unwrap();
    publish(&client, keys::ORDER_CREATED, "order-h").await;

    let failed = testkit::eventually(LONG, || async {
        let list = deliveries(&base, "status=failed").await;
        (list.len() == 2).then_some(list)
    })
    .await
    .expect("both deliveries should fail after two attempts");
    for delivery in failed {
        let detail = get_json(&format!(
            "{base}/deliveries/{}",
            delivery["id"].as_str().unwrap()
        ))
        .await;
        let attempts = detail["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 2);
        for attempt in attempts {
            if detail["subscriptionId"] == chatty_id {
                assert_eq!(attempt["statusCode"], 500);
                let body = attempt["responseBody"].as_str().unwrap();
                assert_eq!(body.len(), 1024, "the body is not truncated to 1 KiB");
            } else {
                assert!(attempt["statusCode"].is_null());
                assert_eq!(attempt["error"], "the endpoint did not answer in time");
                assert!(attempt["latencyMs"].as_i64().unwrap() >= 300);
            }
        }
    }
    assert_eq!(slow.received().len(), 2);
    assert_eq!(chatty.received().len(), 2);

    slow.release();
    publisher.stop().await;
    store.finish(&env).await;
    env.cleanup().await;
}

/// A body with a NUL byte (and invalid UTF-8) is stored with U+FFFD in their place: PostgreSQL's
/// `text` refuses NUL, and an attempt that cannot be recorded would be sent again after every
/// lease, for ever.
async fn an_answer_with_nul_bytes_is_recorded_once(kind: Kind) {
    let env = TestEnv::new("wh-nul").await.unwrap();
    let store = TestStore::new(kind, "wh-nul").await;
    let endpoint = Endpoint::start(vec![], Answer::Body(200, b"ok\0\xffdone")).await;
    let publisher = start(store.apply(config(&env, &endpoint.url(), "50"))).await;
    let base = publisher.url();
    let client = TestClient::connect(&env.amqp_url).await.unwrap();
    publish(&client, keys::ORDER_CREATED, "order-nul").await;

    let delivered = testkit::eventually(LONG, || async {
        let list = deliveries(&base, "status=delivered").await;
        (list.len() == 1).then_some(list)
    })
    .await
    .expect("the delivery should be recorded as delivered");
    let detail = get_json(&format!(
        "{base}/deliveries/{}",
        delivered[0]["id"].as_str().unwrap()
    ))
    .await;
    let attempts = detail["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["responseBody"], "ok\u{FFFD}\u{FFFD}done");
    assert_eq!(endpoint.received().len(), 1);

    publisher.stop().await;
    store.finish(&env).await;
    env.cleanup().await;
}

async fn a_publisher_killed_mid_attempt_retries_after_the_lease(kind: Kind) {
    let env = TestEnv::new("wh-kill").await.unwrap();
    let store = TestStore::new(kind, "wh-kill").await;
    let endpoint =
        Endpoint::start(vec![Answer::Status(503), Answer::Status(503)], Answer::Hang).await;
    let mut cfg = store.apply(config(&env, &endpoint.url(), "100,100,100,100,100"));
    // The lease of a claimed delivery is the timeout + 5 s: keep it short for the test.
    cfg.timeout = Duration::from_secs(1);
    let publisher = start(cfg.clone()).await;
    let client = TestClient::connect(&env.amqp_url).await.unwrap();
    publish(&client, keys::ORDER_CONFIRMED, "order-k").await;

    // The third attempt is in flight when the process dies: no drain, no bookkeeping.
    let third = testkit::eventually(LONG, || async {
        (endpoint.received().len() == 3).then_some(())
    })
    .await;
    assert!(third.is_some());
    drop(publisher);

    endpoint.answer_always(Answer::Status(200));
    endpoint.release();
    let publisher = start(cfg).await;
    let base = publisher.url();
    let detail = wait_for_status(&base, "order-k", "delivered").await;
    let codes: Vec<_> = detail["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["statusCode"].as_u64().unwrap())
        .collect();
    // The cut-off attempt left no record; the delivery went again once its lease ran out.
    assert_eq!(codes, [503, 503, 200]);
    assert_eq!(endpoint.received().len(), 4);
    let ids: std::collections::HashSet<_> = endpoint
        .received()
        .iter()
        .map(|r| r.header("webhook-id").to_owned())
        .collect();
    assert_eq!(
        ids.len(),
        1,
        "the retry after the crash must keep the webhook-id"
    );

    publisher.stop().await;
    store.finish(&env).await;
    env.cleanup().await;
}
