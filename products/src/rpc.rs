//! The `products_rpc` consumer: `products.get` and `products.create` requests from the gateway.

use messaging::broker::Broker;
use messaging::contracts::{CreateProduct, Found, GetById};
use messaging::topology::keys;
use messaging::{HandleError, Incoming, MessageHandler};
use tracing::info;

use crate::store::Store;

#[derive(Clone)]
pub struct RpcHandler {
    pub store: Store,
    pub broker: Broker,
}

/// What a failed read's error names.
const STORE: &str = "products database";

impl MessageHandler for RpcHandler {
    async fn handle(&self, msg: Incoming) -> Result<(), HandleError> {
        match msg.meta.kind.as_str() {
            keys::PRODUCTS_GET => {
                let GetById { id } = msg.json()?;
                let found = self
                    .store
                    .get_product(id)
                    .await
                    .map(|found| Found { found });
                messaging::rpc::answer(&self.broker, &msg, STORE, found).await
            }
            keys::PRODUCTS_CREATE => {
                let new: CreateProduct = msg.json()?;
                let request_id = msg.meta.message_id.clone();
                let traceparent = msg.meta.traceparent.clone();
                let product = self
                    .store
                    .create_product(request_id, new, traceparent)
                    .await;
                if let Ok(product) = &product {
                    info!(product_id = %product.id, stock = product.stock, "product created");
                }
                messaging::rpc::answer(&self.broker, &msg, STORE, product).await
            }
            other => Err(HandleError::Poison(format!(
                "products_rpc does not take {other:?} requests"
            ))),
        }
    }
}
