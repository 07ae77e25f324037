//! Typed configuration from environment variables (the table in the README): the primitives
//! every crate reads its settings with, and nothing else — no crate of this workspace, no HTTP,
//! no broker. The settings themselves live with the code that uses them: `AMQP_URL` and the
//! store's in `messaging::config`, the shared service settings in `service_kit::config`, each
//! service's own in its `lib.rs`.
//!
//! Secrets (`JWT_SECRET`, `WEBHOOK_SECRET`) are required outside `APP_ENV=development` and
//! live in [`SecretString`]s, whose `Debug` form is redacted; an error about one names the
//! variable and never shows its value.
//!
//! Layout: one file — [`env_or`] and [`ConfigError`], [`AppEnv`], [`secret_from_env`] (read by
//! `jwt-auth` and `webhook-signing`), [`hostname`].

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

/// This machine's name, for connection names such as `orders@host`.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
