//! A bad setting of the egress guard, the TLS roots, the retention or `DATABASE_URL` stops the publisher binary
//! at start with a message naming the variable (before it touches the broker or the disk).

/// Runs the binary with `vars`; it must exit non-zero within 30 s. Returns its stderr.
async fn refused_start(vars: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    testkit::process::refused_start(env!("CARGO_BIN_EXE_webhook-publisher"), dir.path(), vars).await
}

#[tokio::test]
async fn bad_settings_stop_the_start_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "just text\n").unwrap();
    let not_pem = not_pem.to_str().unwrap();
    for (vars, expected) in [
        (
            [("WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8,10.0.0.0/33")],
            "WEBHOOK_ALLOWED_NETWORKS: \"10.0.0.0/33\" is not a network",
        ),
        (
            [("WEBHOOK_CA_FILE", "/nonexistent/ca.pem")],
            "WEBHOOK_CA_FILE: cannot read /nonexistent/ca.pem",
        ),
        ([("WEBHOOK_CA_FILE", not_pem)], "holds no PEM certificate"),
        (
            [("WEBHOOK_HISTORY_RETENTION_DAYS", "0")],
            "WEBHOOK_HISTORY_RETENTION_DAYS: must be at least 1 day",
        ),
        (
            [("WEBHOOK_HISTORY_RETENTION_DAYS", "a month")],
            "WEBHOOK_HISTORY_RETENTION_DAYS",
        ),
        (
            [("DATABASE_URL", "mysql://app:s3cret@127.0.0.1/webhooks")],
            "DATABASE_URL",
        ),
        (
            [(
                "DATABASE_URL",
                "postgres://app:s3cret@127.0.0.1:notaport/webhooks",
            )],
            "DATABASE_URL",
        ),
    ] {
        let stderr = refused_start(&vars).await;
        assert!(stderr.contains(expected), "{vars:?}: {stderr}");
        assert!(
            !stderr.contains("s3cret"),
            "a password was printed: {stderr}"
        );
        if vars[0].1 == not_pem {
            assert!(stderr.contains("WEBHOOK_CA_FILE"), "{stderr}");
        }
    }
}
