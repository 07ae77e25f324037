//! The life cycle every service shares: bind the HTTP port, run background tasks (broker link,
//! outbox relay, sweepers) and stop them all together. Tests spawn a service on port 0 and stop
//! it; `main` runs it until Ctrl-C or SIGTERM. Once the tasks have ended, its databases are
//! closed, so a clean stop leaves no `-wal`/`-shm` files behind.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::store::Db;

/// A running service.
pub struct Running {
    pub name: &'static str,
    /// Where its HTTP server listens (the real port when configured with port 0).
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    /// Closed after the tasks, by [`Running::stop`].
    databases: Vec<Db>,
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

    /// Closes `db` when the service stops, after every task ended (see [`Db::close`]).
    pub fn close_on_stop(&mut self, db: Db) {
        self.databases.push(db);
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

    /// Runs until Ctrl-C or SIGTERM, then stops cleanly.
    pub async fn run_until_signal(self) {
        crate::ops::shutdown_signal().await;
        info!(service = self.name, "shutting down");
        self.stop().await;
    }
}
