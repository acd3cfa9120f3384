//! Manual aliases: MIAB's `add_mail_alias` and `remove_mail_alias`.
//!
//! Adding is planned, then applied: `AliasFacts` is what the rules read from the DB,
//! `plan_alias` decides from those facts alone (MIAB's checks in MIAB's order, with its
//! texts), and `apply_alias` writes the plan. All three run in one write transaction, so
//! nothing changes between the reading and the writing.

use super::auto_aliases::kick_tx;
use super::{BoxEnv, Outcome};
use crate::address::{self, Mode};
use crate::db::{UserDb, parse_privs};
use crate::error::{Error, Result, invalid};
use crate::schema::Schema;
use rusqlite::{OptionalExtension, Transaction, params};
use std::collections::BTreeSet;
use std::path::Path;

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

/// What `add_alias`'s rules need to know about the DB.
#[derive(Debug)]
struct AliasFacts<'a> {
    /// The DB, named in the schema error.
    path: &'a Path,
    /// Every login (`users.email`): the only possible permitted senders.
    logins: BTreeSet<String>,
    /// Logins with the `admin` privilege: the only users a DCV address may forward to.
    admins: BTreeSet<String>,
    /// `aliases.permitted_senders` exists (MIAB migration 9).
    senders_column: bool,
    /// A manual alias with this source exists already.
    exists: bool,
}

impl<'a> AliasFacts<'a> {
    fn read(tx: &Transaction<'_>, path: &'a Path, schema: Schema, source: &str) -> Result<Self> {
        let e = |e| Error::sqlite(path, e);
        // Before MIAB migration 4 there are no privileges, so nobody is an admin.
        let sql = if schema.users_privileges {
            "SELECT email, privileges FROM users"
        } else {
            "SELECT email, '' FROM users"
        };
        let users: Vec<(String, String)> = {
            let mut s = tx.prepare(sql).map_err(e)?;
            let r = s
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(Iterator::collect);
            r.map_err(e)?
        };
        let admins = users
            .iter()
            .filter(|(_, p)| parse_privs(p).iter().any(|x| x == "admin"))
            .map(|(u, _)| u.clone())
            .collect();
        let logins = users.into_iter().map(|(u, _)| u).collect();
        let exists = tx
            .query_row(
                "SELECT 1 FROM aliases WHERE source=?1",
                [source],
                |_| Ok(()),
            )
            .optional()
            .map_err(e)?
            .is_some();
        Ok(AliasFacts {
            path,
            logins,
            admins,
            senders_column: schema.aliases_permitted_senders,
            exists,
        })
    }
}

/// What `add_alias` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AliasPlan {
    write: AliasWrite,
    source: String,
    /// Comma-separated; empty when the alias only has permitted senders.
    destination: String,
    /// Comma-separated; `None` (NULL, as MIAB stores it) when there are none.
    permitted_senders: Option<String>,
}

/// A new row, or new values for the row with the same source (`update_if_exists`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AliasWrite {
    Insert,
    Update,
}

impl AliasWrite {
    /// MIAB's status line.
    fn status(self) -> &'static str {
        match self {
            AliasWrite::Insert => "alias added",
            AliasWrite::Update => "alias updated",
        }
    }
}

/// MIAB's checks on an alias source: IDNA-encoded, lowercased, trimmed, then validated.
fn alias_source(address: &str) -> Result<String> {
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
    Ok(address)
}

/// The rest of MIAB's `add_mail_alias` checks, in its order, for a source from
/// `alias_source`.
fn plan_alias(
    source: String,
    forwards_to: &str,
    permitted_senders: &str,
    update_if_exists: bool,
    facts: &AliasFacts<'_>,
) -> Result<AliasPlan> {
    let forwards_to = forwards_to.trim();
    let is_dcv_source = address::is_dcv_address(&source);
    let mut validated_forwards_to: Vec<String> = Vec::new();
    // A single destination may be a bare `@domain` (Postfix keeps the local part), except for
    // DCV sources; anything else must be a list of full addresses.
    let r1 = address::sanitize_idn_email_address(forwards_to);
    if address::validate_email(&r1, Mode::Alias) && !is_dcv_source {
        validated_forwards_to.push(r1);
    } else {
        for email in split_form_list(forwards_to) {
            let email = address::sanitize_idn_email_address(&email);
            if !address::validate_email(&email, Mode::Any) {
                return invalid(format!("Invalid receiver email address ({email})."));
            }
            if is_dcv_source
                && !address::is_dcv_address(&email)
                && !facts.admins.contains(&strip_plus_tag(&email))
            {
                return invalid(
                    "This alias can only have administrators of this system as destinations because the address is frequently used for domain control validation.",
                );
            }
            validated_forwards_to.push(email);
        }
    }

    let mut validated_senders = Vec::new();
    for login in split_form_list(permitted_senders) {
        if !facts.logins.contains(&login) {
            return invalid(format!(
                "Invalid permitted sender: {login} is not a user on this system."
            ));
        }
        validated_senders.push(login);
    }
    if validated_forwards_to.is_empty() && validated_senders.is_empty() {
        return invalid("The alias must either forward to an address or have a permitted sender.");
    }
    if !facts.senders_column && !validated_senders.is_empty() {
        return Err(Error::SchemaTooOld {
            path: facts.path.to_owned(),
            what: "this user database has no aliases.permitted_senders column (MIAB migration 9)",
        });
    }
    let write = match (facts.exists, update_if_exists) {
        (false, _) => AliasWrite::Insert,
        (true, true) => AliasWrite::Update,
        (true, false) => return invalid(format!("Alias already exists ({source}).")),
    };
    Ok(AliasPlan {
        write,
        source,
        destination: validated_forwards_to.join(","),
        permitted_senders: (!validated_senders.is_empty()).then(|| validated_senders.join(",")),
    })
}

/// Writes `plan`, with or without the `permitted_senders` column.
fn apply_alias(
    tx: &Transaction<'_>,
    path: &Path,
    senders_column: bool,
    plan: &AliasPlan,
) -> Result<()> {
    let AliasPlan {
        write,
        source,
        destination,
        permitted_senders,
    } = plan;
    match (write, senders_column) {
        (AliasWrite::Insert, true) => tx.execute(
            "INSERT INTO aliases (source, destination, permitted_senders) VALUES (?1, ?2, ?3)",
            params![source, destination, permitted_senders],
        ),
        (AliasWrite::Insert, false) => tx.execute(
            "INSERT INTO aliases (source, destination) VALUES (?1, ?2)",
            params![source, destination],
        ),
        (AliasWrite::Update, true) => tx.execute(
            "UPDATE aliases SET destination = ?1, permitted_senders = ?2 WHERE source = ?3",
            params![destination, permitted_senders, source],
        ),
        (AliasWrite::Update, false) => tx.execute(
            "UPDATE aliases SET destination = ?1 WHERE source = ?2",
            params![destination, source],
        ),
    }
    .map(drop)
    .map_err(|e| Error::sqlite(path, e))
}

impl UserDb {
    /// MIAB's `add_mail_alias`.
    pub fn add_alias(
        &mut self,
        address: &str,
        forwards_to: &str,
        permitted_senders: &str,
        update_if_exists: bool,
        env: &BoxEnv,
    ) -> Result<Outcome> {
        let source = alias_source(address)?;
        self.require_auto_aliases()?;
        let schema = self.schema;
        let path = self.path.clone();
        let tx = self.write_tx()?;
        let facts = AliasFacts::read(&tx, &path, schema, &source)?;
        let plan = plan_alias(
            source,
            forwards_to,
            permitted_senders,
            update_if_exists,
            &facts,
        )?;
        apply_alias(&tx, &path, facts.senders_column, &plan)?;
        let report = kick_tx(&tx, &path, env)?;
        tx.commit().map_err(|e| Error::sqlite(&path, e))?;
        Ok(Outcome {
            status: plan.write.status().into(),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plus_tag_strip() {
        assert_eq!(strip_plus_tag("me+x@d.com"), "me@d.com");
        assert_eq!(strip_plus_tag("me@d.com"), "me@d.com");
    }

    /// A box with the user me@example.com and the admin boss@example.com, and no alias for
    /// the source unless `exists`.
    fn facts(exists: bool) -> AliasFacts<'static> {
        AliasFacts {
            path: Path::new("users.sqlite"),
            logins: ["me@example.com", "boss@example.com"]
                .map(str::to_owned)
                .into(),
            admins: ["boss@example.com".to_owned()].into(),
            senders_column: true,
            exists,
        }
    }

    fn plan(
        source: &str,
        to: &str,
        senders: &str,
        update: bool,
        f: &AliasFacts<'_>,
    ) -> Result<AliasPlan> {
        plan_alias(alias_source(source)?, to, senders, update, f)
    }

    fn refusal<T: std::fmt::Debug>(r: Result<T>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn source_rules() {
        assert_eq!(alias_source("Hi@Example.COM").unwrap(), "hi@example.com");
        assert_eq!(
            alias_source("hi@bücher.example").unwrap(),
            "hi@xn--bcher-kva.example"
        );
        assert_eq!(refusal(alias_source("  ")), "No email address provided.");
        assert_eq!(
            refusal(alias_source("bad address")),
            "Invalid email address (bad address)."
        );
    }

    #[test]
    fn plan_new_alias() {
        let p = plan(
            "Hi@example.com",
            " me@example.com, x@bücher.example ",
            "",
            false,
            &facts(false),
        );
        assert_eq!(
            p.unwrap(),
            AliasPlan {
                write: AliasWrite::Insert,
                source: "hi@example.com".into(),
                destination: "me@example.com,x@xn--bcher-kva.example".into(),
                permitted_senders: None,
            }
        );
        // A lone `@domain` destination is kept whole.
        let p = plan("@old.example", "@example.com", "", false, &facts(false)).unwrap();
        assert_eq!(p.destination, "@example.com");
    }

    #[test]
    fn plan_update() {
        let p = plan(
            "hi@example.com",
            "",
            "me@example.com\nboss@example.com",
            true,
            &facts(true),
        );
        assert_eq!(
            p.unwrap(),
            AliasPlan {
                write: AliasWrite::Update,
                source: "hi@example.com".into(),
                destination: String::new(),
                permitted_senders: Some("me@example.com,boss@example.com".into()),
            }
        );
        assert_eq!(AliasWrite::Update.status(), "alias updated");
        assert_eq!(AliasWrite::Insert.status(), "alias added");
    }

    #[test]
    fn plan_refusals() {
        let f = facts(true);
        assert_eq!(
            refusal(plan("hi@example.com", "me@example.com", "", false, &f)),
            "Alias already exists (hi@example.com)."
        );
        assert_eq!(
            refusal(plan("hi@example.com", "", "", true, &f)),
            "The alias must either forward to an address or have a permitted sender."
        );
        assert_eq!(
            refusal(plan("hi@example.com", "a@b.com,bad", "", true, &f)),
            "Invalid receiver email address (bad)."
        );
        assert_eq!(
            refusal(plan("hi@example.com", "", "zed@example.com", true, &f)),
            "Invalid permitted sender: zed@example.com is not a user on this system."
        );
        // A DCV source forwards only to admins (a +tag allowed) or to other DCV addresses.
        assert!(
            refusal(plan("abuse@example.com", "me@example.com", "", true, &f))
                .starts_with("This alias can only have administrators")
        );
        let ok = plan(
            "abuse@example.com",
            "boss+dcv@example.com,admin@other.org",
            "",
            true,
            &f,
        );
        assert_eq!(
            ok.unwrap().destination,
            "boss+dcv@example.com,admin@other.org"
        );
        // A schema too old for permitted senders is reported even when the alias exists.
        let old = AliasFacts {
            senders_column: false,
            ..facts(true)
        };
        let err = plan("hi@example.com", "", "me@example.com", false, &old).unwrap_err();
        assert!(matches!(err, Error::SchemaTooOld { .. }), "{err}");
    }

    #[test]
    fn facts_and_apply_in_sql() {
        let (_dir, mut db, env) = crate::one_user_box();
        let add = |db: &mut UserDb, to: &str, update: bool| {
            db.add_alias("hi@example.com", to, "me@example.com", update, &env)
                .map(|o| o.status)
        };
        assert_eq!(
            add(&mut db, "me@example.com", false).unwrap(),
            "alias added"
        );
        assert_eq!(
            add(&mut db, "x@example.com", false)
                .unwrap_err()
                .to_string(),
            "Alias already exists (hi@example.com)."
        );
        assert_eq!(
            add(&mut db, "x@example.com", true).unwrap(),
            "alias updated"
        );
        let row = db
            .aliases()
            .unwrap()
            .into_iter()
            .find(|a| a.source == "hi@example.com")
            .unwrap();
        assert_eq!(row.destination, "x@example.com");
        assert_eq!(row.permitted_senders.as_deref(), Some("me@example.com"));
        // Privileges are read from the DB: me@ may receive a DCV alias only once an admin.
        let dcv =
            |db: &mut UserDb| db.add_alias("abuse@example.com", "me@example.com", "", true, &env);
        assert!(
            dcv(&mut db)
                .unwrap_err()
                .to_string()
                .starts_with("This alias can only have administrators")
        );
        db.set_privilege("me@example.com", "admin", true).unwrap();
        assert_eq!(dcv(&mut db).unwrap().status, "alias added");
    }
}
