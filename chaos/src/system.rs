//! Everything the harness runs: the private broker (one node, or a three-node cluster), the
//! private Redis and the services. Dropping it kills every process group it started (services
//! first, the broker's epmd last).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use tracing::{info, warn};

use testkit::broker_cluster::Cluster;
use testkit::broker_node::{BrokerNode, NodePorts};
use testkit::management::{DEFAULT_VHOST, Management};
use testkit::ports::{self, free_port};
use testkit::redis_server::RedisServer;

use crate::broker_conf::shipped_settings;
use crate::schedule::{Action, Done, NodePick, Target};
use crate::services::{Service, ServiceProc, Shared};

/// The private broker of a run.
pub enum Broker {
    Single(Box<BrokerNode>),
    Cluster(Cluster),
}

impl Broker {
    /// `AMQP_URL` of the services (every node of a cluster).
    pub fn amqp_url(&self) -> String {
        match self {
            Broker::Single(node) => node.amqp_url(),
            Broker::Cluster(cluster) => cluster.amqp_urls(),
        }
    }

    pub fn management(&self, http: reqwest::Client) -> Management {
        match self {
            Broker::Single(node) => Management::any(vec![node.management_url()], http),
            Broker::Cluster(cluster) => cluster.management(http),
        }
    }

    pub fn ports(&self) -> Vec<u16> {
        match self {
            Broker::Single(node) => {
                let p = node.ports;
                vec![p.amqp, p.management, p.dist, p.epmd]
            }
            Broker::Cluster(cluster) => cluster.ports(),
        }
    }

    pub fn cluster(&self) -> Option<&Cluster> {
        match self {
            Broker::Single(_) => None,
            Broker::Cluster(cluster) => Some(cluster),
        }
    }
}

impl Broker {
    /// Starts the private broker in `dir`: one node, or a three-node cluster; `redis_port` is
    /// only printed with it.
    async fn start(dir: &Path, cluster: bool, redis_port: u16) -> Result<Self> {
        let started = Instant::now();
        if cluster {
            let mut cluster = Cluster::init(dir, vec![shipped_settings()])?;
            cluster
                .start()
                .await
                .context("start the private broker cluster")?;
            for node in &cluster.nodes {
                println!(
                    "cluster node {} (AMQP {}, management {}, dist {})",
                    node.node_name, node.ports.amqp, node.ports.management, node.ports.dist
                );
            }
            println!(
                "broker cluster of {} nodes formed in {:.1} s (epmd {}); redis on {}",
                cluster.nodes.len(),
                started.elapsed().as_secs_f64(),
                cluster.epmd_port,
                redis_port
            );
            Ok(Broker::Cluster(cluster))
        } else {
            let mut node =
                BrokerNode::init(dir, NodePorts::free()?, "chaos", vec![shipped_settings()])?;
            node.start()
                .await
                .context("start the private broker node")?;
            println!(
                "broker node {} up in {:.1} s (AMQP {}, management {}, dist {}, epmd {}); redis on {}",
                node.node_name,
                started.elapsed().as_secs_f64(),
                node.ports.amqp,
                node.ports.management,
                node.ports.dist,
                node.ports.epmd,
                redis_port
            );
            Ok(Broker::Single(Box::new(node)))
        }
    }
}

/// What a kill and restart learned on the way, for its [`Done`].
#[derive(Default)]
struct Found {
    /// For the broker or a node: when it accepted connections again.
    up_again: Option<SystemTime>,
    /// For a cluster node: the node that was killed.
    node: Option<String>,
    note: Option<String>,
}

/// With `--postgres`: the private PostgreSQL and a database per stateful service (their
/// `DATABASE_URL`s); otherwise nothing.
async fn start_postgres(
    options: &SystemOptions,
) -> Result<(Option<testkit::PgCluster>, BTreeMap<Service, String>)> {
    if !options.postgres {
        return Ok((None, BTreeMap::new()));
    }
    let started = Instant::now();
    let cluster = testkit::PgCluster::start()
        .await
        .context("start the private PostgreSQL")?;
    let mut urls = BTreeMap::new();
    for service in &options.services {
        if let Some(db) = service.database() {
            urls.insert(*service, cluster.create_database(db).await?);
        }
    }
    println!(
        "private PostgreSQL up in {:.1} s on {} (databases {:?})",
        started.elapsed().as_secs_f64(),
        cluster.port(),
        urls.keys().filter_map(|s| s.database()).collect::<Vec<_>>()
    );
    Ok((Some(cluster), urls))
}

/// The processes of the run's services (not started yet): the first instance of each, and
/// instances 2… of those that scale.
fn service_procs(
    options: &SystemOptions,
    bin_dir: &Path,
    run_dir: &Path,
    shared: &Shared,
) -> Result<(BTreeMap<Service, ServiceProc>, Vec<ServiceProc>)> {
    let mut services = BTreeMap::new();
    let mut extra = Vec::new();
    for service in options.services.iter().copied() {
        services.insert(
            service,
            ServiceProc::new(service, 1, bin_dir, run_dir, shared)?,
        );
        if service.scales() {
            for instance in 2..=options.instances.max(1) {
                extra.push(ServiceProc::new(
                    service, instance, bin_dir, run_dir, shared,
                )?);
            }
        }
    }
    Ok((services, extra))
}

pub struct System {
    // Field order is drop order: services go before what they depend on.
    /// The first instance of every service.
    pub services: BTreeMap<Service, ServiceProc>,
    /// Instances 2… (`--instances`), in start order.
    pub extra: Vec<ServiceProc>,
    pub redis: RedisServer,
    pub broker: Broker,
    /// The private PostgreSQL of a `--postgres` run.
    pub postgres: Option<testkit::PgCluster>,
    /// `DATABASE_URL` of each service with a database (`--postgres`).
    pub database_urls: BTreeMap<Service, String>,
    pub http: reqwest::Client,
    /// ADMIN token for the publisher's API.
    admin_token: String,
}

/// Knobs of the system itself (not of the load).
#[derive(Debug, Clone)]
pub struct SystemOptions {
    pub order_deadline_ms: u64,
    pub rust_log: String,
    pub jwt_secret: String,
    pub webhook_secret: String,
    /// Which services run, in start order.
    pub services: Vec<Service>,
    /// A three-node cluster instead of one broker node.
    pub cluster: bool,
    /// Instances of every service but the notifier (more than 1 needs `postgres`).
    pub instances: usize,
    /// The services keep their state in a private PostgreSQL (a database per service) instead
    /// of SQLite files.
    pub postgres: bool,
}

impl System {
    /// Starts the node, Redis and every service, and waits until each service is ready.
    pub async fn start(
        run_dir: &Path,
        bin_dir: &Path,
        options: &SystemOptions,
        http: reqwest::Client,
    ) -> Result<Self> {
        let mut redis = RedisServer::new(&run_dir.join("redis"), free_port()?)?;
        redis.start().await?;
        let broker = Broker::start(&run_dir.join("rabbitmq"), options.cluster, redis.port).await?;
        let (postgres, database_urls) = start_postgres(options).await?;
        let shared = Shared {
            amqp_url: broker.amqp_url(),
            redis_url: redis.url(),
            redis_prefix: "chaos:".into(),
            order_deadline_ms: options.order_deadline_ms,
            rust_log: options.rust_log.clone(),
            jwt_secret: options.jwt_secret.clone(),
            webhook_secret: options.webhook_secret.clone(),
            ports: options
                .services
                .iter()
                .map(|s| Ok((*s, free_port()?)))
                .collect::<std::io::Result<_>>()?,
            database_urls: database_urls.clone(),
        };
        let (services, extra) = service_procs(options, bin_dir, run_dir, &shared)?;
        let admin_token = jwt_auth::issue_for(
            options.jwt_secret.as_bytes(),
            "chaos-admin",
            jwt_auth::Role::Admin,
            None,
            Duration::from_secs(7200),
        )?;
        let mut system = Self {
            services,
            extra,
            redis,
            broker,
            postgres,
            database_urls,
            http,
            admin_token,
        };
        system.start_services(&options.services).await?;
        Ok(system)
    }

    /// Starts the services in order (every instance of one before the next service), then
    /// waits until each is ready.
    async fn start_services(&mut self, order: &[Service]) -> Result<()> {
        let http = self.http.clone();
        for service in order.iter().copied() {
            self.service_mut(service)?.start(&http).await?;
            // The others together: instances starting at once is what the migrations' lock is for.
            for proc in self.extra.iter_mut().filter(|p| p.service == service) {
                proc.start(&http).await?;
            }
        }
        for proc in self.services.values().chain(&self.extra) {
            proc.wait_ready(&self.http, Duration::from_secs(60)).await?;
        }
        Ok(())
    }

    fn service_mut(&mut self, service: Service) -> Result<&mut ServiceProc> {
        self.services
            .get_mut(&service)
            .with_context(|| format!("{} is not part of this run", service.name()))
    }

    pub fn gateway_url(&self) -> String {
        self.services
            .get(&Service::Gateway)
            .map(ServiceProc::url)
            .unwrap_or_default()
    }

    /// The URL of every gateway instance (the load spreads over them).
    pub fn gateway_urls(&self) -> Vec<String> {
        self.services
            .get(&Service::Gateway)
            .into_iter()
            .chain(self.extra.iter().filter(|p| p.service == Service::Gateway))
            .map(ServiceProc::url)
            .collect()
    }

    /// Every service process of the run (first instances, then the others).
    pub fn all_services(&self) -> impl Iterator<Item = &ServiceProc> {
        self.services.values().chain(&self.extra)
    }

    /// Where the run's state is read from: the SQLite files, or the private PostgreSQL.
    pub fn stores(&self) -> Option<crate::snapshot::Stores> {
        if self.postgres.is_some() {
            Some(crate::snapshot::Stores::Postgres {
                orders: self.database_urls.get(&Service::Orders)?.clone(),
                products: self.database_urls.get(&Service::Products)?.clone(),
            })
        } else {
            Some(crate::snapshot::Stores::Sqlite {
                orders: self.data_dir(Service::Orders)?.to_path_buf(),
                products: self.data_dir(Service::Products)?.to_path_buf(),
            })
        }
    }

    pub fn data_dir(&self, service: Service) -> Option<&Path> {
        self.services.get(&service).map(|s| s.data_dir.as_path())
    }

    /// Kills `action.target`, waits `action.down`, starts it again.
    pub async fn execute(&mut self, action: Action, load_started: Instant) -> Done {
        let since = |t: Instant| t.duration_since(load_started).as_secs_f64();
        let killed_at = since(Instant::now());
        println!("[{killed_at:6.1}s] SIGKILL {}", action.target);
        let mut found = Found::default();
        let result = self
            .kill_and_restart(action, load_started, &mut found)
            .await;
        let restarted_at = since(Instant::now());
        let error = result.err().map(|e| format!("{e:#}"));
        match &error {
            None => println!(
                "[{restarted_at:6.1}s] {} back after {:.1} s",
                action.target,
                restarted_at - killed_at
            ),
            Some(e) => {
                warn!(target = %action.target, error = %e, "restart failed");
                println!(
                    "[{restarted_at:6.1}s] {} did NOT come back: {e}",
                    action.target
                )
            }
        }
        Done {
            action,
            killed_at,
            restarted_at,
            up_again: found.up_again,
            node: found.node,
            note: found.note,
            error,
        }
    }

    /// The kill and restart of [`System::execute`]; what it learns on the way goes to `found`
    /// even when it fails half-way.
    async fn kill_and_restart(
        &mut self,
        action: Action,
        load_started: Instant,
        found: &mut Found,
    ) -> Result<()> {
        let since = |t: Instant| t.duration_since(load_started).as_secs_f64();
        match action.target {
            Target::Broker => {
                let Broker::Single(node) = &mut self.broker else {
                    anyhow::bail!(
                        "`broker` kills the single node; on a cluster kill node1…node3, gateway-node or leader-node"
                    );
                };
                node.sigkill().await?;
                tokio::time::sleep(action.down).await;
                let (_, at) = node.start().await?;
                found.up_again = Some(at);
            }
            Target::Node(pick) => {
                let i = self.pick_node(pick).await?;
                let Broker::Cluster(cluster) = &mut self.broker else {
                    anyhow::bail!("no cluster");
                };
                let name = cluster.nodes[i].node_name.clone();
                println!(
                    "[{:6.1}s]   {} is {name}",
                    since(Instant::now()),
                    action.target
                );
                found.node = Some(name);
                cluster.sigkill(i).await?;
                tokio::time::sleep(action.down).await;
                let (_, at) = cluster.restart(i).await?;
                found.up_again = Some(at);
            }
            Target::Redis => {
                self.redis.sigkill().await;
                tokio::time::sleep(action.down).await;
                self.redis.start().await?;
            }
            Target::Postgres => {
                let Some(postgres) = self.postgres.as_mut() else {
                    anyhow::bail!("`postgres` needs --postgres");
                };
                println!(
                    "[{:6.1}s]   pg_ctl stop -m immediate (port {})",
                    since(Instant::now()),
                    postgres.port()
                );
                postgres.restart(action.down).await?;
            }
            Target::Service(service) => {
                let http = self.http.clone();
                if service == Service::WebhookPublisher {
                    let (pending, retrying) = self.wait_pending_deliveries().await;
                    println!(
                        "[{:6.1}s]   {pending} deliveries pending, {retrying} of them waiting for a retry",
                        since(Instant::now())
                    );
                    found.note = Some(format!("{retrying} deliveries mid-retry"));
                }
                let proc = self.service_mut(service)?;
                proc.sigkill();
                tokio::time::sleep(action.down).await;
                proc.start(&http).await?;
            }
        }
        Ok(())
    }

    /// The index of the cluster node `pick` names now (polls the management API, whose view
    /// of connections and leaders may lag a little, for at most 15 s).
    async fn pick_node(&self, pick: NodePick) -> Result<usize> {
        let Broker::Cluster(cluster) = &self.broker else {
            anyhow::bail!("`{}` needs a cluster (--cluster)", Target::Node(pick));
        };
        if let NodePick::Index(i) = pick {
            anyhow::ensure!(i < cluster.nodes.len(), "the cluster has no node {}", i + 1);
            return Ok(i);
        }
        let mgmt = cluster.management(self.http.clone());
        let gateway = format!("gateway@{}", messaging::config::hostname());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let node = match pick {
                NodePick::OfGateway => mgmt.node_of_connection(&gateway).await.ok().flatten(),
                _ => mgmt.queues(DEFAULT_VHOST).await.ok().and_then(|queues| {
                    queues
                        .into_iter()
                        .find(|q| q.name == messaging::topology::ORDERS_QUEUE)
                        .and_then(|q| q.leader)
                }),
            };
            if let Some(i) = node.as_deref().and_then(|n| cluster.index_of(n)) {
                return Ok(i);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the management API did not tell which node is the {}",
                Target::Node(pick)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The publisher's deliveries still to be sent (at most 500 are looked at), and how many
    /// of them already failed an attempt and wait for a retry; `None` when it cannot tell.
    pub async fn pending_deliveries(&self) -> Option<(usize, usize)> {
        let publisher = self.services.get(&Service::WebhookPublisher)?;
        let url = format!("{}/deliveries?status=pending&limit=500", publisher.url());
        let request = self.http.get(url).bearer_auth(&self.admin_token);
        let list: serde_json::Value = request.send().await.ok()?.json().await.ok()?;
        let list = list.as_array()?;
        let retrying = list
            .iter()
            .filter(|d| d["attemptCount"].as_i64().is_some_and(|n| n > 0))
            .count();
        Some((list.len(), retrying))
    }

    /// Waits (at most 10 s) until some deliveries wait for a retry, so that the kill lands
    /// mid-retry; returns (pending, waiting for a retry).
    async fn wait_pending_deliveries(&self) -> (usize, usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pending = self.pending_deliveries().await.unwrap_or((0, 0));
            if pending.1 > 0 || Instant::now() >= deadline {
                return pending;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn url_of(&self, service: Service) -> Option<String> {
        self.services.get(&service).map(ServiceProc::url)
    }

    /// Every port the system listens on.
    pub fn ports(&self) -> Vec<u16> {
        let mut ports = self.broker.ports();
        ports.push(self.redis.port);
        ports.extend(self.all_services().map(|s| s.port));
        ports.extend(self.postgres.as_ref().map(testkit::PgCluster::port));
        ports
    }

    /// Kills everything and returns the ports that still accept connections afterwards.
    pub async fn shut_down(self) -> Vec<u16> {
        let ports = self.ports();
        drop(self);
        let mut left = Vec::new();
        for port in ports {
            if !ports::wait_closed(port, Duration::from_secs(5)).await {
                left.push(port);
            }
        }
        info!(?left, "system shut down");
        left
    }
}
