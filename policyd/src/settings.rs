//! `[policyd]` and its subsections: the policy daemon's checks and their settings, typed and
//! checked when the file is read.

use crate::checks::CheckName;
use crate::dnsbl::{Codes, ListAction};
use daemon::config::empty_is_off;
use daemon::net::Cidr;
use daemon::{Limits, ListenAddr, Server, UnixOptions};
use serde::Deserialize;
use serde::de::{self, Deserializer};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `[policyd]`, beyond the listener settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The checks that run, in order. Names: `sender_login`, `forged_sender`, `rate_limit`,
    /// `containment`, `rhsbl`, `dnsbl`, `greylist`. Default: sender_login, containment,
    /// rhsbl, dnsbl, greylist.
    pub checks: Vec<CheckName>,
    /// The answer when greylisting or a block list fails internally (DB or DNS trouble is not
    /// a reason to lose mail). Default `DUNNO`.
    pub fail_action: Action,
    /// The answer when a security check (`sender_login`, `forged_sender`) cannot decide
    /// (the user DB is locked or unreadable): it fails closed, as Postfix does when MIAB's
    /// own sender-login map fails. Default `451 4.3.0 Temporary lookup failure`; `DUNNO` lets
    /// the mail through unchecked.
    pub security_fail_action: Action,
    /// Clients never greylisted, DNSBL-checked or treated as forging. Default
    /// `127.0.0.0/8`, `::1/128`.
    pub trusted_clients: Vec<Cidr>,
    /// Obsolete (the directory is held in memory); accepted so an older file still loads,
    /// and ignored with a warning.
    pub db_connections: Option<usize>,
    /// `[policyd.greylist]`.
    pub greylist: GreylistSettings,
    /// `[policyd.dnsbl]`.
    pub dnsbl: DnsblSettings,
    /// `[policyd.rate_limit]`.
    pub rate_limit: RateLimitSettings,
    /// `[policyd.containment]`.
    pub containment: ContainmentSettings,
    /// A second address, in Postfix notation, where only the checks that decide nothing
    /// about a login run (`rhsbl`, `dnsbl`, `greylist`): any local process can reach a TCP
    /// port and claim any `sasl_username`, so `sender_login`, `forged_sender`, `rate_limit`
    /// and `containment` answer only on `listen`, which should be a socket only Postfix can
    /// reach. On a Mail-in-a-Box box this is postgrey's `inet:127.0.0.1:10023` (MIAB's status
    /// checks look for it, and a `main.cf` an upgrade put back still names it). `""`
    /// (default) turns it off.
    #[serde(deserialize_with = "empty_is_off")]
    pub greylist_listen: Option<ListenAddr>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            checks: ["sender_login", "containment", "rhsbl", "dnsbl", "greylist"]
                .into_iter()
                .filter_map(|n| CheckName::parse(n).ok())
                .collect(),
            fail_action: Action("DUNNO".into()),
            security_fail_action: Action("451 4.3.0 Temporary lookup failure".into()),
            trusted_clients: ["127.0.0.0/8", "::1/128"]
                .iter()
                .filter_map(|c| Cidr::parse(c))
                .collect(),
            db_connections: None,
            greylist: GreylistSettings::default(),
            dnsbl: DnsblSettings::default(),
            rate_limit: RateLimitSettings::default(),
            containment: ContainmentSettings::default(),
            greylist_listen: None,
        }
    }
}

impl daemon::Section for Settings {
    const NAME: &'static str = "policyd";

    /// `inet:127.0.0.1:10023` (postgrey's port on MIAB); 512 connections (Postfix keeps one
    /// per smtpd process); 10 s per request; 330 s idle (Postfix closes its own after 300);
    /// 5 s drain.
    fn server_defaults() -> Server {
        Server {
            metrics_listen: None,
            journal: daemon::config::JournalSettings::default(),
            listen: ListenAddr::Inet(([127, 0, 0, 1], 10023).into()),
            unix: UnixOptions::default(),
            limits: Limits {
                max_connections: 512,
                io_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(330),
                drain_timeout: Duration::from_secs(5),
            },
        }
    }

    fn more_endpoints(&self, server: &Server) -> Vec<daemon::Endpoint> {
        self.greylist_listen
            .iter()
            .map(|addr| daemon::Endpoint {
                setting: "greylist_listen",
                addr: addr.clone(),
                unix: server.unix.clone(),
                create_parent: false,
            })
            .collect()
    }

    fn complete(&mut self, shared: &daemon::Config, _: &Server) -> Result<(), String> {
        let g = &mut self.greylist;
        if g.ipv4_prefix > 32 {
            return Err(format!(
                "greylist.ipv4_prefix: {} is over 32",
                g.ipv4_prefix
            ));
        }
        if g.ipv6_prefix > 128 {
            return Err(format!(
                "greylist.ipv6_prefix: {} is over 128",
                g.ipv6_prefix
            ));
        }
        let layout = shared.layout();
        g.db = Some(layout.greylist_db().to_owned());
        let c = &mut self.containment;
        if c.factor == 0 || c.history_days == 0 || c.max_daily_growth == 0 {
            return Err(
                "containment: factor, max_daily_growth and history_days must be at least 1".into(),
            );
        }
        c.db = Some(layout.sending_db().to_owned());
        if c.notify.is_none() {
            c.notify = Some(format!("administrator@{}", shared.box_hostname()));
        }
        Ok(())
    }

    fn ignored(&self, _: &[&'static str]) -> Vec<&'static str> {
        self.db_connections
            .map(|_| "db_connections")
            .into_iter()
            .collect()
    }
}

impl<'de> Deserialize<'de> for CheckName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        CheckName::parse(&String::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// A Postfix access(5) action as a policy answer: `DUNNO`, `DEFER_IF_PERMIT text`,
/// `451 4.3.0 text`, ... One line of printable text starting with a known word or a 4xx/5xx
/// code, so a typo is found at start rather than in Postfix's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action(String);

impl Action {
    /// Postfix's action words a policy server may answer.
    const WORDS: [&'static str; 16] = [
        "OK",
        "DUNNO",
        "REJECT",
        "DEFER",
        "DEFER_IF_REJECT",
        "DEFER_IF_PERMIT",
        "BCC",
        "DISCARD",
        "FILTER",
        "HOLD",
        "PREPEND",
        "REDIRECT",
        "INFO",
        "WARN",
        "PERMIT",
        "FAIL",
    ];

    /// Checks one action.
    pub fn parse(s: &str) -> Result<Action, String> {
        let word = s.split(' ').next().unwrap_or_default();
        let code = word.len() == 3
            && matches!(word.as_bytes()[0], b'4' | b'5')
            && word.bytes().all(|b| b.is_ascii_digit());
        let known = Self::WORDS.iter().any(|w| w.eq_ignore_ascii_case(word));
        if s.bytes().any(|b| b.is_ascii_control()) || !s.is_ascii() {
            return Err(format!("{s:?}: one line of ASCII text expected"));
        }
        if !code && !known {
            return Err(format!(
                "{s:?}: not a Postfix action (DUNNO, DEFER_IF_PERMIT text, 451 4.3.0 text, ...)"
            ));
        }
        Ok(Action(s.to_owned()))
    }

    /// The text of the answer.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Action::parse(&String::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// `[policyd.greylist]`: postgrey's settings, with MIAB's values as defaults.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GreylistSettings {
    /// The state DB (our own SQLite file, not the user DB). Default
    /// `STORAGE_ROOT/mail/policyd/greylist.sqlite`; always set once the file is read.
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
    pub action: Action,
    /// Its text; `%r` is the recipient's domain, `%s` the seconds left. Default postgrey's.
    pub text: String,
    /// The header added when a greylisted triplet passes; `""` for none. `%t` seconds
    /// delayed, `%v` version, `%h` host name, `%d` date. Default postgrey's wording.
    #[serde(deserialize_with = "empty_is_off")]
    pub header: Option<String>,
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
    /// where MIAB's mail_log.py reads them; `""` turns them off. Default `/dev/log`.
    #[serde(deserialize_with = "empty_is_off")]
    pub syslog_socket: Option<PathBuf>,
}

impl GreylistSettings {
    /// The state DB's path (filled in from the storage root when the file is read).
    pub fn db(&self) -> &Path {
        self.db.as_deref().unwrap_or(Path::new("greylist.sqlite"))
    }
}

impl Default for GreylistSettings {
    fn default() -> Self {
        GreylistSettings {
            db: None,
            delay_secs: 180,
            max_age_days: 35,
            retry_window_hours: 48,
            auto_whitelist_clients: 5,
            auto_whitelist_interval_secs: 3600,
            ipv4_prefix: 24,
            ipv6_prefix: 64,
            action: Action("DEFER_IF_PERMIT".into()),
            text: "Greylisted, see http://postgrey.schweikert.ch/help/%r.html".into(),
            header: Some("X-Greylist: delayed %t seconds by miab-policyd-%v at %h; %d".into()),
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
            syslog_socket: Some("/dev/log".into()),
        }
    }
}

/// `[policyd.dnsbl]`: DNS block lists for the client address and the sender's domain.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsblSettings {
    /// Lists queried with the client address (`dnsbl` check). Default zen.spamhaus.org,
    /// listed for 127.0.0.[2..11].
    pub client_lists: Vec<ListSettings>,
    /// Lists queried with the sender's domain (`rhsbl` check). Default dbl.spamhaus.org,
    /// listed for 127.0.1.[2..99].
    pub sender_lists: Vec<ListSettings>,
    /// A Spamhaus Data Query Service key: `*.spamhaus.org` zones are then asked as
    /// `KEY.zone.dq.spamhaus.net`. Never logged.
    pub dqs_key: Option<String>,
}

impl Default for DnsblSettings {
    fn default() -> Self {
        let list = |zone: &str, codes: &str| ListSettings {
            zone: zone.into(),
            codes: Codes::parse(&[codes.to_owned()]).unwrap_or_else(|_| Codes::any()),
            action: ListAction::Reject,
        };
        DnsblSettings {
            client_lists: vec![list("zen.spamhaus.org", "127.0.0.[2..11]")],
            sender_lists: vec![list("dbl.spamhaus.org", "127.0.1.[2..99]")],
            dqs_key: None,
        }
    }
}

impl std::fmt::Debug for DnsblSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsblSettings")
            .field("client_lists", &self.client_lists)
            .field("sender_lists", &self.sender_lists)
            .field("dqs_key", &self.dqs_key.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// One block list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListSettings {
    /// The DNS zone.
    pub zone: String,
    /// Answers that mean "listed", in Postfix's filter notation (`127.0.0.[2..11]`); empty
    /// means any answer outside 127.255.255.0/24.
    #[serde(default = "Codes::any")]
    pub codes: Codes,
    /// `reject` (554, Postfix's reject_rbl_client text), `defer` (450) or `warn` (log only).
    #[serde(default = "reject")]
    pub action: ListAction,
}

fn reject() -> ListAction {
    ListAction::Reject
}

impl<'de> Deserialize<'de> for Codes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Codes::parse(&Vec::<String>::deserialize(d)?).map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for ListAction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "reject" => Ok(ListAction::Reject),
            "defer" => Ok(ListAction::Defer),
            "warn" => Ok(ListAction::Warn),
            other => Err(de::Error::custom(format!(
                "unknown action {other:?} (reject, defer, warn)"
            ))),
        }
    }
}

/// `[policyd.rate_limit]`: per-login outbound limits (the `rate_limit` check).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSettings {
    /// Messages a login may send per hour; 0 is unlimited. Default 0.
    pub messages_per_hour: u32,
    /// Recipients a login may send to per hour; 0 is unlimited. Default 0.
    pub recipients_per_hour: u32,
}

/// `[policyd.containment]`: holding the mail of a login that sends far past its own history
/// (the `containment` check; see `state::sending` for the rule).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContainmentSettings {
    /// Its own SQLite file. Default `STORAGE_ROOT/mail/policyd/sending.sqlite`; always set
    /// once the file is read.
    pub db: Option<PathBuf>,
    /// Messages in an hour that never hold a login. Default 100.
    pub floor_messages: u64,
    /// Recipients (known or new, aliases counted by what they expand to) in an hour that
    /// never hold a login. Default 500.
    pub floor_recipients: u64,
    /// Recipients never written to before, in an hour, that never hold a login. Default 50.
    pub floor_new_recipients: u64,
    /// How many times the busiest hour of a past day a login may send from the next day on.
    /// Default 3.
    pub factor: u64,
    /// How much a limit may grow from one day to the next at most. Default 2.
    pub max_daily_growth: u64,
    /// Days of history read. Default 28.
    pub history_days: u64,
    /// Logins counted but never held (a newsletter account). Default none.
    pub exempt_logins: Vec<String>,
    /// The answer for held mail: Postfix's `HOLD` with a text it logs. Default
    /// `HOLD held: the login sends far past its own history (miabctl held)`.
    pub action: Action,
    /// Who is told when a login is held (at most once per login per hour); `""` for no one.
    /// Default `administrator@` the box's host name.
    #[serde(deserialize_with = "notify_address")]
    pub notify: Option<String>,
    /// The SMTP server the notice is handed to (the box's own Postfix, as MIAB's
    /// administrator mail is). Default `127.0.0.1:25`.
    pub notify_smtp: std::net::SocketAddr,
}

/// `""` (no one) is kept as `Some("")`: `None` is the default, which `complete` fills in from
/// the host name.
fn notify_address<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    if s.chars()
        .any(|c| c.is_control() || c.is_whitespace() || "<>\"".contains(c))
    {
        return Err(de::Error::custom(format!("{s:?}: one address expected")));
    }
    Ok(Some(s))
}

impl ContainmentSettings {
    /// The state DB's path (filled in from the storage root when the file is read).
    pub fn db(&self) -> &Path {
        self.db.as_deref().unwrap_or(Path::new("sending.sqlite"))
    }

    /// The address notices go to, if any.
    pub fn notify_to(&self) -> Option<&str> {
        self.notify.as_deref().filter(|a| !a.is_empty())
    }

    /// The rule, as `state::sending` applies it.
    pub fn rule(&self) -> state::sending::Rule {
        state::sending::Rule {
            floor_messages: self.floor_messages,
            floor_recipients: self.floor_recipients,
            floor_new_recipients: self.floor_new_recipients,
            factor: self.factor,
            max_daily_growth: self.max_daily_growth,
            history_days: self.history_days,
        }
    }
}

impl Default for ContainmentSettings {
    fn default() -> Self {
        let rule = state::sending::Rule::default();
        ContainmentSettings {
            db: None,
            floor_messages: rule.floor_messages,
            floor_recipients: rule.floor_recipients,
            floor_new_recipients: rule.floor_new_recipients,
            factor: rule.factor,
            max_daily_growth: rule.max_daily_growth,
            history_days: rule.history_days,
            exempt_logins: Vec::new(),
            action: Action(
                "HOLD held: the login sends far past its own history (miabctl held)".into(),
            ),
            notify: None,
            notify_smtp: ([127, 0, 0, 1], 25).into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use daemon::{Config, Section};

    fn load(text: &str) -> Result<daemon::Loaded<Settings>, daemon::ConfigError> {
        Config::from_toml(text, Path::new("/etc/miab/sidecars.toml"))?.section::<Settings>()
    }

    #[test]
    fn the_sample_config_is_the_defaults() {
        let s = load(include_str!("../../packaging/sidecars.toml")).unwrap();
        let mut want = Settings::default();
        want.greylist.db = Some("/home/user-data/mail/policyd/greylist.sqlite".into());
        want.containment.db = Some("/home/user-data/mail/policyd/sending.sqlite".into());
        let host = Config::from_toml("", Path::new("x"))
            .unwrap()
            .box_hostname();
        want.containment.notify = Some(format!("administrator@{host}"));
        want.greylist_listen = Some("inet:127.0.0.1:10023".parse().unwrap());
        assert_eq!(s.settings, want);
        // Apart from the box's socket, only Postfix's group may reach.
        let mut server = Settings::server_defaults();
        server.listen = "unix:/var/spool/postfix/miab-policyd/policy"
            .parse()
            .unwrap();
        // The package turns the metrics on, on loopback.
        server.metrics_listen = Some("inet:127.0.0.1:9592".parse().unwrap());
        // And the decision journal.
        server.journal.path = Some("/var/lib/miab-policyd/journal.sqlite".into());
        assert_eq!(s.server, server);
    }

    #[test]
    fn trusted_clients_take_ipv4_mapped_addresses() {
        let s = load(include_str!("../../packaging/sidecars.toml")).unwrap();
        let nets = &s.settings.trusted_clients;
        assert!(miab_e2e::fixture::takes_mapped_loopback_only(|ip| {
            daemon::net::any_contains(nets, ip)
        }));
    }

    #[test]
    fn bad_values_are_named_at_load() {
        for (text, word) in [
            ("[policyd]\nchecks = [\"greylsit\"]\n", "greylsit"),
            ("[policyd]\nfail_action = \"DUNO\"\n", "DUNO"),
            (
                "[policyd]\nsecurity_fail_action = \"451 a\\nb\"\n",
                "one line",
            ),
            (
                "[policyd]\ntrusted_clients = [\"10.0.0.0/33\"]\n",
                "10.0.0.0/33",
            ),
            (
                "[policyd.greylist]\nipv4_prefix = 33\n",
                "greylist.ipv4_prefix",
            ),
            ("[policyd.greylist]\naction = \"nope\"\n", "nope"),
            (
                "[[policyd.dnsbl.client_lists]]\nzone = \"x\"\naction = \"drop\"\n",
                "drop",
            ),
            (
                "[[policyd.dnsbl.client_lists]]\nzone = \"x\"\ncodes = [\"1.2.3\"]\n",
                "four octets",
            ),
            ("[policyd.rate_limit]\nmessages = 1\n", "messages"),
            ("[policyd.containment]\nfactor = 0\n", "factor"),
            (
                "[policyd.containment]\nnotify = \"a <b>\"\n",
                "one address expected",
            ),
            (
                "[policyd.containment]\nnotify_smtp = \"localhost\"\n",
                "notify_smtp",
            ),
        ] {
            let e = load(text).unwrap_err().to_string();
            assert!(
                e.contains("/etc/miab/sidecars.toml") && e.contains(word),
                "{text}: {e}"
            );
        }
        for ok in [
            "DUNNO",
            "451 4.3.0 Try later",
            "DEFER_IF_PERMIT Service unavailable",
            "defer_if_permit x",
        ] {
            assert!(Action::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn off_values_and_the_greylist_db() {
        let s = load(
            "storage_root = \"/srv/box\"\n[policyd.greylist]\nheader = \"\"\nsyslog_socket = \"\"\n",
        )
        .unwrap()
        .settings;
        assert_eq!(s.greylist.header, None);
        assert_eq!(s.greylist.syslog_socket, None);
        assert_eq!(
            s.greylist.db(),
            Path::new("/srv/box/mail/policyd/greylist.sqlite")
        );
    }
}
