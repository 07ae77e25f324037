//! The `orders_rpc` consumer: `orders.get` requests from the gateway.

use messaging::broker::Broker;
use messaging::contracts::{Found, GetById};
use messaging::topology::keys;
use messaging::{Db, HandleError, Incoming, MessageHandler};

use crate::store;

#[derive(Clone)]
pub struct RpcHandler {
    pub db: Db,
    pub broker: Broker,
}

impl RpcHandler {}

impl MessageHandler for RpcHandler {
    async fn handle(&self, msg: Incoming) -> Result<(), HandleError> {
        if msg.meta.kind != keys::ORDERS_GET {
            return Err(HandleError::Poison(format!(
                "orders_rpc does not take {:?} requests",
                msg.meta.kind
            )));
        }
        let GetById { id } = msg.json()?;
        let found = self
            .db
            .call(move |conn| store::get_order(conn, &id))
            .await
            .map_err(|e| HandleError::Retry(format!("orders.db: {e}")))?;
        messaging::rpc::reply(&self.broker, &msg, &Found { found }).await
    }
}
