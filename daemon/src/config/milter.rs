//! `[milter]`: DKIM signing and DKIM/SPF/DMARC verification for Postfix.

use crate::listen::ListenAddr;
use serde::Deserialize;
use std::path::PathBuf;

/// `[milter]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MilterConfig {
    /// Where to listen. Default `inet:127.0.0.1:8891`, OpenDKIM's port on MIAB.
    pub listen: ListenAddr,
    /// Mode of a UNIX socket, octal. Default `"0660"`.
    pub socket_mode: String,
    /// Group of a UNIX socket. Default: the daemon's.
    pub socket_group: Option<String>,
    /// Connections served at once (one per smtpd or cleanup process). Default 256.
    pub max_connections: usize,
    /// Seconds a milter connection may stay silent, as libmilter's default. Default 7210.
    pub idle_timeout_secs: u64,
    /// Seconds shutdown waits for messages in progress. Default 5.
    pub drain_timeout_secs: u64,
    /// Unused by the milter's own loop (indymilter times whole commands), kept for the shared
    /// listener settings. Default 10.
    pub io_timeout_secs: u64,
    /// The RSA key (PKCS#1 or PKCS#8 PEM). Default `STORAGE_ROOT/mail/dkim/mail.private`, as
    /// `opendkim-genkey -s mail -D STORAGE_ROOT/mail/dkim` writes it. A file
    /// `<domain>.private` next to it is that domain's own key, with the same selector.
    pub key_file: Option<PathBuf>,
    /// The RSA key's selector. Default `mail`.
    pub selector: String,
    /// An Ed25519 key (PKCS#8 PEM) for a second signature (RFC 8463). Default: none.
    pub ed25519_key_file: Option<PathBuf>,
    /// Its selector. Default `ed`.
    pub ed25519_selector: String,
    /// Clients whose mail is signed without SMTP AUTH: IP addresses or CIDR networks.
    /// Default `["127.0.0.1", "::1"]` (OpenDKIM's TrustedHosts on MIAB).
    pub trusted_hosts: Vec<String>,
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
    /// Header bytes kept per message; a message with more is passed on unsigned and
    /// unverified. Default 1048576.
    pub max_header_bytes: usize,
    /// DKIM signatures verified per message, the topmost first (each costs a DNS query and a
    /// public-key operation on the milter's one thread); the rest are reported as
    /// `dkim=policy (N more signatures not checked)`. OpenDKIM checks 3. Default 5.
    pub max_signatures: usize,
    /// A second address answered with "accept" and nothing else, in Postfix notation. On a
    /// Mail-in-a-Box box this is OpenDMARC's `inet:127.0.0.1:8893`: MIAB's status checks look
    /// for it there, and a `main.cf` that an upgrade put back still lists it. `""` (default)
    /// turns it off.
    pub accept_listen: String,
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

impl Default for MilterConfig {
    fn default() -> Self {
        MilterConfig {
            listen: ListenAddr::Inet("127.0.0.1:8891".parse().expect("a socket address")),
            socket_mode: "0660".into(),
            socket_group: None,
            max_connections: 256,
            idle_timeout_secs: 7210,
            drain_timeout_secs: 5,
            io_timeout_secs: 10,
            key_file: None,
            selector: "mail".into(),
            ed25519_key_file: None,
            ed25519_selector: "ed".into(),
            trusted_hosts: vec!["127.0.0.1".into(), "::1".into()],
            sign_headers: OPENDKIM_SIGN_HEADERS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            verify: true,
            dmarc_reject: false,
            verify_timeout_secs: 20,
            max_header_bytes: 1 << 20,
            max_signatures: 5,
            accept_listen: String::new(),
        }
    }
}

super::server_section!(MilterConfig, "milter");
