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

type Seconds = Family<CheckLabel, Histogram, fn() -> Histogram>;

/// The figures, registered on first use.
#[derive(Debug)]
pub struct Figures {
    pub check_seconds: Seconds,
    pub verdicts: Family<VerdictLabel, Counter>,
    pub answers: Family<AnswerLabel, Counter>,
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
