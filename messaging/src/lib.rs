//! Messaging plumbing shared by every service of the saga: the message envelope, the broker
//! topology, a reconnecting broker link with a confirmed publisher, the consumer loop, AMQP
//! request/response, the Redis idempotency guard, the inbox/outbox on SQLite (`store`) or
//! PostgreSQL (`pg`) and the outbox relay, and
//! the operational HTTP endpoints.

mod acks;
pub mod auth;
pub mod broker;
pub mod clock;
pub mod config;
pub mod consumer;
pub mod contracts;
mod db_error;
pub mod deadletter;
pub mod envelope;
mod group_commit;
mod handoff;
pub mod idempotency;
mod inbox_retention;
pub mod ops;
pub mod outbox;
pub mod pg;
pub mod problem;
pub mod rpc;
pub mod service;
pub mod signature;
mod sqlite_tx;
pub mod store;
pub mod telemetry;
pub mod text_column;
pub mod topology;

pub use broker::{Broker, BrokerConfig, PublishError};
pub use consumer::{Consumer, HandleError, Handler, MessageHandler};
pub use envelope::{Incoming, MessageMeta, OutgoingMessage};
pub use pg::PgDb;
pub use store::{Backend, Db};
