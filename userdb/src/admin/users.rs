//! User accounts: add, remove, password, privileges, quota and MFA, as MIAB's `mailconfig.py`.

use super::auto_aliases::kick_tx;
use super::{BoxEnv, Outcome};
use crate::address::{self, Mode};
use crate::db::{UserDb, parse_privs};
use crate::error::{Error, Result, invalid};
use crate::password::{self, Password};
use rusqlite::{OptionalExtension, params};

/// MIAB's `validate_quota`: returns the normalised quota (trimmed, uppercase).
pub fn validate_quota(quota: &str) -> Result<String> {
    let q = quota.trim().to_uppercase();
    if q.is_empty() {
        return invalid("No quota provided.");
    }
    if q.chars().any(|c| c.is_whitespace() || c == ',' || c == '.') {
        return invalid("Quotas cannot contain spaces, commas, or decimal points.");
    }
    let digits = q.trim_end_matches(['G', 'M']);
    let suffix_len = q.len() - digits.len();
    if digits.is_empty() || suffix_len > 1 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return invalid("Invalid quota.");
    }
    Ok(q)
}

fn validate_privilege(p: &str) -> Result<()> {
    if p.contains('\n') || p.trim().is_empty() {
        return invalid(format!("That's not a valid privilege ({p})."));
    }
    Ok(())
}

fn not_a_user<T>(email: &str) -> Result<T> {
    invalid(format!("That's not a user ({email})."))
}

impl UserDb {
    /// MIAB's `add_mail_user`.
    pub fn add_user(
        &mut self,
        email: &str,
        pw: &Password,
        privileges: &str,
        quota: &str,
        env: &BoxEnv,
    ) -> Result<Outcome> {
        if email.trim().is_empty() {
            return invalid("No email address provided.");
        }
        if !address::validate_email(email, Mode::Any) {
            return invalid("Invalid email address.");
        }
        if !address::validate_email(email, Mode::User) {
            return invalid(
                "User account email addresses may only use the lowercase ASCII letters a-z, the digits 0-9, underscore (_), hyphen (-), and period (.).",
            );
        }
        if address::is_dcv_address(email) && !self.users()?.is_empty() {
            return invalid(
                "You may not make a user account for that address because it is frequently used for domain control validation. Use an alias instead if necessary.",
            );
        }
        password::validate_password(pw)?;
        let privs: Vec<&str> = if privileges.trim().is_empty() {
            Vec::new()
        } else {
            let v: Vec<&str> = privileges.split('\n').collect();
            for p in &v {
                validate_privilege(p)?;
            }
            v
        };
        let quota = validate_quota(quota)?;
        self.require_auto_aliases()?;
        self.require(
            self.schema.users_privileges || privs.is_empty(),
            "this user database has no users.privileges column (MIAB migration 4)",
        )?;
        self.require(
            self.schema.users_quota || quota == "0",
            "this user database has no users.quota column (MIAB migration 15)",
        )?;
        let hash = password::hash_password(pw)?;

        let schema = self.schema;
        let path = self.path.clone();
        let tx = self.write_tx()?;
        let mut cols = vec!["email", "password"];
        let mut vals: Vec<String> = vec![email.to_owned(), hash];
        if schema.users_privileges {
            cols.push("privileges");
            vals.push(privs.join("\n"));
        }
        if schema.users_quota {
            cols.push("quota");
            vals.push(quota);
        }
        let placeholders: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
        let sql = format!(
            "INSERT INTO users ({}) VALUES ({})",
            cols.join(", "),
            placeholders.join(", ")
        );
        match tx.execute(&sql, rusqlite::params_from_iter(vals.iter())) {
            Ok(_) => {}
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) => {
                return invalid("User already exists.");
            }
            Err(e) => return Err(Error::sqlite(&path, e)),
        }
        let report = kick_tx(&tx, &path, env)?;
        tx.commit().map_err(|e| Error::sqlite(&path, e))?;
        Ok(Outcome {
            status: "mail user added".into(),
            kick: Some(report),
        })
    }

    /// MIAB's `set_mail_password`.
    pub fn set_password(&mut self, email: &str, pw: &Password) -> Result<Outcome> {
        password::validate_password(pw)?;
        let hash = password::hash_password(pw)?;
        let path = self.path.clone();
        let tx = self.write_tx()?;
        let n = tx
            .execute(
                "UPDATE users SET password=?1 WHERE email=?2",
                params![hash, email],
            )
            .map_err(|e| Error::sqlite(&path, e))?;
        if n != 1 {
            return not_a_user(email);
        }
        tx.commit().map_err(|e| Error::sqlite(&path, e))?;
        Ok(Outcome::plain("OK"))
    }

    /// MIAB's `remove_mail_user`: only the row goes; the maildir stays on disk (archived), and
    /// aliases naming the user are left alone. The user's MFA rows go too (MIAB leaves them
    /// orphaned because its cascade never fires), and so do its app passwords.
    pub fn remove_user(&mut self, email: &str, env: &BoxEnv) -> Result<Outcome> {
        self.require_auto_aliases()?;
        let path = self.path.clone();
        let has_mfa = self.schema.mfa;
        let has_own = self.schema.app_passwords;
        let tx = self.write_tx()?;
        if has_mfa {
            tx.execute(
                "DELETE FROM mfa WHERE user_id IN (SELECT id FROM users WHERE email=?1)",
                [email],
            )
            .map_err(|e| Error::sqlite(&path, e))?;
        }
        if has_own {
            for table in ["miab_sidecar_app_passwords", "miab_sidecar_user_settings"] {
                tx.execute(
                    &format!(
                        "DELETE FROM {table} WHERE user_id IN (SELECT id FROM users WHERE email=?1)"
                    ),
                    [email],
                )
                .map_err(|e| Error::sqlite(&path, e))?;
            }
        }
        let n = tx
            .execute("DELETE FROM users WHERE email=?1", [email])
            .map_err(|e| Error::sqlite(&path, e))?;
        if n != 1 {
            return not_a_user(email);
        }
        let report = kick_tx(&tx, &path, env)?;
        tx.commit().map_err(|e| Error::sqlite(&path, e))?;
        Ok(Outcome {
            status: "mail user removed".into(),
            kick: Some(report),
        })
    }

    /// MIAB's `get_mail_user_privileges`.
    pub fn privileges(&self, email: &str) -> Result<Vec<String>> {
        match self.user(email)? {
            Some(u) => Ok(u.privileges),
            None => not_a_user(email),
        }
    }

    /// MIAB's `add_remove_mail_user_privilege` (`make-admin`, `remove-admin`).
    pub fn set_privilege(&mut self, email: &str, privilege: &str, add: bool) -> Result<Outcome> {
        validate_privilege(privilege)?;
        self.require(
            self.schema.users_privileges,
            "this user database has no users.privileges column (MIAB migration 4)",
        )?;
        let path = self.path.clone();
        let tx = self.write_tx()?;
        let current: Option<String> = tx
            .query_row(
                "SELECT privileges FROM users WHERE email=?1",
                [email],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| Error::sqlite(&path, e))?;
        let Some(current) = current else {
            return not_a_user(email);
        };
        let mut privs = parse_privs(&current);
        if add {
            if !privs.iter().any(|p| p == privilege) {
                privs.push(privilege.to_owned());
            }
        } else {
            privs.retain(|p| p != privilege);
        }
        let n = tx
            .execute(
                "UPDATE users SET privileges=?1 WHERE email=?2",
                params![privs.join("\n"), email],
            )
            .map_err(|e| Error::sqlite(&path, e))?;
        if n != 1 {
            return invalid("Something went wrong.");
        }
        tx.commit().map_err(|e| Error::sqlite(&path, e))?;
        Ok(Outcome::plain("OK"))
    }

    /// MIAB's `get_mail_quota`.
    pub fn quota(&self, email: &str) -> Result<String> {
        match self.user(email)? {
            Some(u) => Ok(u.quota),
            None => not_a_user(email),
        }
    }

    /// MIAB's `set_mail_quota` (without the `doveadm quota recalc`, which is the caller's).
    pub fn set_quota(&mut self, email: &str, quota: &str) -> Result<Outcome> {
        let quota = validate_quota(quota)?;
        self.require(
            self.schema.users_quota,
            "this user database has no users.quota column (MIAB migration 15)",
        )?;
        let path = self.path.clone();
        let tx = self.write_tx()?;
        let n = tx
            .execute(
                "UPDATE users SET quota=?1 WHERE email=?2",
                params![quota, email],
            )
            .map_err(|e| Error::sqlite(&path, e))?;
        if n != 1 {
            return not_a_user(email);
        }
        tx.commit().map_err(|e| Error::sqlite(&path, e))?;
        Ok(Outcome::plain("OK"))
    }

    /// MIAB's `disable_mfa`: one entry by id, or all of the user's entries when `id` is `None`.
    pub fn disable_mfa(&mut self, email: &str, id: Option<i64>) -> Result<Outcome> {
        let uid = self.user_id(email)?;
        self.require(
            self.schema.mfa,
            "this user database has no mfa table (MIAB migration 13)",
        )?;
        let path = self.path.clone();
        let tx = self.write_tx()?;
        let n = match id {
            None => tx.execute("DELETE FROM mfa WHERE user_id=?1", [uid]),
            Some(id) => tx.execute("DELETE FROM mfa WHERE user_id=?1 AND id=?2", [uid, id]),
        }
        .map_err(|e| Error::sqlite(&path, e))?;
        if n == 0 {
            return invalid("Invalid user or MFA id.");
        }
        tx.commit().map_err(|e| Error::sqlite(&path, e))?;
        Ok(Outcome::plain("OK"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_rules() {
        assert_eq!(validate_quota(" 500m ").unwrap(), "500M");
        assert_eq!(validate_quota("0").unwrap(), "0");
        assert_eq!(validate_quota("2G").unwrap(), "2G");
        let err = |q: &str| validate_quota(q).unwrap_err().to_string();
        assert_eq!(err(""), "No quota provided.");
        assert_eq!(err("  "), "No quota provided.");
        assert_eq!(
            err("1.5G"),
            "Quotas cannot contain spaces, commas, or decimal points."
        );
        assert_eq!(
            err("1 G"),
            "Quotas cannot contain spaces, commas, or decimal points."
        );
        assert_eq!(
            err("1,000"),
            "Quotas cannot contain spaces, commas, or decimal points."
        );
        assert_eq!(err("G"), "Invalid quota.");
        assert_eq!(err("10K"), "Invalid quota.");
        assert_eq!(err("10GM"), "Invalid quota.");
        assert_eq!(err("-1"), "Invalid quota.");
        assert_eq!(err("١٢"), "Invalid quota.");
    }
}
