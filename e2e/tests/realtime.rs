//! The whole flow: an order placed through the gateway is decided by the saga, delivered as a
//! signed webhook to the notifier and pushed to exactly the WebSocket clients it belongs to.

use std::time::{Duration, Instant};

use e2e::system::{CUSTOMER, token};
use e2e::{Options, System};
use jwt_auth::Role;
use testkit::TestEnv;
use testkit::ws::{WsClient, has_order};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_reaches_the_websocket_clients_it_belongs_to_once() {
    let env = TestEnv::new("realtime").await.unwrap();
    let mut system = System::start(&env, Options::default()).await.unwrap();
    system.start_realtime().await.unwrap();
    let product = system.create_product(5).await.unwrap(); // seller-1's product
    let base = system.notifier_url();

    let admin = WsClient::connect(&base, "admin", &token("ops", Role::Admin, None)).await;
    let owner = WsClient::connect(&base, "owner", &token(CUSTOMER, Role::Client, None)).await;
    let other_client = WsClient::connect(
        &base,
        "other client",
        &token("customer-2", Role::Client, None),
    )
    .await;
    let seller = WsClient::connect(
        &base,
        "seller",
        &token("s1", Role::Seller, Some("seller-1")),
    )
    .await;
    let other_seller = WsClient::connect(
        &base,
        "other seller",
        &token("s2", Role::Seller, Some("seller-2")),
    )
    .await;

    let placed = Instant::now();
    let order_id = system.accepted_order(&product, 2).await.unwrap();
    let confirmed =
        |m: &serde_json::Value| m["type"] == "order.confirmed" && has_order(&order_id)(m);
    for client in [&admin, &owner, &seller] {
        let event = client.wait_for(confirmed).await;
        assert_eq!(event["data"]["customerId"], CUSTOMER);
        assert_eq!(event["data"]["sellerId"], "seller-1");
    }
    // Measured, not asserted: speed belongs to the benchmarks.
    println!(
        "POST /orders → order.confirmed on the WebSocket: {:?}",
        placed.elapsed()
    );

    // Give late or duplicate deliveries time to show up, then count.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // ADMIN, the owner and the seller see the whole life of the order, once each: the gateway
    // names the seller in `orders.create`, so `order.created` carries it (docs/decisions.md).
    let expected = [
        (&admin, vec!["order.created", "order.confirmed"]),
        (&owner, vec!["order.created", "order.confirmed"]),
        (&seller, vec!["order.created", "order.confirmed"]),
    ];
    for (client, want) in expected {
        let events: Vec<_> = client
            .order_events()
            .into_iter()
            .filter(|(_, id)| *id == order_id)
            .collect();
        let kinds: Vec<_> = events.iter().map(|(kind, _)| kind.as_str()).collect();
        assert_eq!(kinds, want, "{} got {kinds:?}", client.name);
    }
    for client in [&other_client, &other_seller] {
        let leaked: Vec<_> = client
            .order_events()
            .into_iter()
            .filter(|(_, id)| *id == order_id)
            .collect();
        assert!(
            leaked.is_empty(),
            "{} saw an order that is not theirs: {leaked:?}",
            client.name
        );
    }

    system.stop().await;
    env.cleanup().await;
}
