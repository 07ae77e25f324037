//! One chaos run, phase by phase: check the schedule, start the system and its observers, place
//! the load while the schedule kills and restarts, wait for quiescence, gather the evidence, run
//! the checks, tear down, report. [`run`] reads as that list; each phase is a function below.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use jwt_auth::Role;
use messaging::topology::{ORDERS_INTAKE_QUEUE, ORDERS_QUEUE, PRODUCTS_QUEUE, WEBHOOKS_QUEUE};
use testkit::management::{DEFAULT_VHOST, Management, QueueStats};
use testkit::ws::WsClient;

use crate::checks::{self, Check, Figures};
use crate::events::{EventTap, TAP_QUEUE, TapReport};
use crate::load::{self, LoadOutcome, Product, Tokens};
use crate::schedule::{self, Action, Done, Target};
use crate::services::{self, Service};
use crate::sink::{Sink, SinkReport};
use crate::snapshot::OrderRow;
use crate::system::{System, SystemOptions};
use crate::ws::WsReport;
use crate::{Options, Outcome, report};

/// Runs the whole suite: start, load under kills, quiesce, check, report, tear down.
pub async fn run(options: Options) -> Result<Outcome> {
    let run_started = Instant::now();
    let actions = checked_schedule(&options)?;
    let run_dir = RunDir::prepare(&options)?;
    let bin_dir = match &options.bin_dir {
        Some(dir) => dir.clone(),
        None => services::default_bin_dir()?,
    };
    println!("chaos: run directory {}", run_dir.path.display());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(2))
        .build()?;
    let tokens = Tokens::new(&format!("chaos-{}", uuid::Uuid::new_v4()));

    let mut system = start_system(&options, &run_dir.path, &bin_dir, &tokens, &http).await?;
    let observers = Observers::start(&system, &http, &tokens).await?;
    let products = create_products(&options, &system, &http, &tokens).await?;
    let loaded =
        load_under_kills(&options, &mut system, &http, &tokens, &products, &actions).await?;
    let quiet = quiesce(&options, &system, &http, &loaded).await;
    let gathered = gather_evidence(&options, &system, &quiet, observers).await?;
    let (mut checks, figures) = check(&gathered, &loaded, &products, &quiet);
    let leftover_ports = tear_down(system, &mut checks).await;

    let command = options.command();
    let summary = report::Summary {
        command: &command,
        load: &loaded.outcome,
        figures: &figures,
        actions: &loaded.done,
        checks: &checks,
        quiesced_after: quiet.after,
        total_seconds: run_started.elapsed().as_secs_f64(),
        tap_deliveries: gathered.tap.deliveries,
    };
    let passed = summary.passed();
    let report = write_report(&options, &summary, &checks, &run_dir.path)?;
    let kept_dir = run_dir.finish(passed, options.keep);
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

/// The run's kill schedule, refused when it names something this run does not have.
fn checked_schedule(options: &Options) -> Result<Vec<Action>> {
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
    Ok(actions)
}

/// Where the run keeps its data and logs: `--dir`, or a temporary directory.
struct RunDir {
    path: PathBuf,
    /// The temporary directory, when there is no `--dir`.
    temp: Option<tempfile::TempDir>,
}

impl RunDir {
    fn prepare(options: &Options) -> Result<Self> {
        match &options.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                Ok(Self {
                    path: dir.clone(),
                    temp: None,
                })
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("chaos-")
                    .tempdir()
                    .context("create the run directory")?;
                Ok(Self {
                    path: temp.path().to_path_buf(),
                    temp: Some(temp),
                })
            }
        }
    }

    /// Removes a temporary directory after a passing run (unless `keep`); returns the directory
    /// that is kept, if any.
    fn finish(self, passed: bool, keep: bool) -> Option<PathBuf> {
        match self.temp {
            Some(temp) if passed && !keep => {
                drop(temp);
                None
            }
            Some(temp) => Some(temp.keep()),
            None => Some(self.path),
        }
    }
}

/// The private broker, Redis and the services of this run, all ready.
async fn start_system(
    options: &Options,
    run_dir: &Path,
    bin_dir: &Path,
    tokens: &Tokens,
    http: &reqwest::Client,
) -> Result<System> {
    System::start(
        run_dir,
        bin_dir,
        &SystemOptions {
            order_deadline_ms: options.order_deadline_ms,
            rust_log: options.service_log.clone(),
            jwt_secret: tokens.secret().to_owned(),
            webhook_secret: webhook_signing::Secret::generate().expose().to_owned(),
            services: options.services(),
            cluster: options.cluster,
            instances: usize::from(options.instances),
            postgres: options.postgres,
        },
        http.clone(),
    )
    .await
}

/// What watches the run from outside: the event tap on the bus, and (when the webhook services
/// run) the webhook sink subscribed like any endpoint and an ADMIN WebSocket client.
struct Observers {
    tap: EventTap,
    sink: Option<Sink>,
    ws: Option<WsClient>,
}

impl Observers {
    async fn start(system: &System, http: &reqwest::Client, tokens: &Tokens) -> Result<Self> {
        let tap = EventTap::start(&system.broker.amqp_url())
            .await
            .context("start the event tap")?;
        let (sink, ws) = match (
            system.url_of(Service::WebhookPublisher),
            system.services.get(&Service::Notifier).map(|n| n.port),
        ) {
            (Some(publisher), Some(notifier)) => {
                let sink = Sink::start().await?;
                let token = tokens.issue("chaos-admin", Role::Admin)?;
                sink.subscribe(http, &publisher, &token).await?;
                let url = format!("ws://127.0.0.1:{notifier}/ws?token={token}");
                let ws = WsClient::reconnecting("chaos-admin", url)
                    .await
                    .context("connect the ADMIN WebSocket client")?;
                (Some(sink), Some(ws))
            }
            _ => (None, None),
        };
        Ok(Self { tap, sink, ws })
    }

    /// Stops every observer and returns what each saw.
    async fn stop(self) -> (TapReport, Option<SinkReport>, Option<WsReport>) {
        let tap = self.tap.stop().await;
        let sink = self.sink.map(|s| s.stop());
        let ws = match self.ws {
            Some(mut ws) => {
                ws.stop().await;
                Some(WsReport::tally(&ws.messages(), ws.connects()))
            }
            None => None,
        };
        (tap, sink, ws)
    }
}

/// The products the load orders from, created through the gateway; prints the run's plan.
async fn create_products(
    options: &Options,
    system: &System,
    http: &reqwest::Client,
    tokens: &Tokens,
) -> Result<Vec<Product>> {
    let products = load::create_products(
        http,
        &system.gateway_url(),
        tokens,
        options.products,
        options.orders,
    )
    .await?;
    println!(
        "chaos: {} products, stock {:?}; {} orders over {} s, {} clients, {} gateway(s){}; schedule {}",
        products.len(),
        products.iter().map(|p| p.initial_stock).collect::<Vec<_>>(),
        options.orders,
        options.duration,
        options.concurrency,
        system.gateway_urls().len(),
        if options.postgres {
            format!(", {} instance(s) of each on PostgreSQL", options.instances)
        } else {
            String::new()
        },
        options.schedule()
    );
    Ok(products)
}

/// The load, and what the schedule did while it ran.
struct Loaded {
    outcome: LoadOutcome,
    done: Vec<Done>,
    started: Instant,
}

/// Places the load and, at the same time, carries out every kill of the schedule at its time.
async fn load_under_kills(
    options: &Options,
    system: &mut System,
    http: &reqwest::Client,
    tokens: &Tokens,
    products: &[Product],
    actions: &[Action],
) -> Result<Loaded> {
    let started = Instant::now();
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
        system.gateway_urls(),
        tokens.clone(),
        products.to_vec(),
        plan,
    )));
    let mut done = Vec::new();
    for action in actions {
        tokio::time::sleep_until((started + action.at).into()).await;
        done.push(system.execute(*action, started).await);
    }
    let outcome = load_task.await.context("the load task panicked")?;
    println!(
        "[{:6.1}s] load finished: {} accepted, {} gave up, {} 503s, {} 429s and {} connection errors retried",
        started.elapsed().as_secs_f64(),
        outcome.accepted.len(),
        outcome.gave_up,
        outcome.retried_503,
        outcome.retried_429,
        outcome.retried_connection
    );
    Ok(Loaded {
        outcome,
        done,
        started,
    })
}

/// What quiescence was waited for, and how long it took.
struct Quiescence {
    mgmt: Management,
    /// `<service>@<host>`, one entry per instance.
    expected_connections: Vec<String>,
    /// The work queues whose consumer is part of this run.
    work_queues: Vec<&'static str>,
    /// On a cluster, the quorum queues whose members must all be back online.
    quorum_queues: Vec<String>,
    cluster_nodes: Option<Vec<String>>,
    /// Seconds from the end of the load until quiescent (or the timeout).
    after: f64,
}

impl Quiescence {
    fn quorum_queue_names(&self) -> Vec<&str> {
        self.quorum_queues.iter().map(String::as_str).collect()
    }
}

/// Waits until every accepted order is decided and everything has drained (see
/// [`wait_quiescent`]), at most `--quiesce-timeout`.
async fn quiesce(
    options: &Options,
    system: &System,
    http: &reqwest::Client,
    loaded: &Loaded,
) -> Quiescence {
    let host = messaging::config::hostname();
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
    let mut quorum_queues: Vec<String> = messaging::topology::WORK_QUEUES
        .iter()
        .flat_map(|q| [q.to_string(), messaging::topology::dlq(q)])
        .collect();
    quorum_queues.push(TAP_QUEUE.to_owned());
    let mut quiet = Quiescence {
        mgmt: system.broker.management(http.clone()),
        expected_connections,
        work_queues,
        quorum_queues,
        cluster_nodes: system
            .broker
            .cluster()
            .map(testkit::broker_cluster::Cluster::node_names),
        after: 0.0,
    };
    let started = Instant::now();
    let quorum_queues = quiet.quorum_queue_names();
    let settled = wait_quiescent(
        system,
        &quiet.mgmt,
        &loaded.outcome,
        &quiet.work_queues,
        &quiet.expected_connections,
        quiet
            .cluster_nodes
            .as_deref()
            .map(|nodes| (nodes, quorum_queues.as_slice())),
        Duration::from_secs(options.quiesce_timeout),
    )
    .await;
    quiet.after = started.elapsed().as_secs_f64();
    println!(
        "[{:6.1}s] {} after {:.1} s",
        loaded.started.elapsed().as_secs_f64(),
        if settled {
            "quiescent"
        } else {
            "NOT quiescent (timed out)"
        },
        quiet.after
    );
    quiet
}

/// Everything the checks look at, read once the run is quiet.
struct Gathered {
    tap: TapReport,
    sink: Option<SinkReport>,
    ws: Option<WsReport>,
    orders: HashMap<String, OrderRow>,
    stock: HashMap<String, i64>,
    history: Option<HashMap<String, usize>>,
    sqlite_files: Option<Vec<String>>,
    queues: Vec<QueueStats>,
    connections: Vec<String>,
    consumers: Vec<(String, String, i64)>,
    expected_consumers: Vec<(String, String, i64)>,
}

/// Stops the observers and reads the stores and the broker's view.
async fn gather_evidence(
    options: &Options,
    system: &System,
    quiet: &Quiescence,
    observers: Observers,
) -> Result<Gathered> {
    let (tap, sink, ws) = observers.stop().await;
    let stores = system.stores().context("no orders or products service")?;
    let orders = stores.orders().await.context("read the orders")?;
    let stock = stores.stock().await.context("read the stock")?;
    let history = stores.terminal_history().await.ok();
    let sqlite_files = options.postgres.then(|| sqlite_files(system));
    let queues = quiet.mgmt.queues(DEFAULT_VHOST).await.unwrap_or_default();
    let connections = quiet.mgmt.connection_names().await.unwrap_or_default();
    let consumers = quiet
        .mgmt
        .consumers(DEFAULT_VHOST)
        .await
        .unwrap_or_default();
    let expected_consumers = system
        .all_services()
        .filter_map(|p| p.service.work_queue())
        .map(|(queue, tag)| (queue.to_owned(), tag, services::PREFETCH))
        .collect();
    Ok(Gathered {
        tap,
        sink,
        ws,
        orders,
        stock,
        history,
        sqlite_files,
        queues,
        connections,
        consumers,
        expected_consumers,
    })
}

/// Runs every check on the evidence, plus one failed check per target that did not come back.
fn check(
    gathered: &Gathered,
    loaded: &Loaded,
    products: &[Product],
    quiet: &Quiescence,
) -> (Vec<Check>, Figures) {
    let quorum_queues = quiet.quorum_queue_names();
    let evidence = checks::Evidence {
        load: &loaded.outcome,
        products,
        orders: &gathered.orders,
        stock: &gathered.stock,
        tap: &gathered.tap,
        queues: &gathered.queues,
        work_queues: &quiet.work_queues,
        connections: &gathered.connections,
        consumers: &gathered.consumers,
        expected_consumers: &gathered.expected_consumers,
        expected_connections: &quiet.expected_connections,
        actions: &loaded.done,
        sink: gathered.sink.as_ref(),
        ws: gathered.ws.as_ref(),
        cluster_nodes: quiet.cluster_nodes.as_deref(),
        quorum_queues: &quorum_queues,
        history: gathered.history.as_ref(),
        sqlite_files: gathered.sqlite_files.as_deref(),
    };
    let (mut checks, figures) = checks::run(&evidence);
    for d in &loaded.done {
        if let Some(e) = &d.error {
            checks.push(Check {
                number: 0,
                name: "restart",
                passed: false,
                detail: format!("{} did not come back: {e}", d.action.target),
            });
        }
    }
    (checks, figures)
}

/// Stops everything the run started and adds the check that no port of the run still listens;
/// returns those ports.
async fn tear_down(system: System, checks: &mut Vec<Check>) -> Vec<u16> {
    let leftover_ports = system.shut_down().await;
    checks.push(Check {
        number: 6,
        name: "teardown leaves no process or port behind",
        passed: leftover_ports.is_empty(),
        detail: if leftover_ports.is_empty() {
            "all ports of the run closed".into()
        } else {
            format!("still listening: {leftover_ports:?}")
        },
    });
    leftover_ports
}

/// Prints the summary and every check, writes `report.md` in the run directory (and to
/// `--report`), and returns the report's markdown.
fn write_report(
    options: &Options,
    summary: &report::Summary,
    checks: &[Check],
    run_dir: &Path,
) -> Result<String> {
    let report = summary.markdown();
    println!("\n{}", summary.table());
    for check in checks {
        println!("{check}");
    }
    summary.write(&run_dir.join("report.md"))?;
    if let Some(path) = &options.report {
        summary.write(path)?;
        println!("chaos: report written to {}", path.display());
    }
    Ok(report)
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

/// How far the system is from quiet, as one poll saw it. Counts that could not be read are
/// "busy" (`usize::MAX`, `i64::MAX / 4`, 1), never zero.
struct Unsettled {
    pending: usize,
    outboxes: i64,
    busy: i64,
    missing: usize,
    deliveries: usize,
    degraded: usize,
}

impl Unsettled {
    fn is_quiet(&self) -> bool {
        self.pending == 0
            && self.outboxes == 0
            && self.busy == 0
            && self.missing == 0
            && self.deliveries == 0
            && self.degraded == 0
    }

    fn print_progress(&self) {
        let unknown = |n: String, unreadable: bool| if unreadable { "?".to_owned() } else { n };
        let pending = unknown(self.pending.to_string(), self.pending == usize::MAX);
        let outboxes = unknown(self.outboxes.to_string(), self.outboxes >= i64::MAX / 4);
        println!(
            "chaos: waiting for quiescence: {pending} orders pending, {outboxes} in outboxes, {} in queues, {} webhook deliveries pending, {} connections missing, {} quorum member problems",
            self.busy, self.deliveries, self.missing, self.degraded
        );
    }
}

/// Waits until every accepted order is decided, the outboxes are empty, the work queues and the
/// tap queue are drained, every service is connected and (on a cluster) every quorum queue has
/// an online member on every node, three polls in a row (the management API's counts lag a
/// little), at most `timeout`.
async fn wait_quiescent(
    system: &System,
    mgmt: &Management,
    load: &LoadOutcome,
    work_queues: &[&str],
    expected_connections: &[String],
    cluster: Option<(&[String], &[&str])>,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut calm = 0;
    let mut last_report = Instant::now();
    while Instant::now() < deadline {
        let now = unsettled(
            system,
            mgmt,
            load,
            work_queues,
            expected_connections,
            cluster,
        )
        .await;
        if now.is_quiet() {
            calm += 1;
            if calm >= 3 {
                return true;
            }
        } else {
            calm = 0;
            if last_report.elapsed() >= Duration::from_secs(10) {
                now.print_progress();
                last_report = Instant::now();
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    false
}

/// One poll of the stores, the broker and the publisher: what is not settled yet.
async fn unsettled(
    system: &System,
    mgmt: &Management,
    load: &LoadOutcome,
    work_queues: &[&str],
    expected_connections: &[String],
    cluster: Option<(&[String], &[&str])>,
) -> Unsettled {
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
    let queues = mgmt.queues(DEFAULT_VHOST).await.unwrap_or_default();
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
    Unsettled {
        pending,
        outboxes,
        busy,
        missing,
        deliveries,
        degraded,
    }
}
