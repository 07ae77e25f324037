//! A time series of POST → terminal-event latency during the load phase: every interval, the
//! count, p50, p99 and max of the terminal events that arrived in it. A stall of the system shows
//! as one interval with a high max, and its time can be set next to what else happened then (a
//! broker's WAL rollover, a checkpoint) — which the whole run's percentiles cannot tell.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::task::JoinHandle;

use crate::recorder::Recorder;

/// Prints a `series …` line every `every` until the task is aborted.
pub fn spawn(recorder: Arc<Recorder>, every: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        recorder.take_interval();
        loop {
            tick.tick().await;
            let h = recorder.take_interval();
            let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            // Wall-clock time too, to line the series up with other tools' logs.
            let unix = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            println!(
                "series t={:.1}s unix={unix:.1} n={} p50={:.1}ms p99={:.1}ms max={:.1}ms",
                start.elapsed().as_secs_f64(),
                h.len(),
                ms(0.5),
                ms(0.99),
                h.max() as f64 / 1000.0
            );
        }
    })
}
