//! `sidecars`: the switch between MIAB's own daemons and the sidecars; the steps are in
//! [`crate::sidecars`].

use crate::cli::Cli;
use crate::sidecars::{self, Sys, backup, figures, status};
use anyhow::{Result, bail};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum SidecarsCmd {
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

pub fn run(cli: &Cli, cmd: &SidecarsCmd) -> Result<()> {
    let sys = Sys::live(cli.layout()?);
    match cmd {
        SidecarsCmd::Enable => sidecars::enable(&sys),
        SidecarsCmd::Disable => sidecars::disable(&sys),
        SidecarsCmd::Repair => sidecars::repair(&sys),
        SidecarsCmd::BackupHold => backup::hold(&sys),
        SidecarsCmd::BackupRelease => backup::release(&sys),
        SidecarsCmd::Status => {
            let mut findings = status::check(&sys);
            if sys.enabled() {
                findings.extend(figures::check(&cli.config()?));
            }
            if !status::print(&findings) {
                bail!("some parts need attention (see the fix: lines)");
            }
            Ok(())
        }
    }
}
