//! The webhook-publisher binary refuses to start, naming the variable, without a real
//! `WEBHOOK_SECRET` (it signs with it) or `JWT_SECRET` (its API takes ADMIN tokens) outside
//! `APP_ENV=development`.

use tokio::process::Command;

const JWT: &str = "a-jwt-secret-of-forty-bytes-for-the-test";
/// 32 bytes of key.
const WEBHOOK: &str = "whsec_ZGV2LW9ubHktd2ViaG9vay1zZWNyZXQtMzJieXRlcyE=";

/// Runs the publisher with `secrets` to its exit; returns whether it succeeded and what it
/// printed. (It must fail before opening its database; the data dir is a temp one all the same.)
async fn run(secrets: &[(&str, &str)]) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("publisher-secrets-{}", std::process::id()));
    let mut command = Command::new(env!("CARGO_BIN_EXE_webhook-publisher"));
    command
        .env_remove("JWT_SECRET")
        .env_remove("WEBHOOK_SECRET")
        .env_remove("APP_ENV")
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .env("DATA_DIR", &dir)
        .envs(secrets.iter().copied());
    testkit::process::exit_of(command).await
}

#[tokio::test]
async fn refuses_to_start_without_its_secrets() {
    let (ok, text) = run(&[("JWT_SECRET", JWT)]).await;
    assert!(!ok && text.contains("WEBHOOK_SECRET is required"), "{text}");
    let (ok, text) = run(&[("WEBHOOK_SECRET", WEBHOOK)]).await;
    assert!(!ok && text.contains("JWT_SECRET is required"), "{text}");
    let (ok, text) = run(&[
        ("JWT_SECRET", "x".repeat(31).as_str()),
        ("WEBHOOK_SECRET", WEBHOOK),
    ])
    .await;
    assert!(
        !ok && text.contains("JWT_SECRET is too short: 31 bytes"),
        "{text}"
    );
}

/// A history retention in seconds that is not a whole positive number stops the publisher at
/// start, naming the variable (with both secrets right, so nothing else can be the cause).
#[tokio::test]
async fn refuses_a_bad_history_retention_in_seconds() {
    for bad in ["0", "ten", "-5", "1.5"] {
        let (ok, text) = run(&[
            ("JWT_SECRET", JWT),
            ("WEBHOOK_SECRET", WEBHOOK),
            ("WEBHOOK_HISTORY_RETENTION_SECS", bad),
        ])
        .await;
        assert!(
            !ok && text.contains("WEBHOOK_HISTORY_RETENTION_SECS"),
            "{bad}: {text}"
        );
    }
}
