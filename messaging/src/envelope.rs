//! The message envelope: what every message on the bus carries besides its JSON body.
//!
//! Outgoing messages get a UUID v7 `message_id`, the order id as `correlation_id`, the routing
//! key as `type`, a timestamp, the sending service as `app_id`, and a W3C `traceparent` header.
//! Incoming deliveries are decoded back into [`MessageMeta`]; a delivery that lacks the
//! properties every consumer relies on is a [`DecodeError`] and goes to the dead-letter queue.

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// AMQP delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

/// A message ready to be published (or stored in an outbox and published later).
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingMessage {
    pub exchange: String,
    pub routing_key: String,
    pub message_id: String,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub traceparent: Option<String>,
    pub body: Vec<u8>,
    /// Publish with `mandatory`: an unroutable message is an error, not a silent drop.
    pub mandatory: bool,
}

impl OutgoingMessage {
    /// A persistent JSON message with a fresh UUID v7 message id, published `mandatory`.
    pub fn json<T: Serialize>(
        exchange: &str,
        routing_key: &str,
        correlation_id: Option<&str>,
        body: &T,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            message_id: Uuid::now_v7().to_string(),
            correlation_id: correlation_id.map(str::to_owned),
            reply_to: None,
            traceparent: None,
            body: serde_json::to_vec(body)?,
            mandatory: true,
        })
    }

    /// Carries the trace of the message (or request) that caused this one.
    pub fn with_traceparent(mut self, traceparent: Option<&str>) -> Self {
        self.traceparent = traceparent.map(str::to_owned);
        self
    }

    /// The AMQP properties every message on the bus carries.
    pub fn properties(&self, app_id: &str) -> BasicProperties {
        let mut headers = FieldTable::default();
        let traceparent = self.traceparent.clone().unwrap_or_else(new_traceparent);
        headers.insert(
            "traceparent".into(),
            AMQPValue::LongString(traceparent.into()),
        );
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
        let mut props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(PERSISTENT)
            .with_message_id(self.message_id.as_str().into())
            .with_type(self.routing_key.as_str().into())
            .with_timestamp(timestamp)
            .with_app_id(app_id.into())
            .with_headers(headers);
        if let Some(correlation_id) = &self.correlation_id {
            props = props.with_correlation_id(correlation_id.as_str().into());
        }
        if let Some(reply_to) = &self.reply_to {
            props = props.with_reply_to(reply_to.as_str().into());
        }
        props
    }
}

/// A fresh W3C trace context for a message that starts a trace.
pub fn new_traceparent() -> String {
    let trace = Uuid::new_v4().simple().to_string();
    let span = &Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace}-{span}-01")
}

/// What a consumer knows about a delivery besides its body.
#[derive(Debug, Clone)]
pub struct MessageMeta {
    pub message_id: String,
    pub kind: String,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub app_id: Option<String>,
    pub traceparent: Option<String>,
    pub redelivered: bool,
    /// Quorum queues count earlier deliveries in `x-delivery-count`.
    pub delivery_count: i64,
}

/// A delivery lacks what every consumer relies on; it is dead-lettered, never retried.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("message has no message_id property")]
    MissingMessageId,
    #[error("message has no type property")]
    MissingType,
    #[error("content type {0:?} is not application/json")]
    NotJson(String),
    #[error("body is not the expected JSON: {0}")]
    Body(String),
}

/// An incoming message: its metadata and its raw body.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub meta: MessageMeta,
    pub body: Vec<u8>,
}

impl Incoming {
    /// Reads the envelope of a delivery.
    pub fn decode(delivery: &Delivery) -> Result<Self, DecodeError> {
        Ok(Self {
            meta: MessageMeta::decode(&delivery.properties, delivery.redelivered)?,
            body: delivery.data.clone(),
        })
    }

    /// Parses the JSON body; a body of the wrong shape is a [`DecodeError::Body`].
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        serde_json::from_slice(&self.body).map_err(|e| DecodeError::Body(e.to_string()))
    }
}

impl MessageMeta {
    pub fn decode(props: &BasicProperties, redelivered: bool) -> Result<Self, DecodeError> {
        let text = |s: &Option<ShortString>| s.as_ref().map(|s| s.as_str().to_owned());
        let message_id = text(props.message_id())
            .filter(|s| !s.is_empty())
            .ok_or(DecodeError::MissingMessageId)?;
        let kind = text(props.kind())
            .filter(|s| !s.is_empty())
            .ok_or(DecodeError::MissingType)?;
        if let Some(content_type) = text(props.content_type())
            && content_type != "application/json"
        {
            return Err(DecodeError::NotJson(content_type));
        }
        let headers = props.headers().as_ref();
        let header = |name: &str| headers.and_then(|h| h.inner().get(name));
        let traceparent = header("traceparent").and_then(|v| match v {
            AMQPValue::LongString(s) => Some(s.to_string()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
            _ => None,
        });
        let delivery_count = header("x-delivery-count").and_then(as_i64).unwrap_or(0);
        Ok(Self {
            message_id,
            kind,
            correlation_id: text(props.correlation_id()),
            reply_to: text(props.reply_to()),
            app_id: text(props.app_id()),
            traceparent,
            redelivered,
            delivery_count,
        })
    }
}

fn as_i64(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_round_trip_through_meta() {
        let msg = OutgoingMessage::json("saga.commands", "orders.create", Some("o-1"), &1).unwrap();
        let props = msg.properties("gateway");
        let meta = MessageMeta::decode(&props, false).unwrap();
        assert_eq!(meta.message_id, msg.message_id);
        assert_eq!(meta.kind, "orders.create");
        assert_eq!(meta.correlation_id.as_deref(), Some("o-1"));
        assert_eq!(meta.app_id.as_deref(), Some("gateway"));
        assert!(meta.traceparent.unwrap().starts_with("00-"));
        assert_eq!(props.delivery_mode(), &Some(2));
        assert_eq!(
            Uuid::parse_str(&msg.message_id).unwrap().get_version_num(),
            7
        );
    }

    #[test]
    fn a_message_without_id_or_type_is_refused() {
        let props = BasicProperties::default().with_type("x".into());
        assert_eq!(
            MessageMeta::decode(&props, false).unwrap_err(),
            DecodeError::MissingMessageId
        );
        let props = BasicProperties::default().with_message_id("m".into());
        assert_eq!(
            MessageMeta::decode(&props, false).unwrap_err(),
            DecodeError::MissingType
        );
        let props = BasicProperties::default()
            .with_message_id("m".into())
            .with_type("x".into())
            .with_content_type("text/plain".into());
        assert!(matches!(
            MessageMeta::decode(&props, false),
            Err(DecodeError::NotJson(_))
        ));
    }

    #[test]
    fn traceparent_is_kept_when_given() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let msg = OutgoingMessage::json("e", "k", None, &1)
            .unwrap()
            .with_traceparent(Some(tp));
        let meta = MessageMeta::decode(&msg.properties("a"), false).unwrap();
        assert_eq!(meta.traceparent.as_deref(), Some(tp));
    }
}
