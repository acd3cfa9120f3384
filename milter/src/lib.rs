//! `miab-milter`: what MIAB's OpenDKIM + OpenDMARC pair does, in one milter (indymilter).
//!
//! - [`keys`]: the signing keys.
//! - [`settings`]: the `[milter]` section.
//! - [`results`]: the Authentication-Results texts.
//! - `message`: one message's headers and body, streamed into signers or body hashers, so
//!   memory stays bounded whatever the message size.
//! - `callbacks`: indymilter's callbacks, each a thin step into the connection's `Session`.
//! - [`conns`]: the connection cap and the per-stage timeouts.
//! - [`run`]: serves the callbacks over the listeners until shutdown.
//!
//! Mail from an authenticated session (`{auth_authen}`) is signed when its From: domain is one
//! of the box's mail domains (read live from the user DB); mail from a trusted client without
//! a login only where `message::origin`'s rule allows (the box's own names, automatic replies,
//! never mail that came in from outside unproven); all other mail
//! is verified (DKIM, SPF, DMARC) and gets one Authentication-Results header per method.
//! Authentication-Results headers that came with the message and claim our authserv-id (or
//! read as ours to a raw-text reader) are removed. Incoming mail without exactly one readable
//! From: is refused; DMARC failures are refused only under `dmarc_reject`.

mod callbacks;
pub mod conns;
pub mod keys;
mod message;
mod metrics;
pub mod results;
pub mod settings;

use daemon::net::Cidr;
use daemon::{Config, Listener, Loaded, Shutdown};
use directory::Live;
use indymilter::{Actions, Callbacks, Config as MilterLoop};
use mail_auth::MessageAuthenticator;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// What every connection shares.
pub struct State {
    pub(crate) hostname: String,
    keys: std::sync::RwLock<Arc<keys::Keyring>>,
    /// Where the keys are read from, for a reload.
    key_paths: (std::path::PathBuf, Option<std::path::PathBuf>),
    pub(crate) dir: Live,
    pub(crate) auth: MessageAuthenticator,
    pub(crate) rsa_selector: String,
    pub(crate) ed25519_selector: String,
    pub(crate) sign_headers: Vec<String>,
    pub(crate) trusted: Vec<Cidr>,
    /// The box's hostname and `sign_local_domains` (lowercase).
    pub(crate) own_domains: Vec<String>,
    pub(crate) verify: bool,
    pub(crate) dmarc_reject: bool,
    pub(crate) verify_timeout: Duration,
    pub(crate) max_header_bytes: usize,
    pub(crate) max_signatures: usize,
    pub(crate) from_header: settings::Mode,
    pub(crate) delims: userdb::Delimiters,
    max_connections: usize,
    idle_timeout: Duration,
    drain_timeout: Duration,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("hostname", &self.hostname)
            .field("keys", &self.keys)
            .field("verify", &self.verify)
            .finish_non_exhaustive()
    }
}

/// Why the milter could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("signing key: {0}")]
    Key(#[from] keys::KeyError),
    #[error("user DB: {0}")]
    UserDb(#[from] userdb::Error),
    #[error("DNS resolver: {0}")]
    Dns(String),
}

impl State {
    /// Loads the keys, opens the DB and builds the resolver from `config`.
    pub async fn open(
        config: &Config,
        section: &Loaded<settings::Settings>,
    ) -> Result<State, StartError> {
        let m = &section.settings;
        let key = m.key_file.clone().unwrap_or_default();
        let keys = keys::Keyring::load(&key, m.ed25519_key_file.as_deref())?;
        let key_paths = (key, m.ed25519_key_file.clone());
        let (dir, _) = daemon::open_directory(config).await?;
        let limits = &section.server.limits;
        Ok(State {
            hostname: config.box_hostname(),
            keys: std::sync::RwLock::new(Arc::new(keys)),
            key_paths,
            dir,
            auth: daemon::dns::authenticator(&config.dns).map_err(StartError::Dns)?,
            rsa_selector: m.selector.clone(),
            ed25519_selector: m.ed25519_selector.clone(),
            sign_headers: m.sign_headers.clone(),
            trusted: m.trusted_hosts.clone(),
            own_domains: std::iter::once(config.box_hostname())
                .chain(m.sign_local_domains.iter().cloned())
                .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
            verify: m.verify,
            dmarc_reject: m.dmarc_reject,
            verify_timeout: Duration::from_secs(m.verify_timeout_secs),
            max_header_bytes: m.max_header_bytes,
            max_signatures: m.max_signatures,
            from_header: m.from_header,
            delims: userdb::Delimiters::new(config.recipient_delimiter.clone()),
            max_connections: limits.max_connections,
            idle_timeout: limits.idle_timeout,
            drain_timeout: limits.drain_timeout,
        })
    }

    /// The keys in force.
    pub(crate) fn keyring(&self) -> Arc<keys::Keyring> {
        match self.keys.read() {
            Ok(k) => Arc::clone(&k),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    /// Reads the keys again (SIGHUP); keeps the old ones if the new ones do not load.
    pub fn reload_keys(&self) {
        let (rsa, ed25519) = &self.key_paths;
        match keys::Keyring::load(rsa, ed25519.as_deref()) {
            Ok(k) => {
                if let Ok(mut keys) = self.keys.write() {
                    *keys = Arc::new(k);
                }
                tracing::info!("signing keys read again");
            }
            Err(e) => {
                tracing::error!(error = %e, "signing keys unreadable; keeping the ones in use");
            }
        }
    }

    pub(crate) fn is_trusted(&self, ip: IpAddr) -> bool {
        daemon::net::any_contains(&self.trusted, ip)
    }
}

/// The body of the fuzz target for the Authentication-Results writer: whatever a message or
/// session brings as HELO, MAIL FROM domain or From: domain, our header values stay one line,
/// and each holds exactly one `method=result` outside quoted strings.
pub fn fuzz_results(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    // Reading a hostile Authentication-Results value for its authserv-id never panics.
    results::claims_authserv_id(&text, "box.example.com");
    let v = results::pvalue(&text);
    assert!(v.is_ascii() && !v.contains(['\r', '\n']), "{v:?}");
    for header in [
        results::spf_header("box.example.com", mail_auth::SpfResult::Pass, &text, "h"),
        results::spf_header("box.example.com", mail_auth::SpfResult::None, "", &text),
    ]
    .into_iter()
    .chain(results::timed_out(
        "box.example.com",
        &text,
        &text,
        &[text.to_string()],
    )) {
        assert!(!header.contains(['\r', '\n']), "{header:?}");
        assert_eq!(
            results::unquoted(&header).matches(';').count(),
            1,
            "{header:?}"
        );
    }
}

/// The body of the fuzz target for the connection watcher's frame follower: whatever the
/// bytes and wherever a read splits them, the stage is the same and nothing panics.
pub fn fuzz_frames(data: &[u8]) {
    let whole = conns::Frames::default().feed(data, conns::Stage::New);
    let at = data
        .first()
        .map_or(0, |&b| usize::from(b) % (data.len() + 1));
    let mut split = conns::Frames::default();
    let stage = split.feed(&data[..at], conns::Stage::New);
    assert_eq!(
        split.feed(&data[at..], stage),
        whole,
        "{data:?} split at {at}"
    );
}

/// Serves `listener` with `cbs` until `shutdown` fires, its connections watched by a table
/// of `cap` (see [`conns`]); messages in progress then have `drain` to finish (indymilter
/// lets a running callback complete, and a DNS check may take up to `verify_timeout_secs`).
async fn serve<T: Send + 'static>(
    listener: Listener,
    cbs: Callbacks<T>,
    config: MilterLoop,
    limits: (usize, Duration),
    shutdown: Shutdown,
    drain: Duration,
) -> std::io::Result<()> {
    let label = listener
        .local_addr()
        .map_or_else(|_| "unknown".into(), |a| a.to_string());
    let table = conns::Table::new(limits.0, limits.1, &label);
    table.spawn_sweeper();
    let stop = {
        let shutdown = shutdown.clone();
        async move { shutdown.wait().await }
    };
    let deadline = async move {
        shutdown.wait().await;
        tokio::time::sleep(drain).await;
    };
    type Run = std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>>>>;
    let (run, guard): (Run, _) = match listener {
        Listener::Tcp(l) => (
            Box::pin(indymilter::run(
                conns::Watched::new(l, table),
                cbs,
                config,
                stop,
            )),
            None,
        ),
        Listener::Unix { listener, guard } => (
            Box::pin(indymilter::run(
                conns::Watched::new(listener, table),
                cbs,
                config,
                stop,
            )),
            Some(guard),
        ),
    };
    let out = tokio::select! {
        out = run => out,
        () = deadline => {
            tracing::warn!(seconds = drain.as_secs(), "messages still in progress at the drain deadline; stopping");
            Ok(())
        }
    };
    drop(guard);
    out
}

/// Serves `listener`, and the accept-only socket (`accept_listen`) if there is one, until
/// `shutdown` fires.
pub async fn run(
    listener: Listener,
    accept_only: Option<Listener>,
    state: Arc<State>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let cap = state.max_connections.max(1);
    let config = MilterLoop {
        // The table keeps the cap; indymilter's own only bounds sessions still closing.
        max_connections: cap.saturating_mul(2).saturating_add(16),
        actions: Actions::ADD_HEADER | Actions::CHANGE_HEADER,
        connection_timeout: conns::IN_MESSAGE,
    };
    let limits = (cap, state.idle_timeout);
    let drain = state.drain_timeout;
    let _reload = daemon::on_reload({
        let state = Arc::clone(&state);
        move || state.reload_keys()
    });
    let main = serve(
        listener,
        callbacks::callbacks(Arc::clone(&state)),
        config.clone(),
        limits,
        shutdown.clone(),
        drain,
    );
    match accept_only {
        Some(l) => {
            let config = MilterLoop {
                actions: Actions::empty(),
                ..config
            };
            tokio::try_join!(
                main,
                serve(l, callbacks::accept_only(), config, limits, shutdown, drain)
            )
            .map(drop)
        }
        None => main.await,
    }
}

#[cfg(test)]
mod tests {
    /// The writer's body over arbitrary bytes and Unicode, including quoted-printable that a
    /// DKIM tag parser would have decoded.
    #[test]
    fn results_on_pseudo_random_input() {
        let pieces: [&[u8]; 11] = [
            b"example.org",
            b";",
            b" dkim=pass",
            b"\"",
            b"\\",
            b"\r\n",
            b"@",
            b"\xc3\xa4",
            b"\xe2\x80\xae",
            b"(",
            b"=3B",
        ];
        miab_e2e::pseudo_random_inputs(&pieces, 3000, crate::fuzz_results);
    }

    #[test]
    fn frames_on_pseudo_random_input() {
        let pieces: [&[u8]; 8] = [
            b"\0\0\0\x01M",
            b"\0\0\0\x01E",
            b"\0\0\0\x05O",
            b"\0\0\0\x02A",
            b"\xff\xff\xff\xff",
            b"\0",
            b"M",
            b"abc",
        ];
        miab_e2e::pseudo_random_inputs(&pieces, 3000, crate::fuzz_frames);
    }
}
