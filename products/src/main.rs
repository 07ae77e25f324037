//! The products service binary: configuration from the environment, then run until a signal.

/// mimalloc instead of glibc's malloc, for Rust and (through its `override` feature) SQLite
/// alike: glibc's malloc and free were ≈ 8 % of the machine at saturation (docs/decisions.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_kit::telemetry::init();
    let config = products::Config::from_env()?;
    products::spawn(config).await?.run_until_signal().await?;
    Ok(())
}
