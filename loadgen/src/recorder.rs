//! What a run records: HDR histograms of `POST /orders` latency and of POST → terminal-event
//! latency (for the whole run and for the current interval of a time series), and counters of
//! outcomes, refusals (503: the gateway shed the order) and errors by kind.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Highest latency the histograms track: anything slower is clamped to it (and is a failure
/// of the system under test long before).
const MAX_MICROS: u64 = 120_000_000;

/// Thread-safe recorder shared by the request tasks and the event listener.
pub struct Recorder {
    inner: Mutex<Inner>,
}

struct Inner {
    post: Histogram<u64>,
    terminal: Histogram<u64>,
    /// Terminal latencies since the last `take_interval`.
    interval: Histogram<u64>,
    accepted: u64,
    refused: u64,
    errors: BTreeMap<String, u64>,
    outcomes: BTreeMap<String, u64>,
    last_terminal: Option<Instant>,
}

/// A consistent copy of what was recorded.
#[derive(Clone)]
pub struct Snapshot {
    pub post: Histogram<u64>,
    pub terminal: Histogram<u64>,
    pub accepted: u64,
    /// `503` answers: orders the gateway refused (shed) rather than accepted.
    pub refused: u64,
    pub errors: BTreeMap<String, u64>,
    pub outcomes: BTreeMap<String, u64>,
    /// When the latest terminal event arrived.
    pub last_terminal: Option<Instant>,
}

fn histogram() -> Histogram<u64> {
    // 3 significant digits from 1 µs to MAX_MICROS; the bounds are constants, so this cannot
    // fail at run time.
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_MICROS)
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                post: histogram(),
                terminal: histogram(),
                interval: histogram(),
                accepted: 0,
                refused: 0,
                errors: BTreeMap::new(),
                outcomes: BTreeMap::new(),
                last_terminal: None,
            }),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut guard = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// A `202` after `latency` (measured from the intended start).
    pub fn accepted(&self, latency: Duration) {
        self.with(|i| {
            i.accepted += 1;
            let _ = i.post.record(micros(latency));
        });
    }

    /// A `503`: the gateway refused the order and kept nothing of it.
    pub fn refused(&self) {
        self.with(|i| i.refused += 1);
    }

    /// A failed request, by kind (`http-503`, `timeout`, `connect`, …).
    pub fn error(&self, kind: &str) {
        self.with(|i| *i.errors.entry(kind.to_owned()).or_default() += 1);
    }

    /// The terminal event of an accepted order arrived `latency` after its intended start.
    pub fn terminal(&self, status: &str, latency: Duration) {
        self.with(|i| {
            *i.outcomes.entry(status.to_owned()).or_default() += 1;
            i.last_terminal = Some(Instant::now());
            let _ = i.terminal.record(micros(latency));
            let _ = i.interval.record(micros(latency));
        });
    }

    /// The terminal latencies recorded since the previous call, and a fresh interval.
    pub fn take_interval(&self) -> Histogram<u64> {
        self.with(|i| std::mem::replace(&mut i.interval, histogram()))
    }

    pub fn snapshot(&self) -> Snapshot {
        self.with(|i| Snapshot {
            post: i.post.clone(),
            terminal: i.terminal.clone(),
            accepted: i.accepted,
            refused: i.refused,
            errors: i.errors.clone(),
            outcomes: i.outcomes.clone(),
            last_terminal: i.last_terminal,
        })
    }
}
