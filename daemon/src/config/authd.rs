//! `[authd]`: the SMTP AUTH daemon (Dovecot's auth-client protocol for Postfix).

use crate::listen::ListenAddr;
use serde::Deserialize;

/// `[authd]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthdConfig {
    /// Where to listen. Default `unix:/var/spool/postfix/miab-authd/auth`, inside Postfix's
    /// queue directory where chrooted smtpd finds it as `smtpd_sasl_path = miab-authd/auth`
    /// (MIAB's Dovecot keeps `private/auth`).
    pub listen: ListenAddr,
    /// Mode of the UNIX socket, octal. Default `"0660"`.
    pub socket_mode: String,
    /// Group of the UNIX socket (Postfix's smtpd runs as `postfix`). Default: the daemon's.
    pub socket_group: Option<String>,
    /// Connections served at once (Postfix keeps one per smtpd process). Default 512.
    pub max_connections: usize,
    /// Seconds a started line may take to arrive, and a reply to be written. Default 10.
    pub io_timeout_secs: u64,
    /// Seconds a connection may sit idle. Default 3600: smtpd keeps its connection.
    pub idle_timeout_secs: u64,
    /// Seconds shutdown waits for connections to finish. Default 5.
    pub drain_timeout_secs: u64,
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
    pub proxy_networks: Vec<String>,
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
    pub checkpassword_listen: String,
    /// Mode of that socket, octal. Default `"0660"`.
    pub checkpassword_socket_mode: String,
    /// Its group (Dovecot's auth process runs as `dovecot`). Default: the daemon's.
    pub checkpassword_socket_group: Option<String>,
    /// The `uid` Dovecot gets for every mailbox, as MIAB's `user_query`. Default `"mail"`.
    pub mail_uid: String,
    /// The `gid`, likewise. Default `"mail"`.
    pub mail_gid: String,
}

impl Default for AuthdConfig {
    fn default() -> Self {
        AuthdConfig {
            listen: ListenAddr::Unix("/var/spool/postfix/miab-authd/auth".into()),
            socket_mode: "0660".into(),
            socket_group: None,
            max_connections: 512,
            io_timeout_secs: 10,
            idle_timeout_secs: 3600,
            drain_timeout_secs: 5,
            db_connections: None,
            failure_delay_ms: 2000,
            exchange_timeout_secs: 300,
            proxy_networks: vec!["127.0.0.0/8".into(), "::1".into()],
            allow_insecure_plaintext: false,
            hash_threads: 0,
            cache_ttl_secs: 300,
            cache_entries: 10_000,
            ip_failures_per_minute: 10,
            login_failures_per_minute: 20,
            cooloff_secs: 300,
            checkpassword_listen: "unix:/run/miab-authd/checkpassword".into(),
            checkpassword_socket_mode: "0660".into(),
            checkpassword_socket_group: None,
            mail_uid: "mail".into(),
            mail_gid: "mail".into(),
        }
    }
}

super::server_section!(AuthdConfig, "authd");
