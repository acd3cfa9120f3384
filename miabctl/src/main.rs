//! `miabctl`: Mail-in-a-Box's `management/cli.py` user and alias commands, working on the user
//! DB directly. Same texts and output formats as cli.py, plus `--json` on every listing.
//!
//! Exit codes: 0 ok, 1 refused (the reason on stderr), 2 usage.
//!
//! - [`cli`]: the command line; [`cmd`]: one module per command;
//! - [`dkim`]: DKIM keys and DNS records; [`sidecars`]: the switch to the sidecar daemons;
//! - [`owner`]: root in a daemon's directory acts as its owner and follows no link.

use anyhow::Result;
use cli::{Cli, Command};
use std::process::ExitCode;

mod cli;
mod cmd;
mod dkim;
mod owner;
mod sidecars;

fn main() -> ExitCode {
    let cli: Cli = daemon::man::parse_or_write(true);
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: &Cli) -> Result<()> {
    match &cli.command {
        Command::Init => cmd::init(cli),
        Command::User { command } => cmd::user::run(cli, command.as_ref()),
        Command::Alias { command } => cmd::alias::run(cli, command.as_ref()),
        Command::Kick => cmd::alias::kick(cli),
        Command::Domain { command } => cmd::dns::domain(cli, command),
        Command::Dkim { command } => cmd::dns::dkim(cli, command),
        Command::Dns { command } => cmd::dns::dns(cli, command),
        Command::Held(args) => cmd::held::run(cli, args),
        Command::Explain(args) => cmd::explain::run(cli, args),
        Command::Sidecars { command } => cmd::sidecars::run(cli, command),
    }
}
