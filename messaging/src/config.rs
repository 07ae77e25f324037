//! Typed configuration from environment variables (the table in the README).
//!
//! Secrets (`JWT_SECRET`, `WEBHOOK_SECRET`) are required outside `APP_ENV=development` and
//! live in [`SecretString`]s, whose `Debug` form is redacted; an error about one names the
//! variable and never shows its value.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

pub use secrecy::{ExposeSecret, SecretString};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {name}={value:?} is invalid: {reason}")]
    Invalid {
        name: String,
        value: String,
        reason: String,
    },
    /// A secret is missing or unfit; its value is never part of the message.
    #[error("environment variable {name} {reason}")]
    Secret { name: String, reason: String },
}

/// Reads `name`, or `default` when it is unset or empty.
pub fn env_or<T>(name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => {
            value
                .trim()
                .parse()
                .map_err(|e: T::Err| ConfigError::Invalid {
                    name: name.into(),
                    value,
                    reason: e.to_string(),
                })
        }
        _ => Ok(default),
    }
}

/// `APP_ENV`: `development` lets a service start with the built-in development secrets (with
/// a warning); anything else — `production`, or the variable unset — requires real ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppEnv {
    Development,
    Production,
}

impl FromStr for AppEnv {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "development" | "dev" => Ok(Self::Development),
            "production" | "prod" => Ok(Self::Production),
            _ => Err("expected development or production".into()),
        }
    }
}

impl AppEnv {
    /// `APP_ENV`, production when unset: a deployment that forgets it is safe, not open.
    pub fn from_env() -> Result<Self, ConfigError> {
        env_or("APP_ENV", Self::Production)
    }
}

/// Shortest secret accepted outside development: 256 bits, as many as HS256's and the webhook
/// HMAC's output, so a secret is never the weaker part.
pub const MIN_SECRET_BYTES: usize = 32;

/// How a secret of one kind is measured: its length in bytes of key material, or why its text
/// is not a secret of that kind at all.
pub type SecretMeasure = fn(&str) -> Result<usize, String>;

/// Reads the secret `name`.
///
/// Outside [`AppEnv::Development`] it is required and must have at least [`MIN_SECRET_BYTES`]
/// of key (as `measure` counts them); in development an unset secret falls back to
/// `dev_default` and a short one is accepted, each with a warning. A malformed one (that
/// `measure` refuses) is an error everywhere.
pub fn secret_from_env(
    name: &str,
    app_env: AppEnv,
    dev_default: &str,
    measure: SecretMeasure,
) -> Result<SecretString, ConfigError> {
    let error = |reason: String| ConfigError::Secret {
        name: name.to_owned(),
        reason,
    };
    let text = std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty());
    let Some(text) = text else {
        return match app_env {
            AppEnv::Development => {
                tracing::warn!(
                    "{name} is not set: using the built-in development secret (APP_ENV=development); never do this in a shared or production environment"
                );
                Ok(SecretString::from(dev_default))
            }
            AppEnv::Production => Err(error(format!(
                "is required (unset or empty): set it to at least {MIN_SECRET_BYTES} random bytes \
                 (see docs/operations.md, \"Secrets\"), or set APP_ENV=development on a developer machine"
            ))),
        };
    };
    let bytes = measure(&text).map_err(&error)?;
    if bytes < MIN_SECRET_BYTES {
        match app_env {
            AppEnv::Development => tracing::warn!(
                "{name} has only {bytes} bytes of key; at least {MIN_SECRET_BYTES} are required outside APP_ENV=development"
            ),
            AppEnv::Production => {
                return Err(error(format!(
                    "is too short: {bytes} bytes of key, at least {MIN_SECRET_BYTES} are required \
                     (see docs/operations.md, \"Secrets\")"
                )));
            }
        }
    }
    Ok(SecretString::from(text))
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
        Err(e) => Err(ConfigError::Invalid {
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
