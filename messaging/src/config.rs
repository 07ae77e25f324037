//! The settings messaging reads for itself: `AMQP_URL` (one broker or a cluster's nodes),
//! checked at startup. The store's settings (`DATABASE_URL`, `INBOX_RETENTION_SECS`, …) are read
//! in `store.rs` and `pg.rs` with the primitives re-exported here from `env-config`; the settings
//! every service shares (`HTTP_ADDR`, `REDIS_URL`, …) are `service_kit::config::CommonConfig`.

pub use env_config::{ConfigError, env_or, hostname};

/// `AMQP_URL`: one broker URL or a comma-separated list of a cluster's nodes, checked here so
/// that a malformed list stops the service at startup with the variable's name.
pub fn amqp_url_from_env() -> Result<String, ConfigError> {
    check_amqp_url(env_or(
        "AMQP_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
    )?)
}

fn check_amqp_url(value: String) -> Result<String, ConfigError> {
    match crate::broker::node_urls(&value) {
        Ok(_) => Ok(value),
        Err(e) => Err(ConfigError::Invalid {
            name: "AMQP_URL".into(),
            // The reason names the entry by host and position; the value may hold a password.
            value: "(not shown: it may hold a password)".into(),
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod amqp_url_tests {
    use super::*;

    #[test]
    fn a_malformed_node_list_is_a_startup_error_naming_amqp_url() {
        let err = check_amqp_url("amqp://u:secret@a:5672/%2f,,amqp://u:secret@b:5672/%2f".into())
            .unwrap_err()
            .to_string();
        assert!(err.contains("AMQP_URL"), "{err}");
        assert!(err.contains("entry 2"), "{err}");
        assert!(!err.contains("secret"), "the password leaked: {err}");
    }

    #[test]
    fn one_url_and_a_list_are_accepted_as_given() {
        for value in [
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            "amqp://u:p@rabbit1:5672/%2f, amqp://u:p@rabbit2:5672/%2f,amqp://u:p@rabbit3:5672/%2f",
        ] {
            assert_eq!(check_amqp_url(value.into()).unwrap(), value);
        }
    }
}
