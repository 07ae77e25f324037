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
pub use system::{Backend, Instances, Options, Service, System};

/// Runs each scenario (an `async fn(Backend)`) as two tests: `test` on SQLite, under the name the
/// test always had, and `postgres::test` on PostgreSQL.
///
/// ```text
/// e2e::on_both_backends! { three_orders_fit_the_fourth_is_rejected => three_orders_fit }
/// ```
#[macro_export]
macro_rules! on_both_backends {
    ($($test:ident => $scenario:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                $scenario($crate::Backend::Sqlite).await
            }
        )*
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::$scenario($crate::Backend::Postgres).await
                }
            )*
        }
    };
}

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

/// Runs a service binary that is expected to refuse its configuration and exit: returns whether
/// it exited successfully and what it printed (stdout, then stderr). Panics if it is still
/// running after 30 s, i.e. if it started instead of refusing.
pub async fn exit_of(mut command: tokio::process::Command) -> (bool, String) {
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().expect("start the service binary");
    let output = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the service started instead of refusing its configuration")
        .expect("wait for the service binary");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}
