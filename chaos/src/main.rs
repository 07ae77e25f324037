//! `chaos`: runs the chaos suite once and exits 0 when every check passed, 1 when one failed,
//! 2 when the run itself could not be carried out. Ctrl-C stops it and kills everything it
//! started.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // The harness prints its own progress lines; its log shows warnings unless RUST_LOG says
    // otherwise. The services log to files in the run directory (--service-log).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,lapin=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
    let options = chaos::Options::parse();
    tokio::select! {
        outcome = chaos::run(options) => match outcome {
            Ok(outcome) if outcome.passed => std::process::ExitCode::SUCCESS,
            Ok(_) => std::process::ExitCode::from(1),
            Err(e) => {
                eprintln!("chaos: the run could not be carried out: {e:#}");
                std::process::ExitCode::from(2)
            }
        },
        _ = tokio::signal::ctrl_c() => {
            // Dropping the run kills every process group it started.
            eprintln!("chaos: interrupted; stopping everything it started");
            std::process::ExitCode::from(130)
        }
    }
}
