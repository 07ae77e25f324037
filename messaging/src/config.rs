//! Typed configuration from environment variables (the table in the README).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}={value:?} is invalid: {reason}")]
pub struct ConfigError {
    name: String,
    value: String,
    reason: String,
}

/// Reads `name`, or `default` when it is unset or empty.
pub fn env_or<T>(name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => {
            value.trim().parse().map_err(|e: T::Err| ConfigError {
                name: name.into(),
                value,
                reason: e.to_string(),
            })
        }
        _ => Ok(default),
    }
}

/// The settings every service shares.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    pub http_addr: SocketAddr,
    pub amqp_url: String,
    pub redis_url: String,
    /// Prepended to every Redis key and channel (isolates test runs sharing one Redis).
    pub redis_prefix: String,
    pub data_dir: PathBuf,
}

impl CommonConfig {
    pub fn from_env(default_port: u16) -> Result<Self, ConfigError> {
        Ok(Self {
            http_addr: env_or("HTTP_ADDR", SocketAddr::from(([0, 0, 0, 0], default_port)))?,
            amqp_url: amqp_url_from_env()?,
            redis_url: env_or("REDIS_URL", "redis://127.0.0.1:6379".to_owned())?,
            redis_prefix: env_or("REDIS_KEY_PREFIX", String::new())?,
            data_dir: env_or("DATA_DIR", PathBuf::from("./data"))?,
        })
    }
}

/// `AMQP_URL`: one broker URL or a comma-separated list of a cluster's nodes, checked here so
/// that a malformed list stops the service at startup with the variable's name.
fn amqp_url_from_env() -> Result<String, ConfigError> {
    check_amqp_url(env_or(
        "AMQP_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
    )?)
}

fn check_amqp_url(value: String) -> Result<String, ConfigError> {
    match crate::broker::node_urls(&value) {
        Ok(_) => Ok(value),
        Err(e) => Err(ConfigError {
            name: "AMQP_URL".into(),
            // The reason names the entry by host and position; the value may hold a password.
            value: "(not shown: it may hold a password)".into(),
            reason: e.to_string(),
        }),
    }
}

/// This machine's name, for connection names such as `orders@host`.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
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
