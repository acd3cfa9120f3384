//! The decisions and their wording, as plain functions: which checks a request gets, how
//! their verdicts combine, and the exact texts Postfix and postgrey users know.

use crate::greylist::Outcome;
use crate::proto::Request;

/// The checks, by their configuration names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    SenderLogin,
    ForgedSender,
    RateLimit,
    Containment,
    Rhsbl,
    Dnsbl,
    Greylist,
}

impl Check {
    /// Every check, in the default order of the list.
    pub const ALL: [Check; 7] = [
        Check::SenderLogin,
        Check::ForgedSender,
        Check::RateLimit,
        Check::Containment,
        Check::Rhsbl,
        Check::Dnsbl,
        Check::Greylist,
    ];

    /// The check for a configuration name.
    pub fn parse(name: &str) -> Result<Check, String> {
        Check::ALL
            .into_iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = Check::ALL.iter().map(|c| c.name()).collect();
                format!("unknown check {name:?} (known: {})", known.join(", "))
            })
    }

    /// Its configuration name.
    pub fn name(self) -> &'static str {
        match self {
            Check::SenderLogin => "sender_login",
            Check::ForgedSender => "forged_sender",
            Check::RateLimit => "rate_limit",
            Check::Containment => "containment",
            Check::Rhsbl => "rhsbl",
            Check::Dnsbl => "dnsbl",
            Check::Greylist => "greylist",
        }
    }

    /// Does it decide about a login (and so trust the `sasl_username` it is told)?
    pub fn is_login_check(self) -> bool {
        matches!(
            self,
            Check::SenderLogin | Check::ForgedSender | Check::RateLimit | Check::Containment
        )
    }

    /// Checks about the sender, which belong in `smtpd_sender_restrictions` so Postfix words
    /// their rejections `Sender address rejected`.
    fn is_sender_check(self) -> bool {
        matches!(
            self,
            Check::SenderLogin
                | Check::ForgedSender
                | Check::RateLimit
                | Check::Containment
                | Check::Rhsbl
        )
    }
}

/// The configured checks that apply to a request's `policy_context`: `sender` runs the
/// sender checks, `recipient` the others, `data` (end of data) containment only, anything
/// else (one reference only) runs all.
pub fn checks_for<'a>(context: &str, configured: &'a [Check]) -> impl Iterator<Item = Check> + 'a {
    let pick = match context {
        "sender" => Some(true),
        "recipient" => Some(false),
        _ => None,
    };
    // End of data: the message is complete and only containment counts it.
    let data = context == "data";
    configured.iter().copied().filter(move |c| {
        if data {
            *c == Check::Containment
        } else {
            pick.is_none_or(|s| c.is_sender_check() == s)
        }
    })
}

/// One check's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No opinion.
    Dunno,
    /// Let it through, adding a header.
    Prepend(String),
    /// Stop here with this action (reject, defer).
    Stop(String),
}

/// Folds verdicts in check order: the first `Stop` wins; otherwise the first header is kept;
/// otherwise `DUNNO`. Returns the action to send.
pub fn combine(verdicts: impl IntoIterator<Item = Verdict>) -> String {
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
    prepend.map_or_else(|| "DUNNO".to_owned(), |h| format!("PREPEND {h}"))
}

/// Postfix's wording for `reject_authenticated_sender_login_mismatch`; Postfix adds
/// `<addr>: Sender address rejected: ` in front.
pub fn sender_not_owned(login: &str) -> String {
    format!("553 5.7.1 not owned by user {login}")
}

/// Postfix's wording for `reject_unauthenticated_sender_login_mismatch`.
pub fn sender_not_logged_in() -> String {
    "553 5.7.1 not logged in".to_owned()
}

pub use userdb::address::domain_lowercase as domain_of;

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
    fn contexts_select_checks() {
        let all: Vec<Check> = Check::ALL.to_vec();
        let names = |ctx| checks_for(ctx, &all).map(Check::name).collect::<Vec<_>>();
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
        assert!(
            Check::parse("greylisting")
                .unwrap_err()
                .contains("greylist")
        );
    }

    #[test]
    fn first_stop_wins_and_headers_survive() {
        assert_eq!(combine([]), "DUNNO");
        assert_eq!(
            combine([Verdict::Prepend("X-A: 1".into()), Verdict::Dunno]),
            "PREPEND X-A: 1"
        );
        assert_eq!(
            combine([
                Verdict::Prepend("X-A: 1".into()),
                Verdict::Stop("554 5.7.1 no".into()),
                Verdict::Stop("450 later".into())
            ]),
            "554 5.7.1 no"
        );
    }

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
