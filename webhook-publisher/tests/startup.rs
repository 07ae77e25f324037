//! A bad setting of the egress guard, the TLS roots, the retention or `DATABASE_URL` stops the publisher binary
//! at start with a message naming the variable (before it touches the broker or the disk).

use std::process::Stdio;
use std::time::Duration;

/// Runs the binary with `vars`; it must exit (non-zero) within 20 s. Returns its stderr.
async fn refused_start(vars: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_webhook-publisher"))
        .env("APP_ENV", "development")
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("DATA_DIR", dir.path())
        // Nothing listens there: the test must not depend on reaching a broker.
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .env(
            "JWT_SECRET",
            "a-test-secret-that-is-long-enough-for-any-rule",
        )
        .env("WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .env("NO_COLOR", "1")
        .envs(vars.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the publisher started with {vars:?}"))
        .unwrap();
    assert!(!output.status.success(), "exit 0 with {vars:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
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
