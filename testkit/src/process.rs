//! A service binary that must refuse to start. [`refused_start`] runs it with settings that
//! point nowhere (no broker, no Redis on port 1), development secrets, no colours, plus the
//! test's `vars`; it must exit non-zero within 30 s, and its stderr is returned for the test to
//! read. [`exit_of`] runs a command the test built and returns how it ended and what it printed.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// Runs `binary` with `vars` and `DATA_DIR=data_dir`; panics if it is still running after 30 s
/// or exits with status 0. Returns what it wrote to stderr.
pub async fn refused_start(binary: &str, data_dir: &Path, vars: &[(&str, &str)]) -> String {
    let child = tokio::process::Command::new(binary)
        .env("APP_ENV", "development")
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("DATA_DIR", data_dir)
        // Nothing listens there: the test must not depend on reaching a broker or Redis.
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .env(
            "JWT_SECRET",
            "a-test-secret-that-is-long-enough-for-any-rule",
        )
        .env("WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .env("NO_COLOR", "1")
        .env_remove("DATABASE_POOL_SIZE")
        .env_remove("DATABASE_URL")
        .envs(vars.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {binary}: {e}"));
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{binary} kept running with {vars:?}"))
        .unwrap_or_else(|e| panic!("waiting for {binary}: {e}"));
    assert!(!output.status.success(), "{binary} exited 0 with {vars:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The `DATABASE_URL` contract every stateful binary keeps: a malformed URL (wrong scheme, bad
/// port, no database) or `DATABASE_POOL_SIZE=0` stops the start with a message naming the
/// variable, never the password, and creates no `DATA_DIR`.
pub async fn assert_bad_database_settings_refused(binary: &str, service: &str) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let data_dir = dir.path().join("data");
    for url in [
        format!("mysql://{service}:s3cret@127.0.0.1/{service}"),
        format!("postgres://{service}:s3cret@127.0.0.1:notaport/{service}"),
        format!("postgres://{service}:s3cret@127.0.0.1:5432"),
    ] {
        let stderr = refused_start(binary, &data_dir, &[("DATABASE_URL", &url)]).await;
        assert!(stderr.contains("DATABASE_URL"), "{url}: {stderr}");
        assert!(
            !stderr.contains("s3cret"),
            "{url}: the password leaked: {stderr}"
        );
    }
    let stderr = refused_start(
        binary,
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

/// Runs a service binary that is expected to refuse its configuration and exit: returns whether
/// it exited successfully and what it printed (stdout, then stderr). Panics if it is still
/// running after 30 s, i.e. if it started instead of refusing.
pub async fn exit_of(mut command: tokio::process::Command) -> (bool, String) {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().expect("start the service binary");
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the service started instead of refusing its configuration")
        .expect("wait for the service binary");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}
