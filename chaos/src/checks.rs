//! The invariants, checked on what the run left behind. Each check gives one line: passed or
//! not, and the figures it is based on.
//!
//! 1. Every order that got a 202 reached exactly one terminal state: lost = 0, stuck = 0.
//! 2. Stock is conserved per product: initial − Σ quantity of CONFIRMED = final ≥ 0.
//! 3. No order was confirmed twice (two `order.confirmed` with different message ids), and the
//!    event tap saw the terminal event of every decided order.
//! 4. Through the management API: work queues 0 ready / 0 unacked, DLQs empty, every service's
//!    named connection (`<service>@<host>`) back, every work-queue consumer back with its prefetch.
//! 5. Recovery after each broker kill: seconds from "accepting connections" to the next order
//!    confirmation. Measured, never compared with a limit.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use messaging::topology::{self, keys};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::events::TapReport;
use crate::load::{LoadOutcome, Product};
use crate::management::QueueStats;
use crate::schedule::{Done, Target};
use crate::snapshot::OrderRow;

#[derive(Debug, Clone)]
pub struct Check {
    pub number: u8,
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.passed { "PASS" } else { "FAIL" };
        write!(
            f,
            "check {} {verdict} {}: {}",
            self.number, self.name, self.detail
        )
    }
}

/// What the checks look at.
pub struct Evidence<'a> {
    pub load: &'a LoadOutcome,
    pub products: &'a [Product],
    pub orders: &'a HashMap<String, OrderRow>,
    pub stock: &'a HashMap<String, i64>,
    pub tap: &'a TapReport,
    pub queues: &'a [QueueStats],
    /// Work queues whose consumer is part of this run.
    pub work_queues: &'a [&'a str],
    pub connections: &'a [String],
    /// (queue, consumer tag, prefetch) of every consumer.
    pub consumers: &'a [(String, String, i64)],
    /// (queue, consumer tag, prefetch) that must be there.
    pub expected_consumers: &'a [(String, String, i64)],
    /// `<service>@<host>` names that must be connected.
    pub expected_connections: &'a [String],
    pub actions: &'a [Done],
}

const TERMINAL: [&str; 3] = ["CONFIRMED", "REJECTED", "CANCELLED"];
const TERMINAL_EVENTS: [&str; 3] = [
    keys::ORDER_CONFIRMED,
    keys::ORDER_REJECTED,
    keys::ORDER_CANCELLED,
];

/// Figures the checks compute and the report shows.
#[derive(Debug, Default, Clone)]
pub struct Figures {
    pub lost: usize,
    pub stuck: usize,
    pub duplicated: usize,
    pub by_status: BTreeMap<String, usize>,
    /// One per broker kill: seconds to the next confirmation, `None` when none came.
    pub recovery: Vec<Option<f64>>,
}

pub fn run(e: &Evidence) -> (Vec<Check>, Figures) {
    let mut figures = Figures::default();
    let checks = vec![
        terminal(e, &mut figures),
        stock(e),
        events(e, &mut figures),
        broker(e),
        recovery(e, &mut figures),
    ];
    (checks, figures)
}

fn terminal(e: &Evidence, figures: &mut Figures) -> Check {
    let mut lost = Vec::new();
    let mut stuck = Vec::new();
    for id in e.load.accepted.keys() {
        match e.orders.get(id) {
            None => lost.push(id.clone()),
            Some(o) if !TERMINAL.contains(&o.status.as_str()) => stuck.push(id.clone()),
            Some(o) => *figures.by_status.entry(o.status.clone()).or_default() += 1,
        }
    }
    // "Exactly one": no order announced two different outcomes.
    let two_outcomes: Vec<_> = e
        .tap
        .by_order
        .iter()
        .filter(|(_, kinds)| {
            TERMINAL_EVENTS
                .iter()
                .filter(|k| kinds.contains_key(**k))
                .count()
                > 1
        })
        .map(|(id, _)| id.clone())
        .collect();
    figures.lost = lost.len();
    figures.stuck = stuck.len();
    let passed = lost.is_empty()
        && stuck.is_empty()
        && two_outcomes.is_empty()
        && e.load.unexpected.is_empty()
        && !e.load.accepted.is_empty();
    let mut detail = format!(
        "accepted {}, terminal {}, lost {}, stuck {}, two outcomes {}, unexpected answers {}",
        e.load.accepted.len(),
        e.load.accepted.len() - lost.len() - stuck.len(),
        lost.len(),
        stuck.len(),
        two_outcomes.len(),
        e.load.unexpected.len()
    );
    for (what, ids) in [
        ("lost", &lost),
        ("stuck", &stuck),
        ("two outcomes", &two_outcomes),
    ] {
        if !ids.is_empty() {
            detail.push_str(&format!("; {what} e.g. {}", sample(ids)));
        }
    }
    if let Some(first) = e.load.unexpected.first() {
        detail.push_str(&format!("; first unexpected answer: {first}"));
    }
    Check {
        number: 1,
        name: "every accepted order reached exactly one terminal state",
        passed,
        detail,
    }
}

fn stock(e: &Evidence) -> Check {
    let mut confirmed: HashMap<&str, i64> = HashMap::new();
    for o in e.orders.values().filter(|o| o.status == "CONFIRMED") {
        *confirmed.entry(o.product_id.as_str()).or_default() += o.quantity;
    }
    let mut parts = Vec::new();
    let mut passed = true;
    for (i, p) in e.products.iter().enumerate() {
        let sold = confirmed.get(p.id.as_str()).copied().unwrap_or(0);
        let final_stock = e.stock.get(&p.id).copied();
        let ok = final_stock.is_some_and(|f| f >= 0 && p.initial_stock - sold == f);
        passed &= ok;
        parts.push(format!(
            "p{i} {} − {sold} = {}{}",
            p.initial_stock,
            final_stock.map_or("missing".into(), |f| f.to_string()),
            if ok { "" } else { " MISMATCH" }
        ));
    }
    Check {
        number: 2,
        name: "stock conserved (initial − Σ confirmed = final ≥ 0)",
        passed,
        detail: parts.join(", "),
    }
}

fn events(e: &Evidence, figures: &mut Figures) -> Check {
    let duplicated: Vec<String> = e
        .tap
        .by_order
        .iter()
        .filter(|(_, kinds)| {
            kinds
                .get(keys::ORDER_CONFIRMED)
                .is_some_and(|ids| ids.len() > 1)
        })
        .map(|(id, _)| id.clone())
        .collect();
    let unseen: Vec<String> = e
        .orders
        .iter()
        .filter(|(_, o)| TERMINAL.contains(&o.status.as_str()))
        .filter(|(id, o)| {
            let kind = format!("order.{}", o.status.to_lowercase());
            !e.tap
                .by_order
                .get(*id)
                .is_some_and(|kinds| kinds.contains_key(&kind))
        })
        .map(|(id, _)| id.clone())
        .collect();
    figures.duplicated = duplicated.len();
    let distinct: usize = e
        .tap
        .by_order
        .values()
        .flat_map(|k| k.values())
        .map(|ids| ids.len())
        .sum();
    let mut detail = format!(
        "orders confirmed twice {}, terminal events missing {}, events {} distinct / {} deliveries",
        duplicated.len(),
        unseen.len(),
        distinct,
        e.tap.deliveries
    );
    if !duplicated.is_empty() {
        detail.push_str(&format!("; confirmed twice e.g. {}", sample(&duplicated)));
    }
    if !unseen.is_empty() {
        detail.push_str(&format!("; missing e.g. {}", sample(&unseen)));
    }
    detail.push_str("; webhook sink / WebSocket: not in this build");
    Check {
        number: 3,
        name: "no order confirmed twice, every terminal event seen",
        passed: duplicated.is_empty() && unseen.is_empty(),
        detail,
    }
}

fn broker(e: &Evidence) -> Check {
    let find = |name: &str| e.queues.iter().find(|q| q.name == name);
    let mut problems = Vec::new();
    let mut parts = Vec::new();
    for queue in e.work_queues {
        match find(queue) {
            Some(q) => {
                let count = |c: Option<i64>| c.map_or("?".to_owned(), |c| c.to_string());
                parts.push(format!(
                    "{} {}/{}",
                    q.name,
                    count(q.messages_ready),
                    count(q.messages_unacknowledged)
                ));
                match q.in_queue() {
                    Some(0) => {}
                    Some(_) => problems.push(format!("{} not drained", q.name)),
                    None => problems.push(format!("{} has no counts yet", q.name)),
                }
            }
            None => problems.push(format!("{queue} missing")),
        }
    }
    for queue in topology::WORK_QUEUES {
        let dlq = topology::dlq(queue);
        match find(&dlq) {
            Some(q) => match q.in_queue() {
                Some(0) => {}
                Some(total) => problems.push(format!("{dlq} holds {total}")),
                None => problems.push(format!("{dlq} has no counts yet")),
            },
            None => problems.push(format!("{dlq} missing")),
        }
    }
    for queue in topology::WORK_QUEUES {
        if !e.work_queues.contains(&queue)
            && let Some(q) = find(queue)
        {
            parts.push(format!(
                "{queue} {} ready (no consumer in this run, not checked)",
                q.messages_ready.map_or("?".to_owned(), |c| c.to_string())
            ));
        }
    }
    let missing: Vec<_> = e
        .expected_connections
        .iter()
        .filter(|name| !e.connections.contains(name))
        .cloned()
        .collect();
    if !missing.is_empty() {
        problems.push(format!("connections missing: {}", missing.join(", ")));
    }
    for (queue, tag, prefetch) in e.expected_consumers {
        match e.consumers.iter().find(|(q, t, _)| q == queue && t == tag) {
            None => problems.push(format!("no consumer {tag} on {queue}")),
            Some((_, _, p)) if p != prefetch => {
                problems.push(format!("{tag} has prefetch {p}, not {prefetch}"))
            }
            Some(_) => {}
        }
    }
    let detail = format!(
        "ready/unacked {}; DLQs {}; consumers {} with prefetch; connections {}{}",
        parts.join(", "),
        if problems.iter().any(|p| p.contains(".dlq")) {
            "NOT known empty"
        } else {
            "empty"
        },
        e.expected_consumers
            .iter()
            .map(|(_, tag, p)| format!("{tag}={p}"))
            .collect::<Vec<_>>()
            .join(" "),
        e.expected_connections.join(" "),
        if problems.is_empty() {
            String::new()
        } else {
            format!("; problems: {}", problems.join("; "))
        }
    );
    Check {
        number: 4,
        name: "queues drained, DLQs empty, consumers and named connections back",
        passed: problems.is_empty(),
        detail,
    }
}

fn recovery(e: &Evidence, figures: &mut Figures) -> Check {
    let confirmations: Vec<OffsetDateTime> = e
        .orders
        .values()
        .filter(|o| o.status == "CONFIRMED")
        .filter_map(|o| OffsetDateTime::parse(&o.updated_at, &Rfc3339).ok())
        .collect();
    let mut parts = Vec::new();
    let mut passed = true;
    for (i, done) in e
        .actions
        .iter()
        .filter(|d| d.action.target == Target::Broker)
        .enumerate()
    {
        let seconds = done.up_again.and_then(|up: SystemTime| {
            let up = OffsetDateTime::from(up);
            confirmations
                .iter()
                .filter(|c| **c >= up)
                .min()
                .map(|c| (*c - up).as_seconds_f64())
        });
        passed &= seconds.is_some();
        figures.recovery.push(seconds);
        parts.push(match seconds {
            Some(s) => format!("kill {} (t={:.0}s): {s:.1} s", i + 1, done.killed_at),
            None => format!(
                "kill {} (t={:.0}s): no confirmation after it",
                i + 1,
                done.killed_at
            ),
        });
    }
    if parts.is_empty() {
        parts.push("no broker kill in this schedule".into());
    }
    Check {
        number: 5,
        name: "recovery after each broker kill (up → next confirmation)",
        passed,
        detail: parts.join(", "),
    }
}

fn sample(ids: &[String]) -> String {
    ids.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
}
