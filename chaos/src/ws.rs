//! The ADMIN WebSocket client: connects to the notifier's `/ws` with an ADMIN token, as the live
//! page would, and counts every order event it is shown by `webhookId`. It reconnects if the
//! connection drops (and counts that: events pushed while it is away are not replayed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// One webhook as the WebSocket client saw it.
#[derive(Debug, Clone, Default)]
pub struct Shown {
    pub event_type: String,
    pub order_id: String,
    pub times: u32,
}

#[derive(Debug, Default, Clone)]
pub struct WsReport {
    pub by_webhook: HashMap<String, Shown>,
    pub connects: u32,
    pub other_messages: u64,
}

pub struct WsClient {
    seen: Arc<Mutex<WsReport>>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl WsClient {
    /// Connects (retrying for a while) and keeps reading until stopped.
    pub async fn start(url: String) -> anyhow::Result<Self> {
        let seen = Arc::new(Mutex::new(WsReport::default()));
        let stop = CancellationToken::new();
        let (stream, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
        if let Ok(mut s) = seen.lock() {
            s.connects += 1;
        }
        let task = tokio::spawn(run(url, Some(stream), seen.clone(), stop.clone()));
        Ok(Self {
            seen,
            stop,
            task: Some(task),
        })
    }

    pub async fn stop(mut self) -> WsReport {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for WsClient {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn run(
    url: String,
    mut first: Option<Stream>,
    seen: Arc<Mutex<WsReport>>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let stream = match first.take() {
            Some(s) => s,
            None => match tokio_tungstenite::connect_async(url.as_str()).await {
                Ok((s, _)) => {
                    if let Ok(mut r) = seen.lock() {
                        r.connects += 1;
                    }
                    s
                }
                Err(e) => {
                    warn!(error = %e, "WebSocket client: could not connect; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    }
                }
            },
        };
        read(stream, &seen, &stop).await;
        if !stop.is_cancelled() {
            warn!("WebSocket client: connection closed; reconnecting");
        }
    }
}

async fn read(stream: Stream, seen: &Mutex<WsReport>, stop: &CancellationToken) {
    let (mut tx, mut rx) = stream.split();
    // Browsers cannot send ping frames; the page sends this every 15 s, and so do we.
    let mut keepalive = tokio::time::interval(Duration::from_secs(15));
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                let _ = tx.send(Message::Close(None)).await;
                return;
            }
            _ = keepalive.tick() => {
                if tx.send(Message::text(r#"{"type":"ping"}"#)).await.is_err() {
                    return;
                }
            }
            message = rx.next() => match message {
                Some(Ok(Message::Text(text))) => record(text.as_str(), seen),
                Some(Ok(Message::Ping(data))) => {
                    let _ = tx.send(Message::Pong(data)).await;
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

fn record(text: &str, seen: &Mutex<WsReport>) {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return;
    };
    let kind = value["type"].as_str().unwrap_or_default();
    let Ok(mut seen) = seen.lock() else {
        return;
    };
    match (kind.starts_with("order."), value["webhookId"].as_str()) {
        (true, Some(id)) => {
            let shown = seen.by_webhook.entry(id.to_owned()).or_default();
            shown.event_type = kind.to_owned();
            shown.order_id = value["data"]["orderId"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            shown.times += 1;
        }
        _ => seen.other_messages += 1,
    }
}
