//! Waiting for something a test expects to happen soon: [`eventually`] polls a check, and
//! [`wait_ready`] waits for a service's `/ready`.

use std::future::Future;
use std::time::Duration;

/// Polls `check` every 50 ms until it returns `Some`, at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `base/ready` answers 200, at most `timeout`.
pub async fn wait_ready(base: &str, timeout: Duration) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let ready = eventually(timeout, || async {
        let response = http.get(format!("{base}/ready")).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;
    ready.ok_or_else(|| anyhow::anyhow!("{base} never became ready"))
}
