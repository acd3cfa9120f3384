//! `miab-lookup`: flags, configuration, listener, run.

use anyhow::Context;
use clap::Parser;
use daemon::{CommonArgs, Listener, Shutdown};
use std::process::ExitCode;
use std::sync::Arc;

/// Postfix socketmap service for Mail-in-a-Box's domains, mailboxes, aliases and sender logins.
#[derive(Debug, Parser)]
#[command(name = "miab-lookup", version)]
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
        config.lookup.listen = listen;
    }
    let unix = config
        .lookup
        .unix_options()
        .map_err(anyhow::Error::msg)
        .context("[lookup] socket_mode")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let state = lookup::State::open(&config)?;
        let listener = Listener::bind(&config.lookup.listen, &unix)
            .with_context(|| format!("listen on {}", config.lookup.listen))?;
        tracing::info!(
            listen = %listener.local_addr()?,
            db = %config.db_path().display(),
            "miab-lookup ready"
        );
        let (trigger, shutdown) = Shutdown::new();
        daemon::shutdown_on_signals(trigger)?;
        lookup::run(listener, Arc::new(state), shutdown).await?;
        tracing::info!("miab-lookup stopped");
        Ok(())
    })
}
