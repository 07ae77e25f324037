//! Per-subject rate limiting: a token bucket kept in Redis, so the limit holds across gateway
//! instances. The bucket refills at `RATE_LIMIT_PER_SEC` up to `RATE_LIMIT_BURST`; the script
//! uses Redis' own clock so instances with skewed clocks agree.
//!
//! When Redis does not answer, requests are let through (fail open) with a warning: the limiter
//! protects capacity, and refusing every request during a Redis outage would be the outage.

use std::sync::LazyLock;

use messaging::shared_redis::SharedRedis;
use redis::Script;
use tracing::warn;

const BUCKET: &str = r#"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
local wait_ms = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait_ms = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return wait_ms
"#;

/// Hashed once (Redis runs it by its SHA, and loads it again after a restart).
static BUCKET_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(BUCKET));

#[derive(Clone)]
pub struct RateLimiter {
    redis: SharedRedis,
    prefix: String,
    per_second: f64,
    burst: u32,
}

impl RateLimiter {
    /// `per_second = 0` turns limiting off.
    pub fn new(redis: SharedRedis, prefix: &str, per_second: f64, burst: u32) -> Self {
        Self {
            redis,
            prefix: prefix.to_owned(),
            per_second,
            burst: burst.max(1),
        }
    }

    /// Spends one request of `subject`'s budget. `Some(seconds)` to wait when it is spent.
    pub async fn spend(&self, subject: &str) -> Option<u64> {
        if self.per_second <= 0.0 {
            return None;
        }
        let key = format!("{}ratelimit:{subject}", self.prefix);
        let result: Result<i64, String> = async {
            let mut conn = self.redis.get().await.map_err(|e| e.to_string())?;
            BUCKET_SCRIPT
                .key(&key)
                .arg(self.per_second)
                .arg(self.burst)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        match result {
            Ok(0) => None,
            Ok(wait_ms) => Some((wait_ms as u64).div_ceil(1000).max(1)),
            Err(e) => {
                warn!(%subject, error = %e, "rate limiter unavailable; letting the request through");
                None
            }
        }
    }
}
