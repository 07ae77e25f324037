//! The life cycle every service shares: bind the HTTP port, run background tasks (broker link,
//! outbox relay, sweepers) and stop them all together. Tests spawn a service on port 0 and stop
//! it; `main` runs it until Ctrl-C or SIGTERM. Once the tasks have ended, its databases are
//! closed, so a clean stop leaves no `-wal`/`-shm` files behind.

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use messaging::broker::Broker;
use messaging::store::Backend;

/// Why a service stopped on its own: a task it cannot run without failed for good.
#[derive(Debug, thiserror::Error)]
#[error("{service} stopped: {reason}")]
pub struct Failed {
    pub service: &'static str,
    pub reason: String,
}

/// A running service.
pub struct Running {
    pub name: &'static str,
    /// Where its HTTP server listens (the real port when configured with port 0).
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    /// Closed after the tasks, by [`Running::stop`].
    databases: Vec<Backend>,
    /// Set by a critical task that failed (see [`Running::spawn_critical`]).
    failed: Arc<Mutex<Option<String>>>,
}

impl Running {
    /// Binds `addr` and serves `router` on it.
    pub async fn start(
        name: &'static str,
        addr: SocketAddr,
        router: Router,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("{name} could not listen on {addr}: {e}"))
        })?;
        let addr = listener.local_addr()?;
        let mut running = Self {
            name,
            addr,
            shutdown: CancellationToken::new(),
            tasks: JoinSet::new(),
            databases: Vec::new(),
            failed: Arc::default(),
        };
        running.spawn(move |stop| async move {
            if let Err(e) = crate::ops::serve(listener, router, stop).await {
                warn!(error = %e, "http server stopped");
            }
        });
        running.spawn(crate::ops::metrics_upkeep);
        info!(service = name, %addr, "listening");
        Ok(running)
    }

    /// Runs a background task that must return once its token is cancelled.
    pub fn spawn<F, Fut>(&mut self, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task(self.shutdown.clone()));
    }

    /// Runs a task the service cannot do without: if it returns `Err`, the error is logged and
    /// the whole service stops, and [`Running::run_until_signal`] returns it (exit non-zero).
    pub fn spawn_critical<F, Fut, E>(&mut self, what: &'static str, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Display,
    {
        let (shutdown, failed, service) = (self.shutdown.clone(), self.failed.clone(), self.name);
        let task = task(self.shutdown.clone());
        self.tasks.spawn(async move {
            if let Err(e) = task.await {
                let reason = format!("{what}: {e}");
                error!(service, %reason, "a task the service cannot run without failed; stopping");
                if let Ok(mut slot) = failed.lock() {
                    slot.get_or_insert(reason);
                }
                shutdown.cancel();
            }
        });
    }

    /// Runs the broker link (and so every consumer) once `db` is ready: at once for SQLite;
    /// for PostgreSQL after its schema is up to date, which [`messaging::pg::PgDb::run`] brings
    /// about in a critical task of its own while `/ready` says false. `db` is closed on stop.
    pub fn run_broker(&mut self, broker: Broker, db: impl Into<Backend>) {
        let db = db.into();
        match db.clone() {
            Backend::Sqlite(_) => self.spawn(move |stop| broker.run(stop)),
            Backend::Postgres(pg) => {
                let schema = pg.clone();
                self.spawn_critical("PostgreSQL", move |stop| schema.run(stop));
                self.spawn(move |stop| async move {
                    if pg.wait_ready(&stop).await {
                        broker.run(stop).await;
                    }
                });
            }
        }
        self.close_on_stop(db);
    }

    /// Closes `db` when the service stops, after every task ended (see [`Backend::close`]).
    pub fn close_on_stop(&mut self, db: impl Into<Backend>) {
        self.databases.push(db.into());
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Asks every task to stop and waits for them (at most 10 s, then aborts the rest).
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                service = self.name,
                "tasks did not stop within 10 s; aborting them"
            );
            self.tasks.shutdown().await;
        }
        for db in self.databases.drain(..) {
            db.close().await;
        }
        info!(service = self.name, "stopped");
    }

    /// Ends the service abruptly, as close to a SIGKILL as one process can get for one of its
    /// services (tests of several instances crash one this way): every task is aborted where it
    /// stands — no drain, no relay flush, nothing in flight acked; the consumers' channels close
    /// with them, so the broker redelivers their unacked messages to the other instances — and
    /// the database pools are closed (an open PostgreSQL transaction is rolled back by the
    /// server when its connection drops). Outbox rows this instance had claimed wait for their
    /// lease to run out.
    pub async fn kill(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.shutdown.cancel();
        for db in self.databases.drain(..) {
            db.close().await;
        }
        warn!(service = self.name, "killed");
    }

    /// Runs until Ctrl-C or SIGTERM, then stops cleanly; or until a critical task failed, then
    /// stops and returns why.
    pub async fn run_until_signal(self) -> Result<(), Failed> {
        let stopped = self.shutdown.clone();
        tokio::select! {
            _ = crate::ops::shutdown_signal() => info!(service = self.name, "shutting down"),
            _ = stopped.cancelled() => {}
        }
        let (service, failed) = (self.name, self.failed.clone());
        self.stop().await;
        let reason = failed.lock().ok().and_then(|mut slot| slot.take());
        match reason {
            Some(reason) => Err(Failed { service, reason }),
            None => Ok(()),
        }
    }
}
