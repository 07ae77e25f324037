//! The publisher's PostgreSQL store up close: the claim and lease rules of due deliveries
//! between two instances, a publisher started while PostgreSQL is unreachable or losing it
//! mid-run, and the set-based writes (events recorded together, also on SQLite; a pass's
//! attempts settled together) with their one-at-a-time fallback.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use messaging::PgDb;
use messaging::pg::PgConfig;
use messaging::store::InboxRetention;
use messaging::topology::{WEBHOOKS_QUEUE, dlq, keys};
use testkit::TestDatabase;
use testkit::TestEnv;
use testkit::amqp::TestClient;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use webhook_publisher::recorder::Recorder;
use webhook_publisher::storage::{NewEvent, Store};
use webhook_publisher::store::pg::Settled;
use webhook_publisher::store::{
    AttemptRecord, DeliveryFilter, DeliveryStatus, Job, Next, Settlement,
};
use webhook_signing::Secret;

/// An instance's store on `db`, its schema migrated.
async fn instance(db: &TestDatabase, stop: &CancellationToken) -> Store {
    let mut config = PgConfig::parse(&db.url).unwrap();
    config.pool_size = 3;
    config.lease = Duration::from_secs(1);
    let pg = PgDb::new(
        &config,
        webhook_publisher::SERVICE,
        &webhook_publisher::store::pg::MIGRATIONS,
        InboxRetention::default(),
    )
    .unwrap();
    tokio::spawn(pg.clone().run(stop.clone()));
    assert!(
        tokio::time::timeout(LONG, pg.wait_ready(stop))
            .await
            .unwrap()
    );
    Store::Postgres(pg)
}

/// Claims what is due for every subscription (ten at most each) with `lease`.
async fn claim(store: &Store, lease: Duration) -> Vec<Job> {
    let room =
        |ids: Vec<String>| -> Vec<(String, usize)> { ids.into_iter().map(|id| (id, 10)).collect() };
    store
        .pass(Arc::new(Vec::new()), room, lease)
        .await
        .unwrap()
        .jobs
}

fn delivered(job: &Job) -> Settlement {
    delivered_with(job, None)
}

/// A 200 answered with `body` after 3 ms.
fn delivered_with(job: &Job, body: Option<&str>) -> Settlement {
    let record = AttemptRecord {
        status_code: Some(200),
        latency_ms: 3,
        response_body: body.map(str::to_owned),
        ..Default::default()
    };
    Settlement::of(job, record, Next::Delivered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_holds_until_its_lease_runs_out_and_only_the_holder_records() {
    let db = TestDatabase::create("wh_claims").await.unwrap();
    let stop = CancellationToken::new();
    let a = instance(&db, &stop).await;
    let b = instance(&db, &stop).await;
    let made = a
        .ensure_default_subscription(
            "http://127.0.0.1:9/hook".to_owned(),
            Secret::parse(SECRET).unwrap(),
        )
        .await
        .unwrap();
    assert!(made.is_some());
    assert!(
        b.ensure_default_subscription(
            "http://127.0.0.1:9/other".to_owned(),
            Secret::parse(SECRET).unwrap()
        )
        .await
        .unwrap()
        .is_none(),
        "a second default subscription"
    );
    let event = NewEvent {
        message_id: uuid::Uuid::now_v7().to_string(),
        event_type: keys::ORDER_CREATED.to_owned(),
        order_id: Some("order-claim".to_owned()),
        body: br#"{"type":"order.created"}"#.to_vec(),
        traceparent: None,
    };
    let recorded = a.record_event(event.clone()).await.unwrap().unwrap();
    assert_eq!(recorded.created, 1);
    assert!(
        b.record_event(event).await.unwrap().is_none(),
        "the same message recorded twice"
    );

    // A claims the delivery for 2 s (longer than the store's 1 s lease, so 2 s it is).
    let lease = Duration::from_secs(2);
    let claimed_at = std::time::Instant::now();
    let by_a = claim(&a, lease).await;
    assert_eq!(by_a.len(), 1);
    assert_eq!(by_a[0].number, 1);
    // Neither B nor A's own next pass takes it again while the lease runs.
    assert!(claim(&b, lease).await.is_empty());
    assert!(claim(&a, lease).await.is_empty());

    // A "dies": its lease runs out and B takes the delivery.
    let by_b = testkit::eventually(LONG, || async {
        let jobs = claim(&b, lease).await;
        (!jobs.is_empty()).then_some(jobs)
    })
    .await
    .unwrap();
    assert!(claimed_at.elapsed() >= lease - Duration::from_millis(100));
    assert_eq!(by_b.len(), 1);
    assert_eq!(by_b[0].delivery_id, by_a[0].delivery_id);
    assert_eq!(by_b[0].number, 1);

    let detail =
        |store: Store, id: String| async move { store.delivery_detail(id).await.unwrap().unwrap() };
    // A's attempt finishing late is not recorded: B holds the claim.
    a.settle(vec![delivered(&by_a[0])]).await.unwrap();
    let (delivery, attempts, _) = detail(a.clone(), by_a[0].delivery_id.clone()).await;
    assert_eq!(delivery.status, DeliveryStatus::Pending);
    assert!(attempts.is_empty());
    // B's is.
    b.settle(vec![delivered(&by_b[0])]).await.unwrap();
    let (delivery, attempts, payload) = detail(b.clone(), by_b[0].delivery_id.clone()).await;
    assert_eq!(delivery.status, DeliveryStatus::Delivered);
    assert_eq!(delivery.attempt_count, 1);
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].status_code, Some(200));
    assert_eq!(payload.unwrap()["type"], "order.created");
    // Nothing is left to claim by anyone.
    assert!(claim(&a, lease).await.is_empty());
    assert!(claim(&b, lease).await.is_empty());

    stop.cancel();
    db.drop().await.unwrap();
}

/// A TCP port that refuses PostgreSQL clients until opened, then forwards them to the server;
/// closing it again cuts every forwarded connection (PostgreSQL lost mid-run).
struct Gate {
    port: u16,
    open: Arc<AtomicBool>,
    forwarding: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Gate {
    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
        for task in self.forwarding.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Gate {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(false));
        let forwarding = Arc::new(Mutex::new(Vec::new()));
        let (is_open, tasks) = (open.clone(), forwarding.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !is_open.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is closed at once
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                tasks.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            port,
            open,
            forwarding,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_at_start_or_lost_mid_run_is_waited_for() {
    let env = TestEnv::new("wh-pg-late").await.unwrap();
    let store = TestStore::new(Kind::Postgres, "wh_pg_late").await;
    let db = store.pg.as_ref().unwrap();
    let real = PgConfig::parse(&db.url).unwrap();
    let host = match &real.pg.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        other => panic!("a TCP host is expected, not {other:?}"),
    };
    let gate = Gate::start(format!("{host}:{}", real.pg.get_ports()[0])).await;
    let endpoint = Endpoint::start(vec![], Answer::Status(200)).await;
    let mut cfg = store.apply(config(&env, &endpoint.url(), "100"));
    let real_port = format!(":{}/", real.pg.get_ports()[0]);
    assert!(db.url.contains(&real_port), "{}", db.url);
    let gated_url = db.url.replace(&real_port, &format!(":{}/", gate.port));
    let mut through_gate = PgConfig::parse(&gated_url).unwrap();
    let shared = cfg.database.clone().unwrap();
    through_gate.pool_size = shared.pool_size;
    through_gate.lease = shared.lease;
    cfg.database = Some(through_gate);

    let publisher = webhook_publisher::spawn(cfg.clone()).await.unwrap();
    let base = publisher.url();
    // Up (health) but not ready, and it stays so while PostgreSQL cannot be reached.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready = http.get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body = ready.text().await.unwrap();
    assert!(body.contains("postgres"), "{body}");
    // The API answers, with a problem, rather than hanging.
    let listed = api()
        .get(format!("{base}/subscriptions"))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 500);

    gate.open();
    testkit::wait_ready(&base, LONG)
        .await
        .expect("the publisher never became ready once PostgreSQL was reachable");
    // The schema is made, the default subscription too, and events are delivered.
    let client = TestClient::connect(&env.amqp_url).await.unwrap();
    publish(&client, keys::ORDER_CREATED, "order-late").await;
    wait_for_status(&base, "order-late", "delivered").await;
    let subscriptions = get_json(&format!("{base}/subscriptions")).await;
    assert_eq!(subscriptions.as_array().unwrap().len(), 1);

    // PostgreSQL is lost mid-run: not ready, and an event waits unacked, not lost.
    gate.close();
    let not_ready = testkit::eventually(LONG, || async {
        let ready = http.get(format!("{base}/ready")).send().await.ok()?;
        (ready.status() == 503).then_some(())
    })
    .await;
    assert!(not_ready.is_some(), "still ready without PostgreSQL");
    publish(&client, keys::ORDER_CONFIRMED, "order-while-away").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(endpoint.received().len(), 1, "sent without being recorded");
    assert_eq!(client.ready_count(&dlq(WEBHOOKS_QUEUE)).await.unwrap(), 0);
    // It comes back: the event is recorded and delivered, once.
    gate.open();
    testkit::wait_ready(&base, LONG)
        .await
        .expect("not ready again after PostgreSQL came back");
    wait_for_status(&base, "order-while-away", "delivered").await;
    assert_eq!(endpoint.received().len(), 2);
    assert_eq!(client.ready_count(WEBHOOKS_QUEUE).await.unwrap(), 0);

    publisher.stop().await;
    store.finish(&env).await;
    env.cleanup().await;
}

/// The plan (`explain`: `EXPLAIN` and its options) of the claim's scan of `subscription`'s
/// deliveries due at `now`, 32 at most.
async fn plan_of_due_in_order(
    client: &tokio_postgres::Client,
    explain: &str,
    subscription: &str,
    now: i64,
) -> String {
    let statement = format!("{explain} {}", webhook_publisher::store::pg::DUE_IN_ORDER);
    let rows = client
        .query(&statement, &[&subscription, &now, &32i64])
        .await
        .unwrap();
    rows.iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The claim reads a subscription's due deliveries from the index in the order it wants and
/// stops at its LIMIT, instead of reading every due delivery and sorting them on each pass
/// (7 ms a pass with a backlog of ≈ 1,200, before migration 3).
#[tokio::test]
async fn the_claim_reads_due_deliveries_in_index_order_without_sorting_the_backlog() {
    let db = TestDatabase::create("wh_claim_plan").await.unwrap();
    let stop = CancellationToken::new();
    let _store = instance(&db, &stop).await;
    let client = db.connect().await.unwrap();
    client
        .batch_execute(
            "INSERT INTO subscriptions (id, url, events, secret) VALUES ('s', 'http://x', '*', 'k');
             INSERT INTO deliveries (id, webhook_id, subscription_id, message_id, event_type,
                                     payload, status, next_attempt_at)
             SELECT 'd' || i, 'w' || i, 's', 'm' || i, 'order.created', '\\x7b7d', 'pending', i / 10
             FROM generate_series(1, 5000) AS i;
             ANALYZE deliveries;",
        )
        .await
        .unwrap();
    let plan = plan_of_due_in_order(&client, "EXPLAIN", "s", i64::MAX).await;
    assert!(plan.contains("deliveries_due_in_order"), "{plan}");
    assert!(
        !plan.contains("Sort"),
        "the backlog is sorted on every pass:\n{plan}"
    );
    stop.cancel();
    drop(client);
    db.drop().await.unwrap();
}

/// Deliveries in flight (claimed, lease running) are out of the range the next pass reads, as
/// on SQLite: the claim moves their next attempt to the end of the lease. Left at their due
/// time, every pass of every instance read them first, only to drop them for their lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_in_flight_are_not_read_again_by_the_next_pass() {
    let db = TestDatabase::create("wh_in_flight").await.unwrap();
    let stop = CancellationToken::new();
    let before = webhook_publisher::store::now_ms();
    let (store, jobs) = claimed_events(&db, &stop, 8).await;
    let client = db.connect().await.unwrap();
    let due_again: Vec<i64> = client
        .query("SELECT next_attempt_at FROM deliveries", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(due_again.len(), jobs.len());
    // claimed_events claims with a 30 s lease.
    assert!(
        due_again.iter().all(|&at| at >= before + 30_000),
        "{due_again:?}"
    );

    let subscription: String = client
        .query_one("SELECT id FROM subscriptions", &[])
        .await
        .unwrap()
        .get(0);
    client
        .batch_execute("SET enable_seqscan = off")
        .await
        .unwrap();
    let explain = "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF)";
    let now = webhook_publisher::store::now_ms();
    let plan = plan_of_due_in_order(&client, explain, &subscription, now).await;
    assert!(plan.contains("deliveries_due_in_order"), "{plan}");
    assert!(
        !plan.contains("Rows Removed by Filter"),
        "the pass read the deliveries in flight:\n{plan}"
    );
    assert!(claim(&store, Duration::from_secs(30)).await.is_empty());
    stop.cancel();
    drop(client);
    db.drop().await.unwrap();
}

/// An instance's store with the default subscription and `n` recorded events, all claimed by
/// it.
async fn claimed_events(
    db: &TestDatabase,
    stop: &CancellationToken,
    n: usize,
) -> (Store, Vec<Job>) {
    let store = instance(db, stop).await;
    subscribe_default(&store).await;
    for i in 0..n {
        let event = new_event(&format!("m-{i}"), keys::ORDER_CREATED);
        store.record_event(event).await.unwrap().unwrap();
    }
    let jobs = claim(&store, Duration::from_secs(30)).await;
    assert_eq!(jobs.len(), n);
    (store, jobs)
}

fn postgres(store: &Store) -> &PgDb {
    match store {
        Store::Postgres(pg) => pg,
        Store::Sqlite(_) => unreachable!("these tests run on PostgreSQL"),
    }
}

/// Runs [`settle_together`](webhook_publisher::store::pg::settle_together) in a transaction of
/// its own, with a statement after it: the transaction must still be usable when it failed.
async fn settle_together(
    store: &Store,
    settlements: Vec<Settlement>,
) -> Result<Vec<Settled>, String> {
    let pg = postgres(store);
    let instance = pg.instance().to_owned();
    pg.write(move |tx| {
        Box::pin(async move {
            let settled =
                webhook_publisher::store::pg::settle_together(tx, &instance, &settlements).await;
            tx.batch_execute("SELECT 1").await?;
            Ok(settled.map_err(|e| messaging::pg::described(&e)))
        })
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_records_its_attempts_together_and_skips_lost_claims() {
    let db = TestDatabase::create("wh_together").await.unwrap();
    let stop = CancellationToken::new();
    let (store, jobs) = claimed_events(&db, &stop, 4).await;
    // Another instance holds the last one now (this one's lease ran out).
    let client = db.connect().await.unwrap();
    client
        .execute(
            "UPDATE deliveries SET claimed_by = 'someone-else' WHERE id = $1",
            &[&jobs[3].delivery_id],
        )
        .await
        .unwrap();
    let failed = AttemptRecord {
        status_code: Some(503),
        latency_ms: 7,
        error: Some("the endpoint answered 503".to_owned()),
        ..Default::default()
    };
    let retry_at = webhook_publisher::store::now_ms() + 60_000;
    let settlements = vec![
        delivered_with(&jobs[0], Some("fine")),
        Settlement::of(&jobs[1], failed, Next::RetryAt(retry_at)),
        delivered(&jobs[2]),
        delivered(&jobs[3]),
    ];

    let settled = settle_together(&store, settlements).await.unwrap();
    assert_eq!(
        settled,
        [
            Settled::Written,
            Settled::Written,
            Settled::Written,
            Settled::ClaimLost
        ]
    );
    let detail = |i: usize| {
        let (store, id) = (store.clone(), jobs[i].delivery_id.clone());
        async move { store.delivery_detail(id).await.unwrap().unwrap() }
    };
    let (first, attempts, _) = detail(0).await;
    assert_eq!(first.status, DeliveryStatus::Delivered);
    assert_eq!(first.attempt_count, 1);
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].response_body.as_deref(), Some("fine"));
    assert_eq!(attempts[0].trigger, "scheduled");
    let (second, attempts, _) = detail(1).await;
    assert_eq!(second.status, DeliveryStatus::Pending);
    assert_eq!(second.last_status_code, Some(503));
    assert_eq!(
        second.last_error.as_deref(),
        Some("the endpoint answered 503")
    );
    assert!(second.next_attempt_at.is_some());
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].latency_ms, 7);
    assert_eq!(detail(2).await.0.status, DeliveryStatus::Delivered);
    // Not recorded: its holder records its own attempt.
    let (lost, attempts, _) = detail(3).await;
    assert_eq!(lost.status, DeliveryStatus::Pending);
    assert!(attempts.is_empty());
    // The written ones gave up their claims: the retry is due in a minute, not claimable now,
    // and nothing else is pending for this instance.
    let claimed: i64 = client
        .query_one(
            "SELECT count(*) FROM deliveries WHERE claimed_by IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(claimed, 1, "only the lost claim is still held");

    stop.cancel();
    drop(client);
    db.drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_that_cannot_be_written_holds_back_only_itself() {
    let db = TestDatabase::create("wh_together_bad").await.unwrap();
    let stop = CancellationToken::new();
    let (store, jobs) = claimed_events(&db, &stop, 3).await;
    // PostgreSQL's text refuses NUL: this attempt cannot be written (delivery.rs replaces it
    // before it gets here; the store must not depend on that).
    let settlements = vec![
        delivered(&jobs[0]),
        delivered_with(&jobs[1], Some("bad\0body")),
        delivered(&jobs[2]),
    ];

    // Together: nothing of it is kept, and the transaction goes on.
    let error = settle_together(&store, settlements.clone())
        .await
        .unwrap_err();
    assert!(
        error.contains("0x00") || error.contains("invalid"),
        "{error}"
    );
    let client = db.connect().await.unwrap();
    let count = |sql: &'static str| {
        let client = &client;
        async move { client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM attempts").await, 0);
    assert_eq!(
        count("SELECT count(*) FROM deliveries WHERE status = 'pending'").await,
        3
    );

    // The store then writes them one at a time: the two good ones are recorded, the bad one
    // keeps its claim and is attempted again after its lease.
    store.settle(settlements).await.unwrap();
    assert_eq!(count("SELECT count(*) FROM attempts").await, 2);
    assert_eq!(
        count("SELECT count(*) FROM deliveries WHERE status = 'delivered'").await,
        2
    );
    let (bad, attempts, _) = store
        .delivery_detail(jobs[1].delivery_id.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bad.status, DeliveryStatus::Pending);
    assert!(attempts.is_empty());

    stop.cancel();
    drop(client);
    db.drop().await.unwrap();
}

/// The default subscription (every order event), to an address nothing listens on.
async fn subscribe_default(store: &Store) {
    store
        .ensure_default_subscription(
            "http://127.0.0.1:9/hook".to_owned(),
            Secret::parse(SECRET).unwrap(),
        )
        .await
        .unwrap();
}

fn new_event(message_id: &str, event_type: &str) -> NewEvent {
    NewEvent {
        message_id: message_id.to_owned(),
        event_type: event_type.to_owned(),
        order_id: Some(format!("order-of-{message_id}")),
        body: format!(r#"{{"type":"{event_type}"}}"#).into_bytes(),
        traceparent: None,
    }
}

/// Records a batch of events with [`Store::record_events`] and checks that each got what
/// recording it alone gives (the same on both backends).
async fn events_recorded_together(store: &Store) {
    subscribe_default(store).await;
    // A second subscriber wants only confirmations.
    store
        .insert_subscription(
            "http://127.0.0.1:9/confirmed".to_owned(),
            vec![keys::ORDER_CONFIRMED.to_owned()],
            Secret::parse(SECRET).unwrap(),
        )
        .await
        .unwrap();
    let before = new_event("m-before", keys::ORDER_CREATED);
    store.record_event(before.clone()).await.unwrap().unwrap();

    let events = vec![
        new_event("m-1", keys::ORDER_CREATED),
        before,
        new_event("m-2", keys::ORDER_CONFIRMED),
        new_event("m-2", keys::ORDER_CONFIRMED),
        new_event("m-3", keys::STOCK_CHANGED),
    ];
    let recorded = store.record_events(Arc::new(events)).await.unwrap();
    let created: Vec<Option<usize>> = recorded
        .iter()
        .map(|r| r.as_ref().map(|r| r.created))
        .collect();
    assert_eq!(created, [Some(1), None, Some(2), None, Some(1)]);

    let filter = DeliveryFilter {
        limit: 100,
        ..Default::default()
    };
    let mut deliveries: Vec<(String, String, Option<String>, &str)> = store
        .list_deliveries(filter)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.message_id, d.webhook_id, d.order_id, d.status.as_str()))
        .collect();
    deliveries.sort();
    let row = |m: &str| {
        (
            m.to_owned(),
            format!("msg_{m}"),
            Some(format!("order-of-{m}")),
            "pending",
        )
    };
    assert_eq!(
        deliveries,
        [
            row("m-1"),
            row("m-2"),
            row("m-2"),
            row("m-3"),
            row("m-before")
        ]
    );
    // And the dispatcher finds them: one job per delivery.
    assert_eq!(claim(store, Duration::from_secs(30)).await.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_recorded_together_get_what_each_would_get_alone() {
    let db = TestDatabase::create("wh_record_together").await.unwrap();
    let stop = CancellationToken::new();
    events_recorded_together(&instance(&db, &stop).await).await;
    stop.cancel();
    db.drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_recorded_together_on_sqlite_get_what_each_would_get_alone() {
    let dir = tempfile::tempdir().unwrap();
    let db = messaging::Db::open(
        &dir.path().join("webhooks.db"),
        webhook_publisher::store::SCHEMA,
    )
    .await
    .unwrap();
    events_recorded_together(&Store::Sqlite(db)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_cannot_be_recorded_fails_alone_and_the_others_are_recorded() {
    let db = TestDatabase::create("wh_record_bad").await.unwrap();
    let stop = CancellationToken::new();
    let store = instance(&db, &stop).await;
    subscribe_default(&store).await;
    // PostgreSQL's text refuses NUL: this event cannot be recorded, together or alone.
    let bad = new_event("m-bad", "order.created\0");
    let error = store
        .record_events(Arc::new(vec![
            new_event("m-0", keys::ORDER_CREATED),
            bad.clone(),
        ]))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("0x00"), "{error}");

    // Through the recorder, many at once (so that they share batches): the others are
    // recorded, the bad one gets its own error.
    let recorder = Recorder::new(store.clone());
    let mut events: Vec<NewEvent> = (0..40)
        .map(|i| new_event(&format!("m-{i}"), keys::ORDER_CREATED))
        .collect();
    events.insert(20, bad);
    let results = futures::future::join_all(events.into_iter().map(|event| {
        let recorder = recorder.clone();
        tokio::spawn(async move {
            let id = event.message_id.clone();
            (id, recorder.record(event).await)
        })
    }))
    .await;
    for result in results {
        let (id, recorded) = result.unwrap();
        match id.as_str() {
            "m-bad" => assert!(recorded.is_err(), "the bad event was recorded"),
            _ => assert_eq!(recorded.unwrap().unwrap().created, 1, "{id}"),
        }
    }
    let client = db.connect().await.unwrap();
    let count = |sql: &'static str| {
        let client = &client;
        async move { client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM deliveries").await, 40);
    assert_eq!(count("SELECT count(*) FROM inbox").await, 40);

    stop.cancel();
    drop(client);
    db.drop().await.unwrap();
}
