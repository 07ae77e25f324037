//! The notifier on real Redis and real HTTP/WebSocket connections: the role × event matrix
//! through the publisher, signature and timestamp checks, deduplication, two instances, tokens,
//! rooms and keepalive.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use messaging::OutgoingMessage;
use messaging::topology::{EVENTS, keys};
use notifier::auth::Role;
use serde_json::json;
use testkit::TestEnv;
use testkit::amqp::TestClient;
use webhook_signing::Secret;

fn publisher_config(env: &TestEnv, notifier_url: &str) -> webhook_publisher::Config {
    webhook_publisher::Config {
        common: service_kit::config::CommonConfig {
            http_addr: "127.0.0.1:0".parse().unwrap(),
            amqp_url: env.amqp_url.clone(),
            redis_url: env.redis_url.clone(),
            redis_prefix: env.redis_prefix.clone(),
            data_dir: env.data_dir("webhook-publisher"),
        },
        notifier_url: notifier_url.to_owned(),
        webhook_secret: Secret::parse(SECRET).unwrap(),
        jwt_secret: JWT_SECRET.into(),
        schedule: webhook_publisher::schedule::RetrySchedule::parse_ms("100,200,400", 0.2).unwrap(),
        timeout: Duration::from_secs(5),
        endpoint_concurrency: 4,
        prefetch: 32,
        // Tests send webhooks to sinks on this machine.
        allowed_networks: webhook_publisher::egress::parse_allowed_networks("127.0.0.0/8").unwrap(),
        extra_roots: Default::default(),
        history_retention: Duration::from_secs(30 * 86_400),
        database: None,
        prune_every: webhook_publisher::retention::PRUNE_EVERY,
    }
}

async fn start_publisher(env: &TestEnv, notifier_url: &str) -> service_kit::Running {
    let running = webhook_publisher::spawn(publisher_config(env, notifier_url))
        .await
        .unwrap();
    let ready = format!("{}/ready", running.url());
    let up = testkit::eventually(LONG, || {
        let ready = ready.clone();
        async move {
            reqwest::get(&ready)
                .await
                .ok()?
                .status()
                .is_success()
                .then_some(())
        }
    })
    .await;
    assert!(up.is_some(), "the publisher never became ready");
    running
}

/// Publishes an order event on `saga.events` as the orders service does.
async fn publish_event(client: &TestClient, kind: &str, event: &messaging::contracts::OrderEvent) {
    let msg = OutgoingMessage::json(EVENTS, kind, Some(&event.order_id), event).unwrap();
    publish_message(client, &msg).await.unwrap();
}

/// Waits until `client` has `count` messages of `kind`, and checks there are not more.
async fn stats_after(client: &WsClient, kind: &str, count: usize) -> Vec<serde_json::Value> {
    let all = testkit::eventually(LONG, || async {
        (client.of_type(kind).len() >= count).then_some(())
    })
    .await;
    assert!(
        all.is_some(),
        "{} got {} {kind}, expected {count}",
        client.name,
        client.of_type(kind).len()
    );
    let got = client.of_type(kind);
    assert_eq!(got.len(), count, "{} got too many {kind}", client.name);
    got
}

fn set(items: &[(String, String)]) -> BTreeSet<(String, String)> {
    items.iter().cloned().collect()
}

#[tokio::test]
async fn every_role_gets_exactly_its_events_through_publisher_and_notifier() {
    let env = TestEnv::new("nt-matrix").await.unwrap();
    let notifier = start(config(&env)).await;
    let base = notifier.url();
    let publisher = start_publisher(&env, &format!("{base}/webhooks")).await;
    let amqp = TestClient::connect(&env.amqp_url).await.unwrap();

    let admin = WsClient::connect(&base, "admin", &token(Role::Admin, "root", None)).await;
    let c1 = WsClient::connect(&base, "client c1", &token(Role::Client, "c1", None)).await;
    let c2 = WsClient::connect(&base, "client c2", &token(Role::Client, "c2", None)).await;
    let s1 = WsClient::connect(&base, "seller s1", &token(Role::Seller, "u-s1", Some("s1"))).await;
    let s2 = WsClient::connect(&base, "seller s2", &token(Role::Seller, "u-s2", Some("s2"))).await;
    // A seller whose products nobody ordered, and a client called like a seller id.
    let s9 = WsClient::connect(&base, "seller s9", &token(Role::Seller, "u-s9", Some("s9"))).await;
    let c_s1 = WsClient::connect(&base, "client named s1", &token(Role::Client, "s1", None)).await;

    let kinds = [
        keys::ORDER_CREATED,
        keys::ORDER_CONFIRMED,
        keys::ORDER_REJECTED,
        keys::ORDER_CANCELLED,
    ];
    let mut expected_a = Vec::new();
    let mut expected_b = Vec::new();
    let mut everything = Vec::new();
    for kind in kinds {
        let a = format!("A-{kind}");
        let b = format!("B-{kind}");
        publish_event(&amqp, kind, &event(&a, Some("c1"), Some("s1"))).await;
        publish_event(&amqp, kind, &event(&b, Some("c2"), Some("s2"))).await;
        expected_a.push((kind.to_owned(), a));
        expected_b.push((kind.to_owned(), b));
    }
    // An order with neither customer nor seller: only an admin may see it.
    publish_event(&amqp, keys::ORDER_CREATED, &event("N", None, None)).await;
    everything.extend(expected_a.iter().cloned());
    everything.extend(expected_b.iter().cloned());
    everything.push((keys::ORDER_CREATED.to_owned(), "N".to_owned()));

    // Once the admin has everything, every event is fanned out; a last event per owner then
    // marks the end of each client's stream (one Redis channel, one queue per client: in order).
    let all = testkit::eventually(LONG, || async {
        (admin.order_events().len() >= everything.len()).then_some(())
    })
    .await;
    assert!(all.is_some(), "admin got {:?}", admin.order_events());
    publish_event(
        &amqp,
        keys::ORDER_CREATED,
        &event("end-A", Some("c1"), Some("s1")),
    )
    .await;
    publish_event(
        &amqp,
        keys::ORDER_CREATED,
        &event("end-B", Some("c2"), Some("s2")),
    )
    .await;
    for (client, end) in [
        (&c1, "end-A"),
        (&s1, "end-A"),
        (&c2, "end-B"),
        (&s2, "end-B"),
        (&admin, "end-A"),
        (&admin, "end-B"),
    ] {
        client.wait_for(has_order(end)).await;
    }
    let end = |order: &str| (keys::ORDER_CREATED.to_owned(), order.to_owned());
    expected_a.push(end("end-A"));
    expected_b.push(end("end-B"));
    everything.push(end("end-A"));
    everything.push(end("end-B"));

    for (client, expected) in [
        (&admin, &everything),
        (&c1, &expected_a),
        (&s1, &expected_a),
        (&c2, &expected_b),
        (&s2, &expected_b),
    ] {
        let got = client.order_events();
        assert_eq!(
            set(&got),
            set(expected),
            "{} got the wrong events",
            client.name
        );
        assert_eq!(
            got.len(),
            expected.len(),
            "{} got an event twice: {got:?}",
            client.name
        );
    }
    assert!(
        s9.order_events().is_empty(),
        "a seller saw orders of other sellers"
    );
    assert!(
        c_s1.order_events().is_empty(),
        "a client saw orders by a seller id equal to its sub"
    );

    // Stats: the admin gets one ADMIN_STATS_UPDATED per event, the last one with the totals;
    // a seller gets SELLER_STATS_UPDATED for its own seller id only; clients get none.
    // Each stats message follows its event in the same queue: wait for the last ones to land.
    let admin_stats = stats_after(&admin, "ADMIN_STATS_UPDATED", everything.len()).await;
    assert_eq!(
        admin_stats.last().unwrap()["data"],
        json!({"created": 5, "confirmed": 2, "rejected": 2, "cancelled": 2, "unitsConfirmed": 4})
    );
    let s1_stats = stats_after(&s1, "SELLER_STATS_UPDATED", expected_a.len()).await;
    assert!(s1_stats.iter().all(|m| m["data"]["sellerId"] == "s1"));
    assert_eq!(
        s1_stats.last().unwrap()["data"],
        json!({"sellerId": "s1", "created": 2, "confirmed": 1, "rejected": 1, "cancelled": 1, "unitsConfirmed": 2})
    );
    assert!(
        s2.of_type("SELLER_STATS_UPDATED")
            .iter()
            .all(|m| m["data"]["sellerId"] == "s2")
    );
    for client in [&c1, &c2, &c_s1, &s9] {
        assert!(
            client.of_type("ADMIN_STATS_UPDATED").is_empty(),
            "{} got admin stats",
            client.name
        );
        assert!(
            client.of_type("SELLER_STATS_UPDATED").is_empty(),
            "{} got seller stats",
            client.name
        );
    }
    assert!(s1.of_type("ADMIN_STATS_UPDATED").is_empty());

    publisher.stop().await;
    notifier.stop().await;
    cleanup(env).await;
}

#[tokio::test]
async fn tampered_foreign_or_stale_webhooks_get_401_and_reach_nobody() {
    let env = TestEnv::new("nt-sig").await.unwrap();
    let notifier = start(config(&env)).await;
    let base = notifier.url();
    let admin = WsClient::connect(&base, "admin", &token(Role::Admin, "root", None)).await;
    let secret = Secret::parse(SECRET).unwrap();
    let good = body(keys::ORDER_CREATED, &event("o-sig", Some("c1"), None));
    let ts = now();

    let mut tampered = good.clone();
    let at = tampered.len() - 3;
    tampered[at] = b'X';
    let cases = [
        (
            "tampered body",
            "w1",
            ts,
            secret.sign("w1", ts, &good),
            tampered,
        ),
        (
            "wrong secret",
            "w2",
            ts,
            Secret::generate().sign("w2", ts, &good),
            good.clone(),
        ),
        (
            "stale timestamp",
            "w3",
            ts - 301,
            secret.sign("w3", ts - 301, &good),
            good.clone(),
        ),
        (
            "future timestamp",
            "w4",
            ts + 301,
            secret.sign("w4", ts + 301, &good),
            good.clone(),
        ),
        (
            "signed for another id",
            "w5",
            ts,
            secret.sign("w-other", ts, &good),
            good.clone(),
        ),
        ("no signature", "w6", ts, String::new(), good.clone()),
    ];
    for (case, id, timestamp, signature, body) in cases {
        let response = post_raw(&base, id, timestamp, &signature, body).await;
        assert_eq!(response.status(), 401, "{case}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{case}"
        );
    }
    let wrong_method = reqwest::get(format!("{base}/webhooks")).await.unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(
        wrong_method.headers()["content-type"],
        "application/problem+json"
    );
    let missing = reqwest::Client::new()
        .post(format!("{base}/webhooks"))
        .body(good.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 401);

    // Authentic but not an order event: 400, and nothing is published.
    let junk = br#"{"hello": "world"}"#.to_vec();
    let response = post_raw(&base, "w7", ts, &secret.sign("w7", ts, &junk), junk).await;
    assert_eq!(response.status(), 400);

    // Within the tolerance and correctly signed: accepted and the only event the admin sees.
    let response = post_raw(
        &base,
        "w8",
        ts - 240,
        &secret.sign("w8", ts - 240, &good),
        good.clone(),
    )
    .await;
    assert_eq!(response.status(), 200);
    admin.wait_for(has_order("o-sig")).await;
    assert_eq!(admin.order_events().len(), 1);
    assert_eq!(admin.of_type("order.created")[0]["webhookId"], "w8");

    notifier.stop().await;
    cleanup(env).await;
}

#[tokio::test]
async fn two_instances_both_deliver_and_a_duplicate_reaches_clients_once() {
    let env = TestEnv::new("nt-two").await.unwrap();
    let one = start(config(&env)).await;
    let two = start(config(&env)).await;
    let on_one = WsClient::connect(
        &one.url(),
        "client on one",
        &token(Role::Client, "c1", None),
    )
    .await;
    let on_two = WsClient::connect(
        &two.url(),
        "admin on two",
        &token(Role::Admin, "root", None),
    )
    .await;

    let first = event("o-dup", Some("c1"), Some("s1"));
    let answer = post_signed(&one.url(), "msg_dup", keys::ORDER_CREATED, &first).await;
    assert_eq!(answer["duplicate"], false);
    on_one.wait_for(has_order("o-dup")).await;
    on_two.wait_for(has_order("o-dup")).await;

    // The same webhook again, to either instance: acknowledged, never shown again.
    let again = post_signed(&one.url(), "msg_dup", keys::ORDER_CREATED, &first).await;
    assert_eq!(again["duplicate"], true);
    let again = post_signed(&two.url(), "msg_dup", keys::ORDER_CREATED, &first).await;
    assert_eq!(again["duplicate"], true);
    post_signed(
        &two.url(),
        "msg_end",
        keys::ORDER_CONFIRMED,
        &event("o-end", Some("c1"), None),
    )
    .await;
    on_one.wait_for(has_order("o-end")).await;
    on_two.wait_for(has_order("o-end")).await;
    for client in [&on_one, &on_two] {
        let dup = client
            .order_events()
            .iter()
            .filter(|(_, order)| order == "o-dup")
            .count();
        assert_eq!(
            dup, 1,
            "{} saw the duplicate webhook {dup} times",
            client.name
        );
    }

    one.stop().await;
    two.stop().await;
    cleanup(env).await;
}

#[tokio::test]
async fn bad_tokens_get_401_before_the_upgrade() {
    let env = TestEnv::new("nt-token").await.unwrap();
    let notifier = start(config(&env)).await;
    let base = notifier.url();
    let ws = base.replacen("http", "ws", 1);
    let expired = notifier::auth::issue(
        JWT_SECRET.as_bytes(),
        &notifier::auth::Claims {
            sub: "c1".into(),
            role: Role::Client,
            seller_id: None,
            exp: 1_000,
        },
    )
    .unwrap();
    let foreign = notifier::auth::issue(
        b"another-secret",
        &notifier::auth::Claims {
            sub: "c1".into(),
            role: Role::Admin,
            seller_id: None,
            exp: now() as u64 + 600,
        },
    )
    .unwrap();
    let seller_without_id = token(Role::Seller, "u", None);
    for (case, query) in [
        ("no token", String::new()),
        ("garbage", "?token=abc".to_owned()),
        ("expired", format!("?token={expired}")),
        ("other secret", format!("?token={foreign}")),
        (
            "seller without seller_id",
            format!("?token={seller_without_id}"),
        ),
    ] {
        match tokio_tungstenite::connect_async(format!("{ws}/ws{query}")).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 401, "{case}");
            }
            other => panic!(
                "{case}: expected a 401, got {:?}",
                other.map(|(_, r)| r.status())
            ),
        }
    }
    let plain = reqwest::get(format!("{base}/ws?token={expired}"))
        .await
        .unwrap();
    assert_eq!(plain.status(), 401);
    assert_eq!(plain.headers()["content-type"], "application/problem+json");
    let good_but_no_upgrade =
        reqwest::get(format!("{base}/ws?token={}", token(Role::Admin, "a", None)))
            .await
            .unwrap();
    assert_eq!(good_but_no_upgrade.status(), 400);

    notifier.stop().await;
    cleanup(env).await;
}

#[tokio::test]
async fn rooms_are_joined_only_when_the_token_allows_and_narrow_the_feed() {
    let env = TestEnv::new("nt-rooms").await.unwrap();
    let notifier = start(config(&env)).await;
    let base = notifier.url();
    let c1 = WsClient::connect(&base, "client c1", &token(Role::Client, "c1", None)).await;
    let s2 = WsClient::connect(&base, "seller s2", &token(Role::Seller, "u", Some("s2"))).await;
    let admin = WsClient::connect(&base, "admin", &token(Role::Admin, "root", None)).await;

    post_signed(
        &base,
        "r1",
        keys::ORDER_CREATED,
        &event("o1", Some("c1"), Some("s1")),
    )
    .await;
    post_signed(
        &base,
        "r2",
        keys::ORDER_CREATED,
        &event("o2", Some("c1"), Some("s1")),
    )
    .await;
    post_signed(
        &base,
        "r3",
        keys::ORDER_CREATED,
        &event("o3", Some("c2"), Some("s2")),
    )
    .await;
    admin.wait_for(has_order("o3")).await;

    async fn ask(client: &WsClient, message: serde_json::Value) {
        client.send(message).await
    }
    // Someone else's order, an order never seen, a room that is not an order: refused.
    ask(&c1, json!({"type": "join", "room": "order-o3"})).await;
    let refused = c1.wait_for(|m| m["type"] == "error").await;
    assert_eq!(refused["code"], "forbidden");
    ask(&c1, json!({"type": "join", "room": "order-never-seen"})).await;
    ask(&c1, json!({"type": "join", "room": "lobby"})).await;
    ask(&c1, json!({"type": "dance"})).await;
    let errors = testkit::eventually(LONG, || async {
        let errors = c1.of_type("error");
        (errors.len() == 4).then_some(errors)
    })
    .await
    .unwrap();
    let codes: Vec<_> = errors
        .iter()
        .map(|e| e["code"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        codes,
        ["forbidden", "forbidden", "unknown-room", "bad-message"]
    );
    ask(&s2, json!({"type": "join", "room": "order-o1"})).await;
    assert_eq!(
        s2.wait_for(|m| m["type"] == "error").await["code"],
        "forbidden"
    );

    // Its own order, and a seller's own order: allowed.
    ask(&c1, json!({"type": "join", "room": "order-o1"})).await;
    c1.wait_for(|m| m["type"] == "joined" && m["room"] == "order-o1")
        .await;
    ask(&s2, json!({"type": "join", "room": "order-o3"})).await;
    s2.wait_for(|m| m["type"] == "joined").await;

    // In the room, c1 sees only o1's events; after leaving, all of its own again.
    post_signed(
        &base,
        "r4",
        keys::ORDER_CONFIRMED,
        &event("o2", Some("c1"), Some("s1")),
    )
    .await;
    post_signed(
        &base,
        "r5",
        keys::ORDER_CONFIRMED,
        &event("o1", Some("c1"), Some("s1")),
    )
    .await;
    c1.wait_for(|m| m["type"] == "order.confirmed" && m["data"]["orderId"] == "o1")
        .await;
    assert!(
        !c1.order_events()
            .contains(&("order.confirmed".into(), "o2".into()))
    );
    ask(&c1, json!({"type": "leave", "room": "order-o1"})).await;
    c1.wait_for(|m| m["type"] == "left").await;
    post_signed(
        &base,
        "r6",
        keys::ORDER_CANCELLED,
        &event("o2", Some("c1"), Some("s1")),
    )
    .await;
    c1.wait_for(|m| m["type"] == "order.cancelled" && m["data"]["orderId"] == "o2")
        .await;

    ask(&c1, json!({"type": "ping"})).await;
    c1.wait_for(|m| m["type"] == "pong").await;

    notifier.stop().await;
    cleanup(env).await;
}

#[tokio::test]
async fn a_silent_client_is_disconnected_and_a_live_one_is_kept() {
    let env = TestEnv::new("nt-ping").await.unwrap();
    let mut cfg = config(&env);
    cfg.ping_interval = Duration::from_millis(200);
    let notifier = start(cfg).await;
    let base = notifier.url();
    let live = WsClient::connect(&base, "live", &token(Role::Admin, "root", None)).await;

    // A client that never reads never answers the pings.
    let url = format!(
        "{}/ws?token={}",
        base.replacen("http", "ws", 1),
        token(Role::Admin, "mute", None)
    );
    let (mut silent, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ended = tokio::time::timeout(LONG, async {
        use futures::StreamExt;
        loop {
            match silent.next().await {
                None | Some(Err(_)) => break,
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_))) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the silent client was not disconnected");

    // The client that reads (and so answers pings) is still there after many intervals.
    assert!(!live.is_closed());
    post_signed(
        &base,
        "k1",
        keys::ORDER_CREATED,
        &event("o-live", None, None),
    )
    .await;
    live.wait_for(has_order("o-live")).await;

    notifier.stop().await;
    cleanup(env).await;
}

#[tokio::test]
async fn a_redis_outage_is_a_503_the_sender_retries_and_the_notifier_recovers() {
    let env = TestEnv::new("nt-redis").await.unwrap();
    let mut redis = testkit::redis_server::RedisServer::private().await.unwrap();
    let mut cfg = config(&env);
    cfg.common.redis_url = redis.url();
    let notifier = start(cfg).await;
    let base = notifier.url();
    let admin = WsClient::connect(&base, "admin", &token(Role::Admin, "root", None)).await;
    let ready_status = || async {
        reqwest::get(format!("{base}/ready"))
            .await
            .unwrap()
            .status()
            .as_u16()
    };

    redis.sigkill().await;
    let down = testkit::eventually(LONG, || async {
        (ready_status().await == 503).then_some(())
    })
    .await;
    assert!(down.is_some(), "/ready still says ready without Redis");
    let outage = event("o-outage", Some("c1"), None);
    let body = body(keys::ORDER_CREATED, &outage);
    let ts = now();
    let signature = Secret::parse(SECRET).unwrap().sign("msg_outage", ts, &body);
    let refused = post_raw(&base, "msg_outage", ts, &signature, body.clone()).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );

    // Redis is back: the listener resubscribes and the retried webhook goes through once.
    redis.start().await.unwrap();
    let up = testkit::eventually(LONG, || async {
        (ready_status().await == 200).then_some(())
    })
    .await;
    assert!(
        up.is_some(),
        "the notifier did not recover after Redis came back"
    );
    let accepted = testkit::eventually(LONG, || async {
        // Each try is a fresh attempt, as the publisher would send it: new timestamp, same id.
        let ts = now();
        let signature = Secret::parse(SECRET).unwrap().sign("msg_outage", ts, &body);
        let response = post_raw(&base, "msg_outage", ts, &signature, body.clone()).await;
        (response.status() == 200).then_some(())
    })
    .await;
    assert!(accepted.is_some());
    admin.wait_for(has_order("o-outage")).await;
    assert_eq!(admin.order_events().len(), 1);

    notifier.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn stock_changes_reach_admins_and_the_products_seller_as_stock_updated() {
    let env = TestEnv::new("nt-stock").await.unwrap();
    let notifier = start(config(&env)).await;
    let base = notifier.url();
    let admin = WsClient::connect(&base, "admin", &token(Role::Admin, "root", None)).await;
    let s1 = WsClient::connect(&base, "seller s1", &token(Role::Seller, "u-s1", Some("s1"))).await;
    let s2 = WsClient::connect(&base, "seller s2", &token(Role::Seller, "u-s2", Some("s2"))).await;
    let c1 = WsClient::connect(&base, "client c1", &token(Role::Client, "c1", None)).await;
    // A seller in a room still gets its stock changes: rooms narrow order events only.
    admin
        .send(json!({"type": "join", "room": "order-elsewhere"}))
        .await;
    admin.wait_for(|m| m["type"] == "joined").await;

    let first = post_signed_body(
        &base,
        "st-1",
        stock_body("p1", Some("s1"), 10, 10, "created"),
    )
    .await;
    assert_eq!(first["duplicate"], false);
    post_signed_body(
        &base,
        "st-2",
        stock_body("p2", Some("s2"), 4, -1, "reserved"),
    )
    .await;
    post_signed_body(
        &base,
        "st-3",
        stock_body("p1", Some("s1"), 9, -1, "reserved"),
    )
    .await;
    // Delivered twice: fanned out once.
    let again = post_signed_body(
        &base,
        "st-3",
        stock_body("p1", Some("s1"), 9, -1, "reserved"),
    )
    .await;
    assert_eq!(again["duplicate"], true);
    post_signed_body(&base, "st-4", stock_body("p0", None, 1, 1, "released")).await;
    // A marker every client may see, so that whatever was meant for them has arrived too.
    post_signed(
        &base,
        "marker",
        keys::ORDER_CREATED,
        &event("marker", Some("c1"), Some("s1")),
    )
    .await;
    c1.wait_for(has_order("marker")).await;
    s1.wait_for(has_order("marker")).await;
    admin
        .wait_for(|m| m["type"] == "stock.updated" && m["data"]["productId"] == "p0")
        .await;

    let seen = |client: &WsClient| -> Vec<(String, i64)> {
        client
            .of_type("stock.updated")
            .iter()
            .map(|m| {
                (
                    m["data"]["productId"].as_str().unwrap().to_owned(),
                    m["data"]["stock"].as_i64().unwrap(),
                )
            })
            .collect()
    };
    let pairs = |items: &[(&str, i64)]| -> Vec<(String, i64)> {
        items.iter().map(|(p, s)| (p.to_string(), *s)).collect()
    };
    assert_eq!(
        seen(&admin),
        pairs(&[("p1", 10), ("p2", 4), ("p1", 9), ("p0", 1)])
    );
    assert_eq!(seen(&s1), pairs(&[("p1", 10), ("p1", 9)]));
    s2.wait_for(|m| m["type"] == "stock.updated").await;
    assert_eq!(seen(&s2), pairs(&[("p2", 4)]));
    assert!(seen(&c1).is_empty(), "a client got stock changes");
    let message = &admin.of_type("stock.updated")[1];
    assert_eq!(message["webhookId"], "st-2");
    assert_eq!(
        message["data"],
        json!({"productId": "p2", "sellerId": "s2", "stock": 4, "delta": -1, "reason": "reserved"})
    );
    // Stock changes count in no order stats: the marker's are the only ones.
    admin.wait_for(|m| m["type"] == "ADMIN_STATS_UPDATED").await;
    assert_eq!(admin.of_type("ADMIN_STATS_UPDATED").len(), 1);

    // A stock change products never sends is refused, and reaches nobody.
    let bad = stock_body("p9", Some("s1"), 1, 1, "stolen");
    let ts = now();
    let signature = Secret::parse(SECRET).unwrap().sign("st-bad", ts, &bad);
    let response = post_raw(&base, "st-bad", ts, &signature, bad).await;
    assert_eq!(response.status(), 400);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("product.stockChanged"),
        "{problem}"
    );

    notifier.stop().await;
    cleanup(env).await;
}

#[tokio::test]
async fn decisions_per_minute_are_counted_once_and_shown_by_role() {
    let env = TestEnv::new("nt-minutes").await.unwrap();
    let notifier = start(config(&env)).await;
    let base = notifier.url();
    let decided = |order: &str, seller: &str, status: &str| {
        let mut e = event(order, Some("c1"), Some(seller));
        e.status = status.to_owned();
        e.occurred_at = now_rfc3339();
        e
    };
    // d2 is delivered twice: counted once.
    let decisions = [
        ("d1", keys::ORDER_CREATED, "o1", "s1", "PENDING"),
        ("d2", keys::ORDER_CONFIRMED, "o1", "s1", "CONFIRMED"),
        ("d2", keys::ORDER_CONFIRMED, "o1", "s1", "CONFIRMED"),
        ("d3", keys::ORDER_REJECTED, "o2", "s2", "REJECTED"),
        ("d4", keys::ORDER_CANCELLED, "o3", "s1", "CANCELLED"),
        ("d5", keys::ORDER_CONFIRMED, "o4", "s2", "CONFIRMED"),
    ];
    for (id, kind, order, seller, status) in decisions {
        post_signed(&base, id, kind, &decided(order, seller, status)).await;
    }

    let http = reqwest::Client::new();
    let get = |token: Option<String>| {
        let mut request = http.get(format!("{base}/decisions"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let totals = |answer: &serde_json::Value| {
        let minutes = answer["minutes"].as_array().unwrap();
        assert_eq!(minutes.len(), 60);
        let last = minutes.last().unwrap()["at"].as_i64().unwrap();
        assert!((now() * 1000 - last) < 61_000, "the last minute is not now");
        let sum = |field: &str| {
            minutes
                .iter()
                .map(|m| m[field].as_i64().unwrap())
                .sum::<i64>()
        };
        (sum("confirmed"), sum("rejected"), sum("cancelled"))
    };
    let admin: serde_json::Value = get(Some(token(Role::Admin, "root", None)))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(totals(&admin), (2, 1, 1));
    let s1: serde_json::Value = get(Some(token(Role::Seller, "u", Some("s1"))))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(totals(&s1), (1, 0, 1));
    let client = get(Some(token(Role::Client, "c1", None))).await.unwrap();
    assert_eq!(client.status(), 403);
    let nobody = get(None).await.unwrap();
    assert_eq!(nobody.status(), 401);

    // Every minute's hash expires (it gets its TTL when its first count is made, not at every
    // decision), and within the two hours the chart needs.
    let mut redis = redis::Client::open(env.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let minute_keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}decisions:*", env.redis_prefix))
        .query_async(&mut redis)
        .await
        .unwrap();
    // The admin's minute and the two sellers' (one minute, or two if the test crossed one).
    assert!((3..=6).contains(&minute_keys.len()), "{minute_keys:?}");
    for key in minute_keys {
        let ttl: i64 = redis::cmd("TTL")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        let most = notifier::bus::MINUTES_TTL.as_secs() as i64;
        assert!(ttl > most - 60 && ttl <= most, "{key} expires in {ttl} s");
    }

    notifier.stop().await;
    cleanup(env).await;
}
