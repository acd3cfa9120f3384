//! `[authd]`: the SMTP AUTH daemon's section (Dovecot's auth-client protocol for Postfix, and
//! the checkpassword socket for Dovecot), typed and checked at load.

use daemon::config::{Mode, empty_is_off};
use daemon::net::Cidr;
use daemon::{Endpoint, Limits, ListenAddr, Server, UnixOptions};
use serde::Deserialize;
use std::time::Duration;

/// `[authd]`, beyond the listener settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Obsolete (the directory is held in memory); accepted so an older file still loads,
    /// and ignored with a warning.
    pub db_connections: Option<usize>,
    /// Milliseconds a failed authentication waits before its FAIL, as Dovecot's
    /// `auth_failure_delay`; other connections are not held up. Default 2000.
    pub failure_delay_ms: u64,
    /// Seconds a started exchange (AUTH LOGIN waiting for its CONT) is kept; an aborted one
    /// is then forgotten and its CONT refused. Postfix gives a client 300 s to answer.
    /// Default 300.
    pub exchange_timeout_secs: u64,
    /// Addresses of trusted proxies that log users in for them (Roundcube, Z-Push and
    /// Nextcloud on MIAB all come from 127.0.0.1): their clients are braked per login only,
    /// never per address. Default `["127.0.0.0/8", "::1"]`.
    pub proxy_networks: Vec<Cidr>,
    /// Accept PLAIN and LOGIN from a non-loopback client on a connection without TLS (Postfix
    /// says `secured` when the SMTP session has TLS). Default false.
    pub allow_insecure_plaintext: bool,
    /// Password hashes verified at once (SHA512-crypt is CPU-bound). Default 0: twice the
    /// number of cores.
    pub hash_threads: usize,
    /// Seconds a successful login and password are remembered (while the stored hash is
    /// unchanged), so re-authentication skips the hash. Default 300.
    pub cache_ttl_secs: u64,
    /// Successes remembered at most; 0 turns the cache off. Default 10000.
    pub cache_entries: usize,
    /// Failed authentications a client (IPv4 address, IPv6 /64) may have per minute before it
    /// is refused for `cooloff_secs`; 0 turns the count off. Default 10.
    pub ip_failures_per_minute: u32,
    /// The same per login, from anywhere. Default 20.
    pub login_failures_per_minute: u32,
    /// Seconds a client or login past its limit is refused without a password check.
    /// Default 300.
    pub cooloff_secs: u64,
    /// The socket `miab-checkpassword` (Dovecot 2.3's checkpassword passdb and userdb) asks:
    /// password checks and userdb lookups with the same limits, cache and app passwords as
    /// SMTP. `""` turns it off. Default `unix:/run/miab-authd/checkpassword` (the directory is
    /// created if missing).
    #[serde(deserialize_with = "empty_is_off")]
    pub checkpassword_listen: Option<ListenAddr>,
    /// Mode of that socket, octal. Default `"0660"`.
    pub checkpassword_socket_mode: Mode,
    /// Its group (Dovecot's auth process runs as `dovecot`). Default: the daemon's.
    pub checkpassword_socket_group: Option<String>,
    /// The `uid` Dovecot gets for every mailbox, as MIAB's `user_query`. Default `"mail"`.
    pub mail_uid: String,
    /// The `gid`, likewise. Default `"mail"`.
    pub mail_gid: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            db_connections: None,
            failure_delay_ms: 2000,
            exchange_timeout_secs: 300,
            proxy_networks: ["127.0.0.0/8", "::1"]
                .iter()
                .filter_map(|c| Cidr::parse(c))
                .collect(),
            allow_insecure_plaintext: false,
            hash_threads: 0,
            cache_ttl_secs: 300,
            cache_entries: 10_000,
            ip_failures_per_minute: 10,
            login_failures_per_minute: 20,
            cooloff_secs: 300,
            checkpassword_listen: Some(ListenAddr::Unix("/run/miab-authd/checkpassword".into())),
            checkpassword_socket_mode: Mode(0o660),
            checkpassword_socket_group: None,
            mail_uid: "mail".into(),
            mail_gid: "mail".into(),
        }
    }
}

impl daemon::Section for Settings {
    const NAME: &'static str = "authd";

    /// `unix:/var/spool/postfix/miab-authd/auth`, inside Postfix's queue directory where
    /// chrooted smtpd finds it as `smtpd_sasl_path = miab-authd/auth` (MIAB's Dovecot keeps
    /// `private/auth`); 512 connections (one per smtpd process); 10 s per line; 3600 s idle
    /// (smtpd keeps its connection); 5 s drain.
    fn server_defaults() -> Server {
        Server {
            metrics_listen: None,
            journal: daemon::config::JournalSettings::default(),
            listen: ListenAddr::Unix("/var/spool/postfix/miab-authd/auth".into()),
            unix: UnixOptions::default(),
            limits: Limits {
                max_connections: 512,
                io_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(3600),
                drain_timeout: Duration::from_secs(5),
            },
        }
    }

    fn complete(&mut self, _: &daemon::Config, _: &Server) -> Result<(), String> {
        for (name, v) in [("mail_uid", &self.mail_uid), ("mail_gid", &self.mail_gid)] {
            if v.is_empty() || v.contains(['\t', '\n', '\r', '\0']) {
                return Err(format!("{name}: {v:?} is not a user or group"));
            }
        }
        Ok(())
    }

    fn more_endpoints(&self, _: &Server) -> Vec<Endpoint> {
        self.checkpassword_listen
            .iter()
            .map(|addr| Endpoint {
                setting: "checkpassword_listen",
                addr: addr.clone(),
                unix: UnixOptions {
                    mode: self.checkpassword_socket_mode.0,
                    group: self.checkpassword_socket_group.clone(),
                },
                // /run/miab-authd comes from systemd's RuntimeDirectory=; started by hand,
                // it is made.
                create_parent: true,
            })
            .collect()
    }

    fn ignored(&self, _: &[&'static str]) -> Vec<&'static str> {
        self.db_connections
            .map(|_| "db_connections")
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use daemon::{Config, Section};
    use std::path::Path;

    fn sample() -> daemon::Loaded<Settings> {
        Config::from_toml(
            include_str!("../../packaging/sidecars.toml"),
            Path::new("sidecars.toml"),
        )
        .unwrap()
        .section::<Settings>()
        .unwrap()
    }

    #[test]
    fn the_sample_config_is_the_defaults() {
        let s = sample();
        assert_eq!(s.settings, Settings::default());
        // The package turns the metrics on, on loopback.
        let server = Server {
            metrics_listen: Some("inet:127.0.0.1:9593".parse().unwrap()),
            journal: daemon::config::JournalSettings {
                path: Some("/var/lib/miab-authd/journal.sqlite".into()),
                days: 7,
            },
            ..Settings::server_defaults()
        };
        assert_eq!(s.server, server);
        let e = s.endpoints();
        assert_eq!(e.len(), 3);
        assert_eq!(e[1].setting, "checkpassword_listen");
        assert_eq!(e[2].setting, "metrics_listen");
    }

    #[test]
    fn proxy_networks_take_ipv4_mapped_addresses() {
        let nets = &sample().settings.proxy_networks;
        assert!(miab_e2e::fixture::takes_mapped_loopback_only(|ip| {
            daemon::net::any_contains(nets, ip)
        }));
    }

    #[test]
    fn bad_values_are_named_at_load_and_empty_is_off() {
        let load = |t: &str| {
            Config::from_toml(t, Path::new("/etc/miab/sidecars.toml"))
                .unwrap()
                .section::<Settings>()
        };
        for (text, word) in [
            (
                "[authd]\nproxy_networks = [\"127.0.0.1/40\"]\n",
                "127.0.0.1/40",
            ),
            ("[authd]\ncheckpassword_listen = \"run/x\"\n", "run/x"),
            ("[authd]\ncheckpassword_socket_mode = \"rw\"\n", "rw"),
            ("[authd]\nmail_uid = \"\"\n", "mail_uid"),
            ("[authd]\nhash_thread = 2\n", "hash_thread"),
        ] {
            let e = load(text).unwrap_err().to_string();
            assert!(
                e.contains("/etc/miab/sidecars.toml") && e.contains(word),
                "{text}: {e}"
            );
        }
        let s = load("[authd]\ncheckpassword_listen = \"\"\n").unwrap();
        assert_eq!(s.settings.checkpassword_listen, None);
        assert_eq!(s.endpoints().len(), 1);
    }
}
