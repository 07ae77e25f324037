//! The test kit: what the tests of every crate share, and nothing a service runs.
//!
//! It is a leaf of the workspace (it depends on no crate of it, not even `messaging`), so any
//! crate may use it as a dev-dependency without a cycle. It speaks raw AMQP, HTTP and JSON: a
//! test that needs the services' envelope builds the message with `messaging` and hands the
//! bytes and properties to [`amqp::TestClient::publish`].
//!
//! Layout:
//! - Per-test isolation on the shared servers
//!   - `env.rs`: [`TestEnv`], a vhost, a Redis key prefix, a temp directory and a PostgreSQL
//!     database per service for one test, removed afterwards (or when it panics).
//!   - `rabbit.rs`: a vhost of the test's own on the shared RabbitMQ.
//!   - `redis.rs`: deleting the test's Redis keys (its prefix).
//!   - `postgres.rs`: a database of its own per test on the shared PostgreSQL.
//! - Clients
//!   - `amqp.rs`: a raw AMQP client (publish anything, count and drain queues).
//!   - `management.rs`: RabbitMQ's management API (queues, connections, consumers, nodes).
//!   - `ws.rs`: a WebSocket client that records every JSON message (optionally reconnecting).
//!   - `browser.rs`: headless Chromium over the DevTools protocol, for page tests.
//! - Private servers a test may kill and restart (never the shared ones)
//!   - `redis_server.rs`: a `redis-server` on a port of its own.
//!   - `broker_node.rs`: a RabbitMQ node with its own ports, data and epmd.
//!   - `broker_cluster.rs`: a three-node RabbitMQ cluster of such nodes.
//!   - `pg_cluster.rs`: a PostgreSQL server (its own port and data directory).
//!   - `child.rs`: the child processes behind them, each in a process group killed on drop.
//!   - `ports.rs`: free ports, and waiting until a port listens or is closed.
//! - Waiting and processes
//!   - `wait.rs`: [`eventually`] (poll until a check holds) and [`wait_ready`] (a `/ready`).
//!   - `process.rs`: a service binary that must refuse to start, and what it said.
//!   - `sqlite_files.rs`: the `-wal`/`-shm` files a SQLite database left in a directory.

pub mod amqp;
pub mod broker_cluster;
pub mod broker_node;
pub mod browser;
pub mod child;
pub mod env;
pub mod management;
pub mod pg_cluster;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod rabbit;
pub mod redis;
pub mod redis_server;
pub mod sqlite_files;
pub mod wait;
pub mod ws;

pub use env::TestEnv;
pub use pg_cluster::PgCluster;
pub use postgres::TestDatabase;
pub use rabbit::Vhost;
pub use wait::{eventually, wait_ready};
