//! The orders service: the saga orchestrator.
//!
//! It consumes `orders_intake_queue` (`orders.create`) and, on a channel of its own,
//! `orders_queue` (`product.stockReserved`, `product.stockRejected`), keeps each order's saga
//! state in `orders.db`, decides behind Redis markers and locks, cancels orders whose deadline
//! passed, and answers `orders.get` and the sales reports (`orders.report.*`) on `orders_rpc`.
//! Everything it sends goes through the outbox.

pub mod consumer;
pub mod deadline;
pub mod rpc;
pub mod saga;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use messaging::Consumer;
use messaging::MessageHandler;
use messaging::broker::{Broker, BrokerConfig};
use messaging::config::{CommonConfig, env_or};
use messaging::idempotency::{Guard, redis_pool};
use messaging::outbox::Relay;
use messaging::service::Running;
use messaging::topology::{ORDERS_INTAKE_QUEUE, ORDERS_QUEUE, ORDERS_RPC_QUEUE};

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
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            common: CommonConfig::from_env(DEFAULT_PORT)?,
            deadline: Duration::from_millis(env_or("ORDER_DEADLINE_MS", 30_000)?),
            prefetch: env_or("ORDERS_PREFETCH", 32)?,
            intake_prefetch: env_or("ORDERS_INTAKE_PREFETCH", 32)?,
        })
    }
}

/// Opens `orders.db`, connects to the broker and Redis, and starts the saga.
pub async fn spawn(config: Config) -> anyhow::Result<Running> {
    let db = store::open(&config.common.data_dir.join("orders.db")).await?;
    let redis = redis_pool(&config.common.redis_url)?;
    let guard = Guard::new(redis.clone(), &config.common.redis_prefix);
    let broker = Broker::new(BrokerConfig::new(&config.common.amqp_url, SERVICE));
    let relay = Relay::new(db.clone(), broker.clone())?;
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

    let ready = messaging::ops::broker_and_redis(broker.clone(), redis);
    let mut running = Running::start(
        SERVICE,
        config.common.http_addr,
        messaging::ops::routes(ready),
    )
    .await?;
    let (deadline, sweep_every) = (
        config.deadline,
        (config.deadline / 10).clamp(Duration::from_millis(100), Duration::from_secs(1)),
    );
    running.spawn(move |stop| broker.run(stop));
    running.spawn(move |stop| relay.run(stop));
    running.spawn(move |stop| deadline::run(saga, deadline, sweep_every, stop));
    running.close_on_stop(db);
    Ok(running)
}
