//! Opening the DB and the read queries every daemon needs, with MIAB's exact semantics.
//!
//! Single-key queries (`*_key`) are MIAB's Postfix `sqlite:` map queries, verbatim apart from
//! columns an older schema lacks. The resolvers on top walk the keys Postfix itself would try
//! against such a map (`user+ext@domain`, `user@domain`, `@domain`) and apply what Postfix then
//! does to the answer, because a socketmap is asked only the full address.

use crate::address::{self, Delimiters};
use crate::error::{Error, Result};
use crate::schema::{self, DetectError, Schema};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a reader or writer waits for another connection's lock before giving up.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest domain key worth asking about (RFC 1035's 255 octets); longer keys are not found.
const MAX_DOMAIN_KEY: usize = 255;

/// Read-only for daemons, read-write for the admin CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `SQLITE_OPEN_READ_ONLY`: daemons never write MIAB's file.
    ReadOnly,
    /// Read-write, never creating the file.
    ReadWrite,
}

/// One connection to a MIAB `users.sqlite`.
pub struct UserDb {
    pub(crate) conn: Connection,
    pub(crate) schema: Schema,
    pub(crate) path: PathBuf,
}

impl fmt::Debug for UserDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserDb")
            .field("path", &self.path)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// A `users` row. The hash is not shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// `users.id`.
    pub id: i64,
    /// The login and mailbox address, lowercase.
    pub email: String,
    /// Dovecot-format hash, e.g. `{SHA512-CRYPT}$6$...`.
    pub password_hash: String,
    /// Privileges (`admin` is the only one with a meaning).
    pub privileges: Vec<String>,
    /// Quota string: `0` (unlimited), or digits with an optional `M`/`G`.
    pub quota: String,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("password_hash", &"<redacted>")
            .field("privileges", &self.privileges)
            .field("quota", &self.quota)
            .finish()
    }
}

impl User {
    /// True if the user has the `admin` privilege.
    pub fn is_admin(&self) -> bool {
        self.privileges.iter().any(|p| p == "admin")
    }
}

/// An `aliases` or `auto_aliases` row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Alias {
    /// `source`: `local@domain` or `@domain`.
    pub source: String,
    /// Comma-joined destinations, a single `@domain`, or empty (send-only alias).
    pub destination: String,
    /// Comma-joined logins, or `None` (the destinations own the address).
    pub permitted_senders: Option<String>,
    /// True for rows of `auto_aliases`.
    pub auto: bool,
}

/// An `mfa` row, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Mfa {
    /// `mfa.id`.
    pub id: i64,
    /// `totp`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Free text chosen by the user.
    pub label: Option<String>,
}

/// `privileges` column text to a list (MIAB's `parse_privs`).
pub(crate) fn parse_privs(value: &str) -> Vec<String> {
    value
        .split('\n')
        .filter(|p| !p.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// The DB path under a storage root: `STORAGE_ROOT/mail/users.sqlite`.
pub fn db_path(storage_root: &Path) -> PathBuf {
    storage_root.join("mail").join("users.sqlite")
}

fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The keys Postfix tries for one address against an `sqlite:` table, in order.
struct Keys {
    full: String,
    /// The key with the extension removed, and the extension as the client wrote it.
    stripped: Option<(String, String)>,
    at_domain: Option<String>,
    /// The original local part (case kept), for `@domain` answers.
    local: String,
}

fn keys(address: &str, delims: &Delimiters) -> Keys {
    let (local, domain) = match address.rfind('@') {
        Some(i) => (&address[..i], Some(&address[i..])),
        None => (address, None),
    };
    let stripped = address::split_extension(local, delims).map(|(base, ext)| {
        let key = address::fold(&format!("{base}{}", domain.unwrap_or("")));
        (key, ext.to_owned())
    });
    let at_domain = domain.filter(|_| !local.is_empty()).map(address::fold);
    Keys {
        full: address::fold(address),
        stripped,
        at_domain,
        local: local.to_owned(),
    }
}

/// Splits a map answer into addresses as Postfix does (commas and white space).
fn split_list(value: &str) -> Vec<String> {
    value
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// What Postfix's `mail_addr_map()` makes of a virtual alias answer: `@domain` gets the original
/// local part (without an unmatched extension), then the extension goes onto every address.
fn map_alias_answer(value: &str, local: &str, ext: Option<&str>) -> Vec<String> {
    let value = if value.starts_with('@') {
        let base = match ext {
            Some(e) => &local[..local.len() - e.len()],
            None => local,
        };
        format!("{base}{value}")
    } else {
        value.to_owned()
    };
    let mut out = split_list(&value);
    if let Some(ext) = ext {
        for a in &mut out {
            match a.rfind('@') {
                Some(i) => a.insert_str(i, ext),
                None => a.push_str(ext),
            }
        }
    }
    out
}

impl UserDb {
    /// Opens an existing DB. A missing file is [`Error::Missing`]; a file without MIAB's
    /// tables is [`Error::NotUserDb`].
    pub fn open(path: impl AsRef<Path>, access: Access) -> Result<UserDb> {
        Self::open_with_timeout(path, access, DEFAULT_BUSY_TIMEOUT)
    }

    /// [`UserDb::open`] with a chosen busy timeout.
    pub fn open_with_timeout(
        path: impl AsRef<Path>,
        access: Access,
        busy_timeout: Duration,
    ) -> Result<UserDb> {
        let path = path.as_ref().to_owned();
        if !path.is_file() {
            return Err(Error::Missing(path));
        }
        let flags = match access {
            Access::ReadOnly => OpenFlags::SQLITE_OPEN_READ_ONLY,
            Access::ReadWrite => OpenFlags::SQLITE_OPEN_READ_WRITE,
        } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn =
            Connection::open_with_flags(&path, flags).map_err(|e| Error::sqlite(&path, e))?;
        conn.busy_timeout(busy_timeout)
            .map_err(|e| Error::sqlite(&path, e))?;
        let schema = Schema::detect(&conn).map_err(|e| detect_error(&path, e))?;
        // Our own tables are created when first needed (`ensure_own_tables`), so opening a
        // box's DB never changes it.
        Ok(UserDb { conn, schema, path })
    }

    /// Creates a new DB with exactly MIAB's fresh schema, and the directory it lives in.
    /// Refuses to touch a file that already exists.
    pub fn create(path: impl AsRef<Path>) -> Result<UserDb> {
        let path = path.as_ref().to_owned();
        if path.exists() {
            return Err(Error::Invalid(format!(
                "{} already exists; not overwriting it",
                path.display()
            )));
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Invalid(format!("{}: {e}", dir.display())))?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn =
            Connection::open_with_flags(&path, flags).map_err(|e| Error::sqlite(&path, e))?;
        conn.busy_timeout(DEFAULT_BUSY_TIMEOUT)
            .map_err(|e| Error::sqlite(&path, e))?;
        schema::create_fresh(&mut conn).map_err(|e| Error::sqlite(&path, e))?;
        drop(conn);
        Self::open(path, Access::ReadWrite)
    }

    /// Applies our own migrations (`miab_sidecar_*` tables) if they are not there yet.
    pub(crate) fn ensure_own_tables(&mut self) -> Result<()> {
        schema::migrate(&mut self.conn, schema::MIGRATIONS).map_err(|e| self.err(e))?;
        self.refresh_schema()
    }

    /// The file this handle reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema generation found when opening (or at the last [`UserDb::refresh_schema`]).
    pub fn schema(&self) -> Schema {
        self.schema
    }

    /// Re-detects the schema if another program changed it (MIAB's migrations). Cheap: one
    /// pragma read when nothing changed.
    pub fn refresh_schema(&mut self) -> Result<()> {
        let cookie: i64 = self
            .conn
            .query_row("PRAGMA schema_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if cookie != self.schema.cookie {
            self.schema = Schema::detect(&self.conn).map_err(|e| detect_error(&self.path, e))?;
        }
        Ok(())
    }

    pub(crate) fn err(&self, e: rusqlite::Error) -> Error {
        Error::sqlite(&self.path, e)
    }

    // ----- single keys: MIAB's map queries -----

    /// `virtual-mailbox-domains.cf` for one key: a user, alias or auto-alias in that domain.
    /// SQLite's `LIKE` is ASCII case-insensitive, as in MIAB; `%` and `_` in the key are literal.
    pub fn domain_key(&self, domain: &str) -> Result<bool> {
        // No DNS name is longer, and SQLite refuses LIKE patterns past 50,000 bytes.
        if domain.is_empty() || domain.len() > MAX_DOMAIN_KEY {
            return Ok(false);
        }
        let pat = format!("%@{}", like_escape(domain));
        let mut sql = String::from(
            "SELECT EXISTS (SELECT 1 FROM users WHERE email LIKE ?1 ESCAPE '\\') \
             OR EXISTS (SELECT 1 FROM aliases WHERE source LIKE ?1 ESCAPE '\\')",
        );
        if self.schema.auto_aliases {
            sql.push_str(
                " OR EXISTS (SELECT 1 FROM auto_aliases WHERE source LIKE ?1 ESCAPE '\\')",
            );
        }
        self.conn
            .prepare_cached(&sql)
            .and_then(|mut s| s.query_row([pat], |r| r.get(0)))
            .map_err(|e| self.err(e))
    }

    /// `virtual-mailbox-maps.cf` for one key.
    pub fn mailbox_key(&self, key: &str) -> Result<bool> {
        self.conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM users WHERE email=?1)")
            .and_then(|mut s| s.query_row([key], |r| r.get(0)))
            .map_err(|e| self.err(e))
    }

    /// `virtual-alias-maps.cf` for one key: alias > user (maps to itself) > auto-alias, empty
    /// destinations skipped.
    pub fn alias_key(&self, key: &str) -> Result<Option<String>> {
        let mut sql = String::from(
            "SELECT destination FROM (\
             SELECT destination, 0 AS priority FROM aliases WHERE source=?1 AND destination<>'' \
             UNION SELECT email AS destination, 1 AS priority FROM users WHERE email=?1",
        );
        if self.schema.auto_aliases {
            sql.push_str(
                " UNION SELECT destination, 2 AS priority FROM auto_aliases WHERE source=?1 AND destination<>''",
            );
        }
        sql.push_str(") ORDER BY priority LIMIT 1");
        self.conn
            .prepare_cached(&sql)
            .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
            .map_err(|e| self.err(e))
    }

    /// `sender-login-maps.cf` for one key: an alias's permitted senders, else its destinations
    /// (NULL permitted senders), else the user itself. Auto-aliases are not consulted.
    pub fn sender_key(&self, key: &str) -> Result<Option<String>> {
        let sql = if self.schema.aliases_permitted_senders {
            "SELECT permitted_senders FROM (\
             SELECT permitted_senders, 0 AS priority FROM aliases WHERE source=?1 AND permitted_senders IS NOT NULL \
             UNION SELECT destination AS permitted_senders, 1 AS priority FROM aliases WHERE source=?1 AND permitted_senders IS NULL \
             UNION SELECT email AS permitted_senders, 2 AS priority FROM users WHERE email=?1\
             ) ORDER BY priority LIMIT 1"
        } else {
            "SELECT permitted_senders FROM (\
             SELECT destination AS permitted_senders, 1 AS priority FROM aliases WHERE source=?1 \
             UNION SELECT email AS permitted_senders, 2 AS priority FROM users WHERE email=?1\
             ) ORDER BY priority LIMIT 1"
        };
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
            .map_err(|e| self.err(e))
    }

    // ----- what Postfix reaches through its partial keys -----

    /// Is `domain` one of ours (`virtual_mailbox_domains`)? Case-insensitive. Parent-style keys
    /// (`.example.org`) and bare names are never found.
    pub fn is_local_domain(&self, domain: &str) -> Result<bool> {
        if domain.starts_with('.') || domain.contains('@') {
            return Ok(false);
        }
        self.domain_key(&address::fold(domain))
    }

    /// Is `address` a mailbox (`virtual_mailbox_maps`), trying `user+ext@d`, `user@d`, `@d`?
    pub fn is_mailbox(&self, address: &str, delims: &Delimiters) -> Result<bool> {
        let k = keys(address, delims);
        if k.full.is_empty() {
            return Ok(false);
        }
        if self.mailbox_key(&k.full)? {
            return Ok(true);
        }
        if let Some((key, _)) = &k.stripped
            && self.mailbox_key(key)?
        {
            return Ok(true);
        }
        match &k.at_domain {
            Some(key) => self.mailbox_key(key),
            None => Ok(false),
        }
    }

    /// The addresses `address` is rewritten to (`virtual_alias_maps`), as Postfix computes them
    /// from MIAB's map: the first of `user+ext@d`, `user@d`, `@d` that answers wins; a match
    /// without the extension puts it back on every result; an `@domain` answer keeps the local
    /// part. A user maps to itself. `None` means unlisted.
    pub fn resolve_alias(&self, address: &str, delims: &Delimiters) -> Result<Option<Vec<String>>> {
        let k = keys(address, delims);
        if k.full.is_empty() {
            return Ok(None);
        }
        if let Some(v) = self.alias_key(&k.full)? {
            return Ok(Some(map_alias_answer(&v, &k.local, None)));
        }
        if let Some((key, ext)) = &k.stripped
            && let Some(v) = self.alias_key(key)?
        {
            return Ok(Some(map_alias_answer(&v, &k.local, Some(ext))));
        }
        if let Some(key) = &k.at_domain
            && let Some(v) = self.alias_key(key)?
        {
            return Ok(Some(map_alias_answer(&v, &k.local, None)));
        }
        Ok(None)
    }

    /// The raw owner list of a sender address (`smtpd_sender_login_maps`), trying `user+ext@d`,
    /// `user@d`, `@d`. `None`: nobody owns it. Entries may be addresses that match no login
    /// (an alias's external destinations, a domain alias's `@b`).
    pub fn sender_owners(&self, address: &str, delims: &Delimiters) -> Result<Option<Vec<String>>> {
        let k = keys(address, delims);
        if k.full.is_empty() {
            return Ok(None);
        }
        if let Some(v) = self.sender_key(&k.full)? {
            return Ok(Some(split_list(&v)));
        }
        if let Some((key, _)) = &k.stripped
            && let Some(v) = self.sender_key(key)?
        {
            return Ok(Some(split_list(&v)));
        }
        if let Some(key) = &k.at_domain
            && let Some(v) = self.sender_key(key)?
        {
            return Ok(Some(split_list(&v)));
        }
        Ok(None)
    }

    /// Would `reject_authenticated_sender_login_mismatch` let `login` use `sender`? Postfix
    /// compares logins case-insensitively.
    pub fn may_send_as(&self, login: &str, sender: &str, delims: &Delimiters) -> Result<bool> {
        Ok(self
            .sender_owners(sender, delims)?
            .is_some_and(|owners| owners.iter().any(|o| o.eq_ignore_ascii_case(login))))
    }

    // ----- records -----

    fn user_select(&self) -> String {
        format!(
            "SELECT id, email, password, {}, {} FROM users",
            if self.schema.users_privileges {
                "privileges"
            } else {
                "''"
            },
            if self.schema.users_quota {
                "quota"
            } else {
                "'0'"
            },
        )
    }

    fn row_to_user(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
        Ok(User {
            id: r.get(0)?,
            email: r.get(1)?,
            password_hash: r.get(2)?,
            privileges: parse_privs(&r.get::<_, String>(3)?),
            quota: r.get(4)?,
        })
    }

    /// The user with exactly this login (case-sensitive, as MIAB's queries).
    pub fn user(&self, email: &str) -> Result<Option<User>> {
        let sql = format!("{} WHERE email=?1", self.user_select());
        self.conn
            .prepare_cached(&sql)
            .and_then(|mut s| s.query_row([email], Self::row_to_user).optional())
            .map_err(|e| self.err(e))
    }

    /// Every user, in table order.
    pub fn users(&self) -> Result<Vec<User>> {
        let sql = self.user_select();
        let mut stmt = self.conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], Self::row_to_user)
            .and_then(Iterator::collect);
        rows.map_err(|e| self.err(e))
    }

    /// Every manual alias, then every auto-alias.
    pub fn aliases(&self) -> Result<Vec<Alias>> {
        let ps = if self.schema.aliases_permitted_senders {
            "permitted_senders"
        } else {
            "NULL"
        };
        let mut sql = format!("SELECT source, destination, {ps}, 0 FROM aliases");
        if self.schema.auto_aliases {
            sql.push_str(
                " UNION ALL SELECT source, destination, permitted_senders, 1 FROM auto_aliases",
            );
        }
        let mut stmt = self.conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Alias {
                    source: r.get(0)?,
                    destination: r.get(1)?,
                    permitted_senders: r.get(2)?,
                    auto: r.get::<_, i64>(3)? != 0,
                })
            })
            .and_then(Iterator::collect);
        rows.map_err(|e| self.err(e))
    }

    /// MIAB's `get_mail_domains`: domains of every user and every manual alias (IDNA form).
    pub fn mail_domains(&self) -> Result<std::collections::BTreeSet<String>> {
        self.mail_domains_filtered(|_| true)
    }

    /// [`UserDb::mail_domains`] counting only the aliases `keep` accepts.
    pub fn mail_domains_filtered(
        &self,
        keep: impl Fn(&str) -> bool,
    ) -> Result<std::collections::BTreeSet<String>> {
        let mut out = std::collections::BTreeSet::new();
        for u in self.users()? {
            if let Some(d) = address::domain_of(&u.email) {
                out.insert(d.to_owned());
            }
        }
        for a in self.aliases()? {
            if !a.auto
                && keep(&a.source)
                && let Some(d) = address::domain_of(&a.source)
            {
                out.insert(d.to_owned());
            }
        }
        Ok(out)
    }

    /// MFA entries of a user; MIAB's "User does not exist." if there is no such user.
    pub fn mfa(&self, email: &str) -> Result<Vec<Mfa>> {
        let id = self.user_id(email)?;
        if !self.schema.mfa {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, type, label FROM mfa WHERE user_id=?1")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![id], |r| {
                Ok(Mfa {
                    id: r.get(0)?,
                    kind: r.get(1)?,
                    label: r.get(2)?,
                })
            })
            .and_then(Iterator::collect);
        rows.map_err(|e| self.err(e))
    }

    pub(crate) fn user_id(&self, email: &str) -> Result<i64> {
        self.conn
            .prepare_cached("SELECT id FROM users WHERE email=?1")
            .and_then(|mut s| s.query_row([email], |r| r.get(0)).optional())
            .map_err(|e| self.err(e))?
            .ok_or_else(|| Error::Invalid("User does not exist.".into()))
    }
}

fn detect_error(path: &Path, e: DetectError) -> Error {
    match e {
        DetectError::Sqlite(e) => Error::sqlite(path, e),
        DetectError::Missing(reason) => Error::NotUserDb {
            path: path.to_owned(),
            reason,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_sequence() {
        let d = Delimiters::default();
        let k = keys("Hello+Tag@Example.ORG", &d);
        assert_eq!(k.full, "hello+tag@example.org");
        assert_eq!(
            k.stripped,
            Some(("hello@example.org".into(), "+Tag".into()))
        );
        assert_eq!(k.at_domain.as_deref(), Some("@example.org"));
        let k = keys("@example.org", &d);
        assert!(k.stripped.is_none() && k.at_domain.is_none());
        let k = keys("bare", &d);
        assert!(k.stripped.is_none() && k.at_domain.is_none());
    }

    #[test]
    fn alias_answers_as_postfix_maps_them() {
        assert_eq!(
            map_alias_answer("a@x,b@y", "hello+t", Some("+t")),
            ["a+t@x", "b+t@y"]
        );
        assert_eq!(map_alias_answer("a@x, b@y", "hello", None), ["a@x", "b@y"]);
        assert_eq!(
            map_alias_answer("@b.org", "Random+Tag", None),
            ["Random+Tag@b.org"]
        );
        assert_eq!(map_alias_answer("@b.org", "a+t", Some("+t")), ["a+t@b.org"]);
    }
}
