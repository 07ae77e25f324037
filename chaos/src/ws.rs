//! What the ADMIN WebSocket client was shown: it connects to the notifier's `/ws` with an ADMIN
//! token, as the live page would (`testkit::ws::WsClient::reconnecting`, which reconnects if the
//! connection drops: events pushed while it is away are not replayed), and each order event it
//! received is counted here by `webhookId`.

use std::collections::HashMap;

use serde_json::Value;

/// One webhook as the WebSocket client saw it.
#[derive(Debug, Clone, Default)]
pub struct Shown {
    pub event_type: String,
    pub order_id: String,
    pub times: u32,
}

#[derive(Debug, Default, Clone)]
pub struct WsReport {
    pub by_webhook: HashMap<String, Shown>,
    pub connects: u32,
    pub other_messages: u64,
}

impl WsReport {
    /// Counts `messages` (every JSON message received, in order) of a client that connected
    /// `connects` times.
    pub fn tally(messages: &[Value], connects: u32) -> Self {
        let mut report = Self {
            connects,
            ..Self::default()
        };
        for value in messages {
            let kind = value["type"].as_str().unwrap_or_default();
            match (kind.starts_with("order."), value["webhookId"].as_str()) {
                (true, Some(id)) => {
                    let shown = report.by_webhook.entry(id.to_owned()).or_default();
                    shown.event_type = kind.to_owned();
                    shown.order_id = value["data"]["orderId"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    shown.times += 1;
                }
                _ => report.other_messages += 1,
            }
        }
        report
    }
}
