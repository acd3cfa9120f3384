//! `miab-policyd`: a Postfix policy delegation server for a Mail-in-a-Box box: postgrey-style
//! greylisting, Spamhaus DNSBL/DBL checks, sender-login enforcement and per-login rate limits.
//!
//! - [`settings`]: the `[policyd]` section, typed and checked at load.
//! - [`proto`]: the request/reply codec, without I/O.
//! - [`checks`]: the checks, each in a file with its texts and its rule, behind one trait.
//! - [`verdict`]: what a check answers, typed, and how the answers fold into one.
//! - [`login`]: the SASL login, folded once.
//! - [`policy`]: runs the configured checks for one request.
//! - [`dnsbl`], [`dns`], [`syslog`]: block-list lookups, SPF, postgrey's log lines.
//! - `session`: one connection's read-decide-write loop.
//! - [`run`]: serves a listener until shutdown.

pub mod checks;
pub mod dns;
pub mod dnsbl;
pub mod login;
pub mod metrics;
pub use daemon::net;
pub mod policy;
pub mod proto;
mod session;
pub mod settings;
pub mod syslog;
pub mod verdict;

use checks::greylist::store;
use checks::{Building, Shared};
use daemon::{Config, Limits, Listener, Loaded, Shutdown};
use policy::Policy;
use settings::Settings;
use state::greylist::Counts;
use std::path::PathBuf;
use std::sync::Arc;
use userdb::Delimiters;

pub use userdb::address::domain_lowercase as domain_of;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("user DB: {0}")]
    UserDb(#[from] userdb::Error),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("sending DB: {0}")]
    Sending(state::Error),
    #[error("DNS resolver: {0}")]
    Dns(String),
}

/// What every connection shares.
#[derive(Debug)]
pub struct State {
    pub policy: Policy,
    limits: Limits,
}

/// What start-up found, for its log line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub greylist_db: Option<PathBuf>,
    pub greylist_entries: Option<Counts>,
    pub sending_db: Option<PathBuf>,
    pub whitelist_entries: usize,
    pub skipped_lines: usize,
}

impl State {
    /// Builds everything from the configuration. Must run inside a tokio runtime.
    pub async fn open(
        config: &Config,
        section: &Loaded<Settings>,
    ) -> Result<(State, Report), StartError> {
        let p = &section.settings;
        let auth = dns::authenticator(&config.dns).map_err(StartError::Dns)?;
        let (dir, store) = daemon::open_directory(config).await?;
        let mut report = Report::default();
        let hostname = config.box_hostname();
        let checks = checks::build_all(&mut Building {
            settings: p,
            store,
            hostname: &hostname,
            report: &mut report,
        })?;
        let policy = Policy {
            checks,
            fail_action: p.fail_action.clone(),
            security_fail_action: p.security_fail_action.clone(),
            trusted: p.trusted_clients.clone(),
            shared: Shared {
                dir,
                delims: Arc::new(Delimiters::new(config.recipient_delimiter.clone())),
                lists: dnsbl::Checker::new(dns::resolver(&auth), config.dns.timeout()),
                auth,
                dns_timeout: config.dns.timeout(),
                hostname,
            },
        };
        Ok((
            State {
                policy,
                limits: section.server.limits.clone(),
            },
            report,
        ))
    }
}

/// Serves `listener`, and `greylist_only` (where no check about a login runs) if there is
/// one, until `shutdown` fires, then drains.
pub async fn run(
    listener: Listener,
    greylist_only: Option<Listener>,
    state: Arc<State>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let limits = state.limits.clone();
    // Each check's upkeep, at the pace it names.
    let _tending: Vec<daemon::Periodic> = state
        .policy
        .checks
        .iter()
        .filter_map(|c| {
            let every = c.tend_every()?;
            let c = Arc::clone(c);
            Some(daemon::periodic(every, move || c.tend()))
        })
        .collect();
    let _on_hup = daemon::on_reload({
        let state = Arc::clone(&state);
        move || {
            for c in &state.policy.checks {
                c.reread();
            }
        }
    });
    let main = daemon::serve(listener, &limits, shutdown.clone(), {
        let state = Arc::clone(&state);
        move |conn| session::run(Arc::clone(&state), conn, false)
    });
    match greylist_only {
        Some(l) => {
            let second = daemon::serve(l, &limits, shutdown, move |conn| {
                session::run(Arc::clone(&state), conn, true)
            });
            tokio::try_join!(main, second).map(drop)
        }
        None => main.await,
    }
}

/// The fuzz target's body: decode requests from arbitrary bytes in arbitrary pieces and
/// check the codec's invariants.
pub fn fuzz_decode(data: &[u8]) {
    let split = data.first().map_or(1, |b| usize::from(*b % 16) + 1);
    let mut d = proto::Decoder::new();
    for piece in data.chunks(split) {
        d.push(piece);
        loop {
            match d.next_request() {
                Ok(Some(req)) => {
                    let mut out = Vec::new();
                    proto::encode_reply(&req.sender, &mut out);
                    assert!(out.starts_with(b"action=") && out.ends_with(b"\n\n"));
                    assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 2);
                }
                Ok(None) => break,
                Err(_) => return,
            }
            assert!(d.buffered() <= proto::MAX_REQUEST + 16);
        }
    }
}

/// The body of the fuzz target for what lies between the codec and the reply: the greylist
/// normaliser, which checks a policy context selects, how verdicts combine, the greylist and
/// header texts, and the reply. Nothing panics, and every reply is one line.
pub fn fuzz_evaluate(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let n = data.first().copied().unwrap_or(0);
    let sender = checks::greylist::normalize::sender(&text);
    assert!(
        !sender.bytes().any(|b| b.is_ascii_uppercase()),
        "{sender:?}"
    );
    let _ = checks::greylist::normalize::client_net(&text, n % 40, n.wrapping_mul(7) % 140);
    let _ = checks::CheckName::parse(&text);
    let req = proto::Request {
        sender: text.to_string(),
        recipient: text.to_string(),
        client_address: text.to_string(),
        client_name: text.to_string(),
        sasl_username: text.to_string(),
        ..proto::Request::default()
    };
    let defer = settings::Action::parse("DEFER_IF_PERMIT").expect("a valid action");
    let verdicts = [
        verdict::Verdict::Prepend(checks::greylist::greylist_header(
            "X-Greylist: %t %h %d",
            i64::from(n),
            &text,
            i64::from(n),
        )),
        verdict::Verdict::Stop(verdict::Action::Configured(
            defer,
            Some(checks::greylist::greylist_text(
                "Greylisted, see %r %s",
                &req,
                -i64::from(n),
            )),
        )),
        verdict::Verdict::Stop(verdict::Action::reply(
            450,
            "4.7.1",
            checks::greylist::postgrey_line("greylist", &text, Some(1), &req),
        )),
        verdict::Verdict::Stop(checks::sender_login::not_owned(&text)),
    ];
    for v in verdicts {
        let action = verdict::combine([verdict::Verdict::Dunno, v]).to_string();
        let mut out = Vec::new();
        proto::encode_reply(&action, &mut out);
        assert!(out.starts_with(b"action=") && out.ends_with(b"\n\n"));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 2, "{out:?}");
    }
}

#[cfg(test)]
mod tests {
    /// The fuzz body over pseudo-random inputs built from request-like pieces and noise.
    #[test]
    fn fuzz_body_on_pseudo_random_input() {
        let pieces: [&[u8]; 8] = [
            b"request=smtpd_access_policy\n",
            b"sender=a@b\n",
            b"\n",
            b"=x\n",
            b"\0",
            b"\r\n",
            b"recipient=",
            b"\xff\xfe",
        ];
        miab_e2e::pseudo_random_inputs(&pieces, 3000, crate::fuzz_decode);
    }

    /// The evaluation body over arbitrary bytes and Unicode: BATV tags with multi-byte
    /// characters, line breaks in every attribute, odd prefixes.
    #[test]
    fn evaluation_on_pseudo_random_input() {
        let pieces: [&[u8]; 12] = [
            b"prvs=",
            b"1234",
            b"abcdef",
            b"=",
            b"@",
            b"+tag",
            b"\xc3\xa9",
            b"\xf0\x9f\x98\x80",
            b"\n",
            b"\r",
            b"192.0.2.",
            b"::ffff:",
        ];
        miab_e2e::pseudo_random_inputs(&pieces, 3000, crate::fuzz_evaluate);
    }
}
