//! A private PostgreSQL server for the tests that must stop or restart it (the machine's shared
//! server on 5432 is never touched): `initdb` into a temporary directory, `pg_ctl start` on a
//! free port of 127.0.0.1 with trust authentication, `pg_ctl stop -m immediate` (what a crash or
//! a `kill -9` of the postmaster leaves: the next start runs crash recovery), start again on the
//! same port and data, and everything stopped and removed when the [`PgCluster`] is dropped.
//!
//! The binaries are found under `/usr/lib/postgresql/<newest>/bin` (Debian's layout), or in
//! `PG_BIN_DIR` when set. PostgreSQL refuses to run as root; when the tests run as root the
//! cluster is created and run as the `postgres` system user (its data directory is chowned to
//! it).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::Command;
use tokio_postgres::NoTls;

use crate::ports;

/// A PostgreSQL server of this process, on its own port and data directory.
pub struct PgCluster {
    bin: PathBuf,
    /// Holds `data/` (the cluster), `socket/` and `server.log`; removed on drop.
    dir: tempfile::TempDir,
    port: u16,
    /// (uid, gid) the server runs as, when the tests run as root.
    run_as: Option<(u32, u32)>,
    running: bool,
}

impl PgCluster {
    /// Creates a cluster (superuser `postgres`, trust authentication) and starts it.
    pub async fn start() -> Result<Self> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("pg-cluster-")
            .tempdir()
            .context("create the cluster's directory")?;
        let run_as = run_as(dir.path())?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .context("give the cluster's directory to the postgres user")?;
        }
        let mut cluster = Self {
            bin,
            dir,
            port: 0,
            run_as,
            running: false,
        };
        let initdb = cluster
            .command("initdb")
            .arg("-D")
            .arg(cluster.data_dir())
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ])
            .output()
            .await
            .context("run initdb")?;
        if !initdb.status.success() {
            bail!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&initdb.stdout),
                String::from_utf8_lossy(&initdb.stderr)
            );
        }
        std::fs::create_dir_all(cluster.socket_dir())?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(cluster.socket_dir(), Some(uid), Some(gid))?;
        }
        // A free port can be taken between the probe and the server's bind: try a few.
        let mut last = None;
        for _ in 0..5 {
            cluster.port = ports::free_port()?;
            match cluster.start_again().await {
                Ok(()) => return Ok(cluster),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("the cluster did not start")))
    }

    /// The TCP port it listens on (127.0.0.1), the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL to database `db` of this server, as superuser `postgres`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A URL to its maintenance database.
    pub fn admin_url(&self) -> String {
        self.url("postgres")
    }

    /// Creates database `name` and returns a `DATABASE_URL` for it.
    pub async fn create_database(&self, name: &str) -> Result<String> {
        anyhow::ensure!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "database names here are letters, digits and _ ({name:?})"
        );
        let client = self.connect("postgres").await?;
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .with_context(|| format!("create database {name}"))?;
        Ok(self.url(name))
    }

    /// A client connected to database `db`.
    pub async fn connect(&self, db: &str) -> Result<tokio_postgres::Client> {
        let (client, connection) = tokio_postgres::connect(&self.url(db), NoTls)
            .await
            .with_context(|| format!("connect to the private PostgreSQL on {}", self.port))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Whether the server is (meant to be) running.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// `pg_ctl stop -m immediate`: the server and its connections are gone at once, without a
    /// checkpoint; the next start recovers from the WAL. Returns once the port is closed.
    pub async fn stop_immediate(&mut self) -> Result<()> {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .output()
            .await
            .context("run pg_ctl stop")?;
        self.running = false;
        if !out.status.success() {
            bail!(
                "pg_ctl stop failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while ports::listening(self.port).await {
            anyhow::ensure!(
                Instant::now() < deadline,
                "port {} still open after the stop",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Starts the (stopped) server on its port and data, and waits until it accepts queries.
    pub async fn start_again(&mut self) -> Result<()> {
        anyhow::ensure!(!self.running, "the private PostgreSQL is already running");
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c max_connections=400 -c fsync=off -c full_page_writes=off",
            self.port,
            self.socket_dir().display()
        );
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_path())
            .args(["-o", &options, "-w", "-t", "60", "start"])
            .output()
            .await
            .context("run pg_ctl start")?;
        if !out.status.success() {
            bail!(
                "pg_ctl start on port {} failed: {}{}\n{}",
                self.port,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            );
        }
        self.running = true;
        // `-w` waits for the socket; a query proves recovery is over.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.connect("postgres").await {
                Ok(client) if client.simple_query("SELECT 1").await.is_ok() => return Ok(()),
                _ if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Ok(_) | Err(_) => bail!(
                    "the private PostgreSQL on {} does not answer\n{}",
                    self.port,
                    self.log_tail()
                ),
            }
        }
    }

    /// Immediate stop, `down`, start again.
    pub async fn restart(&mut self, down: Duration) -> Result<()> {
        self.stop_immediate().await?;
        tokio::time::sleep(down).await;
        self.start_again().await
    }

    /// The server's log (appended across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("socket")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command
            .current_dir(self.dir.path())
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST")
            .stdin(Stdio::null())
            // The server pg_ctl starts keeps running after pg_ctl exits: do not hand it our pipes
            // (`output()` would wait for them to close).
            .kill_on_drop(false);
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        command
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        let mut command = std::process::Command::new(self.bin.join("pg_ctl"));
        command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::process::CommandExt::uid(&mut command, uid);
            std::os::unix::process::CommandExt::gid(&mut command, gid);
        }
        let _ = command.status();
        self.running = false;
    }
}

/// `PG_BIN_DIR`, else the newest `/usr/lib/postgresql/<version>/bin` holding `pg_ctl`.
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context(
            "no /usr/lib/postgresql (install PostgreSQL: scripts/ensure-deps.sh) and no PG_BIN_DIR",
        )?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.split('.').next()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .context("no /usr/lib/postgresql/*/bin/pg_ctl (install PostgreSQL: scripts/ensure-deps.sh) and no PG_BIN_DIR")
}

/// The `postgres` user's (uid, gid) when this process is root (the owner of a directory it just
/// created is its effective uid), else `None`.
fn run_as(created: &Path) -> Result<Option<(u32, u32)>> {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata(created)?.uid() != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").context("read /etc/passwd")?;
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&"postgres") && fields.len() > 3)
                .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                .flatten()
        })
        .map(Some)
        .context("running as root, and there is no postgres user to run the private PostgreSQL as")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_private_server_keeps_its_data_across_an_immediate_stop_and_is_gone_when_dropped() {
        let mut cluster = PgCluster::start().await.unwrap();
        let port = cluster.port();
        assert_ne!(port, 5432, "never the machine's shared server");
        let url = cluster.create_database("kept").await.unwrap();
        assert_eq!(url, format!("postgres://postgres@127.0.0.1:{port}/kept"));
        let client = cluster.connect("kept").await.unwrap();
        client
            .batch_execute("CREATE TABLE t (v INT); INSERT INTO t VALUES (7)")
            .await
            .unwrap();

        cluster.stop_immediate().await.unwrap();
        assert!(!cluster.is_running());
        // The open connection is dead and new ones are refused.
        assert!(client.simple_query("SELECT 1").await.is_err());
        assert!(cluster.connect("kept").await.is_err());

        cluster.start_again().await.unwrap();
        assert_eq!(cluster.port(), port);
        let client = cluster.connect("kept").await.unwrap();
        let v: i32 = client
            .query_one("SELECT v FROM t", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(v, 7, "a committed row survives the immediate stop");

        // restart = stop + start, same port and data.
        cluster.restart(Duration::from_millis(100)).await.unwrap();
        let client = cluster.connect("kept").await.unwrap();
        let v: i32 = client
            .query_one("SELECT v FROM t", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(v, 7);

        let dir = cluster.dir.path().to_path_buf();
        drop(client);
        drop(cluster);
        assert!(
            !ports::listening(port).await,
            "the server still listens on {port}"
        );
        assert!(!dir.exists(), "{} was not removed", dir.display());
    }
}
