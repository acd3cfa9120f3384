//! Plumbing shared by the sidecar daemons: the configuration file with its embedded defaults
//! (the shared part, and the reading of each daemon's own section),
//! the common flags, listeners in Postfix notation, the accept loop with its limits and graceful
//! shutdown, the metrics endpoint, the decision journal, and logging.

pub mod boxconf;
pub mod cli;
pub mod config;
#[cfg(feature = "dns")]
pub mod dns;
pub mod journal;
pub mod launch;
pub mod layout;
pub mod listen;
pub mod man;
pub mod metrics;
pub mod net;
pub mod serve;
pub mod session;

pub use cli::CommonArgs;
pub use config::{Config, ConfigError, DnsConfig, Endpoint, Loaded, Section, Server, StoreConfig};
pub use launch::{Listeners, Runtime, launch};
pub use layout::Layout;

/// The directory this host answers from: MIAB's file, or, on a host that reads it from the
/// store (`[store] url` without `publish`), the store's mirror; with the store's pool.
#[cfg(feature = "directory")]
pub async fn open_directory(
    config: &Config,
) -> Result<(directory::Live, Option<std::sync::Arc<state::pg::Pg>>), userdb::Error> {
    directory::watch_reads(metrics::directory_read);
    let pg = config
        .store
        .connect()
        .await
        .map_err(|e| userdb::Error::Internal(format!("store: {e}")))?;
    let from_store = match (&pg, &config.store.url) {
        (Some(pg), Some(url)) if config.store.directory_from_store() => {
            Some((std::sync::Arc::clone(pg), url.as_str()))
        }
        _ => None,
    };
    let dir = directory::pg::open_for_host(&config.db_path(), config.db_busy_timeout(), from_store)
        .await?;
    Ok((dir, pg))
}
pub use listen::{ListenAddr, Listener, Peer, Stream, UnixOptions};
pub use serve::{
    Conn, Limits, Periodic, Shutdown, Trigger, on_reload, periodic, reloads, serve,
    shutdown_on_signals, timed,
};

/// Logs to stderr (journald adds timestamps); `RUST_LOG` overrides the `info` default.
/// Colours only on a terminal: the journal and log files get plain text. Every event is one
/// line whatever its fields hold: a login or header value with a line break cannot write a
/// line of its own (say, the brake line fail2ban acts on).
pub fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || OneLine {
            inner: std::io::stderr(),
            ansi,
        })
        .with_ansi(ansi)
        .without_time()
        .try_init();
}

/// A log writer that escapes every control character of an event but its final line break
/// (the formatter writes each event in one piece).
#[derive(Debug)]
pub struct OneLine<W> {
    pub inner: W,
    /// Let ESC through, for the formatter's own colours on a terminal.
    pub ansi: bool,
}

impl<W: std::io::Write> std::io::Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let body = buf.strip_suffix(b"\n").unwrap_or(buf);
        let mut out = Vec::with_capacity(buf.len() + 8);
        for &b in body {
            match b {
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                0x1b if self.ansi => out.push(b),
                b'\t' => out.push(b),
                0..=0x1f | 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
                _ => out.push(b),
            }
        }
        if body.len() < buf.len() {
            out.push(b'\n');
        }
        self.inner.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::OneLine;
    use std::io::Write;

    #[test]
    fn an_event_stays_one_line() {
        let mut w = OneLine {
            inner: Vec::new(),
            ansi: false,
        };
        w.write_all(b" INFO authd: authentication failed login=x\nWARN authentication brake: rip=192.0.2.9\r\x1b[31m\n")
            .unwrap();
        assert_eq!(
            String::from_utf8(w.inner).unwrap(),
            " INFO authd: authentication failed login=x\\nWARN authentication brake: rip=192.0.2.9\\r\\x1b[31m\n"
        );
    }
}
