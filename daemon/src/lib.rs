//! Plumbing shared by the sidecar daemons: the configuration file with its embedded defaults,
//! the common flags, listeners in Postfix notation, the accept loop with its limits and graceful
//! shutdown, and logging.

pub mod cli;
pub mod config;
#[cfg(feature = "dns")]
pub mod dns;
pub mod launch;
pub mod listen;
pub mod serve;
pub mod session;

pub use cli::CommonArgs;
pub use config::{
    AuthdConfig, Config, ConfigError, DnsConfig, DnsblConfig, GreylistConfig, ListConfig,
    LookupConfig, MilterConfig, OPENDKIM_SIGN_HEADERS, PolicydConfig, RateLimitConfig,
};
pub use launch::{Runtime, Section, launch};
pub use listen::{ListenAddr, Listener, Peer, Stream, UnixOptions};
pub use serve::{
    Conn, Limits, Periodic, Shutdown, Trigger, periodic, serve, shutdown_on_signals, timed,
};

/// Logs to stderr (journald adds timestamps); `RUST_LOG` overrides the `info` default.
/// Colours only on a terminal: the journal and log files get plain text.
pub fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .without_time()
        .try_init();
}
