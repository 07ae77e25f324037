//! The products service: the catalogue and its stock.
//!
//! It consumes `products_queue` (`product.reserveStock`, `product.releaseStock`) and answers
//! reads and product creation on `products_rpc`. Every stock change commits in one transaction
//! with the inbox row of its message and the outbox row of its answer: in `products.db`
//! (SQLite, one instance), or in PostgreSQL when `DATABASE_URL` is set (several instances).
//!
//! Layout:
//! - `consumer` — `product.reserveStock` and `product.releaseStock`.
//! - `rpc` — `products.get` and `products.create`.
//! - `store` — products, stock and reservations (`ReservationStatus`): `products.db` (SQLite)
//!   and `store/pg.rs` (PostgreSQL).

pub mod consumer;
pub mod rpc;
pub mod store;

use std::sync::Arc;

use messaging::MessageHandler;
use messaging::broker::{Broker, BrokerConfig};
use messaging::outbox::Relay;
use messaging::pg::PgConfig;
use messaging::store::InboxRetention;
use messaging::topology::{PRODUCTS_QUEUE, PRODUCTS_RPC_QUEUE};
use messaging::{Consumer, Db, PgDb};
use service_kit::Running;
use service_kit::config::{CommonConfig, env_or};

use crate::store::Store;

pub const SERVICE: &str = "products";
pub const DEFAULT_PORT: u16 = 3001;

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// `PRODUCTS_PREFETCH`: unacked deliveries the stock consumer may hold.
    pub prefetch: u16,
    /// `DATABASE_URL` (and its pool settings): PostgreSQL instead of `DATA_DIR/products.db`.
    pub database: Option<PgConfig>,
}

/// The default `DATABASE_POOL_SIZE`: the stock consumer's connections
/// ([`PgConfig::consumer_connections`]: one per delivery held, at most 32), plus 8 for the RPC
/// consumer, the relay and `/ready`.
pub fn default_pool_size(prefetch: u16) -> usize {
    PgConfig::consumer_connections(prefetch) + 8
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        // 64, not 32: at saturation the saga was held back by its windows, not by CPU
        // (docs/benchmarks.md, session 18).
        let prefetch: u16 = env_or("PRODUCTS_PREFETCH", 64)?;
        Ok(Self {
            common: CommonConfig::from_env(DEFAULT_PORT)?,
            prefetch,
            database: PgConfig::from_env(default_pool_size(prefetch))?,
        })
    }
}

/// Opens its database (`products.db`, or PostgreSQL with `DATABASE_URL`: no file is written
/// then), connects to the broker and starts serving.
pub async fn spawn(config: Config) -> anyhow::Result<Running> {
    let store = match &config.database {
        None => Store::Sqlite(
            Db::open(&config.common.data_dir.join("products.db"), store::SCHEMA).await?,
        ),
        Some(pg) => Store::Postgres(PgDb::new(
            pg,
            SERVICE,
            &store::pg::MIGRATIONS,
            InboxRetention::from_env()?,
        )?),
    };
    let db = store.backend();
    let broker = Broker::new(BrokerConfig::new(&config.common.amqp_url, SERVICE));
    let relay = Relay::new(db.clone(), broker.clone())?;

    let stock = consumer::StockHandler {
        store: store.clone(),
    };
    // Stock changes serialize on SQLite's single writer anyway; a few in flight hide latency.
    let stock_consumer = Consumer::new(PRODUCTS_QUEUE, SERVICE, stock.into_handler())
        .with_prefetch(config.prefetch, usize::from(config.prefetch));
    broker.attach(Arc::new(stock_consumer));
    let reads = rpc::RpcHandler {
        store,
        broker: broker.clone(),
    };
    broker.attach(Arc::new(
        Consumer::new(PRODUCTS_RPC_QUEUE, SERVICE, reads.into_handler())
            .with_prefetch(16, 8)
            .for_requests(),
    ));

    let (ready_broker, ready_db) = (broker.clone(), db.clone());
    let ready: service_kit::ops::ReadyCheck = Arc::new(move || {
        let connected = ready_broker.is_connected();
        let db = ready_db.clone();
        Box::pin(async move {
            let mut checks = vec![("broker", connected)];
            if let messaging::Backend::Postgres(pg) = db {
                checks.push(("postgres", pg.is_ready().await));
            }
            checks
        })
    });
    let mut running = Running::start(
        SERVICE,
        config.common.http_addr,
        service_kit::ops::routes(ready),
    )
    .await?;
    running.spawn(move |stop| relay.run(stop));
    running.run_broker(broker, db);
    Ok(running)
}

#[cfg(test)]
mod tests {
    use super::default_pool_size;

    #[test]
    fn the_default_pool_follows_the_prefetch_up_to_32_connections() {
        assert_eq!(default_pool_size(16), 24);
        assert_eq!(default_pool_size(32), 40);
        // The default prefetch of 64 keeps the pool the operations guide sizes PostgreSQL with.
        assert_eq!(default_pool_size(64), 40);
    }
}
