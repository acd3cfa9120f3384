//! Runs the configured checks for one request, in order, and folds their verdicts into the
//! answer.
//!
//! A check that cannot finish (DB locked, store down) gives the configured fail action and a
//! log line: `security_fail_action` for the checks that fail closed, `fail_action` for the
//! others. A DNS failure inside a block-list or SPF check is not an error at all, it only
//! means "no opinion".

use crate::checks::{self, Ask, Check, ConnState, Failed, Shared};
use crate::login::Login;
use crate::metrics::{self, Answer, Outcome};
use crate::net::{Cidr, any_contains};
use crate::proto::Request;
use crate::settings;
use crate::verdict::{self, Action, Verdict};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// Everything a decision may need. Shared by all connections.
#[derive(Debug)]
pub struct Policy {
    pub checks: Vec<Arc<dyn Check>>,
    pub fail_action: settings::Action,
    pub security_fail_action: settings::Action,
    pub trusted: Vec<Cidr>,
    pub shared: Shared,
}

impl Policy {
    /// The answer to one request.
    pub async fn evaluate(&self, req: &Request, conn: &mut ConnState) -> Action {
        let client_ip: Option<IpAddr> = req.client_address.parse().ok();
        let ask = Ask {
            req,
            login: Login::of(req),
            client_ip,
            trusted: client_ip.is_some_and(|ip| any_contains(&self.trusted, ip)),
        };
        let journal = daemon::journal::enabled();
        let mut story: Vec<String> = Vec::new();
        let mut verdicts = Vec::new();
        for check in &self.checks {
            if !checks::runs_in(check.as_ref(), &req.policy_context)
                || (conn.greylist_only && check.about_login())
            {
                continue;
            }
            let started = Instant::now();
            let decided = check.decide(&ask, &self.shared, conn).await;
            let took = started.elapsed();
            match decided {
                Ok(v @ Verdict::Stop(_)) => {
                    let answer = match &v {
                        Verdict::Stop(a) => Answer::of(a),
                        _ => Answer::dunno,
                    };
                    metrics::checked(check.name(), Outcome::stop, answer, took);
                    if journal {
                        story.push(format!("{}=stop", check.name()));
                    }
                    verdicts.push(v);
                    break;
                }
                Ok(v) => {
                    metrics::checked(check.name(), Outcome::of(&v), Answer::dunno, took);
                    if journal {
                        story.push(match &v {
                            Verdict::Prepend(_) => format!("{}=header", check.name()),
                            _ => format!("{}=dunno", check.name()),
                        });
                    }
                    verdicts.push(v);
                }
                Err(Failed(why)) => {
                    // Security checks fail closed; greylisting and block lists fail open.
                    let (action, outcome) = if check.fails_closed() {
                        (&self.security_fail_action, Outcome::failed_closed)
                    } else {
                        (&self.fail_action, Outcome::failed_open)
                    };
                    tracing::warn!(
                        check = check.name(), error = %why,
                        action = action.as_str(), "check failed; answering the fail action"
                    );
                    let action = Action::configured(action);
                    metrics::checked(check.name(), outcome, Answer::of(&action), took);
                    if journal {
                        story.push(format!("{}={outcome:?}({why})", check.name()));
                    }
                    // A DUNNO fail action lets the remaining checks have their say.
                    if !action.is_dunno() {
                        verdicts.push(Verdict::Stop(action));
                        break;
                    }
                }
            }
        }
        let answer = verdict::combine(verdicts);
        metrics::answered(&answer);
        if journal {
            record(req, &answer, &story);
        }
        answer
    }
}

/// The request's journal entry: the answer by kind, its text, where Postfix asked, and each
/// check's verdict in order.
fn record(req: &Request, answer: &Action, story: &[String]) {
    let mut e = daemon::journal::JournalEntry::now("policyd", "policy");
    e.queue_id.clone_from(&req.queue_id);
    e.instance.clone_from(&req.instance);
    e.client.clone_from(&req.client_address);
    e.sender = req.sender.to_lowercase();
    e.recipient = req.recipient.to_lowercase();
    e.login = req.sasl_username.to_lowercase();
    let stage = if req.protocol_state.is_empty() {
        "?"
    } else {
        &req.protocol_state
    };
    e.detail = format!(
        "{:?}: {answer} (at {stage}; {})",
        Answer::of(answer),
        story.join(", ")
    );
    daemon::journal::record(e);
}
