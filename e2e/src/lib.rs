//! The end-to-end tests: the five services started in-process ([`System`]) on the real broker,
//! Redis and SQLite or PostgreSQL, and the tests in `tests/` that drive the whole saga through
//! them. Every test gets its own RabbitMQ vhost, Redis key prefix, data directory and databases
//! (`testkit::TestEnv`), so tests run in parallel on the shared servers without seeing each other.
//!
//! This is the only crate that depends on every service; nothing depends on it. A test that
//! needs the whole system running belongs here; one that needs a single service belongs to that
//! service's `tests/`, with `testkit`.
//!
//! Layout:
//! - `src/system.rs`: [`System`], the services in-process for one test (on SQLite or
//!   PostgreSQL, one or several instances), with helpers to place orders and read their state.
//! - `src/lib.rs`: [`on_both_backends!`], a scenario as a SQLite and a PostgreSQL test.
//! - `tests/`: one file per concern (the saga, duplicates, outages, auth, the dashboard, the
//!   webhook publisher and notifier in the system, the load generator's smoke run, …).
//! - `examples/capture_messages.rs`: records the messages of one saga run.

pub mod system;

pub use system::{Backend, Instances, Options, Service, System};

/// Runs each scenario (an `async fn(Backend)`) as two tests: `test` on SQLite, under the name the
/// test always had, and `postgres::test` on PostgreSQL.
///
/// ```text
/// e2e::on_both_backends! { three_orders_fit_the_fourth_is_rejected => three_orders_fit }
/// ```
#[macro_export]
macro_rules! on_both_backends {
    ($($test:ident => $scenario:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                $scenario($crate::Backend::Sqlite).await
            }
        )*
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::$scenario($crate::Backend::Postgres).await
                }
            )*
        }
    };
}

/// Publishes `msg` as the services would (their envelope's properties) through the raw test
/// client, and waits for the confirm.
pub async fn publish_message(
    client: &testkit::amqp::TestClient,
    msg: &messaging::OutgoingMessage,
) -> anyhow::Result<()> {
    let properties = msg.properties("test");
    client
        .publish(&msg.exchange, &msg.routing_key, &msg.body, properties)
        .await
}
