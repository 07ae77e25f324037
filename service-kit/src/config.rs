//! The settings every service shares (`HTTP_ADDR`, `AMQP_URL`, `REDIS_URL`, `REDIS_KEY_PREFIX`,
//! `DATA_DIR`; the table in the README), read at startup.
//!
//! The primitives and the secrets are re-exported from `env-config`, so a service reads all of
//! its settings through this module.

use std::net::SocketAddr;
use std::path::PathBuf;

pub use env_config::{
    AppEnv, ConfigError, ExposeSecret, SecretString, env_or, hostname, secret_from_env,
};

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
            amqp_url: messaging::config::amqp_url_from_env()?,
            redis_url: env_or("REDIS_URL", "redis://127.0.0.1:6379".to_owned())?,
            redis_prefix: env_or("REDIS_KEY_PREFIX", String::new())?,
            data_dir: env_or("DATA_DIR", PathBuf::from("./data"))?,
        })
    }
}
