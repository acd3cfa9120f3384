//! `miab-milter`: what MIAB's OpenDKIM + OpenDMARC pair does, in one milter (indymilter).
//!
//! - [`keys`]: the signing keys.
//! - [`results`]: the Authentication-Results texts.
//! - `message`: one message's headers and body, streamed into signers or body hashers, so
//!   memory stays bounded whatever the message size.
//! - [`run`]: the milter callbacks over a listener until shutdown.
//!
//! Mail from an authenticated session (`{auth_authen}`) or a trusted client is signed when its
//! From: domain is one of the box's mail domains (read live from the user DB); all other mail
//! is verified (DKIM, SPF, DMARC) and gets one Authentication-Results header per method.
//! Forged Authentication-Results headers with our authserv-id are removed. Nothing is
//! rejected unless `dmarc_reject` is set.

pub mod keys;
mod message;
pub mod results;

use daemon::net::Cidr;
use daemon::{Config, Listener, Shutdown};
use indymilter::{
    Actions, Callbacks, Config as MilterLoop, MacroStage, ProtoOpts, SocketInfo, Status,
};
use mail_auth::MessageAuthenticator;
use message::Session;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use userdb::Live;

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
    pub(crate) verify: bool,
    pub(crate) dmarc_reject: bool,
    pub(crate) verify_timeout: Duration,
    pub(crate) max_header_bytes: usize,
    pub(crate) max_signatures: usize,
    max_connections: usize,
    idle_timeout: Duration,
    /// The accept-only socket (`accept_listen`), bound at start and served by [`run`].
    accept_only: Mutex<Option<Listener>>,
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
    #[error("[milter] {0}")]
    Trusted(String),
    #[error("[milter] accept_listen: {0}")]
    AcceptListen(String),
}

impl State {
    /// Loads the keys, opens the DB and builds the resolver from `config`.
    pub fn open(config: &Config) -> Result<State, StartError> {
        let m = &config.milter;
        let key = m.key_file.clone().unwrap_or_else(|| {
            config
                .storage_root
                .join("mail")
                .join("dkim")
                .join("mail.private")
        });
        let keys = keys::Keyring::load(&key, m.ed25519_key_file.as_deref())?;
        let key_paths = (key, m.ed25519_key_file.clone());
        let dir = Live::open(config.db_path(), config.db_busy_timeout())?;
        let trusted = daemon::net::parse_list("trusted_hosts", &m.trusted_hosts)
            .map_err(StartError::Trusted)?;
        let accept_only = if m.accept_listen.is_empty() {
            None
        } else {
            let addr: daemon::ListenAddr =
                m.accept_listen
                    .parse()
                    .map_err(|e: daemon::listen::BadListenAddr| {
                        StartError::AcceptListen(e.to_string())
                    })?;
            let unix = m.unix_options().map_err(StartError::AcceptListen)?;
            let l = Listener::bind(&addr, &unix)
                .map_err(|e| StartError::AcceptListen(format!("{addr}: {e}")))?;
            Some(l)
        };
        Ok(State {
            accept_only: Mutex::new(accept_only),
            hostname: config.box_hostname(),
            keys: std::sync::RwLock::new(Arc::new(keys)),
            key_paths,
            dir,
            auth: daemon::dns::authenticator(&config.dns).map_err(StartError::Dns)?,
            rsa_selector: m.selector.clone(),
            ed25519_selector: m.ed25519_selector.clone(),
            sign_headers: m.sign_headers.clone(),
            trusted,
            verify: m.verify,
            dmarc_reject: m.dmarc_reject,
            verify_timeout: Duration::from_secs(m.verify_timeout_secs),
            max_header_bytes: m.max_header_bytes,
            max_signatures: m.max_signatures,
            max_connections: m.max_connections,
            idle_timeout: Duration::from_secs(m.idle_timeout_secs),
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

/// The stages that answer nothing when the MTA offers it: none of them ever fails on its own.
const NO_REPLY: ProtoOpts = ProtoOpts::NOREPLY_CONNECT
    .union(ProtoOpts::NOREPLY_HELO)
    .union(ProtoOpts::NOREPLY_MAIL)
    .union(ProtoOpts::NOREPLY_HEADER)
    .union(ProtoOpts::NOREPLY_EOH)
    .union(ProtoOpts::NOREPLY_BODY);

/// The callbacks, each a thin step into the connection's [`Session`].
fn callbacks(state: Arc<State>) -> Callbacks<Session> {
    Callbacks::new()
        .on_negotiate(move |cx, _, offered| {
            let s = Arc::clone(&state);
            Box::pin(async move {
                cx.requested_actions |= Actions::ADD_HEADER | Actions::CHANGE_HEADER;
                // Header values arrive byte-exact (DKIM), and nothing we never use is sent.
                cx.requested_opts |= ProtoOpts::LEADING_SPACE
                    | ProtoOpts::NO_UNKNOWN
                    | ProtoOpts::NO_DATA
                    | ProtoOpts::NO_RCPT;
                // Every answer before end-of-message is "continue" (a failure waits for it),
                // so when the MTA allows it, those answers are not sent at all: a round trip
                // per header costs more CPU than the DKIM work.
                let quiet = offered.contains(NO_REPLY);
                if quiet {
                    cx.requested_opts |= NO_REPLY;
                }
                // Only the macro we read; the others would be sent and parsed for nothing.
                cx.requested_macros
                    .insert(MacroStage::Mail, c"{auth_authen}".to_owned());
                for stage in [
                    MacroStage::Connect,
                    MacroStage::Helo,
                    MacroStage::Eoh,
                    MacroStage::Eom,
                ] {
                    cx.requested_macros.insert(stage, c"".to_owned());
                }
                cx.data = Some(Session::new(s, quiet));
                Status::Continue
            })
        })
        .on_connect(|cx, _host, info| {
            Box::pin(async move {
                let Some(s) = cx.data.as_mut() else {
                    return Status::Continue;
                };
                if let SocketInfo::Inet(addr) = info {
                    s.connect(addr.ip());
                }
                s.carry_on()
            })
        })
        .on_helo(|cx, helo| {
            Box::pin(async move {
                let Some(s) = cx.data.as_mut() else {
                    return Status::Continue;
                };
                s.helo(&helo.to_string_lossy());
                s.carry_on()
            })
        })
        .on_mail(|cx, args| {
            Box::pin(async move {
                let auth = cx
                    .macros
                    .get(c"{auth_authen}")
                    .is_some_and(|v| !v.to_bytes().is_empty());
                let Some(s) = cx.data.as_mut() else {
                    return Status::Continue;
                };
                let sender = args
                    .first()
                    .map(|a| a.to_string_lossy().into_owned())
                    .unwrap_or_default();
                s.mail(&sender, auth);
                s.carry_on()
            })
        })
        .on_header(|cx, name, value| {
            Box::pin(async move {
                let Some(s) = cx.data.as_mut() else {
                    return Status::Continue;
                };
                s.header(name.as_bytes(), value.as_bytes());
                s.carry_on()
            })
        })
        .on_eoh(|cx| {
            Box::pin(async move {
                match cx.data.as_mut() {
                    Some(s) => s.end_of_headers().await,
                    None => Status::Continue,
                }
            })
        })
        .on_body(|cx, chunk| {
            Box::pin(async move {
                match cx.data.as_mut() {
                    Some(s) => s.body(&chunk).await,
                    None => Status::Continue,
                }
            })
        })
        .on_eom(|cx| {
            Box::pin(async move {
                match cx.data.as_mut() {
                    Some(s) => s.end_of_message(&cx.actions, &mut cx.reply).await,
                    None => Status::Continue,
                }
            })
        })
        .on_abort(|cx| {
            Box::pin(async move {
                if let Some(s) = cx.data.as_mut() {
                    s.abort();
                }
                Status::Continue
            })
        })
}

/// The body of the fuzz target for the Authentication-Results writer: whatever a message or
/// session brings as HELO, MAIL FROM domain or From: domain, our header values stay one line,
/// and each holds exactly one `method=result` outside quoted strings.
pub fn fuzz_results(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let v = results::pvalue(&text);
    assert!(v.is_ascii() && !v.contains(['\r', '\n']), "{v:?}");
    for header in [
        results::spf_header("box.example.com", mail_auth::SpfResult::Pass, &text, "h"),
        results::spf_header("box.example.com", mail_auth::SpfResult::None, "", &text),
    ]
    .into_iter()
    .chain(results::timed_out("box.example.com", &text, &text, &text))
    {
        assert!(!header.contains(['\r', '\n']), "{header:?}");
        assert_eq!(
            results::unquoted(&header).matches(';').count(),
            1,
            "{header:?}"
        );
    }
}

/// Callbacks that accept every connection at once and change nothing.
fn accept_only() -> Callbacks<()> {
    Callbacks::new().on_connect(|_, _, _| Box::pin(async { Status::Accept }))
}

/// Serves `listener` with `cbs` until `shutdown` fires.
async fn serve<T: Send + 'static>(
    listener: Listener,
    cbs: Callbacks<T>,
    config: MilterLoop,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let stop = async move { shutdown.wait().await };
    match listener {
        Listener::Tcp(l) => indymilter::run(l, cbs, config, stop).await,
        Listener::Unix { listener, guard } => {
            let out = indymilter::run(listener, cbs, config, stop).await;
            drop(guard);
            out
        }
    }
}

/// Serves `listener`, and the accept-only socket if there is one, until `shutdown` fires.
pub async fn run(listener: Listener, state: Arc<State>, shutdown: Shutdown) -> std::io::Result<()> {
    let config = MilterLoop {
        max_connections: state.max_connections.max(1),
        actions: Actions::ADD_HEADER | Actions::CHANGE_HEADER,
        connection_timeout: state.idle_timeout,
    };
    let second = state.accept_only.lock().ok().and_then(|mut l| l.take());
    let _reload = daemon::on_reload({
        let state = Arc::clone(&state);
        move || state.reload_keys()
    });
    let main = serve(
        listener,
        callbacks(Arc::clone(&state)),
        config.clone(),
        shutdown.clone(),
    );
    match second {
        Some(l) => {
            let config = MilterLoop {
                actions: Actions::empty(),
                ..config
            };
            tokio::try_join!(main, serve(l, accept_only(), config, shutdown)).map(drop)
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
}
