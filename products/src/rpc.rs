//! The `products_rpc` consumer: `products.get` and `products.create` requests from the gateway.

use messaging::broker::Broker;
use messaging::contracts::{CreateProduct, Found, GetById};
use messaging::topology::keys;
use messaging::{Db, HandleError, Incoming, MessageHandler};
use tracing::info;

use crate::store;

#[derive(Clone)]
pub struct RpcHandler {
    pub db: Db,
    pub broker: Broker,
}

impl RpcHandler {}

impl MessageHandler for RpcHandler {
    async fn handle(&self, msg: Incoming) -> Result<(), HandleError> {
        match msg.meta.kind.as_str() {
            keys::PRODUCTS_GET => {
                let GetById { id } = msg.json()?;
                let found = self
                    .db
                    .call(move |conn| store::get_product(conn, &id))
                    .await
                    .map_err(retry)?;
                messaging::rpc::reply(&self.broker, &msg, &Found { found }).await
            }
            keys::PRODUCTS_CREATE => {
                let new: CreateProduct = msg.json()?;
                let request_id = msg.meta.message_id.clone();
                let traceparent = msg.meta.traceparent.clone();
                let product = self
                    .db
                    .write(move |tx| {
                        store::create_product(tx, &request_id, &new, traceparent.as_deref())
                    })
                    .await
                    .map_err(retry)?;
                info!(product_id = %product.id, stock = product.stock, "product created");
                messaging::rpc::reply(&self.broker, &msg, &product).await
            }
            other => Err(HandleError::Poison(format!(
                "products_rpc does not take {other:?} requests"
            ))),
        }
    }
}

fn retry(e: messaging::store::DbError) -> HandleError {
    HandleError::Retry(format!("products.db: {e}"))
}
