//! `miab-authd`: Dovecot's auth-client protocol over the Mail-in-a-Box user DB, so Postfix's
//! `smtpd_sasl_type = dovecot` can authenticate SMTP clients without Dovecot's socket.
//!
//! - [`proto`]: the line codec, tab-escaping, the handshake, without I/O.
//! - [`handler`]: the PLAIN and LOGIN exchanges and the plaintext policy, as plain functions.
//! - `session`: one connection's exchanges, and the DB verification.
//! - [`run`]: serves a listener until shutdown.

pub mod guard;
pub mod handler;
pub mod proto;
mod session;

use daemon::{Config, Limits, Listener, Shutdown};
use std::sync::Arc;
use std::time::Duration;
use userdb::{AsyncUserDb, HandleConfig, Password};

/// What every connection shares.
pub struct State {
    db: AsyncUserDb,
    limits: Limits,
    pid: u32,
    /// 128 random bits, hex, as Dovecot's COOKIE (only used by auth-master requests).
    cookie: String,
    failure_delay: Duration,
    allow_insecure_plaintext: bool,
    /// A hash verified for unknown users, so they cost what known ones do.
    decoy_hash: String,
    cache: guard::SuccessCache,
    brake: guard::Brake,
}

// The cookie and the decoy hash stay out of Debug prints.
impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("db", &self.db)
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
    /// Opens the DB named by `config`.
    pub fn open(config: &Config) -> Result<State, StartError> {
        let a = &config.authd;
        let db = AsyncUserDb::open(
            config.db_path(),
            HandleConfig {
                max_connections: a.db_connections.max(1),
                busy_timeout: config.db_busy_timeout(),
                memo_entries: a.cache_entries,
                // Twice the cores: a verification waits for the blocking pool's hand-off
                // now and then, and the cores should not idle meanwhile.
                max_hashers: match a.hash_threads {
                    0 => 2 * std::thread::available_parallelism().map_or(1, usize::from),
                    n => n,
                },
            },
        )?;
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| StartError::Random(e.to_string()))?;
        let mut salt = [0u8; 12];
        getrandom::fill(&mut salt).map_err(|e| StartError::Random(e.to_string()))?;
        let decoy = userdb::password::hash_password(&Password::new(hex(&salt)))?;
        Ok(State {
            db,
            limits: a.limits(),
            pid: std::process::id(),
            cookie: hex(&bytes),
            failure_delay: Duration::from_millis(a.failure_delay_ms),
            allow_insecure_plaintext: a.allow_insecure_plaintext,
            decoy_hash: decoy,
            cache: guard::SuccessCache::new(Duration::from_secs(a.cache_ttl_secs), a.cache_entries)
                .map_err(|e| StartError::Random(e.to_string()))?,
            brake: guard::Brake::new(
                a.ip_failures_per_minute,
                a.login_failures_per_minute,
                Duration::from_secs(a.cooloff_secs),
            ),
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Serves `listener` until `shutdown` fires, then drains.
pub async fn run(listener: Listener, state: Arc<State>, shutdown: Shutdown) -> std::io::Result<()> {
    let limits = state.limits.clone();
    let _sweeper = daemon::periodic(Duration::from_secs(60), {
        let state = Arc::clone(&state);
        move || state.brake.sweep()
    });
    daemon::serve(listener, &limits, shutdown, move |conn| {
        session::run(Arc::clone(&state), conn)
    })
    .await
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
