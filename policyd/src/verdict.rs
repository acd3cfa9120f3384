//! What a check answers, typed: a [`Verdict`] per check, folded into the one [`Action`]
//! Postfix is sent. Only [`Action`]'s `Display` spells the wire text.

use crate::settings;
use std::fmt;

/// A Postfix access(5) answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `DUNNO`: no opinion.
    Dunno,
    /// `PREPEND header`: let it through, adding a header.
    Prepend(String),
    /// A reply of our own: `code dsn text`, as `553 5.7.1 not owned by user x`.
    Reply {
        code: u16,
        dsn: &'static str,
        text: String,
    },
    /// What the configuration says (`DEFER_IF_PERMIT`, `HOLD`, `451 4.3.0 text`, ...), with
    /// a text of ours after it if any.
    Configured(settings::Action, Option<String>),
}

impl Action {
    /// A reply of our own.
    pub fn reply(code: u16, dsn: &'static str, text: impl Into<String>) -> Action {
        Action::Reply {
            code,
            dsn,
            text: text.into(),
        }
    }

    /// The configured action `a`, alone.
    pub fn configured(a: &settings::Action) -> Action {
        Action::Configured(a.clone(), None)
    }

    /// Is it `DUNNO` (whatever the configuration's case)?
    pub fn is_dunno(&self) -> bool {
        match self {
            Action::Dunno => true,
            Action::Configured(a, None) => a.as_str().eq_ignore_ascii_case("DUNNO"),
            _ => false,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Dunno => f.write_str("DUNNO"),
            Action::Prepend(h) => write!(f, "PREPEND {h}"),
            Action::Reply { code, dsn, text } => write!(f, "{code} {dsn} {text}"),
            Action::Configured(a, None) => f.write_str(a.as_str()),
            Action::Configured(a, Some(text)) => write!(f, "{} {text}", a.as_str()),
        }
    }
}

/// One check's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No opinion.
    Dunno,
    /// Let it through, adding this header.
    Prepend(String),
    /// Stop here with this answer.
    Stop(Action),
}

/// Folds verdicts in check order: the first `Stop` wins; otherwise the first header is kept;
/// otherwise `DUNNO`.
pub fn combine(verdicts: impl IntoIterator<Item = Verdict>) -> Action {
    let mut prepend = None;
    for v in verdicts {
        match v {
            Verdict::Dunno => {}
            Verdict::Prepend(h) => {
                prepend.get_or_insert(h);
            }
            Verdict::Stop(a) => return a,
        }
    }
    prepend.map_or(Action::Dunno, Action::Prepend)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_stop_wins_and_headers_survive() {
        assert_eq!(combine([]).to_string(), "DUNNO");
        assert_eq!(
            combine([Verdict::Prepend("X-A: 1".into()), Verdict::Dunno]).to_string(),
            "PREPEND X-A: 1"
        );
        assert_eq!(
            combine([
                Verdict::Prepend("X-A: 1".into()),
                Verdict::Stop(Action::reply(554, "5.7.1", "no")),
                Verdict::Stop(Action::reply(450, "4.7.1", "later"))
            ])
            .to_string(),
            "554 5.7.1 no"
        );
        let defer = settings::Action::parse("DEFER_IF_PERMIT").unwrap();
        assert_eq!(
            Action::Configured(defer, Some("4.2.0 wait".into())).to_string(),
            "DEFER_IF_PERMIT 4.2.0 wait"
        );
        assert!(Action::configured(&settings::Action::parse("dunno").unwrap()).is_dunno());
    }
}
