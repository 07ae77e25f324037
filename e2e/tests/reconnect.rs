//! A service whose broker connection is closed under it reconnects, redeclares its topology and
//! consumers with their prefetch, and goes on serving.

use std::time::Duration;

use e2e::{Options, System};
use testkit::management::Management;
use testkit::{TestEnv, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_come_back_after_their_connection_is_closed() {
    let env = TestEnv::new("reconnect").await.unwrap();
    let system = System::start(&env, Options::default()).await.unwrap();
    let mgmt = Management::new(&testkit::rabbit::management_url());
    let product = system.create_product(10).await.unwrap();

    // Every service shows up under its own name.
    let named = eventually(Duration::from_secs(20), || async {
        let conns = mgmt.connections(&env.vhost).await.ok()?;
        let names: Vec<_> = conns
            .iter()
            .map(|(_, client)| client.split('@').next().unwrap_or("").to_owned())
            .collect();
        ["gateway", "orders", "products"]
            .iter()
            .all(|s| names.iter().any(|n| n == s))
            .then_some(conns)
    })
    .await
    .expect("services never showed their named connections");

    for (name, _) in &named {
        mgmt.close_connection(name).await.unwrap();
    }

    // They come back, each with its consumers and their prefetch.
    let restored = eventually(Duration::from_secs(30), || async {
        let conns = mgmt.connections(&env.vhost).await.ok()?;
        let fresh = conns
            .iter()
            .filter(|(name, _)| !named.iter().any(|(old, _)| old == name))
            .count();
        let consumers = mgmt.consumers(&env.vhost).await.ok()?;
        let has = |queue: &str, tag: &str| {
            consumers
                .iter()
                .any(|(q, t, p)| q == queue && t == tag && *p == 32)
        };
        (fresh >= 3
            && has("orders_queue", "orders.orders_queue")
            && has("products_queue", "products.products_queue"))
        .then_some(())
    })
    .await;
    assert!(
        restored.is_some(),
        "services did not reconnect with their consumers and prefetch"
    );

    let id = system.accepted_order(&product, 2).await.unwrap();
    let statuses = system
        .wait_terminal(std::slice::from_ref(&id), Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(statuses[&id], "CONFIRMED");
    assert_eq!(system.stock(&product).await.unwrap(), 8);

    system.stop().await;
    env.cleanup().await;
}
