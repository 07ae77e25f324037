//! The chaos suite: the services run as separate processes against a private RabbitMQ node (or,
//! with `--cluster`, a private three-node cluster) and a private Redis; a bounded load of
//! `POST /orders` runs while the broker (or one cluster node at a time), Redis and services are
//! SIGKILLed and restarted on a schedule; then the harness waits for quiescence and checks that
//! nothing accepted was lost, left pending or applied twice.
//!
//! `cargo run -p chaos -- --help` for the options; `chaos/tests/chaos.rs` runs it with the CI
//! defaults as part of `cargo test --workspace`. Everything it starts is killed when the run
//! ends, passed, failed or panicked (see [`processes`]).

pub mod checks;
pub mod cluster;
pub mod events;
pub mod load;
pub mod management;
pub mod node;
pub mod processes;
pub mod redis;
pub mod report;
pub mod schedule;
pub mod services;
pub mod sink;
pub mod snapshot;
pub mod system;
pub mod ws;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use jwt_auth::Role;
use messaging::topology::{ORDERS_INTAKE_QUEUE, ORDERS_QUEUE, PRODUCTS_QUEUE, WEBHOOKS_QUEUE};

use crate::events::{EventTap, TAP_QUEUE};
use crate::management::Management;
use crate::schedule::Target;
use crate::services::Service;
use crate::system::{System, SystemOptions};

/// Kill the broker, Redis and services under a bounded order load; check nothing is lost.
#[derive(Debug, Clone, Parser)]
#[command(name = "chaos", version, about, long_about = None)]
pub struct Options {
    /// How many orders the load places (each with its own Idempotency-Key).
    #[arg(long, default_value_t = 2000)]
    pub orders: usize,
    /// Over how many seconds the orders are spread.
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Products to order from (the first with little stock, the others ~90 % of demand).
    #[arg(long, default_value_t = 5)]
    pub products: usize,
    /// Kill schedule: target@at+down in seconds from the start of the load, comma-separated.
    /// Targets: broker, redis, gateway, orders, products, webhook-publisher, notifier; with
    /// --cluster node1, node2, node3, gateway-node (the gateway's node), leader-node (the node
    /// leading orders_queue) instead of broker.
    /// Default: the CI schedule (without the webhook-publisher kill under --no-webhooks).
    #[arg(long)]
    pub schedule: Option<String>,
    /// Run against a private three-node RabbitMQ cluster (quorum queues on every node) and kill
    /// single nodes instead of the whole broker.
    #[arg(long)]
    pub cluster: bool,
    /// The services keep their state on a private PostgreSQL (a database per service, on a
    /// server of the run's own that the schedule may restart: target `postgres`) instead of
    /// SQLite files.
    #[arg(long)]
    pub postgres: bool,
    /// Instances of the gateway, orders, products and the webhook publisher (the notifier stays
    /// single); more than one needs --postgres. A service kill hits the first instance, the
    /// others keep running; the load spreads over the gateways.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=4))]
    pub instances: u16,
    /// Run the saga only: no webhook publisher, notifier, webhook sink or WebSocket client.
    #[arg(long)]
    pub no_webhooks: bool,
    /// Requests a client sends for one order before it gives up (503 / connection errors).
    #[arg(long, default_value_t = 40)]
    pub max_attempts: u32,
    /// Share of accepted orders replayed once with the same key.
    #[arg(long, default_value_t = 0.05)]
    pub replay_share: f64,
    /// Seconds to wait after the load for every order to settle and every queue to drain.
    #[arg(long, default_value_t = 180)]
    pub quiesce_timeout: u64,
    /// ORDER_DEADLINE_MS of the orders service.
    #[arg(long, default_value_t = 30_000)]
    pub order_deadline_ms: u64,
    /// Where the summary is written (besides `<run dir>/report.md`).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Run directory (data, logs); default: a temporary directory, removed after a passing run.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the temporary run directory even when the run passes.
    #[arg(long)]
    pub keep: bool,
    /// Where the service binaries are (default: next to this executable).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// RUST_LOG of the services (their logs go to files in the run directory).
    #[arg(long, default_value = "info")]
    pub service_log: String,
}

impl Options {
    /// The command line that reproduces this run.
    pub fn command(&self) -> String {
        format!(
            "cargo run -p chaos -- --orders {} --duration {} --concurrency {} --products {} --schedule {}{}{}",
            self.orders,
            self.duration,
            self.concurrency,
            self.products,
            self.schedule(),
            if self.no_webhooks {
                " --no-webhooks"
            } else {
                ""
            },
            if self.cluster { " --cluster" } else { "" }
        ) + &if self.postgres {
            format!(" --postgres --instances {}", self.instances)
        } else {
            String::new()
        }
    }

    /// The kill schedule of this run.
    pub fn schedule(&self) -> String {
        match (&self.schedule, self.no_webhooks, self.cluster) {
            (Some(s), _, _) => s.clone(),
            (None, false, false) if self.postgres => schedule::INSTANCES_SCHEDULE.to_owned(),
            (None, true, false) if self.postgres => schedule::INSTANCES_SAGA_SCHEDULE.to_owned(),
            (None, false, false) => schedule::CI_SCHEDULE.to_owned(),
            (None, true, false) => schedule::SAGA_SCHEDULE.to_owned(),
            (None, false, true) => schedule::CLUSTER_SCHEDULE.to_owned(),
            (None, true, true) => schedule::CLUSTER_SAGA_SCHEDULE.to_owned(),
        }
    }

    /// The services of this run, in start order.
    pub fn services(&self) -> Vec<Service> {
        if self.no_webhooks {
            Service::SAGA.to_vec()
        } else {
            Service::ALL.to_vec()
        }
    }
}

/// How a run ended.
pub struct Outcome {
    pub checks: Vec<checks::Check>,
    pub passed: bool,
    /// Ports of the run that still accepted connections after teardown (must be empty).
    pub leftover_ports: Vec<u16>,
    pub report: String,
    /// The run directory, when it was kept.
    pub kept_dir: Option<PathBuf>,
}

/// Runs the whole suite: start, load under kills, quiesce, check, report, tear down.
pub async fn run(options: Options) -> Result<Outcome> {
    let run_started = Instant::now();
    let actions = schedule::parse(&options.schedule())?;
    let services = options.services();
    anyhow::ensure!(
        options.instances == 1 || options.postgres,
        "several instances share their state through PostgreSQL: add --postgres"
    );
    for action in &actions {
        match action.target {
            Target::Service(s) => anyhow::ensure!(
                services.contains(&s),
                "the schedule kills {}, which is not part of this run",
                s.name()
            ),
            Target::Broker => anyhow::ensure!(
                !options.cluster,
                "`broker` kills the single node; on a cluster kill node1…node3, gateway-node or leader-node"
            ),
            Target::Node(_) => anyhow::ensure!(
                options.cluster,
                "{} is a cluster node: add --cluster",
                action.target
            ),
            Target::Redis => {}
            Target::Postgres => anyhow::ensure!(
                options.postgres,
                "`postgres` restarts the run's own PostgreSQL: add --postgres"
            ),
        }
    }
    let temp = match &options.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            None
        }
        None => Some(
            tempfile::Builder::new()
                .prefix("chaos-")
                .tempdir()
                .context("create the run directory")?,
        ),
    };
    let run_dir = options
        .dir
        .clone()
        .or_else(|| temp.as_ref().map(|t| t.path().to_path_buf()))
        .context("no run directory")?;
    let bin_dir = match &options.bin_dir {
        Some(dir) => dir.clone(),
        None => services::default_bin_dir()?,
    };
    println!("chaos: run directory {}", run_dir.display());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(2))
        .build()?;

    let tokens = load::Tokens::new(&format!("chaos-{}", uuid::Uuid::new_v4()));
    let mut system = System::start(
        &run_dir,
        &bin_dir,
        &SystemOptions {
            order_deadline_ms: options.order_deadline_ms,
            rust_log: options.service_log.clone(),
            jwt_secret: tokens.secret().to_owned(),
            webhook_secret: webhook_signing::Secret::generate().expose().to_owned(),
            services: services.clone(),
            cluster: options.cluster,
            instances: usize::from(options.instances),
            postgres: options.postgres,
        },
        http.clone(),
    )
    .await?;
    let tap = EventTap::start(&system.broker.amqp_url())
        .await
        .context("start the event tap")?;
    // The webhook sink (subscribed like any endpoint) and an ADMIN WebSocket client.
    let (sink, ws) = match (
        system.url_of(Service::WebhookPublisher),
        system.services.get(&Service::Notifier).map(|n| n.port),
    ) {
        (Some(publisher), Some(notifier)) => {
            let sink = sink::Sink::start().await?;
            let token = tokens.issue("chaos-admin", Role::Admin)?;
            sink.subscribe(&http, &publisher, &token).await?;
            let ws = ws::WsClient::start(format!("ws://127.0.0.1:{notifier}/ws?token={token}"))
                .await
                .context("connect the ADMIN WebSocket client")?;
            (Some(sink), Some(ws))
        }
        _ => (None, None),
    };
    let gateway = system.gateway_url();
    let gateways = system.gateway_urls();
    let products =
        load::create_products(&http, &gateway, &tokens, options.products, options.orders).await?;
    println!(
        "chaos: {} products, stock {:?}; {} orders over {} s, {} clients, {} gateway(s){}; schedule {}",
        products.len(),
        products.iter().map(|p| p.initial_stock).collect::<Vec<_>>(),
        options.orders,
        options.duration,
        options.concurrency,
        gateways.len(),
        if options.postgres {
            format!(", {} instance(s) of each on PostgreSQL", options.instances)
        } else {
            String::new()
        },
        options.schedule()
    );

    // The load and the kills, together.
    let load_started = Instant::now();
    let plan = load::LoadPlan {
        orders: options.orders,
        duration: Duration::from_secs(options.duration),
        concurrency: options.concurrency,
        max_attempts: options.max_attempts,
        replay_share: options.replay_share.clamp(0.0, 1.0),
    };
    // Aborted if the run ends early (an error, Ctrl-C).
    let load_task = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(load::run(
        http.clone(),
        gateways.clone(),
        tokens.clone(),
        products.clone(),
        plan,
    )));
    let mut done = Vec::new();
    for action in &actions {
        tokio::time::sleep_until((load_started + action.at).into()).await;
        done.push(system.execute(*action, load_started).await);
    }
    let load = load_task.await.context("the load task panicked")?;
    println!(
        "[{:6.1}s] load finished: {} accepted, {} gave up, {} 503s, {} 429s and {} connection errors retried",
        load_started.elapsed().as_secs_f64(),
        load.accepted.len(),
        load.gave_up,
        load.retried_503,
        load.retried_429,
        load.retried_connection
    );

    // Quiescence.
    let mgmt = system.broker.management(http.clone());
    let host = messaging::config::hostname();
    // One entry per instance.
    let expected_connections: Vec<String> = system
        .all_services()
        .map(|p| p.service)
        .filter(|s| s.uses_broker())
        .map(|s| format!("{}@{host}", s.name()))
        .collect();
    let mut work_queues = vec![ORDERS_INTAKE_QUEUE, ORDERS_QUEUE, PRODUCTS_QUEUE];
    if system.services.contains_key(&Service::WebhookPublisher) {
        work_queues.push(WEBHOOKS_QUEUE);
    }
    let quiesce_started = Instant::now();
    // On a cluster, the quorum queues whose members must all be back online.
    let mut quorum_queues: Vec<String> = messaging::topology::WORK_QUEUES
        .iter()
        .flat_map(|q| [q.to_string(), messaging::topology::dlq(q)])
        .collect();
    quorum_queues.push(TAP_QUEUE.to_owned());
    let quorum_queues: Vec<&str> = quorum_queues.iter().map(String::as_str).collect();
    let cluster_nodes = system.broker.cluster().map(cluster::Cluster::node_names);
    let settled = wait_quiescent(
        &system,
        &mgmt,
        &load,
        &work_queues,
        &expected_connections,
        cluster_nodes
            .as_deref()
            .map(|nodes| (nodes, quorum_queues.as_slice())),
        Duration::from_secs(options.quiesce_timeout),
    )
    .await;
    let quiesced_after = quiesce_started.elapsed().as_secs_f64();
    println!(
        "[{:6.1}s] {} after {quiesced_after:.1} s",
        load_started.elapsed().as_secs_f64(),
        if settled {
            "quiescent"
        } else {
            "NOT quiescent (timed out)"
        }
    );

    // Evidence and checks.
    let tap = tap.stop().await;
    let sink = sink.map(|s| s.stop());
    let ws = match ws {
        Some(ws) => Some(ws.stop().await),
        None => None,
    };
    let stores = system.stores().context("no orders or products service")?;
    let orders = stores.orders().await.context("read the orders")?;
    let stock = stores.stock().await.context("read the stock")?;
    let history = stores.terminal_history().await.ok();
    let sqlite_files = options.postgres.then(|| sqlite_files(&system));
    let queues = mgmt.queues().await.unwrap_or_default();
    let connections = mgmt.connection_names().await.unwrap_or_default();
    let consumers = mgmt.consumers().await.unwrap_or_default();
    let expected_consumers: Vec<(String, String, i64)> = system
        .all_services()
        .filter_map(|p| p.service.work_queue())
        .map(|(queue, tag)| (queue.to_owned(), tag, services::PREFETCH))
        .collect();
    let evidence = checks::Evidence {
        load: &load,
        products: &products,
        orders: &orders,
        stock: &stock,
        tap: &tap,
        queues: &queues,
        work_queues: &work_queues,
        connections: &connections,
        consumers: &consumers,
        expected_consumers: &expected_consumers,
        expected_connections: &expected_connections,
        actions: &done,
        sink: sink.as_ref(),
        ws: ws.as_ref(),
        cluster_nodes: cluster_nodes.as_deref(),
        quorum_queues: &quorum_queues,
        history: history.as_ref(),
        sqlite_files: sqlite_files.as_deref(),
    };
    let (mut checks, figures) = checks::run(&evidence);
    for d in &done {
        if let Some(e) = &d.error {
            checks.push(checks::Check {
                number: 0,
                name: "restart",
                passed: false,
                detail: format!("{} did not come back: {e}", d.action.target),
            });
        }
    }

    let leftover_ports = system.shut_down().await;
    checks.push(checks::Check {
        number: 6,
        name: "teardown leaves no process or port behind",
        passed: leftover_ports.is_empty(),
        detail: if leftover_ports.is_empty() {
            "all ports of the run closed".into()
        } else {
            format!("still listening: {leftover_ports:?}")
        },
    });

    let command = options.command();
    let summary = report::Summary {
        command: &command,
        load: &load,
        figures: &figures,
        actions: &done,
        checks: &checks,
        quiesced_after,
        total_seconds: run_started.elapsed().as_secs_f64(),
        tap_deliveries: tap.deliveries,
    };
    let passed = summary.passed();
    let report = summary.markdown();
    println!("\n{}", summary.table());
    for check in &checks {
        println!("{check}");
    }
    summary.write(&run_dir.join("report.md"))?;
    if let Some(path) = &options.report {
        summary.write(path)?;
        println!("chaos: report written to {}", path.display());
    }
    let kept_dir = match temp {
        Some(temp) if passed && !options.keep => {
            drop(temp);
            None
        }
        Some(temp) => Some(temp.keep()),
        None => Some(run_dir.clone()),
    };
    if let Some(dir) = &kept_dir {
        println!("chaos: logs and data kept in {}", dir.display());
    }
    println!("chaos: {}", if passed { "PASSED" } else { "FAILED" });
    Ok(Outcome {
        checks,
        passed,
        leftover_ports,
        report,
        kept_dir,
    })
}

/// The SQLite files (`*.db`) in the data directories of the run's services.
fn sqlite_files(system: &System) -> Vec<String> {
    system
        .all_services()
        .flat_map(|s| std::fs::read_dir(&s.data_dir).into_iter().flatten())
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "db"))
        .map(|p| p.display().to_string())
        .collect()
}

/// Waits until every accepted order is decided, the outboxes are empty, the work queues and the
/// tap queue are drained, every service is connected and (on a cluster) every quorum queue has
/// an online member on every node, three polls in a row (the management API's counts lag a
/// little), at most `timeout`.
async fn wait_quiescent(
    system: &System,
    mgmt: &Management,
    load: &load::LoadOutcome,
    work_queues: &[&str],
    expected_connections: &[String],
    cluster: Option<(&[String], &[&str])>,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut calm = 0;
    let mut last_report = Instant::now();
    while Instant::now() < deadline {
        let (pending, outboxes) = match system.stores() {
            Some(stores) => {
                let pending = stores
                    .orders()
                    .await
                    .map(|orders| {
                        load.accepted
                            .keys()
                            .filter(|id| orders.get(*id).is_none_or(|o| o.status == "PENDING"))
                            .count()
                    })
                    .unwrap_or(usize::MAX);
                (pending, stores.outboxes().await.unwrap_or(i64::MAX / 4))
            }
            None => (usize::MAX, i64::MAX / 4),
        };
        let queues = mgmt.queues().await.unwrap_or_default();
        let busy: i64 = work_queues
            .iter()
            .chain(std::iter::once(&TAP_QUEUE))
            .map(|name| {
                queues
                    .iter()
                    .find(|q| q.name == *name)
                    .and_then(|q| q.in_queue())
                    .unwrap_or(1)
            })
            .sum();
        let connections = mgmt.connection_names().await.unwrap_or_default();
        let missing = checks::missing_connections(expected_connections, &connections).len();
        let deliveries = if system.services.contains_key(&Service::WebhookPublisher) {
            system
                .pending_deliveries()
                .await
                .map_or(1, |(pending, _)| pending)
        } else {
            0
        };
        let degraded = match cluster {
            Some((nodes, names)) => {
                let check = checks::quorum_members(&queues, names, nodes);
                if check.passed {
                    0
                } else {
                    check.detail.matches(';').count() + 1
                }
            }
            None => 0,
        };
        if pending == 0
            && outboxes == 0
            && busy == 0
            && missing == 0
            && deliveries == 0
            && degraded == 0
        {
            calm += 1;
            if calm >= 3 {
                return true;
            }
        } else {
            calm = 0;
            if last_report.elapsed() >= Duration::from_secs(10) {
                let unknown =
                    |n: String, unreadable: bool| if unreadable { "?".to_owned() } else { n };
                let pending = unknown(pending.to_string(), pending == usize::MAX);
                let outboxes = unknown(outboxes.to_string(), outboxes >= i64::MAX / 4);
                println!(
                    "chaos: waiting for quiescence: {pending} orders pending, {outboxes} in outboxes, {busy} in queues, {deliveries} webhook deliveries pending, {missing} connections missing, {degraded} quorum member problems"
                );
                last_report = Instant::now();
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    false
}
