//! The request and response bodies of the API, and their validation rules.
//!
//! Unknown fields are refused (422) rather than ignored: a misspelt `quantiy` must not turn into
//! an order for the default quantity.

use messaging::contracts::{
    ProductSales, ProductView, ReportQuery, SalesSummary, SellerSales, SellersReport, StatusCounts,
};
use serde::{Deserialize, Serialize};
use service_kit::json_body::Validate;
use service_kit::problem::FieldError;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

pub const MAX_QUANTITY: i64 = 1000;
const MAX_ID_LEN: usize = 64;
const MAX_NAME_LEN: usize = 200;
const MAX_PRICE: f64 = 1_000_000_000.0;
const MAX_STOCK: i64 = 1_000_000_000;

/// An order of `quantity` units of a product. Unknown fields are refused.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderRequest {
    #[schema(min_length = 1, max_length = 64)]
    pub product_id: String,
    #[schema(minimum = 1, maximum = 1000)]
    pub quantity: i64,
    /// Defaults to the token's subject; only an ADMIN may name another customer.
    #[serde(default)]
    pub customer_id: Option<String>,
}

impl Validate for OrderRequest {
    fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        check_id(&mut errors, "productId", Some(&self.product_id));
        check_id(&mut errors, "customerId", self.customer_id.as_deref());
        if !(1..=MAX_QUANTITY).contains(&self.quantity) {
            errors.push(field(
                "quantity",
                format!("must be an integer from 1 to {MAX_QUANTITY}"),
            ));
        }
        errors
    }
}

/// A new product. `price` has at most two decimals. Unknown fields are refused.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProductRequest {
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    #[schema(minimum = 0, maximum = 1000000000)]
    pub price: f64,
    #[schema(minimum = 0, maximum = 1000000000)]
    pub stock: i64,
    /// A SELLER's products always carry its own seller id.
    #[serde(default)]
    pub seller_id: Option<String>,
}

impl Validate for ProductRequest {
    fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME_LEN {
            errors.push(field(
                "name",
                format!("must be 1 to {MAX_NAME_LEN} characters, not blank"),
            ));
        }
        if !(0.0..=MAX_PRICE).contains(&self.price) || price_cents(self.price).is_none() {
            errors.push(field(
                "price",
                "must be a number from 0 to 1000000000 with at most 2 decimals".into(),
            ));
        }
        if !(0..=MAX_STOCK).contains(&self.stock) {
            errors.push(field(
                "stock",
                format!("must be an integer from 0 to {MAX_STOCK}"),
            ));
        }
        check_id(&mut errors, "sellerId", self.seller_id.as_deref());
        errors
    }
}

/// The price in cents, or `None` when it has more than two decimals.
pub fn price_cents(price: f64) -> Option<i64> {
    let cents = (price * 100.0).round();
    ((price * 100.0 - cents).abs() < 1e-6).then_some(cents as i64)
}

fn check_id(errors: &mut Vec<FieldError>, name: &str, value: Option<&str>) {
    if let Some(value) = value
        && (value.trim().is_empty() || value.len() > MAX_ID_LEN)
    {
        errors.push(field(
            name,
            format!("must be 1 to {MAX_ID_LEN} characters, not blank"),
        ));
    }
}

fn field(name: &str, message: String) -> FieldError {
    FieldError {
        field: name.to_owned(),
        message,
    }
}

/// `202` body of `POST /orders`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderAccepted {
    pub order_id: String,
    pub status: String,
}

/// A product as the API shows it (price in currency units, as it was given).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProductResponse {
    pub id: String,
    pub name: String,
    pub price: f64,
    pub stock: i64,
    pub seller_id: Option<String>,
}

impl From<ProductView> for ProductResponse {
    fn from(p: ProductView) -> Self {
        Self {
            id: p.id,
            name: p.name,
            price: money(p.price_cents),
            stock: p.stock,
            seller_id: p.seller_id,
        }
    }
}

/// An amount of cents in currency units, as the API shows money (`price`, `revenueConfirmed`).
/// Sums are kept in integer cents; the one division here yields the double nearest to the
/// two-decimal amount, which JSON prints as exactly that amount (below 2^53 cents).
pub fn money(cents: i64) -> f64 {
    cents as f64 / 100.0
}

/// The `from` and `to` query parameters of the reports, as sent.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PeriodParams {
    /// RFC 3339 instant (`2026-12-02T10:00:00Z`, or with an offset: encode `+` as `%2B`);
    /// orders created at or after it. Default: the beginning.
    pub from: Option<String>,
    /// RFC 3339 instant; orders created before it. Default: now and later.
    pub to: Option<String>,
}

/// A report period in the form orders.db stores creation times: UTC with milliseconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Period {
    pub from: Option<String>,
    pub to: Option<String>,
}

impl PeriodParams {
    /// The period, or the complaint about the parameter that is not a valid period bound.
    pub fn period(&self) -> Result<Period, FieldError> {
        let from = instant("from", self.from.as_deref())?;
        let to = instant("to", self.to.as_deref())?;
        if let (Some(from), Some(to)) = (from, to)
            && from > to
        {
            return Err(field("from", "must not be later than to".into()));
        }
        Ok(Period {
            from: from.map(stored_form),
            to: to.map(stored_form),
        })
    }
}

impl Period {
    pub fn query(&self, seller_id: Option<String>) -> ReportQuery {
        ReportQuery {
            from: self.from.clone(),
            to: self.to.clone(),
            seller_id,
        }
    }
}

/// An absent or empty parameter is an open end; a bound is taken to UTC.
fn instant(name: &str, value: Option<&str>) -> Result<Option<OffsetDateTime>, FieldError> {
    let text = match value.map(str::trim) {
        None | Some("") => return Ok(None),
        Some(text) => text,
    };
    let parsed = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
        field(
            name,
            format!("must be an RFC 3339 date-time such as 2026-12-02T10:00:00Z ({e})"),
        )
    })?;
    parsed
        .checked_to_offset(UtcOffset::UTC)
        .filter(|utc| (1..=9999).contains(&utc.year()))
        .map(Some)
        .ok_or_else(|| {
            field(
                name,
                "must lie between the years 0001 and 9999 in UTC".into(),
            )
        })
}

/// `2026-12-02T10:00:00.000Z`: the format of `created_at` in orders.db, so that text order is
/// time order. Sub-millisecond digits are dropped.
fn stored_form(at: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    )
}

/// `GET /reports/summary`. Money in currency units, like `price`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SummaryResponse {
    /// The period's start as applied (UTC, milliseconds); `null` for the beginning.
    pub from: Option<String>,
    /// The period's end (exclusive); `null` for no end.
    pub to: Option<String>,
    /// Orders created in the period, by their current status.
    pub orders: StatusCounts,
    pub units_confirmed: i64,
    pub revenue_confirmed: f64,
    /// Best-selling products by confirmed revenue, then units; at most 10.
    pub top_products: Vec<TopProduct>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopProduct {
    pub product_id: String,
    /// The product's name when it was last sold.
    pub name: Option<String>,
    pub units_confirmed: i64,
    pub revenue_confirmed: f64,
}

impl SummaryResponse {
    pub fn new(period: Period, summary: SalesSummary) -> Self {
        Self {
            from: period.from,
            to: period.to,
            orders: summary.orders,
            units_confirmed: summary.units_confirmed,
            revenue_confirmed: money(summary.revenue_confirmed_cents),
            top_products: summary
                .top_products
                .into_iter()
                .map(TopProduct::from)
                .collect(),
        }
    }
}

impl From<ProductSales> for TopProduct {
    fn from(p: ProductSales) -> Self {
        Self {
            product_id: p.product_id,
            name: p.name,
            units_confirmed: p.units_confirmed,
            revenue_confirmed: money(p.revenue_confirmed_cents),
        }
    }
}

/// `GET /reports/sellers`: sellers ranked by confirmed revenue.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SellersResponse {
    pub from: Option<String>,
    pub to: Option<String>,
    pub sellers: Vec<SellerRanking>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SellerRanking {
    /// `null` gathers orders of products without a seller (or whose seller is not known).
    pub seller_id: Option<String>,
    /// Orders of any status created in the period.
    pub orders: i64,
    pub units_confirmed: i64,
    pub revenue_confirmed: f64,
}

impl SellersResponse {
    pub fn new(period: Period, report: SellersReport) -> Self {
        Self {
            from: period.from,
            to: period.to,
            sellers: report
                .sellers
                .into_iter()
                .map(SellerRanking::from)
                .collect(),
        }
    }
}

impl From<SellerSales> for SellerRanking {
    fn from(s: SellerSales) -> Self {
        Self {
            seller_id: s.seller_id,
            orders: s.orders,
            units_confirmed: s.units_confirmed,
            revenue_confirmed: money(s.revenue_confirmed_cents),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn period(from: Option<&str>, to: Option<&str>) -> Result<Period, FieldError> {
        PeriodParams {
            from: from.map(str::to_owned),
            to: to.map(str::to_owned),
        }
        .period()
    }

    #[test]
    fn periods_are_normalised_to_utc_milliseconds() {
        let p = period(
            Some("2026-12-02T11:00:00+01:00"),
            Some("2026-12-02T10:30:00.123456Z"),
        );
        assert_eq!(
            p.unwrap(),
            Period {
                from: Some("2026-12-02T10:00:00.000Z".into()),
                to: Some("2026-12-02T10:30:00.123Z".into()),
            }
        );
        assert_eq!(period(None, Some("")).unwrap(), Period::default());
    }

    #[test]
    fn bad_periods_name_the_parameter() {
        assert_eq!(period(Some("yesterday"), None).unwrap_err().field, "from");
        assert_eq!(
            period(None, Some("2026-13-01T00:00:00Z"))
                .unwrap_err()
                .field,
            "to"
        );
        let reversed = period(Some("2026-12-02T10:00:00Z"), Some("2026-12-01T10:00:00Z"));
        assert_eq!(reversed.unwrap_err().field, "from");
        let past_9999 = period(None, Some("9999-12-31T23:59:59-01:00"));
        assert_eq!(past_9999.unwrap_err().field, "to");
    }

    #[test]
    fn money_prints_as_two_decimals() {
        assert_eq!(serde_json::to_string(&money(2997)).unwrap(), "29.97");
        assert_eq!(
            serde_json::to_string(&money(100_000_000_001)).unwrap(),
            "1000000000.01"
        );
    }

    #[test]
    fn prices_with_more_than_two_decimals_are_refused() {
        assert_eq!(price_cents(9.99), Some(999));
        assert_eq!(price_cents(0.1 + 0.2), Some(30));
        assert_eq!(price_cents(1.005), None);
        assert_eq!(price_cents(12.0), Some(1200));
    }

    #[test]
    fn quantity_bounds() {
        let order = |quantity| OrderRequest {
            product_id: "p".into(),
            quantity,
            customer_id: None,
        };
        assert!(order(1).validate().is_empty());
        assert!(order(1000).validate().is_empty());
        assert_eq!(order(0).validate()[0].field, "quantity");
        assert_eq!(order(1001).validate()[0].field, "quantity");
    }
}
