//! A WebSocket client for tests: connects (to the notifier's `/ws`, say) and records every JSON
//! message it receives, in order.
//!
//! Two ways to run it:
//! - [`WsClient::connect`] reads one connection until the server closes it
//!   ([`WsClient::is_closed`]), for tests that check what one client is shown and when it is
//!   dropped;
//! - [`WsClient::reconnecting`] keeps a connection up through a long run with restarts: it
//!   connects again when the connection drops (counted in [`WsClient::connects`]: messages pushed
//!   while it is away are not replayed) and sends the live page's keepalive ping every 15 s.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;
use tracing::warn;

const LONG: Duration = Duration::from_secs(30);
/// Browsers cannot send ping frames; the live page sends this every 15 s.
const KEEPALIVE: Duration = Duration::from_secs(15);

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
/// A message to send, and where to say whether it went out.
type Outgoing = (Message, oneshot::Sender<Result<(), tungstenite::Error>>);

/// What the reading task shares with the client.
#[derive(Default)]
struct Seen {
    received: Mutex<Vec<Value>>,
    closed: AtomicBool,
    connects: AtomicU32,
}

/// A WebSocket client that records every JSON message it receives.
pub struct WsClient {
    pub name: String,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    seen: Arc<Seen>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl WsClient {
    /// Connects to `base`'s `/ws` with `token` and waits for the welcome message; reads that one
    /// connection until it closes. Panics if it cannot connect.
    pub async fn connect(base: &str, name: &str, token: &str) -> Self {
        let url = format!("{}/ws?token={token}", base.replacen("http", "ws", 1));
        let (stream, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap_or_else(|e| panic!("{name} could not connect to {base}: {e}"));
        let client = Self::spawn(name, url, stream, false);
        client.wait_for(|m| m["type"] == "welcome").await;
        client
    }

    /// Connects to `url` and keeps a connection up until [`WsClient::stop`]: connects again
    /// (every 500 ms until it can) whenever the connection drops, and sends a keepalive ping
    /// every 15 s. Fails if the first connection fails.
    pub async fn reconnecting(name: &str, url: String) -> anyhow::Result<Self> {
        let (stream, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
        Ok(Self::spawn(name, url, stream, true))
    }

    fn spawn(name: &str, url: String, first: Stream, reconnect: bool) -> Self {
        let seen = Arc::new(Seen::default());
        seen.connects.store(1, Ordering::SeqCst);
        let stop = CancellationToken::new();
        let (outgoing, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(url, first, reconnect, seen.clone(), stop.clone(), rx));
        Self {
            name: name.to_owned(),
            outgoing,
            seen,
            stop,
            task: Some(task),
        }
    }

    /// Sends `message` as a text frame; panics if it could not be sent.
    pub async fn send(&self, message: Value) {
        let (done, sent) = oneshot::channel();
        let frame = Message::Text(message.to_string().into());
        self.outgoing
            .send((frame, done))
            .unwrap_or_else(|_| panic!("{}: the connection is gone", self.name));
        sent.await
            .unwrap_or_else(|_| panic!("{}: the connection is gone", self.name))
            .unwrap_or_else(|e| panic!("{}: could not send: {e}", self.name));
    }

    /// Every JSON message received so far, in order.
    pub fn messages(&self) -> Vec<Value> {
        self.seen
            .received
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// Whether the connection (for [`WsClient::reconnecting`]: the client) has ended.
    pub fn is_closed(&self) -> bool {
        self.seen.closed.load(Ordering::SeqCst)
    }

    /// How many times it connected.
    pub fn connects(&self) -> u32 {
        self.seen.connects.load(Ordering::SeqCst)
    }

    /// Closes the connection and waits until the client has stopped: what [`WsClient::messages`]
    /// and [`WsClient::connects`] say afterwards is final.
    pub async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Waits (at most 30 s) for a message matching `pred` and returns it; panics if none came.
    pub async fn wait_for(&self, pred: impl Fn(&Value) -> bool) -> Value {
        let found = crate::eventually(LONG, || async {
            self.messages().into_iter().find(|m| pred(m))
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "{} never got the expected message; got {:?}",
                self.name,
                self.messages()
            )
        })
    }

    /// `(type, orderId)` of every order event received, in order.
    pub fn order_events(&self) -> Vec<(String, String)> {
        self.messages()
            .into_iter()
            .filter_map(|m| {
                let kind = m["type"].as_str().filter(|t| t.starts_with("order."))?;
                Some((
                    kind.to_owned(),
                    m["data"]["orderId"].as_str().unwrap_or_default().to_owned(),
                ))
            })
            .collect()
    }

    /// Every message of type `kind`.
    pub fn of_type(&self, kind: &str) -> Vec<Value> {
        self.messages()
            .into_iter()
            .filter(|m| m["type"] == kind)
            .collect()
    }
}

impl Drop for WsClient {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A predicate for [`WsClient::wait_for`]: an order event about `order_id`.
pub fn has_order(order_id: &str) -> impl Fn(&Value) -> bool + '_ {
    move |m: &Value| {
        m["data"]["orderId"] == order_id
            && m["type"].as_str().is_some_and(|t| t.starts_with("order."))
    }
}

/// Reads the first connection, then (when `reconnect`) connects again each time one ends,
/// until stopped.
async fn run(
    url: String,
    first: Stream,
    reconnect: bool,
    seen: Arc<Seen>,
    stop: CancellationToken,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
) {
    let mut next = Some(first);
    while !stop.is_cancelled() {
        let stream = match next.take() {
            Some(stream) => stream,
            None => match tokio_tungstenite::connect_async(url.as_str()).await {
                Ok((stream, _)) => {
                    seen.connects.fetch_add(1, Ordering::SeqCst);
                    stream
                }
                Err(e) => {
                    warn!(error = %e, "WebSocket client: could not connect; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    }
                }
            },
        };
        read(stream, reconnect, &seen, &stop, &mut outgoing).await;
        if !reconnect {
            break;
        }
        if !stop.is_cancelled() {
            warn!("WebSocket client: connection closed; reconnecting");
        }
    }
    seen.closed.store(true, Ordering::SeqCst);
}

/// Reads one connection until it ends or the client stops, sending what the client sends (and,
/// when `keepalive`, the page's ping).
async fn read(
    stream: Stream,
    keepalive: bool,
    seen: &Seen,
    stop: &CancellationToken,
    outgoing: &mut mpsc::UnboundedReceiver<Outgoing>,
) {
    let (mut tx, mut rx) = stream.split();
    let mut ping = tokio::time::interval(KEEPALIVE);
    let mut sending = true;
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                let _ = tx.send(Message::Close(None)).await;
                return;
            }
            _ = ping.tick(), if keepalive => {
                if tx.send(Message::text(r#"{"type":"ping"}"#)).await.is_err() {
                    return;
                }
            }
            next = outgoing.recv(), if sending => match next {
                Some((message, done)) => {
                    let _ = done.send(tx.send(message).await);
                }
                // The client is gone; keep reading until stopped.
                None => sending = false,
            },
            message = rx.next() => match message {
                Some(Ok(Message::Text(text))) => record(text.as_str(), seen),
                Some(Ok(Message::Ping(data))) if keepalive => {
                    let _ = tx.send(Message::Pong(data)).await;
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// Keeps `text` if it is JSON (the notifier sends nothing else; anything else is not ours to
/// assert on).
fn record(text: &str, seen: &Seen) {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return;
    };
    if let Ok(mut received) = seen.received.lock() {
        received.push(value);
    }
}
