//! The test kit: what the tests of every crate share.
//!
//! It is a leaf of the workspace (it depends on no crate of it), so any crate may use it as a
//! dev-dependency without a cycle.
//!
//! Layout:
//! - `postgres.rs`: a database of its own per test on the shared PostgreSQL, dropped afterwards.
//! - `pg_cluster.rs`: a private PostgreSQL server (its own port and data directory) for tests
//!   that stop and restart it.
//! - `rabbit.rs`: a vhost of the test's own on the shared RabbitMQ.
//! - `redis.rs`: deleting the test's Redis keys (its prefix).
//! - `process.rs`: a service binary that must refuse to start, and what it said.

pub mod pg_cluster;
pub mod postgres;
pub mod process;
pub mod rabbit;
pub mod redis;

pub use pg_cluster::PgCluster;
pub use postgres::TestDatabase;
pub use rabbit::Vhost;
