//! From: and Sender: enforcement for mail from an SMTP-AUTH session: every address in those
//! headers must be one the login may send as, under the rule that decides the envelope sender
//! (`userdb::Directory::may_send_as`, MIAB's `reject_authenticated_sender_login_mismatch`).

use mail_parser::parsers::MessageStream;
use mail_parser::{Address, HeaderValue};
use userdb::address::sanitize_idn_email_address;
use userdb::{Delimiters, Directory};

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

/// The addresses of every `From:` and `Sender:` header in a header block (`Name:value\r\n`,
/// folded lines kept), lowercased, each with its header's name.
pub fn header_addresses(block: &[u8]) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for (name, value) in headers(block) {
        let header = if name.eq_ignore_ascii_case(b"From") {
            "From"
        } else if name.eq_ignore_ascii_case(b"Sender") {
            "Sender"
        } else {
            continue;
        };
        let parsed = MessageStream::new(value).parse_address();
        let list: Vec<&mail_parser::Addr<'_>> = match &parsed {
            HeaderValue::Address(Address::List(l)) => l.iter().collect(),
            HeaderValue::Address(Address::Group(g)) => {
                g.iter().flat_map(|g| g.addresses.iter()).collect()
            }
            _ => Vec::new(),
        };
        out.extend(
            list.into_iter()
                .filter_map(|a| a.address.as_deref())
                .map(|a| (header, a.trim().to_lowercase())),
        );
    }
    out
}

/// The header lines of a block: (name, value with its line ending), folded lines joined.
fn headers(block: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut rest = block;
    std::iter::from_fn(move || {
        loop {
            if rest.is_empty() || rest.starts_with(b"\r\n") {
                return None;
            }
            let mut end = 0;
            while let Some(i) = rest[end..].iter().position(|&b| b == b'\n') {
                end += i + 1;
                if !matches!(rest.get(end), Some(b' ' | b'\t')) {
                    break;
                }
            }
            if end == 0 {
                end = rest.len();
            }
            let (line, tail) = rest.split_at(end);
            rest = tail;
            if let Some(colon) = line.iter().position(|&b| b == b':') {
                return Some((line[..colon].trim_ascii(), &line[colon + 1..]));
            }
        }
    })
}

/// The first From: or Sender: address `login` may not send as, or `NoFrom`; `None` when
/// every address is the login's.
pub fn check(
    dir: &impl Directory,
    login: &str,
    block: &[u8],
    delims: &Delimiters,
) -> Option<Foreign> {
    let addresses = header_addresses(block);
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
