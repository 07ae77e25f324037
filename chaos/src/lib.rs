//! The chaos suite: the services run as separate processes against a private RabbitMQ node (or,
//! with `--cluster`, a private three-node cluster) and a private Redis; a bounded load of
//! `POST /orders` runs while the broker (or one cluster node at a time), Redis and services are
//! SIGKILLed and restarted on a schedule; then the harness waits for quiescence and checks that
//! nothing accepted was lost, left pending or applied twice.
//!
//! `cargo run -p chaos -- --help` for the options; `chaos/tests/chaos.rs` runs it with the CI
//! defaults as part of `cargo test --workspace`. Everything it starts is killed when the run
//! ends, passed, failed or panicked (`testkit::child`).
//!
//! The private broker node or cluster, Redis, management API client and WebSocket client come
//! from `testkit`; what is here is the scenario and what it checks.
//!
//! Layout:
//! - `lib.rs`: the command line ([`Options`]) and how a run ended ([`Outcome`]).
//! - `run.rs`: [`run`], one run phase by phase (schedule, start, observers, load under kills,
//!   quiescence, evidence, checks, teardown, report).
//! - `system.rs`: everything the run starts (broker, Redis, PostgreSQL, services) and carrying
//!   out one kill of the schedule; `services.rs`: one service process and its settings;
//!   `broker_conf.rs`: the broker settings the project ships, for the private broker.
//! - `schedule.rs`: the kill schedule (`target@at+down`) and what a kill did.
//! - `load.rs`: the bounded order load with retries and replays.
//! - `events.rs`: the tap on the event bus; `sink.rs`: the webhook endpoint; `ws.rs`: what the
//!   ADMIN WebSocket client was shown.
//! - `snapshot.rs`: the orders, stock and outboxes as the services' stores hold them.
//! - `checks.rs`: the checks on that evidence; `report.rs`: the summary and `report.md`.

pub mod broker_conf;
pub mod checks;
pub mod events;
pub mod load;
pub mod report;
pub mod run;
pub mod schedule;
pub mod services;
pub mod sink;
pub mod snapshot;
pub mod system;
pub mod ws;

use std::path::PathBuf;

use clap::Parser;

pub use crate::run::run;
use crate::services::Service;

/// Kill the broker, Redis and services under a bounded order load; check nothing is lost.
#[derive(Debug, Clone, Parser)]
#[command(name = "chaos", version, about, long_about = None)]
pub struct Options {
    /// How many orders the load places (each with its own Idempotency-Key).
    #[arg(long, default_value_t = 2000)]
    pub orders: usize,
    /// Over how many seconds the orders are spread.
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Products to order from (the first with little stock, the others ~90 % of demand).
    #[arg(long, default_value_t = 5)]
    pub products: usize,
    /// Kill schedule: target@at+down in seconds from the start of the load, comma-separated.
    /// Targets: broker, redis, gateway, orders, products, webhook-publisher, notifier; with
    /// --cluster node1, node2, node3, gateway-node (the gateway's node), leader-node (the node
    /// leading orders_queue) instead of broker.
    /// Default: the CI schedule (without the webhook-publisher kill under --no-webhooks).
    #[arg(long)]
    pub schedule: Option<String>,
    /// Run against a private three-node RabbitMQ cluster (quorum queues on every node) and kill
    /// single nodes instead of the whole broker.
    #[arg(long)]
    pub cluster: bool,
    /// The services keep their state on a private PostgreSQL (a database per service, on a
    /// server of the run's own that the schedule may restart: target `postgres`) instead of
    /// SQLite files.
    #[arg(long)]
    pub postgres: bool,
    /// Instances of the gateway, orders, products and the webhook publisher (the notifier stays
    /// single); more than one needs --postgres. A service kill hits the first instance, the
    /// others keep running; the load spreads over the gateways.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=4))]
    pub instances: u16,
    /// Run the saga only: no webhook publisher, notifier, webhook sink or WebSocket client.
    #[arg(long)]
    pub no_webhooks: bool,
    /// Requests a client sends for one order before it gives up (503 / connection errors).
    #[arg(long, default_value_t = 40)]
    pub max_attempts: u32,
    /// Share of accepted orders replayed once with the same key.
    #[arg(long, default_value_t = 0.05)]
    pub replay_share: f64,
    /// Seconds to wait after the load for every order to settle and every queue to drain.
    #[arg(long, default_value_t = 180)]
    pub quiesce_timeout: u64,
    /// ORDER_DEADLINE_MS of the orders service.
    #[arg(long, default_value_t = 30_000)]
    pub order_deadline_ms: u64,
    /// Where the summary is written (besides `<run dir>/report.md`).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Run directory (data, logs); default: a temporary directory, removed after a passing run.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the temporary run directory even when the run passes.
    #[arg(long)]
    pub keep: bool,
    /// Where the service binaries are (default: next to this executable).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// RUST_LOG of the services (their logs go to files in the run directory).
    #[arg(long, default_value = "info")]
    pub service_log: String,
}

impl Options {
    /// The command line that reproduces this run.
    pub fn command(&self) -> String {
        format!(
            "cargo run -p chaos -- --orders {} --duration {} --concurrency {} --products {} --schedule {}{}{}",
            self.orders,
            self.duration,
            self.concurrency,
            self.products,
            self.schedule(),
            if self.no_webhooks {
                " --no-webhooks"
            } else {
                ""
            },
            if self.cluster { " --cluster" } else { "" }
        ) + &if self.postgres {
            format!(" --postgres --instances {}", self.instances)
        } else {
            String::new()
        }
    }

    /// The kill schedule of this run.
    pub fn schedule(&self) -> String {
        match (&self.schedule, self.no_webhooks, self.cluster) {
            (Some(s), _, _) => s.clone(),
            (None, false, false) if self.postgres => schedule::INSTANCES_SCHEDULE.to_owned(),
            (None, true, false) if self.postgres => schedule::INSTANCES_SAGA_SCHEDULE.to_owned(),
            (None, false, false) => schedule::CI_SCHEDULE.to_owned(),
            (None, true, false) => schedule::SAGA_SCHEDULE.to_owned(),
            (None, false, true) => schedule::CLUSTER_SCHEDULE.to_owned(),
            (None, true, true) => schedule::CLUSTER_SAGA_SCHEDULE.to_owned(),
        }
    }

    /// The services of this run, in start order.
    pub fn services(&self) -> Vec<Service> {
        if self.no_webhooks {
            Service::SAGA.to_vec()
        } else {
            Service::ALL.to_vec()
        }
    }
}

/// How a run ended.
pub struct Outcome {
    pub checks: Vec<checks::Check>,
    pub passed: bool,
    /// Ports of the run that still accepted connections after teardown (must be empty).
    pub leftover_ports: Vec<u16>,
    pub report: String,
    /// The run directory, when it was kept.
    pub kept_dir: Option<PathBuf>,
}
