//! App passwords: generated passwords a user gives to one client each, so a lost phone costs one
//! revocation instead of the main password. Our own tables, created on first use.
//!
//! - Generated here: 20 characters from a 32-symbol alphabet (100 random bits), shown once.
//! - Stored only as SHA-256. The secret is random, so a salted slow hash buys nothing against
//!   guessing, and a plain digest lets a login find its row through an index instead of trying
//!   every stored hash.
//! - A label, optional scopes (`smtp`, `imap`, `pop3`; none means all), creation and last-use
//!   times (Unix seconds), revocation by id.
//! - Per user, a switch that makes app passwords the only way in.
//! - Last use goes to a small file of miab-authd's own (the `state` crate's `UsageLog`), never
//!   to the user DB: the daemons only read that, and a write there can make Postfix's
//!   `sqlite:` maps, which have no busy timeout, fail outright. A listing is given those
//!   times by its caller.

use crate::admin::Outcome;
use crate::db::UserDb;
use crate::error::{Error, Result, invalid};
use crate::password::Password;
use rusqlite::{OptionalExtension, params};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// The services a scope may name.
pub const SCOPES: [&str; 3] = ["smtp", "imap", "pop3"];
/// No 0/o, 1/l: the password is read off a screen and typed.
const ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";
const LEN: usize = 20;
const GROUP: usize = 4;
/// Longest label accepted.
pub const MAX_LABEL: usize = 100;

/// One app password as listed (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AppPassword {
    pub id: i64,
    pub label: String,
    /// Empty: every service.
    pub scopes: Vec<String>,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

/// A match found at login: the row and its scopes as stored (comma-separated, empty for all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppPasswordMatch {
    pub id: i64,
    pub scopes: String,
}

/// The stored digest of `candidate`, if it has the shape of an app password. Dashes and spaces
/// are ignored and case is folded, so `abcd-efgh-…` typed either way matches.
pub fn candidate_digest(candidate: &str) -> Option<String> {
    let norm: String = candidate
        .chars()
        .filter(|c| *c != '-' && *c != ' ')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if norm.len() != LEN || !norm.bytes().all(|b| ALPHABET.contains(&b)) {
        return None;
    }
    Some(
        Sha256::digest(norm.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// A new app password, in groups of four for reading.
fn generate() -> Result<Password> {
    let mut bytes = [0u8; LEN];
    getrandom::fill(&mut bytes).map_err(|e| Error::Random(e.to_string()))?;
    let mut s = String::with_capacity(LEN + LEN / GROUP);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 && i % GROUP == 0 {
            s.push('-');
        }
        // 256 is a multiple of 32: every symbol is equally likely.
        s.push(char::from(ALPHABET[usize::from(b % 32)]));
    }
    Ok(Password::new(s))
}

/// Checks and normalises scopes: known names, no repeats, in `SCOPES` order.
pub fn parse_scopes<S: AsRef<str>>(scopes: &[S]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for s in scopes {
        for part in s
            .as_ref()
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let p = part.to_ascii_lowercase();
            if !SCOPES.contains(&p.as_str()) {
                return invalid(format!(
                    "Unknown scope {part:?}; use {}.",
                    SCOPES.join(", ")
                ));
            }
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out.sort_by_key(|s| SCOPES.iter().position(|x| x == s));
    Ok(out)
}

/// Whether stored `scopes` let the password in to `service` (the SASL service name: Postfix
/// says `smtp`, Dovecot `imap`, `pop3` or `submission`).
pub fn scope_allows(scopes: &str, service: &str) -> bool {
    let service = match service {
        "submission" => "smtp",
        s => s,
    };
    scopes.is_empty() || scopes.split(',').any(|s| s == service)
}

fn check_label(label: &str) -> Result<&str> {
    let label = label.trim();
    if label.is_empty() {
        return invalid("An app password needs a label, e.g. the device it is for.");
    }
    if label.chars().count() > MAX_LABEL || label.chars().any(char::is_control) {
        return invalid(format!(
            "The label must be at most {MAX_LABEL} characters, with no control characters."
        ));
    }
    Ok(label)
}

impl UserDb {
    /// Creates an app password for `email` and returns its id and the secret, which is not
    /// stored and cannot be shown again.
    pub fn add_app_password<S: AsRef<str>>(
        &mut self,
        email: &str,
        label: &str,
        scopes: &[S],
        now: i64,
    ) -> Result<(i64, Password)> {
        let label = check_label(label)?.to_owned();
        let scopes = parse_scopes(scopes)?.join(",");
        let uid = self.user_id(email)?;
        self.ensure_own_tables()?;
        let pw = generate()?;
        let digest = candidate_digest(pw.expose())
            .ok_or_else(|| Error::Internal("generated app password has the wrong shape".into()))?;
        self.conn
            .execute(
                "INSERT INTO miab_sidecar_app_passwords (user_id, label, scopes, hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![uid, label, scopes, digest, now],
            )
            .map_err(|e| self.err(e))?;
        Ok((self.conn.last_insert_rowid(), pw))
    }

    /// The user's app passwords, oldest first, with their last use from `used` (by id).
    pub fn app_passwords(&self, email: &str, used: &HashMap<i64, i64>) -> Result<Vec<AppPassword>> {
        let uid = self.user_id(email)?;
        if !self.schema.app_passwords {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, label, scopes, created_at FROM miab_sidecar_app_passwords WHERE user_id=?1 ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([uid], |r| {
                Ok(AppPassword {
                    id: r.get(0)?,
                    label: r.get(1)?,
                    scopes: r
                        .get::<_, String>(2)?
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    created_at: r.get(3)?,
                    last_used_at: None,
                })
            })
            .and_then(Iterator::collect::<rusqlite::Result<Vec<AppPassword>>>);
        let mut rows = rows.map_err(|e| self.err(e))?;
        for r in &mut rows {
            r.last_used_at = used.get(&r.id).copied();
        }
        Ok(rows)
    }

    /// Revokes one of the user's app passwords; it stops working at the next login.
    pub fn revoke_app_password(&mut self, email: &str, id: i64) -> Result<Outcome> {
        let uid = self.user_id(email)?;
        if !self.schema.app_passwords {
            return invalid("Invalid user or app password id.");
        }
        let n = self
            .conn
            .execute(
                "DELETE FROM miab_sidecar_app_passwords WHERE user_id=?1 AND id=?2",
                [uid, id],
            )
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return invalid("Invalid user or app password id.");
        }
        Ok(Outcome::plain("OK"))
    }

    /// Whether only app passwords may log in as the user (false when never set).
    pub fn app_passwords_required(&self, user_id: i64) -> Result<bool> {
        if !self.schema.app_passwords {
            return Ok(false);
        }
        self.conn
            .prepare_cached(
                "SELECT app_passwords_required FROM miab_sidecar_user_settings WHERE user_id=?1",
            )
            .and_then(|mut s| s.query_row([user_id], |r| r.get::<_, i64>(0)).optional())
            .map(|v| v.unwrap_or(0) != 0)
            .map_err(|e| self.err(e))
    }

    /// Makes app passwords the only way in for `email`, or lets the main password in again.
    pub fn set_app_passwords_required(&mut self, email: &str, required: bool) -> Result<Outcome> {
        let uid = self.user_id(email)?;
        self.ensure_own_tables()?;
        self.conn
            .execute(
                "INSERT INTO miab_sidecar_user_settings (user_id, app_passwords_required) VALUES (?1, ?2)
                 ON CONFLICT (user_id) DO UPDATE SET app_passwords_required=excluded.app_passwords_required",
                params![uid, i64::from(required)],
            )
            .map_err(|e| self.err(e))?;
        Ok(Outcome::plain("OK"))
    }

    /// The user's app password with this digest ([`candidate_digest`]), if any.
    pub fn app_password_match(
        &self,
        user_id: i64,
        digest: &str,
    ) -> Result<Option<AppPasswordMatch>> {
        if !self.schema.app_passwords {
            return Ok(None);
        }
        self.conn
            .prepare_cached(
                "SELECT id, scopes FROM miab_sidecar_app_passwords WHERE hash=?1 AND user_id=?2",
            )
            .and_then(|mut s| {
                s.query_row(params![digest, user_id], |r| {
                    Ok(AppPasswordMatch {
                        id: r.get(0)?,
                        scopes: r.get(1)?,
                    })
                })
                .optional()
            })
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords_have_the_shape_and_entropy() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.expose().len(), 24);
        assert_eq!(a.expose().matches('-').count(), 4);
        let d = candidate_digest(a.expose()).unwrap();
        assert_eq!(d.len(), 64);
        let typed = a.expose().replace('-', " ").to_uppercase();
        assert_eq!(candidate_digest(&typed).as_deref(), Some(d.as_str()));
        assert_eq!(candidate_digest("a-long-password"), None);
        assert_eq!(candidate_digest("0000-0000-0000-0000-0000"), None);
    }

    #[test]
    fn scopes() {
        assert_eq!(
            parse_scopes(&["IMAP,smtp", "imap"]).unwrap(),
            ["smtp", "imap"]
        );
        assert!(parse_scopes(&["web"]).is_err());
        assert!(parse_scopes::<&str>(&[]).unwrap().is_empty());
        assert!(scope_allows("", "imap"));
        assert!(scope_allows("smtp", "submission"));
        assert!(!scope_allows("smtp", "imap"));
        assert!(scope_allows("smtp,imap", "imap"));
    }

    #[test]
    fn add_list_match_revoke() {
        let (_dir, mut db, env) = crate::one_user_box();
        assert!(!db.schema().app_passwords, "no tables until first use");
        let none = HashMap::new();
        assert!(
            db.app_passwords("me@example.com", &none)
                .unwrap()
                .is_empty()
        );
        let (id, pw) = db
            .add_app_password("me@example.com", " phone ", &["imap"], 1000)
            .unwrap();
        assert!(db.schema().app_passwords);
        let uid = db.user("me@example.com").unwrap().unwrap().id;
        let digest = candidate_digest(pw.expose()).unwrap();
        let m = db.app_password_match(uid, &digest).unwrap().unwrap();
        assert_eq!((m.id, m.scopes.as_str()), (id, "imap"));
        assert_eq!(db.app_password_match(uid + 1, &digest).unwrap(), None);
        let list = db
            .app_passwords("me@example.com", &HashMap::from([(id, 2000)]))
            .unwrap();
        assert_eq!(
            list,
            [AppPassword {
                id,
                label: "phone".into(),
                scopes: vec!["imap".into()],
                created_at: 1000,
                last_used_at: Some(2000),
            }]
        );
        assert!(
            db.add_app_password("me@example.com", "", &["imap"], 1)
                .is_err()
        );
        assert!(
            db.add_app_password("nobody@example.com", "x", &["imap"], 1)
                .is_err()
        );
        assert!(db.revoke_app_password("me@example.com", id + 1).is_err());
        db.revoke_app_password("me@example.com", id).unwrap();
        assert_eq!(db.app_password_match(uid, &digest).unwrap(), None);

        assert!(!db.app_passwords_required(uid).unwrap());
        db.set_app_passwords_required("me@example.com", true)
            .unwrap();
        assert!(db.app_passwords_required(uid).unwrap());
        db.set_app_passwords_required("me@example.com", false)
            .unwrap();
        assert!(!db.app_passwords_required(uid).unwrap());

        // Removing the user takes its app passwords and settings along.
        db.add_app_password("me@example.com", "laptop", &["smtp"], 1)
            .unwrap();
        db.set_app_passwords_required("me@example.com", true)
            .unwrap();
        db.remove_user("me@example.com", &env).unwrap();
        let left: i64 = db
            .conn
            .query_row(
                "SELECT (SELECT count(*) FROM miab_sidecar_app_passwords) + (SELECT count(*) FROM miab_sidecar_user_settings)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(left, 0);
    }
}
