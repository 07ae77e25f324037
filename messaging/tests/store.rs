//! The shared SQLite store on a real database file: inbox rows older than the retention are
//! deleted in the background (in batches, newer rows kept). That a service's clean stop closes
//! every connection is `service-kit`'s tests/stop.rs.

use std::path::PathBuf;
use std::time::Duration;

use deadpool_sqlite::rusqlite::params;
use messaging::Db;
use messaging::store::InboxRetention;
use testkit::sqlite_files::wal_files;

fn temp_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{name}-{}", uuid::Uuid::new_v4()))
}

async fn inbox_ids(db: &Db) -> Vec<String> {
    db.call(|c| {
        let mut stmt = c.prepare("SELECT message_id FROM inbox ORDER BY rowid")?;
        let ids = stmt.query_map([], |r| r.get(0))?;
        ids.collect()
    })
    .await
    .expect("read the inbox")
}

/// Polls `ids` until `done` holds, at most `within`.
async fn until(db: &Db, within: Duration, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let ids = inbox_ids(db).await;
        if done(&ids) || tokio::time::Instant::now() >= deadline {
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_rows_older_than_the_retention_are_deleted_in_batches() {
    let dir = temp_dir("inbox-retention");
    let retention = InboxRetention {
        keep: Duration::from_secs(3),
        every: Duration::from_millis(100),
    };
    let db = Db::open_with(&dir.join("t.db"), "", retention)
        .await
        .expect("open");
    // 1,200 rows from long ago (more than two batches), then three of now.
    db.write(|tx| {
        let mut insert = tx.prepare(
            "INSERT INTO inbox (message_id, received_at) VALUES (?1, '2020-01-01T00:00:00.000Z')",
        )?;
        for i in 0..1200 {
            insert.execute(params![format!("old-{i}")])?;
        }
        Ok(())
    })
    .await
    .expect("old rows");
    db.write(|tx| {
        for id in ["new-1", "new-2", "new-3"] {
            assert!(tx.inbox_first_time(id)?);
        }
        Ok(())
    })
    .await
    .expect("new rows");

    let left = until(&db, Duration::from_secs(2), |ids| {
        !ids.iter().any(|id| id.starts_with("old-"))
    })
    .await;
    assert_eq!(
        left,
        ["new-1", "new-2", "new-3"],
        "the old rows go, the new ones stay"
    );

    // Once older than the retention, the new rows go too: forgotten, a message id is new again.
    let left = until(&db, Duration::from_secs(8), |ids| ids.is_empty()).await;
    assert!(left.is_empty(), "still there after the retention: {left:?}");
    let first_again = db
        .write(|tx| Ok(tx.inbox_first_time("new-1")?))
        .await
        .expect("write");
    assert!(first_again);

    db.close().await;
    assert_eq!(wal_files(&dir), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(dir);
}
