//! The test kit: what the tests of every crate share.
//!
//! It is a leaf of the workspace (it depends on no crate of it), so any crate may use it as a
//! dev-dependency without a cycle.
//!
//! Layout:
//! - `postgres.rs`: a database of its own per test on the shared PostgreSQL, dropped afterwards.
//! - `pg_cluster.rs`: a private PostgreSQL server (its own port and data directory) for tests
//!   that stop and restart it.

pub mod pg_cluster;
pub mod postgres;

pub use pg_cluster::PgCluster;
pub use postgres::TestDatabase;
