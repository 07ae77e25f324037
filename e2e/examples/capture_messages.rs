//! Prints one real message of every type with its properties, as docs/architecture.md shows them.
//! Run: `cargo run -p e2e --example capture_messages` (needs the broker and Redis).

use std::time::Duration;

use e2e::{Options, System};
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use testkit::TestEnv;
use testkit::amqp::TestClient;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = TestEnv::new("capture").await?;
    let client = TestClient::connect(&env.amqp_url).await?;
    let system = System::start(
        &env,
        Options {
            deadline: Duration::from_millis(1500),
            ..Options::default()
        },
    )
    .await?;
    let tap = "capture_tap";
    client
        .channel
        .queue_declare(
            tap.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for (exchange, key) in [
        ("saga.commands", "orders.create"),
        ("saga.commands", "product.reserveStock"),
        ("saga.commands", "product.releaseStock"),
        ("saga.events", "#"),
    ] {
        client
            .channel
            .queue_bind(
                tap.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    let product = system.create_product(3).await?;
    let ok = system.accepted_order(&product, 2).await?;
    let refused = system.accepted_order(&product, 2).await?;
    system
        .wait_terminal(&[ok, refused], Duration::from_secs(10))
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for msg in client.drain(tap).await? {
        let p = &msg.delivery.properties;
        println!(
            "--- {} via {}",
            p.kind().as_ref().map(|k| k.to_string()).unwrap_or_default(),
            msg.delivery.exchange
        );
        println!(
            "properties: message_id={:?} correlation_id={:?} app_id={:?} timestamp={:?} delivery_mode={:?} content_type={:?} headers={:?}",
            p.message_id(),
            p.correlation_id(),
            p.app_id(),
            p.timestamp(),
            p.delivery_mode(),
            p.content_type(),
            p.headers()
        );
        println!("body: {}", String::from_utf8_lossy(&msg.delivery.data));
    }
    system.stop().await;
    env.cleanup().await;
    Ok(())
}
