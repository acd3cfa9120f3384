//! The command line: global options and the top-level commands. Each command's own
//! subcommands and arguments live with its code, in [`crate::cmd`].

use crate::cmd::alias::AliasCmd;
use crate::cmd::dns::{DkimCmd, DnsCmd, DomainCmd};
use crate::cmd::explain::ExplainArgs;
use crate::cmd::held::HeldArgs;
use crate::cmd::sidecars::SidecarsCmd;
use crate::cmd::user::UserCmd;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "miabctl",
    version,
    about = "Manage Mail-in-a-Box users and aliases in the user DB",
    after_help = "Removing a mail user does not delete their mail folders on disk. It only prevents IMAP/SMTP login."
)]
pub struct Cli {
    /// The sidecars' configuration, whose storage layout (every file's path) miabctl shares
    /// with the daemons (default /etc/miab/sidecars.toml if it exists).
    #[arg(long, env = "MIAB_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Mail-in-a-Box's STORAGE_ROOT; the DB is STORAGE_ROOT/mail/users.sqlite (default: the
    /// configuration's storage_root, /home/user-data).
    #[arg(long, env = "MIAB_STORAGE_ROOT", global = true)]
    pub storage_root: Option<PathBuf>,
    /// The box's PRIMARY_HOSTNAME (default: /etc/mailinabox.conf, else the system host name).
    #[arg(long, env = "MIAB_HOSTNAME", global = true)]
    pub hostname: Option<String>,
    /// Print listings as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Where every file lives, as the daemons see it: the configuration's layout, under
    /// `--storage-root` if given.
    pub fn layout(&self) -> anyhow::Result<daemon::Layout> {
        Ok(self.config()?.layout())
    }

    /// The store several hosts share, if the configuration names one, with a runtime to ask it
    /// on.
    pub fn store(
        &self,
    ) -> anyhow::Result<Option<(tokio::runtime::Runtime, std::sync::Arc<state::pg::Pg>)>> {
        let store = self.config()?.store;
        let Some(url) = &store.url else {
            return Ok(None);
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let pg = rt.block_on(async { state::pg::Pg::new(url, store.limits()) })?;
        Ok(Some((rt, std::sync::Arc::new(pg))))
    }

    /// The daemons' configuration, under `--storage-root` if given.
    pub fn config(&self) -> anyhow::Result<daemon::Config> {
        let mut config = daemon::Config::load(self.config.as_deref())?;
        if let Some(root) = &self.storage_root {
            config.storage_root.clone_from(root);
        }
        Ok(config)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
    /// Logins whose outgoing mail miab-policyd holds, with their figures; `held release LOGIN`
    /// lets one send again.
    Held(HeldArgs),
    /// The story of a message (by Postfix queue id) or of an address: every daemon's
    /// decisions with their reasons, and Postfix's own log lines. Exit code 1 when nothing is
    /// known about it.
    Explain(ExplainArgs),
    /// Switch a live Mail-in-a-Box box to the sidecar daemons and back (run as root).
    Sidecars {
        #[command(subcommand)]
        command: SidecarsCmd,
    },
}
