//! `/etc/miab/sidecars.toml`: shared settings now, one section per daemon as they arrive.
//!
//! Every field has a default, so no file at all is a valid configuration. Unknown fields are an
//! error, so a typo is reported instead of silently ignored.

mod authd;
mod milter;
mod policyd;

use crate::listen::ListenAddr;
pub use authd::AuthdConfig;
pub use milter::{MilterConfig, OPENDKIM_SIGN_HEADERS};
pub use policyd::{DnsblConfig, GreylistConfig, ListConfig, PolicydConfig, RateLimitConfig};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the file is looked for when neither `--config` nor `MIAB_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/miab/sidecars.toml";

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Mail-in-a-Box's `STORAGE_ROOT`; the user DB is `STORAGE_ROOT/mail/users.sqlite`.
    /// Default `/home/user-data`.
    pub storage_root: PathBuf,
    /// The box's `PRIMARY_HOSTNAME`. Default: MIAB's from `/etc/mailinabox.conf`, else the
    /// system host name.
    pub hostname: Option<String>,
    /// Postfix's `recipient_delimiter` (a set of characters; empty turns extensions off).
    /// Default `+`.
    pub recipient_delimiter: String,
    /// How long a DB reader waits for a writer's lock, in milliseconds. Default 5000.
    pub db_busy_timeout_ms: u64,
    /// `[dns]`: how the daemons reach DNS.
    pub dns: DnsConfig,
    /// `[lookup]`: the socketmap daemon.
    pub lookup: LookupConfig,
    /// `[policyd]`: the policy daemon.
    pub policyd: PolicydConfig,
    /// `[authd]`: the SMTP AUTH daemon.
    pub authd: AuthdConfig,
    /// `[milter]`: DKIM signing and DKIM/SPF/DMARC verification.
    pub milter: MilterConfig,
}

/// `[dns]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Recursive resolvers as `IP:PORT`. Default: the `nameserver` lines of
    /// `/etc/resolv.conf` (MIAB runs its own resolver on 127.0.0.1, which Spamhaus requires).
    pub nameservers: Vec<SocketAddr>,
    /// Milliseconds one block-list question or one whole SPF evaluation may take. Default 2000.
    pub timeout_ms: u64,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: Vec::new(),
            timeout_ms: 2000,
        }
    }
}

impl DnsConfig {
    /// The per-query timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// A daemon section's listener settings and limits, from the fields every daemon section has
/// (`socket_mode`, `socket_group`, `max_connections` and the three timeouts).
macro_rules! server_section {
    ($section:ty, $name:literal) => {
        impl $crate::launch::Section for $section {
            fn name(&self) -> &'static str {
                $name
            }

            fn listen_mut(&mut self) -> &mut $crate::listen::ListenAddr {
                &mut self.listen
            }

            fn unix_options(&self) -> Result<$crate::listen::UnixOptions, String> {
                <$section>::unix_options(self)
            }
        }

        impl $section {
            /// The listener settings, with the socket mode checked.
            pub fn unix_options(&self) -> Result<$crate::listen::UnixOptions, String> {
                Ok($crate::listen::UnixOptions {
                    mode: $crate::listen::parse_mode(&self.socket_mode)?,
                    group: self.socket_group.clone(),
                })
            }

            /// The connection limits.
            pub fn limits(&self) -> $crate::serve::Limits {
                $crate::serve::Limits {
                    max_connections: self.max_connections,
                    io_timeout: std::time::Duration::from_secs(self.io_timeout_secs),
                    idle_timeout: std::time::Duration::from_secs(self.idle_timeout_secs),
                    drain_timeout: std::time::Duration::from_secs(self.drain_timeout_secs),
                }
            }
        }
    };
}
use server_section;

/// `[lookup]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LookupConfig {
    /// Where to listen, in Postfix notation. Default `inet:127.0.0.1:10029`.
    pub listen: ListenAddr,
    /// Mode of a UNIX socket, octal. Default `"0660"`.
    pub socket_mode: String,
    /// Group of a UNIX socket (Postfix needs access: `postfix`). Default: the daemon's group.
    pub socket_group: Option<String>,
    /// Connections served at once. Default 512 (Postfix keeps one per process and map server).
    pub max_connections: usize,
    /// Seconds a started request may take to arrive, and a reply to be written. Default 10.
    pub io_timeout_secs: u64,
    /// Seconds a connection may sit idle (Postfix closes its own after 10). Default 300.
    pub idle_timeout_secs: u64,
    /// Seconds shutdown waits for connections to finish. Default 5.
    pub drain_timeout_secs: u64,
    /// Obsolete (the directory is held in memory); accepted so an older file still loads,
    /// and ignored with a warning.
    pub db_connections: Option<usize>,
    /// Obsolete, as `db_connections`.
    pub cache_entries: Option<usize>,
}

impl Default for LookupConfig {
    fn default() -> Self {
        LookupConfig {
            listen: ListenAddr::Inet(([127, 0, 0, 1], 10029).into()),
            socket_mode: "0660".into(),
            socket_group: None,
            max_connections: 512,
            io_timeout_secs: 10,
            idle_timeout_secs: 300,
            drain_timeout_secs: 5,
            db_connections: None,
            cache_entries: None,
        }
    }
}

server_section!(LookupConfig, "lookup");

impl Default for Config {
    fn default() -> Self {
        Config {
            storage_root: PathBuf::from("/home/user-data"),
            hostname: None,
            recipient_delimiter: "+".into(),
            db_busy_timeout_ms: 5000,
            dns: DnsConfig::default(),
            lookup: LookupConfig::default(),
            policyd: PolicydConfig::default(),
            authd: AuthdConfig::default(),
            milter: MilterConfig::default(),
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
    /// exists, else the embedded defaults. `MIAB_STORAGE_ROOT` and `MIAB_HOSTNAME` override the file.
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
        // As miabctl and MIAB's own scripts take it.
        if let Ok(host) = std::env::var("MIAB_HOSTNAME")
            && !host.is_empty()
        {
            config.hostname = Some(host);
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

    /// The box's host name (`PRIMARY_HOSTNAME`), by the rule every binary shares
    /// (`userdb::boxconf`): this file's `hostname`, else `/etc/mailinabox.conf`, else the
    /// system's name.
    pub fn box_hostname(&self) -> String {
        userdb::boxconf::primary_hostname(self.hostname.as_deref())
            .unwrap_or_else(|| "localhost".into())
    }

    /// The user DB: `STORAGE_ROOT/mail/users.sqlite`.
    pub fn db_path(&self) -> PathBuf {
        userdb::db_path(&self.storage_root)
    }

    /// The DB busy timeout.
    pub fn db_busy_timeout(&self) -> Duration {
        Duration::from_millis(self.db_busy_timeout_ms)
    }

    /// Settings present in the file that nothing reads any more.
    pub fn obsolete_settings(&self) -> Vec<&'static str> {
        [
            (
                "lookup.db_connections",
                self.lookup.db_connections.is_some(),
            ),
            ("lookup.cache_entries", self.lookup.cache_entries.is_some()),
            (
                "policyd.db_connections",
                self.policyd.db_connections.is_some(),
            ),
            ("authd.db_connections", self.authd.db_connections.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn obsolete_settings_still_load_and_are_named() {
        let c = Config::from_toml(
            "[lookup]\ndb_connections = 4\ncache_entries = 4096\n[authd]\ndb_connections = 2\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(
            c.obsolete_settings(),
            [
                "lookup.db_connections",
                "lookup.cache_entries",
                "authd.db_connections"
            ]
        );
        assert!(Config::default().obsolete_settings().is_empty());
    }

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
        let c = Config::from_toml(
            "[lookup]\nlisten = \"unix:/run/l.sock\"\nsocket_group = \"postfix\"\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.lookup.listen, ListenAddr::Unix("/run/l.sock".into()));
        assert_eq!(c.lookup.unix_options().unwrap().mode, 0o660);
        let e = Config::from_toml("[lookup]\nlisten = \"tcp:1\"\n", Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("tcp:1"), "{e}");
        assert!(Config::from_toml("[lookup]\nlisen = 1\n", Path::new("x")).is_err());
    }

    #[test]
    fn sample_config_parses() {
        let sample = include_str!("../../packaging/sidecars.toml");
        let c = Config::from_toml(sample, Path::new("packaging/sidecars.toml")).unwrap();
        // The sample documents the defaults.
        assert_eq!(c.dns, DnsConfig::default());
        assert_eq!(c.policyd, PolicydConfig::default());
        assert_eq!(c.authd, AuthdConfig::default());
        let milter = MilterConfig {
            accept_listen: "inet:127.0.0.1:8893".into(),
            ..MilterConfig::default()
        };
        assert_eq!(c.milter, milter, "the sample adds OpenDMARC's port");
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let e = Config::load(Some(Path::new("/nonexistent/sidecars.toml"))).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
    }
}
