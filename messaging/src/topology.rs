//! The broker topology: exchanges, queues, bindings and dead-letter queues.
//!
//! Every service declares the whole topology at start and after every reconnect. Declarations
//! are idempotent as long as the arguments never change; changing a queue argument here needs a
//! migration (delete and recreate the queue) because RabbitMQ refuses a redeclare with other
//! arguments (PRECONDITION_FAILED).

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

/// Commands (`orders.create`, `product.reserveStock`, RPC requests): direct exchange.
pub const COMMANDS: &str = "saga.commands";
/// Facts (`product.stockReserved`, `order.confirmed`, …): topic exchange.
pub const EVENTS: &str = "saga.events";
/// Dead letters, routed by the name of the queue they died in.
pub const DLX: &str = "saga.dlx";

pub const ORDERS_QUEUE: &str = "orders_queue";
pub const PRODUCTS_QUEUE: &str = "products_queue";
pub const WEBHOOKS_QUEUE: &str = "webhooks_queue";
/// Request/response reads of the orders service (classic, short-lived messages).
pub const ORDERS_RPC_QUEUE: &str = "orders_rpc";
/// Request/response reads and product creation of the products service.
pub const PRODUCTS_RPC_QUEUE: &str = "products_rpc";

/// The work queues, each with a `<name>.dlq`.
pub const WORK_QUEUES: [&str; 3] = [ORDERS_QUEUE, PRODUCTS_QUEUE, WEBHOOKS_QUEUE];

/// Routing keys (they are also the message `type`).
pub mod keys {
    pub const ORDERS_CREATE: &str = "orders.create";
    pub const ORDERS_GET: &str = "orders.get";
    pub const PRODUCTS_GET: &str = "products.get";
    pub const PRODUCTS_CREATE: &str = "products.create";
    pub const RESERVE_STOCK: &str = "product.reserveStock";
    pub const RELEASE_STOCK: &str = "product.releaseStock";
    pub const STOCK_RESERVED: &str = "product.stockReserved";
    pub const STOCK_REJECTED: &str = "product.stockRejected";
    pub const ORDER_CREATED: &str = "order.created";
    pub const ORDER_CONFIRMED: &str = "order.confirmed";
    pub const ORDER_REJECTED: &str = "order.rejected";
    pub const ORDER_CANCELLED: &str = "order.cancelled";
}

/// How often a quorum queue hands out one message before dead-lettering it. Our consumers retry
/// transient failures in place, so this only counts crashes, lost channels and give-ups; it
/// exists so that a message that kills its consumer cannot loop forever. RabbitMQ 3.10 has no
/// default for it.
pub const DELIVERY_LIMIT: i64 = 20;
/// Unanswered RPC requests expire instead of piling up while a service is down.
pub const RPC_MESSAGE_TTL_MS: i64 = 10_000;

/// `(exchange, routing key, queue)`.
/// Dead-letter bindings are per work queue, see [`declare`].
pub const BINDINGS: [(&str, &str, &str); 9] = [
    (COMMANDS, keys::ORDERS_CREATE, ORDERS_QUEUE),
    (EVENTS, keys::STOCK_RESERVED, ORDERS_QUEUE),
    (EVENTS, keys::STOCK_REJECTED, ORDERS_QUEUE),
    (COMMANDS, keys::RESERVE_STOCK, PRODUCTS_QUEUE),
    (COMMANDS, keys::RELEASE_STOCK, PRODUCTS_QUEUE),
    (EVENTS, "order.*", WEBHOOKS_QUEUE),
    (COMMANDS, keys::ORDERS_GET, ORDERS_RPC_QUEUE),
    (COMMANDS, keys::PRODUCTS_GET, PRODUCTS_RPC_QUEUE),
    (COMMANDS, keys::PRODUCTS_CREATE, PRODUCTS_RPC_QUEUE),
];

/// The dead-letter queue of a work queue.
pub fn dlq(queue: &str) -> String {
    format!("{queue}.dlq")
}

/// Arguments of a work queue: quorum, at-least-once dead-lettering into its own DLQ.
pub fn work_queue_args(queue: &str) -> FieldTable {
    let mut args = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(s.into());
    args.insert("x-queue-type".into(), text("quorum"));
    args.insert("x-dead-letter-exchange".into(), text(DLX));
    args.insert("x-dead-letter-routing-key".into(), text(queue));
    args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
    args.insert("x-overflow".into(), text("reject-publish"));
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(DELIVERY_LIMIT),
    );
    args
}

fn dlq_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

fn rpc_queue_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(RPC_MESSAGE_TTL_MS),
    );
    args
}

/// Declares every exchange, queue and binding. Safe to call any number of times.
pub async fn declare(channel: &Channel) -> lapin::Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for (name, kind) in [
        (COMMANDS, ExchangeKind::Direct),
        (EVENTS, ExchangeKind::Topic),
        (DLX, ExchangeKind::Direct),
    ] {
        channel
            .exchange_declare(name.into(), kind, durable, FieldTable::default())
            .await?;
    }
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for queue in WORK_QUEUES {
        channel
            .queue_declare(queue.into(), durable_queue, work_queue_args(queue))
            .await?;
        let dlq = dlq(queue);
        channel
            .queue_declare(dlq.as_str().into(), durable_queue, dlq_args())
            .await?;
        bind(channel, DLX, queue, &dlq).await?;
    }
    for queue in [ORDERS_RPC_QUEUE, PRODUCTS_RPC_QUEUE] {
        channel
            .queue_declare(queue.into(), durable_queue, rpc_queue_args())
            .await?;
    }
    for (exchange, key, queue) in BINDINGS {
        bind(channel, exchange, key, queue).await?;
    }
    Ok(())
}

async fn bind(channel: &Channel, exchange: &str, key: &str, queue: &str) -> lapin::Result<()> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}
