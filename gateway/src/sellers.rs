//! Who sells a product, remembered by the gateway so `orders.create` (and so `order.created`)
//! can carry the seller.
//!
//! A product's seller never changes once the product exists, so an answer is good forever: the
//! gateway asks products (`products.get`) the first time it sees a product id, or learns it when
//! it creates the product itself, and keeps it. The map is bounded; when it is full it starts
//! over, which costs one lookup per product again, never a wrong answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Products whose seller is remembered before the map starts over.
const CAPACITY: usize = 100_000;

/// Product id → seller id (`None`: the product has no seller). Cheap to clone.
#[derive(Clone, Default)]
pub struct SellerCache {
    known: Arc<Mutex<HashMap<String, Option<String>>>>,
}

impl SellerCache {
    /// The remembered seller of `product_id`: `None` when unknown, `Some(None)` when the
    /// product is known to have no seller.
    pub fn get(&self, product_id: &str) -> Option<Option<String>> {
        self.known.lock().ok()?.get(product_id).cloned()
    }

    pub fn remember(&self, product_id: &str, seller_id: Option<String>) {
        if let Ok(mut known) = self.known.lock() {
            if known.len() >= CAPACITY {
                known.clear();
            }
            known.insert(product_id.to_owned(), seller_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_sellers_and_products_without_one() {
        let cache = SellerCache::default();
        assert_eq!(cache.get("p1"), None);
        cache.remember("p1", Some("s1".into()));
        cache.remember("p2", None);
        assert_eq!(cache.get("p1"), Some(Some("s1".into())));
        assert_eq!(cache.get("p2"), Some(None));
    }
}
