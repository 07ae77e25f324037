//! The orders service: the saga orchestrator.
//!
//! It consumes `orders_intake_queue` (`orders.create`) and, on a channel of its own,
//! `orders_queue` (`product.stockReserved`, `product.stockRejected`), keeps each order's saga
//! state in `orders.db` (or, with `DATABASE_URL`, in the PostgreSQL database all orders
//! instances share), decides behind Redis markers and locks, cancels orders whose deadline
//! passed, and answers `orders.get` and the sales reports (`orders.report.*`) on `orders_rpc`.
//! Everything it sends goes through the outbox.
//!
//! Layout:
//! - `consumer` — the two queue consumers (new orders, stock answers).
//! - `decide` — the saga's decisions and `OrderStatus`, written once for both stores.
//! - `saga` — the confirming step behind Redis markers and locks.
//! - `deadline` — the sweeper that cancels overdue orders.
//! - `rpc` — `orders.get` and the sales reports.
//! - `store` — the storage interface: `orders.db` (SQLite) and `store/pg.rs` (PostgreSQL).

pub mod consumer;
pub mod deadline;
pub mod decide;
pub mod rpc;
pub mod saga;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use messaging::Consumer;
use messaging::MessageHandler;
use messaging::broker::{Broker, BrokerConfig};
use messaging::idempotency::{Guard, shared_redis};
use messaging::outbox::Relay;
use messaging::pg::PgConfig;
use messaging::topology::{ORDERS_INTAKE_QUEUE, ORDERS_QUEUE, ORDERS_RPC_QUEUE};
use service_kit::Running;
use service_kit::config::{CommonConfig, env_or};

pub const SERVICE: &str = "orders";
pub const DEFAULT_PORT: u16 = 3002;

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// `ORDER_DEADLINE_MS`: how long an order waits for a stock answer before it is cancelled.
    pub deadline: Duration,
    /// `ORDERS_PREFETCH`: unacked stock answers the `orders_queue` consumer may hold.
    pub prefetch: u16,
    /// `ORDERS_INTAKE_PREFETCH`: unacked new orders the `orders_intake_queue` consumer may hold.
    pub intake_prefetch: u16,
    /// `DATABASE_URL` (with `DATABASE_POOL_SIZE`, `DATABASE_STATEMENT_TIMEOUT_MS`,
    /// `OUTBOX_LEASE_SECS`): the PostgreSQL database every orders instance shares; `None`
    /// keeps orders.db in `DATA_DIR`.
    pub database: Option<PgConfig>,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        // 64, not 32: at saturation the saga was held back by its windows, not by CPU
        // (docs/benchmarks.md, session 18).
        let prefetch: u16 = env_or("ORDERS_PREFETCH", 64)?;
        let intake_prefetch: u16 = env_or("ORDERS_INTAKE_PREFETCH", 64)?;
        Ok(Self {
            common: CommonConfig::from_env(DEFAULT_PORT)?,
            deadline: Duration::from_millis(env_or("ORDER_DEADLINE_MS", 30_000)?),
            prefetch,
            intake_prefetch,
            database: PgConfig::from_env(default_pool_size(intake_prefetch, prefetch))?,
        })
    }
}

/// The default `DATABASE_POOL_SIZE`: the two saga consumers' connections
/// ([`PgConfig::consumer_connections`]: one per message held, at most 32 each), plus 8 for
/// everything else that takes a connection at the same time: the `orders_rpc` reads (prefetch
/// 16, handled 8 at a time), the relay's claim and settle, the deadline sweep, the inbox pruning
/// and `/ready`. A message that finds the pool exhausted waits (up to 10 s) rather than fails.
pub fn default_pool_size(intake_prefetch: u16, prefetch: u16) -> usize {
    PgConfig::consumer_connections(intake_prefetch) + PgConfig::consumer_connections(prefetch) + 8
}

/// Opens the store (orders.db in `DATA_DIR`, or PostgreSQL with `DATABASE_URL`: then no file
/// is written), connects to the broker and Redis, and starts the saga. On PostgreSQL the
/// consumers start once the schema is migrated; until then `/ready` says false.
pub async fn spawn(config: Config) -> anyhow::Result<Running> {
    let db = store::Store::open(&config.common.data_dir, config.database.as_ref()).await?;
    let redis = shared_redis(&config.common.redis_url)?;
    let guard = Guard::new(redis.clone(), &config.common.redis_prefix);
    let broker = Broker::new(BrokerConfig::new(&config.common.amqp_url, SERVICE));
    let relay = Relay::new(db.backend(), broker.clone())?;
    let saga = saga::Saga {
        db: db.clone(),
        guard,
    };

    let intake = consumer::IntakeHandler {
        saga: saga.clone(),
        deadline: config.deadline,
    };
    let answers = consumer::AnswersHandler {
        intake: intake.clone(),
    };
    broker.attach(Arc::new(
        Consumer::new(ORDERS_INTAKE_QUEUE, SERVICE, intake.into_handler())
            .with_prefetch(config.intake_prefetch, usize::from(config.intake_prefetch)),
    ));
    broker.attach(Arc::new(
        Consumer::new(ORDERS_QUEUE, SERVICE, answers.into_handler())
            .with_prefetch(config.prefetch, usize::from(config.prefetch)),
    ));
    let reads = rpc::RpcHandler {
        db: db.clone(),
        broker: broker.clone(),
    };
    broker.attach(Arc::new(
        Consumer::new(ORDERS_RPC_QUEUE, SERVICE, reads.into_handler())
            .with_prefetch(16, 8)
            .for_requests(),
    ));

    let ready = service_kit::ops::broker_redis_and_store(broker.clone(), redis, &db.backend());
    let mut running = Running::start(
        SERVICE,
        config.common.http_addr,
        service_kit::ops::routes(ready),
    )
    .await?;
    let (deadline, sweep_every) = (
        config.deadline,
        (config.deadline / 10).clamp(Duration::from_millis(100), Duration::from_secs(1)),
    );
    running.run_broker(broker, db.backend());
    running.spawn(move |stop| relay.run(stop));
    running.spawn(move |stop| deadline::run(saga, deadline, sweep_every, stop));
    Ok(running)
}

#[cfg(test)]
mod tests {
    use super::default_pool_size;

    #[test]
    fn the_default_pool_follows_each_prefetch_up_to_32_connections() {
        assert_eq!(default_pool_size(16, 16), 40);
        assert_eq!(default_pool_size(16, 32), 56);
        // The default prefetch of 64 keeps the pool of 32 + 32 + 8 that the operations guide
        // sizes PostgreSQL's connections with.
        assert_eq!(default_pool_size(64, 64), 72);
        assert_eq!(default_pool_size(1000, 8), 48);
    }
}
