//! Runs the configured checks for one request: gathers what each needs (user DB, DNS, the
//! greylist store) and turns the answers into verdicts through [`crate::handler`].
//!
//! A check that cannot finish (DB locked, store down) gives the configured fail action and a
//! log line; a DNS failure inside a block-list or SPF check is not an error at all, it only
//! means "no opinion".

use crate::containment::Containment;
use crate::dns;
use crate::dnsbl::{self, Checker, List, ListAction, Verdict as ListVerdict};
use crate::greylist::store::Store;
use crate::greylist::whitelist::Whitelists;
use crate::greylist::{Outcome, normalize};
use crate::handler::{self, Check, Verdict};
use crate::net::{Cidr, any_contains};
use crate::proto::Request;
use crate::syslog::Syslog;
use directory::{Directory, Live};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use mail_auth::{MessageAuthenticator, SpfResult};
use state::clock::unix_now;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use userdb::Delimiters;

/// Greylisting's settings and state.
#[derive(Debug)]
pub struct Greylisting {
    pub store: Store,
    pub whitelists: Whitelists,
    pub v4_prefix: u8,
    pub v6_prefix: u8,
    pub action: String,
    pub text: String,
    pub header: Option<String>,
    pub spf_pool: bool,
    pub dry_run: bool,
    pub syslog: Syslog,
}

/// Per-login limiters; `None` when the limit is 0.
#[derive(Debug, Default)]
pub struct RateLimits {
    pub messages: Option<(u32, DefaultKeyedRateLimiter<String>)>,
    pub recipients: Option<(u32, DefaultKeyedRateLimiter<String>)>,
}

impl RateLimits {
    /// Limiters for `messages` and `recipients` per hour.
    pub fn per_hour(messages: u32, recipients: u32) -> RateLimits {
        let limiter =
            |n: u32| NonZeroU32::new(n).map(|n| (n.get(), RateLimiter::keyed(Quota::per_hour(n))));
        RateLimits {
            messages: limiter(messages),
            recipients: limiter(recipients),
        }
    }

    /// Drops limiter state for idle logins (called now and then, keeps memory bounded).
    pub fn retain_recent(&self) {
        for (_, l) in self.messages.iter().chain(&self.recipients) {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// Everything a decision may need. Shared by all connections.
pub struct Policy {
    pub checks: Vec<Check>,
    pub fail_action: String,
    pub security_fail_action: String,
    pub trusted: Vec<Cidr>,
    pub hostname: String,
    pub dir: Live,
    pub delims: Arc<Delimiters>,
    pub auth: MessageAuthenticator,
    pub dns_timeout: Duration,
    pub lists: Checker,
    pub client_lists: Vec<List>,
    pub sender_lists: Vec<List>,
    pub greylist: Option<Greylisting>,
    pub rate: RateLimits,
    pub containment: Option<Containment>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("checks", &self.checks)
            .field("fail_action", &self.fail_action)
            .field("hostname", &self.hostname)
            .finish_non_exhaustive()
    }
}

/// What one connection remembers between requests (one smtpd process, one message at a
/// time).
#[derive(Debug, Default)]
pub struct ConnState {
    /// The message that already got an X-Greylist header (postgrey adds one per message).
    header_instance: String,
    /// The message already counted by the message rate limit.
    counted_instance: String,
    /// The connection came in on `greylist_listen`: no check about a login runs.
    greylist_only: bool,
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

/// A check that could not decide.
#[derive(Debug)]
struct Failed(String);

impl Policy {
    /// The action for one request.
    pub async fn evaluate(&self, req: &Request, conn: &mut ConnState) -> String {
        let client_ip: Option<IpAddr> = req.client_address.parse().ok();
        let trusted = client_ip.is_some_and(|ip| any_contains(&self.trusted, ip));
        let mut verdicts = Vec::new();
        for check in handler::checks_for(&req.policy_context, &self.checks) {
            if conn.greylist_only && check.is_login_check() {
                continue;
            }
            let v = match check {
                Check::SenderLogin => self.sender_login(req).await,
                Check::ForgedSender => self.forged_sender(req, client_ip, trusted).await,
                Check::RateLimit => Ok(self.rate_limit(req, conn)),
                Check::Containment => self.containment(req).await,
                Check::Rhsbl => Ok(self.rhsbl(req).await),
                Check::Dnsbl => Ok(self.dnsbl(req, client_ip, trusted).await),
                Check::Greylist => self.greylist(req, client_ip, trusted, conn).await,
            };
            match v {
                Ok(v @ Verdict::Stop(_)) => {
                    verdicts.push(v);
                    break;
                }
                Ok(v) => verdicts.push(v),
                Err(Failed(why)) => {
                    // Security checks fail closed; greylisting and block lists fail open.
                    let action = match check {
                        Check::SenderLogin | Check::ForgedSender | Check::Containment => {
                            &self.security_fail_action
                        }
                        _ => &self.fail_action,
                    };
                    tracing::warn!(
                        check = check.name(), error = %why,
                        %action, "check failed; answering the fail action"
                    );
                    // A DUNNO fail action lets the remaining checks have their say.
                    if !action.eq_ignore_ascii_case("DUNNO") {
                        verdicts.push(Verdict::Stop(action.clone()));
                        break;
                    }
                }
            }
        }
        handler::combine(verdicts)
    }

    async fn sender_login(&self, req: &Request) -> Result<Verdict, Failed> {
        // Postfix skips the null sender, and unauthenticated clients are not its business.
        if !req.is_authenticated() || req.sender.is_empty() {
            return Ok(Verdict::Dunno);
        }
        let owned = self
            .dir
            .current()
            .await
            .map_err(|e| Failed(e.to_string()))?
            .may_send_as(&req.sasl_username, &req.sender, &self.delims);
        if owned {
            return Ok(Verdict::Dunno);
        }
        tracing::info!(login = ?req.sasl_username, sender = ?req.sender, client = ?req.client_address,
            "sender address not owned by the login; rejected");
        Ok(Verdict::Stop(handler::sender_not_owned(&req.sasl_username)))
    }

    async fn forged_sender(
        &self,
        req: &Request,
        ip: Option<IpAddr>,
        trusted: bool,
    ) -> Result<Verdict, Failed> {
        let Some(domain) = handler::domain_of(&req.sender) else {
            return Ok(Verdict::Dunno);
        };
        if req.is_authenticated() || trusted {
            return Ok(Verdict::Dunno);
        }
        let ours = self
            .dir
            .current()
            .await
            .map_err(|e| Failed(e.to_string()))?
            .is_local_domain(&domain);
        if !ours {
            return Ok(Verdict::Dunno);
        }
        if let Some(ip) = ip
            && self.spf(ip, req).await == Some(SpfResult::Pass)
        {
            return Ok(Verdict::Dunno);
        }
        tracing::info!(sender = ?req.sender, client = ?req.client_address,
            "unauthenticated mail from one of our domains; rejected");
        Ok(Verdict::Stop(handler::sender_not_logged_in()))
    }

    fn rate_limit(&self, req: &Request, conn: &mut ConnState) -> Verdict {
        if !req.is_authenticated() {
            return Verdict::Dunno;
        }
        let login = req.sasl_username.to_lowercase();
        if let Some((n, lim)) = &self.rate.messages
            && conn.counted_instance != req.instance
        {
            if lim.check_key(&login).is_err() {
                tracing::warn!(login = ?login, client = ?req.client_address, limit = n,
                    "message rate limit reached; deferred");
                return Verdict::Stop(format!(
                    "450 4.7.1 rate limit: {login} may send {n} messages per hour"
                ));
            }
            conn.counted_instance.clone_from(&req.instance);
        }
        if let Some((n, lim)) = &self.rate.recipients
            && !req.recipient.is_empty()
            && lim.check_key(&login).is_err()
        {
            tracing::warn!(login = ?login, client = ?req.client_address, limit = n,
                "recipient rate limit reached; deferred");
            return Verdict::Stop(format!(
                "450 4.7.1 rate limit: {login} may send to {n} recipients per hour"
            ));
        }
        Verdict::Dunno
    }

    async fn containment(&self, req: &Request) -> Result<Verdict, Failed> {
        let Some(c) = &self.containment else {
            return Ok(Verdict::Dunno);
        };
        if !req.is_authenticated() {
            return Ok(Verdict::Dunno);
        }
        let dir = self
            .dir
            .current()
            .await
            .map_err(|e| Failed(e.to_string()))?;
        c.check(req, &dir, &self.delims)
            .await
            .map_err(|e| Failed(e.0))
    }

    async fn rhsbl(&self, req: &Request) -> Verdict {
        let Some(domain) = handler::domain_of(&req.sender) else {
            return Verdict::Dunno;
        };
        self.first_listing(
            &self.sender_lists,
            &domain,
            "Sender address",
            &req.sender,
            req,
        )
        .await
    }

    async fn dnsbl(&self, req: &Request, ip: Option<IpAddr>, trusted: bool) -> Verdict {
        let Some(ip) = ip else {
            return Verdict::Dunno;
        };
        if req.is_authenticated() || trusted {
            return Verdict::Dunno;
        }
        let name = dnsbl::reversed(ip);
        self.first_listing(
            &self.client_lists,
            &name,
            "Client host",
            &req.client_address,
            req,
        )
        .await
    }

    /// Asks `lists` in order about `name`; the first one that lists it with a blocking action
    /// decides. `class` and `what` fill Postfix's reply text.
    async fn first_listing(
        &self,
        lists: &[List],
        name: &str,
        class: &str,
        what: &str,
        req: &Request,
    ) -> Verdict {
        for list in lists {
            let ListVerdict::Listed(code) = self.lists.check(list, name).await else {
                continue;
            };
            tracing::info!(list = %list.name, %code, client = ?req.client_address, sender = ?req.sender,
                recipient = %req.recipient, action = ?list.action, "listed");
            let status = match list.action {
                ListAction::Reject => "554 5.7.1",
                ListAction::Defer => "450 4.7.1",
                ListAction::Warn => continue,
            };
            let reason = self.lists.reason(list, name).await;
            let text = dnsbl::reply_text(class, what, &list.name, reason.as_deref());
            return Verdict::Stop(format!("{status} {text}"));
        }
        Verdict::Dunno
    }

    async fn spf(&self, ip: IpAddr, req: &Request) -> Option<SpfResult> {
        // One DNS timeout in all, so a dead resolver costs a request at most one timeout per
        // check (the packaged Postfix lines wait 10 s); SPF that takes longer is no pass.
        let limit = self.dns_timeout;
        dns::spf_passes(
            &self.auth,
            ip,
            &req.helo_name,
            &self.hostname,
            &req.sender,
            limit,
        )
        .await
    }

    async fn greylist(
        &self,
        req: &Request,
        ip: Option<IpAddr>,
        trusted: bool,
        conn: &mut ConnState,
    ) -> Result<Verdict, Failed> {
        let Some(g) = &self.greylist else {
            return Ok(Verdict::Dunno);
        };
        if req.is_authenticated() || trusted || req.recipient.is_empty() {
            return Ok(Verdict::Dunno);
        }
        let log = |action: &str, reason: &str, delay: Option<i64>| {
            g.syslog
                .postgrey(&handler::postgrey_line(action, reason, delay, req));
        };
        let lists = g.whitelists.current();
        let (clients, recipients) = &*lists;
        if clients.matches(&req.client_name, &req.client_address) {
            log("pass", "client whitelist", None);
            return Ok(Verdict::Dunno);
        }
        if recipients.matches(&req.recipient) {
            log("pass", "recipient whitelist", None);
            return Ok(Verdict::Dunno);
        }
        let mut net = normalize::client_net(&req.client_address, g.v4_prefix, g.v6_prefix);
        if g.spf_pool
            && let (Some(ip), Some(domain)) = (ip, handler::domain_of(&req.sender))
            && self.spf(ip, req).await == Some(SpfResult::Pass)
        {
            // The sender's own SPF vouches for this address: any address it lists may retry.
            net = format!("spf:{domain}");
        }
        let key = format!(
            "{net}/{}/{}",
            normalize::sender(&req.sender),
            req.recipient.to_lowercase()
        );
        let now = unix_now();
        let (outcome, writes) = g
            .store
            .decide(key, req.client_address.clone(), now)
            .await
            .map_err(|e| Failed(e.to_string()))?;
        let (action, reason, delay) = handler::outcome_words(&outcome);
        log(action, &reason, delay);
        if writes.newly_whitelisted {
            let who = if req.client_name.is_empty() || req.client_name == "unknown" {
                &req.client_address
            } else {
                &req.client_name
            };
            g.syslog.postgrey(&format!("whitelisted: {who}"));
        }
        Ok(match outcome {
            Outcome::Greylist { remaining, .. } if !g.dry_run => Verdict::Stop(format!(
                "{} {}",
                g.action,
                handler::greylist_text(&g.text, req, remaining)
            )),
            Outcome::Pass {
                delayed: Some(delayed),
            } if g.header.is_some() && conn.header_instance != req.instance => {
                conn.header_instance.clone_from(&req.instance);
                Verdict::Prepend(handler::greylist_header(
                    g.header.as_deref().unwrap_or_default(),
                    delayed,
                    &self.hostname,
                    now,
                ))
            }
            _ => Verdict::Dunno,
        })
    }
}
