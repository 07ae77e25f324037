//! The `products_queue` consumer: `product.reserveStock` and `product.releaseStock`.

use messaging::contracts::{ReleaseStock, ReserveStock};
use messaging::topology::keys;
use messaging::{HandleError, Incoming, MessageHandler};
use tracing::info;

use crate::store::{Reserved, Store};

#[derive(Clone)]
pub struct StockHandler {
    pub store: Store,
}

impl StockHandler {
    async fn reserve(&self, msg: Incoming) -> Result<(), HandleError> {
        let req: ReserveStock = msg.json()?;
        if req.quantity == 0 {
            return Err(HandleError::Poison("reserve of quantity 0".into()));
        }
        let (order_id, product_id, quantity) =
            (req.order_id.clone(), req.product_id.clone(), req.quantity);
        let outcome = self.store.reserve(msg, req).await.map_err(retry)?;
        let label = match &outcome {
            Reserved::Reserved => {
                info!(%order_id, %product_id, quantity, "stock reserved");
                "reserved"
            }
            Reserved::Rejected(reason) => {
                info!(%order_id, %product_id, quantity, %reason, "stock reservation refused");
                "rejected"
            }
            Reserved::Duplicate => {
                info!(%order_id, "reservation already handled; duplicate ignored");
                "duplicate"
            }
        };
        metrics::counter!("stock_reservations_total", "outcome" => label).increment(1);
        Ok(())
    }

    async fn release(&self, msg: Incoming) -> Result<(), HandleError> {
        let req: ReleaseStock = msg.json()?;
        let order_id = req.order_id.clone();
        let released = self.store.release(msg, req).await.map_err(retry)?;
        info!(%order_id, released, "stock release handled");
        Ok(())
    }
}

impl MessageHandler for StockHandler {
    async fn handle(&self, msg: Incoming) -> Result<(), HandleError> {
        match msg.meta.kind.as_str() {
            keys::RESERVE_STOCK => self.reserve(msg).await,
            keys::RELEASE_STOCK => self.release(msg).await,
            other => Err(HandleError::Poison(format!(
                "products_queue does not take {other:?} messages"
            ))),
        }
    }
}

/// A database error is worth retrying (busy, disk full for a while); the message stays.
fn retry(e: messaging::store::DbError) -> HandleError {
    HandleError::Retry(format!("products database: {e}"))
}
