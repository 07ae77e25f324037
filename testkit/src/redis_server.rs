//! A private `redis-server` on a port of its own with its own directory, never the shared one on
//! 6379, for tests that kill and restart Redis.
//!
//! It runs in the foreground as our child (no `--daemonize`) in a process group of its own
//! ([`crate::child`]), with an fsync-always append-only file, so a SIGKILL loses no acknowledged
//! write and a start again on the same port comes back with the same data in about 20 ms.

use std::path::Path;
use std::time::Duration;

use crate::child::{Proc, ProcessError, Spec};
use crate::ports;

pub struct RedisServer {
    pub port: u16,
    proc: Proc,
    /// The data directory, when the server made it itself ([`RedisServer::private`]).
    _dir: Option<tempfile::TempDir>,
}

impl RedisServer {
    /// A server on `port` keeping its data and log in `dir` (not started yet).
    pub fn new(dir: &Path, port: u16) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let args = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir.display().to_string(),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ]
        .map(str::to_owned)
        .to_vec();
        let proc = Proc::new(Spec {
            name: "redis".into(),
            program: "redis-server".into(),
            args,
            env: Default::default(),
            log: dir.join("redis.log"),
        });
        Ok(Self {
            port,
            proc,
            _dir: None,
        })
    }

    /// A started server on a free port, with a temporary directory removed when it is dropped.
    pub async fn private() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut server = Self::new(dir.path(), ports::free_port()?)?;
        server._dir = Some(dir);
        server.start().await?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (a running one is killed first) on its port and data, and waits until
    /// it listens.
    pub async fn start(&mut self) -> Result<(), ProcessError> {
        self.proc.start()?;
        ports::wait_listening("redis", self.port, Duration::from_secs(10)).await?;
        Ok(())
    }

    /// SIGKILLs the server and waits (at most 5 s) until its port is closed.
    pub async fn sigkill(&mut self) {
        self.proc.kill();
        ports::wait_closed(self.port, Duration::from_secs(5)).await;
    }
}
