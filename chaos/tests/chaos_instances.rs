//! The chaos suite in its multi-instance mode (`--instances 2 --postgres`): two instances of the
//! gateway, orders, products and the webhook publisher as separate processes, each stateful
//! service on its own database of a private PostgreSQL server (testkit's `PgCluster`, never
//! the machine's); under 1,500 orders over 45 s through both gateways, one orders and one
//! products instance are SIGKILLed (the other of each keeps working), PostgreSQL itself is
//! stopped immediately and started again 4 s later, then the broker, Redis and one publisher
//! mid-retry. Every check of the single-instance run is asserted (nothing accepted lost, nothing
//! pending, nothing applied twice, stock conserved, queues drained), plus: every order's history
//! holds exactly one terminal state, and no service wrote a SQLite file. The summary goes to
//! `target/tmp/chaos-instances-report.md`.

mod common;

use std::path::PathBuf;

use clap::Parser;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_of_each_on_postgres_lose_nothing_when_instances_and_postgres_die() {
    let mut options = chaos::Options::parse_from([
        "chaos",
        "--postgres",
        "--instances",
        "2",
        "--orders",
        "1500",
        "--duration",
        "45",
    ]);
    options.report =
        Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chaos-instances-report.md"));
    let outcome = common::run_and_assert(options).await;
    // The PostgreSQL restart and both instance kills happened.
    for target in ["postgres at", "orders at", "products at"] {
        assert!(
            outcome.report.contains(target),
            "{target}: {}",
            outcome.report
        );
    }
    // The new checks ran (and passed, as every check did).
    for number in [8, 9] {
        assert!(
            outcome.checks.iter().any(|c| c.number == number),
            "check {number} did not run"
        );
    }
    println!("{}", outcome.report);
}
