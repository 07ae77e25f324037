//! RabbitMQ's management HTTP API, as the tests and an operator read it: queue counts and quorum
//! members, connections (and closing one), consumers, the running nodes of a cluster.
//!
//! For a cluster every node's API is known ([`Management::any`]), and a call goes to the first
//! node that answers (one of them may be down on purpose).

use anyhow::Result;
use serde::Deserialize;
use serde_json::Value;

/// The default vhost `/`, as it goes into an API path.
pub const DEFAULT_VHOST: &str = "%2f";

/// A queue's counts. They are absent (not zero) until the node has collected statistics for
/// the queue, e.g. right after a restart; absent must never read as "empty".
#[derive(Debug, Clone, Deserialize)]
pub struct QueueStats {
    pub name: String,
    pub messages_ready: Option<i64>,
    pub messages_unacknowledged: Option<i64>,
    pub consumers: Option<i64>,
    /// Quorum queues: the nodes holding a member, those whose member is online, the leader.
    #[serde(default)]
    pub members: Option<Vec<String>>,
    #[serde(default)]
    pub online: Option<Vec<String>>,
    #[serde(default)]
    pub leader: Option<String>,
}

impl QueueStats {
    /// Ready + unacked, or `None` while the counts are not known.
    pub fn in_queue(&self) -> Option<i64> {
        Some(self.messages_ready? + self.messages_unacknowledged?)
    }
}

pub struct Management {
    bases: Vec<String>,
    http: reqwest::Client,
}

impl Management {
    /// The API at `base` (e.g. `http://127.0.0.1:15672`), as guest.
    pub fn new(base: &str) -> Self {
        Self::any(vec![base.to_owned()], reqwest::Client::new())
    }

    /// The API of several nodes of one cluster: each call is tried on them in order.
    pub fn any(bases: Vec<String>, http: reqwest::Client) -> Self {
        Self {
            bases: bases
                .into_iter()
                .map(|b| b.trim_end_matches('/').to_owned())
                .collect(),
            http,
        }
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let mut last = None;
        for base in &self.bases {
            let response = self
                .http
                .get(format!("{base}{path}"))
                .basic_auth("guest", Some("guest"))
                .send()
                .await;
            match response.and_then(|r| r.error_for_status()) {
                Ok(r) => return Ok(r.json().await?),
                Err(e) => last = Some(e),
            }
        }
        match last {
            Some(e) => Err(e.into()),
            None => anyhow::bail!("no management API to ask"),
        }
    }

    /// Every queue of `vhost` with its counts (and quorum members).
    pub async fn queues(&self, vhost: &str) -> Result<Vec<QueueStats>> {
        self.get(&format!("/api/queues/{vhost}?columns=name,messages_ready,messages_unacknowledged,consumers,members,online,leader"))
            .await
    }

    /// The names of the cluster's nodes that run.
    pub async fn running_nodes(&self) -> Result<Vec<String>> {
        let all: Vec<Value> = self.get("/api/nodes?columns=name,running").await?;
        Ok(all
            .iter()
            .filter(|n| n["running"].as_bool() == Some(true))
            .filter_map(|n| n["name"].as_str())
            .map(str::to_owned)
            .collect())
    }

    /// The node the client named `connection_name` is connected to.
    pub async fn node_of_connection(&self, connection_name: &str) -> Result<Option<String>> {
        let all: Vec<Value> = self.get("/api/connections").await?;
        Ok(all
            .iter()
            .find(|c| c["client_properties"]["connection_name"].as_str() == Some(connection_name))
            .and_then(|c| c["node"].as_str())
            .map(str::to_owned))
    }

    /// The `connection_name` every connected client gave, in every vhost.
    pub async fn connection_names(&self) -> Result<Vec<String>> {
        let all: Vec<Value> = self.get("/api/connections").await?;
        Ok(all
            .iter()
            .filter_map(|c| c["client_properties"]["connection_name"].as_str())
            .map(str::to_owned)
            .collect())
    }

    /// Connections of `vhost`: (name, connection name as the client set it).
    pub async fn connections(&self, vhost: &str) -> Result<Vec<(String, String)>> {
        let all: Value = self
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

    /// Consumers of `vhost`: (queue, consumer tag, prefetch).
    pub async fn consumers(&self, vhost: &str) -> Result<Vec<(String, String, i64)>> {
        let all: Value = self.get(&format!("/api/consumers/{vhost}")).await?;
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

    /// Closes a connection as an operator would (the client sees a connection error), through
    /// the first node's API.
    pub async fn close_connection(&self, name: &str) -> Result<()> {
        let base = self
            .bases
            .first()
            .ok_or_else(|| anyhow::anyhow!("no management API to ask"))?;
        let encoded = name.replace(' ', "%20").replace('>', "%3E");
        self.http
            .delete(format!("{base}/api/connections/{encoded}"))
            .basic_auth("guest", Some("guest"))
            .header("X-Reason", "test closes the connection")
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}
