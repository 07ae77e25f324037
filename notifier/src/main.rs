//! The notifier binary: configuration from the environment, then run until a signal.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_kit::telemetry::init();
    let config = notifier::Config::from_env()?;
    notifier::spawn(config).await?.run_until_signal().await?;
    Ok(())
}
