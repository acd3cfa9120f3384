//! `held`: the logins whose outgoing mail miab-policyd holds (its `containment` check), with
//! their figures; `held release`, which lets a login send again and releases its mail from
//! Postfix's hold queue; `held drop`, which deletes a stolen login's held mail. The figures
//! and limits are read from miab-policyd's sending DB, with the rule the daemon recorded
//! there: this host's file, or with `[store] url` the store all hosts share (then a release
//! lets the login send on every host, and each host's own hold queue is released where the
//! command runs).

use super::app_password::utc;
use super::print_json;
use crate::cli::Cli;
use crate::owner::AsOwner;
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use state::clock::unix_now;
use state::pg::sending::PgSending;
use state::sending::{Figures, LoginStatus, Sending};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, clap::Args)]
pub struct HeldArgs {
    /// Every login with figures, not only the held ones.
    #[arg(long)]
    all: bool,
    /// miab-policyd's sending DB (default STORAGE_ROOT/mail/policyd/sending.sqlite).
    #[arg(long, global = true)]
    sending_db: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<HeldCmd>,
}

#[derive(Debug, Subcommand)]
pub enum HeldCmd {
    /// The mail was the user's own: let the login send again, and release its held mail
    /// (postsuper -H); what it was released at becomes its busiest hour.
    Release {
        login: String,
        /// Postfix's configuration directory (postqueue -c, postcat -c, postsuper -c).
        #[arg(long)]
        postfix_config: Option<PathBuf>,
    },
    /// The account is stolen: delete its held mail (postsuper -d). The login stays held
    /// (suspend it with `user suspend`).
    Drop {
        login: String,
        /// Postfix's configuration directory (postqueue -c, postcat -c, postsuper -c).
        #[arg(long)]
        postfix_config: Option<PathBuf>,
    },
}

/// The sending record: this host's file (worked on as the owner of its directory,
/// miab-policyd's, never as root), or the store several hosts share.
enum Db {
    File(Sending, AsOwner),
    Shared(PgSending, tokio::runtime::Runtime),
}

impl Db {
    fn open(cli: &Cli, args: &HeldArgs) -> Result<Db> {
        let path = match &args.sending_db {
            Some(p) => p.clone(),
            None => match cli.store()? {
                Some((rt, pg)) => return Ok(Db::Shared(PgSending::new(pg), rt)),
                None => cli.layout()?.sending_db().to_owned(),
            },
        };
        let owner = AsOwner::of(path.parent().unwrap_or(Path::new("/")))?;
        match Sending::open_existing(&path) {
            Err(state::Error::Missing(p)) => bail!(
                "{}: no sending DB (is miab-policyd's containment check on? wrong --storage-root?)",
                p.display()
            ),
            r => Ok(Db::File(r?, owner)),
        }
    }

    fn statuses(&self, all: bool, now: i64) -> Result<Vec<LoginStatus>> {
        Ok(match self {
            Db::File(db, _) => db.statuses(&db.rule()?, all, now)?,
            Db::Shared(db, rt) => rt.block_on(async {
                let rule = db.rule().await?;
                db.statuses(&rule, all, now).await
            })?,
        })
    }

    /// Releases `login`; true when it was held. The DB is closed (and root is root again)
    /// before anything else runs.
    fn release(self, login: &str, now: i64) -> Result<bool> {
        Ok(match self {
            Db::File(mut db, owner) => {
                let was = db.release(login, now)?;
                drop(db);
                drop(owner);
                was
            }
            Db::Shared(db, rt) => rt.block_on(db.release(login, now))?,
        })
    }
}

pub fn run(cli: &Cli, args: &HeldArgs) -> Result<()> {
    match &args.command {
        None => list(cli, &Db::open(cli, args)?, args.all),
        Some(HeldCmd::Release {
            login,
            postfix_config,
        }) => release(cli, Db::open(cli, args)?, login, postfix_config.as_deref()),
        Some(HeldCmd::Drop {
            login,
            postfix_config,
        }) => drop_mail(cli, login, postfix_config.as_deref()),
    }
}

fn figures(f: Figures) -> String {
    format!(
        "{} messages, {} recipients, {} new recipients",
        f.messages, f.recipients, f.new_recipients
    )
}

fn list(cli: &Cli, db: &Db, all: bool) -> Result<()> {
    let now = unix_now();
    let rows = db.statuses(all, now)?;
    if cli.json {
        return print_json(&rows);
    }
    if rows.is_empty() {
        println!(
            "{}",
            if all {
                "no figures yet"
            } else {
                "no login is held"
            }
        );
        return Ok(());
    }
    for r in &rows {
        print_status(r);
    }
    Ok(())
}

fn print_status(r: &LoginStatus) {
    match r.held_since {
        Some(since) => println!(
            "{}\tHELD since {} UTC: {}",
            r.login,
            utc(since),
            r.held_reason
        ),
        None => println!("{}\tsending", r.login),
    }
    if r.held_since.is_some() {
        println!("  while held, at most: {}", figures(r.held_peak));
    }
    println!("  last hour: {}", figures(r.last_hour));
    println!("  busiest hour: {}", figures(r.busiest));
    println!("  limits: {}", figures(r.limits));
    println!(
        "  last weeks: {} messages to {} recipients",
        r.total_messages, r.total_recipients
    );
}

/// `held release`: the login released in the DB (as its owner), then, as root again, its
/// held mail.
fn release(cli: &Cli, db: Db, login: &str, postfix_config: Option<&Path>) -> Result<()> {
    let login = login.to_lowercase();
    let was_held = db.release(&login, unix_now())?;
    let ids = held_mail_of(&login, postfix_config)?;
    if !ids.is_empty() {
        postsuper(postfix_config, "-H", &ids)
            .context("the login may send again, but its held mail is still held")?;
        // postsuper moves it to the deferred queue; ask for delivery now, not at the next
        // queue run.
        for id in &ids {
            let _ = postfix_tool("postqueue", postfix_config)
                .args(["-i", id])
                .stderr(Stdio::null())
                .status();
        }
    }
    if !was_held && ids.is_empty() {
        bail!("{login} is not held and has no held mail");
    }
    journal(
        cli,
        &login,
        &ids,
        "released: by `miabctl held release`; the login may send again",
    );
    println!(
        "{login} may send again; {} held messages released",
        ids.len()
    );
    Ok(())
}

/// Records in miab-policyd's decision journal (as the owner of its directory) what became of
/// each held message, so `explain` tells it; a journal that cannot be written is said, not
/// fatal.
fn journal(cli: &Cli, login: &str, ids: &[String], what: &str) {
    let Ok(config) = cli.config() else {
        return;
    };
    let Some((_, path)) = config.journals().into_iter().find(|(d, _)| *d == "policyd") else {
        return;
    };
    let entries: Vec<state::journal::Entry> = ids
        .iter()
        .map(|id| {
            let mut e = state::journal::Entry::now("miabctl", "release");
            e.queue_id.clone_from(id);
            e.login = login.to_owned();
            e.detail = what.to_owned();
            e
        })
        .collect();
    let written = AsOwner::of(path.parent().unwrap_or(Path::new("/"))).and_then(|_owner| {
        state::journal::append(&path, entries, config.db_busy_timeout()).map_err(Into::into)
    });
    if let Err(e) = written {
        eprintln!("note: not recorded in {}: {e:#}", path.display());
    }
}

/// `held drop`: the login's held mail deleted, the login left held.
fn drop_mail(cli: &Cli, login: &str, postfix_config: Option<&Path>) -> Result<()> {
    let login = login.to_lowercase();
    let ids = held_mail_of(&login, postfix_config)?;
    if ids.is_empty() {
        bail!("{login} has no held mail");
    }
    postsuper(postfix_config, "-d", &ids)?;
    journal(
        cli,
        &login,
        &ids,
        "deleted: by `miabctl held drop`; the login stays held",
    );
    println!("{} held messages of {login} deleted", ids.len());
    Ok(())
}

/// `postsuper FLAG -` with the queue ids on its standard input.
fn postsuper(config: Option<&Path>, flag: &str, ids: &[String]) -> Result<()> {
    let mut child = postfix_tool("postsuper", config)
        .args([flag, "-"])
        .stdin(Stdio::piped())
        .spawn()
        .context("run postsuper")?;
    let mut stdin = child.stdin.take().context("postsuper's stdin")?;
    for id in ids {
        writeln!(stdin, "{id}")?;
    }
    drop(stdin);
    if !child.wait()?.success() {
        bail!("postsuper {flag} failed");
    }
    Ok(())
}

fn postfix_tool(name: &str, config: Option<&Path>) -> Command {
    let mut c = Command::new(format!("/usr/sbin/{name}"));
    if let Some(dir) = config {
        c.arg("-c").arg(dir);
    }
    c
}

/// The queue ids of held mail that `login` submitted (Postfix keeps the SASL login in each
/// queue file as the `sasl_username` attribute).
fn held_mail_of(login: &str, config: Option<&Path>) -> Result<Vec<String>> {
    let out = postfix_tool("postqueue", config)
        .arg("-j")
        .output()
        .context("run postqueue -j")?;
    if !out.status.success() {
        bail!(
            "postqueue -j failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut ids = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some("hold"), Some(id)) = (entry["queue_name"].as_str(), entry["queue_id"].as_str())
        else {
            continue;
        };
        if !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            continue;
        }
        let env = postfix_tool("postcat", config)
            .args(["-e", "-q", id])
            .stderr(Stdio::null())
            .output()
            .context("run postcat")?;
        let text = String::from_utf8_lossy(&env.stdout);
        let submitted_by = text.lines().find_map(|l| {
            l.trim()
                .strip_prefix("named_attribute: sasl_username=")
                .map(str::to_lowercase)
        });
        if submitted_by.as_deref() == Some(login) {
            ids.push(id.to_owned());
        }
    }
    Ok(ids)
}
