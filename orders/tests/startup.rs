//! The orders binary refuses to start on a bad `DATABASE_URL` or a database whose schema is
//! newer than it knows, exiting non-zero with a message that says why (and no password), and
//! writing nothing to its `DATA_DIR`.

use testkit::TestDatabase;

/// Runs the binary with `vars`; it must exit non-zero within 30 s. Returns its stderr.
async fn refused_start(data_dir: &std::path::Path, vars: &[(&str, &str)]) -> String {
    testkit::process::refused_start(env!("CARGO_BIN_EXE_orders"), data_dir, vars).await
}

#[tokio::test]
async fn a_malformed_database_url_stops_the_start_naming_the_variable_not_the_password() {
    testkit::process::assert_bad_database_settings_refused(env!("CARGO_BIN_EXE_orders"), "orders")
        .await;
}

#[tokio::test]
async fn a_schema_newer_than_the_binary_stops_it_with_a_clear_message() {
    let db = TestDatabase::create("orders_schema_too_new").await.unwrap();
    db.mark_schema_version(99).await.unwrap();
    let client = db.connect().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let stderr = refused_start(&data_dir, &[("DATABASE_URL", &db.url)]).await;
    let known = orders::store::pg::MIGRATIONS.len();
    assert!(
        stderr.contains(&format!(
            "the database schema is at version 99, newer than this binary knows ({known})"
        )),
        "{stderr}"
    );
    // Nothing was applied on top of the newer schema.
    let tables: i64 = client
        .query_one(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'orders'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0);
    assert!(!data_dir.exists(), "orders wrote to {data_dir:?}");
    drop(client);
    db.drop().await.unwrap();
}
