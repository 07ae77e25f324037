//! The chaos suite with its CI defaults (2,000 orders over a minute; the broker killed twice,
//! Redis once, orders, products and the webhook publisher once each), run by `cargo test --workspace`. Every check is
//! asserted; the summary goes to `target/tmp/chaos-report.md`.

use std::path::PathBuf;
use std::process::Command;

use clap::Parser;

/// The service binaries the harness starts; `cargo test` only builds the binaries of the
/// package under test, so build them (a no-op when they are up to date).
fn build_services() {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_accepted_is_lost_stuck_or_applied_twice_under_chaos() {
    build_services();
    let mut options = chaos::Options::parse_from(["chaos"]);
    options.report = Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chaos-report.md"));
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
}
