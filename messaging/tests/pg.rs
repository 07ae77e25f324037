//! The PostgreSQL side of the messaging plumbing on a real server, a database per test:
//! migrations when several instances start at once, a schema newer than the binary, the write
//! transaction (inbox, outbox, rollback), outbox claims (rows written by an instance that
//! died are published by another once their lease has run out, each once), and the replanned
//! write (statements planned for their tables as they are now).

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use messaging::outbox::Relay;
use messaging::pg::{INBOX_OUTBOX, Migration, PgConfig};
use messaging::store::{DbError, InboxRetention};
use messaging::{Broker, BrokerConfig, OutgoingMessage, PgDb};
use testkit::{TestDatabase, Vhost};
use tokio_util::sync::CancellationToken;

static MIGRATIONS: [Migration; 2] = [
    INBOX_OUTBOX,
    // Not idempotent on purpose: applied twice, it fails.
    Migration {
        version: 2,
        name: "widgets",
        sql: "CREATE TABLE widgets (id BIGINT PRIMARY KEY); ALTER TABLE widgets ADD COLUMN name TEXT;",
    },
];

fn pg_db(db: &TestDatabase, lease: Duration) -> PgDb {
    let mut config = PgConfig::parse(&db.url).expect("test database URL");
    config.pool_size = 4;
    config.lease = lease;
    PgDb::new(&config, "pgtest", &MIGRATIONS, InboxRetention::default()).expect("pool")
}

/// Starts `db.run` in a task and waits until its schema is up to date.
async fn started(db: &PgDb, stop: &CancellationToken) {
    tokio::spawn(db.clone().run(stop.clone()));
    let ready = tokio::time::timeout(Duration::from_secs(20), db.wait_ready(stop)).await;
    assert_eq!(ready, Ok(true), "the schema was not migrated within 20 s");
}

fn message(n: usize) -> OutgoingMessage {
    OutgoingMessage {
        exchange: "saga.events".into(),
        routing_key: "order.confirmed".into(),
        message_id: format!("pg-test-{n}-{}", uuid::Uuid::now_v7()),
        correlation_id: Some(format!("order-{n}")),
        reply_to: None,
        traceparent: None,
        body: format!("{{\"n\":{n}}}").into_bytes(),
        mandatory: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_together_apply_each_migration_once() {
    let test_db = TestDatabase::create("migrate_together").await.unwrap();
    let stop = CancellationToken::new();
    let instances: Vec<PgDb> = (0..5)
        .map(|_| pg_db(&test_db, Duration::from_secs(5)))
        .collect();
    let runs: Vec<_> = instances
        .iter()
        .map(|db| tokio::spawn(db.clone().run(stop.clone())))
        .collect();
    for db in &instances {
        let ready = tokio::time::timeout(Duration::from_secs(20), db.wait_ready(&stop)).await;
        assert_eq!(ready, Ok(true));
        assert!(db.is_ready().await);
    }
    stop.cancel();
    for run in runs {
        // A migration applied twice would have failed one of the runs.
        run.await
            .unwrap()
            .expect("every instance migrated without error");
    }
    let client = test_db.connect().await.unwrap();
    let versions: Vec<i64> = client
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [1, 2]);
    drop(client);
    test_db.drop().await.unwrap();
}

#[tokio::test]
async fn a_schema_newer_than_the_binary_is_refused_at_once() {
    let test_db = TestDatabase::create("schema_too_new").await.unwrap();
    let stop = CancellationToken::new();
    let db = pg_db(&test_db, Duration::from_secs(5));
    started(&db, &stop).await;
    stop.cancel();
    let client = test_db.connect().await.unwrap();
    client
        .execute(
            "INSERT INTO schema_migrations (version, name) VALUES (3, 'from a newer release')",
            &[],
        )
        .await
        .unwrap();

    let older = pg_db(&test_db, Duration::from_secs(5));
    let result = tokio::time::timeout(Duration::from_secs(10), older.run(CancellationToken::new()))
        .await
        .expect("a newer schema is not retried");
    match result {
        Err(e @ DbError::SchemaTooNew { found: 3, known: 2 }) => {
            assert!(!e.is_transient());
            assert!(e.to_string().contains("newer than this binary"), "{e}");
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    drop(client);
    test_db.drop().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_server_keeps_the_service_waiting_not_failing() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let config = PgConfig::parse(&format!("postgres://postgres@127.0.0.1:{port}/nowhere")).unwrap();
    let db = PgDb::new(&config, "pgtest", &MIGRATIONS, InboxRetention::default()).unwrap();
    let stop = CancellationToken::new();
    let run = tokio::spawn(db.clone().run(stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!run.is_finished(), "the start gave up instead of retrying");
    assert!(!db.is_ready().await);
    stop.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(5), run).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
}

#[tokio::test]
async fn a_write_commits_inbox_and_outbox_together_or_neither() {
    let test_db = TestDatabase::create("write_tx").await.unwrap();
    let stop = CancellationToken::new();
    let (a, b) = (
        pg_db(&test_db, Duration::from_secs(5)),
        pg_db(&test_db, Duration::from_secs(5)),
    );
    started(&a, &stop).await;
    started(&b, &stop).await;

    let first = a
        .write(|tx| {
            Box::pin(async move {
                let fresh = tx.inbox_first_time("m-1").await?;
                tx.enqueue(&message(1)).await?;
                Ok(fresh)
            })
        })
        .await
        .unwrap();
    assert!(first);
    // The same message id at the other instance: seen already.
    let again = b
        .write(|tx| Box::pin(async move { tx.inbox_first_time("m-1").await }))
        .await
        .unwrap();
    assert!(!again);
    // A write that fails after its inbox and outbox steps leaves neither.
    let failed = a
        .write(|tx| {
            Box::pin(async move {
                tx.inbox_first_time("m-2").await?;
                tx.enqueue(&message(2)).await?;
                tx.execute("SELECT 1/0", &[]).await?;
                Ok(())
            })
        })
        .await;
    assert!(failed.is_err());
    let client = test_db.connect().await.unwrap();
    let count = |sql: &'static str| {
        let client = &client;
        async move { client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT COUNT(*) FROM inbox").await, 1);
    assert_eq!(count("SELECT COUNT(*) FROM outbox").await, 1);
    let claimed_by: String = client
        .query_one("SELECT claimed_by FROM outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        claimed_by,
        a.instance(),
        "a row belongs to the instance that wrote it"
    );
    stop.cancel();
    drop(client);
    test_db.drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_left_by_a_dead_instance_are_published_by_another_after_the_lease() {
    let test_db = TestDatabase::create("relay_takeover").await.unwrap();
    let vhost = Vhost::create("pg-relay").await.unwrap();
    let stop = CancellationToken::new();
    let lease = Duration::from_secs(2);
    let (dead, alive) = (pg_db(&test_db, lease), pg_db(&test_db, lease));
    started(&dead, &stop).await;
    started(&alive, &stop).await;

    // The broker link of the surviving instance declares the topology; a queue of the test's
    // own, bound to the events exchange, collects what is published.
    let broker = Broker::new(BrokerConfig::new(&vhost.url(), "pg-relay-test"));
    tokio::spawn(broker.clone().run(stop.clone()));
    assert!(broker.wait_connected(Duration::from_secs(20)).await);
    let conn = lapin::Connection::connect(&vhost.url(), lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_declare(
            "collect".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            "collect".into(),
            "saga.events".into(),
            "order.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    // The instance that is about to die commits 20 rows; its relay never runs.
    let sent: Vec<OutgoingMessage> = (0..20).map(message).collect();
    let rows = sent.clone();
    dead.write(|tx| {
        Box::pin(async move {
            for msg in &rows {
                tx.enqueue(msg).await?;
            }
            Ok(())
        })
    })
    .await
    .unwrap();
    let written = tokio::time::Instant::now();

    tokio::spawn(
        Relay::new(alive.clone(), broker.clone())
            .unwrap()
            .run(stop.clone()),
    );
    let mut consumer = channel
        .basic_consume(
            "collect".into(),
            "collector".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < sent.len() {
        let delivery = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .expect("every row is published within 20 s")
            .expect("consumer open")
            .expect("delivery");
        if seen.is_empty() {
            assert!(
                written.elapsed() >= lease - Duration::from_millis(200),
                "another instance's rows were taken before their lease ran out"
            );
        }
        seen.push(
            delivery
                .properties
                .message_id()
                .clone()
                .unwrap()
                .to_string(),
        );
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    let expected: HashSet<String> = sent.iter().map(|m| m.message_id.clone()).collect();
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), expected);
    assert_eq!(seen.len(), expected.len(), "a row was published twice");

    // Once confirmed, the rows are deleted.
    let client = test_db.connect().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left: i64 = client
            .query_one("SELECT COUNT(*) FROM outbox", &[])
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} rows never deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    let _ = conn.close(0, "done".into()).await;
    drop(client);
    vhost.delete().await;
    test_db.drop().await.unwrap();
}

/// Runs the statement `widget_lookup` for 50 ids, as many as a dispatcher pass settles.
fn lookup() -> String {
    let ids: Vec<String> = (1..=50).map(|i| i.to_string()).collect();
    format!("EXECUTE widget_lookup('{{{}}}')", ids.join(","))
}

/// The lines of `EXPLAIN EXECUTE widget_lookup(…)` in `tx`.
fn explain_lookup<'t>(
    tx: &'t messaging::pg::PgTx<'t>,
) -> futures::future::BoxFuture<'t, Result<String, tokio_postgres::Error>> {
    Box::pin(async move {
        let rows = tx.query(&format!("EXPLAIN {}", lookup()), &[]).await?;
        let lines: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        Ok(lines.join("\n"))
    })
}

/// A statement prepared while its table was small keeps the generic plan made then (a scan of
/// the whole table) after the table has grown, until statistics are gathered again; in a
/// `write_replanned` transaction it is planned for the table as it is now (an index lookup).
/// The setting ends with that transaction: the pooled connection plans as it did before.
#[tokio::test]
async fn a_replanned_write_plans_for_the_table_as_it_is_now() {
    let test_db = TestDatabase::create("replanned").await.unwrap();
    let stop = CancellationToken::new();
    let mut config = PgConfig::parse(&test_db.url).expect("test database URL");
    // One connection, so the statement prepared below is there for every write.
    config.pool_size = 1;
    let db = PgDb::new(&config, "pgtest", &MIGRATIONS, InboxRetention::default()).unwrap();
    started(&db, &stop).await;
    let steps = [
        // No autovacuum ANALYZE may refresh the plan in the middle of the test.
        "ALTER TABLE widgets SET (autovacuum_enabled = false);
         PREPARE widget_lookup(bigint[]) AS
             SELECT w.id FROM widgets w JOIN unnest($1) AS u(id) ON w.id = u.id;
         INSERT INTO widgets (id) SELECT generate_series(1, 300);
         ANALYZE widgets;"
            .to_owned(),
        // PostgreSQL switches to a cached generic plan of its own accord after five runs when
        // that plan looks no dearer than planning each call (as it did for the publisher's
        // statements); the session setting stands in for that choice here. The plan is made
        // while the table holds a few hundred rows.
        format!("SET plan_cache_mode = force_generic_plan; {}", lookup()),
        "INSERT INTO widgets (id) SELECT generate_series(301, 100000)".to_owned(),
    ];
    for sql in steps {
        db.write(move |tx| Box::pin(async move { tx.batch_execute(&sql).await }))
            .await
            .unwrap();
    }

    let cached = db.write(explain_lookup).await.unwrap();
    assert!(cached.contains("Seq Scan on widgets"), "{cached}");
    let replanned = db.write_replanned(explain_lookup).await.unwrap();
    assert!(replanned.contains("Index"), "{replanned}");
    assert!(!replanned.contains("Seq Scan on widgets"), "{replanned}");
    let mode: String = db
        .write(|tx| {
            Box::pin(async move { tx.query_one("SHOW plan_cache_mode", &[]).await?.try_get(0) })
        })
        .await
        .unwrap();
    assert_eq!(
        mode, "force_generic_plan",
        "the transaction's setting outlived it"
    );
    stop.cancel();
    test_db.drop().await.unwrap();
}
