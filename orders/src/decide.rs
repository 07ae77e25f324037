//! The saga's decisions, written once for both stores (SQLite `store.rs`, PostgreSQL
//! `store/pg.rs`): which transition a stock answer makes, and which messages a new order, a
//! transition and a compensation send. The stores only load the order, apply the writes these
//! functions name, and enqueue the messages they build, each in its own transaction.

use std::fmt;

use messaging::OutgoingMessage;
use messaging::contracts::{
    CreateOrder, OrderEvent, ReleaseStock, ReserveStock, StatusCounts, StockAnswer,
};
use messaging::topology::{COMMANDS, EVENTS, keys};

/// The state of an order. `PENDING` until products answers or the deadline passes; the three
/// others are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    Pending,
    Confirmed,
    Rejected,
    Cancelled,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 4] = [
        Self::Pending,
        Self::Confirmed,
        Self::Rejected,
        Self::Cancelled,
    ];

    /// As stored in the `status` column and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Confirmed => "CONFIRMED",
            Self::Rejected => "REJECTED",
            Self::Cancelled => "CANCELLED",
        }
    }

    /// The routing key of the event announcing that an order entered this state.
    pub fn event_key(self) -> &'static str {
        match self {
            Self::Pending => keys::ORDER_CREATED,
            Self::Confirmed => keys::ORDER_CONFIRMED,
            Self::Rejected => keys::ORDER_REJECTED,
            Self::Cancelled => keys::ORDER_CANCELLED,
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// The `status` columns (both backends) hold `as_str`.
messaging::text_column!(OrderStatus, "order status");

/// An order's row, as far as the saga needs it (timestamps as the API shows them:
/// `YYYY-MM-DDTHH:MM:SS.mmmZ`).
#[derive(Debug, Clone)]
pub struct OrderRow {
    pub id: String,
    pub product_id: String,
    pub quantity: u32,
    pub customer_id: Option<String>,
    pub seller_id: Option<String>,
    pub status: OrderStatus,
    pub reason: Option<String>,
    pub compensated: bool,
    pub created_at: String,
    pub updated_at: String,
}

/// What a stock answer did to its order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// PENDING → CONFIRMED or REJECTED.
    Transitioned(OrderStatus),
    /// The order was cancelled before the reservation landed: `product.releaseStock` queued.
    Compensated,
    /// Nothing to do: the order is already in a terminal state (the answer is a duplicate).
    AlreadyDone(OrderStatus),
    /// No such order in the store.
    UnknownOrder,
}

/// What the store must write for a stock answer about an order it loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerDecision {
    /// Guarded `UPDATE … SET status = to, reason, seller_id = COALESCE(answer's, current),
    /// unit_price_cents, product_name WHERE status = 'PENDING'`, then [`transition_effects`].
    Transition {
        to: OrderStatus,
        reason: Option<String>,
    },
    /// The reservation arrived after the order was cancelled: guarded `UPDATE … SET
    /// compensated WHERE compensated is false` (keeping the seller the answer names), then
    /// enqueue [`release_message`].
    Compensate,
    /// Write nothing.
    AlreadyDone(OrderStatus),
}

/// Decides what `product.stockReserved` (`reserved`) or `product.stockRejected` does to an
/// order in `status` (with `compensated` set once its stock was released).
pub fn decide_answer(
    status: OrderStatus,
    compensated: bool,
    answer: &StockAnswer,
    reserved: bool,
) -> AnswerDecision {
    match status {
        OrderStatus::Pending if reserved => AnswerDecision::Transition {
            to: OrderStatus::Confirmed,
            reason: None,
        },
        OrderStatus::Pending => AnswerDecision::Transition {
            to: OrderStatus::Rejected,
            reason: answer.reason.clone(),
        },
        OrderStatus::Cancelled if reserved && !compensated => AnswerDecision::Compensate,
        done => AnswerDecision::AlreadyDone(done),
    }
}

/// The message `product.reserveStock` a new order sends.
pub fn reserve_message(
    cmd: &CreateOrder,
    traceparent: Option<&str>,
) -> Result<OutgoingMessage, serde_json::Error> {
    let reserve = ReserveStock {
        order_id: cmd.order_id.clone(),
        product_id: cmd.product_id.clone(),
        quantity: cmd.quantity,
    };
    message(
        COMMANDS,
        keys::RESERVE_STOCK,
        &cmd.order_id,
        &reserve,
        traceparent,
    )
}

/// The message `product.releaseStock` a compensation sends.
pub fn release_message(
    order: &OrderRow,
    traceparent: Option<&str>,
) -> Result<OutgoingMessage, serde_json::Error> {
    let release = ReleaseStock {
        order_id: order.id.clone(),
        product_id: order.product_id.clone(),
    };
    message(
        COMMANDS,
        keys::RELEASE_STOCK,
        &order.id,
        &release,
        traceparent,
    )
}

/// The `order_history` row of a state an order just entered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    pub order_id: String,
    pub status: OrderStatus,
    pub reason: Option<String>,
    /// The order's `updated_at`: the moment of the transition.
    pub at: String,
}

/// What every state an order enters writes, in the transaction of the change: its
/// `order_history` row, and the `order.<status>` event describing the order as it is now.
pub fn transition_effects(
    order: &OrderRow,
    traceparent: Option<&str>,
) -> Result<(HistoryRow, OutgoingMessage), serde_json::Error> {
    let history = HistoryRow {
        order_id: order.id.clone(),
        status: order.status,
        reason: order.reason.clone(),
        at: order.updated_at.clone(),
    };
    Ok((history, transition_event(order, traceparent)?))
}

/// The `order.<status>` event of [`transition_effects`] alone (on PostgreSQL the history row is
/// written by the statement of the change itself).
pub fn transition_event(
    order: &OrderRow,
    traceparent: Option<&str>,
) -> Result<OutgoingMessage, serde_json::Error> {
    let event = OrderEvent {
        order_id: order.id.clone(),
        product_id: order.product_id.clone(),
        quantity: order.quantity,
        customer_id: order.customer_id.clone(),
        seller_id: order.seller_id.clone(),
        status: order.status.as_str().to_owned(),
        reason: order.reason.clone(),
        occurred_at: order.updated_at.clone(),
    };
    message(
        EVENTS,
        order.status.event_key(),
        &order.id,
        &event,
        traceparent,
    )
}

/// Sets the count of orders in `status` of a report (one row of its `GROUP BY status`).
pub fn count_status(counts: &mut StatusCounts, status: OrderStatus, n: i64) {
    match status {
        OrderStatus::Pending => counts.pending = n,
        OrderStatus::Confirmed => counts.confirmed = n,
        OrderStatus::Rejected => counts.rejected = n,
        OrderStatus::Cancelled => counts.cancelled = n,
    }
}

fn message<T: serde::Serialize>(
    exchange: &str,
    key: &str,
    order_id: &str,
    body: &T,
    traceparent: Option<&str>,
) -> Result<OutgoingMessage, serde_json::Error> {
    Ok(OutgoingMessage::json(exchange, key, Some(order_id), body)?.with_traceparent(traceparent))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(reason: Option<&str>) -> StockAnswer {
        StockAnswer {
            order_id: "o".into(),
            product_id: "p".into(),
            quantity: 1,
            seller_id: None,
            reason: reason.map(str::to_owned),
            unit_price_cents: None,
            product_name: None,
        }
    }

    #[test]
    fn statuses_round_trip_through_their_column_text() {
        for status in OrderStatus::ALL {
            assert_eq!(status.as_str().parse::<OrderStatus>().unwrap(), status);
        }
        assert!("SHIPPED".parse::<OrderStatus>().is_err());
    }

    #[test]
    fn a_pending_order_is_decided_by_its_answer() {
        assert_eq!(
            decide_answer(OrderStatus::Pending, false, &answer(None), true),
            AnswerDecision::Transition {
                to: OrderStatus::Confirmed,
                reason: None
            }
        );
        assert_eq!(
            decide_answer(
                OrderStatus::Pending,
                false,
                &answer(Some("out of stock")),
                false
            ),
            AnswerDecision::Transition {
                to: OrderStatus::Rejected,
                reason: Some("out of stock".into())
            }
        );
    }

    #[test]
    fn only_a_late_reservation_of_a_cancelled_order_is_compensated_and_only_once() {
        let a = answer(None);
        assert_eq!(
            decide_answer(OrderStatus::Cancelled, false, &a, true),
            AnswerDecision::Compensate
        );
        assert_eq!(
            decide_answer(OrderStatus::Cancelled, true, &a, true),
            AnswerDecision::AlreadyDone(OrderStatus::Cancelled)
        );
        assert_eq!(
            decide_answer(OrderStatus::Cancelled, false, &a, false),
            AnswerDecision::AlreadyDone(OrderStatus::Cancelled)
        );
        for done in [OrderStatus::Confirmed, OrderStatus::Rejected] {
            for reserved in [true, false] {
                assert_eq!(
                    decide_answer(done, false, &a, reserved),
                    AnswerDecision::AlreadyDone(done)
                );
            }
        }
    }
}
