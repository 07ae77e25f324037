//! Messaging plumbing shared by every service of the saga, the AMQP side only: the message
//! envelope and contracts, the broker topology, a reconnecting broker link with a confirmed
//! publisher, the consumer loop, AMQP request/response, dead letters, the Redis idempotency
//! guard, the inbox/outbox on SQLite (`store`) or PostgreSQL (`pg`) and the outbox relay. No
//! HTTP: the service runner, the ops endpoints and problem+json are `service-kit`, which builds
//! on this crate; JWT auth is `jwt-auth`, webhook signatures `webhook-signing`, the dead-letter
//! tool `dlq`.
//!
//! Layout:
//! - `envelope`, `contracts` — what a message is (properties, headers, body) and its bodies.
//! - `topology` — exchanges, queues, bindings, routing keys, the DLQs.
//! - `broker` — the reconnecting link and the confirmed publisher; `acks` — consumer acks.
//! - `consumer`, `rpc` — the consumer loop (handlers) and request/response over AMQP.
//! - `deadletter` — reading and replaying dead letters (the `dlq` tool's engine).
//! - `idempotency` — the Redis guard; `shared_redis` — the one Redis connection a process
//!   shares; `store`, `pg`, `outbox` — inbox/outbox and the relay;
//!   `group_commit`, `pg_batch` — several writes in one transaction (SQLite, PostgreSQL).
//! - `config` — `AMQP_URL` and the `env-config` primitives the store reads its settings with.

mod acks;
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
pub mod outbox;
pub mod pg;
mod pg_batch;
pub mod rpc;
pub mod shared_redis;
mod sqlite_tx;
pub mod store;
pub mod text_column;
pub mod topology;

pub use broker::{Broker, BrokerConfig, PublishError};
pub use consumer::{Consumer, HandleError, Handler, MessageHandler};
pub use envelope::{Incoming, MessageMeta, OutgoingMessage};
pub use pg::PgDb;
pub use store::{Backend, Db};
