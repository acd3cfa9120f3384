//! `user app-password`: passwords for mail clients that miab-authd accepts in place of the
//! main one, each limited to some services and shown only when it is made.

use super::{open, print_json, print_outcome};
use crate::cli::Cli;
use crate::owner::AsOwner;
use anyhow::Result;
use clap::Subcommand;
use serde::Serialize;
use state::app_password_use::UsageLog;
use state::clock::{civil_from_days, unix_now};
use userdb::Access;

#[derive(Debug, Subcommand)]
pub enum AppPasswordCmd {
    /// Create one; the password is printed once and cannot be shown again.
    Add {
        email: String,
        /// What it is for, e.g. "phone".
        #[arg(long)]
        label: String,
        /// Services it may log in to: smtp, imap, pop3 (comma-separated or repeated). Default:
        /// all.
        #[arg(long)]
        scope: Vec<String>,
    },
    /// List a user's app passwords (never the passwords themselves).
    List { email: String },
    /// Revoke one by id; it stops working at the next login.
    Revoke { email: String, id: i64 },
    /// Require app passwords for this user (the main password then no longer logs in to
    /// SMTP, IMAP or POP3), or allow the main password again.
    Require {
        email: String,
        #[arg(value_parser = ["on", "off"])]
        setting: String,
    },
}

/// A new app password, the only time it is shown.
#[derive(Debug, Serialize)]
struct NewRow<'a> {
    id: i64,
    password: &'a str,
}

/// One app password as `--json` lists it; times in Unix seconds, no scopes meaning all.
#[derive(Debug, Serialize)]
struct ListRow<'a> {
    created_at: i64,
    id: i64,
    label: &'a str,
    last_used_at: Option<i64>,
    scopes: &'a [String],
}

pub fn run(cli: &Cli, cmd: &AppPasswordCmd) -> Result<()> {
    match cmd {
        AppPasswordCmd::Add {
            email,
            label,
            scope,
        } => {
            let mut db = open(cli, Access::ReadWrite)?;
            let (id, pw) = db.add_app_password(email, label, scope, unix_now())?;
            if cli.json {
                return print_json(&NewRow {
                    id,
                    password: pw.expose(),
                });
            }
            eprintln!("App password {id} for {email}; it is shown only this once:");
            println!("{}", pw.expose());
        }
        AppPasswordCmd::List { email } => list(cli, email)?,
        AppPasswordCmd::Revoke { email, id } => {
            let mut db = open(cli, Access::ReadWrite)?;
            print_outcome(&db.revoke_app_password(email, *id)?);
        }
        AppPasswordCmd::Require { email, setting } => {
            let mut db = open(cli, Access::ReadWrite)?;
            print_outcome(&db.set_app_passwords_required(email, setting == "on")?);
        }
    }
    Ok(())
}

fn list(cli: &Cli, email: &str) -> Result<()> {
    let db = open(cli, Access::ReadOnly)?;
    // The last-use times are in miab-authd's directory: read as its owner, so a link its
    // account planted there (a `-shm` to a root-only place) leads nowhere root could go.
    let used = match cli.store()? {
        // Every host records use in the store they share.
        Some((rt, pg)) => rt.block_on(state::pg::device_store::PgUsage::new(pg).read())?,
        None => {
            let usage = cli.layout()?.app_password_use_db();
            let owner = match usage.parent() {
                Some(dir) if std::fs::symlink_metadata(dir).is_ok() => Some(AsOwner::of(dir)?),
                _ => None,
            };
            let used = UsageLog::read(&usage)?;
            drop(owner);
            used
        }
    };
    let passwords = db.app_passwords(email, &used)?;
    if cli.json {
        let rows: Vec<ListRow<'_>> = passwords
            .iter()
            .map(|p| ListRow {
                created_at: p.created_at,
                id: p.id,
                label: &p.label,
                last_used_at: p.last_used_at,
                scopes: &p.scopes,
            })
            .collect();
        return print_json(&rows);
    }
    println!("id\tlabel\tscopes\tcreated\tlast used");
    for p in passwords {
        let scopes = if p.scopes.is_empty() {
            "all".to_owned()
        } else {
            p.scopes.join(",")
        };
        println!(
            "{}\t{}\t{scopes}\t{}\t{}",
            p.id,
            p.label,
            utc(p.created_at),
            p.last_used_at.map_or_else(|| "never".to_owned(), utc)
        );
    }
    Ok(())
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS` UTC.
pub(super) fn utc(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
