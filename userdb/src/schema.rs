//! MIAB's schema, detection of older schema generations, and our own migrations.
//!
//! A fresh DB gets exactly the four statements of MIAB's `setup/mail-users.sh`, one by one, so
//! `sqlite_master.sql` is byte-for-byte what MIAB creates. Older boxes may lack columns or tables
//! that later MIAB migrations added (4, 9, 13, 14, 15); [`Schema`] records what is there so
//! queries select only existing columns. Our own tables are named `miab_sidecar_*` and versioned
//! by our own counter; MIAB's tables are never altered.

use rusqlite::Connection;

/// `CREATE TABLE` statements exactly as MIAB's `setup/mail-users.sh` runs them (v73+).
pub const MIAB_FRESH_SCHEMA: [&str; 4] = [
    "CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, email TEXT NOT NULL UNIQUE, password TEXT NOT NULL, extra, privileges TEXT NOT NULL DEFAULT '', quota TEXT NOT NULL DEFAULT '0')",
    "CREATE TABLE aliases (id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL UNIQUE, destination TEXT NOT NULL, permitted_senders TEXT)",
    "CREATE TABLE mfa (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id INTEGER NOT NULL, type TEXT NOT NULL, secret TEXT NOT NULL, mru_token TEXT, label TEXT, FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE)",
    "CREATE TABLE auto_aliases (id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL UNIQUE, destination TEXT NOT NULL, permitted_senders TEXT)",
];

/// The counter table for our own additions. Created only when a migration needs it, so a fresh
/// DB stays exactly MIAB's until then.
const COUNTER_TABLE: &str = "miab_sidecar_schema";

/// Our own migrations, applied in order on a read-write open. Each must create or change only
/// `miab_sidecar_*` objects. Index + 1 is the version it brings the DB to.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: app passwords (see `app_password`). Keyed by `users.id`, which AUTOINCREMENT never
    // reuses, so a user removed by MIAB and added again does not get old app passwords back.
    "CREATE TABLE miab_sidecar_app_passwords (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id INTEGER NOT NULL, label TEXT NOT NULL, scopes TEXT NOT NULL DEFAULT '', hash TEXT NOT NULL UNIQUE, created_at INTEGER NOT NULL);
     CREATE INDEX miab_sidecar_app_passwords_user ON miab_sidecar_app_passwords (user_id);
     CREATE TABLE miab_sidecar_user_settings (user_id INTEGER PRIMARY KEY, app_passwords_required INTEGER NOT NULL DEFAULT 0);",
    // 2: suspension (see `suspend`): a login whose password and app passwords stop working
    // until it is let in again. NULL: not suspended.
    "ALTER TABLE miab_sidecar_user_settings ADD COLUMN suspended_at INTEGER;
     ALTER TABLE miab_sidecar_user_settings ADD COLUMN suspended_reason TEXT;",
];

/// Which optional parts of MIAB's schema a DB has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schema {
    /// `users.privileges` (MIAB migration 4).
    pub users_privileges: bool,
    /// `users.quota` (MIAB migration 15).
    pub users_quota: bool,
    /// `aliases.permitted_senders` (MIAB migration 9).
    pub aliases_permitted_senders: bool,
    /// The `mfa` table (MIAB migration 13).
    pub mfa: bool,
    /// The `auto_aliases` table (MIAB migration 14).
    pub auto_aliases: bool,
    /// Our app password tables (created on first use, never by merely opening the DB).
    pub app_passwords: bool,
    /// Our suspension columns (migration 2).
    pub suspension: bool,
    /// SQLite's `schema_version`, to notice when someone (MIAB's migrate.py) changes the schema.
    pub cookie: i64,
}

/// Why a file is not a usable user DB.
#[derive(Debug)]
pub(crate) enum DetectError {
    Sqlite(rusqlite::Error),
    Missing(String),
}

impl From<rusqlite::Error> for DetectError {
    fn from(e: rusqlite::Error) -> Self {
        DetectError::Sqlite(e)
    }
}

fn columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info(?1)")?;
    let rows = stmt.query_map([table], |r| r.get::<_, String>(0))?;
    rows.collect()
}

impl Schema {
    /// Inspects `conn`. Requires at least the 2013 schema: `users(email, password)` and
    /// `aliases(source, destination)`.
    pub(crate) fn detect(conn: &Connection) -> Result<Schema, DetectError> {
        let cookie: i64 = conn.query_row("PRAGMA schema_version", [], |r| r.get(0))?;
        let users = columns(conn, "users")?;
        let aliases = columns(conn, "aliases")?;
        let has = |cols: &[String], c: &str| cols.iter().any(|x| x == c);
        for (table, cols, need) in [
            ("users", &users, ["email", "password"]),
            ("aliases", &aliases, ["source", "destination"]),
        ] {
            if cols.is_empty() {
                return Err(DetectError::Missing(format!("no `{table}` table")));
            }
            for c in need {
                if !has(cols, c) {
                    return Err(DetectError::Missing(format!("no `{table}.{c}` column")));
                }
            }
        }
        let auto = columns(conn, "auto_aliases")?;
        let mfa = columns(conn, "mfa")?;
        let settings = columns(conn, "miab_sidecar_user_settings")?;
        Ok(Schema {
            users_privileges: has(&users, "privileges"),
            users_quota: has(&users, "quota"),
            aliases_permitted_senders: has(&aliases, "permitted_senders"),
            mfa: has(&mfa, "user_id"),
            auto_aliases: has(&auto, "source") && has(&auto, "destination"),
            app_passwords: has(&columns(conn, "miab_sidecar_app_passwords")?, "hash")
                && has(&settings, "user_id"),
            suspension: has(&settings, "suspended_at"),
            cookie,
        })
    }

    /// The schema of a DB made by today's MIAB.
    pub fn current() -> Schema {
        Schema {
            users_privileges: true,
            users_quota: true,
            aliases_permitted_senders: true,
            mfa: true,
            auto_aliases: true,
            app_passwords: false,
            suspension: false,
            cookie: 0,
        }
    }
}

/// Creates MIAB's tables in an empty DB, in one transaction.
pub(crate) fn create_fresh(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for stmt in MIAB_FRESH_SCHEMA {
        tx.execute(stmt, [])?;
    }
    tx.commit()
}

/// Our schema version (0 when the counter table does not exist).
pub(crate) fn sidecar_version(conn: &Connection) -> rusqlite::Result<u32> {
    let exists: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type='table' AND name=?1)",
        [COUNTER_TABLE],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(0);
    }
    conn.query_row(
        &format!("SELECT max(version) FROM {COUNTER_TABLE}"),
        [],
        |r| r.get::<_, Option<u32>>(0),
    )
    .map(Option::unwrap_or_default)
}

/// Applies `migrations` past the DB's version, each in its own short transaction.
pub(crate) fn migrate(conn: &mut Connection, migrations: &[&str]) -> rusqlite::Result<u32> {
    let mut version = sidecar_version(conn)?;
    while (version as usize) < migrations.len() {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Re-read under the write lock: another process may have migrated meanwhile.
        version = sidecar_version(&tx)?;
        if let Some(sql) = migrations.get(version as usize) {
            tx.execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS {COUNTER_TABLE} (version INTEGER NOT NULL, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP);"
            ))?;
            tx.execute_batch(sql)?;
            version += 1;
            tx.execute(
                &format!("INSERT INTO {COUNTER_TABLE} (version) VALUES (?1)"),
                [version],
            )?;
        }
        tx.commit()?;
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_in_order() {
        let mut conn = Connection::open_in_memory().unwrap();
        create_fresh(&mut conn).unwrap();
        let migs = [
            "CREATE TABLE miab_sidecar_a (x INTEGER)",
            "CREATE TABLE miab_sidecar_b (y INTEGER)",
        ];
        assert_eq!(sidecar_version(&conn).unwrap(), 0);
        assert_eq!(migrate(&mut conn, &migs[..1]).unwrap(), 1);
        assert_eq!(migrate(&mut conn, &migs).unwrap(), 2);
        assert_eq!(migrate(&mut conn, &migs).unwrap(), 2);
        let n: i64 = conn
            .query_row("SELECT count(*) FROM miab_sidecar_schema", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn failed_migration_leaves_nothing() {
        let mut conn = Connection::open_in_memory().unwrap();
        create_fresh(&mut conn).unwrap();
        let migs = ["CREATE TABLE miab_sidecar_a (x INTEGER); SYNTAX ERROR"];
        assert!(migrate(&mut conn, &migs).is_err());
        assert_eq!(sidecar_version(&conn).unwrap(), 0);
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name LIKE 'miab_sidecar%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn our_migrations_add_only_our_tables() {
        let mut conn = Connection::open_in_memory().unwrap();
        create_fresh(&mut conn).unwrap();
        assert!(!Schema::detect(&conn).unwrap().app_passwords);
        let theirs = |conn: &Connection| -> Vec<(String, Option<String>)> {
            conn.prepare("SELECT name, sql FROM sqlite_master WHERE name NOT LIKE '%miab_sidecar%' ORDER BY name")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let before = theirs(&conn);
        migrate(&mut conn, MIGRATIONS).unwrap();
        let after = theirs(&conn);
        assert_eq!(before, after, "MIAB's tables are untouched");
        assert!(Schema::detect(&conn).unwrap().app_passwords);
    }

    #[test]
    fn detects_generations() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, email TEXT NOT NULL UNIQUE, password TEXT NOT NULL, extra);
             CREATE TABLE aliases (id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL UNIQUE, destination TEXT NOT NULL);",
        )
        .unwrap();
        let s = Schema::detect(&conn).unwrap();
        assert!(!s.users_privileges && !s.users_quota && !s.aliases_permitted_senders);
        assert!(!s.mfa && !s.auto_aliases);
        conn.execute_batch("ALTER TABLE users ADD privileges TEXT NOT NULL DEFAULT ''")
            .unwrap();
        let s2 = Schema::detect(&conn).unwrap();
        assert!(s2.users_privileges);
        assert_ne!(s.cookie, s2.cookie);
    }

    #[test]
    fn refuses_foreign_db() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE users (name TEXT)")
            .unwrap();
        assert!(matches!(
            Schema::detect(&conn),
            Err(DetectError::Missing(_))
        ));
        let empty = Connection::open_in_memory().unwrap();
        assert!(matches!(
            Schema::detect(&empty),
            Err(DetectError::Missing(_))
        ));
    }
}
