//! The test kit: what the tests of every crate share.
//!
//! It is a leaf of the workspace (it depends on no crate of it), so any crate may use it as a
//! dev-dependency without a cycle.
//!
//! Layout:
//! - `postgres.rs`: a database of its own per test on the shared PostgreSQL, dropped afterwards.

pub mod postgres;

pub use postgres::TestDatabase;
