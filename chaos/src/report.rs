//! The summary of a run: one table (accepted, confirmed, rejected, cancelled, retries, kills,
//! lost, duplicated, stuck, recovery per broker kill) and the check lines, printed and written
//! to a Markdown file.

use std::fmt::Write as _;
use std::path::Path;

use crate::checks::{Check, Figures};
use crate::load::LoadOutcome;
use crate::schedule::Done;

pub struct Summary<'a> {
    pub command: &'a str,
    pub load: &'a LoadOutcome,
    pub figures: &'a Figures,
    pub actions: &'a [Done],
    pub checks: &'a [Check],
    pub quiesced_after: f64,
    pub total_seconds: f64,
    pub tap_deliveries: u64,
}

impl Summary<'_> {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    pub fn table(&self) -> String {
        let rows = self.rows();
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        let _ = writeln!(out, "| {:width$} | value |", "figure");
        let _ = writeln!(out, "|{}|-------|", "-".repeat(width + 2));
        for (k, v) in rows {
            let _ = writeln!(out, "| {k:width$} | {v} |");
        }
        out
    }

    /// Each kill of the schedule as the table shows it.
    fn kills(&self) -> String {
        self.actions
            .iter()
            .map(|d| {
                let mut s = format!("{} at {:.0}s", d.action.target, d.killed_at);
                if let Some(node) = &d.node {
                    s.push_str(&format!(" [{node}]"));
                }
                if let Some(note) = &d.note {
                    s.push_str(&format!(" ({note})"));
                }
                if d.error.is_some() {
                    s.push_str(" (restart failed)");
                }
                s
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The recovery time of each broker kill.
    fn recovery(&self) -> String {
        if self.figures.recovery.is_empty() {
            "–".to_owned()
        } else {
            self.figures
                .recovery
                .iter()
                .map(|r| r.map_or("none".into(), |s| format!("{s:.1} s")))
                .collect::<Vec<_>>()
                .join(", ")
        }
    }

    /// The figures of the table: (figure, value).
    fn rows(&self) -> Vec<(&'static str, String)> {
        let count = |s: &str| self.figures.by_status.get(s).copied().unwrap_or(0);
        let (kills, recovery) = (self.kills(), self.recovery());
        vec![
            ("accepted (202)", self.load.accepted.len().to_string()),
            ("confirmed", count("CONFIRMED").to_string()),
            ("rejected", count("REJECTED").to_string()),
            ("cancelled", count("CANCELLED").to_string()),
            ("503s retried", self.load.retried_503.to_string()),
            (
                "429s retried (rate limit)",
                self.load.retried_429.to_string(),
            ),
            (
                "connection errors retried",
                self.load.retried_connection.to_string(),
            ),
            ("other 5xx retried", self.load.retried_other_5xx.to_string()),
            ("clients that gave up", self.load.gave_up.to_string()),
            ("key replays", self.load.replays.to_string()),
            ("kills", format!("{} ({kills})", self.actions.len())),
            ("lost", self.figures.lost.to_string()),
            ("duplicated", self.figures.duplicated.to_string()),
            ("stuck", self.figures.stuck.to_string()),
            ("recovery per broker kill", recovery),
            (
                "longest stretch without a 202",
                self.figures.intake_gap.map_or("–".into(), |(from, gap)| {
                    format!("{gap:.1} s (from t={from:.1} s)")
                }),
            ),
            (
                "… around each node kill (target ≤ 5 s)",
                if self.figures.node_kill_gaps.is_empty() {
                    "–".into()
                } else {
                    self.figures
                        .node_kill_gaps
                        .iter()
                        .map(|(target, node, gap)| format!("{target} {node}: {gap:.1} s"))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            ),
            ("events seen by the tap", self.tap_deliveries.to_string()),
            (
                "load / quiescence / total",
                format!(
                    "{:.1} s / {:.1} s / {:.1} s",
                    self.load.elapsed.as_secs_f64(),
                    self.quiesced_after,
                    self.total_seconds
                ),
            ),
        ]
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let verdict = if self.passed() { "PASSED" } else { "FAILED" };
        let _ = writeln!(out, "# Chaos run: {verdict}\n");
        let _ = writeln!(out, "Command: `{}`\n", self.command);
        out.push_str(&self.table());
        out.push('\n');
        for check in self.checks {
            let _ = writeln!(out, "- {check}");
        }
        out
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, self.markdown())
    }
}
