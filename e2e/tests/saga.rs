//! The saga end to end: orders confirmed and rejected against real stock.

use std::time::Duration;

use e2e::system::count;
use e2e::{Backend, Options, System};
use testkit::TestEnv;

async fn three_orders_fit(backend: Backend) {
    let env = TestEnv::new("stock10").await.unwrap();
    let system = System::start(&env, Options::on(backend)).await.unwrap();
    let product = system.create_product(10).await.unwrap();

    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(system.accepted_order(&product, 3).await.unwrap());
    }
    let first_three = system
        .wait_terminal(&ids, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(count(&first_three, "CONFIRMED"), 3, "{first_three:?}");

    let fourth = system.accepted_order(&product, 3).await.unwrap();
    let last = system
        .wait_terminal(std::slice::from_ref(&fourth), Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(last[&fourth], "REJECTED");
    let order = system.order(&fourth).await.unwrap().unwrap();
    assert!(
        order["reason"]
            .as_str()
            .unwrap()
            .contains("insufficient stock"),
        "{order}"
    );
    assert_eq!(order["status"], "REJECTED");
    assert_eq!(system.stock(&product).await.unwrap(), 1);

    system.stop().await;
    env.cleanup().await;
}

async fn two_hundred_against_fifty(backend: Backend) {
    let env = TestEnv::new("concurrent").await.unwrap();
    let system = System::start(&env, Options::on(backend)).await.unwrap();
    let product = system.create_product(50).await.unwrap();

    let placing = (0..200).map(|_| system.accepted_order(&product, 1));
    let ids: Vec<String> = futures::future::join_all(placing)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let statuses = system
        .wait_terminal(&ids, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(count(&statuses, "CONFIRMED"), 50);
    assert_eq!(count(&statuses, "REJECTED"), 150);
    assert_eq!(system.stock(&product).await.unwrap(), 0);

    system.stop().await;
    env.cleanup().await;
}

e2e::on_both_backends! {
    three_orders_fit_the_fourth_is_rejected => three_orders_fit,
    two_hundred_concurrent_orders_against_fifty_in_stock => two_hundred_against_fifty,
}
