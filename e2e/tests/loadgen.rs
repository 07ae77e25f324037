//! The load generator against the whole system: a short open-loop run through the in-process
//! gateway, orders and products sees every order confirmed, spread over the products it made.
//! No speed is asserted. (Moved from
//! `loadgen/tests/pieces.rs`: loadgen must not depend on `e2e`, which depends on every service.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::system::JWT_SECRET;
use e2e::{Options, System};
use loadgen::events::{self, Tracker};
use loadgen::recorder::Recorder;
use loadgen::target::Target;
use loadgen::{closed_loop, open_loop};
use testkit::TestEnv;

/// A system with `options`, loadgen's event listener on it, and a target of `products`
/// products with `stock` each.
struct Run {
    system: System,
    recorder: Arc<Recorder>,
    tracker: Arc<Tracker>,
    _listener: events::Listener,
    target: Target,
}

impl Run {
    async fn start(env: &TestEnv, options: Options, stock: i64, products: usize) -> Self {
        let system = System::start(env, options).await.unwrap();
        let recorder = Arc::new(Recorder::new());
        let tracker = Arc::new(Tracker::default());
        let _listener = events::listen(&env.amqp_url, tracker.clone(), recorder.clone())
            .await
            .unwrap();
        let target = Target::prepare(
            &system.url(""),
            JWT_SECRET,
            stock,
            products,
            true,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        Self {
            system,
            recorder,
            tracker,
            _listener,
            target,
        }
    }

    /// Waits (up to 20 s) until every accepted order has its terminal event.
    async fn drain(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.tracker.outstanding() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_open_loop_run_sees_every_order_confirmed() {
    let env = TestEnv::new("loadgen").await.unwrap();
    let run = Run::start(&env, Options::default(), 1_000, 2).await;
    let (target, recorder, tracker) = (&run.target, &run.recorder, &run.tracker);
    let placed = open_loop::run(target, 20.0, Duration::from_secs(2), recorder, tracker).await;
    assert_eq!(placed, 40);
    run.drain().await;
    let s = recorder.snapshot();
    assert_eq!(s.accepted, 40, "errors: {:?}", s.errors);
    assert_eq!(s.outcomes.get("CONFIRMED"), Some(&40));
    assert_eq!(s.terminal.len(), 40);
    // Orders go to the products in turn: 20 of each, so each has 980 left.
    assert_eq!(target.products.all().len(), 2);
    for id in target.products.all() {
        assert_eq!(run.system.stock(id).await.unwrap(), 980, "product {id}");
    }
    run.system.stop().await;
    env.cleanup().await;
}

/// A closed-loop client told 503 waits the `Retry-After` (1 s) before its next order: with a
/// bound of 5 undecided orders, 16 clients over 3 s make at most a few refusals each, not the
/// thousands a client retrying at once would; and every accepted order is decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_closed_loop_client_waits_its_retry_after() {
    let env = TestEnv::new("loadgen_polite").await.unwrap();
    let options = Options {
        admission_limit: 5,
        ..Options::default()
    };
    let run = Run::start(&env, options, 1_000_000, 1).await;
    let clients = 16;
    let (target, recorder, tracker) = (&run.target, &run.recorder, &run.tracker);
    closed_loop::run(target, clients, Duration::from_secs(3), recorder, tracker).await;
    run.drain().await;
    let s = recorder.snapshot();
    assert!(s.errors.is_empty(), "errors: {:?}", s.errors);
    // 16 clients against a bound of 5 are refused at times; 3 s at one refusal a second per
    // client, plus the one each may get at the very end, is the most they may be refused.
    assert!(s.refused > 0, "the bound of 5 never refused an order");
    assert!(
        s.refused <= (clients * 4) as u64,
        "{} refusals from {clients} clients in 3 s",
        s.refused
    );
    assert!(s.accepted > 0);
    assert_eq!(s.terminal.len(), s.accepted, "every accepted order decided");
    run.system.stop().await;
    env.cleanup().await;
}
