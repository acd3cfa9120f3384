//! Changes to users and aliases, with MIAB's validation order and texts (`mailconfig.py`).
//!
//! Every change and the auto-alias regeneration it implies (MIAB's `kick()`) run in one short
//! `BEGIN IMMEDIATE` transaction, so a failure or a lock leaves the DB as it was. Password
//! hashing happens before the transaction starts, so the write lock is held for microseconds.

use crate::address::{self, Mode};
use crate::db::{UserDb, parse_privs};
use crate::error::{Error, Result, invalid};
use crate::password::{self, Password};
use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};
use std::collections::{BTreeMap, BTreeSet};

/// Box-wide settings the rules depend on (MIAB's `env`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoxEnv {
    /// `PRIMARY_HOSTNAME`: auto-aliases point to `administrator@` this name.
    pub primary_hostname: String,
}

impl BoxEnv {
    /// MIAB's `get_system_administrator`.
    pub fn administrator(&self) -> String {
        format!("administrator@{}", self.primary_hostname)
    }
}

/// What a `kick()` changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KickReport {
    /// Auto-aliases that appeared (`source`, `destination`).
    pub auto_added: Vec<(String, String)>,
    /// Auto-aliases that went away.
    pub auto_removed: Vec<(String, String)>,
    /// MIAB's own lines for legacy aliases it removed.
    pub messages: Vec<String>,
}

/// The outcome of a change: MIAB's status line and what the implied `kick()` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `mail user added`, `alias updated`, `OK`, ...
    pub status: String,
    /// Present when the change regenerated auto-aliases.
    pub kick: Option<KickReport>,
}

impl Outcome {
    pub(crate) fn plain(status: &str) -> Self {
        Outcome {
            status: status.to_owned(),
            kick: None,
        }
    }

    /// The text MIAB's API returns: the status line, then kick's own messages.
    pub fn text(&self) -> String {
        let mut s = self.status.clone();
        if let Some(k) = &self.kick {
            for m in &k.messages {
                s.push('\n');
                s.push_str(m);
            }
        }
        s
    }
}

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

/// MIAB's list splitting for form fields: newlines, then commas; items trimmed, empties dropped.
fn split_form_list(s: &str) -> Vec<String> {
    s.split('\n')
        .flat_map(|line| line.split(','))
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Removes a `+tag` from the local part (MIAB's `re.sub(r"(?=\+)[^@]*(?=@)", '', email)`).
fn strip_plus_tag(email: &str) -> String {
    match (email.find('+'), email.rfind('@')) {
        (Some(p), Some(at)) if p < at => format!("{}{}", &email[..p], &email[at..]),
        _ => email.to_owned(),
    }
}

impl UserDb {
    fn write_tx(&mut self) -> Result<Transaction<'_>> {
        let path = self.path.clone();
        self.conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| Error::sqlite(&path, e))
    }

    fn require_auto_aliases(&self) -> Result<()> {
        if self.schema.auto_aliases {
            Ok(())
        } else {
            Err(Error::SchemaTooOld {
                path: self.path.clone(),
                what: "this user database has no auto_aliases table (MIAB before v55)",
            })
        }
    }

    fn require(&self, present: bool, what: &'static str) -> Result<()> {
        if present {
            Ok(())
        } else {
            Err(Error::SchemaTooOld {
                path: self.path.clone(),
                what,
            })
        }
    }

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

    /// MIAB's `add_mail_alias`.
    pub fn add_alias(
        &mut self,
        address: &str,
        forwards_to: &str,
        permitted_senders: &str,
        update_if_exists: bool,
        env: &BoxEnv,
    ) -> Result<Outcome> {
        let address = address::sanitize_idn_email_address(address)
            .to_lowercase()
            .trim()
            .to_owned();
        if address.is_empty() {
            return invalid("No email address provided.");
        }
        if !address::validate_email(&address, Mode::Alias) {
            return invalid(format!("Invalid email address ({address})."));
        }
        self.require_auto_aliases()?;
        let schema = self.schema;
        let path = self.path.clone();
        let tx = self.write_tx()?;

        let forwards_to = forwards_to.trim();
        let is_dcv_source = address::is_dcv_address(&address);
        let mut validated_forwards_to: Vec<String> = Vec::new();
        let r1 = address::sanitize_idn_email_address(forwards_to);
        if address::validate_email(&r1, Mode::Alias) && !is_dcv_source {
            validated_forwards_to.push(r1);
        } else {
            for email in split_form_list(forwards_to) {
                let email = address::sanitize_idn_email_address(&email);
                if !address::validate_email(&email, Mode::Any) {
                    return invalid(format!("Invalid receiver email address ({email})."));
                }
                if is_dcv_source && !address::is_dcv_address(&email) {
                    let privileged = strip_plus_tag(&email);
                    let privs: Option<String> = if schema.users_privileges {
                        tx.query_row(
                            "SELECT privileges FROM users WHERE email=?1",
                            [&privileged],
                            |r| r.get(0),
                        )
                        .optional()
                        .map_err(|e| Error::sqlite(&path, e))?
                    } else {
                        None
                    };
                    if !privs.is_some_and(|p| parse_privs(&p).iter().any(|x| x == "admin")) {
                        return invalid(
                            "This alias can only have administrators of this system as destinations because the address is frequently used for domain control validation.",
                        );
                    }
                }
                validated_forwards_to.push(email);
            }
        }

        let valid_logins: BTreeSet<String> = {
            let mut stmt = tx
                .prepare("SELECT email FROM users")
                .map_err(|e| Error::sqlite(&path, e))?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .and_then(Iterator::collect);
            rows.map_err(|e| Error::sqlite(&path, e))?
        };
        let mut validated_senders = Vec::new();
        for login in split_form_list(permitted_senders) {
            if !valid_logins.contains(&login) {
                return invalid(format!(
                    "Invalid permitted sender: {login} is not a user on this system."
                ));
            }
            validated_senders.push(login);
        }
        if validated_forwards_to.is_empty() && validated_senders.is_empty() {
            return invalid(
                "The alias must either forward to an address or have a permitted sender.",
            );
        }
        if !schema.aliases_permitted_senders && !validated_senders.is_empty() {
            return Err(Error::SchemaTooOld {
                path,
                what: "this user database has no aliases.permitted_senders column (MIAB migration 9)",
            });
        }
        let destination = validated_forwards_to.join(",");
        let senders = (!validated_senders.is_empty()).then(|| validated_senders.join(","));

        let inserted = if schema.aliases_permitted_senders {
            tx.execute(
                "INSERT INTO aliases (source, destination, permitted_senders) VALUES (?1, ?2, ?3)",
                params![address, destination, senders],
            )
        } else {
            tx.execute(
                "INSERT INTO aliases (source, destination) VALUES (?1, ?2)",
                params![address, destination],
            )
        };
        let status = match inserted {
            Ok(_) => "alias added",
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) => {
                if !update_if_exists {
                    return invalid(format!("Alias already exists ({address})."));
                }
                let r = if schema.aliases_permitted_senders {
                    tx.execute(
                        "UPDATE aliases SET destination = ?1, permitted_senders = ?2 WHERE source = ?3",
                        params![destination, senders, address],
                    )
                } else {
                    tx.execute(
                        "UPDATE aliases SET destination = ?1 WHERE source = ?2",
                        params![destination, address],
                    )
                };
                r.map_err(|e| Error::sqlite(&path, e))?;
                "alias updated"
            }
            Err(e) => return Err(Error::sqlite(&path, e)),
        };
        let report = kick_tx(&tx, &path, env)?;
        tx.commit().map_err(|e| Error::sqlite(&path, e))?;
        Ok(Outcome {
            status: status.into(),
            kick: Some(report),
        })
    }

    /// MIAB's `remove_mail_alias`: the address is IDNA-encoded but, as in MIAB, not lowercased.
    pub fn remove_alias(&mut self, address: &str, env: &BoxEnv) -> Result<Outcome> {
        let address = address::sanitize_idn_email_address(address);
        self.require_auto_aliases()?;
        let path = self.path.clone();
        let tx = self.write_tx()?;
        let n = tx
            .execute("DELETE FROM aliases WHERE source=?1", [&address])
            .map_err(|e| Error::sqlite(&path, e))?;
        if n != 1 {
            return invalid(format!("That's not an alias ({address})."));
        }
        let report = kick_tx(&tx, &path, env)?;
        tx.commit().map_err(|e| Error::sqlite(&path, e))?;
        Ok(Outcome {
            status: "alias removed".into(),
            kick: Some(report),
        })
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

    /// MIAB's `kick()` for the user DB: regenerates `auto_aliases` and drops legacy manual
    /// postmaster/admin/abuse aliases that are no longer required. (MIAB's DNS and web updates
    /// are not the user DB's business.)
    pub fn kick(&mut self, env: &BoxEnv) -> Result<KickReport> {
        self.require_auto_aliases()?;
        let path = self.path.clone();
        let tx = self.write_tx()?;
        let report = kick_tx(&tx, &path, env)?;
        tx.commit().map_err(|e| Error::sqlite(&path, e))?;
        Ok(report)
    }
}

/// The auto-alias table MIAB's `kick()` would write for the current users and aliases, and the
/// set of required aliases.
fn compute_auto_aliases(
    users: &[String],
    aliases: &[(String, String)],
    env: &BoxEnv,
) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let administrator = env.administrator();
    let domains_where = |keep: &dyn Fn(&str) -> bool| -> BTreeSet<String> {
        users
            .iter()
            .filter_map(|u| address::domain_of(u))
            .chain(
                aliases
                    .iter()
                    .filter(|(s, _)| keep(s))
                    .filter_map(|(s, _)| address::domain_of(s)),
            )
            .map(str::to_owned)
            .collect()
    };
    let mut required = BTreeSet::new();
    required.insert(administrator.clone());
    required.insert(format!("hostmaster@{}", env.primary_hostname));
    let real = domains_where(&|a: &str| {
        !a.starts_with("postmaster@")
            && !a.starts_with("admin@")
            && !a.starts_with("abuse@")
            && !a.starts_with('@')
    });
    for d in &real {
        for lp in ["postmaster", "admin", "abuse"] {
            required.insert(format!("{lp}@{d}"));
        }
    }
    let mut auto = BTreeMap::new();
    for a in &required {
        if *a != administrator {
            auto.insert(a.clone(), administrator.clone());
        }
    }
    for d in domains_where(&|_| true) {
        if let Some(u) = address::domain_to_unicode(&d)
            && u != d
        {
            auto.insert(format!("@{u}"), format!("@{d}"));
        }
    }
    (auto, required)
}

fn kick_tx(tx: &Transaction<'_>, path: &std::path::Path, env: &BoxEnv) -> Result<KickReport> {
    let e = |e| Error::sqlite(path, e);
    let users: Vec<String> = {
        let mut s = tx.prepare("SELECT email FROM users").map_err(e)?;
        let r = s.query_map([], |r| r.get(0)).and_then(Iterator::collect);
        r.map_err(e)?
    };
    let pairs = |sql: &str| -> Result<Vec<(String, String)>> {
        let mut s = tx.prepare(sql).map_err(e)?;
        let r = s
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(Iterator::collect);
        r.map_err(e)
    };
    let manual = pairs("SELECT source, destination FROM aliases")?;
    let before: BTreeMap<String, String> = pairs("SELECT source, destination FROM auto_aliases")?
        .into_iter()
        .collect();
    let (auto, required) = compute_auto_aliases(&users, &manual, env);

    let mut report = KickReport::default();
    if auto != before {
        tx.execute("DELETE FROM auto_aliases", []).map_err(e)?;
        let mut ins = tx
            .prepare("INSERT INTO auto_aliases (source, destination) VALUES (?1, ?2)")
            .map_err(e)?;
        for (s, d) in &auto {
            ins.execute([s, d]).map_err(e)?;
        }
        report.auto_added = auto
            .iter()
            .filter(|(s, d)| before.get(*s) != Some(*d))
            .map(|(s, d)| (s.clone(), d.clone()))
            .collect();
        report.auto_removed = before
            .iter()
            .filter(|(s, d)| auto.get(*s) != Some(*d))
            .map(|(s, d)| (s.clone(), d.clone()))
            .collect();
    }

    let administrator = env.administrator();
    for (source, destination) in &manual {
        let Some((user, _)) = source.split_once('@') else {
            continue;
        };
        if ["postmaster", "admin", "abuse"].contains(&user)
            && !required.contains(source)
            && *destination == administrator
        {
            tx.execute("DELETE FROM aliases WHERE source=?1", [source])
                .map_err(e)?;
            report.messages.push(format!(
                "removed alias {source} (was to {destination}; domain no longer used for email)"
            ));
        }
    }
    Ok(report)
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

    #[test]
    fn plus_tag_strip() {
        assert_eq!(strip_plus_tag("me+x@d.com"), "me@d.com");
        assert_eq!(strip_plus_tag("me@d.com"), "me@d.com");
    }

    #[test]
    fn auto_aliases_like_kick() {
        let env = BoxEnv {
            primary_hostname: "box.example.com".into(),
        };
        let users = vec!["me@example.com".to_owned()];
        let aliases = vec![
            (
                "hi@xn--bcher-kva.example".to_owned(),
                "me@example.com".to_owned(),
            ),
            ("@catchonly.org".to_owned(), "me@example.com".to_owned()),
            (
                "postmaster@adminonly.net".to_owned(),
                "me@example.com".to_owned(),
            ),
        ];
        let (auto, required) = compute_auto_aliases(&users, &aliases, &env);
        let admin = "administrator@box.example.com".to_owned();
        let want: BTreeMap<String, String> = [
            ("abuse@example.com", &admin),
            ("admin@example.com", &admin),
            ("postmaster@example.com", &admin),
            ("abuse@xn--bcher-kva.example", &admin),
            ("admin@xn--bcher-kva.example", &admin),
            ("postmaster@xn--bcher-kva.example", &admin),
            ("hostmaster@box.example.com", &admin),
            ("@bücher.example", &"@xn--bcher-kva.example".to_owned()),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.clone()))
        .collect();
        assert_eq!(auto, want);
        assert!(required.contains(&admin));
        assert!(!required.contains("postmaster@catchonly.org"));
    }
}
