//! The From: check through a real Postfix with SMTP AUTH (Dovecot over the box's DB) and
//! swaks: a login's own and permitted addresses pass; another user's address in From: (with
//! any display name, among several addresses, in a second From:, or in Sender:), an encoded
//! word that reads as an address and a look-alike Unicode domain are refused at end of data
//! with the documented reply; `warn` delivers and logs; local mail without AUTH is not checked.

mod common;

use common::{Setup, header_block, message_file, setup_full, swaks_file};
use miab_e2e::fixture::SWAKS_AUTH_ME;
use miab_e2e::require_program;
use miab_e2e::tools::Run;
use std::time::Duration;

/// Sends a message whose header lines are `headers` (from 127.0.0.5, with AUTH when `auth`),
/// envelope sender me@example.com; returns swaks's run.
fn send(s: &Setup, headers: &[&str], marker: &str, auth: bool) -> Run {
    let path = message_file(s, headers, marker);
    let source = if auth { "127.0.0.5" } else { "127.0.0.1" };
    let auth: &[&str] = if auth { &SWAKS_AUTH_ME } else { &[] };
    swaks_file(s.pf.smtp_port(), source, "me@example.com", &path, auth)
}

fn delivered(s: &Setup, headers: &[&str], marker: &str, auth: bool) -> String {
    let r = send(s, headers, marker, auth);
    assert!(r.ok(), "{marker}: {}\n{}", r.stdout, s.milter.log());
    s.pf.sink
        .wait_for(marker, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{marker} not delivered\n{}", s.milter.log()))
        .data
}

fn refused(s: &Setup, headers: &[&str], marker: &str, reply: &str) {
    let r = send(s, headers, marker, true);
    assert!(!r.ok(), "{marker} was accepted: {}", r.stdout);
    assert!(
        r.stdout.contains(&format!("550 5.7.1 {reply}")),
        "{marker}: {}\n{}",
        r.stdout,
        s.milter.log()
    );
}

#[test]
fn from_and_sender_must_be_the_logins() {
    require_program("/usr/bin/swaks", "swaks");
    let s = setup_full(true, "");
    let own = delivered(&s, &["From: Me <me@example.com>"], "own-from", true);
    assert!(header_block(&own).starts_with("DKIM-Signature:"), "{own}");
    delivered(
        &s,
        &["From: \"News\" <sendonly@example.com>"],
        "permitted",
        true,
    );
    delivered(&s, &["From: me+list@example.com"], "plus-ext", true);

    let not_mine = "From: address <you@example.com> is not one that me@example.com may send as";
    refused(&s, &["From: you@example.com"], "other-user", not_mine);
    refused(
        &s,
        &["From: \"Me\" <you@example.com>"],
        "display-name",
        not_mine,
    );
    refused(
        &s,
        &["From: me@example.com, you@example.com"],
        "two-addresses",
        not_mine,
    );
    refused(
        &s,
        &["From: me@example.com", "From: you@example.com"],
        "two-froms",
        not_mine,
    );
    refused(
        &s,
        &["From: me@example.com", "Sender: you@example.com"],
        "sender",
        "Sender: address <you@example.com> is not one that me@example.com may send as",
    );
    refused(
        &s,
        &["From: =?utf-8?b?eW91QGV4YW1wbGUuY29t?="],
        "encoded-word",
        "the From: header names no address",
    );
    refused(
        &s,
        &["From: me@ex\u{e4}mple.com"],
        "idn",
        "From: address <me@ex?mple.com> is not one that me@example.com may send as",
    );
    let log = s.milter.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("; refused login="))
        .collect();
    assert_eq!(lines.len(), 7, "one line per refusal:\n{log}");
    assert!(
        lines[0].contains("login=\"me@example.com\"")
            && lines[0].contains("From: address <you@example.com> is not one that"),
        "{log}"
    );

    // Local mail without AUTH (cron, sendmail over 127.0.0.1) is not checked, and signed.
    let local = delivered(&s, &["From: you@example.com"], "local-unauth", false);
    assert!(
        header_block(&local).starts_with("DKIM-Signature:"),
        "{local}"
    );
}

#[test]
fn warn_delivers_and_logs() {
    require_program("/usr/bin/swaks", "swaks");
    let s = setup_full(true, "from_header = \"warn\"");
    delivered(&s, &["From: \"Me\" <you@example.com>"], "warned", true);
    let log = s.milter.log();
    assert!(
        log.lines().any(|l| l.contains(
            "From: address <you@example.com> is not one that me@example.com may send as; delivered (from_header = warn) login=\"me@example.com\""
        )),
        "{log}"
    );
}

/// With the check off, an authenticated submission is still signed: the rule for mail
/// without a login goes by the session's login, not by the From: check.
#[test]
fn off_still_signs_authenticated_mail() {
    require_program("/usr/bin/swaks", "swaks");
    let s = setup_full(true, "from_header = \"off\"\nsign_local_domains = []");
    let own = delivered(&s, &["From: Me <me@example.com>"], "off-own", true);
    assert!(header_block(&own).starts_with("DKIM-Signature:"), "{own}");
    // Without a login the same From: is not signed (not the box's own name).
    let local = delivered(&s, &["From: Me <me@example.com>"], "off-local", false);
    assert!(!header_block(&local).contains("DKIM-Signature:"), "{local}");
}
