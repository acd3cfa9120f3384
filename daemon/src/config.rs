//! `/etc/miab/sidecars.toml`: shared settings now, one section per daemon as they arrive.
//!
//! Every field has a default, so no file at all is a valid configuration. Unknown fields are an
//! error, so a typo is reported instead of silently ignored.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Where the file is looked for when neither `--config` nor `MIAB_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/miab/sidecars.toml";

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Mail-in-a-Box's `STORAGE_ROOT`; the user DB is `STORAGE_ROOT/mail/users.sqlite`.
    /// Default `/home/user-data`.
    pub storage_root: PathBuf,
    /// The box's `PRIMARY_HOSTNAME`. Default: the system host name.
    pub hostname: Option<String>,
    /// Postfix's `recipient_delimiter` (a set of characters; empty turns extensions off).
    /// Default `+`.
    pub recipient_delimiter: String,
    /// How long a DB reader waits for a writer's lock, in milliseconds. Default 5000.
    pub db_busy_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            storage_root: PathBuf::from("/home/user-data"),
            hostname: None,
            recipient_delimiter: "+".into(),
            db_busy_timeout_ms: 5000,
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The named file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped fields.
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
}

impl Config {
    /// Parses TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })
    }

    /// Loads `explicit` (which must exist), else `MIAB_CONFIG`, else the default path if it
    /// exists, else the embedded defaults. `MIAB_STORAGE_ROOT` overrides the file.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let env_path = std::env::var_os("MIAB_CONFIG").map(PathBuf::from);
        let chosen = explicit.map(Path::to_owned).or(env_path);
        let mut config = match chosen {
            Some(p) => Self::read(&p)?,
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                Self::read(Path::new(DEFAULT_CONFIG_PATH))?
            }
            None => Config::default(),
        };
        if let Some(root) = std::env::var_os("MIAB_STORAGE_ROOT") {
            config.storage_root = PathBuf::from(root);
        }
        Ok(config)
    }

    fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// The user DB path.
    pub fn db_path(&self) -> PathBuf {
        self.storage_root.join("mail").join("users.sqlite")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(
            Config::from_toml("", Path::new("x")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn fields_and_typos() {
        let c = Config::from_toml(
            "storage_root = \"/srv/miab\"\nhostname = \"box.example.com\"\nrecipient_delimiter = \"+-\"\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.db_path(), PathBuf::from("/srv/miab/mail/users.sqlite"));
        assert_eq!(c.recipient_delimiter, "+-");
        let e = Config::from_toml("storage_rot = \"/x\"", Path::new("/etc/x.toml")).unwrap_err();
        assert!(e.to_string().contains("/etc/x.toml") && e.to_string().contains("storage_rot"));
        assert!(Config::from_toml("db_busy_timeout_ms = \"soon\"", Path::new("x")).is_err());
    }

    #[test]
    fn sample_config_parses() {
        let sample = include_str!("../../packaging/sidecars.toml");
        Config::from_toml(sample, Path::new("packaging/sidecars.toml")).unwrap();
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let e = Config::load(Some(Path::new("/nonexistent/sidecars.toml"))).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
    }
}
