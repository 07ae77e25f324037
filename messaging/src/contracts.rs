//! The bodies of the messages on the bus, one struct per message type. Field names are
//! camelCase on the wire. Consumers reject unknown shapes as poison (see `Incoming::json`).

use serde::{Deserialize, Serialize};

/// `orders.create` (gateway → orders): place an order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CreateOrder {
    pub order_id: String,
    pub product_id: String,
    pub quantity: u32,
    pub customer_id: Option<String>,
    pub idempotency_key: Option<String>,
}

/// `product.reserveStock` (orders → products).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReserveStock {
    pub order_id: String,
    pub product_id: String,
    pub quantity: u32,
}

/// `product.releaseStock` (orders → products): compensation for a reservation that came too late.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseStock {
    pub order_id: String,
    pub product_id: String,
}

/// `product.stockReserved` and `product.stockRejected` (products → orders).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StockAnswer {
    pub order_id: String,
    pub product_id: String,
    pub quantity: u32,
    /// The seller of the product; `None` for an unknown product or one without a seller.
    pub seller_id: Option<String>,
    /// Why the reservation was refused (only on `product.stockRejected`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `order.created`, `order.confirmed`, `order.rejected`, `order.cancelled` (orders → anyone).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OrderEvent {
    pub order_id: String,
    pub product_id: String,
    pub quantity: u32,
    pub customer_id: Option<String>,
    pub seller_id: Option<String>,
    /// `PENDING`, `CONFIRMED`, `REJECTED` or `CANCELLED`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// RFC 3339, when the transition happened.
    pub occurred_at: String,
}

/// `orders.get` / `products.get` request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GetById {
    pub id: String,
}

/// `products.create` request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CreateProduct {
    pub name: String,
    /// Price in cents: money is never a float inside the system.
    pub price_cents: i64,
    pub stock: i64,
    pub seller_id: Option<String>,
}

/// A product as the products service reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProductView {
    pub id: String,
    pub name: String,
    pub price_cents: i64,
    pub stock: i64,
    pub seller_id: Option<String>,
}

/// An order as the orders service reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    pub order_id: String,
    pub product_id: String,
    pub quantity: u32,
    pub customer_id: Option<String>,
    /// Known once products answered (the seller of the product).
    #[serde(default)]
    pub seller_id: Option<String>,
    #[schema(pattern = "^(PENDING|CONFIRMED|REJECTED|CANCELLED)$")]
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// The reply to a `*.get` request: the thing, or `None` when it does not exist.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Found<T> {
    pub found: Option<T>,
}
