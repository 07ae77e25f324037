//! The broker's management HTTP API, as the tests (and operators) read it.

use anyhow::Result;
use serde_json::Value;

pub struct Management {
    base: String,
    http: reqwest::Client,
}

impl Management {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str) -> Result<Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .basic_auth("guest", Some("guest"))
            .send()
            .await?;
        Ok(response.error_for_status()?.json().await?)
    }

    /// Connections of `vhost`: (name, connection name as the client set it).
    pub async fn connections(&self, vhost: &str) -> Result<Vec<(String, String)>> {
        let all = self
            .get(&format!("/api/vhosts/{vhost}/connections"))
            .await?;
        Ok(all
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let name = c["name"].as_str().unwrap_or_default().to_owned();
                let client = c["client_properties"]["connection_name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                (name, client)
            })
            .collect())
    }

    /// Closes a connection as an operator would (the client sees a connection error).
    pub async fn close_connection(&self, name: &str) -> Result<()> {
        let encoded = name.replace(' ', "%20").replace('>', "%3E");
        self.http
            .delete(format!("{}/api/connections/{encoded}", self.base))
            .basic_auth("guest", Some("guest"))
            .header("X-Reason", "test closes the connection")
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// Consumers of `vhost`: (queue, consumer tag, prefetch).
    pub async fn consumers(&self, vhost: &str) -> Result<Vec<(String, String, i64)>> {
        let all = self.get(&format!("/api/consumers/{vhost}")).await?;
        Ok(all
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let queue = c["queue"]["name"].as_str().unwrap_or_default().to_owned();
                let tag = c["consumer_tag"].as_str().unwrap_or_default().to_owned();
                (queue, tag, c["prefetch_count"].as_i64().unwrap_or(-1))
            })
            .collect())
    }
}
