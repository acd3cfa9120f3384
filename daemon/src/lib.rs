//! Plumbing shared by the sidecar daemons. For now: the configuration file with its embedded
//! defaults, and logging. Listeners, the accept loop and shutdown join with the first daemon.

pub mod config;

pub use config::{Config, ConfigError};

/// Logs to stderr (journald adds timestamps); `RUST_LOG` overrides the `info` default.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .try_init();
}
