//! The webhook-publisher binary: configuration from the environment, then run until a signal.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_kit::telemetry::init();
    let config = webhook_publisher::Config::from_env()?;
    webhook_publisher::spawn(config)
        .await?
        .run_until_signal()
        .await?;
    Ok(())
}
