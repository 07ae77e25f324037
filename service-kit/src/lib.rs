//! What every service of the saga is built from on the HTTP side: the runner that binds the
//! port, runs the background tasks (broker link, relays, sweepers) and stops them together; the
//! operational endpoints; RFC 9457 problem+json errors and the JSON request bodies that answer
//! with them; the settings every service shares; logging. The AMQP side is `messaging`, which
//! this crate builds on (never the other way: `messaging` compiles no HTTP).
//!
//! Layout:
//! - `runner` — [`Running`]: start, spawn (critical) tasks, run the broker link, stop, kill.
//! - `ops` — `/health`, `/ready` (and its [`ops::ReadyCheck`]s), `/metrics`, request metrics.
//! - `problem` — [`Problem`], the error body of every HTTP API, and the router fallbacks.
//! - `json_body` — `ValidJson<T>`, [`json_body::parse`], [`json_body::invalid`], the body limit.
//! - `config` — [`config::CommonConfig`] and the `env-config` primitives, re-exported.
//! - `telemetry` — the `tracing` subscriber (`RUST_LOG`, `LOG_FORMAT=json`).

pub mod config;
pub mod json_body;
pub mod ops;
pub mod problem;
pub mod runner;
pub mod telemetry;

pub use problem::{FieldError, Problem};
pub use runner::{Failed, Running};
