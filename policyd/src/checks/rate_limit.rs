//! `rate_limit`: at most so many messages and recipients per login and hour (a token bucket
//! per login); past either, the login's mail is deferred.

use super::{Ask, Building, Check, ConnState, Decision, Shared, Stage};
use crate::StartError;
use crate::verdict::{Action, Verdict};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

pub const NAME: &str = "rate_limit";

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
}

pub fn build(b: &mut Building<'_>) -> Result<Arc<dyn Check>, StartError> {
    let r = &b.settings.rate_limit;
    Ok(Arc::new(RateLimits::per_hour(
        r.messages_per_hour,
        r.recipients_per_hour,
    )))
}

impl Check for RateLimits {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::Sender
    }
    fn about_login(&self) -> bool {
        true
    }

    fn decide<'a>(
        &'a self,
        ask: &'a Ask<'a>,
        _: &'a Shared,
        conn: &'a mut ConnState,
    ) -> Decision<'a> {
        Box::pin(async move {
            let req = ask.req;
            let Some(login) = &ask.login else {
                return Ok(Verdict::Dunno);
            };
            let login = login.key();
            if let Some((n, lim)) = &self.messages
                && conn.counted_instance != req.instance
            {
                if lim.check_key(&login.to_owned()).is_err() {
                    tracing::warn!(login = ?login, client = ?req.client_address, limit = n,
                        "message rate limit reached; deferred");
                    return Ok(Verdict::Stop(Action::reply(
                        450,
                        "4.7.1",
                        format!("rate limit: {login} may send {n} messages per hour"),
                    )));
                }
                conn.counted_instance.clone_from(&req.instance);
            }
            if let Some((n, lim)) = &self.recipients
                && !req.recipient.is_empty()
                && lim.check_key(&login.to_owned()).is_err()
            {
                tracing::warn!(login = ?login, client = ?req.client_address, limit = n,
                    "recipient rate limit reached; deferred");
                return Ok(Verdict::Stop(Action::reply(
                    450,
                    "4.7.1",
                    format!("rate limit: {login} may send to {n} recipients per hour"),
                )));
            }
            Ok(Verdict::Dunno)
        })
    }

    fn tend_every(&self) -> Option<Duration> {
        Some(Duration::from_secs(60))
    }

    /// Drops limiter state for idle logins (keeps memory bounded).
    fn tend(&self) {
        for (_, l) in self.messages.iter().chain(&self.recipients) {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}
