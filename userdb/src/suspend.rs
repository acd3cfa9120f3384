//! Suspension: a login whose password and app passwords stop working until an administrator
//! lets it in again, for an account that is sending spam. The user, its mail, its aliases and
//! its password hash are untouched, so letting it in again restores exactly what was there.
//!
//! Kept in our own `miab_sidecar_user_settings` table, keyed by `users.id` (which MIAB never
//! reuses): a user removed and added again is not suspended. miab-authd refuses a suspended
//! login on both its sockets (SMTP AUTH and Dovecot's checkpassword), and miab-policyd refuses
//! mail from a session that logged in before the suspension.

use crate::admin::Outcome;
use crate::db::UserDb;
use crate::error::{Result, invalid};
use rusqlite::params;

/// Longest reason kept.
pub const MAX_REASON: usize = 200;

/// One suspended login, as listed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Suspended {
    pub email: String,
    /// Unix seconds.
    pub since: i64,
    pub reason: String,
}

impl UserDb {
    /// Suspends `email` (again, if it already is: the time and reason are replaced).
    pub fn suspend(&mut self, email: &str, reason: &str, now: i64) -> Result<Outcome> {
        let uid = self.user_id(email)?;
        if reason.chars().any(char::is_control) {
            return invalid("The reason must be one line.");
        }
        let reason: String = reason.chars().take(MAX_REASON).collect();
        self.ensure_own_tables()?;
        self.conn
            .execute(
                "INSERT INTO miab_sidecar_user_settings (user_id, suspended_at, suspended_reason) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_id) DO UPDATE SET suspended_at=excluded.suspended_at, suspended_reason=excluded.suspended_reason",
                params![uid, now, reason],
            )
            .map_err(|e| self.err(e))?;
        Ok(Outcome::plain("OK"))
    }

    /// Lets `email` log in again. An error when it was not suspended, so a typo is noticed.
    pub fn unsuspend(&mut self, email: &str) -> Result<Outcome> {
        let uid = self.user_id(email)?;
        if !self.schema.suspension {
            return invalid("That user is not suspended.");
        }
        let n = self
            .conn
            .execute(
                "UPDATE miab_sidecar_user_settings SET suspended_at=NULL, suspended_reason=NULL
                 WHERE user_id=?1 AND suspended_at IS NOT NULL",
                [uid],
            )
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return invalid("That user is not suspended.");
        }
        Ok(Outcome::plain("OK"))
    }

    /// Every suspended login, by address.
    pub fn suspended(&self) -> Result<Vec<Suspended>> {
        if !self.schema.suspension {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT u.email, s.suspended_at, coalesce(s.suspended_reason, '')
                 FROM miab_sidecar_user_settings s JOIN users u ON u.id = s.user_id
                 WHERE s.suspended_at IS NOT NULL ORDER BY u.email",
            )
            .map_err(|e| self.err(e))?;
        stmt.query_map([], |r| {
            Ok(Suspended {
                email: r.get(0)?,
                since: r.get(1)?,
                reason: r.get(2)?,
            })
        })
        .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
        .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use crate::rows::RowSink;
    use crate::{Access, BoxEnv, Password, UserDb};

    /// The suspended ids the read model is given.
    #[derive(Default)]
    struct Suspended(Vec<i64>);

    impl RowSink for Suspended {
        fn sizes(&mut self, _: usize, _: usize) {}
        fn user(&mut self, _: [Option<Box<str>>; 5]) {}
        fn alias(&mut self, _: [Option<Box<str>>; 3]) {}
        fn auto_alias(&mut self, _: [Option<Box<str>>; 2]) {}
        fn app_passwords_required(&mut self, _: [Option<Box<str>>; 1]) {}
        fn suspended(&mut self, [uid]: [Option<Box<str>>; 1]) {
            self.0.extend(uid.and_then(|u| u.parse::<i64>().ok()));
        }
        fn app_password(&mut self, _: [Option<Box<str>>; 4]) {}
    }

    fn read_suspended(db: &UserDb) -> Vec<i64> {
        let mut s = Suspended::default();
        db.read_rows(&mut s).unwrap();
        s.0
    }

    #[test]
    fn suspend_and_let_in_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.sqlite");
        let mut db = UserDb::create(&path).unwrap();
        let env = BoxEnv {
            primary_hostname: "box.example.com".into(),
        };
        db.add_user(
            "a@example.com",
            &Password::new("pw-pw-pw-pw"),
            "",
            "0",
            &env,
        )
        .unwrap();
        assert!(db.suspended().unwrap().is_empty());
        assert!(db.unsuspend("a@example.com").is_err());
        assert!(db.suspend("nobody@example.com", "x", 1).is_err());
        assert!(db.suspend("a@example.com", "two\nlines", 1).is_err());
        db.suspend("a@example.com", "spam", 1_800_000_000).unwrap();
        let list = db.suspended().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(
            (list[0].since, list[0].reason.as_str()),
            (1_800_000_000, "spam")
        );
        let id = db.user("a@example.com").unwrap().unwrap().id;
        let ro = UserDb::open(&path, Access::ReadOnly).unwrap();
        assert_eq!(read_suspended(&ro), [id]);
        db.unsuspend("a@example.com").unwrap();
        assert!(db.suspended().unwrap().is_empty());
        let ro = UserDb::open(&path, Access::ReadOnly).unwrap();
        assert!(read_suspended(&ro).is_empty());
        assert!(db.unsuspend("a@example.com").is_err());
    }
}
