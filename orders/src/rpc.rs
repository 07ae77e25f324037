//! The `orders_rpc` consumer: the gateway's reads, answered from the store — `orders.get` (an
//! order with its history) and the sales reports `orders.report.summary` and
//! `orders.report.sellers`.
//!
//! Each read runs in one read transaction (on PostgreSQL a read-only `REPEATABLE READ` one),
//! so an order and its history, or the several sums of a report, come from the same snapshot
//! even while the saga writes.

use messaging::broker::Broker;
use messaging::contracts::{Found, GetById, ReportQuery};
use messaging::rpc::answer;
use messaging::topology::keys;
use messaging::{HandleError, Incoming, MessageHandler};

use crate::store::Store;

#[derive(Clone)]
pub struct RpcHandler {
    pub db: Store,
    pub broker: Broker,
}

/// What a failed read's error names.
const STORE: &str = "orders store";

impl MessageHandler for RpcHandler {
    async fn handle(&self, msg: Incoming) -> Result<(), HandleError> {
        match msg.meta.kind.as_str() {
            keys::ORDERS_GET => {
                let GetById { id } = msg.json()?;
                let found = self.db.get_order(id).await.map(|found| Found { found });
                answer(&self.broker, &msg, STORE, found).await
            }
            keys::ORDERS_REPORT_SUMMARY => {
                let query: ReportQuery = msg.json()?;
                let summary = self.db.sales_summary(query).await;
                answer(&self.broker, &msg, STORE, summary).await
            }
            keys::ORDERS_REPORT_SELLERS => {
                let query: ReportQuery = msg.json()?;
                let sellers = self.db.sellers_report(query).await;
                answer(&self.broker, &msg, STORE, sellers).await
            }
            other => Err(HandleError::Poison(format!(
                "orders_rpc does not take {other:?} requests"
            ))),
        }
    }
}
