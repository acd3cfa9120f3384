//! DNS block lists: the client address against `zen.spamhaus.org`-style lists (`dnsbl`), the
//! sender's domain against `dbl.spamhaus.org`-style lists (`rhsbl`).
//!
//! Only answers inside a list's configured codes count as listed, as MIAB's
//! `=127.0.0.[2..11]` filters. Spamhaus's error answers (127.255.255.0/24, and 127.0.1.255 on
//! the DBL) and every DNS failure never reject: they are logged when a list's state changes,
//! and the request passes. Answers are cached by the resolver for their TTL.

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::{RData, RecordType};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::time::Duration;

/// Answers that mean "listed", in Postfix's filter notation: each octet is a number,
/// `[a..b]` or `[a;b;c]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Codes(Vec<[Vec<(u8, u8)>; 4]>);

impl Codes {
    /// No patterns: any answer outside Spamhaus's error range counts.
    pub fn any() -> Codes {
        Codes(Vec::new())
    }

    /// Parses patterns such as `127.0.0.[2..11]`; empty means any non-error answer.
    pub fn parse(patterns: &[String]) -> Result<Codes, String> {
        let mut out = Vec::new();
        for p in patterns {
            let parts = split_octets(p);
            if parts.len() != 4 {
                return Err(format!("{p:?}: expected four octets"));
            }
            let mut octets: [Vec<(u8, u8)>; 4] = Default::default();
            for (slot, part) in octets.iter_mut().zip(parts) {
                *slot = octet(part).ok_or_else(|| format!("{p:?}: bad octet {part:?}"))?;
            }
            out.push(octets);
        }
        Ok(Codes(out))
    }

    /// Does `a` count as listed?
    pub fn matches(&self, a: Ipv4Addr) -> bool {
        if self.0.is_empty() {
            return true;
        }
        self.0.iter().any(|p| {
            p.iter()
                .zip(a.octets())
                .all(|(ranges, o)| ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&o)))
        })
    }
}

/// Splits on the dots outside brackets (`[2..11]` has dots of its own).
fn split_octets(p: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in p.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            '.' if depth == 0 => {
                parts.push(&p[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&p[start..]);
    parts
}

fn octet(s: &str) -> Option<Vec<(u8, u8)>> {
    let Some(inner) = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')) else {
        let v = s.parse().ok()?;
        return Some(vec![(v, v)]);
    };
    inner
        .split(';')
        .map(|item| match item.split_once("..") {
            Some((a, b)) => {
                let (a, b) = (a.parse().ok()?, b.parse().ok()?);
                (a <= b).then_some((a, b))
            }
            None => item.parse().ok().map(|v| (v, v)),
        })
        .collect()
}

/// What a list said about one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Listed, with the answer that matched.
    Listed(Ipv4Addr),
    /// Not listed (no answer, or only answers outside the codes).
    Clean,
    /// The list could not answer: a resolver error code or a DNS failure. Never rejects.
    Unusable(String),
}

/// Spamhaus's "your query was refused" answers: 127.255.255.0/24 on every zone, 127.0.1.255
/// on the DBL.
fn is_error_answer(a: Ipv4Addr) -> bool {
    let o = a.octets();
    (o[0], o[1], o[2]) == (127, 255, 255) || a == Ipv4Addr::new(127, 0, 1, 255)
}

/// Classifies a list's A answers.
pub fn classify(answers: &[Ipv4Addr], codes: &Codes) -> Verdict {
    if let Some(e) = answers.iter().find(|a| is_error_answer(**a)) {
        let why = match e.octets()[3] {
            252 => "typo in the zone name",
            254 => "query through a public or open resolver",
            255 => "excessive number of queries",
            _ => "error answer",
        };
        return Verdict::Unusable(format!("{e}: {why}"));
    }
    answers
        .iter()
        .find(|a| codes.matches(**a))
        .map_or(Verdict::Clean, |a| Verdict::Listed(*a))
}

/// The name asked for an address: reversed octets, or reversed nibbles for IPv6.
pub fn reversed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            format!("{}.{}.{}.{}", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(a) => {
            let hex = format!("{:032x}", u128::from(a));
            let mut s = String::with_capacity(63);
            for (i, c) in hex.chars().rev().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                s.push(c);
            }
            s
        }
    }
}

/// What to do with a listed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListAction {
    Reject,
    Defer,
    Warn,
}

/// One configured list.
#[derive(Clone)]
pub struct List {
    /// The name in reply texts and logs (the public zone, never the DQS key).
    pub name: String,
    /// The zone actually asked.
    pub query_zone: String,
    pub codes: Codes,
    pub action: ListAction,
}

impl List {
    /// A list from its settings; a `*.spamhaus.org` zone is asked through DQS when a key is
    /// given.
    pub fn new(zone: &str, codes: Codes, action: ListAction, dqs_key: Option<&str>) -> List {
        let zone = zone.trim_end_matches('.').to_ascii_lowercase();
        let query_zone = match (
            dqs_key.filter(|k| !k.is_empty()),
            zone.strip_suffix(".spamhaus.org"),
        ) {
            (Some(key), Some(list)) => format!("{key}.{list}.dq.spamhaus.net"),
            _ => zone.clone(),
        };
        List {
            name: zone,
            query_zone,
            codes,
            action,
        }
    }
}

impl std::fmt::Debug for List {
    // The query zone may hold a DQS key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("List")
            .field("name", &self.name)
            .field("codes", &self.codes)
            .field("action", &self.action)
            .finish_non_exhaustive()
    }
}

/// The lists `settings` name, asked through Spamhaus's DQS with `dqs_key` if one is set.
pub fn lists(settings: &[crate::settings::ListSettings], dqs_key: Option<&str>) -> Vec<List> {
    settings
        .iter()
        .map(|l| List::new(&l.zone, l.codes.clone(), l.action, dqs_key))
        .collect()
}

/// Postfix's `default_rbl_reply` text, without the code: `Service unavailable; Client host
/// [IP] blocked using ZONE; REASON`.
pub fn reply_text(class: &str, what: &str, zone: &str, reason: Option<&str>) -> String {
    let mut s = format!("Service unavailable; {class} [{what}] blocked using {zone}");
    if let Some(r) = reason.filter(|r| !r.is_empty()) {
        s.push_str("; ");
        s.push_str(r);
    }
    s
}

/// Looks names up and remembers each list's health, so a failing list is logged when it
/// starts and stops failing rather than on every request.
#[derive(Debug)]
pub struct Checker {
    resolver: TokioResolver,
    /// The most one question may take, whatever the resolver's retries across servers.
    limit: Duration,
    health: Mutex<HashMap<String, Option<String>>>,
}

impl Checker {
    /// A checker over `resolver`, giving up on a question after `limit`.
    pub fn new(resolver: TokioResolver, limit: Duration) -> Checker {
        Checker {
            resolver,
            limit,
            health: Mutex::new(HashMap::new()),
        }
    }

    /// Asks `list` about `name` (a reversed address or a domain).
    pub async fn check(&self, list: &List, name: &str) -> Verdict {
        let fqdn = format!("{name}.{}.", list.query_zone);
        let lookup = self.resolver.lookup(fqdn.as_str(), RecordType::A);
        let verdict = match tokio::time::timeout(self.limit, lookup).await {
            Err(_) => Verdict::Unusable("DNS: no answer in time".into()),
            Ok(Ok(l)) => {
                let answers: Vec<Ipv4Addr> = l
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::A(a) => Some(a.0),
                        _ => None,
                    })
                    .collect();
                classify(&answers, &list.codes)
            }
            Ok(Err(e)) if e.is_nx_domain() || e.is_no_records_found() => Verdict::Clean,
            Ok(Err(e)) => Verdict::Unusable(format!("DNS: {e}")),
        };
        self.note_health(list, &verdict);
        verdict
    }

    /// The list's explanation (its TXT record) for a listed name, as Postfix's `$rbl_reason`.
    pub async fn reason(&self, list: &List, name: &str) -> Option<String> {
        let fqdn = format!("{name}.{}.", list.query_zone);
        let lookup = self.resolver.lookup(fqdn.as_str(), RecordType::TXT);
        let l = tokio::time::timeout(self.limit, lookup).await.ok()?.ok()?;
        l.answers().iter().find_map(|r| match &r.data {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect::<String>()
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(400)
                    .collect(),
            ),
            _ => None,
        })
    }

    fn note_health(&self, list: &List, verdict: &Verdict) {
        let now_bad = match verdict {
            Verdict::Unusable(why) => Some(why.clone()),
            _ => None,
        };
        let Ok(mut h) = self.health.lock() else {
            return;
        };
        let before = h.entry(list.name.clone()).or_insert(None);
        if *before == now_bad {
            return;
        }
        match &now_bad {
            Some(why) => tracing::warn!(
                list = %list.name,
                reason = %why,
                "DNS block list unusable; its answers are ignored (requests pass) until it recovers"
            ),
            None => tracing::info!(list = %list.name, "DNS block list answering again"),
        }
        *before = now_bad;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zen() -> Codes {
        Codes::parse(&["127.0.0.[2..11]".into()]).unwrap()
    }

    #[test]
    fn spamhaus_codes() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            classify(&[ip("127.0.0.2")], &zen()),
            Verdict::Listed(ip("127.0.0.2"))
        );
        assert_eq!(
            classify(&[ip("127.0.0.11")], &zen()),
            Verdict::Listed(ip("127.0.0.11"))
        );
        assert_eq!(classify(&[ip("127.0.0.1")], &zen()), Verdict::Clean);
        assert_eq!(classify(&[ip("127.0.0.30")], &zen()), Verdict::Clean);
        assert_eq!(classify(&[], &zen()), Verdict::Clean);
        for e in ["127.255.255.252", "127.255.255.254", "127.255.255.255"] {
            assert!(
                matches!(classify(&[ip(e)], &zen()), Verdict::Unusable(_)),
                "{e}"
            );
            assert!(
                matches!(classify(&[ip(e)], &Codes(vec![])), Verdict::Unusable(_)),
                "{e}"
            );
        }
        let dbl = Codes::parse(&["127.0.1.[2..99]".into()]).unwrap();
        assert!(matches!(
            classify(&[ip("127.0.1.2")], &dbl),
            Verdict::Listed(_)
        ));
        assert_eq!(classify(&[ip("127.0.1.102")], &dbl), Verdict::Clean);
        assert!(matches!(
            classify(&[ip("127.0.1.255")], &dbl),
            Verdict::Unusable(_)
        ));
        let alt = Codes::parse(&["127.0.0.[2;4;10..11]".into()]).unwrap();
        assert!(alt.matches(ip("127.0.0.4")) && !alt.matches(ip("127.0.0.3")));
        for bad in ["127.0.0", "127.0.0.[5..2]", "127.0.0.x", "127.0.0.[1..300]"] {
            assert!(Codes::parse(&[bad.into()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn query_names() {
        assert_eq!(reversed("192.0.2.99".parse().unwrap()), "99.2.0.192");
        let v6 = reversed("2001:db8::567:89ab".parse().unwrap());
        assert_eq!(
            v6,
            "b.a.9.8.7.6.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
        );
    }

    #[test]
    fn dqs_and_texts() {
        let l = List::new(
            "zen.spamhaus.org",
            Codes::any(),
            ListAction::Reject,
            Some("abc123"),
        );
        assert_eq!(l.query_zone, "abc123.zen.dq.spamhaus.net");
        assert!(
            !format!("{l:?}").contains("abc123"),
            "the key never reaches a log"
        );
        assert_eq!(l.name, "zen.spamhaus.org");
        let l = List::new(
            "bl.example.",
            Codes::any(),
            ListAction::Warn,
            Some("abc123"),
        );
        assert_eq!(
            (l.query_zone.as_str(), l.action),
            ("bl.example", ListAction::Warn)
        );
        assert_eq!(
            reply_text(
                "Client host",
                "192.0.2.1",
                "zen.spamhaus.org",
                Some("https://www.spamhaus.org/query/ip/192.0.2.1")
            ),
            "Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/192.0.2.1"
        );
        assert_eq!(
            reply_text("Sender address", "a@b.example", "dbl.spamhaus.org", None),
            "Service unavailable; Sender address [a@b.example] blocked using dbl.spamhaus.org"
        );
    }
}
