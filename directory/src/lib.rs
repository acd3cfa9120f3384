//! The directory the daemons ask: an immutable in-memory snapshot of the user DB, the read
//! model every daemon answers from.
//!
//! Responsibilities:
//! - [`Directory`]: the handful of questions the daemons ask (our domains, mailboxes, alias
//!   rewriting, sender ownership, a login's account and app passwords);
//! - [`Snapshot`]: every row those answers need, read in one read transaction, with the
//!   answers computed in memory through the same key walk as the SQL maps (`maps`), so they
//!   are MIAB's `sqlite:` answers exactly;
//! - Postfix's key walk over MIAB's four maps (`maps`), written once for the snapshot and for
//!   the same maps asked key by key in SQL ([`SqlMaps`], what the differential tests compare
//!   with Postfix itself);
//! - [`Source`]: where snapshots come from, with a cheap "has it changed?" ([`Version`]).
//!   [`SqliteSource`] reads MIAB's file; another backend (a shared SQL server for several
//!   hosts) is another `Source`, and no daemon changes;
//! - [`Live`] (feature `async`): the handle that swaps snapshots as the DB changes, and
//!   [`Hashers`], the bounded pool password checks run on;
//! - [`pg`] (feature `async`): the directory shared through PostgreSQL by several hosts: the
//!   primary's publisher and the other hosts' source.

#[cfg(feature = "async")]
mod live;
mod maps;
#[cfg(feature = "async")]
pub mod pg;
mod sqlite;
#[cfg(feature = "async")]
pub use live::{Hashers, Live, ReadReport, watch_reads};
pub use sqlite::{SqlMaps, SqliteSource};

use maps::KeyTables;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use userdb::Result;
use userdb::address::{self, Delimiters};
use userdb::app_password::AppPasswordMatch;
use userdb::db::{User, UserDb, parse_privs};
use userdb::rows::RowSink;

/// The questions the daemons ask of the user DB.
pub trait Directory {
    /// `virtual_mailbox_domains`: a user, alias or auto-alias in `domain` (ASCII
    /// case-insensitive).
    fn is_local_domain(&self, domain: &str) -> bool;
    /// MIAB's `get_mail_domains`: the domain of a user or a manual alias (exact, lowercase as
    /// stored). The milter signs for these.
    fn is_mail_domain(&self, domain: &str) -> bool;
    /// `virtual_mailbox_maps`, through Postfix's partial keys.
    fn is_mailbox(&self, address: &str, delims: &Delimiters) -> bool;
    /// `virtual_alias_maps`: what `address` is rewritten to; `None` when unlisted.
    fn resolve_alias(&self, address: &str, delims: &Delimiters) -> Option<Vec<String>>;
    /// `smtpd_sender_login_maps`: who owns `address` as a sender.
    fn sender_owners(&self, address: &str, delims: &Delimiters) -> Option<Vec<String>>;
    /// Would `reject_authenticated_sender_login_mismatch` let `login` use `sender`?
    fn may_send_as(&self, login: &str, sender: &str, delims: &Delimiters) -> bool {
        self.sender_owners(sender, delims)
            .is_some_and(|owners| owners.iter().any(|o| o.eq_ignore_ascii_case(login)))
    }
    /// The user whose login is exactly `email` (case-sensitive, as MIAB's queries).
    fn user(&self, email: &str) -> Option<User>;
    /// Whether only app passwords may log in as user `user_id`.
    fn app_passwords_required(&self, user_id: i64) -> bool;
    /// Whether user `user_id` is suspended (see `suspend`): no password lets it in.
    fn suspended(&self, user_id: i64) -> bool;
    /// User `user_id`'s app password with this digest (`app_password::candidate_digest`).
    fn app_password(&self, user_id: i64, digest: &str) -> Option<AppPasswordMatch>;
}

/// Which state of the data a snapshot belongs to. Equal versions mean equal data; a backend
/// fills in whatever tells its states apart (for a file: device, inode, journal mode and
/// change counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Version(pub [u64; 4]);

/// Where snapshots come from.
pub trait Source: Send + Sync + std::fmt::Debug + 'static {
    /// The version of the data now, without reading it. Called on every request: cheap, and
    /// never blocking for long.
    fn version(&self) -> Result<Version>;
    /// Reads a whole snapshot, consistently. Slow; runs off the async runtime.
    fn load(&self) -> Result<Snapshot>;
}

/// A user row without its address (the map key): kept small, since a box may have 100,000.
#[derive(Clone)]
struct UserRow {
    id: i64,
    hash: Box<str>,
    /// The column as stored, newline-separated.
    privileges: Box<str>,
    /// `None` for MIAB's `0` (no limit), the usual value.
    quota: Option<Box<str>>,
}

/// An alias row, as the maps need it.
#[derive(Debug, Clone)]
struct AliasRow {
    destination: Box<str>,
    permitted_senders: Option<Box<str>>,
}

#[derive(Debug, Clone)]
struct AppRow {
    id: i64,
    user_id: i64,
    scopes: Box<str>,
}

/// Everything the daemons need from the user DB, in memory and immutable. Built in one read
/// transaction ([`Snapshot::read`]).
#[derive(Default)]
pub struct Snapshot {
    version: Option<Version>,
    users: HashMap<Box<str>, UserRow>,
    /// Manual aliases by exact source.
    aliases: HashMap<Box<str>, AliasRow>,
    /// Auto-aliases with a destination, by exact source (the sender map ignores them).
    auto_aliases: HashMap<Box<str>, Box<str>>,
    /// ASCII-lowercased text after the last `@` of every user, alias and auto-alias: what
    /// `LIKE '%@domain'` finds.
    domains: HashSet<Box<str>>,
    /// [`Directory::is_mail_domain`]'s set.
    mail_domains: HashSet<Box<str>>,
    app_required: HashSet<i64>,
    suspended: HashSet<i64>,
    /// App passwords by digest (unique in the table).
    app_passwords: HashMap<Box<str>, AppRow>,
    /// Rows left out because a column held no valid text (a blob, invalid UTF-8).
    skipped: usize,
}

// Hashes stay out of Debug prints: only the sizes are shown.
impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.version)
            .field("users", &self.users.len())
            .field("aliases", &self.aliases.len())
            .field("auto_aliases", &self.auto_aliases.len())
            .field("domains", &self.domains.len())
            .finish_non_exhaustive()
    }
}

fn after_last_at(s: &str) -> Option<Box<str>> {
    s.rfind('@')
        .map(|i| s[i + 1..].to_ascii_lowercase().into_boxed_str())
}

impl Snapshot {
    /// Reads every row the answers need from `db`, in one read transaction. Rows are taken
    /// as they come, with no copy of the tables in between.
    pub fn read(db: &UserDb) -> Result<Snapshot> {
        let mut s = Snapshot::default();
        db.read_rows(&mut s)?;
        s.shrink();
        Ok(s)
    }

    fn note_domains(&mut self, address: &str, mail_domain: bool) {
        if let Some(d) = after_last_at(address) {
            self.domains.insert(d);
        }
        if mail_domain && let Some(d) = address::domain_of(address) {
            self.mail_domains.insert(d.into());
        }
    }

    fn shrink(&mut self) {
        self.users.shrink_to_fit();
        self.aliases.shrink_to_fit();
        self.auto_aliases.shrink_to_fit();
        self.domains.shrink_to_fit();
        self.mail_domains.shrink_to_fit();
        self.app_passwords.shrink_to_fit();
    }

    /// The version this snapshot was read at, if its source set one.
    pub fn version(&self) -> Option<Version> {
        self.version
    }

    /// Files the snapshot under `version`.
    pub fn with_version(mut self, version: Version) -> Snapshot {
        self.version = Some(version);
        self
    }

    /// Users, manual aliases and auto-aliases held.
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.users.len(),
            self.aliases.len(),
            self.auto_aliases.len(),
        )
    }

    /// Rows left out because a column held no valid text.
    pub fn skipped(&self) -> usize {
        self.skipped
    }
}

impl RowSink for Snapshot {
    fn sizes(&mut self, users: usize, aliases: usize) {
        self.users.reserve(users);
        self.aliases.reserve(aliases);
    }

    fn user(&mut self, [id, email, hash, privs, quota]: [Option<Box<str>>; 5]) {
        let (Some(id), Some(email), Some(hash)) = (id.and_then(|i| i.parse().ok()), email, hash)
        else {
            self.skipped += 1;
            return;
        };
        self.note_domains(&email, true);
        let row = UserRow {
            id,
            hash,
            privileges: privs.unwrap_or_default(),
            quota: quota.filter(|q| &**q != "0"),
        };
        self.users.insert(email, row);
    }

    fn alias(&mut self, [source, destination, permitted_senders]: [Option<Box<str>>; 3]) {
        let (Some(source), Some(destination)) = (source, destination) else {
            self.skipped += 1;
            return;
        };
        self.note_domains(&source, true);
        let row = AliasRow {
            destination,
            permitted_senders,
        };
        self.aliases.insert(source, row);
    }

    fn auto_alias(&mut self, [source, destination]: [Option<Box<str>>; 2]) {
        let (Some(source), Some(destination)) = (source, destination) else {
            self.skipped += 1;
            return;
        };
        self.note_domains(&source, false);
        if !destination.is_empty() {
            self.auto_aliases.insert(source, destination);
        }
    }

    fn app_passwords_required(&mut self, [uid]: [Option<Box<str>>; 1]) {
        if let Some(uid) = uid.and_then(|u| u.parse().ok()) {
            self.app_required.insert(uid);
        }
    }

    fn suspended(&mut self, [uid]: [Option<Box<str>>; 1]) {
        if let Some(uid) = uid.and_then(|u| u.parse().ok()) {
            self.suspended.insert(uid);
        }
    }

    fn app_password(&mut self, [id, uid, hash, scopes]: [Option<Box<str>>; 4]) {
        let id = id.and_then(|i| i.parse().ok());
        let uid = uid.and_then(|u| u.parse().ok());
        let (Some(id), Some(user_id), Some(hash), Some(scopes)) = (id, uid, hash, scopes) else {
            self.skipped += 1;
            return;
        };
        let row = AppRow {
            id,
            user_id,
            scopes,
        };
        self.app_passwords.insert(hash, row);
    }
}

impl KeyTables for Snapshot {
    type Error = Infallible;
    fn domain_key(&self, domain: &str) -> Result<bool, Infallible> {
        Ok(self.domains.contains(domain.to_ascii_lowercase().as_str()))
    }
    fn mailbox_key(&self, key: &str) -> Result<bool, Infallible> {
        Ok(self.users.contains_key(key))
    }
    fn alias_key(&self, key: &str) -> Result<Option<Cow<'_, str>>, Infallible> {
        // MIAB's priorities: a manual alias with a destination, the user itself, an auto-alias.
        if let Some(a) = self.aliases.get(key)
            && !a.destination.is_empty()
        {
            return Ok(Some(Cow::Borrowed(&a.destination)));
        }
        if let Some((email, _)) = self.users.get_key_value(key) {
            return Ok(Some(Cow::Borrowed(email)));
        }
        Ok(self.auto_aliases.get(key).map(|d| Cow::Borrowed(&**d)))
    }
    fn sender_key(&self, key: &str) -> Result<Option<Cow<'_, str>>, Infallible> {
        // An alias's permitted senders, else its destinations (even when empty), else the user.
        if let Some(a) = self.aliases.get(key) {
            let v = a.permitted_senders.as_ref().unwrap_or(&a.destination);
            return Ok(Some(Cow::Borrowed(v)));
        }
        Ok(self
            .users
            .get_key_value(key)
            .map(|(email, _)| Cow::Borrowed(&**email)))
    }
}

fn infallible<T>(r: Result<T, Infallible>) -> T {
    match r {
        Ok(v) => v,
        Err(never) => match never {},
    }
}

impl Directory for Snapshot {
    fn is_local_domain(&self, domain: &str) -> bool {
        infallible(maps::is_local_domain(self, domain))
    }
    fn is_mail_domain(&self, domain: &str) -> bool {
        self.mail_domains.contains(domain)
    }
    fn is_mailbox(&self, address: &str, delims: &Delimiters) -> bool {
        infallible(maps::is_mailbox(self, address, delims))
    }
    fn resolve_alias(&self, address: &str, delims: &Delimiters) -> Option<Vec<String>> {
        infallible(maps::resolve_alias(self, address, delims))
    }
    fn sender_owners(&self, address: &str, delims: &Delimiters) -> Option<Vec<String>> {
        infallible(maps::sender_owners(self, address, delims))
    }
    fn user(&self, email: &str) -> Option<User> {
        let (email, u) = self.users.get_key_value(email)?;
        Some(User {
            id: u.id,
            email: email.to_string(),
            password_hash: u.hash.to_string(),
            privileges: parse_privs(&u.privileges),
            quota: u.quota.as_deref().unwrap_or("0").to_owned(),
        })
    }
    fn app_passwords_required(&self, user_id: i64) -> bool {
        self.app_required.contains(&user_id)
    }
    fn suspended(&self, user_id: i64) -> bool {
        self.suspended.contains(&user_id)
    }
    fn app_password(&self, user_id: i64, digest: &str) -> Option<AppPasswordMatch> {
        self.app_passwords
            .get(digest)
            .filter(|a| a.user_id == user_id)
            .map(|a| AppPasswordMatch {
                id: a.id,
                scopes: a.scopes.to_string(),
            })
    }
}

#[cfg(test)]
mod tests;
