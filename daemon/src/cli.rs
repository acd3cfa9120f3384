//! The flags every daemon takes: `--config`, `--storage-root`, `--listen`.

use crate::config::{Config, ConfigError};
use crate::listen::ListenAddr;
use std::path::PathBuf;

/// Flags shared by all daemons; flatten into each daemon's own `clap` parser.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Configuration file [default: $MIAB_CONFIG, else /etc/miab/sidecars.toml if it exists,
    /// else built-in defaults].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Mail-in-a-Box's STORAGE_ROOT (overrides the file and $MIAB_STORAGE_ROOT).
    #[arg(long, value_name = "DIR")]
    pub storage_root: Option<PathBuf>,
    /// Listen address in Postfix notation: inet:127.0.0.1:PORT or unix:/path (overrides the
    /// file).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<ListenAddr>,
}

impl CommonArgs {
    /// Loads the configuration and applies `--storage-root`. `--listen` is applied by each
    /// daemon to its own section.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = Config::load(self.config.as_deref())?;
        if let Some(root) = &self.storage_root {
            config.storage_root.clone_from(root);
        }
        Ok(config)
    }
}
