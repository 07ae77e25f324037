//! A private RabbitMQ node: own node name, AMQP, distribution, management and epmd ports, own
//! data directory, management plugin enabled. It never touches the broker on 5672/15672.
//!
//! The node runs in the foreground of Debian's `/usr/lib/rabbitmq/bin/rabbitmq-server` (not the
//! `/usr/sbin` wrapper, which switches user and Erlang cookie when run as root) in a process
//! group of its own, so a SIGKILL of the group kills the node at once, as a crash would. The
//! node's epmd is started by the harness on its own port, so it is ours to kill too (an epmd
//! started by the node would outlive it). The approach follows `broker-node.md` of the team.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use tracing::info;

use crate::processes::{self, Proc, ProcessError, Spec};

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
/// The broker settings compose ships, so that the chaos runs against the broker as configured in
/// production (its WAL size above all); the definitions line is left out, the services declare
/// their topology themselves.
const SHIPPED_CONF: &str = include_str!("../../deploy/rabbitmq/rabbitmq.conf");
/// First boot (with the management plugin) takes 5–9 s, a restart after SIGKILL 7–8 s on 2 cores.
const BOOT_WAIT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("broker node directory {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("the broker did not let go of port {0} after SIGKILL")]
    PortStillOpen(u16),
}

/// The ports of the node, all on 127.0.0.1.
#[derive(Debug, Clone, Copy)]
pub struct NodePorts {
    pub amqp: u16,
    pub management: u16,
    pub dist: u16,
    pub epmd: u16,
}

impl NodePorts {
    pub fn free() -> std::io::Result<Self> {
        Ok(Self {
            amqp: processes::free_port()?,
            management: processes::free_port()?,
            dist: processes::free_port()?,
            epmd: processes::free_port()?,
        })
    }
}

/// What sets a node apart beyond its ports: its name, extra `rabbitmq.conf` lines (a cluster's
/// peer discovery) and whether it runs an epmd of its own (a cluster's nodes share one, which
/// the cluster starts).
#[derive(Debug, Clone)]
pub struct NodeSetup {
    pub name: String,
    pub extra_conf: Vec<String>,
    pub own_epmd: bool,
}

pub struct BrokerNode {
    pub ports: NodePorts,
    pub node_name: String,
    dir: PathBuf,
    epmd: Option<Proc>,
    server: Proc,
    /// When the node last started accepting AMQP connections.
    pub up_since: Option<(Instant, SystemTime)>,
}

impl BrokerNode {
    /// Writes the configuration of a standalone node under `dir` (nothing is started yet).
    pub fn init(dir: &Path, ports: NodePorts) -> Result<Self, NodeError> {
        let setup = NodeSetup {
            name: format!("chaos{}@localhost", ports.amqp),
            extra_conf: Vec::new(),
            own_epmd: true,
        };
        Self::init_with(dir, ports, setup)
    }

    /// Writes the node's configuration under `dir` (nothing is started yet).
    pub fn init_with(dir: &Path, ports: NodePorts, setup: NodeSetup) -> Result<Self, NodeError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| NodeError::Dir { path, source }
        };
        for sub in ["log", "mnesia"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(io(dir))?;
        }
        let conf = [
            format!("listeners.tcp.default = 127.0.0.1:{}", ports.amqp),
            format!("management.tcp.port = {}", ports.management),
            "management.tcp.ip = 127.0.0.1".into(),
            "disk_free_limit.absolute = 50MB".into(),
            // Counts in the management API settle faster (the default is 5 s).
            "collect_statistics_interval = 1000".into(),
            shipped_settings(),
        ]
        .into_iter()
        .chain(setup.extra_conf)
        .collect::<Vec<_>>()
        .join("\n");
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(io(&path))
        };
        write("rabbitmq.conf", &conf)?;
        write("enabled_plugins", "[rabbitmq_management].\n")?;
        // Must exist, or /etc/rabbitmq/rabbitmq-env.conf is read.
        write("rabbitmq-env.conf", "")?;

        let node_name = setup.name;
        let d = |p: &str| dir.join(p).display().to_string();
        let env: BTreeMap<String, String> = [
            ("RABBITMQ_NODENAME", node_name.clone()),
            ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".into()),
            ("RABBITMQ_NODE_PORT", ports.amqp.to_string()),
            ("RABBITMQ_DIST_PORT", ports.dist.to_string()),
            ("ERL_EPMD_PORT", ports.epmd.to_string()),
            ("ERL_EPMD_ADDRESS", "127.0.0.1".into()),
            ("RABBITMQ_BASE", dir.display().to_string()),
            ("RABBITMQ_MNESIA_BASE", d("mnesia")),
            ("RABBITMQ_LOG_BASE", d("log")),
            ("RABBITMQ_PID_FILE", d("node.pid")),
            ("RABBITMQ_CONFIG_FILE", d("rabbitmq.conf")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins")),
            ("RABBITMQ_CONF_ENV_FILE", d("rabbitmq-env.conf")),
            ("RABBITMQ_ADVANCED_CONFIG_FILE", d("advanced.config")),
            (
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}".into(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let epmd = setup
            .own_epmd
            .then(|| epmd_process(ports.epmd, &dir.join("epmd.log")));
        let server = Proc::new(Spec {
            name: "rabbitmq".into(),
            program: SERVER.into(),
            args: Vec::new(),
            env,
            log: dir.join("server.log"),
        });
        Ok(Self {
            ports,
            node_name,
            dir: dir.to_path_buf(),
            epmd,
            server,
            up_since: None,
        })
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.ports.amqp)
    }

    pub fn management_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.management)
    }

    /// Starts the node (and its epmd, the first time) and waits until it accepts AMQP
    /// connections and its management API listens. Returns when it started accepting.
    pub async fn start(&mut self) -> Result<(Instant, SystemTime), NodeError> {
        if let Some(epmd) = &mut self.epmd {
            start_epmd(epmd, self.ports.epmd).await?;
        }
        let _ = std::fs::remove_file(self.dir.join("node.pid"));
        let started = Instant::now();
        self.server.start()?;
        processes::wait_listening("rabbitmq (AMQP)", self.ports.amqp, BOOT_WAIT).await?;
        let up = (Instant::now(), SystemTime::now());
        processes::wait_listening("rabbitmq (management)", self.ports.management, BOOT_WAIT)
            .await?;
        info!(node = %self.node_name, amqp = self.ports.amqp, boot = ?started.elapsed(), "broker node accepts connections");
        self.up_since = Some(up);
        Ok(up)
    }

    /// SIGKILLs the node (the whole process group) and waits until its ports are closed.
    pub async fn sigkill(&mut self) -> Result<(), NodeError> {
        self.server.kill();
        self.up_since = None;
        for port in [self.ports.amqp, self.ports.management] {
            if !processes::wait_closed(port, Duration::from_secs(10)).await {
                return Err(NodeError::PortStillOpen(port));
            }
        }
        Ok(())
    }
}

/// An epmd on 127.0.0.1:`port` (not started yet).
pub fn epmd_process(port: u16, log: &Path) -> Proc {
    Proc::new(Spec {
        name: "epmd".into(),
        program: "epmd".into(),
        args: vec![
            "-port".into(),
            port.to_string(),
            "-address".into(),
            "127.0.0.1".into(),
        ],
        env: [("ERL_EPMD_PORT".to_owned(), port.to_string())].into(),
        log: log.to_path_buf(),
    })
}

/// Starts `epmd` unless it runs, and waits until it listens.
pub async fn start_epmd(epmd: &mut Proc, port: u16) -> Result<(), NodeError> {
    if !epmd.is_running() {
        epmd.start()?;
        processes::wait_listening("epmd", port, Duration::from_secs(10)).await?;
    }
    Ok(())
}

/// The lines of compose's `rabbitmq.conf` other than `load_definitions`.
fn shipped_settings() -> String {
    SHIPPED_CONF
        .lines()
        .filter(|line| !line.trim_start().starts_with("load_definitions"))
        .map(|line| format!("{line}\n"))
        .collect()
}

impl Drop for BrokerNode {
    fn drop(&mut self) {
        // The node first, then its epmd (the node would re-register with a new one).
        self.server.kill();
        if let Some(epmd) = &mut self.epmd {
            epmd.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// compose.cluster.yaml's nodes get `cluster.conf` instead of `rabbitmq.conf`: it must keep
    /// every other setting, so that the cluster runs as configured as the single node.
    #[test]
    fn the_cluster_config_keeps_every_shipped_setting() {
        let cluster = include_str!("../../deploy/rabbitmq/cluster.conf");
        let settings = |text: &str| -> Vec<String> {
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned)
                .collect()
        };
        let cluster = settings(cluster);
        for line in settings(&shipped_settings()) {
            assert!(cluster.contains(&line), "cluster.conf lacks {line:?}");
        }
        assert!(!cluster.iter().any(|l| l.starts_with("load_definitions")));
        let names: Vec<&String> = cluster
            .iter()
            .filter(|l| l.starts_with("cluster_formation.classic_config.nodes."))
            .collect();
        assert_eq!(names.len(), crate::cluster::SIZE, "{names:?}");
    }

    #[test]
    fn the_node_gets_the_shipped_settings_but_not_the_definitions() {
        let settings = shipped_settings();
        assert!(settings.contains("raft.wal_max_size_bytes"), "{settings}");
        assert!(!settings.contains("load_definitions"), "{settings}");
    }
}
