//! Telegram notifications of every order decision (`order.confirmed`, `order.rejected`,
//! `order.cancelled`), sent with the Bot API's `sendMessage`.
//!
//! - **Once per event.** The webhook receiver hands a decision over only when its webhook id was
//!   new (the same `SET NX` that deduplicates the WebSocket fan-out), so a webhook delivered twice,
//!   or to two notifier instances, is sent once.
//! - **Never in the way of WebSocket delivery.** The receiver only `try_send`s into a bounded
//!   queue (`TELEGRAM_QUEUE_CAPACITY`); one task of its own empties it. When the queue is full
//!   (Telegram down or slow for long), the new message is dropped, counted as
//!   `telegram_messages_total{outcome="dropped"}` and logged with its order id; the webhook is
//!   still accepted and fanned out.
//! - **Retries.** A 429 is retried after the `parameters.retry_after` Telegram gave; a 5xx, a
//!   timeout or a network error after an exponential backoff with jitter (`backon`). After
//!   [`Retry::max_attempts`] attempts the message is abandoned (logged). Any other 4xx (bad chat
//!   id, revoked token, bot blocked) is not retried.
//! - **Plain text.** No `parse_mode` is sent, so Telegram shows the text as it is and nothing
//!   needs escaping (a reason with `*`, `_` or `<` cannot break the message).
//! - **The token stays secret.** It lives in a [`SecretString`]; it is part of the request URL,
//!   so neither the URL nor a `reqwest` error carrying it is ever logged (errors are logged
//!   `without_url`).
//!
//! The queue lives in memory: messages still queued when the process stops are lost (logged
//! with their count). Every attempt is counted in `telegram_messages_total{outcome}`.

use std::collections::HashMap;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use messaging::contracts::OrderEvent;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::event::{Decision, WebhookEvent};

pub const DEFAULT_API_URL: &str = "https://api.telegram.org";
/// Telegram refuses texts over 4096 characters; a reason is cut well before that.
const MAX_REASON_CHARS: usize = 1000;

/// How sending is retried.
#[derive(Debug, Clone)]
pub struct Retry {
    /// First backoff delay after a 5xx or timeout; it doubles up to `max_delay`.
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Attempts per message and chat, the first included.
    pub max_attempts: usize,
    /// The longest `retry_after` obeyed; a longer one is cut to this.
    pub max_retry_after: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            max_attempts: 8,
            max_retry_after: Duration::from_secs(300),
        }
    }
}

/// The Telegram sink's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `TELEGRAM_BOT_TOKEN`.
    pub token: SecretString,
    /// `TELEGRAM_API_URL`, without a trailing slash.
    pub api_url: String,
    /// `TELEGRAM_CHAT_ID`: the chat that gets every decision.
    pub chat_id: String,
    /// `TELEGRAM_SELLER_CHATS`: seller id → a chat that also gets the decisions on that seller's
    /// products.
    pub seller_chats: HashMap<String, String>,
    /// `TELEGRAM_QUEUE_CAPACITY`: messages waiting to be sent before new ones are dropped.
    pub queue_capacity: usize,
    /// `TELEGRAM_TIMEOUT_MS`: time limit of one request.
    pub timeout: Duration,
    pub retry: Retry,
}

/// A Telegram variable that is set but unusable. Never carries the token's value.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("environment variable {name} is invalid: {reason}")]
pub struct SettingError {
    pub name: &'static str,
    pub reason: String,
}

fn invalid(name: &'static str, reason: impl Into<String>) -> SettingError {
    SettingError {
        name,
        reason: reason.into(),
    }
}

/// A chat id as Telegram takes it: an integer (negative for groups and channels) or `@name`.
fn chat_id(name: &'static str, text: &str) -> Result<String, SettingError> {
    let text = text.trim();
    let numeric = text.parse::<i64>().is_ok();
    let username = text.len() > 1
        && text.starts_with('@')
        && text[1..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if numeric || username {
        Ok(text.to_owned())
    } else {
        Err(invalid(
            name,
            format!(
                "{text:?} is not a chat id (an integer such as -1001234567890, or @channelname)"
            ),
        ))
    }
}

/// `s1:-100123,s2:@shop`: seller id, a colon, a chat id; entries separated by commas.
pub fn parse_seller_chats(text: &str) -> Result<HashMap<String, String>, SettingError> {
    const NAME: &str = "TELEGRAM_SELLER_CHATS";
    let mut chats = HashMap::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((seller, chat)) = entry.rsplit_once(':') else {
            return Err(invalid(
                NAME,
                format!("{entry:?} is not <seller id>:<chat id>"),
            ));
        };
        let seller = seller.trim();
        if seller.is_empty() {
            return Err(invalid(NAME, format!("{entry:?} has no seller id")));
        }
        let chat = chat_id(NAME, chat)?;
        if chats.insert(seller.to_owned(), chat).is_some() {
            return Err(invalid(NAME, format!("seller {seller:?} is listed twice")));
        }
    }
    Ok(chats)
}

impl Settings {
    /// From the environment; `Ok(None)` when `TELEGRAM_BOT_TOKEN` is unset (the sink is off).
    pub fn from_env() -> Result<Option<Self>, SettingError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// From any source of variables (`from_env` reads the process environment).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, SettingError> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let Some(token) = get("TELEGRAM_BOT_TOKEN") else {
            return Ok(None);
        };
        let token = token.trim().to_owned();
        // Bot tokens are `<bot id>:<secret>`; anything with '/' or spaces would break the URL.
        if !token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-'))
        {
            return Err(invalid(
                "TELEGRAM_BOT_TOKEN",
                "a bot token has only letters, digits, ':', '_' and '-'",
            ));
        }
        let chat = get("TELEGRAM_CHAT_ID").ok_or_else(|| {
            invalid(
                "TELEGRAM_CHAT_ID",
                "it is required when TELEGRAM_BOT_TOKEN is set",
            )
        })?;
        let api_url = get("TELEGRAM_API_URL").unwrap_or_else(|| DEFAULT_API_URL.to_owned());
        let parsed = reqwest::Url::parse(api_url.trim())
            .map_err(|e| invalid("TELEGRAM_API_URL", format!("{api_url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid(
                "TELEGRAM_API_URL",
                format!("{api_url:?} is not an http(s) URL"),
            ));
        }
        let number = |name: &'static str, default: u64| -> Result<u64, SettingError> {
            match get(name) {
                None => Ok(default),
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(invalid(name, format!("{v:?} is not a positive integer"))),
                },
            }
        };
        Ok(Some(Self {
            token: SecretString::from(token),
            api_url: api_url.trim().trim_end_matches('/').to_owned(),
            chat_id: chat_id("TELEGRAM_CHAT_ID", &chat)?,
            seller_chats: parse_seller_chats(&get("TELEGRAM_SELLER_CHATS").unwrap_or_default())?,
            queue_capacity: number("TELEGRAM_QUEUE_CAPACITY", 1000)? as usize,
            timeout: Duration::from_millis(number("TELEGRAM_TIMEOUT_MS", 10_000)?),
            retry: Retry::default(),
        }))
    }

    /// The chats a decision goes to: the main chat, and its seller's chat if it has one.
    pub fn chats_for(&self, seller_id: Option<&str>) -> Vec<&str> {
        let mut chats = vec![self.chat_id.as_str()];
        if let Some(chat) = seller_id.and_then(|s| self.seller_chats.get(s))
            && chat != &self.chat_id
        {
            chats.push(chat);
        }
        chats
    }
}

/// One decision waiting to be sent.
#[derive(Debug, Clone)]
struct Notice {
    webhook_id: String,
    decision: Decision,
    order: OrderEvent,
}

/// The receiver's end of the queue.
#[derive(Clone)]
pub struct Outbox {
    queue: mpsc::Sender<Notice>,
}

impl Outbox {
    /// Queues a decision for Telegram without waiting; other events are ignored. A full queue
    /// drops the message (counted and logged).
    pub fn offer(&self, webhook_id: &str, event: &WebhookEvent) {
        let (Some(decision), Some(order)) = (event.kind.decision(), event.order()) else {
            return;
        };
        let notice = Notice {
            webhook_id: webhook_id.to_owned(),
            decision,
            order: order.clone(),
        };
        match self.queue.try_send(notice) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(notice)) => {
                metrics::counter!("telegram_messages_total", "outcome" => "dropped").increment(1);
                warn!(
                    order_id = %notice.order.order_id,
                    webhook_id = %notice.webhook_id,
                    "the Telegram queue is full (Telegram slow or down): this decision will not be sent to Telegram"
                );
            }
            Err(mpsc::error::TrySendError::Closed(notice)) => {
                warn!(order_id = %notice.order.order_id, "the Telegram sender has stopped; not sending this decision");
            }
        }
    }
}

/// The sentence a chat receives, plain text.
pub fn message_text(decision: Decision, order: &OrderEvent) -> String {
    let who = |label: &str, value: &Option<String>| {
        value
            .as_deref()
            .map(|v| format!(", {label} {v}"))
            .unwrap_or_default()
    };
    let mut text = format!(
        "Order {} {}: {} × product {}{}{}.",
        order.order_id,
        decision.as_str(),
        order.quantity,
        order.product_id,
        who("customer", &order.customer_id),
        who("seller", &order.seller_id),
    );
    if let Some(reason) = order.reason.as_deref().filter(|r| !r.trim().is_empty()) {
        let mut reason: String = reason.chars().take(MAX_REASON_CHARS).collect();
        if reason.len() < order.reason.as_deref().map_or(0, str::len) {
            reason.push('…');
        }
        text.push_str(&format!(" Reason: {reason}"));
    }
    text
}

/// What one attempt came to.
#[derive(Debug, PartialEq)]
enum Attempt {
    Sent,
    /// 429: wait this long (from `parameters.retry_after`, if Telegram said).
    RateLimited(Option<Duration>),
    /// 5xx, timeout or network error: back off and try again.
    Failed {
        outcome: &'static str,
        detail: String,
    },
    /// Another 4xx: trying again would not help.
    Refused {
        status: StatusCode,
        detail: String,
    },
}

impl Attempt {
    fn outcome(&self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::RateLimited(_) => "rate_limited",
            Self::Failed { outcome, .. } => outcome,
            Self::Refused { .. } => "refused",
        }
    }
}

/// Sends messages to the Bot API.
pub struct Sender {
    settings: Settings,
    http: reqwest::Client,
}

impl Sender {
    pub fn new(settings: Settings) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .build()
            .map_err(|e| {
                anyhow::anyhow!("building the Telegram HTTP client: {}", e.without_url())
            })?;
        Ok(Self { settings, http })
    }

    async fn attempt(&self, chat_id: &str, text: &str) -> Attempt {
        // The URL holds the token: it is built here and goes nowhere else.
        let url = format!(
            "{}/bot{}/sendMessage",
            self.settings.api_url,
            self.settings.token.expose_secret()
        );
        let chat: Value = chat_id
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::from(chat_id));
        let response = match self
            .http
            .post(url)
            .json(&json!({"chat_id": chat, "text": text}))
            .send()
            .await
        {
            Ok(response) => response,
            Err(e) => {
                let outcome = if e.is_timeout() {
                    "timeout"
                } else {
                    "network_error"
                };
                return Attempt::Failed {
                    outcome,
                    detail: e.without_url().to_string(),
                };
            }
        };
        let status = response.status();
        if status.is_success() {
            return Attempt::Sent;
        }
        let header_wait = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let detail = body["description"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| status.to_string());
        if status == StatusCode::TOO_MANY_REQUESTS {
            let wait = body["parameters"]["retry_after"].as_u64().or(header_wait);
            Attempt::RateLimited(wait.map(Duration::from_secs))
        } else if status.is_server_error() {
            Attempt::Failed {
                outcome: "server_error",
                detail,
            }
        } else {
            Attempt::Refused { status, detail }
        }
    }

    /// Sends one text to one chat, retrying as the module doc says. Returns whether it was sent.
    async fn send(&self, notice: &Notice, chat_id: &str, text: &str) -> bool {
        let retry = &self.settings.retry;
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(retry.min_delay)
            .with_max_delay(retry.max_delay)
            .with_max_times(retry.max_attempts.saturating_sub(1))
            .with_jitter()
            .build();
        let order_id = &notice.order.order_id;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let attempt = self.attempt(chat_id, text).await;
            metrics::counter!("telegram_messages_total", "outcome" => attempt.outcome())
                .increment(1);
            let backoff = delays.next();
            let wait = match attempt {
                Attempt::Sent => {
                    info!(%order_id, webhook_id = %notice.webhook_id, chat_id, attempts, "decision sent to Telegram");
                    return true;
                }
                Attempt::Refused { status, detail } => {
                    error!(%order_id, chat_id, %status, %detail, "Telegram refused the message; not retrying (check the chat id and the bot token)");
                    return false;
                }
                Attempt::RateLimited(after) => {
                    let wait = after.map(|d| d.min(retry.max_retry_after));
                    warn!(%order_id, chat_id, retry_after_secs = wait.map(|d| d.as_secs()), "Telegram asks us to slow down (429)");
                    wait.or(backoff)
                }
                Attempt::Failed { outcome, detail } => {
                    warn!(%order_id, chat_id, %outcome, %detail, "sending to Telegram failed; will retry");
                    backoff
                }
            };
            // The backoff iterator also bounds the number of attempts, 429s included.
            match (backoff, wait) {
                (Some(_), Some(wait)) => tokio::time::sleep(wait).await,
                _ => {
                    metrics::counter!("telegram_messages_total", "outcome" => "abandoned")
                        .increment(1);
                    error!(%order_id, chat_id, attempts, "giving up sending a decision to Telegram");
                    return false;
                }
            }
        }
    }

    async fn deliver(&self, notice: &Notice) {
        let text = message_text(notice.decision, &notice.order);
        for chat in self.settings.chats_for(notice.order.seller_id.as_deref()) {
            self.send(notice, chat, &text).await;
        }
    }
}

/// Starts the sink: returns the receiver's [`Outbox`] and the task that sends, to run until its
/// token is cancelled.
pub fn start(
    settings: Settings,
) -> anyhow::Result<(
    Outbox,
    impl FnOnce(CancellationToken) -> futures::future::BoxFuture<'static, ()>,
)> {
    let (queue, mut receiver) = mpsc::channel::<Notice>(settings.queue_capacity.max(1));
    let chats = settings.seller_chats.len();
    let sender = Sender::new(settings)?;
    info!(
        seller_chats = chats,
        "Telegram notifications are on: every decision goes to TELEGRAM_CHAT_ID"
    );
    let task = move |stop: CancellationToken| -> futures::future::BoxFuture<'static, ()> {
        Box::pin(async move {
            loop {
                let notice = tokio::select! {
                    _ = stop.cancelled() => break,
                    notice = receiver.recv() => match notice {
                        Some(notice) => notice,
                        None => break,
                    },
                };
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = sender.deliver(&notice) => {}
                }
            }
            let left = receiver.len();
            if left > 0 {
                warn!(
                    left,
                    "stopping with decisions not yet sent to Telegram; they are lost"
                );
            }
        })
    };
    Ok((Outbox { queue }, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    const TOKEN: &str = "123456:ABC-very_secret";

    #[test]
    fn no_token_means_no_sink() {
        assert!(Settings::from_lookup(vars(&[])).unwrap().is_none());
        assert!(
            Settings::from_lookup(vars(&[
                ("TELEGRAM_BOT_TOKEN", " "),
                ("TELEGRAM_CHAT_ID", "1")
            ]))
            .unwrap()
            .is_none()
        );
    }

    #[test]
    fn a_full_configuration_is_read_and_the_token_is_never_printed() {
        let settings = Settings::from_lookup(vars(&[
            ("TELEGRAM_BOT_TOKEN", TOKEN),
            ("TELEGRAM_CHAT_ID", "-1001"),
            ("TELEGRAM_API_URL", "http://127.0.0.1:9/"),
            ("TELEGRAM_SELLER_CHATS", "s1:-1002, s:2:@shop_2 ,"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(settings.api_url, "http://127.0.0.1:9");
        assert_eq!(settings.chat_id, "-1001");
        assert_eq!(settings.seller_chats["s1"], "-1002");
        assert_eq!(settings.seller_chats["s:2"], "@shop_2");
        assert_eq!(settings.chats_for(Some("s1")), ["-1001", "-1002"]);
        assert_eq!(settings.chats_for(Some("s9")), ["-1001"]);
        assert_eq!(settings.chats_for(None), ["-1001"]);
        assert!(!format!("{settings:?}").contains("very_secret"));
        let defaults = Settings::from_lookup(vars(&[
            ("TELEGRAM_BOT_TOKEN", TOKEN),
            ("TELEGRAM_CHAT_ID", "@ops"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(defaults.api_url, DEFAULT_API_URL);
        assert!(defaults.seller_chats.is_empty());
    }

    #[test]
    fn bad_settings_name_their_variable_and_never_show_the_token() {
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut pairs = vec![("TELEGRAM_BOT_TOKEN", TOKEN), ("TELEGRAM_CHAT_ID", "-1")];
            pairs.extend_from_slice(extra);
            Settings::from_lookup(vars(&pairs)).unwrap_err()
        };
        let cases = [
            (
                with(&[("TELEGRAM_SELLER_CHATS", "s1-100")]),
                "TELEGRAM_SELLER_CHATS",
            ),
            (
                with(&[("TELEGRAM_SELLER_CHATS", ":-100")]),
                "TELEGRAM_SELLER_CHATS",
            ),
            (
                with(&[("TELEGRAM_SELLER_CHATS", "s1:chat")]),
                "TELEGRAM_SELLER_CHATS",
            ),
            (
                with(&[("TELEGRAM_SELLER_CHATS", "s1:1,s1:2")]),
                "TELEGRAM_SELLER_CHATS",
            ),
            (with(&[("TELEGRAM_CHAT_ID", "general")]), "TELEGRAM_CHAT_ID"),
            (with(&[("TELEGRAM_API_URL", "ftp://x")]), "TELEGRAM_API_URL"),
            (
                with(&[("TELEGRAM_API_URL", "not a url")]),
                "TELEGRAM_API_URL",
            ),
            (
                with(&[("TELEGRAM_QUEUE_CAPACITY", "0")]),
                "TELEGRAM_QUEUE_CAPACITY",
            ),
            (
                with(&[("TELEGRAM_TIMEOUT_MS", "soon")]),
                "TELEGRAM_TIMEOUT_MS",
            ),
        ];
        for (error, name) in cases {
            assert_eq!(error.name, name, "{error}");
            assert!(error.to_string().contains(name));
        }
        let no_chat = Settings::from_lookup(vars(&[("TELEGRAM_BOT_TOKEN", TOKEN)])).unwrap_err();
        assert_eq!(no_chat.name, "TELEGRAM_CHAT_ID");
        let bad_token = Settings::from_lookup(vars(&[
            ("TELEGRAM_BOT_TOKEN", "123:abc/../x"),
            ("TELEGRAM_CHAT_ID", "1"),
        ]))
        .unwrap_err();
        assert_eq!(bad_token.name, "TELEGRAM_BOT_TOKEN");
        assert!(!bad_token.to_string().contains("abc/../x"));
    }

    #[test]
    fn the_text_names_order_product_quantity_outcome_and_reason_verbatim() {
        let order = OrderEvent {
            order_id: "0193-abc".into(),
            product_id: "p-7".into(),
            quantity: 3,
            customer_id: Some("alice".into()),
            seller_id: Some("s1".into()),
            status: "REJECTED".into(),
            reason: Some("out of stock <b>*now*</b>".into()),
            occurred_at: "2026-01-01T00:00:00Z".into(),
        };
        assert_eq!(
            message_text(Decision::Rejected, &order),
            "Order 0193-abc rejected: 3 × product p-7, customer alice, seller s1. Reason: out of stock <b>*now*</b>"
        );
        let long = OrderEvent {
            reason: Some("x".repeat(5000)),
            customer_id: None,
            seller_id: None,
            ..order
        };
        let text = message_text(Decision::Cancelled, &long);
        assert!(text.starts_with("Order 0193-abc cancelled: 3 × product p-7. Reason: xxx"));
        assert!(text.chars().count() < 4096 && text.ends_with('…'));
    }

    #[tokio::test]
    async fn a_network_error_is_described_without_the_url_that_holds_the_token() {
        // A port that accepts and closes at once.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                drop(socket);
            }
        });
        let settings = Settings::from_lookup(vars(&[
            ("TELEGRAM_BOT_TOKEN", TOKEN),
            ("TELEGRAM_CHAT_ID", "1"),
            ("TELEGRAM_API_URL", &format!("http://{addr}")),
        ]))
        .unwrap()
        .unwrap();
        let sender = Sender::new(settings).unwrap();
        let attempt = sender.attempt("1", "hello").await;
        let Attempt::Failed { outcome, detail } = attempt else {
            panic!("expected a failure, got {attempt:?}");
        };
        assert_eq!(outcome, "network_error");
        assert!(!detail.contains("very_secret"), "{detail}");
        assert!(!detail.contains("/bot"), "{detail}");
    }
}
