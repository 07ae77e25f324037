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
use crate::schedule::{Done, Target};
use crate::sink::SinkReport;
use crate::snapshot::OrderRow;
use crate::ws::WsReport;
use testkit::management::QueueStats;

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
    /// What the webhook sink and the ADMIN WebSocket client saw (when the webhook services run).
    pub sink: Option<&'a SinkReport>,
    pub ws: Option<&'a WsReport>,
    /// On a cluster: the names of its nodes, every one of which must hold an online member of
    /// every quorum queue (`quorum_queues`) at the end.
    pub cluster_nodes: Option<&'a [String]>,
    pub quorum_queues: &'a [&'a str],
    /// Order id → terminal states in its `order_history` (`None`: could not be read).
    pub history: Option<&'a HashMap<String, usize>>,
    /// With `--postgres`: the SQLite files found in the services' data directories (must be
    /// none: with `DATABASE_URL` set a service writes no SQLite file). `None` on SQLite.
    pub sqlite_files: Option<&'a [String]>,
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
    /// The longest stretch of the load without an accepted order: (from, seconds).
    pub intake_gap: Option<(f64, f64)>,
    /// Per cluster node kill: (target, node, longest stretch without an accepted order while
    /// the node was down or restarting, in seconds).
    pub node_kill_gaps: Vec<(String, String, f64)>,
}

pub fn run(e: &Evidence) -> (Vec<Check>, Figures) {
    let mut figures = Figures::default();
    let mut checks = vec![
        terminal(e, &mut figures),
        stock(e),
        events(e, &mut figures),
        broker(e),
        recovery(e, &mut figures),
    ];
    if let Some(nodes) = e.cluster_nodes {
        checks.push(quorum_members(e.queues, e.quorum_queues, nodes));
    }
    checks.push(history(e));
    if let Some(files) = e.sqlite_files {
        checks.push(Check {
            number: 9,
            name: "with DATABASE_URL no service wrote a SQLite file",
            passed: files.is_empty(),
            detail: if files.is_empty() {
                "no *.db file in any data directory".into()
            } else {
                format!("found {}", files.join(", "))
            },
        });
    }
    intake(e, &mut figures);
    (checks, figures)
}

/// The intake figures: measured and reported, never compared with a limit.
fn intake(e: &Evidence, figures: &mut Figures) {
    let times: Vec<f64> = {
        let mut t: Vec<f64> = e
            .load
            .accepted
            .values()
            .map(|a| a.at.as_secs_f64())
            .collect();
        t.sort_by(f64::total_cmp);
        t
    };
    figures.intake_gap = crate::load::longest_intake_gap(e.load.accepted.values().map(|a| a.at));
    for done in e.actions {
        if let (Target::Node(_), Some(node)) = (done.action.target, &done.node) {
            let (from, to) = (done.killed_at, done.restarted_at);
            // Consecutive acceptances whose interval overlaps the node's absence.
            let gap = times
                .windows(2)
                .filter(|w| w[1] >= from && w[0] <= to)
                .map(|w| w[1] - w[0])
                .fold(0.0, f64::max);
            figures
                .node_kill_gaps
                .push((done.action.target.to_string(), node.clone(), gap));
        }
    }
}

/// Every quorum queue has a member on every node of the cluster, and all of them online.
pub fn quorum_members(queues: &[QueueStats], names: &[&str], nodes: &[String]) -> Check {
    let mut problems = Vec::new();
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    let want = sorted(nodes);
    for name in names {
        match queues.iter().find(|q| q.name == *name) {
            None => problems.push(format!("{name} missing")),
            Some(q) => {
                let members = q.members.as_deref().map(sorted);
                let online = q.online.as_deref().map(sorted);
                if members.as_ref() != Some(&want) {
                    problems.push(format!("{name} members {:?}", q.members));
                }
                if online.as_ref() != Some(&want) {
                    problems.push(format!("{name} online {:?}", q.online));
                }
            }
        }
    }
    Check {
        number: 7,
        name: "every quorum queue back to a member online on each of the three nodes",
        passed: problems.is_empty(),
        detail: if problems.is_empty() {
            format!(
                "{} queues, {} online members each",
                names.len(),
                nodes.len()
            )
        } else {
            problems.join("; ")
        },
    }
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

/// Every accepted order's history holds exactly one terminal state: no transition out of a
/// terminal state was applied, and none was applied twice (by two instances, or twice by one).
fn history(e: &Evidence) -> Check {
    let name = "every accepted order's history has exactly one terminal state";
    let Some(history) = e.history else {
        return Check {
            number: 8,
            name,
            passed: false,
            detail: "order_history could not be read".into(),
        };
    };
    let mut none = Vec::new();
    let mut several = Vec::new();
    for id in e.load.accepted.keys() {
        match history.get(id).copied().unwrap_or(0) {
            1 => {}
            0 => none.push(id.clone()),
            _ => several.push(id.clone()),
        }
    }
    let mut detail = format!(
        "{} orders: without a terminal history row {}, with several {}",
        e.load.accepted.len(),
        none.len(),
        several.len()
    );
    for (what, ids) in [("none", &none), ("several", &several)] {
        if !ids.is_empty() {
            detail.push_str(&format!("; {what} e.g. {}", sample(ids)));
        }
    }
    Check {
        number: 8,
        name,
        passed: none.is_empty() && several.is_empty() && !e.load.accepted.is_empty(),
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
    let (mut passed, mut detail) = tap_events(e, figures);
    let decided: Vec<(&String, String)> = e
        .orders
        .iter()
        .filter(|(_, o)| TERMINAL.contains(&o.status.as_str()))
        .map(|(id, o)| (id, format!("order.{}", o.status.to_lowercase())))
        .collect();
    match e.sink {
        Some(sink) => {
            let (ok, text) = sink_received(sink, &decided);
            passed &= ok;
            detail.push_str(&text);
        }
        None => detail.push_str("; webhook sink: not in this run"),
    }
    match e.ws {
        Some(ws) => {
            let (ok, text) = ws_shown(ws, &decided);
            passed &= ok;
            detail.push_str(&text);
        }
        None => detail.push_str("; ADMIN WebSocket: not in this run"),
    }
    Check {
        number: 3,
        name: "no order confirmed twice, every terminal event seen",
        passed,
        detail,
    }
}

/// On the bus (the tap): no order confirmed twice, the terminal event of every decided order.
fn tap_events(e: &Evidence, figures: &mut Figures) -> (bool, String) {
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
    (duplicated.is_empty() && unseen.is_empty(), detail)
}

/// At the webhook sink: the terminal event of every `decided` order, every signature and body
/// valid.
fn sink_received(sink: &SinkReport, decided: &[(&String, String)]) -> (bool, String) {
    let got: std::collections::HashSet<(&str, &str)> = sink
        .by_webhook
        .values()
        .filter(|r| r.accepted > 0)
        .map(|r| (r.order_id.as_str(), r.event_type.as_str()))
        .collect();
    let missing = decided
        .iter()
        .filter(|(id, kind)| !got.contains(&(id.as_str(), kind.as_str())))
        .count();
    let retried = sink.by_webhook.values().filter(|r| r.refused > 0).count();
    (
        missing == 0 && sink.bad_signatures == 0 && sink.bad_bodies == 0,
        format!(
            "; webhook sink: terminal events missing {missing}, bad signatures {}, {} webhooks refused on purpose and retried",
            sink.bad_signatures, retried
        ),
    )
}

/// On the ADMIN WebSocket: the terminal event of every `decided` order, none shown twice.
fn ws_shown(ws: &WsReport, decided: &[(&String, String)]) -> (bool, String) {
    let got: std::collections::HashSet<(&str, &str)> = ws
        .by_webhook
        .values()
        .map(|s| (s.order_id.as_str(), s.event_type.as_str()))
        .collect();
    let missing = decided
        .iter()
        .filter(|(id, kind)| !got.contains(&(id.as_str(), kind.as_str())))
        .count();
    let twice = ws.by_webhook.values().filter(|s| s.times > 1).count();
    (
        missing == 0 && twice == 0,
        format!(
            "; ADMIN WebSocket: terminal events missing {missing}, shown twice {twice}, connects {}",
            ws.connects
        ),
    )
}

fn broker(e: &Evidence) -> Check {
    let mut problems = Vec::new();
    let parts = work_queues_drained(e, &mut problems);
    dead_letter_queues_empty(e, &mut problems);
    // One entry per instance: with several instances, each must be back.
    let missing: Vec<_> = missing_connections(e.expected_connections, e.connections);
    if !missing.is_empty() {
        problems.push(format!("connections missing: {}", missing.join(", ")));
    }
    let wanted = consumers_back(e, &mut problems);
    let detail = format!(
        "ready/unacked {}; DLQs {}; consumers {} with prefetch; connections {}{}",
        parts.join(", "),
        if problems.iter().any(|p| p.contains(".dlq")) {
            "NOT known empty"
        } else {
            "empty"
        },
        wanted
            .iter()
            .map(|((_, tag), (p, n))| if *n > 1 {
                format!("{tag}={p}×{n}")
            } else {
                format!("{tag}={p}")
            })
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

/// The counts of the work queues: those of this run must be empty (a problem each otherwise);
/// the others are shown, not checked. Returns the counts for the detail.
fn work_queues_drained(e: &Evidence, problems: &mut Vec<String>) -> Vec<String> {
    let find = |name: &str| e.queues.iter().find(|q| q.name == name);
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
        if !e.work_queues.contains(&queue)
            && let Some(q) = find(queue)
        {
            parts.push(format!(
                "{queue} {} ready (no consumer in this run, not checked)",
                q.messages_ready.map_or("?".to_owned(), |c| c.to_string())
            ));
        }
    }
    parts
}

/// Every work queue's dead-letter queue must be there and known empty.
fn dead_letter_queues_empty(e: &Evidence, problems: &mut Vec<String>) {
    for queue in topology::WORK_QUEUES {
        let dlq = topology::dlq(queue);
        match e.queues.iter().find(|q| q.name == dlq) {
            Some(q) => match q.in_queue() {
                Some(0) => {}
                Some(total) => problems.push(format!("{dlq} holds {total}")),
                None => problems.push(format!("{dlq} has no counts yet")),
            },
            None => problems.push(format!("{dlq} missing")),
        }
    }
}

/// Every expected consumer is back, once per instance, with its prefetch. Returns what was
/// wanted: (queue, tag) → (prefetch, instances).
fn consumers_back<'a>(
    e: &Evidence<'a>,
    problems: &mut Vec<String>,
) -> BTreeMap<(&'a str, &'a str), (i64, usize)> {
    let mut wanted: BTreeMap<(&str, &str), (i64, usize)> = BTreeMap::new();
    for (queue, tag, prefetch) in e.expected_consumers {
        wanted.entry((queue, tag)).or_insert((*prefetch, 0)).1 += 1;
    }
    for ((queue, tag), (prefetch, instances)) in &wanted {
        let found: Vec<i64> = e
            .consumers
            .iter()
            .filter(|(q, t, _)| q == queue && t == tag)
            .map(|(_, _, p)| *p)
            .collect();
        if found.is_empty() {
            problems.push(format!("no consumer {tag} on {queue}"));
        } else if found.len() < *instances {
            problems.push(format!(
                "{} consumer(s) {tag} on {queue}, {instances} expected (one per instance)",
                found.len()
            ));
        }
        if let Some(p) = found.iter().find(|p| *p != prefetch) {
            problems.push(format!("{tag} has prefetch {p}, not {prefetch}"));
        }
    }
    wanted
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
        // Only whole-broker kills: with one cluster node down the saga goes on, and the node may
        // come back after the load ended (the intake gaps measure node kills instead).
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

/// The expected connection names (one entry per instance) that are not all back: a name
/// expected twice needs two connections of that name.
pub fn missing_connections(expected: &[String], connections: &[String]) -> Vec<String> {
    let mut wanted: BTreeMap<&str, usize> = BTreeMap::new();
    for name in expected {
        *wanted.entry(name).or_default() += 1;
    }
    wanted
        .into_iter()
        .filter_map(|(name, n)| {
            let have = connections.iter().filter(|c| *c == name).count();
            (have < n).then(|| {
                if n > 1 {
                    format!("{name} ({have} of {n})")
                } else {
                    name.to_owned()
                }
            })
        })
        .collect()
}

fn sample(ids: &[String]) -> String {
    ids.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    //! The checks must be able to fail: each is fed evidence with one thing wrong.

    use std::collections::BTreeSet;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::load::Accepted;
    use crate::schedule::Action;

    struct World {
        load: LoadOutcome,
        products: Vec<Product>,
        orders: HashMap<String, OrderRow>,
        stock: HashMap<String, i64>,
        tap: TapReport,
        queues: Vec<QueueStats>,
        connections: Vec<String>,
        consumers: Vec<(String, String, i64)>,
        actions: Vec<Done>,
        expected_consumers: Vec<(String, String, i64)>,
        expected_connections: Vec<String>,
        history: HashMap<String, usize>,
        sqlite_files: Option<Vec<String>>,
    }

    fn queue(name: &str, ready: Option<i64>) -> QueueStats {
        QueueStats {
            name: name.into(),
            messages_ready: ready,
            messages_unacknowledged: Some(0),
            consumers: Some(1),
            members: None,
            online: None,
            leader: None,
        }
    }

    /// Two orders of 2 on a product of 10: one confirmed, one rejected, all seen, all drained.
    fn healthy() -> World {
        let up = SystemTime::now() - Duration::from_secs(60);
        let confirmed_at = OffsetDateTime::from(up + Duration::from_secs(3))
            .format(&Rfc3339)
            .unwrap();
        let mut load = LoadOutcome::default();
        let mut orders = HashMap::new();
        let mut tap = TapReport {
            by_order: HashMap::new(),
            deliveries: 4,
        };
        for (id, status) in [("o1", "CONFIRMED"), ("o2", "REJECTED")] {
            load.accepted.insert(
                id.into(),
                Accepted {
                    product_id: "p".into(),
                    quantity: 2,
                    key: format!("k-{id}"),
                    attempts: 1,
                    at: Duration::from_secs(1),
                },
            );
            orders.insert(
                id.into(),
                OrderRow {
                    product_id: "p".into(),
                    quantity: 2,
                    status: status.into(),
                    updated_at: confirmed_at.clone(),
                },
            );
            let kinds = tap.by_order.entry(id.into()).or_default();
            kinds.insert("order.created".into(), BTreeSet::from([format!("{id}-a")]));
            kinds.insert(
                format!("order.{}", status.to_lowercase()),
                BTreeSet::from([format!("{id}-b")]),
            );
        }
        let mut queues = vec![
            queue("orders_queue", Some(0)),
            queue("products_queue", Some(0)),
        ];
        for q in topology::WORK_QUEUES {
            queues.push(queue(&topology::dlq(q), Some(0)));
        }
        World {
            load,
            products: vec![Product {
                id: "p".into(),
                initial_stock: 10,
            }],
            orders,
            stock: HashMap::from([("p".into(), 8)]),
            tap,
            queues,
            connections: vec!["orders@h".into()],
            consumers: vec![("orders_queue".into(), "orders.orders_queue".into(), 32)],
            actions: vec![Done {
                action: "broker@1+1".parse::<Action>().unwrap(),
                killed_at: 1.0,
                restarted_at: 9.0,
                up_again: Some(up),
                node: None,
                note: None,
                error: None,
            }],
            expected_consumers: vec![("orders_queue".into(), "orders.orders_queue".into(), 32)],
            expected_connections: vec!["orders@h".into()],
            history: HashMap::from([("o1".into(), 1), ("o2".into(), 1)]),
            sqlite_files: None,
        }
    }

    fn evidence(world: &World) -> Evidence<'_> {
        Evidence {
            load: &world.load,
            products: &world.products,
            orders: &world.orders,
            stock: &world.stock,
            tap: &world.tap,
            queues: &world.queues,
            work_queues: &["orders_queue", "products_queue"],
            connections: &world.connections,
            consumers: &world.consumers,
            expected_consumers: &world.expected_consumers,
            expected_connections: &world.expected_connections,
            actions: &world.actions,
            sink: None,
            ws: None,
            cluster_nodes: None,
            quorum_queues: &[],
            history: Some(&world.history),
            sqlite_files: world.sqlite_files.as_deref(),
        }
    }

    fn check(world: &World) -> Vec<Check> {
        run(&evidence(world)).0
    }

    fn failed(world: &World) -> Vec<u8> {
        check(world)
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.number)
            .collect()
    }

    #[test]
    fn a_healthy_run_passes_every_check() {
        let world = healthy();
        assert_eq!(failed(&world), Vec::<u8>::new(), "{:#?}", check(&world));
    }

    #[test]
    fn a_lost_or_stuck_order_fails_check_1() {
        let mut lost = healthy();
        lost.orders.remove("o2");
        assert!(failed(&lost).contains(&1));
        let mut stuck = healthy();
        stuck.orders.get_mut("o2").unwrap().status = "PENDING".into();
        assert!(failed(&stuck).contains(&1));
        let mut two = healthy();
        two.tap
            .by_order
            .get_mut("o1")
            .unwrap()
            .insert("order.cancelled".into(), BTreeSet::from(["x".into()]));
        assert!(failed(&two).contains(&1));
    }

    #[test]
    fn a_second_instance_without_its_consumer_or_connection_fails_check_4() {
        let mut world = healthy();
        world
            .expected_consumers
            .push(("orders_queue".into(), "orders.orders_queue".into(), 32));
        assert_eq!(failed(&world), vec![4]);
        world
            .consumers
            .push(("orders_queue".into(), "orders.orders_queue".into(), 32));
        assert_eq!(failed(&world), Vec::<u8>::new());
        world.expected_connections.push("orders@h".into());
        assert_eq!(failed(&world), vec![4]);
        world.connections.push("orders@h".into());
        assert_eq!(failed(&world), Vec::<u8>::new());
    }

    #[test]
    fn a_history_without_exactly_one_terminal_state_fails_check_8() {
        let mut twice = healthy();
        twice.history.insert("o1".into(), 2);
        assert_eq!(failed(&twice), vec![8]);
        let mut none = healthy();
        none.history.remove("o2");
        assert_eq!(failed(&none), vec![8]);
    }

    #[test]
    fn a_sqlite_file_on_postgres_fails_check_9() {
        let mut world = healthy();
        world.sqlite_files = Some(Vec::new());
        assert_eq!(failed(&world), Vec::<u8>::new());
        world.sqlite_files = Some(vec!["orders-2/orders.db".into()]);
        assert_eq!(failed(&world), vec![9]);
    }

    #[test]
    fn stock_that_does_not_add_up_fails_check_2() {
        let mut world = healthy();
        world.stock.insert("p".into(), 6);
        assert_eq!(failed(&world), vec![2]);
        world.stock.insert("p".into(), -2);
        world.products[0].initial_stock = 0;
        assert_eq!(failed(&world), vec![2]);
    }

    #[test]
    fn a_second_confirmation_or_a_missing_event_fails_check_3() {
        let mut twice = healthy();
        twice
            .tap
            .by_order
            .get_mut("o1")
            .unwrap()
            .get_mut("order.confirmed")
            .unwrap()
            .insert("o1-c".into());
        assert_eq!(failed(&twice), vec![3]);
        let mut unseen = healthy();
        unseen.tap.by_order.remove("o2");
        assert_eq!(failed(&unseen), vec![3]);
    }

    #[test]
    fn undrained_unknown_or_unconsumed_queues_fail_check_4() {
        let mut busy = healthy();
        busy.queues[0].messages_ready = Some(3);
        assert_eq!(failed(&busy), vec![4]);
        let mut unknown = healthy();
        unknown.queues[1].messages_ready = None;
        assert_eq!(failed(&unknown), vec![4]);
        let mut dead = healthy();
        dead.queues[2].messages_ready = Some(1);
        assert_eq!(failed(&dead), vec![4]);
        let mut gone = healthy();
        gone.connections.clear();
        assert_eq!(failed(&gone), vec![4]);
        let mut prefetch = healthy();
        prefetch.consumers[0].2 = 0;
        assert_eq!(failed(&prefetch), vec![4]);
    }

    #[test]
    fn no_confirmation_after_a_broker_kill_fails_check_5() {
        let mut world = healthy();
        world.actions[0].up_again = Some(SystemTime::now());
        assert_eq!(failed(&world), vec![5]);
    }

    fn members(queue: &mut QueueStats, members: &[&str], online: &[&str]) {
        let names = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect());
        queue.members = names(members);
        queue.online = names(online);
    }

    #[test]
    fn a_quorum_queue_short_of_an_online_member_fails_check_7() {
        let nodes: Vec<String> = ["a@h", "b@h", "c@h"].map(String::from).to_vec();
        let mut queues = vec![
            queue("orders_queue", Some(0)),
            queue("orders_queue.dlq", Some(0)),
        ];
        for q in &mut queues {
            members(q, &["c@h", "a@h", "b@h"], &["b@h", "a@h", "c@h"]);
        }
        let names = ["orders_queue", "orders_queue.dlq"];
        assert!(quorum_members(&queues, &names, &nodes).passed);
        let mut offline = queues.clone();
        members(&mut offline[1], &["a@h", "b@h", "c@h"], &["a@h", "b@h"]);
        assert!(!quorum_members(&offline, &names, &nodes).passed);
        let mut short = queues.clone();
        members(&mut short[0], &["a@h", "b@h"], &["a@h", "b@h"]);
        assert!(!quorum_members(&short, &names, &nodes).passed);
        let mut unknown = queues.clone();
        unknown[0].members = None;
        assert!(!quorum_members(&unknown, &names, &nodes).passed);
        assert!(!quorum_members(&queues[..1], &names, &nodes).passed);
    }

    #[test]
    fn the_intake_gap_around_a_node_kill_is_measured() {
        let mut world = healthy();
        let at = |s: f64| Duration::from_secs_f64(s);
        for (i, t) in [0.5, 1.0, 1.2, 4.7, 5.0].into_iter().enumerate() {
            let mut order = world.load.accepted["o1"].clone();
            order.at = at(t);
            world.load.accepted.insert(format!("x{i}"), order);
        }
        world.actions[0].action = "gateway-node@1+1".parse::<Action>().unwrap();
        world.actions[0].killed_at = 1.1;
        world.actions[0].restarted_at = 3.0;
        world.actions[0].node = Some("a@h".into());
        let (_, figures) = run(&evidence(&world));
        let (from, gap) = figures.intake_gap.unwrap();
        assert!(
            (from - 1.2).abs() < 1e-9 && (gap - 3.5).abs() < 1e-9,
            "{from} {gap}"
        );
        assert_eq!(figures.node_kill_gaps.len(), 1);
        assert!((figures.node_kill_gaps[0].2 - 3.5).abs() < 1e-9);
    }
}
