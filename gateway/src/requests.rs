//! The request and response bodies of the API, and their validation rules.
//!
//! Unknown fields are refused (422) rather than ignored: a misspelt `quantiy` must not turn into
//! an order for the default quantity.

use messaging::contracts::ProductView;
use messaging::problem::FieldError;
use serde::{Deserialize, Serialize};

use crate::extract::Validate;

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
            price: p.price_cents as f64 / 100.0,
            stock: p.stock,
            seller_id: p.seller_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
