//! From: and Sender: enforcement for mail from an SMTP-AUTH session: every address in those
//! headers must be one the login may send as, under the rule that decides the envelope sender
//! (`userdb::Directory::may_send_as`, MIAB's `reject_authenticated_sender_login_mismatch`).

use directory::Directory;
use mail_auth::AuthenticatedMessage;
use mail_parser::parsers::MessageStream;
use mail_parser::{Address, HeaderValue};
use userdb::Delimiters;
use userdb::address::sanitize_idn_email_address;

/// What `from_header` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Refuse the message at end of data (550 5.7.1).
    Reject,
    /// Deliver it and log a line.
    Warn,
    /// No check.
    Off,
}

/// Why a message's headers are not the login's to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Foreign {
    /// A From: or Sender: address the login may not send as (as written, lowercased).
    Address {
        header: &'static str,
        address: String,
    },
    /// No From: address at all (missing, a group, or only a display name such as an
    /// encoded word that reads as an address).
    NoFrom,
}

impl Foreign {
    /// The SMTP reply text after `5.7.1`, one line of plain ASCII whatever the header held.
    pub fn reply(&self, login: &str) -> String {
        match self {
            Foreign::Address { header, address } => format!(
                "{header}: address <{}> is not one that {} may send as",
                printable(address),
                printable(login)
            ),
            Foreign::NoFrom => "the From: header names no address".into(),
        }
    }
}

/// Letters, digits and the usual address punctuation, at most 200 characters; anything else
/// becomes `?`, so a hostile header cannot shape our reply.
fn printable(s: &str) -> String {
    s.chars()
        .take(200)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "@.-_+=".contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// The addresses of every `From:` and `Sender:` header of a message as mail-auth parsed it
/// (the parse signing and verification use), lowercased, each with its header's name.
pub fn header_addresses(msg: &AuthenticatedMessage<'_>) -> Vec<(&'static str, String)> {
    let from = msg.from.iter().map(|a| ("From", a.trim().to_owned()));
    let sender = msg
        .headers
        .iter()
        .filter(|(name, _)| name.trim_ascii().eq_ignore_ascii_case(b"Sender"))
        .flat_map(|(_, value)| {
            addresses(value)
                .into_iter()
                .map(|a| ("Sender", a.trim().to_owned()))
        });
    from.chain(sender).collect()
}

/// The addresses of one address-list header value (groups flattened), lowercased, as
/// mail-parser reads them; entries without an address (a display name alone) are left out.
pub(crate) fn addresses(value: &[u8]) -> Vec<String> {
    entries(value).into_iter().flatten().collect()
}

/// Each entry of one address-list header value (groups flattened): its address lowercased,
/// or `None` for an entry that has none.
pub(crate) fn entries(value: &[u8]) -> Vec<Option<String>> {
    let lower = |a: &mail_parser::Addr<'_>| a.address.as_deref().map(str::to_lowercase);
    match MessageStream::new(value).parse_address() {
        HeaderValue::Address(Address::List(l)) => l.iter().map(lower).collect(),
        HeaderValue::Address(Address::Group(g)) => {
            g.iter().flat_map(|g| &g.addresses).map(lower).collect()
        }
        _ => Vec::new(),
    }
}

/// The first From: or Sender: address `login` may not send as, or `NoFrom` (also for a
/// header block mail-auth cannot parse); `None` when every address is the login's.
pub fn check(
    dir: &impl Directory,
    login: &str,
    msg: Option<&AuthenticatedMessage<'_>>,
    delims: &Delimiters,
) -> Option<Foreign> {
    let addresses = msg.map(header_addresses).unwrap_or_default();
    if !addresses.iter().any(|(h, _)| *h == "From") {
        return Some(Foreign::NoFrom);
    }
    addresses.into_iter().find_map(|(header, address)| {
        // MIAB keeps domains in IDNA form: a Unicode domain is asked as the DB holds it.
        let asked = sanitize_idn_email_address(&address);
        (!dir.may_send_as(login, &asked, delims)).then_some(Foreign::Address { header, address })
    })
}

#[cfg(test)]
mod tests;
