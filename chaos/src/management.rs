//! The private node's management HTTP API, as an operator would read it: queue counts and the
//! names of the connected clients.

use anyhow::Result;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct QueueStats {
    pub name: String,
    #[serde(default)]
    pub messages_ready: i64,
    #[serde(default)]
    pub messages_unacknowledged: i64,
    #[serde(default)]
    pub consumers: i64,
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
