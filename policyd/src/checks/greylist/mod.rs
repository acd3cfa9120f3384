//! `greylist`: postgrey's greylisting, with postgrey's texts, header and log lines (MIAB's
//! `mail_log.py` parses them).
//!
//! - [`rule`]: the decision over one triplet's stored state, as a pure function;
//! - [`normalize`]: the triplet's parts;
//! - [`whitelist`]: postgrey's whitelist files;
//! - [`store`]: the decisions over the store (`state::greylist`), through the group commit.

pub mod normalize;
pub mod rule;
pub mod store;
pub mod whitelist;

use super::{Ask, Building, Check, ConnState, Decision, Shared, Stage};
use crate::proto::Request;
use crate::settings::{self, GreylistSettings};
use crate::syslog::Syslog;
use crate::verdict::{Action, Verdict};
use crate::{StartError, domain_of};
use mail_auth::SpfResult;
pub use rule::{Outcome, Timing};
use std::sync::Arc;
use std::time::Duration;
use store::Store;
use whitelist::Whitelists;

pub const NAME: &str = "greylist";

/// How often the whitelist files are checked for a change (MIAB's cron refreshes them).
const WHITELIST_CHECK: Duration = Duration::from_secs(30);

/// Greylisting's settings and state.
#[derive(Debug)]
pub struct Greylisting {
    store: Store,
    whitelists: Whitelists,
    v4_prefix: u8,
    v6_prefix: u8,
    action: settings::Action,
    text: String,
    header: Option<String>,
    spf_pool: bool,
    dry_run: bool,
    syslog: Syslog,
}

pub fn build(b: &mut Building<'_>) -> Result<Arc<dyn Check>, StartError> {
    let g: &GreylistSettings = &b.settings.greylist;
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
    let every = Duration::from_secs(g.expire_interval_secs.max(1));
    let store = match b.store.clone() {
        Some(pg) => Store::shared(pg, timing, every),
        None => {
            let (store, counts) = Store::start(&path, timing, every)?;
            b.report.greylist_db = Some(path);
            b.report.greylist_entries = Some(counts);
            store
        }
    };
    let (whitelists, skipped) = Whitelists::load(&g.whitelist_clients, &g.whitelist_recipients);
    log_skipped(&skipped);
    b.report.whitelist_entries = whitelists.len();
    b.report.skipped_lines = skipped.len();
    Ok(Arc::new(Greylisting {
        store,
        whitelists,
        v4_prefix: g.ipv4_prefix,
        v6_prefix: g.ipv6_prefix,
        action: g.action.clone(),
        text: g.text.clone(),
        header: g.header.clone(),
        spf_pool: g.spf_pool,
        dry_run: g.dry_run,
        syslog: Syslog::connect(g.syslog_socket.as_deref()),
    }))
}

fn log_skipped(skipped: &[whitelist::Skipped]) {
    for s in skipped {
        tracing::warn!(file = %s.file, line = s.line, reason = %s.reason, "whitelist entry ignored");
    }
}

impl Check for Greylisting {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::Recipient
    }

    fn decide<'a>(
        &'a self,
        ask: &'a Ask<'a>,
        shared: &'a Shared,
        conn: &'a mut ConnState,
    ) -> Decision<'a> {
        Box::pin(self.greylist(ask, shared, conn))
    }

    fn tend_every(&self) -> Option<Duration> {
        Some(WHITELIST_CHECK)
    }

    fn tend(&self) {
        self.reread();
    }

    fn reread(&self) {
        if let Some(skipped) = self.whitelists.reload_if_changed() {
            log_skipped(&skipped);
            tracing::info!(
                entries = self.whitelists.len(),
                "whitelist files read again"
            );
        }
    }
}

impl Greylisting {
    async fn greylist(
        &self,
        ask: &Ask<'_>,
        shared: &Shared,
        conn: &mut ConnState,
    ) -> Result<Verdict, super::Failed> {
        let req = ask.req;
        if ask.login.is_some() || ask.trusted || req.recipient.is_empty() {
            return Ok(Verdict::Dunno);
        }
        let log = |action: &str, reason: &str, delay: Option<i64>| {
            self.syslog
                .postgrey(&postgrey_line(action, reason, delay, req));
        };
        let lists = self.whitelists.current();
        let (clients, recipients) = &*lists;
        if clients.matches(&req.client_name, &req.client_address) {
            log("pass", "client whitelist", None);
            return Ok(Verdict::Dunno);
        }
        if recipients.matches(&req.recipient) {
            log("pass", "recipient whitelist", None);
            return Ok(Verdict::Dunno);
        }
        let mut net = normalize::client_net(&req.client_address, self.v4_prefix, self.v6_prefix);
        if self.spf_pool
            && let (Some(ip), Some(domain)) = (ask.client_ip, domain_of(&req.sender))
            && shared.spf(ip, req).await == Some(SpfResult::Pass)
        {
            // The sender's own SPF vouches for this address: any address it lists may retry.
            net = format!("spf:{domain}");
        }
        let key = format!(
            "{net}/{}/{}",
            normalize::sender(&req.sender),
            req.recipient.to_lowercase()
        );
        let now = state::clock::unix_now();
        let started = std::time::Instant::now();
        let decided = self
            .store
            .decide(key, req.client_address.clone(), now)
            .await;
        crate::metrics::stored("greylist", started.elapsed());
        let (outcome, writes) = decided.map_err(|e| super::Failed(e.to_string()))?;
        let (action, reason, delay) = outcome_words(&outcome);
        log(action, &reason, delay);
        if writes.newly_whitelisted {
            let who = if req.client_name.is_empty() || req.client_name == "unknown" {
                &req.client_address
            } else {
                &req.client_name
            };
            self.syslog.postgrey(&format!("whitelisted: {who}"));
        }
        Ok(match outcome {
            Outcome::Greylist { remaining, .. } if !self.dry_run => {
                Verdict::Stop(Action::Configured(
                    self.action.clone(),
                    Some(greylist_text(&self.text, req, remaining)),
                ))
            }
            Outcome::Pass {
                delayed: Some(delayed),
            } if self.header.is_some() && conn.header_instance != req.instance => {
                conn.header_instance.clone_from(&req.instance);
                Verdict::Prepend(greylist_header(
                    self.header.as_deref().unwrap_or_default(),
                    delayed,
                    &shared.hostname,
                    now,
                ))
            }
            _ => Verdict::Dunno,
        })
    }
}

/// Expands postgrey's greylist text: `%r` the recipient's domain, `%s` seconds left. Like
/// postgrey, a Postfix that sends `etrn_domain` (2.3+) gets `4.2.0` in front unless the text
/// has its own status code.
pub fn greylist_text(template: &str, req: &Request, remaining: i64) -> String {
    let rcpt_domain = domain_of(&req.recipient).unwrap_or_default();
    let text = template
        .replace("%r", &rcpt_domain)
        .replace("%s", &remaining.to_string());
    let has_dsn = text.split(' ').next().is_some_and(|w| {
        w.len() >= 5 && w.as_bytes()[1] == b'.' && w.as_bytes()[0].is_ascii_digit()
    });
    if req.etrn_domain.is_some() && !has_dsn {
        format!("4.2.0 {text}")
    } else {
        text
    }
}

/// Expands the X-Greylist header: `%t` seconds delayed, `%v` version, `%h` host, `%d` date.
pub fn greylist_header(template: &str, delayed: i64, host: &str, unix_now: i64) -> String {
    template
        .replace("%t", &delayed.to_string())
        .replace("%v", env!("CARGO_PKG_VERSION"))
        .replace("%h", host)
        .replace("%d", &rfc2822(unix_now))
}

/// postgrey's log line, which MIAB's `mail_log.py` parses (`action=..., reason=..., ...`).
pub fn postgrey_line(action: &str, reason: &str, delay: Option<i64>, req: &Request) -> String {
    let delay = delay.map(|d| format!("delay={d}, ")).unwrap_or_default();
    format!(
        "action={action}, reason={reason}, {delay}client_name={}, client_address={}, sender={}, recipient={}",
        req.client_name, req.client_address, req.sender, req.recipient
    )
}

/// postgrey's reason for an outcome, and the delay it logs.
pub fn outcome_words(o: &Outcome) -> (&'static str, String, Option<i64>) {
    match *o {
        Outcome::AwlPass => ("pass", "client AWL".into(), None),
        Outcome::Pass { delayed } => ("pass", "triplet found".into(), delayed),
        Outcome::Greylist { new: true, .. } => ("greylist", "new".into(), None),
        Outcome::Greylist { remaining, .. } => (
            "greylist",
            format!("early-retry ({remaining}s missing)"),
            None,
        ),
    }
}

/// `Sun, 22 Nov 2026 10:00:00 +0000`.
pub fn rfc2822(unix: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix.div_euclid(86400);
    let secs = unix.rem_euclid(86400);
    let (year, month, day) = state::clock::civil_from_days(days);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} +0000",
        DAYS[usize::try_from(days.rem_euclid(7)).unwrap_or(0)],
        MONTHS[usize::try_from(month - 1).unwrap_or(0)],
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgrey_texts() {
        let mut req = Request {
            recipient: "Bob@Example.ORG".into(),
            client_name: "unknown".into(),
            client_address: "192.0.2.1".into(),
            sender: "a@b.example".into(),
            etrn_domain: Some(String::new()),
            ..Request::default()
        };
        let t = "Greylisted, see http://postgrey.schweikert.ch/help/%r.html";
        assert_eq!(
            greylist_text(t, &req, 100),
            "4.2.0 Greylisted, see http://postgrey.schweikert.ch/help/example.org.html"
        );
        assert_eq!(
            greylist_text("4.7.1 wait %ss", &req, 100),
            "4.7.1 wait 100s"
        );
        req.etrn_domain = None;
        assert_eq!(greylist_text("wait", &req, 1), "wait");
        let line = postgrey_line("pass", "triplet found", Some(185), &req);
        assert_eq!(
            line,
            "action=pass, reason=triplet found, delay=185, client_name=unknown, client_address=192.0.2.1, sender=a@b.example, recipient=Bob@Example.ORG"
        );
        assert_eq!(
            outcome_words(&Outcome::Greylist {
                new: false,
                remaining: 47
            })
            .1,
            "early-retry (47s missing)"
        );
    }

    #[test]
    fn dates_and_headers() {
        assert_eq!(rfc2822(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc2822(1_795_345_200), "Sun, 22 Nov 2026 11:00:00 +0000");
        assert_eq!(rfc2822(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        let h = greylist_header(
            "X-Greylist: delayed %t seconds by miab-policyd-%v at %h; %d",
            185,
            "box.example.com",
            0,
        );
        assert!(
            h.starts_with("X-Greylist: delayed 185 seconds by miab-policyd-0."),
            "{h}"
        );
        assert!(
            h.ends_with("at box.example.com; Thu, 01 Jan 1970 00:00:00 +0000"),
            "{h}"
        );
    }
}
