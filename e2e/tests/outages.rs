//! Redis and products going away mid-run: orders wait, nothing is decided twice, and a late
//! reservation is compensated.

use std::time::Duration;

use e2e::system::count;
use e2e::{Backend, Options, System};
use messaging::contracts::OrderEvent;
use messaging::topology::{WEBHOOKS_QUEUE, keys};
use testkit::amqp::TestClient;
use testkit::redis_server::RedisServer;
use testkit::{TestEnv, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_wait_for_redis_and_are_decided_once_it_returns() {
    let env = TestEnv::new("redis-outage").await.unwrap();
    let mut redis = RedisServer::private().await.unwrap();
    let options = Options {
        redis_url: Some(redis.url()),
        ..Options::default()
    };
    let system = System::start(&env, options).await.unwrap();
    let client = TestClient::connect(&env.amqp_url).await.unwrap();
    let product = system.create_product(20).await.unwrap();

    let mut before = Vec::new();
    for _ in 0..20 {
        before.push(system.accepted_order(&product, 1).await.unwrap());
    }
    redis.sigkill().await;
    let mut during = Vec::new();
    for _ in 0..20 {
        during.push(system.accepted_order(&product, 1).await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Nothing placed during the outage may be decided before Redis is back. (Some may not even
    // be recorded yet: the consumer's slots are held by stock answers waiting for Redis.)
    let db = system.orders_db().await.unwrap();
    let ids = during.clone();
    let decided_during: Vec<(String, String)> = db
        .call(move |c| {
            let mut out = Vec::new();
            for id in ids {
                let status: Option<String> = c
                    .query_row("SELECT status FROM orders WHERE id = ?1", [&id], |r| {
                        r.get(0)
                    })
                    .map(Some)
                    .or_else(|e| match e {
                        deadpool_sqlite::rusqlite::Error::QueryReturnedNoRows => Ok(None),
                        e => Err(e),
                    })?;
                if let Some(status) = status.filter(|s| s != "PENDING") {
                    out.push((id, status));
                }
            }
            Ok(out)
        })
        .await
        .unwrap();
    assert!(
        decided_during.is_empty(),
        "orders were decided without Redis: {decided_during:?}"
    );
    redis.start().await.unwrap();

    let all: Vec<String> = before.iter().chain(&during).cloned().collect();
    let statuses = system
        .wait_terminal(&all, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(count(&statuses, "CONFIRMED"), 20, "{statuses:?}");
    assert_eq!(count(&statuses, "REJECTED"), 20);
    assert_eq!(system.stock(&product).await.unwrap(), 0);

    // No order was confirmed twice: one order.confirmed event per confirmed order.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events = client.drain(WEBHOOKS_QUEUE).await.unwrap();
    let mut confirmed: Vec<String> = events
        .iter()
        .filter(|m| {
            m.delivery.properties.kind().as_ref().map(|k| k.as_str()) == Some(keys::ORDER_CONFIRMED)
        })
        .map(|m| {
            serde_json::from_slice::<OrderEvent>(&m.delivery.data)
                .unwrap()
                .order_id
        })
        .collect();
    let total = confirmed.len();
    confirmed.sort();
    confirmed.dedup();
    assert_eq!((total, confirmed.len()), (20, 20));

    system.stop().await;
    redis.sigkill().await;
    env.cleanup().await;
}

async fn late_reservation_released(backend: Backend) {
    let env = TestEnv::new("deadline").await.unwrap();
    let options = Options {
        deadline: Duration::from_millis(1500),
        ..Options::on(backend)
    };
    let mut system = System::start(&env, options).await.unwrap();
    let product = system.create_product(5).await.unwrap();

    system.stop_products().await;
    let id = system.accepted_order(&product, 2).await.unwrap();
    let statuses = system
        .wait_terminal(std::slice::from_ref(&id), Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(statuses[&id], "CANCELLED");
    let order = system.order(&id).await.unwrap().unwrap();
    assert!(
        order["reason"]
            .as_str()
            .unwrap()
            .contains("no stock answer"),
        "{order}"
    );

    // Products comes back, reserves for the cancelled order, and orders gives the stock back.
    system.start_products().await.unwrap();
    let released = eventually(Duration::from_secs(30), || async {
        let status = system.reservation_status(&id).await.ok()??;
        (status == "RELEASED").then_some(())
    })
    .await;
    assert!(
        released.is_some(),
        "the late reservation was never released"
    );
    assert_eq!(system.stock(&product).await.unwrap(), 5);
    let order = system.order(&id).await.unwrap().unwrap();
    assert_eq!(order["status"], "CANCELLED");

    system.stop().await;
    env.cleanup().await;
}

e2e::on_both_backends! {
    a_late_reservation_after_the_deadline_is_released => late_reservation_released,
}
