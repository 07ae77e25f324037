//! The orders service binary: configuration from the environment, then run until a signal.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_kit::telemetry::init();
    let config = orders::Config::from_env()?;
    orders::spawn(config).await?.run_until_signal().await?;
    Ok(())
}
