//! The services under test, each the workspace's own binary run as a separate process with the
//! environment the README documents (`HTTP_ADDR`, `AMQP_URL`, `REDIS_URL`, `REDIS_KEY_PREFIX`,
//! `DATA_DIR`, `RUST_LOG`, …), its own data directory and its own log file.
//!
//! Adding a service (the webhook publisher and the notifier, once they are in the workspace) is
//! one more [`Service`] variant: its binary name, its extra environment, and whether its
//! connection to the broker must be back at the end of the run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use testkit::child::{Proc, Spec};
use testkit::ports::free_port;

/// The prefetch the work-queue consumers are configured with; check 4 expects it back on
/// every consumer after the reconnects.
pub const PREFETCH: i64 = 32;

/// A service of the saga, by the name of its binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    Gateway,
    Orders,
    Products,
    WebhookPublisher,
    Notifier,
}

impl Service {
    /// Start order: what a service calls comes up before it.
    pub const ALL: [Service; 5] = [
        Service::Products,
        Service::Orders,
        Service::Notifier,
        Service::WebhookPublisher,
        Service::Gateway,
    ];
    /// The saga alone (`--no-webhooks`).
    pub const SAGA: [Service; 3] = [Service::Products, Service::Orders, Service::Gateway];

    pub fn name(self) -> &'static str {
        match self {
            Service::Gateway => "gateway",
            Service::Orders => "orders",
            Service::Products => "products",
            Service::WebhookPublisher => "webhook-publisher",
            Service::Notifier => "notifier",
        }
    }

    /// The work queue this service consumes, and its consumer tag.
    pub fn work_queue(self) -> Option<(&'static str, String)> {
        let queue = match self {
            Service::Orders => messaging::topology::ORDERS_QUEUE,
            Service::Products => messaging::topology::PRODUCTS_QUEUE,
            Service::WebhookPublisher => messaging::topology::WEBHOOKS_QUEUE,
            Service::Gateway | Service::Notifier => return None,
        };
        Some((queue, format!("{}.{queue}", self.name())))
    }

    /// Whether it keeps a named connection to the broker (the notifier only uses Redis).
    pub fn uses_broker(self) -> bool {
        self != Service::Notifier
    }

    /// Whether `--instances N` runs N of it (the notifier stays single: the publisher posts to
    /// one notifier and the harness's WebSocket client reads from it).
    pub fn scales(self) -> bool {
        self != Service::Notifier
    }

    /// Whether it keeps state in a database (`DATABASE_URL` with `--postgres`), and its name.
    pub fn database(self) -> Option<&'static str> {
        match self {
            Service::Orders => Some("orders"),
            Service::Products => Some("products"),
            Service::WebhookPublisher => Some("webhooks"),
            Service::Gateway | Service::Notifier => None,
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// What every service gets from the harness.
#[derive(Debug, Clone)]
pub struct Shared {
    pub amqp_url: String,
    pub redis_url: String,
    pub redis_prefix: String,
    pub order_deadline_ms: u64,
    pub rust_log: String,
    /// `JWT_SECRET` of the gateway (and the notifier): the harness signs its clients' tokens.
    pub jwt_secret: String,
    /// `WEBHOOK_SECRET` shared by the publisher and the notifier.
    pub webhook_secret: String,
    /// HTTP port of every service of the run (its first instance), decided before any starts.
    pub ports: BTreeMap<Service, u16>,
    /// `DATABASE_URL` of every service with a database, on the run's private PostgreSQL
    /// (`--postgres`); empty: the services keep SQLite in their data directories.
    pub database_urls: BTreeMap<Service, String>,
}

pub struct ServiceProc {
    pub service: Service,
    /// 1 for the first instance, 2… for the others (`--instances`).
    pub instance: usize,
    pub port: u16,
    pub data_dir: PathBuf,
    proc: Proc,
}

impl ServiceProc {
    /// Instance `instance` (1-based) of `service`: the first uses the port in `shared.ports`
    /// and is named after the binary, the others get a free port and `<binary>-<instance>` as
    /// the name of their data directory and log.
    pub fn new(
        service: Service,
        instance: usize,
        bin_dir: &Path,
        run_dir: &Path,
        shared: &Shared,
    ) -> Result<Self> {
        let program = bin_dir.join(service.name());
        if !program.is_file() {
            bail!(
                "{} not found: build the services first (cargo build -p gateway -p orders -p products -p webhook-publisher -p notifier) or pass --bin-dir",
                program.display()
            );
        }
        let port = match shared.ports.get(&service) {
            Some(port) if instance == 1 => *port,
            _ => free_port()?,
        };
        let label = if instance == 1 {
            service.name().to_owned()
        } else {
            format!("{}-{instance}", service.name())
        };
        let data_dir = run_dir.join(&label);
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("create {}", data_dir.display()))?;
        let env = environment(service, port, &data_dir, shared);
        let proc = Proc::new(Spec {
            name: label.clone(),
            program,
            args: Vec::new(),
            env,
            log: run_dir.join(format!("{label}.log")),
        });
        Ok(Self {
            service,
            instance,
            port,
            data_dir,
            proc,
        })
    }

    /// `orders`, `orders-2`, …
    pub fn label(&self) -> String {
        if self.instance == 1 {
            self.service.name().to_owned()
        } else {
            format!("{}-{}", self.service.name(), self.instance)
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the process and waits until it answers `GET /health` (it may still be connecting
    /// to the broker: a service must come up while the broker is away).
    pub async fn start(&mut self, http: &reqwest::Client) -> Result<()> {
        self.proc.start()?;
        let health = format!("{}/health", self.url());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            if let Ok(r) = http.get(&health).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if !self.proc.is_running() {
                bail!(
                    "{} exited at start; see {}",
                    self.label(),
                    self.proc.log_path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("{} did not answer /health within 30 s", self.label())
    }

    /// Waits until `GET /ready` answers 200 (broker and Redis reachable), at most `wait`.
    pub async fn wait_ready(&self, http: &reqwest::Client, wait: Duration) -> Result<()> {
        let ready = format!("{}/ready", self.url());
        let deadline = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < deadline {
            if let Ok(r) = http.get(&ready).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("{} was not ready within {wait:?}", self.label())
    }

    pub fn sigkill(&mut self) {
        self.proc.kill();
    }
}

/// The environment of one instance of `service`: the shared settings, its port and data
/// directory, and what only that service reads.
fn environment(
    service: Service,
    port: u16,
    data_dir: &Path,
    shared: &Shared,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = [
        ("HTTP_ADDR", format!("127.0.0.1:{port}")),
        ("AMQP_URL", shared.amqp_url.clone()),
        ("REDIS_URL", shared.redis_url.clone()),
        ("REDIS_KEY_PREFIX", shared.redis_prefix.clone()),
        ("DATA_DIR", data_dir.display().to_string()),
        ("RUST_LOG", shared.rust_log.clone()),
        ("JWT_SECRET", shared.jwt_secret.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if let Some(url) = shared.database_urls.get(&service) {
        env.insert("DATABASE_URL".into(), url.clone());
    }
    match service {
        Service::Orders => {
            env.insert(
                "ORDER_DEADLINE_MS".into(),
                shared.order_deadline_ms.to_string(),
            );
            env.insert("ORDERS_PREFETCH".into(), PREFETCH.to_string());
        }
        Service::Products => {
            env.insert("PRODUCTS_PREFETCH".into(), PREFETCH.to_string());
        }
        Service::WebhookPublisher => {
            let notifier = shared
                .ports
                .get(&Service::Notifier)
                .copied()
                .unwrap_or(8085);
            env.insert(
                "NOTIFIER_URL".into(),
                format!("http://127.0.0.1:{notifier}/webhooks"),
            );
            env.insert("WEBHOOK_SECRET".into(), shared.webhook_secret.clone());
            env.insert("WEBHOOKS_PREFETCH".into(), PREFETCH.to_string());
            // The harness's webhook sink listens on this machine.
            env.insert("WEBHOOK_ALLOWED_NETWORKS".into(), "127.0.0.0/8".into());
        }
        Service::Notifier => {
            env.insert("WEBHOOK_SECRET".into(), shared.webhook_secret.clone());
            // The harness's WebSocket client reads every event and every stats update
            // (two messages per event, thousands a minute): room for bursts after a kill.
            env.insert("WS_CLIENT_BUFFER".into(), "8192".into());
        }
        Service::Gateway => {}
    }
    env
}

/// Where the service binaries are: next to this executable (`target/<profile>/`, also when this
/// is a test binary in `target/<profile>/deps/`).
pub fn default_bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locate the running executable")?;
    let mut dir = exe
        .parent()
        .context("the executable has no directory")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}
