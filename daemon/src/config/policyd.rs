//! `[policyd]` and its subsections: the policy daemon's checks and their settings.

use crate::listen::ListenAddr;
use serde::Deserialize;
use std::path::PathBuf;

/// `[policyd]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicydConfig {
    /// Where to listen. Default `inet:127.0.0.1:10023`, postgrey's port on MIAB.
    pub listen: ListenAddr,
    /// Mode of a UNIX socket, octal. Default `"0660"`.
    pub socket_mode: String,
    /// Group of a UNIX socket. Default: the daemon's group.
    pub socket_group: Option<String>,
    /// Connections served at once (Postfix keeps one per smtpd process). Default 512.
    pub max_connections: usize,
    /// Seconds a started request may take to arrive, and a reply to be written. Default 10.
    pub io_timeout_secs: u64,
    /// Seconds a connection may sit idle (Postfix closes its own after 300). Default 330.
    pub idle_timeout_secs: u64,
    /// Seconds shutdown waits for connections to finish. Default 5.
    pub drain_timeout_secs: u64,
    /// The checks that run, in order. Names: `sender_login`, `forged_sender`, `rate_limit`,
    /// `rhsbl`, `dnsbl`, `greylist`. Default: sender_login, rhsbl, dnsbl, greylist.
    pub checks: Vec<String>,
    /// The answer when greylisting or a block list fails internally (DB or DNS trouble is not
    /// a reason to lose mail). Default `DUNNO`.
    pub fail_action: String,
    /// The answer when a security check (`sender_login`, `forged_sender`) cannot decide
    /// (the user DB is locked or unreadable): it fails closed, as Postfix does when MIAB's
    /// own sender-login map fails. Default `451 4.3.0 Temporary lookup failure`; `DUNNO` lets
    /// the mail through unchecked.
    pub security_fail_action: String,
    /// Clients never greylisted, DNSBL-checked or treated as forging (CIDRs). Default
    /// `127.0.0.0/8`, `::1/128`.
    pub trusted_clients: Vec<String>,
    /// Obsolete (the directory is held in memory); accepted so an older file still loads,
    /// and ignored with a warning.
    pub db_connections: Option<usize>,
    /// `[policyd.greylist]`.
    pub greylist: GreylistConfig,
    /// `[policyd.dnsbl]`.
    pub dnsbl: DnsblConfig,
    /// `[policyd.rate_limit]`.
    pub rate_limit: RateLimitConfig,
}

impl Default for PolicydConfig {
    fn default() -> Self {
        PolicydConfig {
            listen: ListenAddr::Inet(([127, 0, 0, 1], 10023).into()),
            socket_mode: "0660".into(),
            socket_group: None,
            max_connections: 512,
            io_timeout_secs: 10,
            idle_timeout_secs: 330,
            drain_timeout_secs: 5,
            checks: ["sender_login", "rhsbl", "dnsbl", "greylist"]
                .map(String::from)
                .to_vec(),
            fail_action: "DUNNO".into(),
            security_fail_action: "451 4.3.0 Temporary lookup failure".into(),
            trusted_clients: vec!["127.0.0.0/8".into(), "::1/128".into()],
            db_connections: None,
            greylist: GreylistConfig::default(),
            dnsbl: DnsblConfig::default(),
            rate_limit: RateLimitConfig::default(),
        }
    }
}

super::server_section!(PolicydConfig, "policyd");

/// `[policyd.greylist]`: postgrey's settings, with MIAB's values as defaults.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GreylistConfig {
    /// The state DB (our own SQLite file, not the user DB). Default
    /// `STORAGE_ROOT/mail/policyd/greylist.sqlite`.
    pub db: Option<PathBuf>,
    /// Seconds a new triplet must wait before a retry passes. Default 180 (MIAB).
    pub delay_secs: u64,
    /// Days after which an entry not seen again is forgotten. Default 35.
    pub max_age_days: u64,
    /// Hours after the first attempt within which a retry must come, or the wait starts over.
    /// Default 48.
    pub retry_window_hours: u64,
    /// Passes after which a client address is whitelisted; 0 turns the auto-whitelist off.
    /// Default 5.
    pub auto_whitelist_clients: u32,
    /// A client's pass counts for the auto-whitelist at most once per this many seconds.
    /// Default 3600, as postgrey.
    pub auto_whitelist_interval_secs: u64,
    /// Prefix lengths the client address is masked to. Defaults 24 and 64.
    pub ipv4_prefix: u8,
    /// See `ipv4_prefix`.
    pub ipv6_prefix: u8,
    /// The answer to a greylisted request. Default `DEFER_IF_PERMIT`.
    pub action: String,
    /// Its text; `%r` is the recipient's domain, `%s` the seconds left. Default postgrey's.
    pub text: String,
    /// The header added when a greylisted triplet passes; empty for none. `%t` seconds
    /// delayed, `%v` version, `%h` host name, `%d` date. Default postgrey's wording.
    pub header: String,
    /// postgrey client whitelist files; missing files are skipped.
    pub whitelist_clients: Vec<PathBuf>,
    /// postgrey recipient whitelist files; missing files are skipped.
    pub whitelist_recipients: Vec<PathBuf>,
    /// Key a sender whose domain's SPF passes for the client by that domain instead of the
    /// client's network, so a provider retrying from another pool address is not greylisted
    /// again. Default true.
    pub spf_pool: bool,
    /// Log what would be greylisted but never defer. Default false.
    pub dry_run: bool,
    /// Seconds between expiry rounds; each examines 5,000 entries per table. Default 10.
    pub expire_interval_secs: u64,
    /// The syslog socket postgrey-format lines go to (program `postgrey`, facility mail),
    /// where MIAB's mail_log.py reads them; empty turns them off. Default `/dev/log`.
    pub syslog_socket: PathBuf,
}

impl Default for GreylistConfig {
    fn default() -> Self {
        GreylistConfig {
            db: None,
            delay_secs: 180,
            max_age_days: 35,
            retry_window_hours: 48,
            auto_whitelist_clients: 5,
            auto_whitelist_interval_secs: 3600,
            ipv4_prefix: 24,
            ipv6_prefix: 64,
            action: "DEFER_IF_PERMIT".into(),
            text: "Greylisted, see http://postgrey.schweikert.ch/help/%r.html".into(),
            header: "X-Greylist: delayed %t seconds by miab-policyd-%v at %h; %d".into(),
            whitelist_clients: vec![
                "/etc/postgrey/whitelist_clients".into(),
                "/etc/postgrey/whitelist_clients.local".into(),
            ],
            whitelist_recipients: vec![
                "/etc/postgrey/whitelist_recipients".into(),
                "/etc/postgrey/whitelist_recipients.local".into(),
            ],
            spf_pool: true,
            dry_run: false,
            expire_interval_secs: 10,
            syslog_socket: "/dev/log".into(),
        }
    }
}

/// `[policyd.dnsbl]`: DNS block lists for the client address and the sender's domain.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsblConfig {
    /// Lists queried with the client address (`dnsbl` check). Default zen.spamhaus.org,
    /// listed for 127.0.0.[2..11].
    pub client_lists: Vec<ListConfig>,
    /// Lists queried with the sender's domain (`rhsbl` check). Default dbl.spamhaus.org,
    /// listed for 127.0.1.[2..99].
    pub sender_lists: Vec<ListConfig>,
    /// A Spamhaus Data Query Service key: `*.spamhaus.org` zones are then asked as
    /// `KEY.zone.dq.spamhaus.net`. Never logged.
    pub dqs_key: Option<String>,
}

impl Default for DnsblConfig {
    fn default() -> Self {
        DnsblConfig {
            client_lists: vec![ListConfig {
                zone: "zen.spamhaus.org".into(),
                codes: vec!["127.0.0.[2..11]".into()],
                action: "reject".into(),
            }],
            sender_lists: vec![ListConfig {
                zone: "dbl.spamhaus.org".into(),
                codes: vec!["127.0.1.[2..99]".into()],
                action: "reject".into(),
            }],
            dqs_key: None,
        }
    }
}

impl std::fmt::Debug for DnsblConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsblConfig")
            .field("client_lists", &self.client_lists)
            .field("sender_lists", &self.sender_lists)
            .field("dqs_key", &self.dqs_key.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// One block list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListConfig {
    /// The DNS zone.
    pub zone: String,
    /// Answers that mean "listed", in Postfix's filter notation (`127.0.0.[2..11]`); empty
    /// means any answer outside 127.255.255.0/24.
    #[serde(default)]
    pub codes: Vec<String>,
    /// `reject` (554, Postfix's reject_rbl_client text), `defer` (450) or `warn` (log only).
    #[serde(default = "reject")]
    pub action: String,
}

fn reject() -> String {
    "reject".into()
}

/// `[policyd.rate_limit]`: per-login outbound limits (the `rate_limit` check).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Messages a login may send per hour; 0 is unlimited. Default 0.
    pub messages_per_hour: u32,
    /// Recipients a login may send to per hour; 0 is unlimited. Default 0.
    pub recipients_per_hour: u32,
}
