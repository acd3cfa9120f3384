//! The author of an incoming message for DMARC (RFC 7489 §6.6.1): exactly one From: header,
//! naming at least one address, every address with a domain. Anything else is refused, so
//! no From: can name a domain with a policy and still come out `dmarc=none`. A From: with
//! addresses in several domains is evaluated once per domain (the caller applies the
//! strictest result).

use super::from::entries;
use mail_auth::AuthenticatedMessage;

/// Why a message has no author DMARC can evaluate; the texts are the 550 replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NoAuthor {
    Missing,
    Several(usize),
    Unreadable,
}

impl NoAuthor {
    pub(crate) fn reply(&self) -> String {
        match self {
            NoAuthor::Missing => "the message has no From: header (RFC 5322 requires one)".into(),
            NoAuthor::Several(n) => {
                format!("the message has {n} From: headers (RFC 5322 allows one)")
            }
            NoAuthor::Unreadable => {
                "the From: header names no address with a domain that can be checked".into()
            }
        }
    }
}

/// The author domains of `msg` (lowercase, without a final dot, in the order they first
/// appear), each with its addresses.
pub(crate) fn domains(
    msg: &AuthenticatedMessage<'_>,
) -> Result<Vec<(String, Vec<String>)>, NoAuthor> {
    let mut from = msg
        .headers
        .iter()
        .filter(|(name, _)| name.trim_ascii().eq_ignore_ascii_case(b"From"));
    let value = match (from.next(), from.count()) {
        (None, _) => return Err(NoAuthor::Missing),
        (Some((_, v)), 0) => *v,
        (Some(_), more) => return Err(NoAuthor::Several(more + 1)),
    };
    let list = entries(value);
    if list.is_empty() {
        return Err(NoAuthor::Unreadable);
    }
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for address in list {
        let address = address.ok_or(NoAuthor::Unreadable)?.trim().to_owned();
        let domain = address
            .rsplit_once('@')
            .map(|(_, d)| d.trim_end_matches('.').to_lowercase())
            .filter(|d| is_domain(d))
            .ok_or(NoAuthor::Unreadable)?;
        match out.iter_mut().find(|(d, _)| *d == domain) {
            Some((_, list)) => list.push(address),
            None => out.push((domain, vec![address])),
        }
    }
    Ok(out)
}

/// A domain name as DNS can ask it: labels of letters (any script, for IDNs), digits,
/// hyphens and underscores, none empty.
pub(crate) fn is_domain(d: &str) -> bool {
    crate::results::labels(d, |c| c.is_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn author(headers: &str) -> Result<Vec<(String, Vec<String>)>, NoAuthor> {
        let raw = format!("{headers}\r\n");
        let msg = AuthenticatedMessage::parse(raw.as_bytes()).unwrap();
        domains(&msg)
    }

    #[test]
    fn every_from_case() {
        let one = |d: &str, a: &[&str]| (d.to_owned(), a.iter().map(|s| (*s).to_owned()).collect());
        assert_eq!(
            author("From: Bank <CEO@Bank.Example>\r\nTo: x@y.example\r\n"),
            Ok(vec![one("bank.example", &["ceo@bank.example"])])
        );
        assert_eq!(
            author("From: a@x.example, b@X.example.\r\n"),
            Ok(vec![one("x.example", &["a@x.example", "b@x.example."])])
        );
        assert_eq!(
            author("From: a@x.example, b@bank.example\r\n"),
            Ok(vec![
                one("x.example", &["a@x.example"]),
                one("bank.example", &["b@bank.example"])
            ])
        );
        assert_eq!(
            author("From: a@x.example\r\nfrom : b@bank.example\r\n"),
            Err(NoAuthor::Several(2))
        );
        assert_eq!(author("To: a@x.example\r\n"), Err(NoAuthor::Missing));
        for bad in [
            "From: undisclosed:;",
            "From: just a name",
            "From: a@",
            "From: a@x.example, nodomain",
            "From: <a@bank.example;dkim=pass>",
            "From: a@bank..example",
        ] {
            assert_eq!(
                author(&format!("{bad}\r\n")),
                Err(NoAuthor::Unreadable),
                "{bad}"
            );
        }
    }
}
