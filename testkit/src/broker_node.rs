//! A private RabbitMQ node: own node name, AMQP, distribution, management and epmd ports, own
//! data directory, management plugin enabled, plus the `rabbitmq.conf` lines its user passes
//! (the settings the project ships, say). It never touches the broker on 5672/15672.
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

use crate::child::{Proc, ProcessError, Spec};
use crate::ports;

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
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
    #[error(transparent)]
    NotListening(#[from] ports::NotListening),
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
            amqp: ports::free_port()?,
            management: ports::free_port()?,
            dist: ports::free_port()?,
            epmd: ports::free_port()?,
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
    /// Writes the configuration of a standalone node named `<prefix><AMQP port>@localhost` with
    /// an epmd of its own and the `rabbitmq.conf` lines `conf` under `dir` (nothing is started
    /// yet).
    pub fn init(
        dir: &Path,
        ports: NodePorts,
        prefix: &str,
        conf: Vec<String>,
    ) -> Result<Self, NodeError> {
        let setup = NodeSetup {
            name: format!("{prefix}{}@localhost", ports.amqp),
            extra_conf: conf,
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
        ports::wait_listening("rabbitmq (AMQP)", self.ports.amqp, BOOT_WAIT).await?;
        let up = (Instant::now(), SystemTime::now());
        ports::wait_listening("rabbitmq (management)", self.ports.management, BOOT_WAIT).await?;
        info!(node = %self.node_name, amqp = self.ports.amqp, boot = ?started.elapsed(), "broker node accepts connections");
        self.up_since = Some(up);
        Ok(up)
    }

    /// SIGKILLs the node (the whole process group) and waits until its ports are closed.
    pub async fn sigkill(&mut self) -> Result<(), NodeError> {
        self.server.kill();
        self.up_since = None;
        for port in [self.ports.amqp, self.ports.management] {
            if !ports::wait_closed(port, Duration::from_secs(10)).await {
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
        ports::wait_listening("epmd", port, Duration::from_secs(10)).await?;
    }
    Ok(())
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
