//! The directory the daemons ask: an immutable in-memory snapshot of the user DB.
//!
//! Responsibilities:
//! - [`Directory`]: the handful of questions the daemons ask (our domains, mailboxes, alias
//!   rewriting, sender ownership, a login's account and app passwords);
//! - [`Snapshot`]: every row those answers need, read in one read transaction, with the
//!   answers computed in memory through the same key walk as the SQL maps (`maps`), so they
//!   are MIAB's `sqlite:` answers exactly;
//! - [`Source`]: where snapshots come from, with a cheap "has it changed?" ([`Version`]).
//!   [`SqliteSource`] reads MIAB's file; another backend (a shared SQL server for several
//!   hosts) is another `Source`, and no daemon changes.
//!
//! The handle that swaps snapshots as the DB changes is `Live` (feature `async`).

use crate::address::{self, Delimiters};
use crate::app_password::AppPasswordMatch;
use crate::db::{User, UserDb, parse_privs};
use crate::error::{Error, Result};
use crate::maps::{self, KeyTables};
use rusqlite::types::ValueRef;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

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

/// A text column as SQL's `=` sees it: other types (a blob) and invalid UTF-8 never match.
fn text(v: ValueRef<'_>) -> Option<Box<str>> {
    match v {
        ValueRef::Text(t) => std::str::from_utf8(t).ok().map(Box::from),
        // TEXT affinity stores numbers as text, so a number here is only from a foreign writer.
        ValueRef::Integer(i) => Some(i.to_string().into()),
        _ => None,
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
        let tx = db.conn.unchecked_transaction().map_err(|e| db.err(e))?;
        let mut s = Snapshot::default();
        let count = |table: &str| -> Result<usize> {
            db.conn
                .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
                    r.get::<_, i64>(0)
                })
                .map(|n| usize::try_from(n).unwrap_or(0))
                .map_err(|e| db.err(e))
        };
        s.users.reserve(count("users")?);
        s.aliases.reserve(count("aliases")?);
        each_row(db, &user_sql(db), |[id, email, hash, privs, quota]| {
            let (Some(id), Some(email), Some(hash)) =
                (id.and_then(|i| i.parse().ok()), email, hash)
            else {
                s.skipped += 1;
                return;
            };
            s.note_domains(&email, true);
            let row = UserRow {
                id,
                hash,
                privileges: privs.unwrap_or_default(),
                quota: quota.filter(|q| &**q != "0"),
            };
            s.users.insert(email, row);
        })?;
        let ps = if db.schema.aliases_permitted_senders {
            "permitted_senders"
        } else {
            "NULL"
        };
        let sql = format!("SELECT source, destination, {ps} FROM aliases");
        each_row(db, &sql, |[source, destination, permitted_senders]| {
            let (Some(source), Some(destination)) = (source, destination) else {
                s.skipped += 1;
                return;
            };
            s.note_domains(&source, true);
            let row = AliasRow {
                destination,
                permitted_senders,
            };
            s.aliases.insert(source, row);
        })?;
        if db.schema.auto_aliases {
            let sql = "SELECT source, destination FROM auto_aliases";
            each_row(db, sql, |[source, destination]| {
                let (Some(source), Some(destination)) = (source, destination) else {
                    s.skipped += 1;
                    return;
                };
                s.note_domains(&source, false);
                if !destination.is_empty() {
                    s.auto_aliases.insert(source, destination);
                }
            })?;
        }
        if db.schema.app_passwords {
            let sql =
                "SELECT user_id FROM miab_sidecar_user_settings WHERE app_passwords_required<>0";
            each_row(db, sql, |[uid]| {
                if let Some(uid) = uid.and_then(|u| u.parse().ok()) {
                    s.app_required.insert(uid);
                }
            })?;
            let sql = "SELECT id, user_id, hash, scopes FROM miab_sidecar_app_passwords";
            each_row(db, sql, |[id, uid, hash, scopes]| {
                let id = id.and_then(|i| i.parse().ok());
                let uid = uid.and_then(|u| u.parse().ok());
                let (Some(id), Some(user_id), Some(hash), Some(scopes)) = (id, uid, hash, scopes)
                else {
                    s.skipped += 1;
                    return;
                };
                let row = AppRow {
                    id,
                    user_id,
                    scopes,
                };
                s.app_passwords.insert(hash, row);
            })?;
        }
        tx.commit().map_err(|e| db.err(e))?;
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

fn user_sql(db: &UserDb) -> String {
    format!(
        "SELECT id, email, password, {}, {} FROM users",
        if db.schema.users_privileges {
            "privileges"
        } else {
            "''"
        },
        if db.schema.users_quota {
            "quota"
        } else {
            "'0'"
        },
    )
}

/// Calls `f` with every row of `sql`, each column as text or `None`.
fn each_row<const N: usize>(
    db: &UserDb,
    sql: &str,
    mut f: impl FnMut([Option<Box<str>>; N]),
) -> Result<()> {
    let mut stmt = db.conn.prepare(sql).map_err(|e| db.err(e))?;
    let mut q = stmt.query([]).map_err(|e| db.err(e))?;
    while let Some(r) = q.next().map_err(|e| db.err(e))? {
        f(std::array::from_fn(|i| r.get_ref(i).ok().and_then(text)))
    }
    Ok(())
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

/// MIAB's `users.sqlite`, read-only.
///
/// The version is the file's identity (a file replaced by a rename is a new inode) and, in
/// rollback-journal mode (the only one MIAB uses), the header's file change counter, which
/// SQLite bumps on every commit: one `stat` and one 10-byte `pread`. In WAL mode the counter
/// is not kept, so `PRAGMA data_version` on a probe connection stands in.
#[derive(Debug)]
pub struct SqliteSource {
    path: PathBuf,
    busy_timeout: Duration,
    probe: Mutex<Probe>,
}

#[derive(Debug)]
struct Probe {
    file: std::fs::File,
    id: (u64, u64),
    wal: Option<rusqlite::Connection>,
}

fn file_id(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

impl SqliteSource {
    /// Checks that `path` is a user DB (so a wrong path fails at start-up).
    pub fn open(path: impl AsRef<Path>, busy_timeout: Duration) -> Result<SqliteSource> {
        let path = path.as_ref().to_owned();
        UserDb::open_with_timeout(&path, crate::Access::ReadOnly, busy_timeout)?;
        let file = std::fs::File::open(&path).map_err(|_| Error::Missing(path.clone()))?;
        let id = file
            .metadata()
            .map(|m| file_id(&m))
            .map_err(|_| Error::Missing(path.clone()))?;
        Ok(SqliteSource {
            probe: Mutex::new(Probe {
                file,
                id,
                wal: None,
            }),
            path,
            busy_timeout,
        })
    }

    /// The DB file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Source for SqliteSource {
    fn version(&self) -> Result<Version> {
        use std::os::unix::fs::FileExt;
        let mut p = self
            .probe
            .lock()
            .map_err(|_| Error::Internal("user DB probe lock poisoned".into()))?;
        // A missing path (mid-restore) keeps the open file: its data is still what it was.
        if let Ok(m) = std::fs::metadata(&self.path)
            && file_id(&m) != p.id
            && let Ok(file) = std::fs::File::open(&self.path)
        {
            p.id = file.metadata().map_or((0, 0), |m| file_id(&m));
            p.file = file;
            p.wal = None;
        }
        let mut h = [0u8; 10];
        p.file
            .read_exact_at(&mut h, 18)
            .map_err(|e| Error::Internal(format!("{}: header: {e}", self.path.display())))?;
        let (dev, ino) = p.id;
        // Bytes 18 and 19: file format write/read versions, 2 for WAL.
        if h[0] == 1 && h[1] == 1 {
            let counter = u32::from_be_bytes([h[6], h[7], h[8], h[9]]);
            return Ok(Version([dev, ino, 1, counter.into()]));
        }
        let conn = match p.wal.take() {
            Some(c) => c,
            None => {
                UserDb::open_with_timeout(&self.path, crate::Access::ReadOnly, self.busy_timeout)?
                    .conn
            }
        };
        let dv: i64 = p
            .wal
            .insert(conn)
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(|e| Error::sqlite(&self.path, e))?;
        Ok(Version([dev, ino, 2, dv.cast_unsigned()]))
    }

    fn load(&self) -> Result<Snapshot> {
        // The version is taken first: a commit that lands during the read makes the next
        // version differ, so at worst the snapshot is read again, never served stale.
        let version = self.version()?;
        let db = UserDb::open_with_timeout(&self.path, crate::Access::ReadOnly, self.busy_timeout)?;
        Ok(Snapshot::read(&db)?.with_version(version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BoxEnv, Password};

    /// A box with the shapes MIAB's maps care about.
    fn sample() -> (tempfile::TempDir, UserDb, BoxEnv) {
        let (dir, mut db, env) = crate::one_user_box();
        let pw = Password::new("12345678");
        db.add_user("other@example.com", &pw, "", "0", &env)
            .unwrap();
        db.add_user("x@ext.example", &pw, "", "0", &env).unwrap();
        for (src, dst, ps) in [
            ("team@example.com", "me@example.com,x@ext.example", ""),
            ("@catch.example", "me@example.com", ""),
            ("@alias.example", "@example.com", ""),
            ("news@example.com", "", "me@example.com"),
            (
                "sales@example.com",
                "other@example.com",
                "me@example.com,other@example.com",
            ),
        ] {
            db.add_alias(src, dst, ps, false, &env).unwrap();
        }
        (dir, db, env)
    }

    const PROBES: &[&str] = &[
        "me@example.com",
        "ME+tag@Example.COM",
        "me+tag@example.com",
        "team@example.com",
        "team+t@example.com",
        "news@example.com",
        "sales@example.com",
        "anyone@catch.example",
        "any+x@catch.example",
        "who@alias.example",
        "nobody@example.com",
        "postmaster@example.com",
        "abuse@example.com",
        "@example.com",
        "@catch.example",
        "example.com",
        "EXAMPLE.com",
        "catch.example",
        ".example.com",
        "ext.example",
        "box.example.com",
        "nope.example",
        "",
        "@",
        "a@b@example.com",
        "me@example.com.",
        "%@example.com",
        "_xample.com",
    ];

    /// The snapshot answers every map exactly as the SQL queries do.
    #[test]
    fn snapshot_answers_as_the_sql_maps() {
        let (_dir, db, _env) = sample();
        let s = Snapshot::read(&db).unwrap();
        for delims in [
            Delimiters::default(),
            Delimiters::new("+-"),
            Delimiters::new(""),
        ] {
            for &k in PROBES {
                assert_eq!(
                    s.is_local_domain(k),
                    db.is_local_domain(k).unwrap(),
                    "{k:?}"
                );
                assert_eq!(
                    s.is_mailbox(k, &delims),
                    db.is_mailbox(k, &delims).unwrap(),
                    "{k:?}"
                );
                assert_eq!(
                    s.resolve_alias(k, &delims),
                    db.resolve_alias(k, &delims).unwrap(),
                    "{k:?}"
                );
                assert_eq!(
                    s.sender_owners(k, &delims),
                    db.sender_owners(k, &delims).unwrap(),
                    "{k:?}"
                );
                for login in ["me@example.com", "other@example.com", "ME@example.com"] {
                    assert_eq!(
                        s.may_send_as(login, k, &delims),
                        db.may_send_as(login, k, &delims).unwrap(),
                        "{login} {k:?}"
                    );
                }
            }
        }
        let domains = db.mail_domains().unwrap();
        for d in [
            "example.com",
            "ext.example",
            "catch.example",
            "nope.example",
            "EXAMPLE.COM",
        ] {
            assert_eq!(s.is_mail_domain(d), domains.contains(d), "{d}");
        }
        let me = s.user("me@example.com").unwrap();
        assert_eq!(Some(me), db.user("me@example.com").unwrap());
        assert!(s.user("ME@example.com").is_none());
    }

    /// Rows no validator would let in (case, `+` and `@` in odd places, empty destinations,
    /// permitted senders set and unset, auto-aliases), written with raw SQL, and keys made of
    /// the same pieces: the snapshot and the SQL maps agree on every one.
    #[test]
    fn snapshot_matches_sql_on_odd_rows_and_keys() {
        let (_dir, db, _env) = crate::one_user_box();
        let locals = ["a", "B", "a+x", "postmaster", "", "c-d", "ä"];
        let domains = [
            "x.example",
            "X.example",
            "y.example",
            "a@x.example",
            "ä.example",
        ];
        let mut seed = 7u64;
        let mut pick = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        let addr = |pick: &mut dyn FnMut(usize) -> usize| {
            format!(
                "{}@{}",
                locals[pick(locals.len())],
                domains[pick(domains.len())]
            )
        };
        for i in 0..40 {
            let src = addr(&mut pick);
            let dst = match pick(4) {
                0 => String::new(),
                1 => format!("@{}", domains[pick(domains.len())]),
                _ => format!("{},{}", addr(&mut pick), addr(&mut pick)),
            };
            let ps = match pick(3) {
                0 => None,
                1 => Some(String::new()),
                _ => Some(addr(&mut pick)),
            };
            let table = ["users", "aliases", "auto_aliases"][i % 3];
            let sql = if table == "users" {
                format!("INSERT OR IGNORE INTO users (email, password) VALUES ('{src}', 'x')")
            } else {
                format!(
                    "INSERT OR IGNORE INTO {table} (source, destination, permitted_senders) VALUES ('{src}', '{dst}', {})",
                    ps.map_or("NULL".into(), |p| format!("'{p}'"))
                )
            };
            db.conn.execute_batch(&sql).unwrap();
        }
        let s = Snapshot::read(&db).unwrap();
        let delims = Delimiters::default();
        for _ in 0..400 {
            let k = match pick(4) {
                0 => domains[pick(domains.len())].to_owned(),
                1 => format!("@{}", domains[pick(domains.len())]),
                _ => addr(&mut pick),
            };
            let k = if pick(2) == 0 { k.to_uppercase() } else { k };
            assert_eq!(
                s.is_local_domain(&k),
                db.is_local_domain(&k).unwrap(),
                "{k:?}"
            );
            assert_eq!(
                s.is_mailbox(&k, &delims),
                db.is_mailbox(&k, &delims).unwrap(),
                "{k:?}"
            );
            assert_eq!(
                s.resolve_alias(&k, &delims),
                db.resolve_alias(&k, &delims).unwrap(),
                "{k:?}"
            );
            assert_eq!(
                s.sender_owners(&k, &delims),
                db.sender_owners(&k, &delims).unwrap(),
                "{k:?}"
            );
        }
        for d in domains {
            assert_eq!(
                s.is_mail_domain(d),
                db.mail_domains().unwrap().contains(d),
                "{d}"
            );
        }
    }

    #[test]
    fn app_passwords_and_the_required_flag() {
        let (_dir, mut db, _env) = sample();
        let (row, secret) = db
            .add_app_password("me@example.com", "phone", &["imap"], 1)
            .unwrap();
        db.set_app_passwords_required("me@example.com", true)
            .unwrap();
        let s = Snapshot::read(&db).unwrap();
        let me = s.user("me@example.com").unwrap().id;
        let digest = crate::app_password::candidate_digest(secret.expose()).unwrap();
        let m = s.app_password(me, &digest).unwrap();
        assert_eq!(Some(m), db.app_password_match(me, &digest).unwrap());
        assert_eq!(m_id(&s, me, &digest), Some(row));
        assert!(s.app_password(me + 1, &digest).is_none(), "another user's");
        assert!(s.app_passwords_required(me));
        assert!(!s.app_passwords_required(me + 1));
    }

    fn m_id(s: &Snapshot, uid: i64, digest: &str) -> Option<i64> {
        s.app_password(uid, digest).map(|m| m.id)
    }

    #[test]
    fn version_moves_with_every_commit_and_with_a_replaced_file() {
        let (dir, mut db, env) = sample();
        let path = dir.path().join("users.sqlite");
        let src = SqliteSource::open(&path, Duration::from_secs(1)).unwrap();
        let v1 = src.version().unwrap();
        assert_eq!(src.version().unwrap(), v1);
        db.add_alias("new@example.com", "me@example.com", "", false, &env)
            .unwrap();
        let v2 = src.version().unwrap();
        assert_ne!(v1, v2);
        let snap = src.load().unwrap();
        assert_eq!(snap.version(), Some(v2));
        assert!(
            snap.resolve_alias("new@example.com", &Delimiters::default())
                .is_some()
        );
        let copy = dir.path().join("copy.sqlite");
        std::fs::copy(&path, &copy).unwrap();
        std::fs::rename(&copy, &path).unwrap();
        assert_ne!(src.version().unwrap(), v2, "a new inode is a new version");
    }
}
