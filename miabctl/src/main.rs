//! `miabctl`: Mail-in-a-Box's `management/cli.py` user and alias commands, working on the user
//! DB directly. Same texts and output formats as cli.py, plus `--json` on every listing.
//!
//! Exit codes: 0 ok, 1 refused (the reason on stderr), 2 usage.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use userdb::{Access, BoxEnv, Outcome, Password, UserDb, address, sort};

mod dkim;
mod sidecars;

#[derive(Debug, Parser)]
#[command(
    name = "miabctl",
    version,
    about = "Manage Mail-in-a-Box users and aliases in the user DB",
    after_help = "Removing a mail user does not delete their mail folders on disk. It only prevents IMAP/SMTP login."
)]
struct Cli {
    /// Mail-in-a-Box's STORAGE_ROOT; the DB is STORAGE_ROOT/mail/users.sqlite.
    #[arg(
        long,
        env = "MIAB_STORAGE_ROOT",
        default_value = "/home/user-data",
        global = true
    )]
    storage_root: PathBuf,
    /// The box's PRIMARY_HOSTNAME (default: /etc/mailinabox.conf, else the system host name).
    #[arg(long, env = "MIAB_HOSTNAME", global = true)]
    hostname: Option<String>,
    /// Print listings as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create an empty user DB with Mail-in-a-Box's exact schema.
    Init,
    /// List users (admins marked with *), or manage them.
    User {
        #[command(subcommand)]
        command: Option<UserCmd>,
    },
    /// List aliases (address, forwards-to, permitted senders, tab-separated), or manage them.
    Alias {
        #[command(subcommand)]
        command: Option<AliasCmd>,
    },
    /// Mail domains.
    Domain {
        #[command(subcommand)]
        command: DomainCmd,
    },
    /// Regenerate the automatic aliases (postmaster@, admin@, abuse@, hostmaster@, IDN domains).
    Kick,
    /// DKIM keys for miab-milter.
    Dkim {
        #[command(subcommand)]
        command: DkimCmd,
    },
    /// DNS records the mail domains need.
    Dns {
        #[command(subcommand)]
        command: DnsCmd,
    },
    /// Switch a live Mail-in-a-Box box to the sidecar daemons and back (run as root).
    Sidecars {
        #[command(subcommand)]
        command: SidecarsCmd,
    },
}

#[derive(Debug, Subcommand)]
enum SidecarsCmd {
    /// Switch over in one step: start the daemons, neutralise postgrey, OpenDKIM and
    /// OpenDMARC, wire Postfix and Dovecot to the sidecars (the originals are kept for disable).
    Enable,
    /// Check every integration point; exit 0 when all are fine, 1 otherwise.
    Status,
    /// Put back exactly what was there before enable, and start the old daemons again.
    Disable,
    /// On a switched box, put back any wiring that was rewritten (run by
    /// miab-sidecars-repair.path and .timer); does nothing otherwise.
    Repair,
    /// Before Mail-in-a-Box's backup: checkpoint the sidecars' SQLite files and hold their
    /// background writes (run by the neutralised postgrey unit's stop).
    #[command(hide = true)]
    BackupHold,
    /// After the backup: let background writes go again (the neutralised postgrey's start).
    #[command(hide = true)]
    BackupRelease,
}

#[derive(Debug, Subcommand)]
enum DkimCmd {
    /// Create STORAGE_ROOT/mail/dkim/mail.private (RSA 2048, PKCS#8 PEM, mode 0600) and
    /// mail.txt, as opendkim-genkey does; with --ed25519 also ed25519.private (selector "ed").
    Generate {
        #[arg(long)]
        ed25519: bool,
        /// Owner of the key files (the user miab-milter runs as). Default: whoever runs this.
        #[arg(long)]
        owner: Option<String>,
        /// Replace existing keys (every signature in flight stops verifying once DNS changes).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum DnsCmd {
    /// Print the TXT records (SPF, DKIM, DMARC) for one domain, or for every mail domain.
    Records { domain: Option<String> },
}

#[derive(Debug, clap::Args)]
struct PasswordArgs {
    /// Read the password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
    /// The password (visible to other local users in the process list; prefer the prompt or
    /// --password-stdin). Accepted for compatibility with cli.py.
    #[arg(hide = true)]
    password: Option<String>,
}

#[derive(Debug, Subcommand)]
enum UserCmd {
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
    /// App passwords for mail clients (SMTP, IMAP, POP3), through miab-authd.
    AppPassword {
        #[command(subcommand)]
        command: AppPasswordCmd,
    },
}

#[derive(Debug, Subcommand)]
enum AppPasswordCmd {
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

#[derive(Debug, Subcommand)]
enum MfaCmd {
    /// List a user's MFA devices (CSV: id,type,label).
    Show { email: String },
    /// Disable one MFA device, or all of them.
    Disable { email: String, id: Option<i64> },
}

#[derive(Debug, Subcommand)]
enum AliasCmd {
    /// List aliases.
    List,
    /// Add an alias. FORWARDS_TO is comma-separated addresses, or a single @domain.
    Add {
        address: String,
        forwards_to: String,
        /// Comma-separated logins allowed to send as this address.
        #[arg(long, default_value = "")]
        permitted_senders: String,
        /// Replace an existing alias instead of refusing.
        #[arg(long)]
        update: bool,
    },
    /// Remove an alias.
    Remove { address: String },
}

#[derive(Debug, Subcommand)]
enum DomainCmd {
    /// The domains the box handles mail for.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::from(1)
        }
    }
}

fn db_path(cli: &Cli) -> PathBuf {
    userdb::db_path(&cli.storage_root)
}

fn open(cli: &Cli, access: Access) -> Result<UserDb> {
    match UserDb::open(db_path(cli), access) {
        Err(userdb::Error::Missing(p)) => bail!(
            "user database not found: {} (wrong --storage-root? `miabctl --storage-root DIR init` creates a new one)",
            p.display()
        ),
        r => Ok(r?),
    }
}

/// `PRIMARY_HOSTNAME` by the rule every binary shares (`userdb::boxconf`): flag or env, then
/// MIAB's /etc/mailinabox.conf, then the system's name.
fn box_env(cli: &Cli) -> Result<BoxEnv> {
    let name = userdb::boxconf::primary_hostname(cli.hostname.as_deref())
        .context("cannot tell the box's hostname; pass --hostname")?;
    Ok(BoxEnv {
        primary_hostname: name,
    })
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

fn print_outcome(o: &Outcome) {
    println!("{}", o.text());
}

fn print_json(v: &serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

fn run(cli: &Cli) -> Result<()> {
    match &cli.command {
        Command::Init => {
            let path = db_path(cli);
            UserDb::create(&path)?;
            println!("created {}", path.display());
        }
        Command::User { command } => user(cli, command.as_ref().unwrap_or(&UserCmd::List))?,
        Command::Alias { command } => alias(cli, command.as_ref().unwrap_or(&AliasCmd::List))?,
        Command::Domain {
            command: DomainCmd::List,
        } => {
            let db = open(cli, Access::ReadOnly)?;
            let env = hostname_for_sorting(cli);
            let domains: Vec<String> = db.mail_domains()?.into_iter().collect();
            let sorted = sort::sort_domains(&domains, &env);
            if cli.json {
                print_json(&json!(sorted))?;
            } else {
                for d in sorted {
                    println!("{d}");
                }
            }
        }
        Command::Dkim {
            command:
                DkimCmd::Generate {
                    ed25519,
                    owner,
                    force,
                },
        } => {
            let dir = dkim::dir(&cli.storage_root);
            for path in dkim::generate(&dir, *ed25519, owner.as_deref(), *force)? {
                println!("{}", path.display());
            }
            if *force {
                // miab-milter loads its keys at start; a rotated key must not go live before
                // its DNS record does.
                eprintln!(
                    "publish the new record (miabctl dns records), wait for it to be seen, then restart miab-milter"
                );
            }
        }
        Command::Dns {
            command: DnsCmd::Records { domain },
        } => {
            let domains = match domain {
                Some(d) => vec![d.clone()],
                None => open(cli, Access::ReadOnly)?
                    .mail_domains()?
                    .into_iter()
                    .collect(),
            };
            let dir = dkim::dir(&cli.storage_root);
            let mut rows = Vec::new();
            for d in &domains {
                rows.extend(dkim::records(d, &dir)?);
            }
            if cli.json {
                return print_json(&json!(
                    rows.iter()
                        .map(|(n, v)| json!({"qname": n, "rtype": "TXT", "value": v}))
                        .collect::<Vec<_>>()
                ));
            }
            for (name, value) in rows {
                println!("{name}\tIN\tTXT\t{}", dkim::quoted(&value));
            }
        }
        Command::Sidecars { command } => {
            let sys = sidecars::Sys::live(&cli.storage_root);
            match command {
                SidecarsCmd::Enable => sidecars::enable(&sys)?,
                SidecarsCmd::Disable => sidecars::disable(&sys)?,
                SidecarsCmd::Repair => sidecars::repair(&sys)?,
                SidecarsCmd::BackupHold => sidecars::backup_hold(&sys)?,
                SidecarsCmd::BackupRelease => sidecars::backup_release(&sys)?,
                SidecarsCmd::Status => {
                    if !sidecars::status::print(&sidecars::status::check(&sys)) {
                        bail!("some parts need attention (see the fix: lines)");
                    }
                }
            }
        }
        Command::Kick => {
            let env = box_env(cli)?;
            let mut db = open(cli, Access::ReadWrite)?;
            let r = db.kick(&env)?;
            for (s, d) in &r.auto_added {
                println!("auto alias added: {s} -> {d}");
            }
            for (s, d) in &r.auto_removed {
                println!("auto alias removed: {s} -> {d}");
            }
            for m in &r.messages {
                println!("{m}");
            }
            if r.auto_added.is_empty() && r.auto_removed.is_empty() && r.messages.is_empty() {
                println!("auto aliases up to date");
            }
        }
    }
    Ok(())
}

/// Listings only need the hostname to order domains; never fail a listing over it.
fn hostname_for_sorting(cli: &Cli) -> String {
    box_env(cli).map(|e| e.primary_hostname).unwrap_or_default()
}

/// MIAB's `get_domain(addr)`: the domain part, shown in Unicode when it is valid IDNA.
fn display_domain(addr: &str) -> String {
    let d = address::domain_of(addr).unwrap_or("");
    address::domain_to_unicode(d).unwrap_or_else(|| d.to_owned())
}

/// Groups `(address, item)` pairs by [`display_domain`], the groups in MIAB's domain order.
fn group_by_domain<T>(
    items: impl IntoIterator<Item = (String, T)>,
    primary_hostname: &str,
) -> Vec<(String, Vec<T>)> {
    let mut groups: BTreeMap<String, Vec<T>> = BTreeMap::new();
    for (addr, item) in items {
        groups.entry(display_domain(&addr)).or_default().push(item);
    }
    let domains: Vec<String> = groups.keys().cloned().collect();
    sort::sort_domains(&domains, primary_hostname)
        .into_iter()
        .map(|d| {
            let v = groups.remove(&d).unwrap_or_default();
            (d, v)
        })
        .collect()
}

/// MIAB's `get_mail_users_ex(with_archived=True)`: users grouped by domain in MIAB's order.
fn users_by_domain(cli: &Cli, db: &UserDb) -> Result<Vec<(String, Vec<serde_json::Value>)>> {
    let users = db.users()?;
    let active: BTreeSet<String> = users.iter().map(|u| u.email.clone()).collect();
    let mut rows: Vec<(String, bool, serde_json::Value)> = users
        .iter()
        .map(|u| {
            (
                u.email.clone(),
                true,
                json!({"email": u.email, "privileges": u.privileges, "quota": u.quota, "status": "active"}),
            )
        })
        .collect();
    for (email, mailbox) in userdb::archived_mailboxes(&cli.storage_root, &active) {
        rows.push((
            email.clone(),
            false,
            json!({"email": email, "privileges": [], "status": "inactive", "mailbox": mailbox}),
        ));
    }
    let grouped = group_by_domain(
        rows.into_iter().map(|r| (r.0.clone(), r)),
        &hostname_for_sorting(cli),
    );
    let mut out = Vec::with_capacity(grouped.len());
    for (d, mut v) in grouped {
        v.sort_by(|a, b| (!a.1, &a.0).cmp(&(!b.1, &b.0)));
        out.push((d, v.into_iter().map(|r| r.2).collect()));
    }
    Ok(out)
}

fn is_admin(u: &serde_json::Value) -> bool {
    u["privileges"]
        .as_array()
        .is_some_and(|p| p.iter().any(|x| x == "admin"))
}

fn user(cli: &Cli, cmd: &UserCmd) -> Result<()> {
    match cmd {
        UserCmd::List => {
            let db = open(cli, Access::ReadOnly)?;
            let groups = users_by_domain(cli, &db)?;
            if cli.json {
                let v: Vec<_> = groups
                    .into_iter()
                    .map(|(d, users)| json!({"domain": d, "users": users}))
                    .collect();
                return print_json(&json!(v));
            }
            for (_, users) in groups {
                for u in users.iter().filter(|u| u["status"] == "active") {
                    let star = if is_admin(u) { "*" } else { "" };
                    println!("{}{star}", u["email"].as_str().unwrap_or_default());
                }
            }
        }
        UserCmd::Admins => {
            let db = open(cli, Access::ReadOnly)?;
            let admins: Vec<String> = users_by_domain(cli, &db)?
                .into_iter()
                .flat_map(|(_, users)| users)
                .filter(is_admin)
                .filter_map(|u| u["email"].as_str().map(str::to_owned))
                .collect();
            if cli.json {
                return print_json(&json!(admins));
            }
            for a in admins {
                println!("{a}");
            }
        }
        UserCmd::Add { email, pw, quota } => {
            let env = box_env(cli)?;
            let mut db = open(cli, Access::ReadWrite)?;
            let pw = read_password(pw)?;
            let o = db.add_user(email, &pw, "", quota, &env)?;
            quota_recalc(email);
            print_outcome(&o);
        }
        UserCmd::Password { email, pw } => {
            let mut db = open(cli, Access::ReadWrite)?;
            let pw = read_password(pw)?;
            print_outcome(&db.set_password(email, &pw)?);
        }
        UserCmd::Remove { email } => {
            let env = box_env(cli)?;
            let mut db = open(cli, Access::ReadWrite)?;
            print_outcome(&db.remove_user(email, &env)?);
        }
        UserCmd::MakeAdmin { email } | UserCmd::RemoveAdmin { email } => {
            let add = matches!(cmd, UserCmd::MakeAdmin { .. });
            let mut db = open(cli, Access::ReadWrite)?;
            print_outcome(&db.set_privilege(email, "admin", add)?);
        }
        UserCmd::Quota { email, quota: None } => {
            let db = open(cli, Access::ReadOnly)?;
            let q = db.quota(email)?;
            if cli.json {
                return print_json(&json!({"email": email, "quota": q}));
            }
            println!("{q}");
        }
        UserCmd::Quota {
            email,
            quota: Some(q),
        } => {
            let mut db = open(cli, Access::ReadWrite)?;
            db.set_quota(email, q)?;
            quota_recalc(email);
        }
        UserCmd::Mfa {
            command: MfaCmd::Show { email },
        } => {
            let db = open(cli, Access::ReadOnly)?;
            let rows = db.mfa(email)?;
            if cli.json {
                return print_json(&json!(rows));
            }
            let mut out = String::from("id,type,label\r\n");
            for m in rows {
                out.push_str(&format!(
                    "{},{},{}\r\n",
                    m.id,
                    csv_field(&m.kind),
                    csv_field(m.label.as_deref().unwrap_or(""))
                ));
            }
            print!("{out}");
        }
        UserCmd::Mfa {
            command: MfaCmd::Disable { email, id },
        } => {
            let mut db = open(cli, Access::ReadWrite)?;
            print_outcome(&db.disable_mfa(email, *id)?);
        }
        UserCmd::AppPassword { command } => app_password(cli, command)?,
    }
    Ok(())
}

fn app_password(cli: &Cli, cmd: &AppPasswordCmd) -> Result<()> {
    match cmd {
        AppPasswordCmd::Add {
            email,
            label,
            scope,
        } => {
            let mut db = open(cli, Access::ReadWrite)?;
            let (id, pw) =
                db.add_app_password(email, label, scope, userdb::app_password::unix_now())?;
            if cli.json {
                return print_json(&json!({"id": id, "password": pw.expose()}));
            }
            eprintln!("App password {id} for {email}; it is shown only this once:");
            println!("{}", pw.expose());
        }
        AppPasswordCmd::List { email } => {
            let db = open(cli, Access::ReadOnly)?;
            let rows = db.app_passwords(email)?;
            if cli.json {
                return print_json(&json!(rows));
            }
            println!("id\tlabel\tscopes\tcreated\tlast used");
            for p in rows {
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
        }
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

/// Unix seconds as `YYYY-MM-DD HH:MM:SS` UTC (civil-from-days, proleptic Gregorian).
fn utc(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// One field as Python's `csv.writer` writes it (QUOTE_MINIMAL).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// MIAB's `get_mail_aliases`: aliases and auto-aliases, one row per address (where both tables
/// have an address, the row SQLite's UNION would deliver last wins, as in MIAB's dict).
fn alias_rows(db: &UserDb, primary_hostname: &str) -> Result<Vec<userdb::Alias>> {
    let mut all = db.aliases()?;
    all.sort_by(|a, b| {
        (&a.source, &a.destination, &a.permitted_senders, a.auto).cmp(&(
            &b.source,
            &b.destination,
            &b.permitted_senders,
            b.auto,
        ))
    });
    let mut by_source: BTreeMap<String, userdb::Alias> = BTreeMap::new();
    for a in all {
        by_source.insert(a.source.clone(), a);
    }
    let keys: Vec<String> = by_source.keys().cloned().collect();
    Ok(sort::sort_email_addresses(&keys, primary_hostname)
        .into_iter()
        .filter_map(|k| by_source.remove(&k))
        .collect())
}

fn alias(cli: &Cli, cmd: &AliasCmd) -> Result<()> {
    match cmd {
        AliasCmd::List => {
            let db = open(cli, Access::ReadOnly)?;
            let primary = hostname_for_sorting(cli);
            let rows = alias_rows(&db, &primary)?;
            if cli.json {
                return print_json(&aliases_json(rows, &primary));
            }
            let mut out = std::io::stdout().lock();
            for a in rows {
                writeln!(
                    out,
                    "{}\t{}\t{}",
                    a.source,
                    a.destination,
                    a.permitted_senders.unwrap_or_default()
                )?;
            }
        }
        AliasCmd::Add {
            address,
            forwards_to,
            permitted_senders,
            update,
        } => {
            let env = box_env(cli)?;
            let mut db = open(cli, Access::ReadWrite)?;
            print_outcome(&db.add_alias(address, forwards_to, permitted_senders, *update, &env)?);
        }
        AliasCmd::Remove { address } => {
            let env = box_env(cli)?;
            let mut db = open(cli, Access::ReadWrite)?;
            print_outcome(&db.remove_alias(address, &env)?);
        }
    }
    Ok(())
}

/// MIAB's `get_mail_aliases_ex` structure.
fn aliases_json(rows: Vec<userdb::Alias>, primary_hostname: &str) -> serde_json::Value {
    let pretty = |s: &str| address::prettify_idn_email_address(s.trim());
    let items = rows
        .into_iter()
        .filter(|a| !(a.auto && a.source.starts_with('@')))
        .map(|a| {
            let item = json!({
                "address": a.source,
                "address_display": pretty(&a.source),
                "forwards_to": a.destination.split(',').map(pretty).collect::<Vec<_>>(),
                "permitted_senders": a.permitted_senders.as_ref().map(|p| p.split(',').map(pretty).collect::<Vec<_>>()),
                "auto": a.auto,
            });
            (a.source, item)
        });
    let mut out = Vec::new();
    for (d, mut v) in group_by_domain(items, primary_hostname) {
        v.sort_by(|a, b| {
            (a["auto"].as_bool(), a["address"].as_str())
                .cmp(&(b["auto"].as_bool(), b["address"].as_str()))
        });
        out.push(json!({"domain": d, "aliases": v}));
    }
    json!(out)
}
