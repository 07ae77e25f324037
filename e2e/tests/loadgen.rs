//! The load generator against the whole system: a short open-loop run through the in-process
//! gateway, orders and products sees every order confirmed, spread over the products it made.
//! No speed is asserted. (Moved from
//! `loadgen/tests/pieces.rs`: loadgen must not depend on `e2e`, which depends on every service.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::system::JWT_SECRET;
use e2e::{Options, System};
use loadgen::events::{self, Tracker};
use loadgen::open_loop;
use loadgen::recorder::Recorder;
use loadgen::target::Target;
use testkit::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_open_loop_run_sees_every_order_confirmed() {
    let env = TestEnv::new("loadgen").await.unwrap();
    let system = System::start(&env, Options::default()).await.unwrap();
    let recorder = Arc::new(Recorder::new());
    let tracker = Arc::new(Tracker::default());
    let _listener = events::listen(&env.amqp_url, tracker.clone(), recorder.clone())
        .await
        .unwrap();
    let target = Target::prepare(
        &system.url(""),
        JWT_SECRET,
        1_000,
        2,
        true,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let placed = open_loop::run(&target, 20.0, Duration::from_secs(2), &recorder, &tracker).await;
    assert_eq!(placed, 40);
    let deadline = Instant::now() + Duration::from_secs(20);
    while tracker.outstanding() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = recorder.snapshot();
    assert_eq!(s.accepted, 40, "errors: {:?}", s.errors);
    assert_eq!(s.outcomes.get("CONFIRMED"), Some(&40));
    assert_eq!(s.terminal.len(), 40);
    // Orders go to the products in turn: 20 of each, so each has 980 left.
    assert_eq!(target.product_ids.len(), 2);
    for id in target.product_ids.iter() {
        let product: serde_json::Value = target
            .http
            .get(system.url(&format!("/products/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(product["stock"], 980, "{product}");
    }
    system.stop().await;
    env.cleanup().await;
}
