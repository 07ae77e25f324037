//! `GET /ws?token=<JWT>`: one WebSocket connection.
//!
//! The token is checked before the upgrade, so a bad or expired one gets a plain 401 problem.
//! After the upgrade, a writer task sends the client's queue and a ping every
//! `WS_PING_INTERVAL_MS`; a client that has sent nothing (not even a pong) for two intervals is
//! disconnected. The reader handles the client's messages:
//! `{"type":"join","room":"order-<id>"}`, `{"type":"leave","room":…}` and `{"type":"ping"}`
//! (browsers cannot send ping frames); anything else gets an error message, never a disconnect.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{
    CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade,
    rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use messaging::clock::now_ms;
use serde::Deserialize;
use serde_json::json;
use service_kit::problem::Problem;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::AppState;
use crate::auth::{Identity, Role};
use crate::hub::room_order_id;

/// Longest client message we read; clients only send small control messages.
const MAX_CLIENT_MESSAGE: usize = 16 * 1024;

#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

pub async fn upgrade(
    State(state): State<AppState>,
    query: Result<Query<TokenQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let token = query.ok().and_then(|Query(q)| q.token);
    let identity = match state.tokens.verify(token.as_deref()) {
        Ok(identity) => identity,
        Err(e) => {
            warn!(reason = %e, "refused a WebSocket connection");
            metrics::counter!("ws_refused_total", "reason" => "token").increment(1);
            return Problem::new(
                StatusCode::UNAUTHORIZED,
                "invalid-token",
                "Not authenticated",
                e.to_string(),
            )
            .into_response();
        }
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(e) => {
            return Problem::new(
                StatusCode::BAD_REQUEST,
                "not-websocket",
                "WebSocket upgrade required",
                e.body_text(),
            )
            .into_response();
        }
    };
    upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| serve(state, identity, socket))
}

fn text(value: serde_json::Value) -> Utf8Bytes {
    Utf8Bytes::from(value.to_string())
}

async fn serve(state: AppState, identity: Identity, socket: WebSocket) {
    let registration = state.hub.register(identity.clone());
    let id = registration.id;
    let span = info_span!("ws", client = id, sub = %identity.sub, role = ?identity.role);
    async move {
        info!("WebSocket client connected");
        state.hub.send_to(
            id,
            text(json!({"type": "welcome", "sub": identity.sub, "role": identity.role, "sellerId": identity.seller_id})),
        );
        let (sink, stream) = socket.split();
        let last_heard = Arc::new(AtomicI64::new(now_ms()));
        let close = registration.close.clone();
        let writer = tokio::spawn(
            write_loop(sink, registration.queue, close.clone(), state.ping_interval, last_heard.clone())
                .in_current_span(),
        );
        read_loop(stream, &state, id, &identity, close.clone(), last_heard).await;
        state.hub.unregister(id);
        close.cancel();
        let _ = writer.await;
        info!("WebSocket client disconnected");
    }
    .instrument(span)
    .await
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut queue: mpsc::Receiver<Utf8Bytes>,
    close: CancellationToken,
    ping_interval: Duration,
    last_heard: Arc<AtomicI64>,
) {
    let mut ping = tokio::time::interval(ping_interval);
    ping.tick().await;
    let silence_limit = i64::try_from(ping_interval.as_millis() * 2).unwrap_or(i64::MAX);
    loop {
        let out = tokio::select! {
            _ = close.cancelled() => {
                let bye = Message::Close(Some(CloseFrame { code: 1001, reason: "closed by the server".into() }));
                let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(bye)).await;
                break;
            }
            message = queue.recv() => match message {
                Some(message) => Message::Text(message),
                None => break,
            },
            _ = ping.tick() => {
                if now_ms() - last_heard.load(Ordering::Relaxed) > silence_limit {
                    info!("no pong from the client for two ping intervals; disconnecting");
                    break;
                }
                Message::Ping(Default::default())
            }
        };
        let sent = tokio::select! {
            _ = close.cancelled() => break,
            sent = sink.send(out) => sent,
        };
        if sent.is_err() {
            break;
        }
    }
    close.cancel();
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ClientMessage {
    Join { room: String },
    Leave { room: String },
    Ping,
}

async fn read_loop(
    mut stream: SplitStream<WebSocket>,
    state: &AppState,
    id: u64,
    identity: &Identity,
    close: CancellationToken,
    last_heard: Arc<AtomicI64>,
) {
    loop {
        let frame = tokio::select! {
            _ = close.cancelled() => break,
            frame = stream.next() => frame,
        };
        let Some(Ok(message)) = frame else {
            break;
        };
        last_heard.store(now_ms(), Ordering::Relaxed);
        match message {
            Message::Text(body) => {
                let reply = handle(state, id, identity, body.as_str()).await;
                state.hub.send_to(id, text(reply));
            }
            Message::Binary(_) => state
                .hub
                .send_to(id, text(error("bad-message", "send JSON text messages"))),
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => {}
        }
    }
}

fn error(code: &str, message: &str) -> serde_json::Value {
    json!({"type": "error", "code": code, "message": message})
}

async fn handle(state: &AppState, id: u64, identity: &Identity, body: &str) -> serde_json::Value {
    let message = match serde_json::from_str::<ClientMessage>(body) {
        Ok(message) => message,
        Err(_) => {
            return error(
                "bad-message",
                r#"expected {"type":"join"|"leave","room":"order-<id>"} or {"type":"ping"}"#,
            );
        }
    };
    match message {
        ClientMessage::Ping => json!({"type": "pong"}),
        ClientMessage::Leave { room } => {
            let was_in = state.hub.leave(id, &room);
            json!({"type": "left", "room": room, "wasIn": was_in})
        }
        ClientMessage::Join { room } => join(state, id, identity, room).await,
    }
}

async fn join(state: &AppState, id: u64, identity: &Identity, room: String) -> serde_json::Value {
    let Some(order_id) = room_order_id(&room) else {
        return error("unknown-room", "rooms are named order-<id>");
    };
    let allowed = if identity.role == Role::Admin {
        true
    } else {
        match state.bus.owners(order_id).await {
            Ok(Some(owners)) => {
                identity.sees(owners.customer_id.as_deref(), owners.seller_id.as_deref())
            }
            // An order we have no event of: nobody but an admin may join it yet, and the
            // answer does not tell whether the order exists.
            Ok(None) => false,
            Err(e) => {
                warn!(error = %e, %room, "could not check who owns an order");
                return error("unavailable", "could not check the room now; try again");
            }
        }
    };
    if !allowed {
        info!(%room, "refused a room join the token does not allow");
        return error(
            "forbidden",
            &format!("your token does not allow joining {room}"),
        );
    }
    state.hub.join(id, &room);
    info!(%room, "joined a room");
    json!({"type": "joined", "room": room})
}
