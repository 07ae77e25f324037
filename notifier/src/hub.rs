//! The WebSocket hub of one notifier instance: who is connected, which rooms they joined, and the
//! fan-out of each broadcast to the clients allowed to see it.
//!
//! Every client has a bounded outgoing queue (`WS_CLIENT_BUFFER`). Dispatch never waits: when a
//! client's queue is full the client is too slow, so it is dropped (its connection is closed and
//! it may reconnect) rather than slowing everyone else down.
//!
//! Rooms: a client that joined one or more `order-<id>` rooms receives only the events of those
//! orders (stats events are not affected); with no room joined it receives every event its role
//! allows. A join is allowed only for an order the client may see.
//!
//! Stock changes go out as `stock.updated` to ADMINs and to the SELLER of the product, never to
//! CLIENTs, and are not narrowed by rooms.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::ws::Utf8Bytes;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::auth::{Identity, Role};
use crate::bus::Broadcast;
use crate::event::EventData;
use messaging::contracts::{OrderEvent, StockChanged};

/// The WebSocket message type of a stock change.
pub const STOCK_UPDATED: &str = "stock.updated";

/// The order id a room name refers to (`order-<id>`).
pub fn room_order_id(room: &str) -> Option<&str> {
    room.strip_prefix("order-").filter(|id| !id.is_empty())
}

struct Client {
    identity: Identity,
    rooms: HashSet<String>,
    queue: mpsc::Sender<Utf8Bytes>,
    /// Cancelled to close the connection (slow client, shutdown).
    close: CancellationToken,
}

/// What a new connection gets from the hub.
pub struct Registration {
    pub id: u64,
    pub queue: mpsc::Receiver<Utf8Bytes>,
    pub close: CancellationToken,
}

pub struct Hub {
    clients: Mutex<HashMap<u64, Client>>,
    next_id: AtomicU64,
    buffer: usize,
}

impl Hub {
    pub fn new(buffer: usize) -> Self {
        Self {
            clients: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            buffer: buffer.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Client>> {
        // A panic while holding the lock leaves a consistent map (every step is one insert or
        // remove), so carrying on is safe.
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(&self, identity: Identity) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (queue, receiver) = mpsc::channel(self.buffer);
        let close = CancellationToken::new();
        let mut clients = self.lock();
        clients.insert(
            id,
            Client {
                identity,
                rooms: HashSet::new(),
                queue,
                close: close.clone(),
            },
        );
        metrics::gauge!("ws_clients").set(clients.len() as f64);
        Registration {
            id,
            queue: receiver,
            close,
        }
    }

    pub fn unregister(&self, id: u64) {
        let mut clients = self.lock();
        if let Some(client) = clients.remove(&id) {
            client.close.cancel();
        }
        metrics::gauge!("ws_clients").set(clients.len() as f64);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every connection (shutdown).
    pub fn close_all(&self) {
        for client in self.lock().values() {
            client.close.cancel();
        }
    }

    pub fn join(&self, id: u64, room: &str) {
        if let Some(client) = self.lock().get_mut(&id) {
            client.rooms.insert(room.to_owned());
        }
    }

    pub fn leave(&self, id: u64, room: &str) -> bool {
        self.lock()
            .get_mut(&id)
            .is_some_and(|c| c.rooms.remove(room))
    }

    /// Queues a message for one client (replies to its own requests).
    pub fn send_to(&self, id: u64, message: Utf8Bytes) {
        let mut clients = self.lock();
        offer(&mut clients, id, message);
    }

    /// Queues the broadcast's event and stats for every client allowed to see them.
    pub fn dispatch(&self, broadcast: &Broadcast) {
        match &broadcast.event.data {
            EventData::Order(order) => self.dispatch_order(broadcast, order),
            EventData::Stock(stock) => self.dispatch_stock(broadcast, stock),
        }
    }

    fn dispatch_order(&self, broadcast: &Broadcast, data: &OrderEvent) {
        let event = Utf8Bytes::from(
            json!({
                "type": broadcast.event.kind,
                "webhookId": broadcast.webhook_id,
                "timestamp": broadcast.event.timestamp,
                "data": data,
            })
            .to_string(),
        );
        let admin_stats = broadcast.admin_stats.as_ref().map(|stats| {
            Utf8Bytes::from(json!({"type": "ADMIN_STATS_UPDATED", "data": stats}).to_string())
        });
        let seller_stats = broadcast.seller_stats.as_ref().map(|s| {
            (
                s.seller_id.clone(),
                Utf8Bytes::from(json!({"type": "SELLER_STATS_UPDATED", "data": s}).to_string()),
            )
        });
        let room = format!("order-{}", data.order_id);
        let mut clients = self.lock();
        let mut outbox: Vec<(u64, Utf8Bytes)> = Vec::new();
        for (id, client) in clients.iter() {
            let who = &client.identity;
            let allowed = who.sees(data.customer_id.as_deref(), data.seller_id.as_deref());
            let in_focus = client.rooms.is_empty() || client.rooms.contains(&room);
            if allowed && in_focus {
                outbox.push((*id, event.clone()));
            }
            match who.role {
                Role::Admin => outbox.extend(admin_stats.clone().map(|m| (*id, m))),
                Role::Seller => {
                    if let Some((seller, message)) = &seller_stats
                        && who.seller_id.as_ref() == Some(seller)
                    {
                        outbox.push((*id, message.clone()));
                    }
                }
                Role::Client => {}
            }
        }
        for (id, message) in outbox {
            offer(&mut clients, id, message);
        }
    }

    /// A stock change goes out as `stock.updated` to admins and to the product's seller, whatever
    /// rooms they joined (rooms narrow order events only).
    fn dispatch_stock(&self, broadcast: &Broadcast, data: &StockChanged) {
        let message = Utf8Bytes::from(
            json!({
                "type": STOCK_UPDATED,
                "webhookId": broadcast.webhook_id,
                "timestamp": broadcast.event.timestamp,
                "data": data,
            })
            .to_string(),
        );
        let mut clients = self.lock();
        let receivers: Vec<u64> = clients
            .iter()
            .filter(|(_, client)| {
                let who = &client.identity;
                who.role != Role::Client && who.sees(None, data.seller_id.as_deref())
            })
            .map(|(id, _)| *id)
            .collect();
        for id in receivers {
            offer(&mut clients, id, message.clone());
        }
    }
}

/// Puts a message in a client's queue; a full queue drops the client.
fn offer(clients: &mut HashMap<u64, Client>, id: u64, message: Utf8Bytes) {
    let Some(client) = clients.get(&id) else {
        return;
    };
    match client.queue.try_send(message) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            warn!(
                client = id,
                sub = %client.identity.sub,
                "dropping a WebSocket client that does not keep up with its events"
            );
            metrics::counter!("ws_clients_dropped_total", "reason" => "slow").increment(1);
            if let Some(client) = clients.remove(&id) {
                client.close.cancel();
            }
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            info!(client = id, "WebSocket client already gone");
            clients.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{SellerStats, Stats, WebhookEvent};
    use crate::event::EventKind;
    use messaging::contracts::StockChangeReason;

    fn identity(role: Role, sub: &str, seller: Option<&str>) -> Identity {
        Identity {
            sub: sub.into(),
            role,
            seller_id: seller.map(str::to_owned),
        }
    }

    fn broadcast(order: &str, customer: &str, seller: &str) -> Broadcast {
        Broadcast {
            webhook_id: format!("msg_{order}"),
            event: WebhookEvent {
                kind: EventKind::OrderCreated,
                timestamp: "2026-01-01T00:00:00Z".into(),
                data: EventData::Order(OrderEvent {
                    order_id: order.into(),
                    product_id: "p".into(),
                    quantity: 1,
                    customer_id: Some(customer.into()),
                    seller_id: Some(seller.into()),
                    status: "PENDING".into(),
                    reason: None,
                    occurred_at: "2026-01-01T00:00:00Z".into(),
                }),
            },
            admin_stats: Some(Stats::default()),
            seller_stats: Some(SellerStats {
                seller_id: seller.into(),
                stats: Stats::default(),
            }),
        }
    }

    /// `type:<data.field>` of every queued message.
    fn drain(rx: &mut mpsc::Receiver<Utf8Bytes>, field: &str) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            let v: serde_json::Value = serde_json::from_str(m.as_str()).unwrap();
            out.push(format!(
                "{}:{}",
                v["type"].as_str().unwrap(),
                v["data"][field].as_str().unwrap_or("")
            ));
        }
        out
    }

    fn types(rx: &mut mpsc::Receiver<Utf8Bytes>) -> Vec<String> {
        drain(rx, "orderId")
    }

    #[test]
    fn a_slow_client_is_dropped_and_the_others_still_get_everything() {
        let hub = Hub::new(4);
        let mut fast = hub.register(identity(Role::Client, "c1", None));
        let slow = hub.register(identity(Role::Client, "c1", None));
        for i in 0..10 {
            hub.dispatch(&broadcast(&format!("o{i}"), "c1", "s1"));
            // The fast client keeps up; the slow one never reads.
            assert_eq!(types(&mut fast.queue), [format!("order.created:o{i}")]);
        }
        assert!(slow.close.is_cancelled(), "the slow client was not dropped");
        assert!(!fast.close.is_cancelled());
        assert_eq!(hub.len(), 1);
    }

    #[test]
    fn rooms_narrow_the_feed_to_the_joined_orders() {
        let hub = Hub::new(16);
        let mut admin = hub.register(identity(Role::Admin, "a", None));
        hub.join(admin.id, "order-o2");
        hub.dispatch(&broadcast("o1", "c1", "s1"));
        hub.dispatch(&broadcast("o2", "c1", "s1"));
        assert_eq!(
            types(&mut admin.queue),
            [
                "ADMIN_STATS_UPDATED:",
                "order.created:o2",
                "ADMIN_STATS_UPDATED:"
            ]
        );
        assert!(hub.leave(admin.id, "order-o2"));
        hub.dispatch(&broadcast("o3", "c1", "s1"));
        assert_eq!(
            types(&mut admin.queue),
            ["order.created:o3", "ADMIN_STATS_UPDATED:"]
        );
    }

    #[test]
    fn stats_go_to_admins_and_the_events_seller_only() {
        let hub = Hub::new(16);
        let mut s1 = hub.register(identity(Role::Seller, "u", Some("s1")));
        let mut s2 = hub.register(identity(Role::Seller, "v", Some("s2")));
        let mut c2 = hub.register(identity(Role::Client, "c2", None));
        hub.dispatch(&broadcast("o1", "c1", "s1"));
        assert_eq!(
            types(&mut s1.queue),
            ["order.created:o1", "SELLER_STATS_UPDATED:"]
        );
        assert!(types(&mut s2.queue).is_empty());
        assert!(types(&mut c2.queue).is_empty());
        assert_eq!(room_order_id("order-o1"), Some("o1"));
        assert_eq!(room_order_id("order-"), None);
        assert_eq!(room_order_id("seller-1"), None);
    }

    fn stock(product: &str, seller: Option<&str>) -> Broadcast {
        Broadcast {
            webhook_id: format!("msg_stock_{product}"),
            event: WebhookEvent {
                kind: EventKind::StockChanged,
                timestamp: "2026-01-01T00:00:00Z".into(),
                data: EventData::Stock(StockChanged {
                    product_id: product.into(),
                    seller_id: seller.map(str::to_owned),
                    stock: 3,
                    delta: -1,
                    reason: StockChangeReason::Reserved,
                }),
            },
            admin_stats: None,
            seller_stats: None,
        }
    }

    fn stock_updates(rx: &mut mpsc::Receiver<Utf8Bytes>) -> Vec<String> {
        drain(rx, "productId")
    }

    #[test]
    fn stock_changes_go_to_admins_and_the_products_seller_whatever_their_rooms() {
        let hub = Hub::new(16);
        let mut admin = hub.register(identity(Role::Admin, "a", None));
        hub.join(admin.id, "order-o2");
        let mut s1 = hub.register(identity(Role::Seller, "u", Some("s1")));
        let mut s2 = hub.register(identity(Role::Seller, "v", Some("s2")));
        let mut client = hub.register(identity(Role::Client, "s1", None));
        hub.dispatch(&stock("p1", Some("s1")));
        hub.dispatch(&stock("p0", None));
        assert_eq!(
            stock_updates(&mut admin.queue),
            ["stock.updated:p1", "stock.updated:p0"]
        );
        assert_eq!(stock_updates(&mut s1.queue), ["stock.updated:p1"]);
        assert!(stock_updates(&mut s2.queue).is_empty());
        assert!(stock_updates(&mut client.queue).is_empty());
    }
}
