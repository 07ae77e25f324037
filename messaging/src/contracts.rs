//! The bodies of the messages on the bus, one struct per message type. Field names are
//! camelCase on the wire. Consumers reject unknown shapes as poison (see `Incoming::json`).
//!
//! The views the gateway's API also returns (`OrderView`, `HistoryEntry`, `StatusCounts`) derive
//! `utoipa::ToSchema` only with the `openapi` feature, which the gateway turns on: the services
//! that only pass these messages along compile no OpenAPI.

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
    /// The seller of the product as the gateway knew it when it accepted the order (`None` when
    /// the product is unknown or the lookup failed; orders then learns it from the stock answer).
    #[serde(default)]
    pub seller_id: Option<String>,
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
    /// The unit price in cents at the moment of the reservation (the issue's `unitPrice`):
    /// the price the order is sold at, whatever the product costs later. `None` for an unknown
    /// product (and on answers from before this field existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_price_cents: Option<i64>,
    /// The product's name at the moment of the reservation, for reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_name: Option<String>,
}

/// Why a product's stock changed (`product.stockChanged`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StockChangeReason {
    /// The product was created with its initial stock.
    Created,
    /// An order reserved some of it.
    Reserved,
    /// A reservation was given back (compensation of a cancelled order).
    Released,
}

/// `product.stockChanged` (products → webhooks → notifier): a product's stock after a change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StockChanged {
    pub product_id: String,
    pub seller_id: Option<String>,
    /// The stock after the change.
    pub stock: i64,
    /// The change: the initial stock on creation, negative on a reservation, positive on a release.
    pub delta: i64,
    pub reason: StockChangeReason,
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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    pub order_id: String,
    pub product_id: String,
    pub quantity: u32,
    pub customer_id: Option<String>,
    /// Known once products answered (the seller of the product).
    #[serde(default)]
    pub seller_id: Option<String>,
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^(PENDING|CONFIRMED|REJECTED|CANCELLED)$")
    )]
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Every state the order went through, oldest first.
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

/// One transition of an order: the state it entered, when, and why (rejections, cancellations).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^(PENDING|CONFIRMED|REJECTED|CANCELLED)$")
    )]
    pub status: String,
    /// RFC 3339 (UTC, milliseconds), when the transition committed.
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `orders.report.summary` / `orders.report.sellers` request (gateway → orders, RPC).
///
/// `from` and `to` are RFC 3339 UTC instants with milliseconds (`2026-12-02T10:00:00.000Z`),
/// compared with the order's creation time: `from <= createdAt < to`; `None` leaves that side
/// open. `seller_id` restricts the summary to one seller's products.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReportQuery {
    pub from: Option<String>,
    pub to: Option<String>,
    pub seller_id: Option<String>,
}

/// Orders per status in a report.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "UPPERCASE")]
pub struct StatusCounts {
    pub pending: i64,
    pub confirmed: i64,
    pub rejected: i64,
    pub cancelled: i64,
}

/// Confirmed sales of one product (money in cents).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProductSales {
    pub product_id: String,
    /// The name the product had when it was last reserved.
    pub name: Option<String>,
    pub units_confirmed: i64,
    pub revenue_confirmed_cents: i64,
}

/// Reply to `orders.report.summary` (money in cents).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SalesSummary {
    pub orders: StatusCounts,
    pub units_confirmed: i64,
    pub revenue_confirmed_cents: i64,
    /// Best first (revenue, then units), at most [`TOP_PRODUCTS`].
    pub top_products: Vec<ProductSales>,
}

/// How many products a summary ranks.
pub const TOP_PRODUCTS: usize = 10;

/// One seller's figures (money in cents). `seller_id` is `None` for orders of products without
/// a seller, or whose seller is not known (no lookup and no stock answer).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SellerSales {
    pub seller_id: Option<String>,
    /// Orders of any status.
    pub orders: i64,
    pub units_confirmed: i64,
    pub revenue_confirmed_cents: i64,
}

/// Reply to `orders.report.sellers`: best first (revenue, then units, then orders).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SellersReport {
    pub sellers: Vec<SellerSales>,
}

/// The reply to a `*.get` request: the thing, or `None` when it does not exist.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Found<T> {
    pub found: Option<T>,
}
