//! The notifier binary refuses to start, naming the variable, without a real `WEBHOOK_SECRET`
//! or `JWT_SECRET` outside `APP_ENV=development`.

use tokio::process::Command;

const JWT: &str = "a-jwt-secret-of-forty-bytes-for-the-test";
/// 32 bytes of key.
const WEBHOOK: &str = "whsec_ZGV2LW9ubHktd2ViaG9vay1zZWNyZXQtMzJieXRlcyE=";
/// 24 bytes of key: a valid Standard Webhooks secret, too short for a deployment.
const SHORT_WEBHOOK: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Runs the notifier with `secrets` (and nothing else that could configure them) to its exit;
/// returns whether it succeeded and what it printed.
async fn run(secrets: &[(&str, &str)]) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_notifier"));
    command
        .env_remove("JWT_SECRET")
        .env_remove("WEBHOOK_SECRET")
        .env_remove("APP_ENV")
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .envs(secrets.iter().copied());
    testkit::process::exit_of(command).await
}

#[tokio::test]
async fn refuses_to_start_without_either_secret() {
    let (ok, text) = run(&[("JWT_SECRET", JWT)]).await;
    assert!(!ok && text.contains("WEBHOOK_SECRET is required"), "{text}");
    let (ok, text) = run(&[("WEBHOOK_SECRET", WEBHOOK)]).await;
    assert!(!ok && text.contains("JWT_SECRET is required"), "{text}");
}

#[tokio::test]
async fn refuses_short_secrets_without_printing_them() {
    let (ok, text) = run(&[("JWT_SECRET", JWT), ("WEBHOOK_SECRET", SHORT_WEBHOOK)]).await;
    assert!(!ok, "{text}");
    assert!(
        text.contains("WEBHOOK_SECRET is too short: 24 bytes"),
        "{text}"
    );
    assert!(
        !text.contains(SHORT_WEBHOOK),
        "the secret was printed: {text}"
    );
    let (ok, text) = run(&[("JWT_SECRET", "short"), ("WEBHOOK_SECRET", WEBHOOK)]).await;
    assert!(
        !ok && text.contains("JWT_SECRET is too short: 5 bytes"),
        "{text}"
    );
    let (ok, text) = run(&[("JWT_SECRET", JWT), ("WEBHOOK_SECRET", "not-a-whsec")]).await;
    assert!(
        !ok && text.contains("WEBHOOK_SECRET is not a webhook secret"),
        "{text}"
    );
}
