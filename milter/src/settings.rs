//! `[milter]`: DKIM signing and DKIM/SPF/DMARC verification for Postfix, typed and checked at
//! load.

pub use crate::message::from::Mode;
use daemon::config::empty_is_off;
use daemon::net::Cidr;
use daemon::{Endpoint, Limits, ListenAddr, Server, UnixOptions};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// `[milter]`, beyond the listener settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The RSA key (PKCS#1 or PKCS#8 PEM). Default `STORAGE_ROOT/mail/dkim/mail.private`, as
    /// `opendkim-genkey -s mail -D STORAGE_ROOT/mail/dkim` writes it; always set once the file
    /// is read. A file `<domain>.private` next to it is that domain's own key, with the same
    /// selector.
    pub key_file: Option<PathBuf>,
    /// The RSA key's selector. Default `mail`.
    pub selector: String,
    /// An Ed25519 key (PKCS#8 PEM) for a second signature (RFC 8463). Default: none.
    pub ed25519_key_file: Option<PathBuf>,
    /// Its selector. Default `ed`.
    pub ed25519_selector: String,
    /// Clients whose mail is signed without SMTP AUTH: IP addresses or CIDR networks.
    /// Default `["127.0.0.1", "::1"]` (OpenDKIM's TrustedHosts on MIAB). Their mail, like
    /// `sendmail`'s, is signed only for the box's hostname, `sign_local_domains` and automatic
    /// replies (Sieve vacation), and never when it came in from outside (a Sieve redirect: it
    /// carries our Authentication-Results).
    pub trusted_hosts: Vec<Cidr>,
    /// Domains besides the box's hostname whose mail from `sendmail` or a trusted client
    /// without SMTP AUTH is signed. Default none: anything on the box can run `sendmail`.
    pub sign_local_domains: Vec<String>,
    /// Headers signed, in order; `From` is also signed once more than it occurs (oversigned).
    /// Default: OpenDKIM's list.
    pub sign_headers: Vec<String>,
    /// Check DKIM, SPF and DMARC on mail we do not sign, and add Authentication-Results.
    /// Default true.
    pub verify: bool,
    /// Reject (550 5.7.1) mail that fails DMARC under `p=reject` (or `sp=reject` for a
    /// subdomain), unless the record says `t=y`. Default false: never reject, as MIAB.
    pub dmarc_reject: bool,
    /// Seconds all DNS checks of one message may take before their results become
    /// `temperror`. Default 20.
    pub verify_timeout_secs: u64,
    /// Header bytes kept per message. Incoming mail with more is answered 451 4.7.0 (never
    /// delivered unverified); local or authenticated mail with more passes unsigned.
    /// Default 1048576.
    pub max_header_bytes: usize,
    /// DKIM signatures verified per message, the topmost first (each costs a DNS query and a
    /// public-key operation on the milter's one thread); the rest are reported as
    /// `dkim=policy (N more signatures not checked)`. OpenDKIM checks 3. Default 5.
    pub max_signatures: usize,
    /// A second address answered with "accept" and nothing else, in Postfix notation. On a
    /// Mail-in-a-Box box this is OpenDMARC's `inet:127.0.0.1:8893`: MIAB's status checks look
    /// for it there, and a `main.cf` that an upgrade put back still lists it. `""` (default)
    /// turns it off. Its socket mode and group are the milter's.
    #[serde(deserialize_with = "empty_is_off")]
    pub accept_listen: Option<ListenAddr>,
    /// Mail from an SMTP-AUTH session whose From: or Sender: holds an address the login may
    /// not send as (the rule that decides the envelope sender): `reject` (550 5.7.1 at end of
    /// data, and a log line), `warn` (delivered, and a log line) or `off`. Default `reject`;
    /// a box whose users send as outside addresses through it needs `warn`.
    pub from_header: Mode,
}

/// OpenDKIM's default `SignHeaders` (RFC 6376 §5.4.1's list).
pub const OPENDKIM_SIGN_HEADERS: [&str; 24] = [
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Resent-Date",
    "Resent-From",
    "Resent-To",
    "Resent-Cc",
    "In-Reply-To",
    "References",
    "List-Id",
    "List-Help",
    "List-Unsubscribe",
    "List-Subscribe",
    "List-Post",
    "List-Owner",
    "List-Archive",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Sender",
];

impl Default for Settings {
    fn default() -> Self {
        Settings {
            key_file: None,
            selector: "mail".into(),
            ed25519_key_file: None,
            ed25519_selector: "ed".into(),
            trusted_hosts: ["127.0.0.1", "::1"]
                .iter()
                .filter_map(|c| Cidr::parse(c))
                .collect(),
            sign_local_domains: Vec::new(),
            sign_headers: OPENDKIM_SIGN_HEADERS.map(String::from).to_vec(),
            verify: true,
            dmarc_reject: false,
            verify_timeout_secs: 20,
            max_header_bytes: 1 << 20,
            max_signatures: 5,
            accept_listen: None,
            from_header: Mode::Reject,
        }
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "reject" => Ok(Mode::Reject),
            "warn" => Ok(Mode::Warn),
            "off" => Ok(Mode::Off),
            other => Err(serde::de::Error::custom(format!(
                "{other:?}: expected \"reject\", \"warn\" or \"off\""
            ))),
        }
    }
}

/// A DKIM selector: dot-separated labels of letters, digits and hyphens (RFC 6376 §3.1).
fn is_selector(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A header field name (RFC 5322 §3.6.8: printable ASCII but the colon).
fn is_field_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

impl daemon::Section for Settings {
    const NAME: &'static str = "milter";

    /// `inet:127.0.0.1:8891` (OpenDKIM's port on MIAB); 256 connections (one per smtpd or
    /// cleanup process; at the cap the one idle longest is closed, see `conns`); 330 s idle
    /// between messages (Postfix's `smtpd_timeout` and a margin; inside a message libmilter's
    /// 7210 s); 5 s drain. indymilter times whole commands, so `io_timeout_secs` has no use
    /// here.
    fn server_defaults() -> Server {
        Server {
            metrics_listen: None,
            journal: daemon::config::JournalSettings::default(),
            listen: ListenAddr::Inet(([127, 0, 0, 1], 8891).into()),
            unix: UnixOptions::default(),
            limits: Limits {
                max_connections: 256,
                io_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(330),
                drain_timeout: Duration::from_secs(5),
            },
        }
    }

    fn complete(&mut self, shared: &daemon::Config, _: &Server) -> Result<(), String> {
        for (name, s) in [
            ("selector", &self.selector),
            ("ed25519_selector", &self.ed25519_selector),
        ] {
            if !is_selector(s) {
                return Err(format!("{name}: {s:?} is not a DKIM selector"));
            }
        }
        if let Some(bad) = self.sign_headers.iter().find(|h| !is_field_name(h)) {
            return Err(format!("sign_headers: {bad:?} is not a header name"));
        }
        if self.max_signatures == 0 {
            return Err("max_signatures: at least 1".into());
        }
        let layout = shared.layout();
        self.key_file = Some(layout.dkim_key().to_owned());
        self.ed25519_key_file = layout.dkim_ed25519_key().map(ToOwned::to_owned);
        Ok(())
    }

    fn more_endpoints(&self, server: &Server) -> Vec<Endpoint> {
        self.accept_listen
            .iter()
            .map(|addr| Endpoint {
                setting: "accept_listen",
                addr: addr.clone(),
                unix: server.unix.clone(),
                create_parent: false,
            })
            .collect()
    }

    fn ignored(&self, server_keys: &[&'static str]) -> Vec<&'static str> {
        server_keys
            .iter()
            .copied()
            .filter(|k| *k == "io_timeout_secs")
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use daemon::{Config, Section};
    use std::path::Path;

    fn load(text: &str) -> Result<daemon::Loaded<Settings>, daemon::ConfigError> {
        Config::from_toml(text, Path::new("/etc/miab/sidecars.toml"))?.section::<Settings>()
    }

    #[test]
    fn the_sample_config_is_the_defaults_with_opendmarcs_port() {
        let s = load(include_str!("../../packaging/sidecars.toml")).unwrap();
        let want = Settings {
            key_file: Some("/home/user-data/mail/dkim/mail.private".into()),
            accept_listen: Some("inet:127.0.0.1:8893".parse().unwrap()),
            ..Settings::default()
        };
        assert_eq!(s.settings, want);
        // The package turns the metrics on, on loopback.
        let server = Server {
            metrics_listen: Some("inet:127.0.0.1:9594".parse().unwrap()),
            journal: daemon::config::JournalSettings {
                path: Some("/var/lib/miab-milter/journal.sqlite".into()),
                days: 7,
            },
            ..Settings::server_defaults()
        };
        assert_eq!(s.server, server);
        assert!(s.settings.ignored(&s.server_keys).is_empty());
        let nets = &s.settings.trusted_hosts;
        assert!(miab_e2e::fixture::takes_mapped_loopback_only(|ip| {
            daemon::net::any_contains(nets, ip)
        }));
    }

    #[test]
    fn bad_values_are_named_at_load() {
        for (text, word) in [
            ("[milter]\ntrusted_hosts = [\"localhost\"]\n", "localhost"),
            ("[milter]\nselector = \"mail;x\"\n", "selector"),
            ("[milter]\nsign_headers = [\"From:\"]\n", "sign_headers"),
            ("[milter]\naccept_listen = \"8893\"\n", "8893"),
            ("[milter]\nmax_signatures = 0\n", "max_signatures"),
            ("[milter]\nverify = \"yes\"\n", "verify"),
            ("[milter]\nfrom_header = \"drop\"\n", "drop"),
        ] {
            let e = load(text).unwrap_err().to_string();
            assert!(
                e.contains("/etc/miab/sidecars.toml") && e.contains(word),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn io_timeout_is_accepted_and_named_as_unused() {
        let s = load("[milter]\nio_timeout_secs = 10\ndrain_timeout_secs = 2\n").unwrap();
        assert_eq!(s.settings.ignored(&s.server_keys), ["io_timeout_secs"]);
        assert_eq!(s.server.limits.drain_timeout, Duration::from_secs(2));
    }
}
