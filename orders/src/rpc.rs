//! The `orders_rpc` consumer: the gateway's reads, answered from the store — `orders.get` (an
//! order with its history) and the sales reports `orders.report.summary` and
//! `orders.report.sellers`.
//!
//! Each read runs in one read transaction (on PostgreSQL a read-only `REPEATABLE READ` one),
//! so an order and its history, or the several sums of a report, come from the same snapshot
//! even while the saga writes.

use messaging::broker::Broker;
use messaging::contracts::{Found, GetById, ReportQuery};
use messaging::store::DbError;
use messaging::topology::keys;
use messaging::{HandleError, Incoming, MessageHandler};
use serde::Serialize;

use crate::store::Store;

#[derive(Clone)]
pub struct RpcHandler {
    pub db: Store,
    pub broker: Broker,
}

impl RpcHandler {
    /// Replies with what the read returned.
    async fn answer<R: Serialize>(
        &self,
        msg: &Incoming,
        read: Result<R, DbError>,
    ) -> Result<(), HandleError> {
        let reply = read.map_err(|e| HandleError::Retry(format!("orders store: {e}")))?;
        messaging::rpc::reply(&self.broker, msg, &reply).await
    }
}

impl MessageHandler for RpcHandler {
    async fn handle(&self, msg: Incoming) -> Result<(), HandleError> {
        match msg.meta.kind.as_str() {
            keys::ORDERS_GET => {
                let GetById { id } = msg.json()?;
                let found = self.db.get_order(id).await.map(|found| Found { found });
                self.answer(&msg, found).await
            }
            keys::ORDERS_REPORT_SUMMARY => {
                let query: ReportQuery = msg.json()?;
                let summary = self.db.sales_summary(query).await;
                self.answer(&msg, summary).await
            }
            keys::ORDERS_REPORT_SELLERS => {
                let query: ReportQuery = msg.json()?;
                let sellers = self.db.sellers_report(query).await;
                self.answer(&msg, sellers).await
            }
            other => Err(HandleError::Poison(format!(
                "orders_rpc does not take {other:?} requests"
            ))),
        }
    }
}
