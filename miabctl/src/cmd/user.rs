//! `user`: MIAB's mail user commands (list, add, password, remove, admin privilege, quota),
//! the password prompt, and the quota recalculation Dovecot needs after a change. MFA and app
//! passwords are subcommands of `user` with modules of their own.

use super::app_password::AppPasswordCmd;
use super::mfa::MfaCmd;
use super::{box_env, group_by_domain, hostname_for_sorting, open, print_json, print_outcome};
use crate::cli::Cli;
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde::Serialize;
use std::collections::BTreeSet;
use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use userdb::{Access, Password, UserDb};

#[derive(Debug, clap::Args)]
pub struct PasswordArgs {
    /// Read the password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
    /// The password (visible to other local users in the process list; prefer the prompt or
    /// --password-stdin). Accepted for compatibility with cli.py.
    #[arg(hide = true)]
    password: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// List users.
    List,
    /// Add a user.
    Add {
        email: String,
        #[command(flatten)]
        pw: PasswordArgs,
        /// Quota such as 500M or 2G (0 = unlimited).
        #[arg(long, default_value = "0")]
        quota: String,
    },
    /// Set a user's password.
    Password {
        email: String,
        #[command(flatten)]
        pw: PasswordArgs,
    },
    /// Remove a user (the mailbox is archived on disk, not deleted).
    Remove { email: String },
    /// Give a user the admin privilege.
    MakeAdmin { email: String },
    /// Take the admin privilege away.
    RemoveAdmin { email: String },
    /// List admins.
    Admins,
    /// Show a user's quota, or set it.
    Quota {
        email: String,
        quota: Option<String>,
    },
    /// Control-panel MFA.
    Mfa {
        #[command(subcommand)]
        command: MfaCmd,
    },
    /// Suspend a login: its password and app passwords stop working (SMTP, IMAP, POP3,
    /// through miab-authd) until `user unsuspend`. Mail to it is still delivered.
    Suspend {
        email: String,
        /// Why, for the listing.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Let a suspended login in again.
    Unsuspend { email: String },
    /// List suspended logins.
    Suspended,
    /// App passwords for mail clients (SMTP, IMAP, POP3), through miab-authd.
    AppPassword {
        #[command(subcommand)]
        command: AppPasswordCmd,
    },
}

/// Whether a listed user has a `users` row or only an archived mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Active,
    Inactive,
}

/// One user of MIAB's `get_mail_users_ex(with_archived=True)`: an active user has a quota,
/// an inactive one the mailbox left behind.
#[derive(Debug, Serialize)]
struct UserRow {
    email: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    mailbox: Option<PathBuf>,
    privileges: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quota: Option<String>,
    status: Status,
}

impl UserRow {
    fn is_admin(&self) -> bool {
        self.privileges.iter().any(|p| p == "admin")
    }
}

/// A domain's users, as `get_mail_users_ex` groups them.
#[derive(Debug, Serialize)]
struct DomainUsers {
    domain: String,
    users: Vec<UserRow>,
}

/// `user quota EMAIL` as `--json` prints it.
#[derive(Debug, Serialize)]
struct QuotaRow<'a> {
    email: &'a str,
    quota: &'a str,
}

/// `user` without a subcommand lists.
pub fn run(cli: &Cli, cmd: Option<&UserCmd>) -> Result<()> {
    match cmd.unwrap_or(&UserCmd::List) {
        UserCmd::List => list(cli),
        UserCmd::Admins => admins(cli),
        UserCmd::Add { email, pw, quota } => {
            let env = box_env(cli)?;
            let mut db = open(cli, Access::ReadWrite)?;
            let pw = read_password(pw)?;
            let o = db.add_user(email, &pw, "", quota, &env)?;
            quota_recalc(email);
            print_outcome(&o);
            Ok(())
        }
        UserCmd::Password { email, pw } => {
            let mut db = open(cli, Access::ReadWrite)?;
            let pw = read_password(pw)?;
            print_outcome(&db.set_password(email, &pw)?);
            Ok(())
        }
        UserCmd::Remove { email } => {
            let env = box_env(cli)?;
            let mut db = open(cli, Access::ReadWrite)?;
            print_outcome(&db.remove_user(email, &env)?);
            Ok(())
        }
        UserCmd::MakeAdmin { email } => set_admin(cli, email, true),
        UserCmd::RemoveAdmin { email } => set_admin(cli, email, false),
        UserCmd::Quota { email, quota: None } => {
            let db = open(cli, Access::ReadOnly)?;
            let quota = db.quota(email)?;
            if cli.json {
                return print_json(&QuotaRow {
                    email,
                    quota: &quota,
                });
            }
            println!("{quota}");
            Ok(())
        }
        UserCmd::Quota {
            email,
            quota: Some(q),
        } => {
            let mut db = open(cli, Access::ReadWrite)?;
            db.set_quota(email, q)?;
            quota_recalc(email);
            Ok(())
        }
        UserCmd::Suspend { email, reason } => {
            let mut db = open(cli, Access::ReadWrite)?;
            print_outcome(&db.suspend(email, reason, state::clock::unix_now())?);
            Ok(())
        }
        UserCmd::Unsuspend { email } => {
            let mut db = open(cli, Access::ReadWrite)?;
            print_outcome(&db.unsuspend(email)?);
            Ok(())
        }
        UserCmd::Suspended => {
            let list = open(cli, Access::ReadOnly)?.suspended()?;
            if cli.json {
                return print_json(&list);
            }
            for s in list {
                println!(
                    "{}	{} UTC	{}",
                    s.email,
                    super::app_password::utc(s.since),
                    s.reason
                );
            }
            Ok(())
        }
        UserCmd::Mfa { command } => super::mfa::run(cli, command),
        UserCmd::AppPassword { command } => super::app_password::run(cli, command),
    }
}

fn list(cli: &Cli) -> Result<()> {
    let db = open(cli, Access::ReadOnly)?;
    let groups = users_by_domain(cli, &db)?;
    if cli.json {
        return print_json(&groups);
    }
    for u in groups.iter().flat_map(|g| &g.users) {
        if u.status == Status::Active {
            let star = if u.is_admin() { "*" } else { "" };
            println!("{}{star}", u.email);
        }
    }
    Ok(())
}

fn admins(cli: &Cli) -> Result<()> {
    let db = open(cli, Access::ReadOnly)?;
    let admins: Vec<String> = users_by_domain(cli, &db)?
        .into_iter()
        .flat_map(|g| g.users)
        .filter(UserRow::is_admin)
        .map(|u| u.email)
        .collect();
    if cli.json {
        return print_json(&admins);
    }
    for a in admins {
        println!("{a}");
    }
    Ok(())
}

fn set_admin(cli: &Cli, email: &str, add: bool) -> Result<()> {
    let mut db = open(cli, Access::ReadWrite)?;
    print_outcome(&db.set_privilege(email, "admin", add)?);
    Ok(())
}

/// MIAB's `get_mail_users_ex(with_archived=True)`: users grouped by domain in MIAB's order,
/// active ones first in each.
fn users_by_domain(cli: &Cli, db: &UserDb) -> Result<Vec<DomainUsers>> {
    let users = db.users()?;
    let active: BTreeSet<String> = users.iter().map(|u| u.email.clone()).collect();
    let mut rows: Vec<UserRow> = users
        .into_iter()
        .map(|u| UserRow {
            email: u.email,
            mailbox: None,
            privileges: u.privileges,
            quota: Some(u.quota),
            status: Status::Active,
        })
        .collect();
    for (email, mailbox) in userdb::archived_mailboxes(cli.layout()?.storage_root(), &active) {
        rows.push(UserRow {
            email,
            mailbox: Some(mailbox),
            privileges: Vec::new(),
            quota: None,
            status: Status::Inactive,
        });
    }
    let grouped = group_by_domain(
        rows.into_iter().map(|r| (r.email.clone(), r)),
        &hostname_for_sorting(cli),
    );
    Ok(grouped
        .into_iter()
        .map(|(domain, mut users)| {
            users.sort_by(|a, b| (a.status, &a.email).cmp(&(b.status, &b.email)));
            DomainUsers { domain, users }
        })
        .collect())
}

fn read_password(args: &PasswordArgs) -> Result<Password> {
    if let Some(p) = &args.password {
        eprintln!(
            "warning: a password on the command line is visible to other local users; prefer the prompt or --password-stdin"
        );
        return Ok(Password::new(p.clone()));
    }
    if args.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        let line = line.strip_suffix('\n').unwrap_or(&line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        return Ok(Password::new(line));
    }
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to ask for the password on; use --password-stdin");
    }
    loop {
        let first = rpassword::prompt_password("password: ").context("reading the password")?;
        if first.chars().count() < userdb::password::MIN_PASSWORD_LEN {
            println!("Passwords must be at least eight characters.");
            continue;
        }
        let second = rpassword::prompt_password(" (again): ").context("reading the password")?;
        if first != second {
            println!("Passwords not the same. Try again.");
            continue;
        }
        return Ok(Password::new(first));
    }
}

/// MIAB runs `doveadm quota recalc -u EMAIL` after quota changes. Only possible where Dovecot
/// runs; a failure is reported but the DB change stands, as in MIAB.
fn quota_recalc(email: &str) {
    if !Path::new("/run/dovecot/auth-userdb").exists() {
        return;
    }
    match std::process::Command::new("doveadm")
        .args(["quota", "recalc", "-u", email])
        .output()
    {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "warning: doveadm quota recalc -u {email} failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => eprintln!("warning: could not run doveadm quota recalc: {e}"),
    }
}
