//! Which of the box's domains unauthenticated local mail (`sendmail`, Sieve, a loopback SMTP
//! client without a login) may be signed for.
//!
//! Postfix tells a milter neither the local user behind `sendmail` nor the program behind a
//! loopback connection, and anything on the box can use either. So such mail is signed only
//! where what it shows leaves no doubt, in this order:
//! - it came in from outside through this box: it carries an Authentication-Results header of
//!   ours, which incoming mail cannot bring (those are removed on the way in). A Sieve
//!   `redirect` is such mail. Never signed again: a From: of ours that proved itself inbound
//!   still carries the signature that proved it, and a local sender could write a result of
//!   ours saying "pass" itself.
//! - the box's own names (its hostname and `sign_local_domains`): cron, MIAB's notices,
//!   Nextcloud's, miab-policyd's.
//! - an automatic reply made here (Sieve vacation): null envelope sender, an
//!   `Auto-Submitted:` other than `no`, and a From: that is one of the box's mailboxes.
//!
//! Everything else needs SMTP AUTH, where containment and the From: check apply.

/// What a message shows about where it came from, gathered while its headers pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Evidence {
    /// It carries an Authentication-Results header of ours.
    pub came_in: bool,
    /// `Auto-Submitted:` with a value other than `no`.
    pub auto_submitted: bool,
}

impl Evidence {
    /// Takes in one of our Authentication-Results headers.
    pub(crate) fn our_results(&mut self) {
        self.came_in = true;
    }

    /// Takes in an `Auto-Submitted:` value (RFC 3834).
    pub(crate) fn auto_submitted(&mut self, value: &str) {
        let v = value.trim();
        let keyword = v
            .split([';', '(', ' ', '\t', '\r', '\n'])
            .next()
            .unwrap_or("");
        if !keyword.is_empty() && !keyword.eq_ignore_ascii_case("no") {
            self.auto_submitted = true;
        }
    }
}

/// Why a local message is not signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unsigned {
    /// It came in from outside.
    CameIn,
    /// It has no login and is neither the box's own mail nor an automatic reply.
    NoLogin,
}

impl Unsigned {
    pub(crate) fn why(self) -> &'static str {
        match self {
            Unsigned::CameIn => {
                "came in from outside (it carries our Authentication-Results); not signed again"
            }
            Unsigned::NoLogin => {
                "local mail without SMTP AUTH for a user domain (not the box's own, not an automatic reply); not signed"
            }
        }
    }
}

/// The message facts the rule needs beyond [`Evidence`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Local<'a> {
    /// The From: domain to sign for (lowercase).
    pub domain: &'a str,
    /// Its address, as written.
    pub from: &'a str,
    /// The envelope sender is null (`<>`).
    pub null_sender: bool,
    /// The box's own names: its hostname and `sign_local_domains`.
    pub own_domains: &'a [String],
}

/// May unauthenticated local mail be signed for `m.domain`? `is_mailbox` answers whether an
/// address is one of the box's mailboxes.
pub(crate) fn may_sign(
    m: Local<'_>,
    e: &Evidence,
    is_mailbox: impl FnOnce(&str) -> bool,
) -> Result<(), Unsigned> {
    if e.came_in {
        return Err(Unsigned::CameIn);
    }
    if m.own_domains
        .iter()
        .any(|d| d.eq_ignore_ascii_case(m.domain))
    {
        return Ok(());
    }
    if m.null_sender && e.auto_submitted && is_mailbox(m.from) {
        return Ok(());
    }
    Err(Unsigned::NoLogin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local<'a>(domain: &'a str, from: &'a str, null: bool, own: &'a [String]) -> Local<'a> {
        Local {
            domain,
            from,
            null_sender: null,
            own_domains: own,
        }
    }

    #[test]
    fn mail_that_came_in_is_never_signed_again() {
        let own: Vec<String> = vec!["box.example.com".into()];
        let e = Evidence {
            came_in: true,
            auto_submitted: true,
        };
        // Whatever else it shows: the box's own name, an automatic reply, a user's domain.
        for (d, from) in [
            ("example.com", "ceo@example.com"),
            ("box.example.com", "a@box.example.com"),
        ] {
            let m = local(d, from, true, &own);
            assert_eq!(may_sign(m, &e, |_| true), Err(Unsigned::CameIn));
        }
    }

    #[test]
    fn local_mail_is_signed_for_the_box_and_for_automatic_replies_only() {
        let own: Vec<String> = vec!["box.example.com".into(), "cron.example".into()];
        let none = Evidence::default();
        for d in ["box.example.com", "BOX.example.com", "cron.example"] {
            assert_eq!(
                may_sign(local(d, "x@y", false, &own), &none, |_| false),
                Ok(())
            );
        }
        let m = local("example.com", "ceo@example.com", false, &own);
        assert_eq!(may_sign(m, &none, |_| true), Err(Unsigned::NoLogin));
        let mut auto = Evidence::default();
        auto.auto_submitted(" auto-replied (vacation)");
        let m = local("example.com", "me@example.com", true, &own);
        assert_eq!(may_sign(m, &auto, |a| a == "me@example.com"), Ok(()));
        // Not a mailbox, not a null sender, or Auto-Submitted: no.
        assert_eq!(may_sign(m, &auto, |_| false), Err(Unsigned::NoLogin));
        let m2 = local("example.com", "me@example.com", false, &own);
        assert_eq!(may_sign(m2, &auto, |_| true), Err(Unsigned::NoLogin));
        let mut no = Evidence::default();
        no.auto_submitted(" No");
        assert_eq!(may_sign(m, &no, |_| true), Err(Unsigned::NoLogin));
    }
}
