//! The load generator of issue 5: places orders through the gateway (open or closed loop),
//! times `POST /orders` and POST → terminal event with HDR histograms, samples the CPU and
//! memory of the service processes, and measures the broker's own ceiling for comparison.

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
