//! A PostgreSQL database per test on the machine's server (`TEST_PG_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/postgres`), so tests run in parallel and leave nothing
//! behind: [`TestDatabase::create`] makes `t_<hint>_<random>`, [`TestDatabase::drop`] drops it
//! even while a service still holds connections to it.

use anyhow::{Context, Result};
use tokio_postgres::NoTls;

/// The server tests create their databases on, as a URL to its maintenance database.
pub fn admin_url() -> String {
    std::env::var("TEST_PG_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database created for one test.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    /// Its name (`t_<hint>_<8 hex>`).
    pub name: String,
    /// A `DATABASE_URL` for it.
    pub url: String,
    admin: String,
}

impl TestDatabase {
    /// Creates an empty database named after `hint` (letters, digits and `_` kept).
    pub async fn create(hint: &str) -> Result<Self> {
        let admin = admin_url();
        let hint: String = hint
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        let name = format!(
            "t_{hint}_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let client = connect(&admin).await?;
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .with_context(|| format!("creating test database {name}"))?;
        let url = database_url(&admin, &name);
        Ok(Self { name, url, admin })
    }

    /// Drops the database, closing the connections services still hold to it.
    pub async fn drop(self) -> Result<()> {
        let client = connect(&self.admin).await?;
        client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .await
            .with_context(|| format!("dropping test database {}", self.name))
    }

    /// Marks the database as migrated to `version` by a newer release than the binary under
    /// test (a `schema_migrations` table as `messaging::pg` keeps it, with that one row).
    pub async fn mark_schema_version(&self, version: i64) -> Result<()> {
        let client = self.connect().await?;
        client
            .batch_execute(
                "CREATE TABLE schema_migrations (
                     version BIGINT PRIMARY KEY,
                     name TEXT NOT NULL,
                     applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                 )",
            )
            .await?;
        client
            .execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, 'from a newer release')",
                &[&version],
            )
            .await?;
        Ok(())
    }

    /// A client connected to this database (to look at rows a test asserts on).
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        connect(&self.url).await
    }
}

/// `admin` with its database name replaced by `name`.
fn database_url(admin: &str, name: &str) -> String {
    let (base, query) = match admin.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (admin, None),
    };
    // postgres://user@host:port/db → keep everything up to the last '/' after the authority.
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let cut = base[authority_end..]
        .find('/')
        .map_or(base.len(), |i| authority_end + i);
    let mut url = format!("{}/{name}", &base[..cut]);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}

async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to PostgreSQL for the tests ({})", redact(url)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "test database connection closed");
        }
    });
    Ok(client)
}

/// The URL without its password, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user_info = &url[scheme + 3..at];
            let user = user_info.split(':').next().unwrap_or("");
            format!("{}{user}@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_replaces_the_admin_one() {
        assert_eq!(
            database_url("postgres://postgres@127.0.0.1:5432/postgres", "t_x"),
            "postgres://postgres@127.0.0.1:5432/t_x"
        );
        assert_eq!(
            database_url("postgres://u:p@h/postgres?sslmode=disable", "t_x"),
            "postgres://u:p@h/t_x?sslmode=disable"
        );
        assert_eq!(database_url("postgres://u@h", "t_x"), "postgres://u@h/t_x");
    }

    #[test]
    fn the_password_is_left_out_of_messages() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u@h/db");
    }

    #[tokio::test]
    async fn a_test_database_is_created_usable_and_dropped() {
        let db = TestDatabase::create("testkit").await.unwrap();
        let client = db.connect().await.unwrap();
        let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
        drop(client);
        let name = db.name.clone();
        db.drop().await.unwrap();
        let admin = connect(&admin_url()).await.unwrap();
        let left = admin
            .query("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await
            .unwrap();
        assert!(left.is_empty(), "{name} was not dropped");
    }
}
