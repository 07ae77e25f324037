//! Open loop: orders are started at a fixed rate whatever the system does. Each request has an
//! intended start time on the schedule and its latency is measured from that time, so a stall
//! shows up in the percentiles instead of silently lowering the offered load (no coordinated
//! omission).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::events::Tracker;
use crate::recorder::Recorder;
use crate::target::Target;

/// Places `rate × duration` orders on schedule; returns when the last one has been started
/// and every request has finished (not when their terminal events arrived).
pub async fn run(
    target: &Target,
    rate: f64,
    duration: Duration,
    recorder: &Arc<Recorder>,
    tracker: &Arc<Tracker>,
) -> usize {
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let intended = start + interval.mul_f64(i as f64);
        if intended > Instant::now() {
            tokio::time::sleep_until(intended.into()).await;
        }
        let (target, recorder, tracker) = (target.clone(), recorder.clone(), tracker.clone());
        tasks.spawn(async move { target.place_order(intended, &recorder, &tracker).await });
        // Reap finished requests as we go so the set does not grow with the run.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    total as usize
}
