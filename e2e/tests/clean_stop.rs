//! A clean stop is quiet: each of the five service binaries, started against the shared broker
//! and Redis (a vhost and key prefix of the test's own), answers `/ready`, then on SIGTERM exits
//! with status 0 within 15 s, logs no ERROR line, and leaves no SQLite `-wal`/`-shm` file. Run
//! once on SQLite and once with orders, products and webhook-publisher on PostgreSQL.
//!
//! The binaries are the ones `cargo test --workspace` builds next to this test's executable.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use testkit::TestDatabase;
use testkit::TestEnv;
use testkit::sqlite_files::wal_files;

const SERVICES: [&str; 5] = [
    "gateway",
    "orders",
    "products",
    "webhook-publisher",
    "notifier",
];
const STATEFUL: [&str; 3] = ["orders", "products", "webhook-publisher"];

fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("no directory")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

struct Started {
    name: &'static str,
    child: tokio::process::Child,
    port: u16,
}

async fn start(env: &TestEnv, name: &'static str, database: Option<&str>) -> Result<Started> {
    let binary = bin_dir()?.join(name);
    if !binary.exists() {
        bail!(
            "{} is missing: build the workspace's binaries first (`cargo test --workspace` does)",
            binary.display()
        );
    }
    let port = testkit::ports::free_port().expect("a free port");
    let data_dir = env.data_dir(name);
    let mut command = tokio::process::Command::new(binary);
    command
        .env("APP_ENV", "development")
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("DATA_DIR", &data_dir)
        .env("AMQP_URL", &env.amqp_url)
        .env("REDIS_URL", &env.redis_url)
        .env("REDIS_KEY_PREFIX", &env.redis_prefix)
        .env(
            "JWT_SECRET",
            "a-test-secret-that-is-long-enough-for-any-rule",
        )
        .env("WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(url) = database {
        command.env("DATABASE_URL", url);
    }
    let child = command
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Started { name, child, port })
}

async fn wait_ready(started: &Started) -> Result<()> {
    let url = format!("http://127.0.0.1:{}/ready", started.port);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = reqwest::get(&url).await
            && response.status().is_success()
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{} was not ready within 30 s", started.name);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGTERM, then the exit status and everything the process printed.
async fn terminate(started: Started) -> Result<(std::process::ExitStatus, String)> {
    let pid = started.child.id().context("the process is gone already")?;
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    assert!(sent.success(), "kill -TERM {pid}");
    let output = tokio::time::timeout(Duration::from_secs(15), started.child.wait_with_output())
        .await
        .with_context(|| format!("{} did not stop within 15 s of SIGTERM", started.name))??;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Ok((output.status, text))
}

async fn stops_cleanly(test: &str, postgres: bool) {
    let env = TestEnv::new(test).await.expect("test env");
    let mut databases = Vec::new();
    let problems = run_and_stop(&env, postgres, &mut databases).await;
    // Cleaned up before the verdict, so a failing run leaves no databases behind either.
    env.cleanup().await;
    for db in databases {
        db.drop().await.expect("drop database");
    }
    let problems = problems.expect("the services ran");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Starts the five services, waits for them, SIGTERMs each; returns what was wrong.
async fn run_and_stop(
    env: &TestEnv,
    postgres: bool,
    databases: &mut Vec<TestDatabase>,
) -> Result<Vec<String>> {
    let mut running = Vec::new();
    for name in SERVICES {
        let database = if postgres && STATEFUL.contains(&name) {
            let db = TestDatabase::create(&format!("clean_stop_{name}")).await?;
            let url = db.url.clone();
            databases.push(db);
            Some(url)
        } else {
            None
        };
        running.push(start(env, name, database.as_deref()).await?);
    }
    for started in &running {
        wait_ready(started).await?;
    }
    let mut problems = Vec::new();
    for started in running {
        let name = started.name;
        let (status, log) = terminate(started).await?;
        if !status.success() {
            problems.push(format!("{name} exited with {status} on SIGTERM:\n{log}"));
        }
        let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
        if !errors.is_empty() {
            problems.push(format!("{name} logged errors on a clean stop: {errors:#?}"));
        }
        if !log.contains("stopped") {
            problems.push(format!("{name} did not say it stopped:\n{log}"));
        }
        let dir = env.data_dir(name);
        let wal = wal_files(&dir);
        if !wal.is_empty() {
            problems.push(format!("{name} left WAL files: {wal:?}"));
        }
        if postgres && STATEFUL.contains(&name) {
            let files: Vec<_> = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name())
                .collect();
            if !files.is_empty() {
                problems.push(format!(
                    "{name} on PostgreSQL wrote into DATA_DIR: {files:?}"
                ));
            }
        }
    }
    Ok(problems)
}

#[tokio::test]
async fn every_service_stops_quietly_on_sigterm() {
    stops_cleanly("clean-stop", false).await;
}

#[tokio::test]
async fn every_service_stops_quietly_on_sigterm_on_postgres() {
    stops_cleanly("clean-stop-pg", true).await;
}
