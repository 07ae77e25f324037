//! The Redis side of the notifier: deduplication, stats, order owners, and the `events` stream.
//!
//! Accepting a webhook is one Lua script, so it is atomic: `SET seen:<webhook-id> NX EX ttl`;
//! only if that succeeds, count an order event in the stats hashes (and a decision in its
//! minute, for the dashboard's chart), remember the order's owners (for room joins) and `XADD`
//! the event with the fresh stats to the `<prefix>events` stream; a stock change is only added
//! to the stream. There is
//! no moment at which a webhook is marked seen but not in the stream, and a duplicate is never
//! added twice. Every notifier instance reads the stream from where it left off and fans the
//! events out to its own WebSocket clients.
//!
//! A stream rather than pub/sub: a Redis restart (or a reconnect) loses whatever was published
//! while a subscriber was away or still in flight, and the webhook, already marked seen, would
//! never come again; the chaos suite saw WebSocket clients miss events that way. A reader of the
//! stream just continues after the last entry id it handled. The stream is capped at about
//! [`STREAM_MAXLEN`] entries.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use messaging::shared_redis::SharedRedis;
use redis::Script;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use crate::event::WebhookEvent;
use crate::event::{EventData, EventKind};
use crate::hub::Hub;

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

/// What travels on the `events` stream: one accepted webhook and, for an order event, the stats
/// after it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Broadcast {
    pub webhook_id: String,
    pub event: WebhookEvent,
    #[serde(default)]
    pub admin_stats: Option<Stats>,
    #[serde(default)]
    pub seller_stats: Option<SellerStats>,
}

/// The stats field an order event type counts in.
pub fn stats_field(kind: EventKind) -> Option<&'static str> {
    match kind {
        EventKind::OrderCreated => Some("created"),
        EventKind::OrderConfirmed => Some("confirmed"),
        EventKind::OrderRejected => Some("rejected"),
        EventKind::OrderCancelled => Some("cancelled"),
        EventKind::StockChanged => None,
    }
}

/// KEYS: seen, admin stats, seller stats, owner, stream, admin minute, seller minute.
/// ARGV: seen ttl, stats field, quantity, webhook body, webhook id, seller id, customer id, owner
/// ttl, stream cap, minute ttl.
/// Returns 1 (added to the stream) or 0 (duplicate).
///
/// The broadcast is written as text: the webhook body (ARGV[4], the verified JSON object the
/// publisher sent) is spliced in as it is, and the stats from the integer strings `HMGET`
/// returns (a missing field is `false` in Lua, i.e. 0). Decoding and re-encoding the body with
/// `cjson`, `tonumber` on every stats field and `cjson`'s printf-formatting of the numbers were
/// most of the script's own cost in Redis (docs/benchmarks.md, session 9).
///
/// A decision (confirmed, rejected, cancelled) is also counted in the minute it happened, for the
/// dashboard's chart (see [`Bus::decisions`]). A minute's hash gets its TTL when a count in it
/// is created (`HINCRBY` answers 1; only this script writes those hashes, so a hash never
/// exists without one), not again at every decision: two commands fewer per decision.
const ACCEPT: &str = r#"
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
if ARGV[2] == 'confirmed' or ARGV[2] == 'rejected' or ARGV[2] == 'cancelled' then
  if redis.call('HINCRBY', KEYS[6], ARGV[2], 1) == 1 then redis.call('EXPIRE', KEYS[6], ARGV[10]) end
  if ARGV[6] ~= '' then
    if redis.call('HINCRBY', KEYS[7], ARGV[2], 1) == 1 then redis.call('EXPIRE', KEYS[7], ARGV[10]) end
  end
end
local function count(key)
  redis.call('HINCRBY', key, ARGV[2], 1)
  if ARGV[2] == 'confirmed' then redis.call('HINCRBY', key, 'unitsConfirmed', tonumber(ARGV[3])) end
  local v = redis.call('HMGET', key, 'created', 'confirmed', 'rejected', 'cancelled', 'unitsConfirmed')
  return '"created":' .. (v[1] or '0') .. ',"confirmed":' .. (v[2] or '0')
    .. ',"rejected":' .. (v[3] or '0') .. ',"cancelled":' .. (v[4] or '0')
    .. ',"unitsConfirmed":' .. (v[5] or '0')
end
local msg = '{"webhookId":' .. cjson.encode(ARGV[5]) .. ',"event":' .. ARGV[4]
  .. ',"adminStats":{' .. count(KEYS[2]) .. '}'
if ARGV[6] ~= '' then
  msg = msg .. ',"sellerStats":{"sellerId":' .. cjson.encode(ARGV[6]) .. ',' .. count(KEYS[3]) .. '}'
end
redis.call('HSET', KEYS[4], 'customerId', ARGV[7], 'sellerId', ARGV[6])
redis.call('EXPIRE', KEYS[4], ARGV[8])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[9], '*', 'b', msg .. '}')
return 1
"#;

/// KEYS: seen, stream. ARGV: seen ttl, broadcast, stream cap. Returns 1 (added) or 0 (duplicate).
/// For events that count in no stats (stock changes).
const ACCEPT_PLAIN: &str = r#"
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'b', ARGV[2])
return 1
"#;

/// Hashed once; Redis runs them by their SHA (EVALSHA) and loads them again after a restart.
static ACCEPT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ACCEPT));
static ACCEPT_PLAIN_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ACCEPT_PLAIN));

/// How long the per-minute decision counts are kept: the chart shows the last hour.
pub const MINUTES_TTL: Duration = Duration::from_secs(2 * 3600);

/// The decisions of one minute.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MinuteCounts {
    /// Start of the minute, Unix milliseconds.
    pub at: i64,
    pub confirmed: i64,
    pub rejected: i64,
    pub cancelled: i64,
}

/// The Unix minute an RFC 3339 time falls in (`now` when it is not one).
pub fn minute_of(rfc3339: &str, now: OffsetDateTime) -> i64 {
    let at = OffsetDateTime::parse(rfc3339, &Rfc3339).unwrap_or(now);
    at.unix_timestamp().div_euclid(60)
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("redis pool: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("event body: {0}")]
    Json(#[from] serde_json::Error),
}

/// Who an order belongs to, as remembered from its events.
#[derive(Debug, Clone, PartialEq)]
pub struct Owners {
    pub customer_id: Option<String>,
    pub seller_id: Option<String>,
}

#[derive(Clone)]
pub struct Bus {
    redis: SharedRedis,
    prefix: String,
    pub seen_ttl: Duration,
    pub owner_ttl: Duration,
}

impl Bus {
    pub fn new(redis: SharedRedis, prefix: &str, seen_ttl: Duration) -> Self {
        Self {
            redis,
            prefix: prefix.to_owned(),
            seen_ttl,
            owner_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }

    /// `<prefix>events`: the stream every accepted webhook is added to.
    pub fn channel(&self) -> String {
        format!("{}events", self.prefix)
    }

    fn owner_key(&self, order_id: &str) -> String {
        format!("{}order-owners:{order_id}", self.prefix)
    }

    fn seen_key(&self, webhook_id: &str) -> String {
        format!("{}webhook-seen:{webhook_id}", self.prefix)
    }

    fn minute_key(&self, seller: Option<&str>, minute: i64) -> String {
        match seller {
            Some(seller) => format!("{}decisions:seller:{seller}:{minute}", self.prefix),
            None => format!("{}decisions:admin:{minute}", self.prefix),
        }
    }

    /// Adds the event to the stream unless its webhook id was seen before; an order event is
    /// also counted in the stats. Returns whether it was new. `body` is the webhook body that
    /// `event` was read from (a JSON object): it travels on the stream as it came, instead of
    /// being written out again.
    pub async fn accept(
        &self,
        webhook_id: &str,
        event: &WebhookEvent,
        body: &[u8],
    ) -> Result<bool, BusError> {
        let (EventData::Order(data), Some(field)) = (&event.data, stats_field(event.kind)) else {
            return self.accept_plain(webhook_id, event).await;
        };
        let seller = data.seller_id.clone().unwrap_or_default();
        let minute = minute_of(&data.occurred_at, OffsetDateTime::now_utc());
        let mut conn = self.redis.get().await?;
        let published: i64 = ACCEPT_SCRIPT
            .key(self.seen_key(webhook_id))
            .key(format!("{}stats:admin", self.prefix))
            .key(format!("{}stats:seller:{seller}", self.prefix))
            .key(self.owner_key(&data.order_id))
            .key(self.channel())
            .key(self.minute_key(None, minute))
            .key(self.minute_key(Some(&seller), minute))
            .arg(self.seen_ttl.as_secs().max(1))
            .arg(field)
            .arg(data.quantity)
            .arg(body)
            .arg(webhook_id)
            .arg(seller)
            .arg(data.customer_id.clone().unwrap_or_default())
            .arg(self.owner_ttl.as_secs().max(1))
            .arg(STREAM_MAXLEN)
            .arg(MINUTES_TTL.as_secs())
            .invoke_async(&mut conn)
            .await?;
        Ok(published == 1)
    }

    /// Adds an event that counts in no stats (a stock change) to the stream, unless its webhook
    /// id was seen before.
    async fn accept_plain(&self, webhook_id: &str, event: &WebhookEvent) -> Result<bool, BusError> {
        let broadcast = Broadcast {
            webhook_id: webhook_id.to_owned(),
            event: event.clone(),
            admin_stats: None,
            seller_stats: None,
        };
        let mut conn = self.redis.get().await?;
        let published: i64 = ACCEPT_PLAIN_SCRIPT
            .key(self.seen_key(webhook_id))
            .key(self.channel())
            .arg(self.seen_ttl.as_secs().max(1))
            .arg(serde_json::to_string(&broadcast)?)
            .arg(STREAM_MAXLEN)
            .invoke_async(&mut conn)
            .await?;
        Ok(published == 1)
    }

    /// The decisions per minute of the `minutes` minutes up to and including the one `now` is
    /// in, oldest first: all of them, or those of one seller's products.
    pub async fn decisions(
        &self,
        seller: Option<&str>,
        now: OffsetDateTime,
        minutes: i64,
    ) -> Result<Vec<MinuteCounts>, BusError> {
        let last = now.unix_timestamp().div_euclid(60);
        let range: Vec<i64> = (last - minutes + 1..=last).collect();
        let mut pipe = redis::pipe();
        for minute in &range {
            pipe.cmd("HGETALL").arg(self.minute_key(seller, *minute));
        }
        let mut conn = self.redis.get().await?;
        let hashes: Vec<std::collections::HashMap<String, i64>> =
            pipe.query_async(&mut conn).await?;
        Ok(range
            .into_iter()
            .zip(hashes)
            .map(|(minute, counts)| {
                let get = |name: &str| counts.get(name).copied().unwrap_or(0);
                MinuteCounts {
                    at: minute * 60_000,
                    confirmed: get("confirmed"),
                    rejected: get("rejected"),
                    cancelled: get("cancelled"),
                }
            })
            .collect())
    }

    /// The owners of an order, if any of its events came through here.
    pub async fn owners(&self, order_id: &str) -> Result<Option<Owners>, BusError> {
        let mut conn = self.redis.get().await?;
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

/// About how many events the stream keeps (`XADD MAXLEN ~`): far more than a reader falls behind
/// while Redis restarts or its connection is rebuilt (seconds), and a few MB of Redis memory.
pub const STREAM_MAXLEN: u64 = 10_000;
/// How long one `XREAD` waits for new entries; also how quickly a dead connection is noticed.
const BLOCK: Duration = Duration::from_secs(2);
const READ_BATCH: usize = 500;
/// After a read that found entries, the reader waits this long before the next one, so that
/// entries arriving meanwhile come in one `XREAD`. Without it, at a steady rate nearly every
/// entry cost a read of its own (a Redis command, a reply to parse, a wake-up of this task):
/// ~3 webhooks per order. A WebSocket client gets an event at most this much later; a full
/// batch (a backlog) is followed by the next read at once.
pub const READ_GAP: Duration = Duration::from_millis(5);

/// Reads the `events` stream and hands every broadcast to the hub, continuing after the last
/// entry it handled when Redis comes back; reconnects with a capped backoff. `subscribed` tells
/// readiness whether it is reading.
pub async fn listen(
    redis_url: String,
    stream: String,
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
    // The id of the last entry handled; at the very start, the newest entry there is.
    let mut last_id: Option<String> = None;
    while !stop.is_cancelled() {
        match connect(&redis_url).await {
            Ok(mut conn) => {
                let start = match &last_id {
                    Some(id) => Ok(id.clone()),
                    None => newest_id(&mut conn, &stream).await,
                };
                match start {
                    Ok(id) => {
                        last_id = Some(id);
                        delays = backoff();
                        subscribed.store(true, Ordering::SeqCst);
                        info!(%stream, "reading events from Redis");
                        let ended = relay(&mut conn, &stream, &mut last_id, &hub, &stop).await;
                        subscribed.store(false, Ordering::SeqCst);
                        if let Err(e) = ended {
                            warn!(%stream, error = %e, "lost the Redis events stream; reconnecting");
                        }
                    }
                    Err(e) => {
                        warn!(%stream, error = %e, "could not read the events stream; retrying")
                    }
                }
            }
            Err(e) => warn!(%stream, error = %e, "could not connect to Redis; retrying"),
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(3));
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// A connection of its own (a blocking `XREAD` would hold up a shared one), whose reads may
/// take as long as a block.
async fn connect(redis_url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(redis_url)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_response_timeout(Some(BLOCK + Duration::from_secs(3)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// The id of the newest entry of the stream, `0-0` when it is empty or does not exist yet.
async fn newest_id(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
) -> redis::RedisResult<String> {
    let newest: redis::Value = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    Ok(entries(&newest)
        .into_iter()
        .next()
        .map(|(id, _)| id)
        .unwrap_or_else(|| "0-0".to_owned()))
}

/// Hands entries to the hub until `stop` (`Ok`) or a Redis error.
async fn relay(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    last_id: &mut Option<String>,
    hub: &Hub,
    stop: &CancellationToken,
) -> redis::RedisResult<()> {
    loop {
        let after = last_id.clone().unwrap_or_else(|| "0-0".to_owned());
        let mut command = redis::cmd("XREAD");
        command
            .arg("COUNT")
            .arg(READ_BATCH)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(stream)
            .arg(&after);
        let read = command.query_async::<redis::Value>(conn);
        let reply = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            reply = read => reply?,
        };
        // One stream asked for: [[name, entries]], or nil when the block timed out.
        let batches = match &reply {
            redis::Value::Array(streams) => streams.as_slice(),
            _ => &[],
        };
        let mut read = 0;
        for batch in batches {
            let redis::Value::Array(parts) = batch else {
                continue;
            };
            let Some(list) = parts.get(1) else {
                continue;
            };
            for (id, payload) in entries(list) {
                if let Some(payload) = payload {
                    deliver(hub, &payload);
                }
                *last_id = Some(id);
                read += 1;
            }
        }
        if read > 0 && read < READ_BATCH {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(READ_GAP) => {}
            }
        }
    }
}

/// `[[id, [field, value, …]], …]` → (id, value of field `b`).
fn entries(list: &redis::Value) -> Vec<(String, Option<Vec<u8>>)> {
    let redis::Value::Array(items) = list else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let redis::Value::Array(pair) = item else {
                return None;
            };
            let id = text(pair.first()?)?;
            let payload = match pair.get(1) {
                Some(redis::Value::Array(fields)) => fields
                    .chunks(2)
                    .find(|kv| kv.first().and_then(text).as_deref() == Some("b"))
                    .and_then(|kv| kv.get(1))
                    .and_then(bytes),
                _ => None,
            };
            Some((id, payload))
        })
        .collect()
}

fn bytes(value: &redis::Value) -> Option<Vec<u8>> {
    match value {
        redis::Value::BulkString(b) => Some(b.clone()),
        redis::Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    }
}

fn text(value: &redis::Value) -> Option<String> {
    bytes(value).and_then(|b| String::from_utf8(b).ok())
}

fn deliver(hub: &Hub, payload: &[u8]) {
    // Nobody connected to this instance: nothing to read the broadcast for.
    if hub.is_empty() {
        return;
    }
    match serde_json::from_slice::<Broadcast>(payload) {
        Ok(broadcast) => hub.dispatch(&broadcast),
        Err(e) => {
            warn!(error = %e, "ignoring a message on the events channel that is not a broadcast")
        }
    }
}
