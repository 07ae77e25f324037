//! The `orders_rpc` consumer: the gateway's reads, answered from orders.db — `orders.get` (an
//! order with its history) and the sales reports `orders.report.summary` and
//! `orders.report.sellers`.
//!
//! Each read runs in one read transaction, so an order and its history, or the several sums of
//! a report, come from the same snapshot even while the saga writes.

use deadpool_sqlite::rusqlite::{self, Connection};
use messaging::broker::Broker;
use messaging::contracts::{Found, GetById, ReportQuery};
use messaging::topology::keys;
use messaging::{Db, HandleError, Incoming, MessageHandler};
use serde::Serialize;

use crate::store;

#[derive(Clone)]
pub struct RpcHandler {
    pub db: Db,
    pub broker: Broker,
}

impl RpcHandler {
    /// Runs `read` in a read transaction and replies with what it returns.
    async fn answer<R, F>(&self, msg: &Incoming, read: F) -> Result<(), HandleError>
    where
        R: Serialize + Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        let reply = self
            .db
            .call(move |conn| {
                let snapshot = conn.transaction()?;
                read(&snapshot)
            })
            .await
            .map_err(|e| HandleError::Retry(format!("orders.db: {e}")))?;
        messaging::rpc::reply(&self.broker, msg, &reply).await
    }
}

impl MessageHandler for RpcHandler {
    async fn handle(&self, msg: Incoming) -> Result<(), HandleError> {
        match msg.meta.kind.as_str() {
            keys::ORDERS_GET => {
                let GetById { id } = msg.json()?;
                self.answer(&msg, move |conn| {
                    let found = store::get_order(conn, &id)?;
                    Ok(Found { found })
                })
                .await
            }
            keys::ORDERS_REPORT_SUMMARY => {
                let query: ReportQuery = msg.json()?;
                self.answer(&msg, move |conn| store::sales_summary(conn, &query))
                    .await
            }
            keys::ORDERS_REPORT_SELLERS => {
                let query: ReportQuery = msg.json()?;
                self.answer(&msg, move |conn| store::sellers_report(conn, &query))
                    .await
            }
            other => Err(HandleError::Poison(format!(
                "orders_rpc does not take {other:?} requests"
            ))),
        }
    }
}
