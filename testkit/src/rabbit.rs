//! A vhost of the test's own on the shared RabbitMQ (`RABBITMQ_MANAGEMENT_URL`, by default
//! `http://127.0.0.1:15672`; `TEST_AMQP_BASE`, by default `amqp://guest:guest@127.0.0.1:5672`),
//! created through the management API with every permission for `guest`, and deleted (with
//! every queue in it) by [`Vhost::delete`].

use anyhow::{Context, Result, bail};

/// The shared broker's management API.
pub fn management_url() -> String {
    std::env::var("RABBITMQ_MANAGEMENT_URL").unwrap_or_else(|_| "http://127.0.0.1:15672".into())
}

/// The shared broker's AMQP address without a vhost.
pub fn amqp_base() -> String {
    std::env::var("TEST_AMQP_BASE").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".into())
}

pub struct Vhost {
    pub name: String,
    http: reqwest::Client,
}

impl Vhost {
    /// Creates `test-<test>-<8 hex>` and grants `guest` everything on it.
    pub async fn create(test: &str) -> Result<Self> {
        let name = format!(
            "test-{test}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let http = reqwest::Client::new();
        let management = management_url();
        for path in [
            format!("/api/vhosts/{name}"),
            format!("/api/permissions/{name}/guest"),
        ] {
            let body = serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"});
            let status = http
                .put(format!("{management}{path}"))
                .basic_auth("guest", Some("guest"))
                .json(&body)
                .send()
                .await
                .context(
                    "the broker's management API does not answer: is rabbitmq_management enabled?",
                )?
                .status();
            if !status.is_success() {
                bail!("PUT {path}: {status}");
            }
        }
        Ok(Self { name, http })
    }

    /// The vhost's AMQP URL.
    pub fn url(&self) -> String {
        format!("{}/{}", amqp_base(), self.name)
    }

    /// Deletes the vhost and everything in it.
    pub async fn delete(self) {
        delete_vhost(&self.http, &self.name).await;
    }
}

/// Deletes vhost `name` and everything in it; a failure is ignored (the test is over).
pub async fn delete_vhost(http: &reqwest::Client, name: &str) {
    let _ = http
        .delete(format!("{}/api/vhosts/{name}", management_url()))
        .basic_auth("guest", Some("guest"))
        .send()
        .await;
}
