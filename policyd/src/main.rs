//! `miab-policyd`: flags, configuration, listener, run.

use anyhow::Context;
use clap::Parser;
use daemon::{CommonArgs, Listener, Shutdown};
use std::process::ExitCode;
use std::sync::Arc;

/// Postfix policy service: greylisting, Spamhaus DNSBL/DBL and sender-login enforcement.
#[derive(Debug, Parser)]
#[command(name = "miab-policyd", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    daemon::init_logging();
    match start(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(args: Args) -> anyhow::Result<()> {
    let mut config = args.common.load()?;
    if let Some(listen) = args.common.listen {
        config.policyd.listen = listen;
    }
    let unix = config
        .policyd
        .unix_options()
        .map_err(anyhow::Error::msg)
        .context("[policyd] socket_mode")?;
    // One thread: a policy answer is microseconds of work, and the greylist store's group
    // commit runs inline, where a hand-off to another thread and back costs more than the
    // commit. User DB reads still run on the blocking pool.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (state, report) = policyd::State::open(&config)?;
        let listener = Listener::bind(&config.policyd.listen, &unix)
            .with_context(|| format!("listen on {}", config.policyd.listen))?;
        tracing::info!(
            listen = %listener.local_addr()?,
            checks = ?config.policyd.checks,
            greylist_db = ?report.greylist_db,
            greylist_entries = ?report.greylist_entries,
            whitelist_entries = report.whitelist_entries,
            "miab-policyd ready"
        );
        let (trigger, shutdown) = Shutdown::new();
        daemon::shutdown_on_signals(trigger)?;
        policyd::run(listener, Arc::new(state), shutdown).await?;
        tracing::info!("miab-policyd stopped");
        Ok(())
    })
}
