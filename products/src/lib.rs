//! The products service: the catalogue and its stock.
//!
//! It consumes `products_queue` (`product.reserveStock`, `product.releaseStock`) and answers
//! reads and product creation on `products_rpc`. Every stock change commits in one SQLite
//! transaction with the inbox row of its message and the outbox row of its answer.

pub mod consumer;
pub mod rpc;
pub mod store;

use std::sync::Arc;

use messaging::MessageHandler;
use messaging::broker::{Broker, BrokerConfig};
use messaging::config::{CommonConfig, env_or};
use messaging::outbox::Relay;
use messaging::service::Running;
use messaging::topology::{PRODUCTS_QUEUE, PRODUCTS_RPC_QUEUE};
use messaging::{Consumer, Db};

pub const SERVICE: &str = "products";
pub const DEFAULT_PORT: u16 = 3001;

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// `PRODUCTS_PREFETCH`: unacked deliveries the stock consumer may hold.
    pub prefetch: u16,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            common: CommonConfig::from_env(DEFAULT_PORT)?,
            prefetch: env_or("PRODUCTS_PREFETCH", 32)?,
        })
    }
}

/// Opens `products.db`, connects to the broker and starts serving.
pub async fn spawn(config: Config) -> anyhow::Result<Running> {
    let db = Db::open(&config.common.data_dir.join("products.db"), store::SCHEMA).await?;
    let broker = Broker::new(BrokerConfig::new(&config.common.amqp_url, SERVICE));
    let relay = Relay::new(db.clone(), broker.clone())?;

    let stock = consumer::StockHandler { db: db.clone() };
    // Stock changes serialize on SQLite's single writer anyway; a few in flight hide latency.
    let stock_consumer = Consumer::new(PRODUCTS_QUEUE, SERVICE, stock.into_handler())
        .with_prefetch(config.prefetch, usize::from(config.prefetch));
    broker.attach(Arc::new(stock_consumer));
    let reads = rpc::RpcHandler {
        db: db.clone(),
        broker: broker.clone(),
    };
    broker.attach(Arc::new(
        Consumer::new(PRODUCTS_RPC_QUEUE, SERVICE, reads.into_handler())
            .with_prefetch(16, 8)
            .for_requests(),
    ));

    let ready_broker = broker.clone();
    let ready: messaging::ops::ReadyCheck = Arc::new(move || {
        let connected = ready_broker.is_connected();
        Box::pin(async move { vec![("broker", connected)] })
    });
    let mut running = Running::start(
        SERVICE,
        config.common.http_addr,
        messaging::ops::routes(ready),
    )
    .await?;
    running.spawn(move |stop| broker.run(stop));
    running.spawn(move |stop| relay.run(stop));
    running.close_on_stop(db);
    Ok(running)
}
