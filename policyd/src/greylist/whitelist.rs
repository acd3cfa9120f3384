//! postgrey's `whitelist_clients` and `whitelist_recipients` files, read verbatim so MIAB's
//! monthly download keeps working.
//!
//! `#` starts a comment anywhere; lines are trimmed; matching is case-insensitive.
//! Clients: `/regex/` against the client name, an IPv4 address, CIDR or partial address
//! (`a.b.c` is a /24, `a.b` a /16: postgrey builds a /24 for both, a bug not kept), an IPv6
//! address or CIDR, else a host name that matches itself and its subdomains.
//! Recipients: `/regex/` against the address, `name@` any domain, `name@domain`, both with an
//! optional `+ext`, else a domain and its subdomains.

use crate::net::Cidr;
use regex::{RegexSet, RegexSetBuilder};
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;

/// Regexes matched in one pass: a request costs one automaton run, not one per line of a
/// 300-line file.
#[derive(Debug, Default)]
struct Patterns {
    sources: Vec<String>,
    set: Option<RegexSet>,
}

impl Patterns {
    /// Checks and adds one pattern.
    fn add(&mut self, pattern: String) -> Result<(), String> {
        build(std::slice::from_ref(&pattern))?;
        self.sources.push(pattern);
        self.set = None;
        Ok(())
    }

    /// Compiles the set once all files are read.
    fn seal(&mut self) {
        if self.set.is_none() && !self.sources.is_empty() {
            self.set = build(&self.sources).ok();
        }
    }

    fn is_match(&self, s: &str) -> bool {
        self.set.as_ref().is_some_and(|set| set.is_match(s))
    }
}

fn build(patterns: &[String]) -> Result<RegexSet, String> {
    RegexSetBuilder::new(patterns)
        .case_insensitive(true)
        .size_limit(8 << 20)
        .build()
        .map_err(|e| e.to_string())
}

/// The client whitelist.
#[derive(Debug, Default)]
pub struct ClientList {
    regexes: Patterns,
    /// Host names, lowercased: each matches itself and its subdomains.
    hosts: HashSet<String>,
    nets: Vec<Cidr>,
}

/// The recipient whitelist.
#[derive(Debug, Default)]
pub struct RecipientList {
    patterns: Patterns,
}

/// A line that could not be used, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

/// Meaningful lines of a whitelist file: comments cut, trimmed, blank lines dropped.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter_map(|(i, l)| {
        let l = l.split('#').next().unwrap_or("").trim();
        (!l.is_empty()).then_some((i + 1, l))
    })
}

fn slashed(line: &str) -> Option<&str> {
    line.strip_prefix('/')?
        .strip_suffix('/')
        .filter(|r| !r.is_empty() && !r.contains(char::is_whitespace))
}

/// `a`, `a.b`, `a.b.c`, `a.b.c.d`, each optionally `/len`, as postgrey's IPv4 forms.
fn ipv4_partial(line: &str) -> Option<Result<Cidr, String>> {
    let (addr, len) = match line.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (line, None),
    };
    let octets: Vec<&str> = addr.split('.').collect();
    let numeric = |s: &&str| !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit());
    if octets.len() > 4 || !octets.iter().all(numeric) {
        return None;
    }
    let mut bytes = [0u8; 4];
    for (b, o) in bytes.iter_mut().zip(&octets) {
        match o.parse::<u8>() {
            Ok(v) => *b = v,
            Err(_) => return Some(Err(format!("{o} is not an octet"))),
        }
    }
    let implied = u8::try_from(octets.len() * 8).unwrap_or(32);
    let prefix = match len {
        None => implied,
        Some(l) => match l.parse::<u8>() {
            Ok(p) if p <= 32 => p,
            _ => return Some(Err(format!("bad prefix length {l}"))),
        },
    };
    Some(Ok(Cidr::new(IpAddr::from(bytes), prefix)))
}

impl ClientList {
    /// Adds a file's entries; returns the lines it could not use.
    pub fn add_text(&mut self, text: &str, file: &str) -> Vec<Skipped> {
        let mut skipped = Vec::new();
        for (n, line) in lines(text) {
            let result = if let Some(re) = slashed(line) {
                self.regexes.add(re.to_owned())
            } else if let Some(net) = ipv4_partial(line) {
                net.map(|c| self.nets.push(c))
            } else if line.contains(':') {
                Cidr::parse(line)
                    .map(|c| self.nets.push(c))
                    .ok_or_else(|| "not an IPv6 address or network".to_owned())
            } else if !line.contains(char::is_whitespace) {
                self.hosts
                    .insert(line.trim_start_matches('.').to_ascii_lowercase());
                Ok(())
            } else {
                Err("doesn't look like a host name or address".to_owned())
            };
            if let Err(reason) = result {
                skipped.push(Skipped {
                    file: file.to_owned(),
                    line: n,
                    reason,
                });
            }
        }
        self.regexes.seal();
        skipped
    }

    /// Is the client whitelisted? Names match the (Postfix-verified) `client_name`.
    pub fn matches(&self, client_name: &str, client_address: &str) -> bool {
        if let Ok(ip) = client_address.parse::<IpAddr>()
            && self.nets.iter().any(|n| n.contains(ip))
        {
            return true;
        }
        if client_name.is_empty() {
            return false;
        }
        let name = client_name.trim_end_matches('.').to_ascii_lowercase();
        // The name and every parent domain of it.
        let mut rest = name.as_str();
        loop {
            if self.hosts.contains(rest) {
                return true;
            }
            match rest.split_once('.') {
                Some((_, parent)) => rest = parent,
                None => break,
            }
        }
        self.regexes.is_match(client_name)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.regexes.sources.len() + self.hosts.len() + self.nets.len()
    }

    /// No entries?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl RecipientList {
    /// Adds a file's entries; returns the lines it could not use.
    pub fn add_text(&mut self, text: &str, file: &str) -> Vec<Skipped> {
        let mut skipped = Vec::new();
        for (n, line) in lines(text) {
            let pattern = if let Some(re) = slashed(line) {
                Ok(re.to_owned())
            } else if line.contains(char::is_whitespace) {
                Err("doesn't look like an address or domain".to_owned())
            } else if let Some(name) = line.strip_suffix('@') {
                Ok(format!(r"^{}(?:\+.*)?@", regex::escape(name)))
            } else if let Some((name, domain)) = line.split_once('@') {
                Ok(format!(
                    r"^{}(?:\+.*)?@{}$",
                    regex::escape(name),
                    regex::escape(domain)
                ))
            } else {
                Ok(format!(r"@(?:.+\.)?{}$", regex::escape(line)))
            };
            if let Err(reason) = pattern.and_then(|p| self.patterns.add(p)) {
                skipped.push(Skipped {
                    file: file.to_owned(),
                    line: n,
                    reason,
                });
            }
        }
        self.patterns.seal();
        skipped
    }

    /// Is the recipient whitelisted?
    pub fn matches(&self, recipient: &str) -> bool {
        self.patterns.is_match(recipient)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.patterns.sources.len()
    }

    /// No entries?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads whitelist files into `add`; a missing file is skipped (postgrey's `.local` files
/// usually do not exist), an unreadable one is reported.
pub fn load_files(
    files: &[impl AsRef<Path>],
    mut add: impl FnMut(&str, &str) -> Vec<Skipped>,
) -> Vec<Skipped> {
    let mut skipped = Vec::new();
    for f in files {
        let f = f.as_ref();
        let name = f.display().to_string();
        match std::fs::read(f) {
            Ok(bytes) => skipped.extend(add(&String::from_utf8_lossy(&bytes), &name)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => skipped.push(Skipped {
                file: name,
                line: 0,
                reason: e.to_string(),
            }),
        }
    }
    skipped
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENTS: &str = "\
# postgrey whitelist for mail client hostnames
# --------------------------------------------
12.5.136.141 # Southwest Airlines (unique sender, no retry)
12.107.209.244/32   # kernel.org
63.82.37
198.2
2a01:111:f400::/40   # O365
amazon.com
/^mail\\d+\\.example\\.org$/
.cern.ch
/has space/ here
300.1.1.1
";

    #[test]
    fn client_file() {
        let mut l = ClientList::default();
        let skipped = l.add_text(CLIENTS, "wl");
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert_eq!(skipped[0].line, 11);
        assert!(l.matches("unknown", "12.5.136.141"));
        assert!(!l.matches("unknown", "12.5.136.142"));
        assert!(l.matches("unknown", "63.82.37.200"));
        assert!(l.matches("unknown", "198.2.250.1"), "a.b is a /16");
        assert!(l.matches("unknown", "2a01:111:f400:7e00::1"));
        assert!(l.matches("smtp-out.AMAZON.com", "203.0.113.1"));
        assert!(l.matches("amazon.com", "203.0.113.1"));
        assert!(!l.matches("notamazon.com", "203.0.113.1"));
        assert!(l.matches("mail42.example.org", "203.0.113.1"));
        assert!(!l.matches("mail.example.org", "203.0.113.1"));
        assert!(l.matches("lxmail.cern.ch", "203.0.113.1"));
    }

    #[test]
    fn recipient_file() {
        let mut l = RecipientList::default();
        let text = "postmaster@\nabuse@\nsales@example.com\nexample.net\n/^list-.*@x\\.org$/\n";
        assert!(l.add_text(text, "wl").is_empty());
        assert_eq!(l.len(), 5);
        assert!(l.matches("Postmaster@anything.example"));
        assert!(l.matches("abuse+x@y.example"));
        assert!(!l.matches("notabuse@y.example"));
        assert!(l.matches("sales+q@example.com"));
        assert!(!l.matches("sales@example.com.evil"));
        assert!(l.matches("a@example.net") && l.matches("a@sub.example.net"));
        assert!(!l.matches("a@badexample.net"));
        assert!(l.matches("list-dev@x.org"));
    }

    #[test]
    fn missing_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("wl");
        std::fs::write(&f, "example.com\n").unwrap();
        let mut l = RecipientList::default();
        let skipped = load_files(&[f, dir.path().join("wl.local")], |t, n| l.add_text(t, n));
        assert!(skipped.is_empty());
        assert_eq!(l.len(), 1);
    }
}
