//! A private `redis-server` on a free port with its own directory, never the one on 6379.
//!
//! It runs in the foreground as our child (no `--daemonize`), with an fsync-always append-only
//! file, so a SIGKILL loses no acknowledged write and a restart on the same port comes back
//! with the same data in about 20 ms.

use std::path::Path;
use std::time::Duration;

use crate::processes::{self, Proc, ProcessError, Spec};

pub struct RedisServer {
    pub port: u16,
    proc: Proc,
}

impl RedisServer {
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
        Ok(Self { port, proc })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn start(&mut self) -> Result<(), ProcessError> {
        self.proc.start()?;
        processes::wait_listening("redis", self.port, Duration::from_secs(10)).await
    }

    pub async fn sigkill(&mut self) {
        self.proc.kill();
        processes::wait_closed(self.port, Duration::from_secs(5)).await;
    }
}
