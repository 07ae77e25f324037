//! Closed loop: `concurrency` clients, each placing its next order as soon as the previous
//! POST answered. It finds the saturation throughput; its latencies are those of a system kept
//! exactly full, not of a given offered rate.
//!
//! A client told 503 waits the answer's `Retry-After` (at most until the end of the run) before
//! its next order, as a well-behaved client does: without it, 64 clients retrying at once sent
//! the gateway thousands of refused requests a second, and the saturation figure measured how
//! fast the machine could refuse as much as how fast it could decide.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::events::Tracker;
use crate::recorder::Recorder;
use crate::target::{Placed, Target};

/// Runs for `duration`; returns how many orders were attempted.
pub async fn run(
    target: &Target,
    concurrency: usize,
    duration: Duration,
    recorder: &Arc<Recorder>,
    tracker: &Arc<Tracker>,
) -> usize {
    let end = Instant::now() + duration;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (target, recorder, tracker) = (target.clone(), recorder.clone(), tracker.clone());
        workers.spawn(async move {
            let mut placed = 0usize;
            while Instant::now() < end {
                let outcome = target
                    .place_order(Instant::now(), &recorder, &tracker)
                    .await;
                placed += 1;
                if let Placed::Refused { retry_after } = outcome {
                    let wait = retry_after.unwrap_or(Duration::from_secs(1));
                    tokio::time::sleep_until((Instant::now() + wait).min(end).into()).await;
                }
            }
            placed
        });
    }
    let mut total = 0;
    while let Some(placed) = workers.join_next().await {
        total += placed.unwrap_or(0);
    }
    total
}
