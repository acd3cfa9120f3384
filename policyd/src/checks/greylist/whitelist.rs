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
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

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

/// What identifies a version of a whitelist file: a refreshed file (MIAB's cron replaces
/// `whitelist_clients` by rename) changes at least one of these.
type Stamp = Option<(u64, u64, i64, i64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
}

/// Both whitelists as read from their files, read again when a file changes.
#[derive(Debug)]
pub struct Whitelists {
    client_files: Vec<PathBuf>,
    recipient_files: Vec<PathBuf>,
    stamps: Mutex<Vec<Stamp>>,
    lists: RwLock<Arc<(ClientList, RecipientList)>>,
}

impl Whitelists {
    /// Reads the files; returns the lists and the lines that were skipped.
    pub fn load(
        client_files: &[PathBuf],
        recipient_files: &[PathBuf],
    ) -> (Whitelists, Vec<Skipped>) {
        let w = Whitelists {
            client_files: client_files.to_vec(),
            recipient_files: recipient_files.to_vec(),
            stamps: Mutex::new(Vec::new()),
            lists: RwLock::new(Arc::default()),
        };
        let skipped = w.read();
        (w, skipped)
    }

    fn stamps(&self) -> Vec<Stamp> {
        self.client_files
            .iter()
            .chain(&self.recipient_files)
            .map(|f| stamp(f))
            .collect()
    }

    fn read(&self) -> Vec<Skipped> {
        let stamps = self.stamps();
        let mut clients = ClientList::default();
        let mut recipients = RecipientList::default();
        let mut skipped = load_files(&self.client_files, |t, n| clients.add_text(t, n));
        skipped.extend(load_files(&self.recipient_files, |t, n| {
            recipients.add_text(t, n)
        }));
        if let Ok(mut l) = self.lists.write() {
            *l = Arc::new((clients, recipients));
        }
        if let Ok(mut s) = self.stamps.lock() {
            *s = stamps;
        }
        skipped
    }

    /// Reads the files again if any of them changed, appeared or went away since the last
    /// read. Returns the skipped lines of a new read, `None` when nothing changed.
    pub fn reload_if_changed(&self) -> Option<Vec<Skipped>> {
        let now = self.stamps();
        let same = self.stamps.lock().map(|s| *s == now).unwrap_or(false);
        (!same).then(|| self.read())
    }

    /// The lists in force.
    pub fn current(&self) -> Arc<(ClientList, RecipientList)> {
        self.lists
            .read()
            .map(|l| Arc::clone(&l))
            .unwrap_or_default()
    }

    /// Entries in both lists.
    pub fn len(&self) -> usize {
        let l = self.current();
        l.0.len() + l.1.len()
    }

    /// No entries at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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

    #[test]
    fn a_refreshed_file_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("whitelist_clients");
        std::fs::write(&f, "example.net\n").unwrap();
        let (w, skipped) = Whitelists::load(std::slice::from_ref(&f), &[]);
        assert!(skipped.is_empty());
        assert!(w.current().0.matches("mx.example.net", "192.0.2.1"));
        assert!(w.reload_if_changed().is_none(), "nothing changed");
        // As MIAB's cron does it: a new file moved into place.
        let tmp = dir.path().join("new");
        std::fs::write(&tmp, "example.org\n192.0.2.0/24\n").unwrap();
        std::fs::rename(&tmp, &f).unwrap();
        assert!(w.reload_if_changed().is_some());
        let l = w.current();
        assert!(!l.0.matches("mx.example.net", "198.51.100.1"));
        assert!(l.0.matches("mail.example.org", "198.51.100.1"));
        assert!(l.0.matches("unknown", "192.0.2.77"));
        std::fs::remove_file(&f).unwrap();
        assert!(
            w.reload_if_changed().is_some(),
            "a removed file empties the list"
        );
        assert!(w.is_empty());
    }
}
