//! Request/response over AMQP with direct reply-to (`amq.rabbitmq.reply-to`).
//!
//! The gateway's reads (`GET /orders/{id}`, `GET /products/{id}`) and product creation go to the
//! owning service this way. [`RpcClient`] keeps one channel that both consumes the pseudo-queue
//! and publishes the requests (the broker requires the same channel for both); replies are
//! matched to callers by correlation id. A service answers with [`reply`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use lapin::options::{BasicConsumeOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use serde::Serialize;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::broker::{Attachment, Broker, PublishError, attach_channel, publish_on};
use crate::consumer::HandleError;
use crate::envelope::{Incoming, OutgoingMessage};
use crate::topology;

const REPLY_TO: &str = "amq.rabbitmq.reply-to";

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("request not accepted by the broker: {0}")]
    Publish(#[from] PublishError),
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("request body could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>>;

/// Sends requests and waits for their replies. Register it with [`Broker::attach`].
pub struct RpcClient {
    service: String,
    channel: Mutex<Option<Channel>>,
    pending: Pending,
}

impl RpcClient {
    pub fn new(broker: &Broker) -> Arc<Self> {
        let client = Arc::new(Self {
            service: broker.service().to_owned(),
            channel: Mutex::new(None),
            pending: Arc::default(),
        });
        broker.attach(client.clone());
        client
    }

    /// Sends `body` as a `routing_key` command and waits up to `timeout` for the reply body.
    pub async fn call<T: Serialize>(
        &self,
        routing_key: &str,
        body: &T,
        timeout: Duration,
    ) -> Result<Vec<u8>, RpcError> {
        let channel = self
            .channel
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .ok_or(PublishError::NotConnected)?;
        let correlation_id = Uuid::now_v7().to_string();
        let mut msg =
            OutgoingMessage::json(topology::COMMANDS, routing_key, Some(&correlation_id), body)?;
        msg.reply_to = Some(REPLY_TO.to_owned());
        let (tx, rx) = oneshot::channel();
        self.register(&correlation_id, Some(tx));
        let outcome = async {
            publish_on(&channel, &msg, &self.service, timeout).await?;
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(body)) => Ok(body),
                _ => Err(RpcError::Timeout(timeout)),
            }
        }
        .await;
        self.register(&correlation_id, None);
        outcome
    }

    fn register(&self, correlation_id: &str, waiter: Option<oneshot::Sender<Vec<u8>>>) {
        if let Ok(mut pending) = self.pending.lock() {
            match waiter {
                Some(tx) => pending.insert(correlation_id.to_owned(), tx),
                None => pending.remove(correlation_id),
            };
        }
    }
}

impl Attachment for RpcClient {
    fn attach(
        self: Arc<Self>,
        connection: Arc<Connection>,
    ) -> BoxFuture<'static, lapin::Result<tokio::task::JoinHandle<()>>> {
        attach_channel(connection, move |channel| async move {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            let no_ack = BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            };
            let mut replies = channel
                .basic_consume(
                    REPLY_TO.into(),
                    format!("{}.rpc-replies", self.service).as_str().into(),
                    no_ack,
                    FieldTable::default(),
                )
                .await?;
            if let Ok(mut slot) = self.channel.lock() {
                *slot = Some(channel);
            }
            let pending = self.pending.clone();
            Ok(async move {
                while let Some(Ok(delivery)) = replies.next().await {
                    let Some(id) = delivery
                        .properties
                        .correlation_id()
                        .as_ref()
                        .map(|c| c.to_string())
                    else {
                        continue;
                    };
                    let waiter = pending.lock().ok().and_then(|mut p| p.remove(&id));
                    if let Some(tx) = waiter {
                        let _ = tx.send(delivery.data);
                    }
                }
                if let Ok(mut slot) = self.channel.lock() {
                    *slot = None;
                }
            })
        })
    }
}

/// Answers an RPC request with what a read from `store` returned (the RPC consumers of orders
/// and products): a read that failed is retried, the error naming `store`.
pub async fn answer<T: Serialize, E: std::fmt::Display>(
    broker: &Broker,
    request: &Incoming,
    store: &str,
    read: Result<T, E>,
) -> Result<(), HandleError> {
    let body = read.map_err(|e| HandleError::Retry(format!("{store}: {e}")))?;
    reply(broker, request, &body).await
}

/// Answers an RPC request. A request whose caller has gone away is simply dropped by the broker.
pub async fn reply<T: Serialize>(
    broker: &Broker,
    request: &Incoming,
    body: &T,
) -> Result<(), HandleError> {
    let Some(reply_to) = request.meta.reply_to.as_deref() else {
        return Err(HandleError::Poison("request has no reply_to".into()));
    };
    let correlation_id = request.meta.correlation_id.as_deref();
    let mut msg = OutgoingMessage::json("", reply_to, correlation_id, body)
        .map_err(|e| HandleError::Poison(e.to_string()))?;
    msg.mandatory = false;
    msg.traceparent = request.meta.traceparent.clone();
    broker
        .publish(&msg)
        .await
        .map_err(|e| HandleError::Retry(format!("reply not published: {e}")))
}
