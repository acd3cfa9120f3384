//! What every daemon's `main` does, in one place: load the configuration and the daemon's
//! section, apply `--listen`, start the runtime, open the decision journal and the daemon's state, bind every socket the
//! section declares, log "ready", serve until SIGTERM or SIGINT, and turn any failure into one
//! error line and a non-zero exit.

use crate::cli::CommonArgs;
use crate::config::{Config, Loaded, Section};
use crate::listen::Listener;
use crate::serve::{Shutdown, shutdown_on_signals};
use std::fmt::{Display, Write};
use std::future::Future;
use std::io;
use std::process::ExitCode;
use std::sync::Arc;

/// Which tokio runtime the daemon runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// One worker per core.
    MultiThread,
    /// Everything on the main thread (blocking pools still exist).
    CurrentThread,
}

/// The sockets a daemon serves, bound by [`launch`] as its section declares them.
#[derive(Debug)]
pub struct Listeners {
    /// The section's `listen`.
    pub main: Listener,
    more: Vec<(&'static str, Listener)>,
}

impl Listeners {
    /// The socket of another listen setting, if the section declared one.
    pub fn take(&mut self, setting: &str) -> Option<Listener> {
        let i = self.more.iter().position(|(s, _)| *s == setting)?;
        Some(self.more.swap_remove(i).1)
    }
}

/// Runs a daemon with section `S`. `adjust` applies the daemon's own flags to its section;
/// `open` builds its state inside the runtime (given its own copy of the configuration) and
/// returns it with a summary for the "ready" line; `run` serves.
pub fn launch<S, St, E, Open, Fut>(
    name: &str,
    runtime: Runtime,
    common: &CommonArgs,
    adjust: impl FnOnce(&mut Loaded<S>),
    open: impl FnOnce(Config, Loaded<S>) -> Open,
    run: impl FnOnce(Listeners, Arc<St>, Shutdown) -> Fut,
) -> ExitCode
where
    S: Section + Clone,
    E: Display,
    Open: Future<Output = Result<(St, String), E>>,
    Fut: Future<Output = io::Result<()>>,
{
    let fail = |what: String| {
        tracing::error!("{what}");
        ExitCode::FAILURE
    };
    let loaded = common
        .load()
        .and_then(|config| config.section::<S>().map(|s| (config, s)));
    let (config, mut section) = match loaded {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    for setting in section.settings.ignored(&section.server_keys) {
        tracing::warn!(
            "setting {}.{setting} is not used and is ignored; it can be removed",
            S::NAME
        );
    }
    if let Some(listen) = &common.listen {
        section.server.listen = listen.clone();
    }
    adjust(&mut section);
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
        if let Some(path) = &section.server.journal.path {
            // The journal is for people reading it later: without it the daemon still decides.
            if let Err(e) = crate::journal::open(
                path,
                section.server.journal.keep(),
                config.db_busy_timeout(),
            ) {
                tracing::warn!(journal = %path.display(), error = %e, "no decision journal");
            }
        }
        let (state, summary) = match open(config.clone(), section.clone()).await {
            Ok(s) => s,
            Err(e) => return fail(e.to_string()),
        };
        let mut bound = Vec::new();
        let mut where_ = String::new();
        for e in section.endpoints() {
            if e.create_parent
                && let crate::ListenAddr::Unix(path) = &e.addr
                && let Some(dir) = path.parent()
                && let Err(err) = std::fs::create_dir_all(dir)
            {
                return fail(format!("[{}] {}: {}: {err}", S::NAME, e.setting, e.addr));
            }
            let l = match Listener::bind(&e.addr, &e.unix) {
                Ok(l) => l,
                Err(err) => return fail(format!("listen on {} ({}): {err}", e.addr, e.setting)),
            };
            let at = l
                .local_addr()
                .map_or_else(|_| e.addr.to_string(), |a| a.to_string());
            if bound.is_empty() {
                where_ = at;
            } else {
                let _ = write!(where_, " {}={at}", e.setting);
            }
            bound.push((e.setting, l));
        }
        let mut bound = bound.into_iter();
        let Some((_, main)) = bound.next() else {
            return fail("no socket to listen on".into());
        };
        let mut listeners = Listeners {
            main,
            more: bound.collect(),
        };
        tracing::info!(listen = %where_, "{name} ready {summary}");
        let (trigger, shutdown) = Shutdown::new();
        if let Err(e) = shutdown_on_signals(trigger) {
            return fail(format!("signal handlers: {e}"));
        }
        if let Some(m) = listeners.take("metrics_listen") {
            // A scraper gets a handful of connections and the section's I/O timeout; the
            // daemon's own sockets keep theirs.
            let limits = crate::serve::Limits {
                max_connections: 8,
                drain_timeout: std::time::Duration::from_secs(1),
                ..section.server.limits.clone()
            };
            tokio::spawn(crate::metrics::serve(m, limits, shutdown.clone()));
        }
        let served = run(listeners, Arc::new(state), shutdown).await;
        crate::journal::flush();
        match served {
            Ok(()) => {
                tracing::info!("{name} stopped");
                ExitCode::SUCCESS
            }
            Err(e) => fail(format!("serving: {e}")),
        }
    })
}
