//! What miab-policyd counts: per check, how long it took, what it answered and how often it
//! could not finish (and whether that let mail through or held it); per request, the answer
//! Postfix got. Labels are a check's registry name and a fixed set of answer kinds.

use crate::verdict::{Action, Verdict};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use std::sync::LazyLock;
use std::time::Duration;

/// What Postfix is told, by kind (the configured text never becomes a label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Answer {
    dunno,
    prepend,
    reject,
    tempfail,
    defer_if_permit,
    hold,
    other,
}

impl Answer {
    /// The kind of `action`: by its SMTP code for a reply, by its keyword otherwise.
    pub fn of(action: &Action) -> Answer {
        let text = action.to_string();
        let word = text.split_whitespace().next().unwrap_or_default();
        match word.to_ascii_uppercase().as_str() {
            "DUNNO" | "OK" => Answer::dunno,
            "PREPEND" => Answer::prepend,
            "REJECT" => Answer::reject,
            "DEFER" | "DEFER_IF_REJECT" => Answer::tempfail,
            "DEFER_IF_PERMIT" => Answer::defer_if_permit,
            "HOLD" => Answer::hold,
            w if w.starts_with('5') => Answer::reject,
            w if w.starts_with('4') => Answer::tempfail,
            _ => Answer::other,
        }
    }
}

/// A check's verdict, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    dunno,
    prepend,
    stop,
    failed_open,
    failed_closed,
}

impl Outcome {
    pub fn of(v: &Verdict) -> Outcome {
        match v {
            Verdict::Dunno => Outcome::dunno,
            Verdict::Prepend(_) => Outcome::prepend,
            Verdict::Stop(_) => Outcome::stop,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CheckLabel {
    pub check: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct VerdictLabel {
    pub check: &'static str,
    pub outcome: Outcome,
    /// For a stop, what it answered; `dunno` otherwise.
    pub answer: Answer,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AnswerLabel {
    pub answer: Answer,
}

/// Which lists: the client's address (`client_lists`) or the sender's domain
/// (`sender_lists`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ListKind {
    client,
    sender,
}

/// A list's answer, by kind: `list_error` is Spamhaus's "query refused" codes
/// (127.255.255.x), which say the box's resolver is not allowed to ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ListResult {
    listed,
    clean,
    list_error,
    timeout,
    error,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ListLabel {
    pub list: ListKind,
    pub result: ListResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LookupLabel {
    /// `dnsbl`, `rhsbl` or `spf`.
    pub lookup: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StoreLabel {
    /// `greylist` or `sending`.
    pub store: &'static str,
}

/// What containment did: a message held, a login newly held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum HoldEvent {
    message_held,
    login_held,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HoldLabel {
    pub event: HoldEvent,
}

type Seconds = Family<CheckLabel, Histogram, fn() -> Histogram>;

/// The figures, registered on first use.
#[derive(Debug)]
pub struct Figures {
    pub check_seconds: Seconds,
    pub verdicts: Family<VerdictLabel, Counter>,
    pub answers: Family<AnswerLabel, Counter>,
    pub dns_seconds: Family<LookupLabel, Histogram, fn() -> Histogram>,
    pub list_answers: Family<ListLabel, Counter>,
    pub store_seconds: Family<StoreLabel, Histogram, fn() -> Histogram>,
    pub holds: Family<HoldLabel, Counter>,
}

fn latency() -> Histogram {
    // 50 µs to about 1.6 s: a map lookup to a slow DNS answer.
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

pub fn figures() -> &'static Figures {
    static F: LazyLock<Figures> = LazyLock::new(|| {
        let f = Figures {
            check_seconds: Family::new_with_constructor(latency),
            verdicts: Family::default(),
            answers: Family::default(),
            dns_seconds: Family::new_with_constructor(latency),
            list_answers: Family::default(),
            store_seconds: Family::new_with_constructor(latency),
            holds: Family::default(),
        };
        daemon::metrics::register(
            "policyd_check_seconds",
            "Time one check took for one request",
            f.check_seconds.clone(),
        );
        daemon::metrics::register(
            "policyd_check_verdicts",
            "Verdicts per check: no opinion, a header, a stop (with its answer), or a failure answered with fail_action (open) or security_fail_action (closed)",
            f.verdicts.clone(),
        );
        daemon::metrics::register(
            "policyd_answers",
            "Answers sent to Postfix, by kind",
            f.answers.clone(),
        );
        daemon::metrics::register(
            "policyd_dns_seconds",
            "Time of one DNS-list question (dnsbl, rhsbl) or one SPF evaluation (spf)",
            f.dns_seconds.clone(),
        );
        daemon::metrics::register(
            "policyd_list_answers",
            "DNS-list answers by list kind and result; list_error is the list refusing the resolver (Spamhaus 127.255.255.x)",
            f.list_answers.clone(),
        );
        daemon::metrics::register(
            "store_seconds",
            "Time of one decision in a state store (greylist, sending), its commit included",
            f.store_seconds.clone(),
        );
        daemon::metrics::register(
            "policyd_holds",
            "Containment: messages put on hold, and logins newly held",
            f.holds.clone(),
        );
        f
    });
    &F
}

/// One check's verdict and time.
pub fn checked(check: &'static str, outcome: Outcome, answer: Answer, took: Duration) {
    let f = figures();
    f.check_seconds
        .get_or_create(&CheckLabel { check })
        .observe(took.as_secs_f64());
    f.verdicts
        .get_or_create(&VerdictLabel {
            check,
            outcome,
            answer,
        })
        .inc();
}

/// One DNS-list answer and the time it took.
pub fn listed(list: ListKind, result: ListResult, took: Duration) {
    let f = figures();
    let lookup = match list {
        ListKind::client => "dnsbl",
        ListKind::sender => "rhsbl",
    };
    f.dns_seconds
        .get_or_create(&LookupLabel { lookup })
        .observe(took.as_secs_f64());
    f.list_answers
        .get_or_create(&ListLabel { list, result })
        .inc();
}

/// One SPF evaluation's time.
pub fn spf(took: Duration) {
    figures()
        .dns_seconds
        .get_or_create(&LookupLabel { lookup: "spf" })
        .observe(took.as_secs_f64());
}

/// One state-store decision's time.
pub fn stored(store: &'static str, took: Duration) {
    figures()
        .store_seconds
        .get_or_create(&StoreLabel { store })
        .observe(took.as_secs_f64());
}

/// A containment hold.
pub fn held(event: HoldEvent) {
    figures().holds.get_or_create(&HoldLabel { event }).inc();
}

/// The answer Postfix got.
pub fn answered(action: &Action) {
    figures()
        .answers
        .get_or_create(&AnswerLabel {
            answer: Answer::of(action),
        })
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classed_without_their_text() {
        let cases = [
            (Action::Dunno, Answer::dunno),
            (Action::Prepend("X-Greylist: x".into()), Answer::prepend),
            (Action::reply(553, "5.7.1", "not yours"), Answer::reject),
            (Action::reply(451, "4.3.0", "later"), Answer::tempfail),
        ];
        for (a, want) in cases {
            assert_eq!(Answer::of(&a), want, "{a}");
        }
    }
}
