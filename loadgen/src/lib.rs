//! The load generator of issue 5: places orders through the gateway (open or closed loop),
//! times `POST /orders` and POST → terminal event with HDR histograms, samples the CPU and
//! memory of the service processes, and measures the broker's own ceiling for comparison.
//!
//! The binary (`src/main.rs`) is the command line: a load run, or `loadgen ceiling`. Its pieces
//! are tested in `tests/pieces.rs`; the open-loop smoke run against the whole system is in
//! `e2e/tests/loadgen.rs` (this crate depends on no service, and nothing here on `e2e`).
//!
//! Layout:
//! - `target.rs`: the gateway(s) under load, a token and a product to order.
//! - `open_loop.rs`: orders started at a fixed rate; `closed_loop.rs`: a fixed number of
//!   clients.
//! - `events.rs`: the listener on `saga.events` that times each order's terminal event.
//! - `recorder.rs`: the HDR histograms, outcomes and errors; `series.rs`: their interval series.
//! - `procstat.rs`: CPU and memory of the service processes from `/proc`.
//! - `webhooks.rs`: delivered webhooks from the publisher's `/metrics`.
//! - `report.rs`: the markdown report of a run.
//! - `ceiling.rs`: the broker alone, through quorum queues with confirms and acks.

pub mod ceiling;
pub mod closed_loop;
pub mod events;
pub mod open_loop;
pub mod procstat;
pub mod recorder;
pub mod report;
pub mod series;
pub mod target;
pub mod webhooks;

use messaging::topology::{
    COMMANDS, EVENTS, ORDERS_INTAKE_QUEUE, ORDERS_QUEUE, PRODUCTS_QUEUE, WEBHOOKS_QUEUE, keys,
};

/// One broker message of a confirmed order: its routing key, who publishes it, and the
/// exchange and queue it goes through (as `messaging::topology::BINDINGS` routes it).
#[derive(Debug, Clone, Copy)]
pub struct Hop {
    pub key: &'static str,
    pub from: &'static str,
    pub exchange: &'static str,
    pub queue: &'static str,
}

/// The broker messages one confirmed order costs on the hot path: each is published with a
/// confirm into one quorum queue, delivered once and acked once. `tests/pieces.rs` checks each
/// against the topology's bindings; `product.stockChanged` (for the live dashboard) was left
/// out of this list until session 12, so efficiency ratios printed before then divided by 5.
pub const MESSAGES_PER_ORDER: &[Hop] = &[
    Hop {
        key: keys::ORDERS_CREATE,
        from: "gateway",
        exchange: COMMANDS,
        queue: ORDERS_INTAKE_QUEUE,
    },
    Hop {
        key: keys::RESERVE_STOCK,
        from: "orders (outbox)",
        exchange: COMMANDS,
        queue: PRODUCTS_QUEUE,
    },
    Hop {
        key: keys::ORDER_CREATED,
        from: "orders (outbox)",
        exchange: EVENTS,
        queue: WEBHOOKS_QUEUE,
    },
    Hop {
        key: keys::STOCK_RESERVED,
        from: "products (outbox)",
        exchange: EVENTS,
        queue: ORDERS_QUEUE,
    },
    Hop {
        key: keys::STOCK_CHANGED,
        from: "products (outbox)",
        exchange: EVENTS,
        queue: WEBHOOKS_QUEUE,
    },
    Hop {
        key: keys::ORDER_CONFIRMED,
        from: "orders (outbox)",
        exchange: EVENTS,
        queue: WEBHOOKS_QUEUE,
    },
];
