//! The gateway binary refuses to start without a real `JWT_SECRET` outside development, names
//! the variable, never prints the value, and starts (with a warning) under `APP_ENV=development`.

use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// The gateway with nothing of the caller's environment that could configure it: a port of its
/// own choosing, a broker and Redis that are not there (it must fail before connecting).
fn gateway() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
    command
        .env_remove("JWT_SECRET")
        .env_remove("APP_ENV")
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs it to its exit (a gateway still running after 30 s failed the test).
async fn exit_of(mut command: Command) -> (Output, String) {
    let child = command.spawn().expect("start the gateway binary");
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the gateway started instead of refusing its configuration")
        .expect("wait for the gateway");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output, text)
}

#[tokio::test]
async fn refuses_to_start_without_jwt_secret() {
    let (output, text) = exit_of(gateway()).await;
    assert!(!output.status.success(), "exit status: {}", output.status);
    assert!(
        text.contains("JWT_SECRET") && text.contains("required"),
        "the error names the variable: {text}"
    );

    let mut production = gateway();
    production
        .env("APP_ENV", "production")
        .env("JWT_SECRET", "");
    let (output, text) = exit_of(production).await;
    assert!(!output.status.success(), "empty counts as missing: {text}");
    assert!(text.contains("JWT_SECRET"), "{text}");
}

#[tokio::test]
async fn refuses_a_short_jwt_secret_without_printing_it() {
    let short = "only-31-bytes-of-secret-text-xx";
    assert_eq!(short.len(), 31);
    let mut command = gateway();
    command.env("JWT_SECRET", short);
    let (output, text) = exit_of(command).await;
    assert!(!output.status.success(), "exit status: {}", output.status);
    assert!(
        text.contains("JWT_SECRET") && text.contains("too short") && text.contains("31 bytes"),
        "the error names the variable and the length: {text}"
    );
    assert!(
        !text.contains(short),
        "the secret itself was printed: {text}"
    );
}

#[tokio::test]
async fn an_unknown_app_env_is_refused() {
    let mut command = gateway();
    command.env("APP_ENV", "staging");
    let (output, text) = exit_of(command).await;
    assert!(!output.status.success());
    assert!(text.contains("APP_ENV"), "{text}");
}

#[tokio::test]
async fn starts_with_the_development_secret_under_app_env_development() {
    let mut command = gateway();
    command.env("APP_ENV", "development");
    let mut child = command.spawn().expect("start the gateway binary");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    let listening = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line);
            if seen.last().is_some_and(|l| l.contains("listening")) {
                return true;
            }
        }
        false
    })
    .await;
    let _ = child.kill().await;
    assert_eq!(listening, Ok(true), "it did not start: {seen:#?}");
    assert!(
        seen.iter()
            .any(|l| l.contains("WARN") && l.contains("JWT_SECRET is not set")),
        "no warning about the development secret: {seen:#?}"
    );
    assert!(
        !seen.iter().any(|l| l.contains('\u{1b}')),
        "colour codes in a log that is not a terminal: {seen:#?}"
    );
}
