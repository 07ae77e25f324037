//! Markdown tables of a run: throughput, latency percentiles, errors, and the CPU and memory
//! of every watched process.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::procstat::{Sample, Watched};
use crate::recorder::Snapshot;

/// CPU and memory of one process over a run.
#[derive(Debug, Clone)]
pub struct ProcessUse {
    pub watched: Watched,
    pub before: Option<Sample>,
    pub after: Option<Sample>,
}

/// Everything one load run produced.
pub struct RunReport {
    pub title: String,
    pub offered: String,
    /// Length of the load phase.
    pub load_time: Duration,
    /// Recorded at the end of the load phase.
    pub at_load_end: Snapshot,
    /// Recorded after the drain (every event that came).
    pub final_: Snapshot,
    /// From the start of the load phase to the last terminal event.
    pub completion_span: Option<Duration>,
    pub attempted: usize,
    pub outstanding: usize,
    /// From the end of the load phase to the last terminal event, when every accepted order
    /// got one within the drain time.
    pub drained_after: Option<Duration>,
    pub processes: Vec<ProcessUse>,
    /// Successful webhook deliveries, when the publishers' metrics were given.
    pub webhooks: Option<Webhooks>,
}

/// Successful webhook deliveries counted from the start of the load phase.
#[derive(Debug, Clone, Copy)]
pub struct Webhooks {
    /// By the end of the load phase: whether the webhook path kept up with the orders decided
    /// in it, or only catches up afterwards.
    pub during_load: f64,
    /// By the end of the drain (at most 5 s after the last order was decided), and that time.
    pub in_all: f64,
    pub over: Duration,
}

fn ms(micros: u64) -> String {
    format!("{:.2}", micros as f64 / 1000.0)
}

/// `| name | p50 | p90 | p99 | p99.9 | max | n |` for one histogram.
pub fn latency_row(name: &str, h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return format!("| {name} | – | – | – | – | – | 0 |");
    }
    format!(
        "| {name} | {} | {} | {} | {} | {} | {} |",
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.90)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
        h.len()
    )
}

fn errors_text(s: &Snapshot) -> String {
    if s.errors.is_empty() {
        return "none".into();
    }
    s.errors
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn mib(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

/// The process table: CPU seconds over the run, CPU as a share of one core, CPU ms per 1,000
/// orders decided during the load phase (the cost of an order, comparable between builds at
/// the same offered rate: at a fixed open-loop rate it moves less with the machine's speed than
/// the saturation throughput does), RSS, peak RSS.
pub fn process_table(processes: &[ProcessUse], elapsed: Duration, decided: u64) -> String {
    let mut out = String::from(
        "| process | pid | CPU s | CPU % of one core | CPU ms per 1,000 orders | RSS MiB (end) | peak RSS MiB (VmHWM) |\n|---|---|---|---|---|---|---|\n",
    );
    for p in processes {
        let (Some(before), Some(after)) = (p.before, p.after) else {
            let _ = writeln!(
                out,
                "| {} | {} | gone | – | – | – | – |",
                p.watched.name, p.watched.pid
            );
            continue;
        };
        let cpu = after.cpu_secs - before.cpu_secs;
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.0} | {} | {} | {} |",
            p.watched.name,
            p.watched.pid,
            cpu,
            100.0 * cpu / elapsed.as_secs_f64().max(1e-9),
            per_thousand(cpu, decided),
            mib(after.rss_kb),
            mib(after.hwm_kb)
        );
    }
    out
}

/// CPU milliseconds per 1,000 orders: `cpu` seconds ÷ `orders` × 10⁶.
fn per_thousand(cpu: f64, orders: u64) -> String {
    if orders == 0 {
        return "–".into();
    }
    format!("{:.0}", cpu * 1e6 / orders as f64)
}

impl RunReport {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "### {}\n", self.title);
        let _ = writeln!(out, "| measure | value |\n|---|---|");
        self.write_throughput(&mut out);
        self.write_completion(&mut out);
        let f = &self.final_;
        let _ = writeln!(
            out,
            "\n| latency (ms) | p50 | p90 | p99 | p99.9 | max | n |\n|---|---|---|---|---|---|---|"
        );
        let _ = writeln!(out, "{}", latency_row("POST /orders", &f.post));
        let _ = writeln!(out, "{}", latency_row("POST → terminal event", &f.terminal));
        if !self.processes.is_empty() {
            let _ = writeln!(
                out,
                "\n{}",
                process_table(
                    &self.processes,
                    self.load_time,
                    self.at_load_end.outcomes.values().sum(),
                )
            );
        }
        out
    }

    /// The rows of what was offered, accepted and decided, during the load and in all.
    fn write_throughput(&self, out: &mut String) {
        let secs = self.load_time.as_secs_f64().max(1e-9);
        let f = &self.final_;
        let terminal_in_load: u64 = self.at_load_end.outcomes.values().sum();
        let terminal_total: u64 = f.outcomes.values().sum();
        let outcomes = f
            .outcomes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(out, "| offered | {} |", self.offered);
        let _ = writeln!(out, "| load phase | {secs:.1} s |");
        let _ = writeln!(out, "| POSTs attempted | {} |", self.attempted);
        let _ = writeln!(
            out,
            "| accepted (202) | {} ({:.1}/s) |",
            f.accepted,
            self.at_load_end.accepted as f64 / secs
        );
        let _ = writeln!(
            out,
            "| refused (503) | {} ({:.1}/s) |",
            f.refused,
            self.at_load_end.refused as f64 / secs
        );
        let _ = writeln!(
            out,
            "| terminal events during load | {terminal_in_load} ({:.1} orders/s) |",
            terminal_in_load as f64 / secs
        );
        let _ = writeln!(
            out,
            "| terminal events in all | {terminal_total} ({}) |",
            if outcomes.is_empty() {
                "none".into()
            } else {
                outcomes
            }
        );
        if let Some(span) = self.completion_span {
            let _ = writeln!(
                out,
                "| sustained: terminal events ÷ (first POST → last event) | **{:.1} orders/s** over {:.1} s |",
                terminal_total as f64 / span.as_secs_f64().max(1e-9),
                span.as_secs_f64()
            );
        }
    }

    /// The rows of what was left after the load: outstanding orders, the drain, errors and
    /// webhook deliveries.
    fn write_completion(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "| accepted but no terminal event after the drain | {} |",
            self.outstanding
        );
        let _ = writeln!(
            out,
            "| every accepted order decided, after the load stopped, within | {} |",
            match self.drained_after {
                Some(after) => format!("{:.1} s", after.as_secs_f64()),
                None => "not within the drain time".into(),
            }
        );
        let _ = writeln!(out, "| errors | {} |", errors_text(&self.final_));
        if let Some(w) = self.webhooks {
            let decided: u64 = self.at_load_end.outcomes.values().sum();
            let _ = writeln!(
                out,
                "| webhook deliveries during load | {:.0} ({:.1}/s, {:.2} per order decided in it) |",
                w.during_load,
                w.during_load / self.load_time.as_secs_f64().max(1e-9),
                w.during_load / (decided as f64).max(1.0)
            );
            let _ = writeln!(
                out,
                "| webhook deliveries | {:.0} ({:.1}/s over {:.1} s) |",
                w.in_all,
                w.in_all / w.over.as_secs_f64().max(1e-9),
                w.over.as_secs_f64()
            );
        }
    }
}
