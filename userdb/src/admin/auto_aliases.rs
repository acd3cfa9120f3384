//! MIAB's `kick()` for the user DB: the auto-aliases every domain needs, and the legacy manual
//! aliases it retires. The table is computed by a pure function, then written in SQL.

use super::{BoxEnv, KickReport};
use crate::address;
use crate::db::UserDb;
use crate::error::{Error, Result};
use rusqlite::Transaction;
use std::collections::{BTreeMap, BTreeSet};

impl UserDb {
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

/// `kick()` inside the caller's transaction, so a change and the kick it implies commit together.
pub(super) fn kick_tx(
    tx: &Transaction<'_>,
    path: &std::path::Path,
    env: &BoxEnv,
) -> Result<KickReport> {
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
