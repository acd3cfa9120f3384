//! `[lookup]`: the socketmap daemon's section. It has only the listener settings, plus two
//! obsolete ones an older file may still carry.

use daemon::{Limits, ListenAddr, Server, UnixOptions};
use serde::Deserialize;
use std::time::Duration;

/// `[lookup]`, beyond the listener settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Obsolete (the directory is held in memory); accepted so an older file still loads,
    /// and ignored with a warning.
    pub db_connections: Option<usize>,
    /// Obsolete, as `db_connections`.
    pub cache_entries: Option<usize>,
}

impl daemon::Section for Settings {
    const NAME: &'static str = "lookup";

    /// `inet:127.0.0.1:10029`; 512 connections (Postfix keeps one per process and map
    /// server); 10 s per request; 300 s idle (Postfix closes its own after 10); 5 s drain.
    fn server_defaults() -> Server {
        Server {
            metrics_listen: None,
            journal: daemon::config::JournalSettings::default(),
            listen: ListenAddr::Inet(([127, 0, 0, 1], 10029).into()),
            unix: UnixOptions::default(),
            limits: Limits {
                max_connections: 512,
                io_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(300),
                drain_timeout: Duration::from_secs(5),
            },
        }
    }

    fn ignored(&self, _: &[&'static str]) -> Vec<&'static str> {
        [
            ("db_connections", self.db_connections.is_some()),
            ("cache_entries", self.cache_entries.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use daemon::{Config, Section};
    use std::path::Path;

    #[test]
    fn the_sample_config_is_the_defaults_on_the_socket_inside_postfixs_queue() {
        let sample = include_str!("../../packaging/sidecars.toml");
        let c = Config::from_toml(sample, Path::new("sidecars.toml")).unwrap();
        let s = c.section::<Settings>().unwrap();
        assert_eq!(s.settings, Settings::default());
        let want = Server {
            metrics_listen: Some("inet:127.0.0.1:9591".parse().unwrap()),
            journal: daemon::config::JournalSettings {
                path: Some("/var/lib/miab-lookup/journal.sqlite".into()),
                days: 7,
            },
            listen: ListenAddr::Unix("/var/spool/postfix/miab-lookup/socketmap".into()),
            ..Settings::server_defaults()
        };
        assert_eq!(s.server, want);
    }

    #[test]
    fn obsolete_settings_still_load_and_are_named() {
        let c = Config::from_toml(
            "[lookup]\ndb_connections = 4\ncache_entries = 4096\n",
            Path::new("x"),
        )
        .unwrap();
        let s = c.section::<Settings>().unwrap();
        assert_eq!(
            s.settings.ignored(&s.server_keys),
            ["db_connections", "cache_entries"]
        );
    }
}
