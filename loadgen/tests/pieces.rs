//! The load generator's pieces: /proc parsing, metric scraping, report formatting. No speed is
//! asserted. Its open-loop smoke run needs the whole system and lives in `e2e/tests/loadgen.rs`.

use std::time::Duration;

use loadgen::procstat;
use loadgen::recorder::Recorder;
use loadgen::report::{ProcessUse, RunReport, Webhooks, latency_row};
use loadgen::webhooks;
use messaging::topology::BINDINGS;

#[test]
fn stat_fields_are_counted_after_the_command_name() {
    let stat = "4242 (web (hook) x) S 1 4242 4242 0 -1 4194560 500 0 0 0 150 50 0 0 20 0 9 0 1 1 1";
    assert_eq!(procstat::parse_stat_ticks(stat), Some(200));
    let status = "Name:\torders\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
    assert_eq!(procstat::parse_status_kb(status, "VmRSS"), Some(10240));
    assert_eq!(procstat::parse_status_kb(status, "VmHWM"), Some(20480));
}

#[test]
fn own_process_can_be_sampled_and_pids_parsed() {
    let me = procstat::sample(std::process::id()).unwrap();
    assert!(me.rss_kb > 0 && me.hwm_kb >= me.rss_kb);
    let list = procstat::parse_pids("gateway=12,rabbitmq(shared)=34").unwrap();
    assert_eq!(list[1].name, "rabbitmq(shared)");
    assert_eq!(list[1].pid, 34);
    assert!(procstat::parse_pids("gateway").is_err());
}

#[test]
fn an_interval_holds_only_the_latencies_since_the_last_one() {
    let recorder = Recorder::new();
    recorder.terminal("CONFIRMED", Duration::from_millis(10));
    recorder.terminal("CONFIRMED", Duration::from_millis(900));
    let first = recorder.take_interval();
    assert_eq!(first.len(), 2);
    assert!(first.max() >= 899_000, "max {} µs", first.max());
    recorder.terminal("CONFIRMED", Duration::from_millis(20));
    let second = recorder.take_interval();
    assert_eq!(second.len(), 1);
    assert!(
        second.max() < 21_000,
        "the stall of the first interval leaked into the second"
    );
    assert!(recorder.take_interval().is_empty());
    assert_eq!(
        recorder.snapshot().terminal.len(),
        3,
        "the whole run keeps every latency"
    );
}

#[test]
fn delivered_webhooks_are_read_from_the_counter() {
    let text = "# TYPE webhook_attempts_total counter\nwebhook_attempts_total{outcome=\"delivered\"} 41\nwebhook_attempts_total{outcome=\"retry\"} 3\nother 9\n";
    assert_eq!(webhooks::parse_attempts(text, "delivered"), 41.0);
}

#[test]
fn report_shows_percentiles_errors_and_processes() {
    let recorder = Recorder::new();
    for ms in 1..=100 {
        recorder.accepted(Duration::from_millis(ms));
        recorder.terminal("CONFIRMED", Duration::from_millis(ms * 2));
    }
    recorder.error("http-500");
    recorder.refused();
    recorder.refused();
    let snapshot = recorder.snapshot();
    let row = latency_row("POST /orders", &snapshot.post);
    assert!(row.starts_with("| POST /orders | 50."), "{row}");
    assert!(row.ends_with("| 100 |"), "{row}");
    let sample = procstat::sample(std::process::id()).unwrap();
    let report = RunReport {
        title: "t".into(),
        offered: "100 orders/s".into(),
        load_time: Duration::from_secs(1),
        at_load_end: snapshot.clone(),
        final_: snapshot,
        completion_span: Some(Duration::from_secs(2)),
        attempted: 103,
        outstanding: 0,
        drained_after: Some(Duration::from_millis(1500)),
        processes: vec![ProcessUse {
            watched: procstat::Watched {
                name: "me".into(),
                pid: std::process::id(),
            },
            before: Some(sample),
            after: Some(sample),
        }],
        webhooks: Some(Webhooks {
            during_load: 150.0,
            in_all: 200.0,
            over: Duration::from_secs(2),
        }),
    }
    .render();
    assert!(report.contains("(100.0 orders/s)"), "{report}");
    assert!(report.contains("**50.0 orders/s** over 2.0 s"), "{report}");
    assert!(report.contains("http-500: 1"), "{report}");
    assert!(report.contains("| refused (503) | 2 (2.0/s) |"), "{report}");
    assert!(
        report.contains("after the load stopped, within | 1.5 s |"),
        "{report}"
    );
    assert!(report.contains("CONFIRMED 100"), "{report}");
    assert!(report.contains("| me |"), "{report}");
    assert!(
        report.contains(
            "| webhook deliveries during load | 150 (150.0/s, 1.50 per order decided in it) |"
        ),
        "{report}"
    );
    assert!(
        report.contains("| webhook deliveries | 200 (100.0/s over 2.0 s) |"),
        "{report}"
    );
}

/// Every message counted per order is routed as the list says: a binding of the topology takes
/// its routing key from its exchange to its queue (`order.*` matches the order events).
#[test]
fn messages_per_order_follow_the_topology() {
    let routes = |key: &str, exchange: &str, queue: &str| {
        BINDINGS.iter().any(|&(x, pattern, q)| {
            let matches = match pattern.strip_suffix('*') {
                Some(prefix) => key.starts_with(prefix) && !key[prefix.len()..].contains('.'),
                None => pattern == key,
            };
            x == exchange && q == queue && matches
        })
    };
    for hop in loadgen::MESSAGES_PER_ORDER {
        assert!(
            routes(hop.key, hop.exchange, hop.queue),
            "{hop:?} is not a route of the topology"
        );
    }
    let keys: Vec<&str> = loadgen::MESSAGES_PER_ORDER.iter().map(|h| h.key).collect();
    assert_eq!(
        keys,
        [
            "orders.create",
            "product.reserveStock",
            "order.created",
            "product.stockReserved",
            "product.stockChanged",
            "order.confirmed"
        ]
    );
}
