//! The Redis side of idempotency: `processed:<key>` markers and `lock:<key>` locks.
//!
//! A lock is `SET lock:<key> <owner token> NX PX <ttl>` and is released by compare-and-delete
//! (a Lua script), so a process whose lock expired can never delete someone else's lock. Keys
//! carry an optional prefix so that test runs sharing one Redis do not see each other.
//!
//! The confirming step needs four commands per message (check the marker, take the lock, set
//! the marker, release the lock). [`Guard::begin`] and [`Guard::finish`] run them as two Lua
//! scripts — the same commands, two round trips instead of four. The deadline sweeper needs
//! only the lock: [`Guard::try_lock`] and [`Guard::release`].

use std::sync::LazyLock;
use std::time::Duration;

use deadpool_redis::{Config, Pool, Runtime};
use redis::Script;
use uuid::Uuid;

use crate::shared_redis::SharedRedis;

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("redis pool: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis config: {0}")]
    Config(#[from] deadpool_redis::CreatePoolError),
}

/// A Redis pool whose connections time out quickly, so that an outage shows up as an error
/// within a second instead of hanging a consumer.
pub fn redis_pool(url: &str) -> Result<Pool, GuardError> {
    let mut config = Config::from_url(url);
    let timeouts = deadpool_redis::Timeouts {
        wait: Some(Duration::from_secs(1)),
        create: Some(Duration::from_secs(1)),
        recycle: Some(Duration::from_secs(1)),
    };
    config.pool = Some(deadpool_redis::PoolConfig {
        // A process takes one connection at a time out of it (`SharedRedis`); the size only
        // bounds how many are made at once while a broken one is being replaced.
        max_size: 32,
        timeouts,
        ..Default::default()
    });
    Ok(config.create_pool(Some(Runtime::Tokio1))?)
}

/// The process's shared Redis connection ([`SharedRedis`]), made by a [`redis_pool`] on first
/// use.
pub fn shared_redis(url: &str) -> Result<SharedRedis, GuardError> {
    Ok(SharedRedis::new(redis_pool(url)?))
}

/// `PING`, for readiness checks.
pub async fn ping(redis: &SharedRedis) -> bool {
    let Ok(mut conn) = redis.get().await else {
        return false;
    };
    let pong: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
    pong.is_ok()
}

/// A held lock; give it back with [`Guard::release`].
#[derive(Debug)]
pub struct Lock {
    key: String,
    token: String,
}

#[derive(Clone)]
pub struct Guard {
    redis: SharedRedis,
    prefix: String,
}

/// Compare-and-delete: `KEYS[1]` = lock, `ARGV[1]` = owner token.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end"#,
    )
});

/// `GET processed` then `SET lock NX PX`: 0 = processed already, 1 = locked, 2 = lock held.
/// `KEYS` = processed, lock; `ARGV` = token, lock TTL in ms.
static BEGIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"if redis.call("EXISTS", KEYS[1]) == 1 then return 0 end
if redis.call("SET", KEYS[2], ARGV[1], "NX", "PX", ARGV[2]) then return 1 end
return 2"#,
    )
});

/// `SET processed PX` then compare-and-delete the lock; returns whether the lock was still ours.
/// `KEYS` = processed, lock; `ARGV` = token, marker TTL in ms.
static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"redis.call("SET", KEYS[1], 1, "PX", ARGV[2])
if redis.call("GET", KEYS[2]) == ARGV[1] then return redis.call("DEL", KEYS[2]) else return 0 end"#,
    )
});

/// Deletes `key` only if it still holds `value` (compare-and-delete, one round trip). Returns
/// whether it did.
pub async fn delete_if_equal(
    redis: &SharedRedis,
    key: &str,
    value: &str,
) -> Result<bool, GuardError> {
    let mut conn = redis.get().await?;
    let deleted: i64 = RELEASE.key(key).arg(value).invoke_async(&mut conn).await?;
    Ok(deleted == 1)
}

/// What [`Guard::begin`] found.
#[derive(Debug)]
pub enum Begin {
    /// `processed:<key>` exists: the step was done before.
    Processed,
    /// We hold `lock:<key>`.
    Locked(Lock),
    /// Somebody else holds `lock:<key>`.
    Held,
}

impl Guard {
    pub fn new(redis: SharedRedis, prefix: &str) -> Self {
        Self {
            redis,
            prefix: prefix.to_owned(),
        }
    }

    fn key(&self, kind: &str, key: &str) -> String {
        format!("{}{kind}:{key}", self.prefix)
    }

    /// Takes `lock:<key>` unless somebody holds it.
    pub async fn try_lock(&self, key: &str, ttl: Duration) -> Result<Option<Lock>, GuardError> {
        let mut conn = self.redis.get().await?;
        let key = self.key("lock", key);
        let token = Uuid::new_v4().to_string();
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        Ok(set.map(|_| Lock { key, token }))
    }

    /// Deletes the lock only if it is still ours. Returns whether it was.
    pub async fn release(&self, lock: Lock) -> Result<bool, GuardError> {
        delete_if_equal(&self.redis, &lock.key, &lock.token).await
    }

    /// Checks `processed:<key>` and, if absent, takes `lock:<key>` — in one round trip.
    pub async fn begin(&self, key: &str, lock_ttl: Duration) -> Result<Begin, GuardError> {
        let mut conn = self.redis.get().await?;
        let lock_key = self.key("lock", key);
        let token = Uuid::new_v4().to_string();
        let found: i64 = BEGIN
            .key(self.key("processed", key))
            .key(&lock_key)
            .arg(&token)
            .arg(lock_ttl.as_millis().max(1) as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(match found {
            0 => Begin::Processed,
            1 => Begin::Locked(Lock {
                key: lock_key,
                token,
            }),
            _ => Begin::Held,
        })
    }

    /// Sets `processed:<key>` for `ttl` and releases `lock` — in one round trip. Returns
    /// whether the lock was still ours.
    pub async fn finish(&self, key: &str, lock: Lock, ttl: Duration) -> Result<bool, GuardError> {
        let mut conn = self.redis.get().await?;
        let deleted: i64 = FINISH
            .key(self.key("processed", key))
            .key(&lock.key)
            .arg(&lock.token)
            // PX, not EX: a TTL under a second must not become "EX 0", which Redis refuses.
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(deleted == 1)
    }
}
