//! Opening the DB and the read queries every daemon needs, with MIAB's exact semantics.
//!
//! Single-key queries (`*_key`) are MIAB's Postfix `sqlite:` map queries, verbatim apart from
//! columns an older schema lacks. The resolvers on top walk the keys Postfix itself would try
//! against such a map (`user+ext@domain`, `user@domain`, `@domain`) and apply what Postfix then
//! does to the answer, because a socketmap is asked only the full address.

use crate::address;
use crate::address::MAX_DOMAIN_KEY;
use crate::error::{Error, Result};
use crate::schema::{self, DetectError, Schema};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a reader or writer waits for another connection's lock before giving up.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

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
pub fn parse_privs(value: &str) -> Vec<String> {
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

    /// SQLite's `PRAGMA data_version`: it moves when another connection commits (how a
    /// reader sees a change in WAL mode, where the header's change counter is not kept).
    pub fn data_version(&self) -> Result<i64> {
        self.conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))
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

    // ----- records -----

    /// The users with MIAB's columns, whatever the schema generation has of them.
    pub(crate) fn user_select(&self) -> String {
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
