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

/// How many broker messages one confirmed order costs on the hot path, counted from the
/// topology (`messaging::topology`): each is published with a confirm into one quorum queue,
/// delivered once and acked once.
pub const MESSAGES_PER_ORDER: &[(&str, &str)] = &[
    (
        "orders.create",
        "gateway → saga.commands → orders_intake_queue",
    ),
    (
        "product.reserveStock",
        "orders (outbox) → saga.commands → products_queue",
    ),
    (
        "order.created",
        "orders (outbox) → saga.events → webhooks_queue",
    ),
    (
        "product.stockReserved",
        "products (outbox) → saga.events → orders_queue",
    ),
    (
        "order.confirmed",
        "orders (outbox) → saga.events → webhooks_queue",
    ),
];
