//! `miab-authd`: Dovecot's auth-client protocol over the Mail-in-a-Box user DB, so Postfix's
//! `smtpd_sasl_type = dovecot` can authenticate SMTP clients without Dovecot's socket.
//!
//! - [`proto`]: the line codec, tab-escaping, the handshake, without I/O.
//! - [`handler`]: the PLAIN and LOGIN exchanges and the plaintext policy, as plain functions.
//! - `session`: one connection's exchanges.
//! - `verify`: a login and password against the directory (main and app passwords, the brake,
//!   the success cache).
//! - [`checkpassword`]: the `miab-checkpassword` helper Dovecot 2.3 runs, a client of the
//!   checkpassword socket.
//! - [`settings`]: the `[authd]` section.
//! - [`run`]: serves the Postfix socket and the checkpassword socket until shutdown.

pub mod checkpassword;
pub mod guard;
pub mod handler;
pub mod metrics;
pub mod proto;
mod session;
pub mod settings;
mod verify;

use daemon::{Config, Limits, Listener, Loaded, Shutdown};
use directory::{Hashers, Live};
use state::app_password_use::UsageLog;
use state::commit::GroupCommit;
use state::pg::device_store::{Outbox, PgUsage};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use userdb::Password;

/// What every connection shares.
pub struct State {
    dir: Live,
    hashers: Hashers,
    limits: Limits,
    pid: u32,
    /// 128 random bits, hex, as Dovecot's COOKIE (only used by auth-master requests).
    cookie: String,
    failure_delay: Duration,
    pub(crate) exchange_timeout: Duration,
    allow_insecure_plaintext: bool,
    /// A hash verified for unknown users, so they cost what known ones do.
    decoy_hash: String,
    cache: guard::SuccessCache,
    brake: guard::Brake,
    /// `STORAGE_ROOT/mail/mailboxes`: homes are `<domain>/<local part>` below it.
    mailboxes: PathBuf,
    mail_uid: String,
    mail_gid: String,
    /// When each app password's last use was last written, so a busy client costs one
    /// write a minute, not one per login.
    touched: Mutex<HashMap<i64, Instant>>,
    /// Our own record of app password use (the user DB stays read-only); `None` if it could
    /// not be opened, which costs only the last-use times.
    usage: Option<Usage>,
}

// The cookie and the decoy hash stay out of Debug prints.
impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("dir", &self.dir)
            .field("limits", &self.limits)
            .field("failure_delay", &self.failure_delay)
            .field("cache", &self.cache)
            .field("brake", &self.brake)
            .finish_non_exhaustive()
    }
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("user DB: {0}")]
    UserDb(#[from] userdb::Error),
    #[error("no randomness for the cookie: {0}")]
    Random(String),
}

impl State {
    /// Opens the DB named by `config`. Must run inside the runtime.
    pub async fn open(
        config: &Config,
        section: &Loaded<settings::Settings>,
    ) -> Result<State, StartError> {
        let a = &section.settings;
        let (dir, pg) = daemon::open_directory(config).await?;
        // Twice the cores: a verification waits for the blocking pool's hand-off now and
        // then, and the cores should not idle meanwhile.
        let hashers = Hashers::new(match a.hash_threads {
            0 => 2 * std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        });
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| StartError::Random(e.to_string()))?;
        let mut salt = [0u8; 12];
        getrandom::fill(&mut salt).map_err(|e| StartError::Random(e.to_string()))?;
        let decoy = userdb::password::hash_password(&Password::new(hex(&salt)))?;
        let mut brake = guard::Brake::new(
            a.ip_failures_per_minute,
            a.login_failures_per_minute,
            Duration::from_secs(a.cooloff_secs),
            a.proxy_networks.clone(),
        );
        let layout = config.layout();
        let known = layout.known_devices_db();
        match &pg {
            Some(pg) => {
                let n = brake.keep_known_in_store(Arc::clone(pg)).await;
                tracing::info!(known_devices = n, store = %pg.target(), "known devices read");
            }
            None => match brake.keep_known_in(&known) {
                Ok(n) => {
                    tracing::info!(known_devices = n, file = %known.display(), "known devices read");
                }
                // A convenience for the innocent, not a check: without the file they live in
                // memory until the next restart.
                Err(e) => tracing::warn!(error = %e, "known devices are kept in memory only"),
            },
        }
        Ok(State {
            dir,
            hashers,
            limits: section.server.limits.clone(),
            pid: std::process::id(),
            cookie: hex(&bytes),
            failure_delay: Duration::from_millis(a.failure_delay_ms),
            exchange_timeout: Duration::from_secs(a.exchange_timeout_secs),
            allow_insecure_plaintext: a.allow_insecure_plaintext,
            decoy_hash: decoy,
            cache: guard::SuccessCache::new(Duration::from_secs(a.cache_ttl_secs), a.cache_entries)
                .map_err(|e| StartError::Random(e.to_string()))?,
            brake,
            mailboxes: layout.mailboxes(),
            mail_uid: a.mail_uid.clone(),
            mail_gid: a.mail_gid.clone(),
            touched: Mutex::new(HashMap::new()),
            usage: match pg {
                Some(pg) => Some(Usage::Shared(Outbox::start(100_000, move |batch| {
                    let store = PgUsage::new(Arc::clone(&pg));
                    async move { store.record_all(batch).await }
                }))),
                None => open_usage_log(&layout.app_password_use_db()).map(Usage::File),
            },
        })
    }

    /// The userdb fields MIAB's Dovecot `user_query` yields: home (`%d/%n` below the
    /// mailboxes directory), uid, gid and the quota rule.
    pub(crate) fn userdb_fields(&self, account: &verify::Account) -> Vec<(&'static str, String)> {
        let (local, domain) = account
            .email
            .rsplit_once('@')
            .unwrap_or((account.email.as_str(), ""));
        let home = self.mailboxes.join(domain).join(local);
        vec![
            ("home", home.to_string_lossy().into_owned()),
            ("uid", self.mail_uid.clone()),
            ("gid", self.mail_gid.clone()),
            ("quota_rule", format!("*:bytes={}", account.quota)),
        ]
    }

    /// Records, in the background and at most once a minute, that app password `id` was used.
    pub(crate) fn touch_app_password(&self, id: i64) {
        let now = Instant::now();
        {
            let Ok(mut t) = self.touched.lock() else {
                return;
            };
            if t.get(&id)
                .is_some_and(|last| now.duration_since(*last) < Duration::from_secs(60))
            {
                return;
            }
            if t.len() >= 100_000 {
                t.clear();
            }
            t.insert(id, now);
        }
        let used = (id, state::clock::unix_now());
        match &self.usage {
            None => {}
            Some(Usage::File(u)) => u.send(used),
            Some(Usage::Shared(u)) => u.send(used),
        }
    }
}

/// Where app-password use is recorded: this host's file, or the store several hosts share.
#[derive(Debug)]
enum Usage {
    File(GroupCommit<UsageLog>),
    Shared(Outbox<(i64, i64)>),
}

fn open_usage_log(path: &std::path::Path) -> Option<GroupCommit<UsageLog>> {
    match UsageLog::open(path) {
        Ok(u) => Some(GroupCommit::new(u, 256)),
        Err(e) => {
            tracing::warn!(error = %e, "app password last-use times will not be recorded");
            None
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Serves `listener` (Postfix's socket) and `checkpassword`, if there is one, until
/// `shutdown` fires, then drains both.
pub async fn run(
    listener: Listener,
    checkpassword: Option<Listener>,
    state: Arc<State>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let limits = state.limits.clone();
    let _sweeper = daemon::periodic(Duration::from_secs(60), {
        let state = Arc::clone(&state);
        move || state.brake.sweep()
    });
    let serve = |listener, socket| {
        let state = Arc::clone(&state);
        daemon::serve(listener, &limits, shutdown.clone(), move |conn| {
            session::run(Arc::clone(&state), conn, socket)
        })
    };
    let postfix = serve(listener, session::Socket::Postfix);
    match checkpassword {
        Some(h) => {
            let helper = serve(h, session::Socket::Checkpassword);
            tokio::try_join!(postfix, helper).map(drop)
        }
        None => postfix.await,
    }
}

/// The SASL fuzz target's body: PLAIN and LOGIN responses (arbitrary text as it came, and
/// arbitrary bytes base64-encoded) and the login folding never panic; what they accept is a
/// non-empty login without NUL or line break, and folding is stable.
pub fn fuzz_sasl(data: &[u8]) {
    use base64::Engine as _;
    let text = String::from_utf8_lossy(data);
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    for resp in [text.as_ref(), encoded.as_str()] {
        let logins = [
            handler::plain(resp).ok().map(|c| c.login),
            handler::login_user(resp).ok(),
            handler::login_password("u".into(), resp)
                .ok()
                .map(|c| c.login),
        ];
        for login in logins.into_iter().flatten() {
            assert!(
                !login.is_empty() && !login.chars().any(char::is_control),
                "{login:?}"
            );
            let folded = handler::fold_login(&login);
            assert_eq!(handler::fold_login(&folded), folded);
        }
    }
}

/// The fuzz target's body: split arbitrary bytes into lines and parse them; every parsed
/// command and every reply stays within the protocol's limits.
pub fn fuzz_decode(data: &[u8]) {
    let mut lines = proto::Lines::default();
    lines.push(data);
    while let Ok(Some(line)) = lines.next_line() {
        assert!(line.len() <= proto::MAX_LINE);
        if let Ok(proto::Command::Auth(a)) = proto::parse(&line) {
            let mut out = String::new();
            proto::Reply::Ok {
                id: a.id,
                user: a.service.clone(),
                fields: vec![("home", a.local_ip.clone())],
            }
            .encode(&mut out);
            assert_eq!(
                out.matches('\n').count(),
                1,
                "one line, whatever the value holds"
            );
            let _ = a.resp.as_deref().map(handler::plain);
        }
    }
}

#[cfg(test)]
mod sasl_tests {
    /// The SASL body over arbitrary bytes and Unicode.
    #[test]
    fn sasl_parsing_on_pseudo_random_input() {
        let pieces: [&[u8]; 10] = [
            b"\0",
            b"me@example.com",
            b"AGFsaWNlAHB3",
            b"=",
            b"\xc3\xa4",
            b"\xe2\x80\xae",
            b"\n",
            b" ",
            b"\xff",
            b"\xc4\xb0",
        ];
        miab_e2e::pseudo_random_inputs(&pieces, 3000, crate::fuzz_sasl);
    }
}

#[cfg(test)]
mod tests {
    /// The fuzz body over pseudo-random inputs built from protocol pieces and noise.
    #[test]
    fn fuzz_body_on_pseudo_random_input() {
        let pieces: [&[u8]; 9] = [
            b"AUTH\t1\tPLAIN\tservice=smtp\t",
            b"resp=AGEAYg==",
            b"\n",
            b"CONT\t1\t",
            b"VERSION\t1\t0\n",
            b"\x01t",
            b"\t",
            b"\xff",
            b"=",
        ];
        miab_e2e::pseudo_random_inputs(&pieces, 3000, crate::fuzz_decode);
    }
}
