//! Group commit on PostgreSQL (`PgDb::write_in_batch`) on a real server, a database per test:
//! concurrent writes share transactions, a failing write undoes only its own changes (its batch
//! companions are retried, then run one by one), a hot row is never driven below its guard, and
//! a batch whose commit fails applies none of its writes while telling each caller so.

use std::collections::HashSet;
use std::time::Duration;

use messaging::pg::{INBOX_OUTBOX, Migration, PgConfig};
use messaging::store::{DbError, InboxRetention};
use messaging::{OutgoingMessage, PgDb};
use testkit::TestDatabase;
use tokio_util::sync::CancellationToken;

static MIGRATIONS: [Migration; 2] = [
    INBOX_OUTBOX,
    Migration {
        version: 2,
        name: "widgets",
        sql: "
CREATE TABLE widgets (id BIGINT PRIMARY KEY, txid BIGINT NOT NULL);
CREATE TABLE counter (id INT PRIMARY KEY, n BIGINT NOT NULL CHECK (n >= 0));
INSERT INTO counter VALUES (1, 150);
-- Checked at COMMIT only: a write that breaks it fails its whole transaction's commit.
CREATE TABLE deferred (id INT, CONSTRAINT deferred_once UNIQUE (id) DEFERRABLE INITIALLY DEFERRED);
INSERT INTO deferred VALUES (1);",
    },
];

async fn started(test_db: &TestDatabase, stop: &CancellationToken) -> PgDb {
    let mut config = PgConfig::parse(&test_db.url).expect("test database URL");
    config.pool_size = 4;
    let db =
        PgDb::new(&config, "pgbatch", &MIGRATIONS, InboxRetention::default()).expect("the pool");
    tokio::spawn(db.clone().run(stop.clone()));
    let ready = tokio::time::timeout(Duration::from_secs(20), db.wait_ready(stop)).await;
    assert_eq!(ready, Ok(true), "the schema was not migrated within 20 s");
    db
}

fn message(n: i64) -> OutgoingMessage {
    OutgoingMessage {
        exchange: "saga.events".into(),
        routing_key: "order.confirmed".into(),
        message_id: format!("batch-{n}"),
        correlation_id: Some(format!("order-{n}")),
        reply_to: None,
        traceparent: None,
        body: format!("{{\"n\":{n}}}").into_bytes(),
        mandatory: true,
    }
}

/// Inserts widget `n` (with the id of the transaction it ran in), takes one from the counter
/// if any is left, and enqueues a message; every tenth write then fails on a duplicate key,
/// after all of that.
async fn widget_write(db: PgDb, n: i64) -> Result<bool, DbError> {
    db.write_in_batch("counter", move |tx| {
        Box::pin(async move {
            tx.execute(
                "INSERT INTO widgets (id, txid) VALUES ($1, txid_current())",
                &[&n],
            )
            .await?;
            let took = tx
                .query_opt(
                    "UPDATE counter SET n = n - 1 WHERE id = 1 AND n >= 1 RETURNING n",
                    &[],
                )
                .await?
                .is_some();
            tx.enqueue(&message(n)).await?;
            if n % 10 == 0 {
                tx.execute("INSERT INTO widgets (id, txid) VALUES ($1, 0)", &[&n])
                    .await?;
            }
            Ok(took)
        })
    })
    .await
}

/// [`widget_write`] as a consumer runs it: a write dropped with its batch (another write of the
/// batch failed) is tried again. Returns the write's result and how many times it was dropped.
async fn widget_write_retried(db: PgDb, n: i64) -> (Result<bool, DbError>, usize) {
    let mut dropped = 0;
    loop {
        match widget_write(db.clone(), n).await {
            Err(DbError::WriteDropped) if dropped < 5 => dropped += 1,
            result => return (result, dropped),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_transactions_and_a_failing_one_undoes_only_itself() {
    let test_db = TestDatabase::create("batch_share").await.unwrap();
    let stop = CancellationToken::new();
    let db = started(&test_db, &stop).await;

    let writes: Vec<_> = (1..=200i64)
        .map(|n| tokio::spawn(widget_write_retried(db.clone(), n)))
        .collect();
    let (mut kept, mut took, mut failed, mut dropped) = (HashSet::new(), 0, 0, 0);
    for (n, write) in (1..=200i64).zip(writes) {
        let (result, times_dropped) = write.await.unwrap();
        dropped += times_dropped;
        match result {
            Ok(t) => {
                assert_ne!(n % 10, 0, "write {n} should have failed");
                kept.insert(n);
                took += usize::from(t);
            }
            Err(e) => {
                assert_eq!(n % 10, 0, "write {n} failed: {e}");
                failed += 1;
            }
        }
    }
    assert_eq!((kept.len(), failed), (180, 20));
    // The batches run their writes together until one fails; the failed batch's other writes
    // are dropped once and succeed when tried again, one by one.
    assert!(dropped < 200, "{dropped} writes were dropped");
    assert_eq!(took, 150, "the counter held 150");

    let client = test_db.connect().await.unwrap();
    let rows = client
        .query("SELECT id, txid FROM widgets", &[])
        .await
        .unwrap();
    let ids: HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        ids, kept,
        "exactly the kept writes' rows, none of a failed one"
    );
    let transactions: HashSet<i64> = rows.iter().map(|r| r.get(1)).collect();
    assert!(
        transactions.len() < kept.len(),
        "200 concurrent writes in {} transactions: none shared one",
        transactions.len()
    );
    let left: i64 = client
        .query_one("SELECT n FROM counter", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    let outbox: HashSet<String> = first_column(&client, "SELECT message_id FROM outbox").await;
    let expected: HashSet<String> = kept.iter().map(|n| format!("batch-{n}")).collect();
    assert_eq!(
        outbox, expected,
        "the outbox holds the kept writes' messages"
    );

    stop.cancel();
    drop(client);
    db.close();
    test_db.drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_commit_fails_applies_none_of_its_writes() {
    let test_db = TestDatabase::create("batch_commit_fails").await.unwrap();
    let stop = CancellationToken::new();
    let db = started(&test_db, &stop).await;

    // Write 0 breaks the deferred constraint: each write on its own is fine until COMMIT, so
    // the batch write 0 lands in fails as a whole.
    let writes: Vec<_> = (0..60i64)
        .map(|n| {
            let db = db.clone();
            tokio::spawn(async move {
                db.write_in_batch("", move |tx| {
                    Box::pin(async move {
                        tx.execute(
                            "INSERT INTO widgets (id, txid) VALUES ($1, txid_current())",
                            &[&n],
                        )
                        .await?;
                        let id = if n == 0 { 1 } else { 1000 + n as i32 };
                        tx.execute("INSERT INTO deferred (id) VALUES ($1)", &[&id])
                            .await?;
                        Ok(())
                    })
                })
                .await
            })
        })
        .collect();
    let mut applied = HashSet::new();
    let mut refused = Vec::new();
    for (n, write) in (0..60i64).zip(writes) {
        match write.await.unwrap() {
            Ok(()) => {
                applied.insert(n);
            }
            Err(e) => refused.push((n, e)),
        }
    }
    assert!(
        !applied.contains(&0),
        "the write breaking the constraint was applied"
    );
    for (n, e) in &refused {
        assert!(
            matches!(e, DbError::PgGroupCommit(_)),
            "write {n}: expected the batch's commit error, got {e}"
        );
        assert!(e.is_transient(), "a write of a failed batch is retried");
    }
    let client = test_db.connect().await.unwrap();
    let ids: HashSet<i64> = first_column(&client, "SELECT id FROM widgets").await;
    assert_eq!(
        ids, applied,
        "the rows are exactly those of the writes told Ok"
    );
    let extra: i64 = client
        .query_one("SELECT COUNT(*) FROM deferred WHERE id > 1000", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(extra as usize, applied.len());

    stop.cancel();
    drop(client);
    db.close();
    test_db.drop().await.unwrap();
}

/// The first column of `sql`'s rows, as a set.
async fn first_column<T>(client: &tokio_postgres::Client, sql: &str) -> HashSet<T>
where
    T: for<'a> tokio_postgres::types::FromSql<'a> + Eq + std::hash::Hash,
{
    let rows = client.query(sql, &[]).await.unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// Holds one lane for `secs` (a write that only sleeps).
async fn hold_a_lane(db: PgDb, secs: f64) -> Result<(), DbError> {
    db.write_in_batch("hold", move |tx| {
        Box::pin(async move {
            tx.execute("SELECT pg_sleep($1)", &[&secs]).await?;
            Ok(())
        })
    })
    .await
}

/// Keeps both lanes busy for half a second, one write each (the second is sent once the first
/// lane took the first), so that the writes sent next queue up and share the next batch.
async fn hold_both_lanes(db: &PgDb) -> Vec<tokio::task::JoinHandle<Result<(), DbError>>> {
    let mut holds = Vec::new();
    for _ in 0..2 {
        holds.push(tokio::spawn(hold_a_lane(db.clone(), 0.5)));
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    holds
}

/// Inserts widget `n` (once more if `twice`, which fails on the key).
async fn insert_widget(db: PgDb, n: i64, twice: bool) -> Result<(), DbError> {
    db.write_in_batch(n.to_string(), move |tx| {
        Box::pin(async move {
            tx.execute("INSERT INTO widgets (id, txid) VALUES ($1, 0)", &[&n])
                .await?;
            if twice {
                tx.execute("INSERT INTO widgets (id, txid) VALUES ($1, 0)", &[&n])
                    .await?;
            }
            Ok(())
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_of_a_batch_run_together_until_one_fails_then_one_by_one() {
    let test_db = TestDatabase::create("batch_together").await.unwrap();
    let stop = CancellationToken::new();
    let db = started(&test_db, &stop).await;
    let holds = hold_both_lanes(&db).await;
    let good = tokio::spawn(insert_widget(db.clone(), 1, false));
    let bad = tokio::spawn(insert_widget(db.clone(), 2, true));
    let also_good = tokio::spawn(insert_widget(db.clone(), 3, false));
    for hold in holds {
        hold.await.unwrap().unwrap();
    }
    // Run together, the failing write took its batch with it: its own error for it, a
    // retryable drop for the others, nothing kept.
    let bad = bad.await.unwrap().unwrap_err();
    assert!(bad.to_string().contains("duplicate key"), "{bad}");
    for dropped in [good.await.unwrap(), also_good.await.unwrap()] {
        assert!(
            matches!(dropped, Err(DbError::WriteDropped)),
            "a write of the failed batch: {dropped:?}"
        );
    }
    let client = test_db.connect().await.unwrap();
    let count = client
        .query_one("SELECT count(*) FROM widgets", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(count, 0, "nothing of the failed batch is kept");

    // Tried again in one batch, one by one now: only the failing write fails.
    let holds = hold_both_lanes(&db).await;
    let retried = [
        tokio::spawn(insert_widget(db.clone(), 1, false)),
        tokio::spawn(insert_widget(db.clone(), 2, true)),
        tokio::spawn(insert_widget(db.clone(), 3, false)),
    ];
    for hold in holds {
        hold.await.unwrap().unwrap();
    }
    let [good, bad, also_good] = retried;
    good.await.unwrap().unwrap();
    also_good.await.unwrap().unwrap();
    assert!(bad.await.unwrap().is_err());
    let ids: HashSet<i64> = first_column(&client, "SELECT id FROM widgets").await;
    assert_eq!(ids, HashSet::from([1, 3]));

    stop.cancel();
    drop(client);
    db.close();
    test_db.drop().await.unwrap();
}
