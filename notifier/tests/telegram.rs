//! The Telegram sink against a stand-in for the Bot API (this test's own HTTP server on
//! 127.0.0.1), with the notifier on real Redis: one message per decision to the right chats, no
//! duplicate for a webhook delivered twice, a 429 retried after its `retry_after`, a 500 and a
//! timeout retried, and WebSocket clients served while Telegram hangs (a full queue drops).

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::*;
use messaging::topology::keys;
use notifier::auth::Role;
use notifier::telegram::{Retry, Settings};
use serde_json::{Value, json};
use testkit::TestEnv;

const BOT_TOKEN: &str = "4242:stand-in-secret";

/// What the stand-in does with one request.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Ok,
    TooMany {
        retry_after: u64,
    },
    ServerError,
    /// Never answers.
    Hang,
}

#[derive(Debug, Clone)]
struct Received {
    path_token: String,
    body: Value,
    at: Instant,
}

#[derive(Default)]
struct StandIn {
    script: Mutex<VecDeque<Answer>>,
    /// What to do once the script is used up.
    otherwise: Mutex<Option<Answer>>,
    received: Mutex<Vec<Received>>,
}

async fn send_message(
    State(stand_in): State<Arc<StandIn>>,
    Path((bot, method)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> Response {
    assert_eq!(method, "sendMessage");
    stand_in.received.lock().unwrap().push(Received {
        path_token: bot.strip_prefix("bot").unwrap_or("").to_owned(),
        body,
        at: Instant::now(),
    });
    let next = stand_in.script.lock().unwrap().pop_front();
    let answer = next
        .or(*stand_in.otherwise.lock().unwrap())
        .unwrap_or(Answer::Ok);
    match answer {
        Answer::Ok => Json(json!({"ok": true, "result": {"message_id": 1}})).into_response(),
        Answer::TooMany { retry_after } => (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({"ok": false, "error_code": 429,
                "description": format!("Too Many Requests: retry after {retry_after}"),
                "parameters": {"retry_after": retry_after}})),
        )
            .into_response(),
        Answer::ServerError => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"ok": false, "error_code": 500, "description": "Internal Server Error"})),
        )
            .into_response(),
        Answer::Hang => std::future::pending().await,
    }
}

/// The stand-in's server; stops when dropped.
struct Server {
    url: String,
    state: Arc<StandIn>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(script: &[Answer], otherwise: Option<Answer>) -> Self {
        let state = Arc::new(StandIn::default());
        state.script.lock().unwrap().extend(script.iter().copied());
        *state.otherwise.lock().unwrap() = otherwise;
        let app = axum::Router::new()
            .route("/{bot}/{method}", axum::routing::post(send_message))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, state, task }
    }

    fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits until at least `count` requests arrived; returns them all.
    async fn wait_for(&self, count: usize) -> Vec<Received> {
        let got = testkit::eventually(LONG, || async {
            let received = self.received();
            (received.len() >= count).then_some(received)
        })
        .await;
        got.unwrap_or_else(|| {
            panic!(
                "the stand-in got {} requests, expected {count}: {:?}",
                self.received().len(),
                self.received()
            )
        })
    }
}

fn settings(api_url: &str, seller_chats: &str) -> Settings {
    let vars = [
        ("TELEGRAM_BOT_TOKEN", BOT_TOKEN),
        ("TELEGRAM_CHAT_ID", "-100"),
        ("TELEGRAM_API_URL", api_url),
        ("TELEGRAM_SELLER_CHATS", seller_chats),
        ("TELEGRAM_TIMEOUT_MS", "500"),
    ];
    let mut settings = Settings::from_lookup(|name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    })
    .unwrap()
    .unwrap();
    settings.retry = Retry {
        min_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(200),
        max_attempts: 6,
        max_retry_after: Duration::from_secs(5),
    };
    settings
}

fn decided(
    order: &str,
    seller: Option<&str>,
    status: &str,
    reason: Option<&str>,
) -> messaging::contracts::OrderEvent {
    let mut e = event(order, Some("alice"), seller);
    e.status = status.to_owned();
    e.reason = reason.map(str::to_owned);
    e
}

fn chat_and_text(r: &Received) -> (i64, String) {
    (
        r.body["chat_id"].as_i64().expect("a numeric chat id"),
        r.body["text"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn every_decision_is_sent_once_to_the_main_chat_and_its_sellers_chat() {
    let stand_in = Server::start(&[], None).await;
    let env = TestEnv::new("nt-tg-chats").await.unwrap();
    let mut config = config(&env);
    config.telegram = Some(settings(&stand_in.url, "s1:-101, s3:-103"));
    let notifier = start(config).await;
    let base = notifier.url();

    // order.created is no decision; the confirmation is delivered twice (same webhook id).
    post_signed(
        &base,
        "tg-1",
        keys::ORDER_CREATED,
        &decided("o1", Some("s1"), "PENDING", None),
    )
    .await;
    let confirmed = decided("o1", Some("s1"), "CONFIRMED", None);
    post_signed(&base, "tg-2", keys::ORDER_CONFIRMED, &confirmed).await;
    let again = post_signed(&base, "tg-2", keys::ORDER_CONFIRMED, &confirmed).await;
    assert_eq!(again["duplicate"], true);
    post_signed(
        &base,
        "tg-3",
        keys::ORDER_REJECTED,
        &decided(
            "o2",
            Some("s2"),
            "REJECTED",
            Some("insufficient stock *_<b>"),
        ),
    )
    .await;
    post_signed(
        &base,
        "tg-4",
        keys::ORDER_CANCELLED,
        &decided(
            "o3",
            Some("s1"),
            "CANCELLED",
            Some("no stock answer in time"),
        ),
    )
    .await;
    // o1 ×2 chats, o2 ×1, o3 ×2; then a marker, sent after all of them by the one sender task,
    // shows nothing else was on its way.
    stand_in.wait_for(5).await;
    post_signed(
        &base,
        "tg-5",
        keys::ORDER_CONFIRMED,
        &decided("marker", None, "CONFIRMED", None),
    )
    .await;
    let received = stand_in.wait_for(6).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received_later = stand_in.received();
    assert_eq!(
        received_later.len(),
        6,
        "more messages than decisions × chats: {received_later:?}"
    );

    let mut sent: Vec<(i64, String)> = received.iter().map(chat_and_text).collect();
    for r in &received {
        assert_eq!(r.path_token, BOT_TOKEN, "sent to the wrong bot");
        assert!(
            r.body.get("parse_mode").is_none(),
            "plain text has no parse_mode"
        );
    }
    let marker = sent.pop().unwrap();
    assert_eq!(
        marker,
        (
            -100,
            "Order marker confirmed: 2 × product product-1, customer alice.".to_owned()
        )
    );
    sent.sort();
    let o1 = "Order o1 confirmed: 2 × product product-1, customer alice, seller s1.";
    let o2 = "Order o2 rejected: 2 × product product-1, customer alice, seller s2. Reason: insufficient stock *_<b>";
    let o3 = "Order o3 cancelled: 2 × product product-1, customer alice, seller s1. Reason: no stock answer in time";
    let mut expected: Vec<(i64, String)> =
        [(-100, o1), (-101, o1), (-100, o2), (-100, o3), (-101, o3)]
            .into_iter()
            .map(|(chat, text)| (chat, text.to_owned()))
            .collect();
    expected.sort();
    assert_eq!(sent, expected);
    assert!(metric(&base, r#"telegram_messages_total{outcome="sent"}"#).await >= 6.0);

    notifier.stop().await;
    cleanup(env).await;
}

#[tokio::test]
async fn a_429_waits_its_retry_after_and_a_500_or_a_timeout_is_retried() {
    let stand_in = Server::start(
        &[
            Answer::TooMany { retry_after: 1 },
            Answer::ServerError,
            Answer::Hang,
        ],
        None,
    )
    .await;
    let env = TestEnv::new("nt-tg-retry").await.unwrap();
    let mut config = config(&env);
    config.telegram = Some(settings(&stand_in.url, ""));
    let notifier = start(config).await;
    let base = notifier.url();
    let rate_limited = metric(&base, r#"telegram_messages_total{outcome="rate_limited"}"#).await;

    post_signed(
        &base,
        "tg-r1",
        keys::ORDER_CONFIRMED,
        &decided("r1", Some("s1"), "CONFIRMED", None),
    )
    .await;
    let received = stand_in.wait_for(4).await;
    // The fourth attempt was answered 200: nothing more comes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stand_in.received().len(), 4, "{:?}", stand_in.received());
    for r in &received {
        assert_eq!(r.body, received[0].body, "a retry sent something else");
    }
    let gap = |i: usize| received[i + 1].at - received[i].at;
    // The backoff here is 50–200 ms, so a gap of a second is Telegram's retry_after obeyed.
    assert!(
        gap(0) >= Duration::from_millis(950),
        "429 retried after {:?}",
        gap(0)
    );
    assert!(
        gap(1) >= Duration::from_millis(50),
        "500 retried after {:?}",
        gap(1)
    );
    assert!(
        gap(1) < Duration::from_millis(900),
        "500 retried after {:?}",
        gap(1)
    );
    // The hanging request took the client's 500 ms timeout before the retry.
    assert!(
        gap(2) >= Duration::from_millis(500),
        "timeout retried after {:?}",
        gap(2)
    );
    assert!(
        metric(&base, r#"telegram_messages_total{outcome="rate_limited"}"#).await > rate_limited
    );
    for outcome in ["server_error", "timeout", "sent"] {
        let sample = format!(r#"telegram_messages_total{{outcome="{outcome}"}}"#);
        assert!(metric(&base, &sample).await >= 1.0, "{sample} not counted");
    }

    notifier.stop().await;
    cleanup(env).await;
}

#[tokio::test]
async fn websocket_clients_are_served_while_telegram_hangs_and_a_full_queue_drops() {
    let stand_in = Server::start(&[], Some(Answer::Hang)).await;
    let env = TestEnv::new("nt-tg-hang").await.unwrap();
    let mut config = config(&env);
    let mut telegram = settings(&stand_in.url, "");
    telegram.timeout = Duration::from_secs(60);
    telegram.queue_capacity = 2;
    config.telegram = Some(telegram);
    let notifier = start(config).await;
    let base = notifier.url();
    let admin = WsClient::connect(&base, "admin", &token(Role::Admin, "root", None)).await;
    let dropped = metric(&base, r#"telegram_messages_total{outcome="dropped"}"#).await;

    // The first decision is taken by the sender and hangs in Telegram.
    post_signed(
        &base,
        "tg-h0",
        keys::ORDER_CONFIRMED,
        &decided("h0", None, "CONFIRMED", None),
    )
    .await;
    stand_in.wait_for(1).await;
    admin.wait_for(has_order("h0")).await;
    // Five more: two wait in the queue, three are dropped; every webhook is answered at once and
    // every event reaches the WebSocket client.
    for i in 1..=5 {
        let started = Instant::now();
        post_signed(
            &base,
            &format!("tg-h{i}"),
            keys::ORDER_REJECTED,
            &decided(&format!("h{i}"), None, "REJECTED", Some("out of stock")),
        )
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a webhook waited for Telegram"
        );
    }
    let started = Instant::now();
    admin.wait_for(has_order("h5")).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let orders: Vec<String> = admin.order_events().into_iter().map(|(_, id)| id).collect();
    assert_eq!(orders, ["h0", "h1", "h2", "h3", "h4", "h5"]);
    assert_eq!(
        stand_in.received().len(),
        1,
        "the sender did not wait for Telegram"
    );
    assert_eq!(
        metric(&base, r#"telegram_messages_total{outcome="dropped"}"#).await - dropped,
        3.0
    );

    // Stopping does not wait for the hanging request.
    let started = Instant::now();
    notifier.stop().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    cleanup(env).await;
}
