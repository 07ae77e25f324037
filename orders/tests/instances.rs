//! Several orders instances on one PostgreSQL database, with no Redis in front: the database's
//! guards alone (the order row locked with `FOR UPDATE`, guarded `UPDATE`s) make each order
//! decided once, each overdue order cancelled once and each late reservation compensated once.
//! Each "instance" is a store with a pool of its own, as a separate process would have.

mod common;

use std::collections::HashMap;

use common::{Fixture, answer, create, later, overdue, rejection};
use futures::future::join_all;
use orders::store::{Applied, OrderStatus, Store};

const ORDERS: usize = 50;
const OVERDUE: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_applying_the_same_answers_decide_each_order_once() {
    let fixture = Fixture::postgres("instances_answers").await;
    let b = fixture.another_instance().await;
    fixture
        .run(move |probe| async move {
            let a = probe.store.clone();
            let cmds: Vec<_> = (0..ORDERS)
                .map(|i| create(&format!("o-{i}"), "p-1", 1, None))
                .collect();
            for cmd in &cmds {
                // Both instances take the create (a redelivery to the other one).
                let (x, y) = tokio::join!(
                    a.create_order(cmd.clone(), later(), None),
                    b.create_order(cmd.clone(), later(), None)
                );
                assert_ne!(
                    x.unwrap(),
                    y.unwrap(),
                    "{}: created exactly once",
                    cmd.order_id
                );
            }
            // Every order gets the same reservation on both instances at once, three times
            // over; every third order also a conflicting rejection.
            let results = join_all(cmds.iter().enumerate().map(|(i, cmd)| {
                let (a, b) = (a.clone(), b.clone());
                let yes = answer(cmd, 100, "Widget");
                let no = rejection(cmd);
                async move {
                    let mut applied = Vec::new();
                    for round in 0..3 {
                        let second = if i % 3 == 0 && round == 0 {
                            (no.clone(), false)
                        } else {
                            (yes.clone(), true)
                        };
                        let (x, y) = tokio::join!(
                            a.apply_stock_answer(yes.clone(), true, None),
                            b.apply_stock_answer(second.0, second.1, None)
                        );
                        applied.push(x.unwrap());
                        applied.push(y.unwrap());
                    }
                    (cmd.order_id.clone(), applied)
                }
            }))
            .await;
            let mut confirmed = 0;
            for (order_id, applied) in results {
                let transitions: Vec<_> = applied
                    .iter()
                    .filter_map(|a| match a {
                        Applied::Transitioned(to) => Some(*to),
                        _ => None,
                    })
                    .collect();
                assert_eq!(transitions.len(), 1, "{order_id}: {applied:?}");
                let decided = transitions[0];
                assert!(
                    applied.iter().all(|a| matches!(a, Applied::Transitioned(_))
                        || *a == Applied::AlreadyDone(decided)),
                    "{order_id}: {applied:?}"
                );
                let order = a.get_order(order_id.clone()).await.unwrap().unwrap();
                assert_eq!(order.status, decided.as_str());
                let history: Vec<_> = order.history.iter().map(|h| h.status.as_str()).collect();
                assert_eq!(history, ["PENDING", decided.as_str()], "{order_id}");
                let event = match decided {
                    OrderStatus::Confirmed => "order.confirmed",
                    _ => "order.rejected",
                };
                assert_eq!(
                    probe.outbox(&order_id).await,
                    ["product.reserveStock", "order.created", event],
                    "{order_id}"
                );
                if decided == OrderStatus::Confirmed {
                    confirmed += 1;
                }
            }
            assert!(confirmed >= ORDERS * 2 / 3, "{confirmed} confirmed");
        })
        .await;
}

/// One deadline sweep of an instance, as `deadline::sweep` does it (without the Redis lock):
/// the ids it cancelled.
async fn sweep(store: &Store) -> Vec<String> {
    let mut cancelled = Vec::new();
    let due = store.expired(common::now_ms(), 500).await.unwrap();
    for id in due {
        if store.cancel(&id, "no stock answer in time").await.unwrap() {
            cancelled.push(id);
        }
    }
    cancelled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sweepers_cancel_each_overdue_order_once_and_compensate_once() {
    let fixture = Fixture::postgres("instances_sweep").await;
    let b = fixture.another_instance().await;
    fixture
        .run(move |probe| async move {
            let a = probe.store.clone();
            let cmds: Vec<_> = (0..OVERDUE)
                .map(|i| create(&format!("late-{i:03}"), "p-1", 1, None))
                .collect();
            for cmd in &cmds {
                assert!(a.create_order(cmd.clone(), overdue(), None).await.unwrap());
            }
            let (x, y) = tokio::join!(sweep(&a), sweep(&b));
            let mut cancelled: HashMap<String, usize> = HashMap::new();
            for id in x.iter().chain(&y) {
                *cancelled.entry(id.clone()).or_default() += 1;
            }
            assert_eq!(cancelled.len(), OVERDUE, "every overdue order cancelled");
            assert!(
                cancelled.values().all(|n| *n == 1),
                "an order cancelled twice"
            );
            assert_eq!(x.len() + y.len(), OVERDUE);
            // Another round finds nothing left.
            let (x, y) = tokio::join!(sweep(&a), sweep(&b));
            assert!(x.is_empty() && y.is_empty());
            assert_eq!(probe.outbox_count("order.cancelled").await, OVERDUE as i64);

            // The late reservations reach both instances at once (a redelivery), twice.
            let results = join_all(cmds.iter().map(|cmd| {
                let (a, b) = (a.clone(), b.clone());
                let late = answer(cmd, 100, "Widget");
                async move {
                    let mut applied = Vec::new();
                    for _ in 0..2 {
                        let (x, y) = tokio::join!(
                            a.apply_stock_answer(late.clone(), true, None),
                            b.apply_stock_answer(late.clone(), true, None)
                        );
                        applied.push(x.unwrap());
                        applied.push(y.unwrap());
                    }
                    (cmd.order_id.clone(), applied)
                }
            }))
            .await;
            for (order_id, applied) in &results {
                let compensations = applied
                    .iter()
                    .filter(|a| **a == Applied::Compensated)
                    .count();
                assert_eq!(compensations, 1, "{order_id}: {applied:?}");
                assert_eq!(
                    probe.outbox(order_id).await,
                    [
                        "product.reserveStock",
                        "order.created",
                        "order.cancelled",
                        "product.releaseStock"
                    ],
                    "{order_id}"
                );
                let order = a.get_order(order_id.clone()).await.unwrap().unwrap();
                let history: Vec<_> = order.history.iter().map(|h| h.status.as_str()).collect();
                assert_eq!(history, ["PENDING", "CANCELLED"], "{order_id}");
            }
            assert_eq!(
                probe.outbox_count("product.releaseStock").await,
                OVERDUE as i64
            );
        })
        .await;
}

/// The sweep and the stock answer racing on the same orders from two instances: each order
/// ends either CONFIRMED (never cancelled) or CANCELLED and then compensated, never both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_racing_the_answers_decides_each_order_one_way() {
    let fixture = Fixture::postgres("instances_sweep_vs_answer").await;
    let b = fixture.another_instance().await;
    fixture
        .run(move |probe| async move {
            let a = probe.store.clone();
            let cmds: Vec<_> = (0..ORDERS)
                .map(|i| create(&format!("race-{i:03}"), "p-1", 1, None))
                .collect();
            for cmd in &cmds {
                a.create_order(cmd.clone(), overdue(), None).await.unwrap();
            }
            let answers = join_all(cmds.iter().map(|cmd| {
                let b = b.clone();
                let yes = answer(cmd, 100, "Widget");
                async move { b.apply_stock_answer(yes, true, None).await.unwrap() }
            }));
            let (swept, applied) = tokio::join!(sweep(&a), answers);
            for (cmd, applied) in cmds.iter().zip(&applied) {
                let order = a.get_order(cmd.order_id.clone()).await.unwrap().unwrap();
                let was_swept = swept.contains(&cmd.order_id);
                let keys = probe.outbox(&cmd.order_id).await;
                match applied {
                    Applied::Transitioned(OrderStatus::Confirmed) => {
                        assert!(!was_swept, "{}: confirmed and cancelled", cmd.order_id);
                        assert_eq!(order.status, "CONFIRMED");
                        assert_eq!(keys[2..], ["order.confirmed"]);
                    }
                    Applied::Compensated => {
                        assert!(was_swept);
                        assert_eq!(order.status, "CANCELLED");
                        assert_eq!(keys[2..], ["order.cancelled", "product.releaseStock"]);
                    }
                    other => panic!("{}: {other:?}", cmd.order_id),
                }
            }
        })
        .await;
}
