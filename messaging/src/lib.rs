//! Messaging plumbing shared by every service of the saga: the message envelope, the broker
//! topology, a reconnecting broker link with a confirmed publisher, the consumer loop, AMQP
//! request/response, the Redis idempotency guard, the inbox/outbox on SQLite (`store`) or
//! PostgreSQL (`pg`) and the outbox relay, and
//! the operational HTTP endpoints.

mod acks;
pub mod auth;
pub mod broker;
pub mod config;
pub mod consumer;
pub mod contracts;
pub mod deadletter;
pub mod envelope;
mod group_commit;
pub mod idempotency;
pub mod ops;
pub mod outbox;
pub mod pg;
pub mod problem;
pub mod rpc;
pub mod service;
pub mod signature;
pub mod store;
pub mod telemetry;
pub mod topology;

pub use broker::{Broker, BrokerConfig, PublishError};
pub use consumer::{Consumer, HandleError, Handler, MessageHandler};
pub use envelope::{Incoming, MessageMeta, OutgoingMessage};
pub use pg::PgDb;
pub use store::{Backend, Db};
