//! The products binary refuses to start on a bad `DATABASE_URL` or a database whose schema is
//! newer than it knows, exiting non-zero with a message that says why (and no password), and
//! writing nothing to its `DATA_DIR`.

use std::time::Duration;

use testkit::TestDatabase;

/// Runs the binary with `vars`; it must exit non-zero within 30 s. Returns its stderr.
async fn refused_start(data_dir: &std::path::Path, vars: &[(&str, &str)]) -> String {
    testkit::process::refused_start(env!("CARGO_BIN_EXE_products"), data_dir, vars).await
}

#[tokio::test]
async fn a_malformed_database_url_stops_the_start_naming_the_variable_not_the_password() {
    testkit::process::assert_bad_database_settings_refused(
        env!("CARGO_BIN_EXE_products"),
        "products",
    )
    .await;
}

#[tokio::test]
async fn a_schema_newer_than_the_binary_stops_it_with_a_clear_message() {
    let db = TestDatabase::create("products_schema_too_new")
        .await
        .unwrap();
    db.mark_schema_version(99).await.unwrap();
    let client = db.connect().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let stderr = refused_start(&data_dir, &[("DATABASE_URL", &db.url)]).await;
    let known = products::store::pg::MIGRATIONS.len();
    assert!(
        stderr.contains(&format!(
            "the database schema is at version 99, newer than this binary knows ({known})"
        )),
        "{stderr}"
    );
    // Nothing was applied on top of the newer schema.
    let tables: i64 = client
        .query_one(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'products'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0);
    assert!(!data_dir.exists(), "products wrote to {data_dir:?}");
    drop(client);
    db.drop().await.unwrap();
}

/// Starts products in this process on `database`, with a broker address nobody listens on.
async fn spawn_on(database: &str, data_dir: &std::path::Path) -> service_kit::Running {
    let config = products::Config {
        common: service_kit::config::CommonConfig {
            http_addr: "127.0.0.1:0".parse().unwrap(),
            amqp_url: "amqp://guest:guest@127.0.0.1:1/%2f".into(),
            redis_url: "redis://127.0.0.1:1".into(),
            redis_prefix: String::new(),
            data_dir: data_dir.to_path_buf(),
        },
        prefetch: 8,
        database: Some(messaging::pg::PgConfig::parse(database).unwrap()),
    };
    products::spawn(config).await.unwrap()
}

/// `/ready`'s `postgres` check, once it says `want` (at most 20 s).
async fn postgres_check(base: &str, want: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let response = reqwest::get(format!("{base}/ready")).await.unwrap();
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap();
        if body["checks"]["postgres"] == want || tokio::time::Instant::now() > deadline {
            // The broker is unreachable in these tests: never ready as a whole.
            assert_eq!(status, 503, "{body}");
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_includes_postgresql() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");

    // Unreachable: alive (health answers), postgres down, no crash.
    let running = spawn_on("postgres://postgres@127.0.0.1:1/products", &data_dir).await;
    let base = running.url();
    let health = reqwest::get(format!("{base}/health")).await.unwrap();
    assert_eq!(health.status(), 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let body = postgres_check(&base, "down").await;
    assert_eq!(body["checks"]["postgres"], "down", "{body}");
    running.stop().await;

    // Reachable: the schema is migrated and postgres turns up (the broker still is not).
    let db = TestDatabase::create("products_ready").await.unwrap();
    let running = spawn_on(&db.url, &data_dir).await;
    let body = postgres_check(&running.url(), "up").await;
    assert_eq!(body["checks"]["postgres"], "up", "{body}");
    running.stop().await;
    assert!(
        !data_dir.join("products.db").exists(),
        "products.db written with DATABASE_URL set"
    );
    db.drop().await.unwrap();
}
