//! Closed loop: `concurrency` clients, each placing its next order as soon as the previous
//! POST answered. It finds the saturation throughput; its latencies are those of a system kept
//! exactly full, not of a given offered rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::events::Tracker;
use crate::recorder::Recorder;
use crate::target::Target;

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
                target
                    .place_order(Instant::now(), &recorder, &tracker)
                    .await;
                placed += 1;
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
