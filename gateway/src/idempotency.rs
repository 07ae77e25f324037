//! The `Idempotency-Key` of `POST /orders`.
//!
//! The order id of a keyed request is derived from the key (UUID v5 of customer and key), so a
//! replay names the same order even if Redis forgot the key; the orders service ignores a create
//! for an order it has. Redis keeps, for 24 h, the fingerprint of the first body sent with the
//! key (`idempotency:<sha256>`), so the same key with another body is refused with 422.

use messaging::idempotency::{GuardError, delete_if_equal};
use messaging::shared_redis::SharedRedis;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::requests::OrderRequest;

const TTL_SECONDS: u64 = 24 * 3600;
const MAX_KEY_LEN: usize = 255;

/// The namespace of order ids derived from idempotency keys.
const ORDER_NAMESPACE: Uuid = Uuid::from_u128(0x6f72_6465_7273_4000_8000_6964_656d_706f);

#[derive(Debug, PartialEq)]
pub enum KeyUse {
    /// First time: go ahead.
    New,
    /// Same key, same body: the same order again.
    Replay,
    /// Same key, another body.
    Conflict,
}

#[derive(Clone)]
pub struct IdempotencyStore {
    redis: SharedRedis,
    prefix: String,
}

/// A key must be 1–255 visible ASCII characters.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| b.is_ascii_graphic())
}

/// The order id a keyed request names.
pub fn order_id_for(key: &str, req: &OrderRequest) -> String {
    let scope = format!("{}\n{key}", req.customer_id.as_deref().unwrap_or(""));
    Uuid::new_v5(&ORDER_NAMESPACE, scope.as_bytes()).to_string()
}

fn fingerprint(req: &OrderRequest) -> String {
    let canonical = serde_json::to_vec(req).unwrap_or_default();
    hex::encode(Sha256::digest(canonical))
}

impl IdempotencyStore {
    pub fn new(redis: SharedRedis, prefix: &str) -> Self {
        Self {
            redis,
            prefix: prefix.to_owned(),
        }
    }

    fn redis_key(&self, key: &str, req: &OrderRequest) -> String {
        let scope = format!("{}\n{key}", req.customer_id.as_deref().unwrap_or(""));
        format!(
            "{}idempotency:{}",
            self.prefix,
            hex::encode(Sha256::digest(scope.as_bytes()))
        )
    }

    /// Forgets a key this request claimed ([`KeyUse::New`]) when its order was refused, so
    /// the refusal leaves nothing behind: the client may retry with the same key, or reuse it
    /// for another body. Only deletes the fingerprint of this very body.
    pub async fn release(&self, key: &str, req: &OrderRequest) -> Result<bool, GuardError> {
        delete_if_equal(&self.redis, &self.redis_key(key, req), &fingerprint(req)).await
    }

    /// Records the key with this body's fingerprint, or compares with the one recorded.
    pub async fn claim(&self, key: &str, req: &OrderRequest) -> Result<KeyUse, GuardError> {
        let redis_key = self.redis_key(key, req);
        let print = fingerprint(req);
        let mut conn = self.redis.get().await?;
        let set: Option<String> = redis::cmd("SET")
            .arg(&redis_key)
            .arg(&print)
            .arg("NX")
            .arg("EX")
            .arg(TTL_SECONDS)
            .query_async(&mut conn)
            .await?;
        if set.is_some() {
            return Ok(KeyUse::New);
        }
        let recorded: Option<String> = redis::cmd("GET")
            .arg(&redis_key)
            .query_async(&mut conn)
            .await?;
        Ok(match recorded {
            Some(p) if p == print => KeyUse::Replay,
            Some(_) => KeyUse::Conflict,
            // Expired between SET and GET: treat as new; the order id is the same anyway.
            None => KeyUse::New,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_id_depends_on_key_and_customer_only() {
        let req = |q| OrderRequest {
            product_id: "p".into(),
            quantity: q,
            customer_id: Some("c".into()),
        };
        assert_eq!(order_id_for("k", &req(1)), order_id_for("k", &req(2)));
        assert_ne!(order_id_for("k", &req(1)), order_id_for("k2", &req(1)));
        let other_customer = OrderRequest {
            customer_id: Some("d".into()),
            ..req(1)
        };
        assert_ne!(
            order_id_for("k", &req(1)),
            order_id_for("k", &other_customer)
        );
        assert_ne!(fingerprint(&req(1)), fingerprint(&req(2)));
    }

    #[test]
    fn keys_are_visible_ascii() {
        assert!(valid_key("abc-123_X"));
        assert!(!valid_key(""));
        assert!(!valid_key("has space"));
        assert!(!valid_key(&"x".repeat(256)));
    }
}
