//! The gateway binary: configuration from the environment, then run until a signal.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_kit::telemetry::init();
    let config = gateway::Config::from_env()?;
    gateway::spawn(config).await?.run_until_signal().await?;
    Ok(())
}
