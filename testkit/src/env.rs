//! [`TestEnv`]: a private vhost on the shared broker, a Redis key prefix, a temp directory, and
//! (for tests on PostgreSQL) a database of its own per service; all of it removed by
//! [`TestEnv::cleanup`], or when the test panics, on drop.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Result;

use crate::TestDatabase;
use crate::rabbit::{Vhost, delete_vhost};
use crate::redis::delete_keys;

/// The shared Redis (`TEST_REDIS_URL`, by default `redis://127.0.0.1:6379`).
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub struct TestEnv {
    pub vhost: String,
    pub amqp_url: String,
    pub redis_url: String,
    pub redis_prefix: String,
    pub dir: tempfile::TempDir,
    /// The PostgreSQL databases made for this test, by service (see [`TestEnv::database`]).
    databases: Databases,
    http: reqwest::Client,
    cleaned: bool,
}

/// A test's PostgreSQL databases by service, shared with whatever starts the services (e2e's
/// `System`) and asks for them.
pub type Databases = Arc<tokio::sync::Mutex<HashMap<String, TestDatabase>>>;

impl TestEnv {
    /// Creates a fresh vhost named after the test, grants guest on it, and a temp dir.
    pub async fn new(name: &str) -> Result<Self> {
        let vhost = Vhost::create(name).await?;
        Ok(Self {
            amqp_url: vhost.url(),
            redis_url: redis_url(),
            redis_prefix: format!("{}:", vhost.name),
            vhost: vhost.name,
            dir: tempfile::tempdir()?,
            databases: Databases::default(),
            http: reqwest::Client::new(),
            cleaned: false,
        })
    }

    /// A data directory of its own for one service.
    pub fn data_dir(&self, service: &str) -> std::path::PathBuf {
        self.dir.path().join(service)
    }

    /// The databases of this test, for whatever starts the services to create them in.
    pub fn databases(&self) -> Databases {
        self.databases.clone()
    }

    /// The PostgreSQL database of `service` in this test, created on first use (every instance
    /// of the service shares it); dropped by [`TestEnv::cleanup`].
    pub async fn database(&self, service: &str) -> Result<TestDatabase> {
        database(&self.databases, &self.vhost, service).await
    }

    /// Deletes the vhost (and so every queue of the test), the test's Redis keys and its
    /// PostgreSQL databases. Call at the end of a test.
    pub async fn cleanup(mut self) {
        self.cleaned = true;
        drop_databases(&self.databases).await;
        delete_vhost(&self.http, &self.vhost).await;
        if let Err(e) = delete_keys(&self.redis_url, &self.redis_prefix).await {
            tracing::warn!(error = %e, prefix = %self.redis_prefix, "could not delete the test's Redis keys");
        }
    }
}

/// The database of `service` in `databases`, created on first use, named after the test.
pub async fn database(databases: &Databases, vhost: &str, service: &str) -> Result<TestDatabase> {
    let mut databases = databases.lock().await;
    if let Some(db) = databases.get(service) {
        return Ok(db.clone());
    }
    // `test-<name>-<id>` → `<name>_<service>`: the database says which test made it.
    let test = vhost
        .trim_start_matches("test-")
        .rsplit_once('-')
        .map_or(vhost, |(name, _)| name);
    let db = TestDatabase::create(&format!("{test}_{service}")).await?;
    databases.insert(service.to_owned(), db.clone());
    Ok(db)
}

async fn drop_databases(databases: &Databases) {
    let all: Vec<TestDatabase> = databases.lock().await.drain().map(|(_, db)| db).collect();
    for db in all {
        let name = db.name.clone();
        if let Err(e) = db.drop().await {
            tracing::warn!(error = %e, database = %name, "could not drop the test's database");
        }
    }
}

/// A test that panics before `cleanup` still removes its vhost and keys, from a thread of its
/// own because `Drop` cannot await.
impl Drop for TestEnv {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let (vhost, redis_url, prefix, databases) = (
            self.vhost.clone(),
            self.redis_url.clone(),
            self.redis_prefix.clone(),
            self.databases.clone(),
        );
        let done = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                delete_vhost(&reqwest::Client::new(), &vhost).await;
                let _ = delete_keys(&redis_url, &prefix).await;
                drop_databases(&databases).await;
            });
        });
        let _ = done.join();
    }
}
