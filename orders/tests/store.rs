//! The orders' store, the same scenarios on both backends: orders.db (SQLite in a temp dir)
//! and PostgreSQL (a database per test, dropped at the end). Each scenario is one function;
//! `on_both!` makes a `<scenario>::sqlite` and a `<scenario>::postgres` test of it.

mod common;

use common::{Fixture, Probe, answer, create, later, overdue, rejection};
use messaging::contracts::{ReportQuery, SalesSummary, SellersReport};
use orders::store::{Applied, OrderStatus, Store};

macro_rules! on_both {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::Fixture::sqlite().await.run(super::$scenario).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::Fixture::postgres(stringify!($scenario))
                    .await
                    .run(super::$scenario)
                    .await;
            }
        }
    )*};
}

on_both!(
    a_create_replayed_records_one_order_and_one_set_of_messages,
    a_reservation_confirms_with_history_and_event,
    a_rejection_rejects_with_its_reason,
    a_duplicate_answer_is_already_done_and_writes_nothing,
    a_reservation_after_the_cancel_is_compensated_once,
    an_answer_for_an_unknown_order_is_reported,
    only_overdue_pending_orders_expire,
);

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, the one timestamp form of the API on either backend.
fn assert_timestamp(ts: &str) {
    let shape: String = ts
        .chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { c })
        .collect();
    assert_eq!(shape, "9999-99-99T99:99:99.999Z", "timestamp {ts}");
}

async fn a_create_replayed_records_one_order_and_one_set_of_messages(probe: Probe) {
    let store = &probe.store;
    let cmd = create("o-1", "p-1", 2, Some("seller-gw"));
    assert!(
        store
            .create_order(cmd.clone(), later(), None)
            .await
            .unwrap()
    );
    assert!(
        !store
            .create_order(cmd.clone(), later(), None)
            .await
            .unwrap()
    );
    assert!(!store.create_order(cmd, later(), None).await.unwrap());
    assert_eq!(
        probe.outbox("o-1").await,
        ["product.reserveStock", "order.created"]
    );
    let order = store.get_order("o-1".into()).await.unwrap().unwrap();
    assert_eq!(order.status, "PENDING");
    assert_eq!(order.quantity, 2);
    assert_eq!(order.seller_id.as_deref(), Some("seller-gw"));
    assert_eq!(order.customer_id.as_deref(), Some("c-1"));
    assert_eq!(order.created_at, order.updated_at);
    assert_timestamp(&order.created_at);
    assert_eq!(order.history.len(), 1);
    assert_eq!(order.history[0].status, "PENDING");
    assert_eq!(order.history[0].at, order.created_at);
    assert!(store.get_order("nope".into()).await.unwrap().is_none());
}

async fn a_reservation_confirms_with_history_and_event(probe: Probe) {
    let store = &probe.store;
    let cmd = create("o-1", "p-1", 3, None);
    store
        .create_order(cmd.clone(), later(), None)
        .await
        .unwrap();
    let applied = store
        .apply_stock_answer(
            answer(&cmd, 250, "Widget"),
            true,
            Some("00-trace-01".into()),
        )
        .await
        .unwrap();
    assert_eq!(applied, Applied::Transitioned(OrderStatus::Confirmed));
    let order = store.get_order("o-1".into()).await.unwrap().unwrap();
    assert_eq!(order.status, "CONFIRMED");
    assert_eq!(order.reason, None);
    assert_eq!(order.seller_id.as_deref(), Some("seller-a"));
    assert_timestamp(&order.updated_at);
    assert!(order.updated_at >= order.created_at);
    let history: Vec<_> = order.history.iter().map(|h| h.status.as_str()).collect();
    assert_eq!(history, ["PENDING", "CONFIRMED"]);
    assert_eq!(order.history[1].at, order.updated_at);
    assert_eq!(
        store.order_history("o-1".into()).await.unwrap(),
        order.history
    );
    assert_eq!(
        probe.outbox("o-1").await,
        ["product.reserveStock", "order.created", "order.confirmed"]
    );
}

async fn a_rejection_rejects_with_its_reason(probe: Probe) {
    let store = &probe.store;
    let cmd = create("o-1", "p-1", 3, None);
    store
        .create_order(cmd.clone(), later(), None)
        .await
        .unwrap();
    let applied = store
        .apply_stock_answer(rejection(&cmd), false, None)
        .await
        .unwrap();
    assert_eq!(applied, Applied::Transitioned(OrderStatus::Rejected));
    let order = store.get_order("o-1".into()).await.unwrap().unwrap();
    assert_eq!(order.status, "REJECTED");
    assert_eq!(order.reason.as_deref(), Some("insufficient stock"));
    let last = order.history.last().unwrap();
    assert_eq!(
        (last.status.as_str(), last.reason.as_deref()),
        ("REJECTED", Some("insufficient stock"))
    );
    assert_eq!(
        probe.outbox("o-1").await,
        ["product.reserveStock", "order.created", "order.rejected"]
    );
}

async fn a_duplicate_answer_is_already_done_and_writes_nothing(probe: Probe) {
    let store = &probe.store;
    let cmd = create("o-1", "p-1", 1, None);
    store
        .create_order(cmd.clone(), later(), None)
        .await
        .unwrap();
    let reserved = answer(&cmd, 100, "Widget");
    store
        .apply_stock_answer(reserved.clone(), true, None)
        .await
        .unwrap();
    let before = store.get_order("o-1".into()).await.unwrap().unwrap();
    let outbox_before = probe.outbox("o-1").await;
    for (again, is_reserved) in [(reserved, true), (rejection(&cmd), false)] {
        assert_eq!(
            store
                .apply_stock_answer(again, is_reserved, None)
                .await
                .unwrap(),
            Applied::AlreadyDone(OrderStatus::Confirmed)
        );
    }
    assert!(
        !store.cancel("o-1", "too late").await.unwrap(),
        "a decided order is not cancelled"
    );
    let after = store.get_order("o-1".into()).await.unwrap().unwrap();
    assert_eq!(
        serde_json::to_value(&after).unwrap(),
        serde_json::to_value(&before).unwrap()
    );
    assert_eq!(probe.outbox("o-1").await, outbox_before);
}

async fn a_reservation_after_the_cancel_is_compensated_once(probe: Probe) {
    let store = &probe.store;
    let cmd = create("o-1", "p-1", 2, None);
    store
        .create_order(cmd.clone(), overdue(), None)
        .await
        .unwrap();
    assert!(
        store
            .cancel("o-1", "no stock answer within 1 ms")
            .await
            .unwrap()
    );
    assert!(!store.cancel("o-1", "again").await.unwrap());
    // A rejection after the cancel has nothing to release.
    assert_eq!(
        store
            .apply_stock_answer(rejection(&cmd), false, None)
            .await
            .unwrap(),
        Applied::AlreadyDone(OrderStatus::Cancelled)
    );
    let late = answer(&cmd, 100, "Widget");
    assert_eq!(
        store
            .apply_stock_answer(late.clone(), true, None)
            .await
            .unwrap(),
        Applied::Compensated
    );
    assert_eq!(
        store.apply_stock_answer(late, true, None).await.unwrap(),
        Applied::AlreadyDone(OrderStatus::Cancelled)
    );
    let order = store.get_order("o-1".into()).await.unwrap().unwrap();
    assert_eq!(order.status, "CANCELLED");
    assert_eq!(order.reason.as_deref(), Some("no stock answer within 1 ms"));
    // The late answer names the seller, for the seller's report.
    assert_eq!(order.seller_id.as_deref(), Some("seller-a"));
    let history: Vec<_> = order.history.iter().map(|h| h.status.as_str()).collect();
    assert_eq!(history, ["PENDING", "CANCELLED"]);
    assert_eq!(
        probe.outbox("o-1").await,
        [
            "product.reserveStock",
            "order.created",
            "order.cancelled",
            "product.releaseStock"
        ]
    );
}

async fn an_answer_for_an_unknown_order_is_reported(probe: Probe) {
    let cmd = create("ghost", "p-1", 1, None);
    assert_eq!(
        probe
            .store
            .apply_stock_answer(answer(&cmd, 1, "x"), true, None)
            .await
            .unwrap(),
        Applied::UnknownOrder
    );
    assert!(probe.outbox("ghost").await.is_empty());
}

async fn only_overdue_pending_orders_expire(probe: Probe) {
    let store = &probe.store;
    let now = common::now_ms();
    for (id, deadline) in [
        ("late-2", now - 10),
        ("late-1", now - 20),
        ("fresh", now + 60_000),
    ] {
        store
            .create_order(create(id, "p", 1, None), deadline, None)
            .await
            .unwrap();
    }
    let decided = create("late-0", "p", 1, None);
    store
        .create_order(decided.clone(), now - 30, None)
        .await
        .unwrap();
    store
        .apply_stock_answer(answer(&decided, 1, "x"), true, None)
        .await
        .unwrap();
    assert_eq!(store.expired(now, 10).await.unwrap(), ["late-1", "late-2"]);
    assert_eq!(store.expired(now, 1).await.unwrap(), ["late-1"]);
}

/// Builds the same orders in `store`: three sellers, two products (one renamed between its
/// reservations), every status, one confirmed order without a unit price.
async fn report_fixture(store: &Store) {
    // (order, product, quantity, seller, unit price and name of a reservation)
    type Planned = (
        &'static str,
        &'static str,
        u32,
        &'static str,
        Option<(i64, &'static str)>,
    );
    let orders: [Planned; 7] = [
        ("r-1", "p-1", 2, "s-1", Some((150, "Widget"))),
        ("r-2", "p-1", 1, "s-1", Some((150, "Widget v2"))),
        ("r-3", "p-2", 5, "s-2", Some((40, "Gadget"))),
        ("r-4", "p-2", 1, "s-2", None),
        ("r-5", "p-3", 3, "s-3", Some((0, "Freebie"))),
        ("r-6", "p-3", 1, "s-3", None),
        ("r-7", "p-4", 4, "s-1", None),
    ];
    for (id, product, quantity, seller, outcome) in orders {
        let mut cmd = create(id, product, quantity, Some(seller));
        let deadline = if id == "r-6" { overdue() } else { later() };
        store
            .create_order(cmd.clone(), deadline, None)
            .await
            .unwrap();
        cmd.seller_id = Some(seller.into());
        let mut reply = answer(&cmd, 0, "");
        reply.seller_id = Some(seller.into());
        match (id, outcome) {
            ("r-4", _) => {
                let mut no = rejection(&cmd);
                no.seller_id = Some(seller.into());
                store.apply_stock_answer(no, false, None).await.unwrap();
            }
            ("r-6", _) => assert!(store.cancel(id, "deadline").await.unwrap()),
            ("r-7", _) => {}
            (_, Some((price, name))) => {
                reply.unit_price_cents = (price > 0).then_some(price);
                reply.product_name = Some(name.into());
                store.apply_stock_answer(reply, true, None).await.unwrap();
            }
            _ => unreachable!(),
        }
        // Distinct updated_at for the "latest name" rule.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
}

async fn reports(store: &Store, query: ReportQuery) -> (SalesSummary, SellersReport) {
    (
        store.sales_summary(query.clone()).await.unwrap(),
        store.sellers_report(query).await.unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reports_agree_on_both_backends() {
    let sqlite = Fixture::sqlite().await;
    let postgres = Fixture::postgres("reports").await;
    // Nested, so the database is dropped whatever happens.
    postgres
        .run(move |pg| {
            sqlite.run(move |probe| async move {
                let other = pg.store;
                report_fixture(&probe.store).await;
                report_fixture(&other).await;
                let all = ReportQuery {
                    from: None,
                    to: None,
                    seller_id: None,
                };
                let year_2000 = ReportQuery {
                    from: Some("2000-01-01T00:00:00.000Z".into()),
                    to: Some("2001-01-01T00:00:00.000Z".into()),
                    seller_id: None,
                };
                let since_2000 = ReportQuery {
                    from: Some("2000-01-01T00:00:00.000Z".into()),
                    to: None,
                    seller_id: Some("s-1".into()),
                };
                for query in [all.clone(), year_2000.clone(), since_2000] {
                    let on_sqlite = reports(&probe.store, query.clone()).await;
                    let on_postgres = reports(&other, query.clone()).await;
                    assert_eq!(
                        serde_json::to_value(&on_postgres).unwrap(),
                        serde_json::to_value(&on_sqlite).unwrap(),
                        "{query:?}"
                    );
                }
                let (summary, sellers) = reports(&other, all).await;
                assert_eq!(
                    (
                        summary.orders.pending,
                        summary.orders.confirmed,
                        summary.orders.rejected,
                        summary.orders.cancelled
                    ),
                    (1, 4, 1, 1)
                );
                assert_eq!(summary.units_confirmed, 2 + 1 + 5 + 3);
                assert_eq!(summary.revenue_confirmed_cents, 2 * 150 + 150 + 5 * 40);
                let top: Vec<_> = summary
                    .top_products
                    .iter()
                    .map(|p| (p.product_id.as_str(), p.name.as_deref()))
                    .collect();
                assert_eq!(
                    top,
                    [
                        ("p-1", Some("Widget v2")),
                        ("p-2", Some("Gadget")),
                        ("p-3", Some("Freebie"))
                    ]
                );
                let ranked: Vec<_> = sellers
                    .sellers
                    .iter()
                    .map(|s| (s.seller_id.as_deref(), s.orders))
                    .collect();
                assert_eq!(
                    ranked,
                    [(Some("s-1"), 3), (Some("s-2"), 2), (Some("s-3"), 2)]
                );
                let (empty, no_sellers) = reports(&other, year_2000).await;
                assert_eq!(empty.orders.confirmed + empty.orders.pending, 0);
                assert!(no_sellers.sellers.is_empty());
            })
        })
        .await;
}
