//! The harness of the end-to-end tests: every test gets its own RabbitMQ vhost, its own Redis
//! key prefix and its own data directory, so tests run in parallel on the shared broker and
//! Redis without seeing each other.

pub mod amqp;
pub mod browser;
pub mod env;
pub mod management;
pub mod redis_server;
pub mod system;
pub mod ws;

pub use env::TestEnv;
pub use system::{Options, System};

/// Polls `check` every 50 ms until it returns `Some`, at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: std::time::Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Waits until `base/ready` answers 200, at most `timeout`.
pub async fn wait_ready(base: &str, timeout: std::time::Duration) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let ready = eventually(timeout, || async {
        let response = http.get(format!("{base}/ready")).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;
    ready.ok_or_else(|| anyhow::anyhow!("{base} never became ready"))
}
