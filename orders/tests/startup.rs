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
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    for url in [
        "mysql://orders:s3cret@127.0.0.1/orders",
        "postgres://orders:s3cret@127.0.0.1:notaport/orders",
        "postgres://orders:s3cret@127.0.0.1:5432",
    ] {
        let stderr = refused_start(&data_dir, &[("DATABASE_URL", url)]).await;
        assert!(stderr.contains("DATABASE_URL"), "{url}: {stderr}");
        assert!(
            !stderr.contains("s3cret"),
            "{url}: the password leaked: {stderr}"
        );
    }
    let stderr = refused_start(
        &data_dir,
        &[
            ("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/x"),
            ("DATABASE_POOL_SIZE", "0"),
        ],
    )
    .await;
    assert!(stderr.contains("DATABASE_POOL_SIZE"), "{stderr}");
    assert!(!data_dir.exists(), "a refused start created {data_dir:?}");
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
