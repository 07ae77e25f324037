//! The events the notifier receives as webhooks: `{type, timestamp, data}`, where `type` says
//! what `data` is: an order event (`order.created|confirmed|rejected|cancelled`, the saga's
//! [`OrderEvent`]) or a stock change (`product.stockChanged`, [`StockChanged`]).
//!
//! A body is read in two steps, so a caller can tell the three ways it can be wrong apart: not a
//! webhook body at all, a type this notifier does not know, or data that does not fit its type.

use messaging::contracts::{OrderEvent, StockChanged};
use messaging::topology::keys;
use serde::{Deserialize, Serialize};

/// The `type` of a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    #[serde(rename = "order.created")]
    OrderCreated,
    #[serde(rename = "order.confirmed")]
    OrderConfirmed,
    #[serde(rename = "order.rejected")]
    OrderRejected,
    #[serde(rename = "order.cancelled")]
    OrderCancelled,
    #[serde(rename = "product.stockChanged")]
    StockChanged,
}

impl EventKind {
    pub const ALL: [EventKind; 5] = [
        Self::OrderCreated,
        Self::OrderConfirmed,
        Self::OrderRejected,
        Self::OrderCancelled,
        Self::StockChanged,
    ];

    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrderCreated => keys::ORDER_CREATED,
            Self::OrderConfirmed => keys::ORDER_CONFIRMED,
            Self::OrderRejected => keys::ORDER_REJECTED,
            Self::OrderCancelled => keys::ORDER_CANCELLED,
            Self::StockChanged => keys::STOCK_CHANGED,
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Whether this is the end of an order's saga (what Telegram reports).
    pub fn decision(self) -> Option<Decision> {
        match self {
            Self::OrderConfirmed => Some(Decision::Confirmed),
            Self::OrderRejected => Some(Decision::Rejected),
            Self::OrderCancelled => Some(Decision::Cancelled),
            Self::OrderCreated | Self::StockChanged => None,
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an order's saga ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Confirmed,
    Rejected,
    Cancelled,
}

impl Decision {
    /// The word for it, as the stats hashes and the dashboard's minute buckets name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Confirmed => "confirmed",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The data of a webhook, as its type says.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum EventData {
    Order(OrderEvent),
    Stock(StockChanged),
}

/// The body of a Standard Webhooks request from the publisher.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(try_from = "RawWebhook")]
pub struct WebhookEvent {
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub timestamp: String,
    pub data: EventData,
}

/// A body before its `data` is read according to its `type`.
#[derive(Debug, Deserialize)]
pub struct RawWebhook {
    #[serde(rename = "type")]
    pub kind: String,
    pub timestamp: String,
    pub data: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the body is not a webhook ({{type, timestamp, data}}): {0}")]
    NotAWebhook(#[source] serde_json::Error),
    #[error("{0:?} is not an event type this notifier knows")]
    UnknownType(String),
    #[error("the data of a {kind} event does not fit it: {source}")]
    BadData {
        kind: EventKind,
        #[source]
        source: serde_json::Error,
    },
}

impl TryFrom<RawWebhook> for WebhookEvent {
    type Error = BodyError;

    fn try_from(raw: RawWebhook) -> Result<Self, BodyError> {
        Self::read(&raw.kind, raw.timestamp, raw.data)
    }
}

/// A received body before its `data` is read: `data` stays the slice of the body it came in,
/// read once by its type. Going through a [`serde_json::Value`] (as [`RawWebhook`] does for
/// any other deserializer) built a map of every field first and then read it again: about a
/// tenth of the notifier's CPU per webhook was that tree's allocations (docs/benchmarks.md,
/// session 19).
#[derive(Deserialize)]
struct BorrowedWebhook<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    timestamp: String,
    #[serde(borrow)]
    data: &'a serde_json::value::RawValue,
}

impl WebhookEvent {
    /// Reads a webhook body (the same checks and errors as deserializing a [`RawWebhook`]).
    pub fn parse(body: &[u8]) -> Result<Self, BodyError> {
        let raw: BorrowedWebhook = serde_json::from_slice(body).map_err(BodyError::NotAWebhook)?;
        let data = &mut serde_json::Deserializer::from_str(raw.data.get());
        Self::read(&raw.kind, raw.timestamp, data)
    }

    /// The event of type `kind` with its `data` read as that type says: the one place that
    /// tells an unknown type from data that does not fit a known one, whether the data is a
    /// parsed [`serde_json::Value`] or still the text it came in.
    fn read<'de, D>(kind: &str, timestamp: String, data: D) -> Result<Self, BodyError>
    where
        D: serde::Deserializer<'de, Error = serde_json::Error>,
    {
        let kind = EventKind::parse(kind).ok_or_else(|| BodyError::UnknownType(kind.to_owned()))?;
        let bad = |source| BodyError::BadData { kind, source };
        let data = match kind {
            EventKind::StockChanged => {
                EventData::Stock(StockChanged::deserialize(data).map_err(bad)?)
            }
            _ => EventData::Order(OrderEvent::deserialize(data).map_err(bad)?),
        };
        Ok(Self {
            kind,
            timestamp,
            data,
        })
    }

    /// The order this event is about, if it is an order event.
    pub fn order(&self) -> Option<&OrderEvent> {
        match &self.data {
            EventData::Order(order) => Some(order),
            EventData::Stock(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bodies_are_read_by_their_type_and_written_back_the_same() {
        let order = json!({"type": "order.rejected", "timestamp": "t", "data": {
            "orderId": "o1", "productId": "p1", "quantity": 2, "customerId": "c1",
            "sellerId": "s1", "status": "REJECTED", "reason": "out of stock", "occurredAt": "t"}});
        let stock = json!({"type": "product.stockChanged", "timestamp": "t", "data": {
            "productId": "p1", "sellerId": null, "stock": 7, "delta": -1, "reason": "reserved"}});
        for body in [order, stock] {
            let event = WebhookEvent::parse(body.to_string().as_bytes()).unwrap();
            assert_eq!(serde_json::to_value(&event).unwrap(), body);
            let again: WebhookEvent = serde_json::from_value(body).unwrap();
            assert_eq!(again, event);
        }
    }

    #[test]
    fn each_way_a_body_can_be_wrong_is_told_apart() {
        let parse = |v: serde_json::Value| WebhookEvent::parse(v.to_string().as_bytes());
        assert!(matches!(
            WebhookEvent::parse(b"not json"),
            Err(BodyError::NotAWebhook(_))
        ));
        assert!(matches!(
            parse(json!({"type": "order.shipped", "timestamp": "t", "data": {}})),
            Err(BodyError::UnknownType(t)) if t == "order.shipped"
        ));
        // A stock change's data under an order type, and a reason products never sends.
        assert!(matches!(
            parse(
                json!({"type": "order.confirmed", "timestamp": "t", "data": {"productId": "p", "stock": 1, "delta": 1, "reason": "created"}})
            ),
            Err(BodyError::BadData {
                kind: EventKind::OrderConfirmed,
                ..
            })
        ));
        assert!(matches!(
            parse(
                json!({"type": "product.stockChanged", "timestamp": "t", "data": {"productId": "p", "sellerId": "s", "stock": 1, "delta": 1, "reason": "stolen"}})
            ),
            Err(BodyError::BadData {
                kind: EventKind::StockChanged,
                ..
            })
        ));
    }

    #[test]
    fn a_received_body_reads_as_its_deserialized_form_does() {
        // An escaped type name, data with nested whitespace and an unknown extra field.
        let body = br#"{"type":"order\u002econfirmed","timestamp":"t","extra":[1],"data": {
            "orderId":"o1","productId":"p1","quantity":2,"customerId":null,"sellerId":"s1",
            "status":"CONFIRMED","reason":null,"occurredAt":"t"}}"#;
        let parsed = WebhookEvent::parse(body).unwrap();
        assert_eq!(parsed.kind, EventKind::OrderConfirmed);
        let via_value: WebhookEvent =
            serde_json::from_value(serde_json::from_slice(body).unwrap()).unwrap();
        assert_eq!(parsed, via_value);
        // `data` must be there and an object of its type; the envelope must be an object.
        assert!(matches!(
            WebhookEvent::parse(br#"{"type":"order.created","timestamp":"t"}"#),
            Err(BodyError::NotAWebhook(_))
        ));
        assert!(matches!(
            WebhookEvent::parse(br#"{"type":"order.created","timestamp":"t","data":[]}"#),
            Err(BodyError::BadData { .. })
        ));
        assert!(matches!(
            WebhookEvent::parse(b"[]"),
            Err(BodyError::NotAWebhook(_))
        ));
    }

    #[test]
    fn the_wire_names_are_the_routing_keys() {
        for kind in EventKind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }

    #[test]
    fn only_the_three_outcomes_are_decisions() {
        let decisions: Vec<_> = EventKind::ALL
            .into_iter()
            .filter_map(EventKind::decision)
            .collect();
        assert_eq!(
            decisions,
            [Decision::Confirmed, Decision::Rejected, Decision::Cancelled]
        );
        assert_eq!(
            EventKind::parse("product.stockChanged"),
            Some(EventKind::StockChanged)
        );
    }
}
