//! A private three-node RabbitMQ cluster: three [`BrokerNode`]s with their own node names
//! (`clu<amqp port>@localhost`), AMQP, management and distribution ports (free ports picked at
//! run time) and data directories, sharing one epmd of the harness's own (clustered nodes must
//! find each other through the same epmd) and root's Erlang cookie. It never touches the
//! shared broker on 5672.
//!
//! The nodes join by classic-config peer discovery, as in `compose.cluster.yaml`: every node
//! lists all three, the first is started alone and forms the cluster, the other two start
//! together and join it on their first boot. A node restarted after a SIGKILL keeps its data
//! directory and rejoins by itself. The approach follows `broker-node.md` of the team.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use tracing::info;

use crate::broker_node::{self, BrokerNode, NodePorts, NodeSetup};
use crate::child::Proc;
use crate::management::Management;
use crate::ports;

/// Nodes in the cluster: a quorum queue of three keeps serving with one node down.
pub const SIZE: usize = 3;
/// How long the nodes may take to see each other as running after they booted.
const FORMATION_WAIT: Duration = Duration::from_secs(90);

pub struct Cluster {
    // Field order is drop order: the nodes first, then the epmd they registered with.
    pub nodes: Vec<BrokerNode>,
    epmd: Proc,
    pub epmd_port: u16,
}

impl Cluster {
    /// Writes the configuration of [`SIZE`] nodes under `dir`/n1…n3, each with the
    /// `rabbitmq.conf` lines `conf` and the peer discovery (nothing is started yet).
    pub fn init(dir: &Path, conf: Vec<String>) -> Result<Self> {
        let epmd_port = ports::free_port()?;
        let ports: Vec<NodePorts> = (0..SIZE)
            .map(|_| {
                Ok(NodePorts {
                    epmd: epmd_port,
                    ..NodePorts::free()?
                })
            })
            .collect::<std::io::Result<_>>()?;
        let names: Vec<String> = ports
            .iter()
            .map(|p| format!("clu{}@localhost", p.amqp))
            .collect();
        let mut node_conf = conf;
        node_conf.extend([
            "cluster_formation.peer_discovery_backend = classic_config".to_owned(),
            // A node whose peers are all down waits for them a little, then boots alone.
            "cluster_formation.discovery_retry_limit = 10".into(),
            "cluster_formation.discovery_retry_interval = 500".into(),
        ]);
        node_conf.extend(
            names.iter().enumerate().map(|(i, name)| {
                format!("cluster_formation.classic_config.nodes.{} = {name}", i + 1)
            }),
        );
        let nodes = ports
            .into_iter()
            .zip(&names)
            .enumerate()
            .map(|(i, (ports, name))| {
                let setup = NodeSetup {
                    name: name.clone(),
                    extra_conf: node_conf.clone(),
                    own_epmd: false,
                };
                BrokerNode::init_with(&dir.join(format!("n{}", i + 1)), ports, setup)
            })
            .collect::<Result<Vec<_>, _>>()?;
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            nodes,
            epmd: broker_node::epmd_process(epmd_port, &dir.join("epmd.log")),
            epmd_port,
        })
    }

    /// Starts the epmd and the nodes and waits until every node sees all three running.
    pub async fn start(&mut self) -> Result<()> {
        broker_node::start_epmd(&mut self.epmd, self.epmd_port).await?;
        let started = Instant::now();
        let (first, others) = self
            .nodes
            .split_first_mut()
            .context("a cluster without nodes")?;
        first.start().await.context("start cluster node 1")?;
        futures::future::try_join_all(others.iter_mut().map(BrokerNode::start))
            .await
            .context("start cluster nodes 2 and 3")?;
        self.wait_formed(FORMATION_WAIT).await?;
        info!(boot = ?started.elapsed(), "cluster formed");
        Ok(())
    }

    /// Waits until the management API reports every node running.
    pub async fn wait_formed(&self, wait: Duration) -> Result<()> {
        let mgmt = self.management(reqwest::Client::new());
        let deadline = Instant::now() + wait;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Ok(running) = mgmt.running_nodes().await {
                if self.nodes.iter().all(|n| running.contains(&n.node_name)) {
                    return Ok(());
                }
                seen = running;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        bail!(
            "the cluster did not form within {wait:?}: running {seen:?}, expected {:?}",
            self.node_names()
        )
    }

    pub fn node_names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.node_name.clone()).collect()
    }

    /// `AMQP_URL` for the services: every node, comma-separated.
    pub fn amqp_urls(&self) -> String {
        self.nodes
            .iter()
            .map(BrokerNode::amqp_url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The management API of every node; a call goes to the first that answers.
    pub fn management(&self, http: reqwest::Client) -> Management {
        Management::any(
            self.nodes.iter().map(BrokerNode::management_url).collect(),
            http,
        )
    }

    /// The index of the node named `name` (`clu…@localhost`).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.node_name == name)
    }

    /// SIGKILLs node `i` (0-based) and waits until its ports are closed.
    pub async fn sigkill(&mut self, i: usize) -> Result<()> {
        self.node_mut(i)?.sigkill().await?;
        Ok(())
    }

    /// Starts node `i` again; returns when it accepted AMQP connections.
    pub async fn restart(&mut self, i: usize) -> Result<(Instant, SystemTime)> {
        Ok(self.node_mut(i)?.start().await?)
    }

    fn node_mut(&mut self, i: usize) -> Result<&mut BrokerNode> {
        self.nodes
            .get_mut(i)
            .with_context(|| format!("the cluster has no node {}", i + 1))
    }

    /// Every port of the cluster.
    pub fn ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .nodes
            .iter()
            .flat_map(|n| [n.ports.amqp, n.ports.management, n.ports.dist])
            .collect();
        ports.push(self.epmd_port);
        ports
    }
}
