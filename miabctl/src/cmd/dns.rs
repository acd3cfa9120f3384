//! `domain list`, `dkim generate` and `dns records`: the box's mail domains, the keys
//! miab-milter signs their mail with, and the TXT records DNS must publish for them.

use super::{hostname_for_sorting, open, print_json};
use crate::cli::Cli;
use crate::dkim;
use anyhow::Result;
use clap::Subcommand;
use serde::Serialize;
use userdb::{Access, sort};

#[derive(Debug, Subcommand)]
pub enum DomainCmd {
    /// The domains the box handles mail for.
    List,
}

#[derive(Debug, Subcommand)]
pub enum DkimCmd {
    /// Create the key miab-milter reads (RSA 2048, PKCS#8 PEM, mode 0600; default
    /// STORAGE_ROOT/mail/dkim/mail.private) and mail.txt next to it, as opendkim-genkey does;
    /// with --ed25519 also an Ed25519 key (selector "ed"; default ed25519.private beside it).
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
pub enum DnsCmd {
    /// Print the TXT records (SPF, DKIM, DMARC) for one domain, or for every mail domain.
    Records { domain: Option<String> },
}

/// One record as `--json` prints it, named as in MIAB's DNS API.
#[derive(Debug, Serialize)]
struct RecordRow<'a> {
    qname: &'a str,
    rtype: &'static str,
    value: &'a str,
}

pub fn domain(cli: &Cli, cmd: &DomainCmd) -> Result<()> {
    match cmd {
        DomainCmd::List => {
            let db = open(cli, Access::ReadOnly)?;
            let domains: Vec<String> = db.mail_domains()?.into_iter().collect();
            let sorted = sort::sort_domains(&domains, &hostname_for_sorting(cli));
            if cli.json {
                return print_json(&sorted);
            }
            for d in sorted {
                println!("{d}");
            }
        }
    }
    Ok(())
}

pub fn dkim(cli: &Cli, cmd: &DkimCmd) -> Result<()> {
    match cmd {
        DkimCmd::Generate {
            ed25519,
            owner,
            force,
        } => {
            for path in dkim::generate(&cli.layout()?, *ed25519, owner.as_deref(), *force)? {
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
    }
    Ok(())
}

pub fn dns(cli: &Cli, cmd: &DnsCmd) -> Result<()> {
    match cmd {
        DnsCmd::Records { domain } => {
            let domains = match domain {
                Some(d) => vec![d.clone()],
                None => open(cli, Access::ReadOnly)?
                    .mail_domains()?
                    .into_iter()
                    .collect(),
            };
            let layout = cli.layout()?;
            let mut records = Vec::new();
            for d in &domains {
                records.extend(dkim::records(d, &layout)?);
            }
            if cli.json {
                let rows: Vec<RecordRow<'_>> = records
                    .iter()
                    .map(|(qname, value)| RecordRow {
                        qname,
                        rtype: "TXT",
                        value,
                    })
                    .collect();
                return print_json(&rows);
            }
            for (name, value) in records {
                println!("{name}\tIN\tTXT\t{}", dkim::quoted(&value));
            }
        }
    }
    Ok(())
}
