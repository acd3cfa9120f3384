//! The checks, each in a file of its own with its texts and its rule, all behind one trait
//! ([`Check`]). A new check is a file here and a line in [`REGISTRY`].
//!
//! - [`sender_login`]: Postfix's `reject_authenticated_sender_login_mismatch`, from the
//!   directory;
//! - [`forged_sender`]: unauthenticated mail from one of our domains, unless SPF vouches;
//! - [`rate_limit`]: messages and recipients per login and hour;
//! - [`containment`]: a login sending far past its own history is held;
//! - [`rhsbl`], [`dnsbl`]: Spamhaus's DBL and ZEN (or any list);
//! - [`greylist`]: postgrey's greylisting.
//!
//! What they share (the directory, DNS, SPF, the block-list checker) is [`Shared`]; what one
//! connection remembers between requests is [`ConnState`].

pub mod containment;
pub mod dnsbl;
pub mod forged_sender;
pub mod greylist;
pub mod rate_limit;
pub mod rhsbl;
pub mod sender_login;

use crate::dns;
use crate::dnsbl::{Checker, List, ListAction, Verdict as ListVerdict};
use crate::login::Login;
use crate::metrics::{ListKind, ListResult};
use crate::proto::Request;
use crate::settings::Settings;
use crate::verdict::{Action, Verdict};
use crate::{Report, StartError};
use directory::{Live, Snapshot};
use mail_auth::{MessageAuthenticator, SpfResult};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use userdb::Delimiters;

/// When Postfix asks a check: in `smtpd_sender_restrictions` (so its rejections read `Sender
/// address rejected`) or in `smtpd_recipient_restrictions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Sender,
    Recipient,
}

/// A check that could not decide, and why (for the log line).
#[derive(Debug)]
pub struct Failed(pub String);

/// A check's answer, some time later.
pub type Decision<'a> = Pin<Box<dyn Future<Output = Result<Verdict, Failed>> + Send + 'a>>;

/// One check.
pub trait Check: Send + Sync + std::fmt::Debug {
    /// Its name in `checks`.
    fn name(&self) -> &'static str;
    /// Where it belongs in Postfix's restrictions.
    fn stage(&self) -> Stage;
    /// Does it decide about a login (and so trust the `sasl_username` it is told)? Such a
    /// check never runs on `greylist_listen`.
    fn about_login(&self) -> bool {
        false
    }
    /// Does it count the message at end of data (`policy_context=data`)?
    fn at_end_of_data(&self) -> bool {
        false
    }
    /// When it cannot decide, does it answer `security_fail_action` (fail closed) rather than
    /// `fail_action`?
    fn fails_closed(&self) -> bool {
        false
    }
    /// Its verdict on one request.
    fn decide<'a>(
        &'a self,
        ask: &'a Ask<'a>,
        shared: &'a Shared,
        conn: &'a mut ConnState,
    ) -> Decision<'a>;
    /// How often [`Check::tend`] should run, if at all.
    fn tend_every(&self) -> Option<Duration> {
        None
    }
    /// Upkeep: forgetting idle state, re-reading files. Quick; heavy work goes off the thread.
    fn tend(&self) {}
    /// The daemon was told to re-read its files (SIGHUP).
    fn reread(&self) {}
}

/// How a check is made from the settings.
pub type Build = fn(&mut Building<'_>) -> Result<Arc<dyn Check>, StartError>;

/// Every check, in the default order of the list.
pub const REGISTRY: [(&str, Build); 7] = [
    (sender_login::NAME, sender_login::build),
    (forged_sender::NAME, forged_sender::build),
    (rate_limit::NAME, rate_limit::build),
    (containment::NAME, containment::build),
    (rhsbl::NAME, rhsbl::build),
    (dnsbl::NAME, dnsbl::build),
    (greylist::NAME, greylist::build),
];

/// A registered check, as `checks` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckName(usize);

impl CheckName {
    /// The check registered as `name`.
    pub fn parse(name: &str) -> Result<CheckName, String> {
        REGISTRY
            .iter()
            .position(|(n, _)| *n == name)
            .map(CheckName)
            .ok_or_else(|| {
                let known: Vec<&str> = REGISTRY.iter().map(|(n, _)| *n).collect();
                format!("unknown check {name:?} (known: {})", known.join(", "))
            })
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        REGISTRY[self.0].0
    }
}

/// What building a check may use.
#[derive(Debug)]
pub struct Building<'a> {
    pub settings: &'a Settings,
    /// The store several hosts share, if the configuration names one.
    pub store: Option<Arc<state::pg::Pg>>,
    pub hostname: &'a str,
    pub report: &'a mut Report,
}

/// Builds the configured checks, in order.
pub fn build_all(b: &mut Building<'_>) -> Result<Vec<Arc<dyn Check>>, StartError> {
    let names = b.settings.checks.clone();
    names.iter().map(|n| (REGISTRY[n.0].1)(b)).collect()
}

/// Is `check` asked in this `policy_context`? `sender` runs the sender-stage checks,
/// `recipient` the others, `data` (end of data) only those that count the message, anything
/// else (one reference only) all.
pub fn runs_in(check: &dyn Check, context: &str) -> bool {
    match context {
        "sender" => check.stage() == Stage::Sender,
        "recipient" => check.stage() == Stage::Recipient,
        "data" => check.at_end_of_data(),
        _ => true,
    }
}

/// One request, as the checks see it.
#[derive(Debug)]
pub struct Ask<'a> {
    pub req: &'a Request,
    /// The login, if the client authenticated.
    pub login: Option<Login>,
    pub client_ip: Option<IpAddr>,
    /// The client is in `trusted_clients`.
    pub trusted: bool,
}

/// What every check may use. Shared by all connections.
pub struct Shared {
    pub dir: Live,
    pub delims: Arc<Delimiters>,
    pub hostname: String,
    pub auth: MessageAuthenticator,
    pub dns_timeout: Duration,
    pub lists: Checker,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("hostname", &self.hostname)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The directory as it is now.
    pub async fn snapshot(&self) -> Result<Arc<Snapshot>, Failed> {
        self.dir.current().await.map_err(|e| Failed(e.to_string()))
    }

    /// SPF for the request's sender at `ip`, within one DNS timeout in all, so a dead
    /// resolver costs a request at most one timeout per check (the packaged Postfix lines
    /// wait 10 s); SPF that takes longer is no pass.
    pub async fn spf(&self, ip: IpAddr, req: &Request) -> Option<SpfResult> {
        let started = std::time::Instant::now();
        let r = dns::spf_passes(
            &self.auth,
            ip,
            &req.helo_name,
            &self.hostname,
            &req.sender,
            self.dns_timeout,
        )
        .await;
        crate::metrics::spf(started.elapsed());
        r
    }

    /// Asks `lists` in order about `name`; the first one that lists it with a blocking action
    /// decides. `kind` and `what` fill Postfix's reply text.
    pub async fn first_listing(
        &self,
        lists: &[List],
        name: &str,
        kind: ListKind,
        what: &str,
        req: &Request,
    ) -> Verdict {
        let class = match kind {
            ListKind::client => "Client host",
            ListKind::sender => "Sender address",
        };
        for list in lists {
            let started = std::time::Instant::now();
            let verdict = self.lists.check(list, name).await;
            let result = match &verdict {
                ListVerdict::Listed(_) => ListResult::listed,
                ListVerdict::Clean => ListResult::clean,
                // `dnsbl::classify` names the refusal code first.
                ListVerdict::Unusable(why) if why.starts_with("127.") => ListResult::list_error,
                ListVerdict::Unusable(why) if why.contains("in time") => ListResult::timeout,
                ListVerdict::Unusable(_) => ListResult::error,
            };
            crate::metrics::listed(kind, result, started.elapsed());
            let ListVerdict::Listed(code) = verdict else {
                continue;
            };
            tracing::info!(list = %list.name, %code, client = ?req.client_address, sender = ?req.sender,
                recipient = %req.recipient, action = ?list.action, "listed");
            let (code, dsn) = match list.action {
                ListAction::Reject => (554, "5.7.1"),
                ListAction::Defer => (450, "4.7.1"),
                ListAction::Warn => continue,
            };
            let reason = self.lists.reason(list, name).await;
            let text = crate::dnsbl::reply_text(class, what, &list.name, reason.as_deref());
            return Verdict::Stop(Action::reply(code, dsn, text));
        }
        Verdict::Dunno
    }
}

/// What one connection remembers between requests (one smtpd process, one message at a
/// time).
#[derive(Debug, Default)]
pub struct ConnState {
    /// The message that already got an X-Greylist header (postgrey adds one per message).
    pub(crate) header_instance: String,
    /// The message already counted by the message rate limit.
    pub(crate) counted_instance: String,
    /// The connection came in on `greylist_listen`: no check about a login runs.
    pub(crate) greylist_only: bool,
}

impl ConnState {
    /// For a connection on `greylist_listen`.
    pub fn greylist_only() -> ConnState {
        ConnState {
            greylist_only: true,
            ..ConnState::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_names_each_check_once() {
        let names: Vec<&str> = REGISTRY.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "sender_login",
                "forged_sender",
                "rate_limit",
                "containment",
                "rhsbl",
                "dnsbl",
                "greylist"
            ]
        );
        assert!(
            CheckName::parse("greylisting")
                .unwrap_err()
                .contains("greylist")
        );
        assert_eq!(CheckName::parse("dnsbl").unwrap().as_str(), "dnsbl");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn contexts_select_checks() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings {
            checks: REGISTRY
                .iter()
                .map(|(n, _)| CheckName::parse(n).unwrap())
                .collect(),
            ..Settings::default()
        };
        settings.greylist.db = Some(dir.path().join("greylist.sqlite"));
        settings.greylist.syslog_socket = None;
        settings.containment.db = Some(dir.path().join("sending.sqlite"));
        let mut report = Report::default();
        let all = build_all(&mut Building {
            settings: &settings,
            store: None,
            hostname: "box.example.com",
            report: &mut report,
        })
        .unwrap();
        let names = |ctx| {
            all.iter()
                .filter(|c| runs_in(c.as_ref(), ctx))
                .map(|c| c.name())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names("sender"),
            [
                "sender_login",
                "forged_sender",
                "rate_limit",
                "containment",
                "rhsbl"
            ]
        );
        assert_eq!(names("recipient"), ["dnsbl", "greylist"]);
        assert_eq!(names("data"), ["containment"]);
        assert_eq!(names("").len(), 7);
        let about_login: Vec<&str> = all
            .iter()
            .filter(|c| c.about_login())
            .map(|c| c.name())
            .collect();
        assert_eq!(
            about_login,
            ["sender_login", "forged_sender", "rate_limit", "containment"]
        );
    }
}
