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
/// New orders (`orders.create`) only, so a flood of them never delays the stock answers on
/// `orders_queue`; the gateway admits orders by the saga's backlog and this queue's length
/// limit ([`INTAKE_MAX_LENGTH`]) is the broker's hard backstop.
pub const ORDERS_INTAKE_QUEUE: &str = "orders_intake_queue";
pub const PRODUCTS_QUEUE: &str = "products_queue";
pub const WEBHOOKS_QUEUE: &str = "webhooks_queue";
/// Request/response reads of the orders service (short-lived messages).
pub const ORDERS_RPC_QUEUE: &str = "orders_rpc";
/// Request/response reads and product creation of the products service.
pub const PRODUCTS_RPC_QUEUE: &str = "products_rpc";

/// The work queues, each with a `<name>.dlq`.
pub const WORK_QUEUES: [&str; 4] = [
    ORDERS_INTAKE_QUEUE,
    ORDERS_QUEUE,
    PRODUCTS_QUEUE,
    WEBHOOKS_QUEUE,
];

/// The queues an undecided order waits in (a new order, its stock request, its stock answer):
/// the sum of their ready messages is the saga's backlog the gateway admits new orders by.
pub const SAGA_QUEUES: [&str; 3] = [ORDERS_INTAKE_QUEUE, PRODUCTS_QUEUE, ORDERS_QUEUE];

/// The broker's hard limit on waiting new orders (`x-max-length` with `x-overflow =
/// reject-publish`: one more is nacked, and the gateway answers 503). A queue argument cannot
/// change without recreating the queue, so this is the ceiling; operators lower it without a
/// migration with a `max-length` policy (RabbitMQ applies the smaller of the two), and the
/// gateway's `ORDERS_ADMISSION_LIMIT` normally refuses long before either is reached.
pub const INTAKE_MAX_LENGTH: i64 = 20_000;

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
    pub const STOCK_CHANGED: &str = "product.stockChanged";
    pub const ORDERS_REPORT_SUMMARY: &str = "orders.report.summary";
    pub const ORDERS_REPORT_SELLERS: &str = "orders.report.sellers";
}

/// How often a quorum queue hands out one message before dead-lettering it. Our consumers retry
/// transient failures in place, so this only counts crashes, lost channels and give-ups; it
/// exists so that a message that kills its consumer cannot loop forever. RabbitMQ 3.10 has no
/// default for it.
pub const DELIVERY_LIMIT: i64 = 20;
/// Members of every work queue and DLQ on a cluster: a quorum queue keeps serving while a
/// majority (two of three) is up. RabbitMQ caps it at the nodes in the cluster when the queue
/// is declared, so a single node still declares it (with one member).
pub const QUORUM_GROUP_SIZE: i64 = 3;
/// Unanswered RPC requests expire instead of piling up while a service is down.
pub const RPC_MESSAGE_TTL_MS: i64 = 10_000;

/// `(exchange, routing key, queue)`.
/// Dead-letter bindings are per work queue, see [`bindings`].
pub const BINDINGS: [(&str, &str, &str); 12] = [
    (COMMANDS, keys::ORDERS_CREATE, ORDERS_INTAKE_QUEUE),
    (EVENTS, keys::STOCK_RESERVED, ORDERS_QUEUE),
    (EVENTS, keys::STOCK_REJECTED, ORDERS_QUEUE),
    (COMMANDS, keys::RESERVE_STOCK, PRODUCTS_QUEUE),
    (COMMANDS, keys::RELEASE_STOCK, PRODUCTS_QUEUE),
    (EVENTS, "order.*", WEBHOOKS_QUEUE),
    (EVENTS, keys::STOCK_CHANGED, WEBHOOKS_QUEUE),
    (COMMANDS, keys::ORDERS_GET, ORDERS_RPC_QUEUE),
    (COMMANDS, keys::ORDERS_REPORT_SUMMARY, ORDERS_RPC_QUEUE),
    (COMMANDS, keys::ORDERS_REPORT_SELLERS, ORDERS_RPC_QUEUE),
    (COMMANDS, keys::PRODUCTS_GET, PRODUCTS_RPC_QUEUE),
    (COMMANDS, keys::PRODUCTS_CREATE, PRODUCTS_RPC_QUEUE),
];

/// Bindings of earlier versions that [`declare`] removes: `orders.create` went to
/// `orders_queue` before new orders had a queue of their own. Declaring only adds bindings, so
/// without this a broker upgraded in place would route every new order to both queues.
pub const RETIRED_BINDINGS: [(&str, &str, &str); 1] =
    [(COMMANDS, keys::ORDERS_CREATE, ORDERS_QUEUE)];

/// The dead-letter queue of a work queue.
pub fn dlq(queue: &str) -> String {
    format!("{queue}.dlq")
}

/// A queue argument value (the two kinds the topology uses).
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Text(&'static str),
    Int(i64),
}

/// A queue as declared: the one description both `declare` and `definitions` use.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    pub name: String,
    pub args: Vec<(&'static str, Arg)>,
}

impl QueueSpec {
    fn field_table(&self) -> FieldTable {
        let mut table = FieldTable::default();
        for (key, value) in &self.args {
            let value = match value {
                Arg::Text(s) => AMQPValue::LongString((*s).into()),
                Arg::Int(n) => AMQPValue::LongLongInt(*n),
            };
            table.insert((*key).into(), value);
        }
        table
    }
}

/// Every queue of the topology with its arguments.
pub fn queues() -> Vec<QueueSpec> {
    let mut specs = Vec::new();
    for queue in WORK_QUEUES {
        let mut args = vec![
            ("x-queue-type", Arg::Text("quorum")),
            ("x-dead-letter-exchange", Arg::Text(DLX)),
            ("x-dead-letter-routing-key", Arg::Text(queue)),
            ("x-dead-letter-strategy", Arg::Text("at-least-once")),
            ("x-overflow", Arg::Text("reject-publish")),
            ("x-delivery-limit", Arg::Int(DELIVERY_LIMIT)),
            ("x-quorum-initial-group-size", Arg::Int(QUORUM_GROUP_SIZE)),
        ];
        if queue == ORDERS_INTAKE_QUEUE {
            args.push(("x-max-length", Arg::Int(INTAKE_MAX_LENGTH)));
        }
        specs.push(QueueSpec {
            name: queue.to_owned(),
            args,
        });
        specs.push(QueueSpec {
            name: dlq(queue),
            args: vec![
                ("x-queue-type", Arg::Text("quorum")),
                ("x-quorum-initial-group-size", Arg::Int(QUORUM_GROUP_SIZE)),
            ],
        });
    }
    // Quorum too: a durable classic queue lives on one node, and while that node is down no
    // service could even redeclare the topology (NOT_FOUND, "home node … is down").
    for queue in [ORDERS_RPC_QUEUE, PRODUCTS_RPC_QUEUE] {
        specs.push(QueueSpec {
            name: queue.to_owned(),
            args: vec![
                ("x-queue-type", Arg::Text("quorum")),
                ("x-message-ttl", Arg::Int(RPC_MESSAGE_TTL_MS)),
                ("x-quorum-initial-group-size", Arg::Int(QUORUM_GROUP_SIZE)),
            ],
        });
    }
    specs
}

/// Every binding: `(exchange, routing key, queue)`, dead-letter bindings included.
pub fn bindings() -> Vec<(String, String, String)> {
    let mut all: Vec<_> = BINDINGS
        .iter()
        .map(|(e, k, q)| (e.to_string(), k.to_string(), q.to_string()))
        .collect();
    all.extend(
        WORK_QUEUES
            .iter()
            .map(|q| (DLX.to_owned(), q.to_string(), dlq(q))),
    );
    all
}

const EXCHANGES: [(&str, ExchangeKind, &str); 3] = [
    (COMMANDS, ExchangeKind::Direct, "direct"),
    (EVENTS, ExchangeKind::Topic, "topic"),
    (DLX, ExchangeKind::Direct, "direct"),
];

/// Declares every exchange, queue and binding. Safe to call any number of times.
pub async fn declare(channel: &Channel) -> lapin::Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for (name, kind, _) in EXCHANGES {
        channel
            .exchange_declare(name.into(), kind, durable, FieldTable::default())
            .await?;
    }
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for spec in queues() {
        channel
            .queue_declare(spec.name.as_str().into(), durable_queue, spec.field_table())
            .await?;
    }
    for (exchange, key, queue) in bindings() {
        bind(channel, &exchange, &key, &queue).await?;
    }
    for (exchange, key, queue) in RETIRED_BINDINGS {
        // Unbinding a binding that does not exist is a no-op for RabbitMQ.
        channel
            .queue_unbind(
                queue.into(),
                exchange.into(),
                key.into(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// The topology in RabbitMQ's definitions format (exchanges, queues, bindings) for `vhost`, as
/// `deploy/rabbitmq/definitions.json` holds it for the broker to load at boot.
pub fn definitions(vhost: &str) -> serde_json::Value {
    use serde_json::json;
    let exchanges: Vec<_> = EXCHANGES
        .iter()
        .map(|(name, _, kind)| json!({"name": name, "vhost": vhost, "type": kind, "durable": true, "auto_delete": false, "internal": false, "arguments": {}}))
        .collect();
    let queues: Vec<_> = queues()
        .into_iter()
        .map(|q| {
            let args: serde_json::Map<_, _> = q
                .args
                .iter()
                .map(|(k, v)| (k.to_string(), match v { Arg::Text(s) => json!(s), Arg::Int(n) => json!(n) }))
                .collect();
            json!({"name": q.name, "vhost": vhost, "durable": true, "auto_delete": false, "arguments": args})
        })
        .collect();
    let bindings: Vec<_> = bindings()
        .into_iter()
        .map(|(e, k, q)| json!({"source": e, "vhost": vhost, "destination": q, "destination_type": "queue", "routing_key": k, "arguments": {}}))
        .collect();
    json!({"exchanges": exchanges, "queues": queues, "bindings": bindings})
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
