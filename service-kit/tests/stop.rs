//! A clean stop of a service closes its databases after its tasks: every connection is closed,
//! so no SQLite `-wal` or `-shm` file is left, and everything written is in the database file.

use messaging::Db;
use messaging::store::InboxRetention;
use service_kit::Running;
use testkit::sqlite_files::wal_files;

async fn inbox_count(db: &Db) -> usize {
    db.call(|c| c.query_row("SELECT count(*) FROM inbox", [], |r| r.get::<_, i64>(0)))
        .await
        .expect("read the inbox") as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_leaves_no_wal_or_shm_files() {
    let temp = tempfile::tempdir().expect("a temporary directory");
    let dir = temp.path();
    let db = Db::open_with(&dir.join("t.db"), "", InboxRetention::default())
        .await
        .expect("open");
    let mut running = Running::start("test", "127.0.0.1:0".parse().unwrap(), axum::Router::new())
        .await
        .expect("start");
    running.close_on_stop(db.clone());
    for i in 0..20 {
        db.write(move |tx| Ok(tx.inbox_first_time(&format!("m-{i}"))?))
            .await
            .expect("write");
    }
    assert_eq!(inbox_count(&db).await, 20);
    assert!(
        !wal_files(dir).is_empty(),
        "a running database in WAL mode has its -wal and -shm files"
    );

    running.stop().await;
    assert_eq!(wal_files(dir), Vec::<String>::new());
    assert!(
        db.write(|tx| Ok(tx.inbox_first_time("late")?))
            .await
            .is_err(),
        "a closed database takes no more writes"
    );
    // Everything written is in the database file itself.
    let reopened = Db::open_with(&dir.join("t.db"), "", InboxRetention::default())
        .await
        .expect("reopen");
    assert_eq!(inbox_count(&reopened).await, 20);
    reopened.close().await;
}
