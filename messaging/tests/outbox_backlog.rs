//! The relay's backlog gauges (`outbox_pending_rows`, `outbox_oldest_age_seconds`) rise while
//! rows wait for an unreachable broker and fall back to zero once the table is empty. Its own
//! test binary, so its relay is the only one writing to the process's recorder.

use std::sync::OnceLock;
use std::time::Duration;

use messaging::outbox::Relay;
use messaging::{Broker, BrokerConfig, Db, OutgoingMessage};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// This test binary's Prometheus recorder, installed on first use: the same kind a service's
/// `/metrics` renders (`service_kit::ops::metrics_handle`, which messaging cannot depend on).
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).expect("the only recorder of this test binary");
            handle
        })
        .clone()
}

/// The value of an unlabelled gauge in the process's `/metrics` text, if it was set.
fn gauge(name: &str) -> Option<f64> {
    let text = metrics_handle().render();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `name` until `accept` takes its value, for at most 10 s (the relay measures every 2 s).
async fn gauge_until(name: &str, accept: impl Fn(f64) -> bool) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = gauge(name).filter(|v| accept(*v)) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never reached the expected value; last {:?}",
            gauge(name)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn message(n: usize) -> OutgoingMessage {
    OutgoingMessage {
        exchange: "saga.events".into(),
        routing_key: "order.confirmed".into(),
        message_id: format!("backlog-test-{n}-{}", uuid::Uuid::now_v7()),
        correlation_id: Some(format!("order-{n}")),
        reply_to: None,
        traceparent: None,
        body: b"{}".to_vec(),
        mandatory: true,
    }
}

#[tokio::test]
async fn backlog_gauges_rise_while_rows_wait_and_fall_when_they_are_gone() {
    // Install the recorder before the relay sets anything.
    let _ = metrics_handle();
    let dir = std::env::temp_dir().join(format!("outbox-backlog-{}", uuid::Uuid::new_v4()));
    // Every Db has the outbox table; the test needs no schema of its own.
    let db = Db::open(&dir.join("backlog.db"), "")
        .await
        .expect("open db");

    // A broker link to a port nobody listens on: the broker is down, nothing can be relayed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let broker = Broker::new(BrokerConfig::new(
        &format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        "backlog-test",
    ));
    let stop = CancellationToken::new();
    tokio::spawn(broker.clone().run(stop.clone()));
    let relay = Relay::new(db.clone(), broker).expect("relay");
    tokio::spawn(relay.run(stop.clone()));

    // Empty table: both gauges read 0.
    assert_eq!(gauge_until("outbox_pending_rows", |v| v == 0.0).await, 0.0);
    assert_eq!(
        gauge_until("outbox_oldest_age_seconds", |v| v == 0.0).await,
        0.0
    );

    db.write(|tx| Ok((0..3).try_for_each(|n| tx.enqueue(&message(n)))?))
        .await
        .expect("enqueue");
    gauge_until("outbox_pending_rows", |v| v == 3.0).await;
    let first = gauge_until("outbox_oldest_age_seconds", |v| v > 0.0).await;
    // Two measurements later the same oldest row has waited visibly longer.
    let later = gauge_until("outbox_oldest_age_seconds", |v| v >= first + 3.0).await;
    assert!(later < 30.0, "the oldest row is not that old: {later}");
    assert_eq!(gauge("outbox_pending_rows"), Some(3.0));

    // The rows leave the table (as the relay's settle would delete them): back to zero.
    db.write(|tx| Ok(tx.execute("DELETE FROM outbox", [])?))
        .await
        .expect("delete");
    gauge_until("outbox_pending_rows", |v| v == 0.0).await;
    gauge_until("outbox_oldest_age_seconds", |v| v == 0.0).await;

    stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}
