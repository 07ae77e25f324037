//! The chaos suite with its CI defaults (2,000 orders over a minute; the broker killed twice,
//! Redis once, orders, products and the webhook publisher once each), run by `cargo test --workspace`. Every check is
//! asserted; the summary goes to `target/tmp/chaos-report.md`.

mod common;

use std::path::PathBuf;

use clap::Parser;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_accepted_is_lost_stuck_or_applied_twice_under_chaos() {
    let mut options = chaos::Options::parse_from(["chaos"]);
    options.report = Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chaos-report.md"));
    common::run_and_assert(options).await;
}
