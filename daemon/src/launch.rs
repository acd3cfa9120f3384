//! What every daemon's `main` does, in one place: load the configuration, apply `--listen`,
//! start the runtime, open the daemon's state, bind, log "ready", serve until SIGTERM or
//! SIGINT, and turn any failure into one error line and a non-zero exit.

use crate::cli::CommonArgs;
use crate::config::Config;
use crate::listen::{ListenAddr, Listener, UnixOptions};
use crate::serve::{Shutdown, shutdown_on_signals};
use std::fmt::Display;
use std::future::Future;
use std::io;
use std::process::ExitCode;
use std::sync::Arc;

/// A daemon's section of the configuration, as far as starting it goes.
pub trait Section {
    /// The section's name, for error messages.
    fn name(&self) -> &'static str;
    /// Where it listens.
    fn listen_mut(&mut self) -> &mut ListenAddr;
    /// Its UNIX socket settings, checked.
    fn unix_options(&self) -> Result<UnixOptions, String>;
}

/// Which tokio runtime the daemon runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// One worker per core.
    MultiThread,
    /// Everything on the main thread (blocking pools still exist).
    CurrentThread,
}

/// Runs a daemon. `section` picks its configuration section; `open` builds its state inside
/// the runtime and returns it with a summary for the "ready" line; `run` serves.
pub fn launch<S, E, Fut>(
    name: &str,
    runtime: Runtime,
    common: &CommonArgs,
    section: fn(&mut Config) -> &mut dyn Section,
    open: impl FnOnce(&Config) -> Result<(S, String), E>,
    run: impl FnOnce(Listener, Arc<S>, Shutdown) -> Fut,
) -> ExitCode
where
    E: Display,
    Fut: Future<Output = io::Result<()>>,
{
    let fail = |what: String| {
        tracing::error!("{what}");
        ExitCode::FAILURE
    };
    let mut config = match common.load() {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    for name in config.obsolete_settings() {
        tracing::warn!("setting {name} is no longer used and is ignored; it can be removed");
    }
    if let Some(listen) = &common.listen {
        *section(&mut config).listen_mut() = listen.clone();
    }
    let sec = section(&mut config);
    let (listen, unix) = match sec.unix_options() {
        Ok(u) => (sec.listen_mut().clone(), u),
        Err(e) => return fail(format!("[{}] socket_mode: {e}", sec.name())),
    };
    let built = match runtime {
        Runtime::MultiThread => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        Runtime::CurrentThread => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    };
    let rt = match built {
        Ok(rt) => rt,
        Err(e) => return fail(format!("tokio runtime: {e}")),
    };
    rt.block_on(async {
        let (state, summary) = match open(&config) {
            Ok(s) => s,
            Err(e) => return fail(e.to_string()),
        };
        let listener = match Listener::bind(&listen, &unix) {
            Ok(l) => l,
            Err(e) => return fail(format!("listen on {listen}: {e}")),
        };
        let bound = listener
            .local_addr()
            .map_or_else(|_| listen.to_string(), |a| a.to_string());
        tracing::info!(listen = %bound, "{name} ready {summary}");
        let (trigger, shutdown) = Shutdown::new();
        if let Err(e) = shutdown_on_signals(trigger) {
            return fail(format!("signal handlers: {e}"));
        }
        match run(listener, Arc::new(state), shutdown).await {
            Ok(()) => {
                tracing::info!("{name} stopped");
                ExitCode::SUCCESS
            }
            Err(e) => fail(format!("serving: {e}")),
        }
    })
}
