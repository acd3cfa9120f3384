//! Which of the box's domains unauthenticated local mail (`sendmail`, Sieve, a loopback SMTP
//! client without a login) may be signed for.
//!
//! Postfix tells a milter neither the local user behind `sendmail` nor the program behind a
//! loopback connection, and anything on the box can use either. So such mail is signed only
//! where what it shows leaves no doubt, in this order:
//! - it came in from outside through this box: it carries an Authentication-Results header of
//!   ours, which incoming mail cannot bring (those are removed on the way in). A Sieve
//!   `redirect` is such mail. Signed only for a From: domain that passed DMARC here.
//! - the box's own names (its hostname and `sign_local_domains`): cron, MIAB's notices,
//!   Nextcloud's, miab-policyd's.
//! - an automatic reply made here (Sieve vacation): null envelope sender, an
//!   `Auto-Submitted:` other than `no`, and a From: that is one of the box's mailboxes.
//!
//! Everything else needs SMTP AUTH, where containment and the From: check apply.

/// What a message shows about where it came from, gathered while its headers pass.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Evidence {
    /// It carries an Authentication-Results header of ours.
    pub came_in: bool,
    /// The From: domains our DMARC results passed (lowercase).
    pub dmarc_pass: Vec<String>,
    /// `Auto-Submitted:` with a value other than `no`.
    pub auto_submitted: bool,
}

impl Evidence {
    /// Takes in one of our Authentication-Results values.
    pub(crate) fn our_results(&mut self, value: &str) {
        self.came_in = true;
        if word_after(value, "dmarc=").is_some_and(|w| w.eq_ignore_ascii_case("pass"))
            && let Some(d) = word_after(value, "header.from=")
        {
            let d = d
                .trim_matches('"')
                .trim_end_matches('.')
                .to_ascii_lowercase();
            if !d.is_empty() && !self.dmarc_pass.contains(&d) && self.dmarc_pass.len() < 16 {
                self.dmarc_pass.push(d);
            }
        }
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
    /// It came in from outside and its From: domain did not pass DMARC here.
    CameInUnproven,
    /// It has no login and is neither the box's own mail nor an automatic reply.
    NoLogin,
}

impl Unsigned {
    pub(crate) fn why(self) -> &'static str {
        match self {
            Unsigned::CameInUnproven => {
                "came in from outside and its From: domain did not pass DMARC here; not signed"
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
        return if e.dmarc_pass.iter().any(|d| d == m.domain) {
            Ok(())
        } else {
            Err(Unsigned::CameInUnproven)
        };
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

/// The word after `key` in an Authentication-Results value, up to a blank, `;`, `(` or `)`.
fn word_after<'a>(value: &'a str, key: &str) -> Option<&'a str> {
    let lower = value.to_ascii_lowercase();
    let at = lower.find(key)? + key.len();
    let rest = value.get(at..)?;
    let end = rest
        .find(|c: char| c.is_ascii_whitespace() || matches!(c, ';' | '(' | ')'))
        .unwrap_or(rest.len());
    Some(&rest[..end])
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
    fn mail_that_came_in_is_signed_only_where_dmarc_passed() {
        let own: Vec<String> = vec!["box.example.com".into()];
        let mut e = Evidence::default();
        e.our_results("box.example.com; spf=pass smtp.mailfrom=x.example");
        e.our_results(" box.example.com; dmarc=fail (p=none dis=none) header.from=example.com");
        let m = local("example.com", "ceo@example.com", false, &own);
        assert_eq!(may_sign(m, &e, |_| true), Err(Unsigned::CameInUnproven));
        // Even the box's own name and an automatic reply: it came in.
        let m = local("box.example.com", "a@box.example.com", true, &own);
        e.auto_submitted("auto-replied");
        assert_eq!(may_sign(m, &e, |_| true), Err(Unsigned::CameInUnproven));
        e.our_results("box.example.com; dmarc=PASS (p=none dis=none) header.from=Example.COM.");
        let m = local("example.com", "ceo@example.com", false, &own);
        assert_eq!(may_sign(m, &e, |_| true), Ok(()));
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

    #[test]
    fn hostile_results_are_bounded() {
        let mut e = Evidence::default();
        for i in 0..100 {
            e.our_results(&format!("h; dmarc=pass header.from=d{i}.example"));
        }
        e.our_results("h; dmarc=pass header.from=");
        e.our_results("h; dmarc=pass header.from=\u{e9}\u{e9};");
        assert_eq!(e.dmarc_pass.len(), 16);
        assert_eq!(word_after("dmarc=", "dmarc="), Some(""));
        assert_eq!(word_after("x", "dmarc="), None);
    }
}
