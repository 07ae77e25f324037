//! The private node's management HTTP API, as an operator would read it: queue counts and the
//! names of the connected clients.

use anyhow::Result;
use serde::Deserialize;

/// A queue's counts. They are absent (not zero) until the node has collected statistics for
/// the queue, e.g. right after a restart; absent must never read as "empty".
#[derive(Debug, Clone, Deserialize)]
pub struct QueueStats {
    pub name: String,
    pub messages_ready: Option<i64>,
    pub messages_unacknowledged: Option<i64>,
    pub consumers: Option<i64>,
}

impl QueueStats {
    /// Ready + unacked, or `None` while the counts are not known.
    pub fn in_queue(&self) -> Option<i64> {
        Some(self.messages_ready? + self.messages_unacknowledged?)
    }
}

pub struct Management {
    base: String,
    http: reqwest::Client,
}

impl Management {
    pub fn new(base: &str, http: reqwest::Client) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
        }
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .basic_auth("guest", Some("guest"))
            .send()
            .await?;
        Ok(response.error_for_status()?.json().await?)
    }

    /// Every queue of the default vhost with its counts.
    pub async fn queues(&self) -> Result<Vec<QueueStats>> {
        self.get("/api/queues/%2f?columns=name,messages_ready,messages_unacknowledged,consumers")
            .await
    }

    /// Every consumer: (queue, consumer tag, prefetch).
    pub async fn consumers(&self) -> Result<Vec<(String, String, i64)>> {
        let all: Vec<serde_json::Value> = self.get("/api/consumers/%2f").await?;
        Ok(all
            .iter()
            .map(|c| {
                (
                    c["queue"]["name"].as_str().unwrap_or_default().to_owned(),
                    c["consumer_tag"].as_str().unwrap_or_default().to_owned(),
                    c["prefetch_count"].as_i64().unwrap_or(-1),
                )
            })
            .collect())
    }

    /// The `connection_name` every connected client gave.
    pub async fn connection_names(&self) -> Result<Vec<String>> {
        let all: Vec<serde_json::Value> = self.get("/api/connections").await?;
        Ok(all
            .iter()
            .filter_map(|c| c["client_properties"]["connection_name"].as_str())
            .map(str::to_owned)
            .collect())
    }
}
