//! The live page in headless Chromium (Debian's `chromium` package), driven over the Chrome
//! DevTools Protocol: open `/#token=<jwt>`, see the connected badge, publish an order event on
//! `saga.events` and see it appear on the page through publisher and notifier; then restart the
//! notifier on the same port and see the page go "reconnecting" and come back by itself.
//!
//! The browser is driven by `testkit::browser`; `scripts/ensure-test-tools.sh` installs chromium.
//! Without chromium the test fails, saying so.

mod common;

use std::time::Duration;

use common::*;
use messaging::OutgoingMessage;
use messaging::topology::{EVENTS, keys};
use notifier::auth::Role;
use serde_json::Value;
use testkit::TestEnv;
use testkit::amqp::TestClient;
use testkit::browser::Browser;
use webhook_signing::Secret;

async fn publish_order(amqp: &TestClient, order_id: &str) {
    let event = event(order_id, Some("c1"), Some("s1"));
    let msg = OutgoingMessage::json(EVENTS, keys::ORDER_CREATED, Some(order_id), &event).unwrap();
    publish_message(amqp, &msg).await.unwrap();
}

const STATUS: &str = "document.getElementById('status').textContent";
const FEED: &str = "[...document.querySelectorAll('#feed li')].map(li => li.dataset.type + ':' + (li.dataset.orderId || '')).join(',')";

fn contains(needle: &'static str) -> impl Fn(&Value) -> bool {
    move |v: &Value| v.as_str().is_some_and(|s| s.contains(needle))
}

#[tokio::test]
async fn the_live_page_shows_events_and_reconnects_by_itself() {
    let env = TestEnv::new("nt-page").await.unwrap();
    let notifier = start(config(&env)).await;
    let addr = notifier.addr;
    let publisher_config = webhook_publisher::Config {
        common: service_kit::config::CommonConfig {
            http_addr: "127.0.0.1:0".parse().unwrap(),
            amqp_url: env.amqp_url.clone(),
            redis_url: env.redis_url.clone(),
            redis_prefix: env.redis_prefix.clone(),
            data_dir: env.data_dir("webhook-publisher"),
        },
        notifier_url: format!("{}/webhooks", notifier.url()),
        webhook_secret: Secret::parse(SECRET).unwrap(),
        jwt_secret: JWT_SECRET.into(),
        schedule: webhook_publisher::schedule::RetrySchedule::parse_ms("100,200,400,800,1600", 0.2)
            .unwrap(),
        timeout: Duration::from_secs(5),
        endpoint_concurrency: 4,
        prefetch: 32,
        // Tests send webhooks to sinks on this machine.
        allowed_networks: webhook_publisher::egress::parse_allowed_networks("127.0.0.0/8").unwrap(),
        extra_roots: Default::default(),
        history_retention: Duration::from_secs(30 * 86_400),
        database: None,
        prune_every: webhook_publisher::retention::PRUNE_EVERY,
    };
    let publisher = webhook_publisher::spawn(publisher_config).await.unwrap();
    let amqp = testkit::eventually(LONG, || async {
        TestClient::connect(&env.amqp_url).await.ok()
    })
    .await
    .unwrap();
    // The publisher declares the topology when it connects; wait for it before publishing.
    let ready = format!("{}/ready", publisher.url());
    testkit::eventually(LONG, || async {
        reqwest::get(&ready)
            .await
            .ok()?
            .status()
            .is_success()
            .then_some(())
    })
    .await
    .expect("publisher not ready");

    let profile = tempfile::tempdir().unwrap();
    // Fails (never skips) when chromium is not installed.
    let mut cdp = Browser::launch(profile.path()).await.unwrap();
    let page = format!(
        "{}/#token={}",
        notifier.url(),
        token(Role::Admin, "root", None)
    );
    cdp.open(&page).await.unwrap();
    cdp.wait_until(STATUS, "connected", LONG, |v| v == "connected")
        .await
        .unwrap();
    cdp.wait_until(
        "document.getElementById('who').textContent",
        "who is signed in",
        LONG,
        contains("ADMIN"),
    )
    .await
    .unwrap();

    publish_order(&amqp, "live-1").await;
    cdp.wait_until(
        FEED,
        "the first order",
        LONG,
        contains("order.created:live-1"),
    )
    .await
    .unwrap();

    // The notifier goes away: the badge says so; it comes back on the same port: the page
    // reconnects without anyone touching it and shows the next event.
    notifier.stop().await;
    cdp.wait_until(STATUS, "reconnecting", LONG, |v| v == "reconnecting")
        .await
        .unwrap();
    let mut again = config(&env);
    again.common.http_addr = addr;
    let notifier = start(again).await;
    cdp.wait_until(STATUS, "connected again", LONG, |v| v == "connected")
        .await
        .unwrap();
    publish_order(&amqp, "live-2").await;
    cdp.wait_until(
        FEED,
        "the second order",
        LONG,
        contains("order.created:live-2"),
    )
    .await
    .unwrap();

    drop(cdp);
    publisher.stop().await;
    notifier.stop().await;
    cleanup(env).await;
}
