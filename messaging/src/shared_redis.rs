//! One Redis connection shared by every task of a process, taken from the deadpool pool and
//! given back to it only when it breaks.
//!
//! `deadpool-redis` hands out `MultiplexedConnection`s and, to check a connection it hands out
//! again, sends `UNWATCH` + `PING` first: one round trip per `pool.get()`. Every webhook the
//! notifier accepts, every stock answer orders confirms and every order the gateway admits took a
//! connection that way, i.e. six of the ≈ 24 Redis round trips of an order were these checks
//! (docs/benchmarks.md, session 14). A multiplexed connection is made to be shared: its clones
//! pipeline their commands over one socket, in order, each command still atomic (the scripts
//! too). So a process keeps one and clones it per use, and the check happens where it is cheap:
//! a command that fails because the connection is gone (I/O error, dropped, timed out) retires
//! the connection, and the next use takes a fresh one from the pool (its `create` timeout
//! applies, so an outage is an error within a second, as before).
//!
//! What it does not suit: commands that change the connection's state (`WATCH`/`MULTI`,
//! `SELECT`, `SUBSCRIBE`, a blocking `XREAD`) — nothing here sends them; the notifier's stream
//! reader has a connection of its own.

use std::sync::{Arc, Mutex};

use deadpool_redis::{Pool, PoolError};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

/// The process's Redis connection (cheap to clone: clones share it).
#[derive(Clone)]
pub struct SharedRedis {
    pool: Pool,
    current: Arc<Mutex<Option<Current>>>,
}

/// The connection in use, and which one it is (so that a late failure of a connection already
/// replaced does not retire its successor).
#[derive(Clone)]
struct Current {
    generation: u64,
    conn: MultiplexedConnection,
}

/// A use of the shared connection: pass `&mut` it wherever `redis` takes a connection.
pub struct SharedConn {
    current: Current,
    owner: SharedRedis,
}

impl SharedRedis {
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            current: Arc::new(Mutex::new(None)),
        }
    }

    /// The shared connection; a new one from the pool when there is none (first use, or the last
    /// one broke).
    pub async fn get(&self) -> Result<SharedConn, PoolError> {
        if let Some(current) = self.lock().clone() {
            return Ok(self.conn(current));
        }
        // Taken out of the pool for good: it is shared from now on, never recycled.
        let fresh = deadpool_redis::Connection::take(self.pool.get().await?);
        let mut slot = self.lock();
        // Another task may have made one meanwhile: use that one, and drop this one.
        let current = slot.get_or_insert_with(|| Current {
            generation: next_generation(),
            conn: fresh,
        });
        let current = current.clone();
        drop(slot);
        Ok(self.conn(current))
    }

    fn conn(&self, current: Current) -> SharedConn {
        SharedConn {
            current,
            owner: self.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Current>> {
        // The slot holds a plain value that no panic can leave half-written.
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets connection `generation` if it is still the current one.
    fn retire(&self, generation: u64) {
        let mut slot = self.lock();
        if slot.as_ref().is_some_and(|c| c.generation == generation) {
            *slot = None;
        }
    }
}

fn next_generation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Whether `e` says the connection itself is no good (as opposed to a command's error, such
/// as a script's or a wrong type, after which the connection is fine).
fn connection_broken(e: &RedisError) -> bool {
    e.is_unrecoverable_error() || e.is_io_error() || e.is_connection_dropped() || e.is_timeout()
}

impl SharedConn {
    fn checked<T>(&self, result: Result<T, RedisError>) -> Result<T, RedisError> {
        if let Err(e) = &result
            && connection_broken(e)
        {
            self.owner.retire(self.current.generation);
        }
        result
    }
}

impl ConnectionLike for SharedConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.current.conn.req_packed_command(cmd).await;
            self.checked(result)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self
                .current
                .conn
                .req_packed_commands(pipeline, offset, count)
                .await;
            self.checked(result)
        })
    }

    fn get_db(&self) -> i64 {
        self.current.conn.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_error_is_not_a_broken_connection() {
        let script_error = RedisError::from((redis::ErrorKind::Extension, "ERR", "bad".into()));
        assert!(!connection_broken(&script_error));
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(connection_broken(&io));
    }
}
