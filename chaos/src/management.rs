//! The private node's (or cluster's) management HTTP API, as an operator would read it: queue
//! counts, quorum members, the names of the connected clients and the nodes they are on. For a
//! cluster every node's API is known, and a call goes to the first node that answers (one of
//! them may be down on purpose).

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
    pub fn new(base: &str, http: reqwest::Client) -> Self {
        Self::any(vec![base.to_owned()], http)
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

    /// Every queue of the default vhost with its counts (and quorum members).
    pub async fn queues(&self) -> Result<Vec<QueueStats>> {
        self.get("/api/queues/%2f?columns=name,messages_ready,messages_unacknowledged,consumers,members,online,leader")
            .await
    }

    /// The names of the cluster's nodes that run.
    pub async fn running_nodes(&self) -> Result<Vec<String>> {
        let all: Vec<serde_json::Value> = self.get("/api/nodes?columns=name,running").await?;
        Ok(all
            .iter()
            .filter(|n| n["running"].as_bool() == Some(true))
            .filter_map(|n| n["name"].as_str())
            .map(str::to_owned)
            .collect())
    }

    /// The node the client named `connection_name` is connected to.
    pub async fn node_of_connection(&self, connection_name: &str) -> Result<Option<String>> {
        let all: Vec<serde_json::Value> = self.get("/api/connections").await?;
        Ok(all
            .iter()
            .find(|c| c["client_properties"]["connection_name"].as_str() == Some(connection_name))
            .and_then(|c| c["node"].as_str())
            .map(str::to_owned))
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
