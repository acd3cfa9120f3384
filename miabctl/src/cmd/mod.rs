//! One module per command, each with its own subcommands and arguments; here what they share:
//! opening the DB, the box's host name, printing an outcome or JSON, grouping by domain.
//!
//! Listings print typed rows. Their fields are declared in name order because that is the
//! order this JSON has always had (and Flask's `jsonify`, which MIAB's API uses, sorts keys).

pub mod alias;
pub mod app_password;
pub mod dns;
pub mod explain;
pub mod held;
pub mod mfa;
pub mod sidecars;
pub mod user;

use crate::cli::Cli;
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::io::Write;
use userdb::{Access, BoxEnv, Outcome, UserDb, address, sort};

/// `init`: a new, empty user DB.
pub fn init(cli: &Cli) -> Result<()> {
    let path = cli.layout()?.users_db();
    UserDb::create(&path)?;
    println!("created {}", path.display());
    Ok(())
}

/// The user DB, with a hint when it is not where `--storage-root` says.
fn open(cli: &Cli, access: Access) -> Result<UserDb> {
    match UserDb::open(cli.layout()?.users_db(), access) {
        Err(userdb::Error::Missing(p)) => bail!(
            "user database not found: {} (wrong --storage-root? `miabctl --storage-root DIR init` creates a new one)",
            p.display()
        ),
        r => Ok(r?),
    }
}

/// `PRIMARY_HOSTNAME` by the rule every binary shares (`daemon::boxconf`): flag or env, then
/// MIAB's /etc/mailinabox.conf, then the system's name.
fn box_env(cli: &Cli) -> Result<BoxEnv> {
    let name = daemon::boxconf::primary_hostname(cli.hostname.as_deref())
        .context("cannot tell the box's hostname; pass --hostname")?;
    Ok(BoxEnv {
        primary_hostname: name,
    })
}

/// Listings only need the hostname to order domains; never fail a listing over it.
fn hostname_for_sorting(cli: &Cli) -> String {
    box_env(cli).map(|e| e.primary_hostname).unwrap_or_default()
}

fn print_outcome(o: &Outcome) {
    println!("{}", o.text());
}

/// `value` as pretty JSON and a newline.
fn print_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
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
