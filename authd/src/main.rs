//! `miab-authd`: flags, configuration, listener, run.

use anyhow::Context;
use clap::Parser;
use daemon::{CommonArgs, Listener, Shutdown};
use std::process::ExitCode;
use std::sync::Arc;

/// Dovecot auth-client protocol over the Mail-in-a-Box user DB, for Postfix SMTP AUTH.
#[derive(Debug, Parser)]
#[command(name = "miab-authd", version)]
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
        config.authd.listen = listen;
    }
    let unix = config
        .authd
        .unix_options()
        .map_err(anyhow::Error::msg)
        .context("[authd] socket_mode")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let state = authd::State::open(&config)?;
        let listener = Listener::bind(&config.authd.listen, &unix)
            .with_context(|| format!("listen on {}", config.authd.listen))?;
        tracing::info!(
            listen = %listener.local_addr()?,
            db = %config.db_path().display(),
            "miab-authd ready"
        );
        let (trigger, shutdown) = Shutdown::new();
        daemon::shutdown_on_signals(trigger)?;
        authd::run(listener, Arc::new(state), shutdown).await?;
        tracing::info!("miab-authd stopped");
        Ok(())
    })
}
