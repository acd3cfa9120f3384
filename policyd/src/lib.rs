//! `miab-policyd`: a Postfix policy delegation server for a Mail-in-a-Box box: postgrey-style
//! greylisting, Spamhaus DNSBL/DBL checks, sender-login enforcement and per-login rate limits.
//!
//! - [`settings`]: the `[policyd]` section, typed and checked at load.
//! - [`proto`]: the request/reply codec, without I/O.
//! - [`handler`]: which checks run and the texts they answer with, as plain functions.
//! - [`policy`]: runs the checks over the user DB, DNS and the greylist store.
//! - [`greylist`], [`dnsbl`], [`dns`], [`containment`]: the checks' own parts.
//! - `session`: one connection's read-decide-write loop.
//! - [`run`]: serves a listener until shutdown.

pub mod containment;
pub mod dns;
pub mod dnsbl;
pub mod greylist;
pub mod handler;
pub use daemon::net;
pub mod policy;
pub mod proto;
mod session;
pub mod settings;
pub mod syslog;

use daemon::{Config, Limits, Listener, Loaded, Shutdown};
use directory::Live;
use greylist::store::Store;
use greylist::whitelist::{self, Whitelists};
use greylist::{Timing, store};
use handler::Check;
use policy::{Greylisting, Policy, RateLimits};
use settings::Settings;
use state::greylist::Counts;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use userdb::Delimiters;

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub greylist_db: Option<PathBuf>,
    pub greylist_entries: Option<Counts>,
    pub sending_db: Option<PathBuf>,
    pub whitelist_entries: usize,
    pub skipped_lines: usize,
}

impl State {
    /// Builds everything from the configuration. Must run inside a tokio runtime.
    pub fn open(
        config: &Config,
        section: &Loaded<Settings>,
    ) -> Result<(State, Report), StartError> {
        let p = &section.settings;
        let dqs = p.dnsbl.dqs_key.as_deref();
        let lists = |ls: &[settings::ListSettings]| {
            ls.iter()
                .map(|l| dnsbl::List::new(&l.zone, l.codes.clone(), l.action, dqs))
                .collect::<Vec<_>>()
        };
        let auth = dns::authenticator(&config.dns).map_err(StartError::Dns)?;
        let dir = Live::open(config.db_path(), config.db_busy_timeout())?;
        let mut report = Report {
            greylist_db: None,
            greylist_entries: None,
            sending_db: None,
            whitelist_entries: 0,
            skipped_lines: 0,
        };
        let greylist = if p.checks.contains(&Check::Greylist) {
            Some(open_greylist(&p.greylist, &mut report)?)
        } else {
            None
        };
        let containment = if p.checks.contains(&Check::Containment) {
            report.sending_db = Some(p.containment.db().to_owned());
            Some(
                containment::Containment::open(&p.containment, &config.box_hostname())
                    .map_err(StartError::Sending)?,
            )
        } else {
            None
        };
        let policy = Policy {
            checks: p.checks.clone(),
            fail_action: p.fail_action.as_str().to_owned(),
            security_fail_action: p.security_fail_action.as_str().to_owned(),
            trusted: p.trusted_clients.clone(),
            hostname: config.box_hostname(),
            dir,
            delims: Arc::new(Delimiters::new(config.recipient_delimiter.clone())),
            lists: dnsbl::Checker::new(dns::resolver(&auth), config.dns.timeout()),
            auth,
            dns_timeout: config.dns.timeout(),
            client_lists: lists(&p.dnsbl.client_lists),
            sender_lists: lists(&p.dnsbl.sender_lists),
            greylist,
            rate: RateLimits::per_hour(
                p.rate_limit.messages_per_hour,
                p.rate_limit.recipients_per_hour,
            ),
            containment,
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

fn open_greylist(
    g: &settings::GreylistSettings,
    report: &mut Report,
) -> Result<Greylisting, StartError> {
    let day = 86_400i64;
    let secs = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let timing = Timing {
        delay: secs(g.delay_secs),
        max_age: secs(g.max_age_days).saturating_mul(day),
        retry_window: secs(g.retry_window_hours).saturating_mul(3600),
        awl_threshold: g.auto_whitelist_clients,
        awl_interval: secs(g.auto_whitelist_interval_secs),
    };
    let path = g.db().to_owned();
    let (store, counts) = Store::start(
        &path,
        timing,
        Duration::from_secs(g.expire_interval_secs.max(1)),
    )?;
    let (whitelists, skipped) = Whitelists::load(&g.whitelist_clients, &g.whitelist_recipients);
    log_skipped(&skipped);
    report.greylist_db = Some(path);
    report.greylist_entries = Some(counts);
    report.whitelist_entries = whitelists.len();
    report.skipped_lines = skipped.len();
    Ok(Greylisting {
        store,
        whitelists,
        v4_prefix: g.ipv4_prefix,
        v6_prefix: g.ipv6_prefix,
        action: g.action.as_str().to_owned(),
        text: g.text.clone(),
        header: g.header.clone(),
        spf_pool: g.spf_pool,
        dry_run: g.dry_run,
        syslog: syslog::Syslog::connect(g.syslog_socket.as_deref()),
    })
}

fn log_skipped(skipped: &[whitelist::Skipped]) {
    for s in skipped {
        tracing::warn!(file = %s.file, line = s.line, reason = %s.reason, "whitelist entry ignored");
    }
}

/// How often the whitelist files are checked for a change (MIAB's cron refreshes them).
const WHITELIST_CHECK: Duration = Duration::from_secs(30);

/// Serves `listener`, and `greylist_only` (where no check about a login runs) if there is
/// one, until `shutdown` fires, then drains.
pub async fn run(
    listener: Listener,
    greylist_only: Option<Listener>,
    state: Arc<State>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let limits = state.limits.clone();
    let _sweeper = daemon::periodic(Duration::from_secs(60), {
        let state = Arc::clone(&state);
        move || state.policy.rate.retain_recent()
    });
    let _expiry = daemon::periodic(Duration::from_secs(3600), {
        let state = Arc::clone(&state);
        move || {
            if let Some(c) = &state.policy.containment {
                c.expire();
            }
        }
    });
    let reread = {
        let state = Arc::clone(&state);
        move || {
            let Some(g) = &state.policy.greylist else {
                return;
            };
            if let Some(skipped) = g.whitelists.reload_if_changed() {
                log_skipped(&skipped);
                tracing::info!(entries = g.whitelists.len(), "whitelist files read again");
            }
        }
    };
    let _whitelists = daemon::periodic(WHITELIST_CHECK, reread.clone());
    let _on_hup = daemon::on_reload(reread);
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
    let sender = greylist::normalize::sender(&text);
    assert!(
        !sender.bytes().any(|b| b.is_ascii_uppercase()),
        "{sender:?}"
    );
    let _ = greylist::normalize::client_net(&text, n % 40, n.wrapping_mul(7) % 140);
    assert!(handler::checks_for(&text, &Check::ALL).count() <= Check::ALL.len());
    let req = proto::Request {
        sender: text.to_string(),
        recipient: text.to_string(),
        client_address: text.to_string(),
        client_name: text.to_string(),
        sasl_username: text.to_string(),
        ..proto::Request::default()
    };
    let verdicts = [
        handler::Verdict::Prepend(handler::greylist_header(
            "X-Greylist: %t %h %d",
            i64::from(n),
            &text,
            i64::from(n),
        )),
        handler::Verdict::Stop(handler::greylist_text(
            "Greylisted, see %r %s",
            &req,
            -i64::from(n),
        )),
        handler::Verdict::Stop(handler::postgrey_line("greylist", &text, Some(1), &req)),
        handler::Verdict::Stop(handler::sender_not_owned(&text)),
    ];
    for v in verdicts {
        let action = handler::combine([handler::Verdict::Dunno, v]);
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
