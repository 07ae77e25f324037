//! A WebSocket client for tests: connects to the notifier with a token and records every JSON
//! message it receives.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const LONG: Duration = Duration::from_secs(30);

type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;

/// A WebSocket client that records every JSON message it receives.
pub struct WsClient {
    pub name: String,
    sink: tokio::sync::Mutex<Sink>,
    received: Arc<Mutex<Vec<Value>>>,
    closed: Arc<Mutex<bool>>,
}

impl WsClient {
    /// Connects with `token` and waits for the welcome message.
    pub async fn connect(base: &str, name: &str, token: &str) -> Self {
        let url = format!("{}/ws?token={token}", base.replacen("http", "ws", 1));
        let (stream, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let (sink, mut stream) = stream.split();
        let received = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(Mutex::new(false));
        let (r, c) = (received.clone(), closed.clone());
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                if let Message::Text(text) = message {
                    r.lock()
                        .unwrap()
                        .push(serde_json::from_str(text.as_str()).unwrap());
                }
            }
            *c.lock().unwrap() = true;
        });
        let client = Self {
            name: name.to_owned(),
            sink: tokio::sync::Mutex::new(sink),
            received,
            closed,
        };
        client.wait_for(|m| m["type"] == "welcome").await;
        client
    }

    pub async fn send(&self, message: Value) {
        self.sink
            .lock()
            .await
            .send(Message::Text(message.to_string().into()))
            .await
            .unwrap();
    }

    pub fn messages(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }

    pub fn is_closed(&self) -> bool {
        *self.closed.lock().unwrap()
    }

    /// Waits for a message matching `pred` and returns it.
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
            .filter(|m| m["type"].as_str().is_some_and(|t| t.starts_with("order.")))
            .map(|m| {
                (
                    m["type"].as_str().unwrap().to_owned(),
                    m["data"]["orderId"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    pub fn of_type(&self, kind: &str) -> Vec<Value> {
        self.messages()
            .into_iter()
            .filter(|m| m["type"] == kind)
            .collect()
    }
}

pub fn has_order(order_id: &str) -> impl Fn(&Value) -> bool + '_ {
    move |m: &Value| {
        m["data"]["orderId"] == order_id
            && m["type"].as_str().is_some_and(|t| t.starts_with("order."))
    }
}
