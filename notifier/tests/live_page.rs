//! The live page in headless Chromium (Debian's `chromium` package), driven over the Chrome
//! DevTools Protocol: open `/#token=<jwt>`, see the connected badge, publish an order event on
//! `saga.events` and see it appear on the page through publisher and notifier; then restart the
//! notifier on the same port and see the page go "reconnecting" and come back by itself.
//!
//! `scripts/test-webhooks.sh` installs chromium before running the tests. Without chromium the
//! test fails when `CI` is set and is skipped (with the reason printed) otherwise.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use e2e::TestEnv;
use e2e::amqp::TestClient;
use futures::{SinkExt, StreamExt};
use messaging::OutgoingMessage;
use messaging::signature::Secret;
use messaging::topology::{EVENTS, keys};
use notifier::auth::Role;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn find_chromium() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// A minimal Chrome DevTools Protocol client: one page, request/response by id.
struct Cdp {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Cdp {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({"id": id, "method": method, "params": params});
        self.socket
            .send(Message::Text(request.to_string().into()))
            .await
            .unwrap();
        loop {
            let message = self
                .socket
                .next()
                .await
                .expect("devtools connection closed")
                .unwrap();
            if let Message::Text(text) = message {
                let value: Value = serde_json::from_str(text.as_str()).unwrap();
                if value["id"] == id {
                    return value;
                }
            }
        }
    }

    /// Evaluates a JavaScript expression in the page and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let answer = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        answer["result"]["result"]["value"].clone()
    }

    async fn wait_until(&mut self, expression: &str, what: &str, pred: impl Fn(&Value) -> bool) {
        let deadline = tokio::time::Instant::now() + LONG;
        loop {
            let value = self.eval(expression).await;
            if pred(&value) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page never showed {what}; last: {value}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn launch(chromium: &PathBuf, profile: &std::path::Path) -> (tokio::process::Child, Cdp) {
    let child = tokio::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--remote-debugging-port=0",
            "--remote-allow-origins=*",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromium");
    // Chromium writes the port it chose for DevTools into its profile.
    let port_file = profile.join("DevToolsActivePort");
    let port = e2e::eventually(LONG, || async {
        let text = tokio::fs::read_to_string(&port_file).await.ok()?;
        text.lines().next()?.trim().parse::<u16>().ok()
    })
    .await
    .expect("chromium did not open its DevTools port");
    let targets: Value = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let page = targets
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "page")
        .expect("chromium has no page");
    let url = page["webSocketDebuggerUrl"].as_str().unwrap();
    let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    (child, Cdp { socket, next_id: 0 })
}

async fn publish_order(amqp: &TestClient, order_id: &str) {
    let event = event(order_id, Some("c1"), Some("s1"));
    let msg = OutgoingMessage::json(EVENTS, keys::ORDER_CREATED, Some(order_id), &event).unwrap();
    amqp.publish_message(&msg).await.unwrap();
}

const STATUS: &str = "document.getElementById('status').textContent";
const FEED: &str = "[...document.querySelectorAll('#feed li')].map(li => li.dataset.type + ':' + (li.dataset.orderId || '')).join(',')";

fn contains(needle: &'static str) -> impl Fn(&Value) -> bool {
    move |v: &Value| v.as_str().is_some_and(|s| s.contains(needle))
}

#[tokio::test]
async fn the_live_page_shows_events_and_reconnects_by_itself() {
    let Some(chromium) = find_chromium() else {
        if std::env::var_os("CI").is_some() {
            panic!("chromium is not installed; run scripts/test-webhooks.sh, which installs it");
        }
        eprintln!(
            "SKIPPED the_live_page_shows_events_and_reconnects_by_itself: chromium is not installed (apt-get install -y chromium, or run scripts/test-webhooks.sh)"
        );
        return;
    };
    let env = TestEnv::new("nt-page").await.unwrap();
    let notifier = start(config(&env)).await;
    let addr = notifier.addr;
    let publisher_config = webhook_publisher::Config {
        common: messaging::config::CommonConfig {
            http_addr: "127.0.0.1:0".parse().unwrap(),
            amqp_url: env.amqp_url.clone(),
            redis_url: env.redis_url.clone(),
            redis_prefix: env.redis_prefix.clone(),
            data_dir: env.data_dir("webhook-publisher"),
        },
        notifier_url: format!("{}/webhooks", notifier.url()),
        webhook_secret: Secret::parse(SECRET).unwrap(),
        schedule: webhook_publisher::schedule::RetrySchedule::parse_ms("100,200,400,800,1600", 0.2)
            .unwrap(),
        timeout: Duration::from_secs(5),
        endpoint_concurrency: 4,
        prefetch: 32,
    };
    let publisher = webhook_publisher::spawn(publisher_config).await.unwrap();
    let amqp = e2e::eventually(LONG, || async {
        TestClient::connect(&env.amqp_url).await.ok()
    })
    .await
    .unwrap();
    // The publisher declares the topology when it connects; wait for it before publishing.
    let ready = format!("{}/ready", publisher.url());
    e2e::eventually(LONG, || async {
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
    let (mut browser, mut cdp) = launch(&chromium, profile.path()).await;
    let page = format!(
        "{}/#token={}",
        notifier.url(),
        token(Role::Admin, "root", None)
    );
    cdp.call("Page.navigate", json!({"url": page})).await;
    cdp.wait_until(STATUS, "connected", |v| v == "connected")
        .await;
    cdp.wait_until(
        "document.getElementById('who').textContent",
        "who is signed in",
        contains("ADMIN"),
    )
    .await;

    publish_order(&amqp, "live-1").await;
    cdp.wait_until(FEED, "the first order", contains("order.created:live-1"))
        .await;

    // The notifier goes away: the badge says so; it comes back on the same port: the page
    // reconnects without anyone touching it and shows the next event.
    notifier.stop().await;
    cdp.wait_until(STATUS, "reconnecting", |v| v == "reconnecting")
        .await;
    let mut again = config(&env);
    again.common.http_addr = addr;
    let notifier = start(again).await;
    cdp.wait_until(STATUS, "connected again", |v| v == "connected")
        .await;
    publish_order(&amqp, "live-2").await;
    cdp.wait_until(FEED, "the second order", contains("order.created:live-2"))
        .await;

    browser.kill().await.unwrap();
    publisher.stop().await;
    notifier.stop().await;
    cleanup(env).await;
}
