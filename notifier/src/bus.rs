//! The Redis side of the notifier: deduplication, stats, order owners, and the `events` channel.
//!
//! Accepting a webhook is one Lua script, so it is atomic: `SET seen:<webhook-id> NX EX ttl`;
//! only if that succeeds, count the event in the stats hashes, remember the order's owners (for
//! room joins) and `PUBLISH` the event with the fresh stats on `<prefix>events`. There is no
//! moment at which a webhook is marked seen but not published, so a crash cannot lose one, and a
//! duplicate can never be published twice. While no instance listens on the channel (Redis just
//! restarted and the subscriptions are not back yet) a webhook is refused with 503 rather than
//! published to no one and marked seen, so the sender's retry brings it to the clients. Every
//! notifier instance subscribes to the channel and fans the events out to its own WebSocket
//! clients.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use messaging::contracts::OrderEvent;
use redis::Script;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::hub::Hub;

/// The body of a Standard Webhooks request from the publisher.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WebhookEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub timestamp: String,
    pub data: OrderEvent,
}

/// Counts of order events since the stats keys were created.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    #[serde(default)]
    pub created: i64,
    #[serde(default)]
    pub confirmed: i64,
    #[serde(default)]
    pub rejected: i64,
    #[serde(default)]
    pub cancelled: i64,
    /// Σ quantity of confirmed orders.
    #[serde(default)]
    pub units_confirmed: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SellerStats {
    pub seller_id: String,
    #[serde(flatten)]
    pub stats: Stats,
}

/// What travels on the `events` channel: one accepted webhook and the stats after it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Broadcast {
    pub webhook_id: String,
    pub event: WebhookEvent,
    pub admin_stats: Stats,
    #[serde(default)]
    pub seller_stats: Option<SellerStats>,
}

/// The stats field an event type counts in.
pub fn stats_field(kind: &str) -> Option<&'static str> {
    match kind {
        "order.created" => Some("created"),
        "order.confirmed" => Some("confirmed"),
        "order.rejected" => Some("rejected"),
        "order.cancelled" => Some("cancelled"),
        _ => None,
    }
}

/// KEYS: seen, admin stats, seller stats, owner, channel.
/// ARGV: seen ttl, stats field, quantity, webhook body, webhook id, seller id, customer id, owner ttl.
/// Returns 1 (published), 0 (duplicate) or -1: nobody listens on the channel, so publishing would
/// show the event to no one while marking it seen; the sender is told to retry instead.
const ACCEPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('PUBSUB', 'NUMSUB', KEYS[5])[2] == 0 then return -1 end
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
local function count(key)
  redis.call('HINCRBY', key, ARGV[2], 1)
  if ARGV[2] == 'confirmed' then redis.call('HINCRBY', key, 'unitsConfirmed', tonumber(ARGV[3])) end
  local flat = redis.call('HGETALL', key)
  local stats = {created = 0, confirmed = 0, rejected = 0, cancelled = 0, unitsConfirmed = 0}
  for i = 1, #flat, 2 do stats[flat[i]] = tonumber(flat[i + 1]) end
  return stats
end
local msg = {webhookId = ARGV[5], event = cjson.decode(ARGV[4]), adminStats = count(KEYS[2])}
if ARGV[6] ~= '' then
  local seller = count(KEYS[3])
  seller.sellerId = ARGV[6]
  msg.sellerStats = seller
end
redis.call('HSET', KEYS[4], 'customerId', ARGV[7], 'sellerId', ARGV[6])
redis.call('EXPIRE', KEYS[4], ARGV[8])
redis.call('PUBLISH', KEYS[5], cjson.encode(msg))
return 1
"#;

/// Hashed once; Redis runs it by its SHA (EVALSHA) and loads it again after a restart.
static ACCEPT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ACCEPT));

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("redis pool: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("event body: {0}")]
    Json(#[from] serde_json::Error),
    #[error("no notifier listens on the events channel (Redis just restarted?)")]
    NoListener,
}

/// Who an order belongs to, as remembered from its events.
#[derive(Debug, Clone, PartialEq)]
pub struct Owners {
    pub customer_id: Option<String>,
    pub seller_id: Option<String>,
}

#[derive(Clone)]
pub struct Bus {
    pool: deadpool_redis::Pool,
    prefix: String,
    pub seen_ttl: Duration,
    pub owner_ttl: Duration,
}

impl Bus {
    pub fn new(pool: deadpool_redis::Pool, prefix: &str, seen_ttl: Duration) -> Self {
        Self {
            pool,
            prefix: prefix.to_owned(),
            seen_ttl,
            owner_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }

    pub fn pool(&self) -> &deadpool_redis::Pool {
        &self.pool
    }

    /// `<prefix>events`.
    pub fn channel(&self) -> String {
        format!("{}events", self.prefix)
    }

    fn owner_key(&self, order_id: &str) -> String {
        format!("{}order-owners:{order_id}", self.prefix)
    }

    /// Publishes the event unless its webhook id was seen before. Returns whether it was new.
    pub async fn accept(
        &self,
        webhook_id: &str,
        field: &str,
        event: &WebhookEvent,
    ) -> Result<bool, BusError> {
        let body = serde_json::to_string(event)?;
        let data = &event.data;
        let seller = data.seller_id.clone().unwrap_or_default();
        let mut conn = self.pool.get().await?;
        let published: i64 = ACCEPT_SCRIPT
            .key(format!("{}webhook-seen:{webhook_id}", self.prefix))
            .key(format!("{}stats:admin", self.prefix))
            .key(format!("{}stats:seller:{seller}", self.prefix))
            .key(self.owner_key(&data.order_id))
            .key(self.channel())
            .arg(self.seen_ttl.as_secs().max(1))
            .arg(field)
            .arg(data.quantity)
            .arg(body)
            .arg(webhook_id)
            .arg(seller)
            .arg(data.customer_id.clone().unwrap_or_default())
            .arg(self.owner_ttl.as_secs().max(1))
            .invoke_async(&mut conn)
            .await?;
        if published == -1 {
            return Err(BusError::NoListener);
        }
        Ok(published == 1)
    }

    /// The owners of an order, if any of its events came through here.
    pub async fn owners(&self, order_id: &str) -> Result<Option<Owners>, BusError> {
        let mut conn = self.pool.get().await?;
        let fields: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.owner_key(order_id))
            .query_async(&mut conn)
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let get = |name: &str| fields.get(name).filter(|v| !v.is_empty()).cloned();
        Ok(Some(Owners {
            customer_id: get("customerId"),
            seller_id: get("sellerId"),
        }))
    }
}

/// Subscribes to the `events` channel and hands every broadcast to the hub; reconnects with a
/// capped backoff when Redis goes away. `subscribed` tells readiness whether we are listening.
pub async fn listen(
    redis_url: String,
    channel: String,
    hub: Arc<Hub>,
    subscribed: Arc<std::sync::atomic::AtomicBool>,
    stop: CancellationToken,
) {
    use std::sync::atomic::Ordering;
    let backoff = || {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(3))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut delays = backoff();
    while !stop.is_cancelled() {
        match subscribe(&redis_url, &channel).await {
            Ok(pubsub) => {
                delays = backoff();
                subscribed.store(true, Ordering::SeqCst);
                info!(%channel, "listening for events on Redis");
                if !relay(pubsub, &hub, &stop).await {
                    warn!(%channel, "lost the Redis subscription; reconnecting");
                }
                subscribed.store(false, Ordering::SeqCst);
            }
            Err(e) => warn!(%channel, error = %e, "could not subscribe on Redis; retrying"),
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(3));
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// How often the subscription connection is checked with a PING: a connection that died without
/// a reset (network partition) would otherwise look subscribed forever.
const HEALTH_CHECK: Duration = Duration::from_secs(10);

/// Hands messages to the hub until the subscription breaks (`false`) or `stop` (`true`).
async fn relay(pubsub: redis::aio::PubSub, hub: &Hub, stop: &CancellationToken) -> bool {
    let (mut sink, mut messages) = pubsub.split();
    let mut health = tokio::time::interval(HEALTH_CHECK);
    health.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return true,
            message = messages.next() => match message {
                Some(message) => deliver(hub, message.get_payload_bytes()),
                None => return false,
            },
            _ = health.tick() => {
                let pong = tokio::time::timeout(Duration::from_secs(3), sink.ping::<redis::Value>()).await;
                if !matches!(pong, Ok(Ok(_))) {
                    return false;
                }
            }
        }
    }
}

async fn subscribe(redis_url: &str, channel: &str) -> redis::RedisResult<redis::aio::PubSub> {
    let client = redis::Client::open(redis_url)?;
    let mut pubsub = tokio::time::timeout(Duration::from_secs(3), client.get_async_pubsub())
        .await
        .map_err(|_| {
            redis::RedisError::from((redis::ErrorKind::Io, "connect to Redis timed out"))
        })??;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

fn deliver(hub: &Hub, payload: &[u8]) {
    match serde_json::from_slice::<Broadcast>(payload) {
        Ok(broadcast) => hub.dispatch(&broadcast),
        Err(e) => {
            warn!(error = %e, "ignoring a message on the events channel that is not a broadcast")
        }
    }
}
