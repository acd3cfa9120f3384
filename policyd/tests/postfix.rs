//! `miab-policyd` behind a real Postfix, driven by swaks from several loopback addresses:
//! greylisting with its whitelists and auto-whitelist, block lists served by a test DNS
//! server, and sender-login enforcement for users authenticated through Dovecot.

mod common;

use common::{Policyd, config, start};
use miab_e2e::Scratch;
use miab_e2e::dns::TestDns;
use miab_e2e::dovecot::Dovecot;
use miab_e2e::fixture::miab_box;
use miab_e2e::postfix::{Postfix, PostfixConfig};
use miab_e2e::tools::{Run, swaks};
use std::time::Duration;

/// Postfix with MIAB's restriction lists, the policy service in both (told apart by
/// `policy_context`), and only 127.0.0.1 in mynetworks so other loopback addresses are
/// strangers.
fn postfix(policy_port: u16, extra: PostfixConfig) -> Postfix {
    let svc = |ctx: &str| {
        format!(
            "check_policy_service {{ inet:127.0.0.1:{policy_port}, timeout=10s, default_action=DUNNO, policy_context={ctx} }}"
        )
    };
    let cfg = extra
        .set("mynetworks", "127.0.0.1/32")
        .set("relay_domains", "example.com, other.example")
        .set("smtpd_sender_restrictions", svc("sender"))
        .set(
            "smtpd_recipient_restrictions",
            format!(
                "permit_sasl_authenticated, permit_mynetworks, reject_unauth_destination, {}",
                svc("recipient")
            ),
        );
    Postfix::start(cfg)
}

fn send(pf: &Postfix, from_ip: &str, from: &str, to: &str, extra: &[&str]) -> Run {
    let mut args = vec!["--local-interface", from_ip, "--from", from, "--to", to];
    args.extend_from_slice(extra);
    swaks(pf.smtp_port(), &args)
}

fn policyd(dir: &Scratch, dns: &TestDns, checks: &str, greylist: &str) -> Policyd {
    start(
        dir,
        &config(dir, dns.addr(), &format!("checks = {checks}"), greylist),
    )
}

#[test]
fn greylisting_through_postfix() {
    let dir = Scratch::new("pol");
    miab_box(dir.path());
    let dns = TestDns::start();
    let wl_clients = dir.join("whitelist_clients");
    let wl_rcpts = dir.join("whitelist_recipients");
    std::fs::write(&wl_clients, "# trusted relay\n127.0.0.7\n").unwrap();
    std::fs::write(&wl_rcpts, "postmaster@\n").unwrap();
    let greylist = format!(
        "delay_secs = 2\nauto_whitelist_clients = 2\nauto_whitelist_interval_secs = 0\n\
         whitelist_clients = [\"{}\", \"{}.local\"]\nwhitelist_recipients = [\"{}\"]",
        wl_clients.display(),
        wl_clients.display(),
        wl_rcpts.display()
    );
    // Replace the empty whitelists config() sets.
    let cfg = config(&dir, dns.addr(), "checks = [\"greylist\"]", &greylist)
        .replace("whitelist_clients = []\nwhitelist_recipients = []\n", "");
    let d = start(&dir, &cfg);
    let pf = postfix(d.port, PostfixConfig::default());

    let first = send(&pf, "127.0.0.5", "alice@example.net", "me@example.com", &[]);
    assert!(!first.ok(), "{first:?}");
    assert!(
        first.stdout.contains("<** 450 4.2.0 <me@example.com>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/example.com.html"),
        "{}",
        first.stdout
    );
    std::thread::sleep(Duration::from_millis(2200));
    let retry = send(
        &pf,
        "127.0.0.5",
        "alice@example.net",
        "me@example.com",
        &["--header", "Subject: retry-1"],
    );
    assert!(retry.ok(), "accepted after the delay: {}", retry.stdout);
    let got = pf
        .sink
        .wait_for("retry-1", Duration::from_secs(20))
        .expect("delivered")
        .data;
    assert!(got.contains("X-Greylist: delayed "), "{got}");
    assert!(got.contains(" seconds by miab-policyd-0."), "{got}");

    // A second pass whitelists 127.0.0.5: a new sender and recipient go straight through.
    assert!(send(&pf, "127.0.0.5", "alice@example.net", "me@example.com", &[]).ok());
    let awl = send(
        &pf,
        "127.0.0.5",
        "carol@elsewhere.example",
        "you@example.com",
        &[],
    );
    assert!(awl.ok(), "client auto-whitelisted: {}", awl.stdout);
    // But another client of the same /24 is not.
    assert!(
        !send(
            &pf,
            "127.0.0.6",
            "carol@elsewhere.example",
            "you@example.com",
            &[]
        )
        .ok()
    );

    // Whitelist files: the client 127.0.0.7 and the recipient postmaster@.
    let wl = send(
        &pf,
        "127.0.0.7",
        "dave@elsewhere.example",
        "me@example.com",
        &[],
    );
    assert!(wl.ok(), "{}", wl.stdout);
    let pm = send(
        &pf,
        "127.0.1.8",
        "eve@elsewhere.example",
        "postmaster@example.com",
        &[],
    );
    assert!(pm.ok(), "{}", pm.stdout);
    let log = d.process.log();
    for line in [
        "action=greylist, reason=new, client_name=",
        "action=pass, reason=triplet found, delay=",
        "action=pass, reason=client AWL",
        "action=pass, reason=client whitelist",
        "action=pass, reason=recipient whitelist",
    ] {
        assert!(log.contains(line), "{line}:\n{log}");
    }
}

#[test]
fn block_lists_through_postfix() {
    let dir = Scratch::new("pol");
    miab_box(dir.path());
    let dns = TestDns::start();
    dns.add_a("2.0.0.127.zen.spamhaus.org", "127.0.0.2".parse().unwrap());
    dns.add_txt(
        "2.0.0.127.zen.spamhaus.org",
        "https://www.spamhaus.org/query/ip/127.0.0.2",
    );
    dns.add_a(
        "3.0.0.127.zen.spamhaus.org",
        "127.255.255.254".parse().unwrap(),
    );
    dns.add_a(
        "spam.example.dbl.spamhaus.org",
        "127.0.1.2".parse().unwrap(),
    );
    let d = policyd(&dir, &dns, "[\"rhsbl\", \"dnsbl\"]", "");
    let pf = postfix(d.port, PostfixConfig::default());

    let listed = send(&pf, "127.0.0.2", "alice@example.net", "me@example.com", &[]);
    assert!(
        listed.stdout.contains("<** 554 5.7.1 <me@example.com>: Recipient address rejected: Service unavailable; Client host [127.0.0.2] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/127.0.0.2"),
        "{}",
        listed.stdout
    );
    let dbl = send(&pf, "127.0.0.9", "x@spam.example", "me@example.com", &[]);
    assert!(
        dbl.stdout.contains("<** 554 5.7.1 <x@spam.example>: Sender address rejected: Service unavailable; Sender address [x@spam.example] blocked using dbl.spamhaus.org"),
        "{}",
        dbl.stdout
    );
    let refused_query = send(&pf, "127.0.0.3", "alice@example.net", "me@example.com", &[]);
    assert!(
        refused_query.ok(),
        "127.255.255.254 is not a listing: {}",
        refused_query.stdout
    );
    dns.set_silent(true);
    let dead = send(
        &pf,
        "127.0.0.4",
        "alice@other-sender.example",
        "me@example.com",
        &[],
    );
    assert!(
        dead.ok(),
        "a dead DNS server rejects nothing: {}",
        dead.stdout
    );
    assert!(d.process.log().contains("DNS block list unusable"));
}

#[test]
fn sender_login_through_postfix_and_dovecot_sasl() {
    let dir = Scratch::new("pol");
    let db = miab_box(dir.path());
    let dns = TestDns::start();
    let dovecot = Dovecot::start(dir.path());
    let d = policyd(&dir, &dns, "[\"sender_login\"]", "");
    let sasl = |c: PostfixConfig| {
        c.set("smtpd_sasl_auth_enable", "yes")
            .set("smtpd_sasl_type", "dovecot")
            .set(
                "smtpd_sasl_path",
                dovecot.auth_client_socket().display().to_string(),
            )
            .set("recipient_delimiter", "+")
    };
    let ours = postfix(d.port, sasl(PostfixConfig::default()));
    // The reference: Postfix's own check over MIAB's sqlite: sender map.
    let maps = miab_e2e::postfix::MiabSqliteMaps::write(dir.path(), &db);
    let native = Postfix::start(
        sasl(PostfixConfig::default())
            .set("smtpd_sender_login_maps", maps.senders)
            .set(
                "smtpd_sender_restrictions",
                "reject_authenticated_sender_login_mismatch",
            ),
    );
    let send_as = |pf: &Postfix, mech: &str, login: &str, from: &str| {
        send(
            pf,
            "127.0.0.5",
            from,
            "someone@elsewhere.example",
            &[
                "--auth",
                mech,
                "--auth-user",
                login,
                "--auth-password",
                "a-long-password",
            ],
        )
    };
    let other = send_as(&ours, "PLAIN", "me@example.com", "you@example.com");
    assert!(
        other.stdout.contains("<** 553 5.7.1 <you@example.com>: Sender address rejected: not owned by user me@example.com"),
        "{}",
        other.stdout
    );
    let cases: &[(&str, &str, bool)] = &[
        ("me@example.com", "me@example.com", true),
        ("me@example.com", "Me+tag@Example.com", true),
        ("me@example.com", "sendonly@example.com", true),
        ("me@example.com", "hello@example.com", true),
        ("me@example.com", "anything@catch.example", true),
        ("me@example.com", "<>", true),
        ("me@example.com", "you@example.com", false),
        ("me@example.com", "me@alias.example", false),
        ("me@example.com", "boss@other.example", false),
        ("me@example.com", "nobody@elsewhere.example", false),
        ("you@example.com", "you+x@example.com", true),
        ("you@example.com", "sendonly@example.com", false),
    ];
    for &(login, from, allowed) in cases {
        for mech in ["PLAIN", "LOGIN"] {
            let r = send_as(&ours, mech, login, from);
            assert_eq!(r.ok(), allowed, "{login} as {from} ({mech}): {}", r.stdout);
        }
        let reference = send_as(&native, "PLAIN", login, from);
        assert_eq!(
            reference.ok(),
            allowed,
            "Postfix's own check differs for {login} as {from}: {}",
            reference.stdout
        );
    }
    // Unauthenticated mail is not this check's business.
    assert!(send(&ours, "127.0.0.5", "you@example.com", "me@example.com", &[]).ok());
}

/// Sender login fails closed: with the user DB locked, and with miab-policyd stopped (the
/// packaged sender reference has default_action=DEFER_IF_PERMIT), an authenticated sender is
/// deferred (4xx), never accepted unchecked.
#[test]
fn a_locked_db_and_a_stopped_policyd_defer_an_authenticated_sender() {
    let dir = Scratch::new("pol");
    miab_box(dir.path());
    // policyd reads its own copy of the DB, so the lock below does not stop Dovecot's SASL.
    let own = Scratch::new("pol");
    std::fs::create_dir_all(own.join("mail")).unwrap();
    std::fs::copy(dir.join("mail/users.sqlite"), own.join("mail/users.sqlite")).unwrap();
    let dns = TestDns::start();
    let dovecot = Dovecot::start(dir.path());
    let cfg = format!(
        "db_busy_timeout_ms = 200\n{}",
        config(&own, dns.addr(), "checks = [\"sender_login\"]", "")
    );
    let mut d = start(&own, &cfg);
    let sender_ref = format!(
        "check_policy_service {{ inet:127.0.0.1:{}, timeout=10s, default_action=DEFER_IF_PERMIT, policy_context=sender }}",
        d.port
    );
    let pf = Postfix::start(
        PostfixConfig::default()
            .set("mynetworks", "127.0.0.1/32")
            .set("smtpd_sasl_auth_enable", "yes")
            .set("smtpd_sasl_type", "dovecot")
            .set(
                "smtpd_sasl_path",
                dovecot.auth_client_socket().display().to_string(),
            )
            .set("smtpd_sender_restrictions", sender_ref)
            .set(
                "smtpd_recipient_restrictions",
                "permit_sasl_authenticated, reject_unauth_destination",
            ),
    );
    let auth = miab_e2e::fixture::SWAKS_AUTH_ME;
    let as_you = || {
        send(
            &pf,
            "127.0.0.5",
            "you@example.com",
            "x@elsewhere.example",
            &auth,
        )
    };
    let refused = as_you();
    assert!(
        refused.stdout.contains("<** 553 5.7.1"),
        "{}",
        refused.stdout
    );

    let lock = rusqlite::Connection::open(own.join("mail/users.sqlite")).unwrap();
    lock.execute_batch(miab_e2e::fixture::CHANGE_THEN_LOCK)
        .unwrap();
    // A sender not yet remembered: the check cannot decide.
    let locked = send(
        &pf,
        "127.0.0.5",
        "hello@example.com",
        "x@elsewhere.example",
        &auth,
    );
    assert!(!locked.ok(), "{}", locked.stdout);
    assert!(
        locked.stdout.contains(
            "<** 451 4.3.0 <hello@example.com>: Sender address rejected: Temporary lookup failure"
        ),
        "{}",
        locked.stdout
    );
    lock.execute_batch("ROLLBACK").unwrap();

    d.process.terminate();
    let stopped = as_you();
    assert!(!stopped.ok(), "{}", stopped.stdout);
    assert!(
        stopped.stdout.contains("<** 4"),
        "deferred, not accepted: {}",
        stopped.stdout
    );
}
