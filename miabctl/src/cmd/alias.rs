//! `alias` and `kick`: MIAB's aliases (list, add, remove) and the automatic aliases it keeps
//! for every mail domain.

use super::{box_env, group_by_domain, hostname_for_sorting, open, print_json, print_outcome};
use crate::cli::Cli;
use anyhow::Result;
use clap::Subcommand;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use userdb::{Access, Alias, UserDb, address, sort};

#[derive(Debug, Subcommand)]
pub enum AliasCmd {
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

/// One alias of MIAB's `get_mail_aliases_ex`, addresses also shown in Unicode.
#[derive(Debug, Serialize)]
struct AliasRow {
    address: String,
    address_display: String,
    auto: bool,
    forwards_to: Vec<String>,
    permitted_senders: Option<Vec<String>>,
}

/// A domain's aliases, as `get_mail_aliases_ex` groups them.
#[derive(Debug, Serialize)]
struct DomainAliases {
    aliases: Vec<AliasRow>,
    domain: String,
}

/// `alias` without a subcommand lists.
pub fn run(cli: &Cli, cmd: Option<&AliasCmd>) -> Result<()> {
    match cmd.unwrap_or(&AliasCmd::List) {
        AliasCmd::List => {
            let db = open(cli, Access::ReadOnly)?;
            let primary = hostname_for_sorting(cli);
            let rows = alias_rows(&db, &primary)?;
            if cli.json {
                return print_json(&by_domain(rows, &primary));
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

/// `kick`: the automatic aliases regenerated, each change on a line.
pub fn kick(cli: &Cli) -> Result<()> {
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
    Ok(())
}

/// MIAB's `get_mail_aliases`: aliases and auto-aliases, one row per address (where both tables
/// have an address, the row SQLite's UNION would deliver last wins, as in MIAB's dict).
fn alias_rows(db: &UserDb, primary_hostname: &str) -> Result<Vec<Alias>> {
    let mut all = db.aliases()?;
    all.sort_by(|a, b| {
        (&a.source, &a.destination, &a.permitted_senders, a.auto).cmp(&(
            &b.source,
            &b.destination,
            &b.permitted_senders,
            b.auto,
        ))
    });
    let mut by_source: BTreeMap<String, Alias> = BTreeMap::new();
    for a in all {
        by_source.insert(a.source.clone(), a);
    }
    let keys: Vec<String> = by_source.keys().cloned().collect();
    Ok(sort::sort_email_addresses(&keys, primary_hostname)
        .into_iter()
        .filter_map(|k| by_source.remove(&k))
        .collect())
}

/// MIAB's `get_mail_aliases_ex`: by domain, each domain's own aliases before the automatic
/// ones; the automatic catch-alls (`@domain`) left out.
fn by_domain(rows: Vec<Alias>, primary_hostname: &str) -> Vec<DomainAliases> {
    let pretty = |s: &str| address::prettify_idn_email_address(s.trim());
    let items = rows
        .into_iter()
        .filter(|a| !(a.auto && a.source.starts_with('@')))
        .map(|a| {
            let row = AliasRow {
                address_display: pretty(&a.source),
                forwards_to: a.destination.split(',').map(pretty).collect(),
                permitted_senders: a
                    .permitted_senders
                    .as_ref()
                    .map(|p| p.split(',').map(pretty).collect()),
                auto: a.auto,
                address: a.source.clone(),
            };
            (a.source, row)
        });
    group_by_domain(items, primary_hostname)
        .into_iter()
        .map(|(domain, mut aliases)| {
            aliases.sort_by(|a, b| (a.auto, &a.address).cmp(&(b.auto, &b.address)));
            DomainAliases { aliases, domain }
        })
        .collect()
}
