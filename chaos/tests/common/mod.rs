//! What the chaos tests share: building the service binaries and asserting every check.

use std::process::Command;

/// The service binaries the harness starts; `cargo test` only builds the binaries of the
/// package under test, so build them (a no-op when they are up to date).
pub fn build_services() {
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "-p",
            "gateway",
            "-p",
            "orders",
            "-p",
            "products",
            "-p",
            "webhook-publisher",
            "-p",
            "notifier",
            "--bins",
        ])
        .status()
        .expect("run cargo build for the service binaries");
    assert!(status.success(), "building the service binaries failed");
}

/// Runs the suite with `options` and fails on any failed check or port left behind.
pub async fn run_and_assert(options: chaos::Options) -> chaos::Outcome {
    build_services();
    let outcome = chaos::run(options)
        .await
        .expect("the chaos run could not be carried out");
    for check in &outcome.checks {
        println!("{check}");
    }
    let failed: Vec<String> = outcome
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.to_string())
        .collect();
    assert!(failed.is_empty(), "failed checks:\n{}", failed.join("\n"));
    assert!(
        outcome.leftover_ports.is_empty(),
        "ports left behind: {:?}",
        outcome.leftover_ports
    );
    assert!(outcome.passed);
    outcome
}
