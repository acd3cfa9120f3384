//! The real `miab-policyd` over a raw socket: the protocol's edge cases, greylisting step by
//! step, block lists against a test DNS server, postgrey's syslog lines, and crash safety.

mod common;

use common::{Client, config, request, start, start_in_process};
use miab_e2e::Scratch;
use miab_e2e::dns::TestDns;
use miab_e2e::fixture::miab_box;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

fn greylist_only(dir: &Scratch, dns: &TestDns, extra: &str) -> String {
    config(dir, dns.addr(), "checks = [\"greylist\"]", extra)
}

#[test]
fn bad_input_gets_a_clear_answer_or_a_close() {
    let dir = Scratch::new("pol");
    miab_box(dir.path());
    let dns = TestDns::start();
    let d = start_in_process(&dir, &greylist_only(&dir, &dns, ""));
    let mut c = Client::connect(d.port);

    // No request= attribute: the fail action, and the connection stays usable.
    c.send(b"sender=a@b.example\nrecipient=c@d.example\n\n");
    assert_eq!(c.reply().as_deref(), Some("DUNNO"));
    // Unknown attributes are ignored; a pipelined second request is answered too.
    let mut two = request(&[("future_attribute", "x"), ("client_address", "192.0.2.1")]);
    two.extend(request(&[
        ("client_address", "192.0.2.1"),
        ("instance", "2"),
    ]));
    c.send(&two);
    assert!(
        c.reply()
            .unwrap()
            .starts_with("DEFER_IF_PERMIT 4.2.0 Greylisted")
    );
    assert!(
        c.reply()
            .unwrap()
            .starts_with("DEFER_IF_PERMIT 4.2.0 Greylisted")
    );
    // Invalid UTF-8 is carried through, not fatal.
    assert!(
        c.ask(&[
            ("sender", "caf\u{e9}@b.example"),
            ("client_address", "192.0.2.2")
        ])
        .starts_with("DEFER_IF_PERMIT")
    );
    c.send(b"request=smtpd_access_policy\nsender=\xff\xfe@x.example\nrecipient=me@example.com\nclient_address=192.0.2.3\n\n");
    assert!(c.reply().unwrap().starts_with("DEFER_IF_PERMIT"));

    let closes: Vec<(&str, Vec<u8>)> = vec![
        ("oversized line", {
            let mut v = b"request=smtpd_access_policy\nsender=".to_vec();
            v.extend(std::iter::repeat_n(b'a', 20_000));
            v
        }),
        (
            "too many attributes",
            (0..200)
                .flat_map(|i| format!("x{i}=1\n").into_bytes())
                .collect(),
        ),
        (
            "garbage",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n".to_vec(),
        ),
        ("no '='", b"hello there\n\n".to_vec()),
    ];
    for (what, bytes) in closes {
        let mut bad = Client::connect(d.port);
        bad.send(&bytes);
        assert_eq!(bad.reply(), None, "{what}: closed without a reply");
    }
    // Still serving.
    assert!(
        Client::connect(d.port)
            .ask(&[])
            .starts_with("DEFER_IF_PERMIT")
    );
    let log = d.process.log();
    for msg in [
        "line longer than",
        "more than 128 attributes",
        "NUL byte",
        "line without '='",
    ] {
        assert!(log.contains(msg), "log lacks {msg:?}:\n{log}");
    }
}

#[test]
fn greylisting_steps_and_postgrey_log_lines() {
    let dir = Scratch::new("pol");
    miab_box(dir.path());
    let dns = TestDns::start();
    let syslog_path = dir.join("syslog");
    let syslog = UnixDatagram::bind(&syslog_path).unwrap();
    syslog
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let extra = format!(
        "delay_secs = 2\nauto_whitelist_clients = 2\nauto_whitelist_interval_secs = 0\nsyslog_socket = \"{}\"",
        syslog_path.display()
    );
    let cfg = greylist_only(&dir, &dns, &extra).replace("syslog_socket = \"\"\n", "");
    let d = start_in_process(&dir, &cfg);
    let mut c = Client::connect(d.port);
    let from = |ip: &'static str, inst: &'static str| {
        vec![
            ("client_address", ip),
            ("instance", inst),
            ("client_name", "unknown"),
        ]
    };

    assert_eq!(
        c.ask(&from("198.51.100.7", "a")),
        "DEFER_IF_PERMIT 4.2.0 Greylisted, see http://postgrey.schweikert.ch/help/example.com.html"
    );
    // Same /24, VERP-style sender: the same triplet.
    let mut early = from("198.51.100.99", "a");
    early.push(("sender", "Alice+list@Example.NET"));
    assert!(c.ask(&early).starts_with("DEFER_IF_PERMIT"));
    std::thread::sleep(Duration::from_millis(2100));
    let pass = c.ask(&from("198.51.100.7", "b"));
    assert!(pass.starts_with("PREPEND X-Greylist: delayed "), "{pass}");
    assert!(pass.contains(" seconds by miab-policyd-0."), "{pass}");
    assert!(pass.contains(" at box.example.com; "), "{pass}");
    // One header per message: a second recipient of the same message gets none.
    let mut second = from("198.51.100.7", "b");
    second.push(("recipient", "you@example.com"));
    assert!(
        c.ask(&second).starts_with("DEFER_IF_PERMIT"),
        "a new triplet"
    );
    assert_eq!(c.ask(&from("198.51.100.7", "c")), "DUNNO", "already passed");
    // Two passes whitelisted 198.51.100.7: any new triplet passes now.
    let mut fresh = from("198.51.100.7", "d");
    fresh.push(("recipient", "boss@other.example"));
    assert_eq!(c.ask(&fresh), "DUNNO");

    // Every line matches the regex MIAB's mail_log.py applies to program "postgrey".
    let mut lines = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(n) = syslog.recv(&mut buf) {
        lines.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        if lines.len() == 7 {
            break;
        }
    }
    let script = r#"
import re, sys
for line in sys.stdin.read().split("\n"):
    m = re.match(r"<22>postgrey\[\d+\]: (.*)", line)
    log = m.group(1)
    if log.startswith("whitelisted: "):
        print("WL", log[13:]); continue
    m = re.match("action=(greylist|pass), reason=(.*?), (?:delay=\\d+, )?client_name=(.*), client_address=(.*), sender=(.*), recipient=(.*)", log)
    print("|".join(m.groups()))
"#;
    let out = miab_e2e::tools::run(
        std::process::Command::new("python3").arg("-c").arg(script),
        Some(&lines.join("\n")),
    );
    assert!(out.ok(), "{out:?}");
    let mut parsed: Vec<&str> = out.stdout.lines().collect();
    assert!(
        parsed[1].starts_with("greylist|early-retry ("),
        "{parsed:?}"
    );
    parsed[1] = "early";
    assert_eq!(
        parsed,
        [
            "greylist|new|unknown|198.51.100.7|alice@example.net|me@example.com",
            "early",
            "pass|triplet found|unknown|198.51.100.7|alice@example.net|me@example.com",
            "greylist|new|unknown|198.51.100.7|alice@example.net|you@example.com",
            "pass|triplet found|unknown|198.51.100.7|alice@example.net|me@example.com",
            "WL 198.51.100.7",
            "pass|client AWL|unknown|198.51.100.7|alice@example.net|boss@other.example",
        ]
    );
    assert!(
        lines[2].contains(", delay=2, ") || lines[2].contains(", delay=3, "),
        "{}",
        lines[2]
    );
}

#[test]
fn dry_run_logs_but_never_defers() {
    let dir = Scratch::new("pol");
    miab_box(dir.path());
    let dns = TestDns::start();
    let d = start_in_process(&dir, &greylist_only(&dir, &dns, "dry_run = true"));
    assert_eq!(Client::connect(d.port).ask(&[]), "DUNNO");
    assert!(d.process.log().contains("action=greylist, reason=new"));
}

#[test]
fn block_lists_and_their_failures() {
    let dir = Scratch::new("pol");
    miab_box(dir.path());
    let dns = TestDns::start();
    dns.add_a("2.0.0.127.zen.spamhaus.org", "127.0.0.2".parse().unwrap());
    dns.add_txt(
        "2.0.0.127.zen.spamhaus.org",
        "https://www.spamhaus.org/query/ip/127.0.0.2",
    );
    dns.add_a(
        "20.2.0.192.zen.spamhaus.org",
        "127.255.255.254".parse().unwrap(),
    );
    dns.add_a("21.2.0.192.zen.spamhaus.org", "127.0.0.30".parse().unwrap());
    dns.add_a(
        "spam.example.dbl.spamhaus.org",
        "127.0.1.2".parse().unwrap(),
    );
    dns.add_a(
        "abused.example.dbl.spamhaus.org",
        "127.0.1.102".parse().unwrap(),
    );
    dns.fail("22.2.0.192.zen.spamhaus.org");
    let d = start_in_process(
        &dir,
        &config(&dir, dns.addr(), "checks = [\"rhsbl\", \"dnsbl\"]", ""),
    );
    let mut c = Client::connect(d.port);
    assert_eq!(
        c.ask(&[("client_address", "127.0.0.2")]),
        "554 5.7.1 Service unavailable; Client host [127.0.0.2] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/127.0.0.2"
    );
    for ip in ["192.0.2.20", "192.0.2.21", "192.0.2.22", "192.0.2.23"] {
        assert_eq!(c.ask(&[("client_address", ip)]), "DUNNO", "{ip}");
    }
    assert_eq!(
        c.ask(&[
            ("sender", "x@Spam.Example"),
            ("client_address", "192.0.2.23")
        ]),
        "554 5.7.1 Service unavailable; Sender address [x@Spam.Example] blocked using dbl.spamhaus.org"
    );
    assert_eq!(c.ask(&[("sender", "x@abused.example")]), "DUNNO");
    // Authenticated clients skip the client list, not the sender list (as MIAB's main.cf).
    assert_eq!(
        c.ask(&[
            ("client_address", "127.0.0.2"),
            ("sasl_username", "me@example.com")
        ]),
        "DUNNO"
    );
    // A dead DNS server: every query times out, nothing is rejected.
    dns.set_silent(true);
    assert_eq!(
        c.ask(&[
            ("client_address", "192.0.2.30"),
            ("sender", "y@new.example")
        ]),
        "DUNNO"
    );
    dns.set_silent(false);
    assert_eq!(c.ask(&[("client_address", "192.0.2.31")]), "DUNNO");
    let log = d.process.log();
    assert!(
        log.contains("127.255.255.254: query through a public or open resolver"),
        "{log}"
    );
    assert!(log.contains("answering again"), "{log}");
    let unusable = log.matches("DNS block list unusable").count();
    assert!(
        (2..=4).contains(&unusable),
        "logged once per state change, not per request:\n{log}"
    );
    assert!(
        dns.queries()
            .contains(&"30.2.0.192.zen.spamhaus.org".to_owned())
    );
}

#[test]
fn kill_9_under_load_keeps_the_greylist_db() {
    let dir = Scratch::new("pol");
    miab_box(dir.path());
    let dns = TestDns::start();
    let cfg = greylist_only(&dir, &dns, "delay_secs = 1");
    let d = start(&dir, &cfg);
    let port = d.port;
    // The triplet answered before the crash must be remembered after it.
    assert!(
        Client::connect(port)
            .ask(&[])
            .starts_with("DEFER_IF_PERMIT")
    );
    let load: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Client::connect(port);
                let mut answered = 0;
                for i in 0.. {
                    let rcpt = format!("r{t}-{i}@example.com");
                    c.send(&request(&[("recipient", &rcpt)]));
                    if c.reply().is_none() {
                        break;
                    }
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.process.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let answered: usize = load.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(answered > 100, "load ran ({answered} answers)");
    drop(d);

    let db = dir.join("mail/policyd/greylist.sqlite");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let n: i64 = conn
        .query_row("SELECT count(*) FROM triplets", [], |r| r.get(0))
        .unwrap();
    assert!(
        n as usize >= answered,
        "every answered triplet was committed: {n} < {answered}"
    );
    drop(conn);

    std::thread::sleep(Duration::from_millis(1000));
    let d = start(&dir, &cfg);
    assert!(d.process.log().contains("triplets:"), "{}", d.process.log());
    let again = Client::connect(d.port).ask(&[]);
    assert!(
        again.starts_with("PREPEND X-Greylist"),
        "remembered across the crash: {again}"
    );
}

#[test]
fn spf_pool_keys_a_provider_by_its_domain() {
    let dir = Scratch::new("pol");
    miab_box(dir.path());
    let dns = TestDns::start();
    dns.add_txt(
        "pool.example",
        "v=spf1 ip4:192.0.2.0/24 ip4:198.51.100.0/24 -all",
    );
    dns.add_txt("nopool.example", "v=spf1 ip4:203.0.113.1 -all");
    let d = start_in_process(&dir, &greylist_only(&dir, &dns, "delay_secs = 1"));
    let mut c = Client::connect(d.port);
    let from = |ip: &'static str, sender: &'static str| {
        vec![
            ("client_address", ip),
            ("sender", sender),
            ("helo_name", "mx.pool.example"),
        ]
    };
    assert!(
        c.ask(&from("192.0.2.10", "news@pool.example"))
            .starts_with("DEFER_IF_PERMIT")
    );
    assert!(
        c.ask(&from("192.0.2.11", "x@nopool.example"))
            .starts_with("DEFER_IF_PERMIT")
    );
    std::thread::sleep(Duration::from_millis(1100));
    // The retry comes from another network of the same provider: SPF vouches for both.
    let retry = c.ask(&from("198.51.100.77", "news@pool.example"));
    assert!(retry.starts_with("PREPEND X-Greylist"), "{retry}");
    // Without SPF for the new address, the triplet is the client's network: a new one.
    assert!(
        c.ask(&from("198.51.100.78", "x@nopool.example"))
            .starts_with("DEFER_IF_PERMIT")
    );
}

#[test]
fn forged_local_senders_and_rate_limits() {
    let dir = Scratch::new("pol");
    miab_box(dir.path());
    let dns = TestDns::start();
    dns.add_txt("other.example", "v=spf1 ip4:192.0.2.50 -all");
    let top = "checks = [\"forged_sender\", \"rate_limit\"]\n\
               [policyd.rate_limit]\nmessages_per_hour = 2\nrecipients_per_hour = 3";
    let d = start_in_process(&dir, &config(&dir, dns.addr(), top, ""));
    let mut c = Client::connect(d.port);
    let ask = |c: &mut Client, attrs: &[(&str, &str)]| c.ask(attrs);

    // Our own domain from a stranger: refused unless SPF or trust or a login vouches.
    assert_eq!(
        ask(&mut c, &[("sender", "me@example.com")]),
        "553 5.7.1 not logged in"
    );
    assert_eq!(
        ask(&mut c, &[("sender", "boss@OTHER.example")]),
        "553 5.7.1 not logged in"
    );
    assert_eq!(
        ask(
            &mut c,
            &[
                ("sender", "boss@other.example"),
                ("client_address", "192.0.2.50")
            ]
        ),
        "DUNNO"
    );
    assert_eq!(
        ask(
            &mut c,
            &[
                ("sender", "me@example.com"),
                ("client_address", "127.0.0.1")
            ]
        ),
        "DUNNO"
    );
    assert_eq!(
        ask(&mut c, &[("sender", "someone@elsewhere.example")]),
        "DUNNO"
    );
    assert_eq!(ask(&mut c, &[("sender", "")]), "DUNNO");

    // Rate limits per login: 2 messages, 3 recipients an hour.
    let me = |inst: &'static str, rcpt: &'static str| {
        vec![
            ("sasl_username", "me@example.com"),
            ("sender", "me@example.com"),
            ("instance", inst),
            ("recipient", rcpt),
        ]
    };
    assert_eq!(ask(&mut c, &me("m1", "a@x.example")), "DUNNO");
    assert_eq!(ask(&mut c, &me("m1", "b@x.example")), "DUNNO");
    assert_eq!(ask(&mut c, &me("m2", "c@x.example")), "DUNNO");
    assert_eq!(
        ask(&mut c, &me("m2", "d@x.example")),
        "450 4.7.1 rate limit: me@example.com may send to 3 recipients per hour"
    );
    assert_eq!(
        ask(&mut c, &me("m3", "e@x.example")),
        "450 4.7.1 rate limit: me@example.com may send 2 messages per hour"
    );
    let you = [
        ("sasl_username", "you@example.com"),
        ("sender", "you@example.com"),
        ("instance", "y1"),
    ];
    assert_eq!(ask(&mut c, &you), "DUNNO", "other logins are not affected");
    assert!(d.process.log().contains("recipient rate limit reached"));
}

#[test]
fn a_locked_user_db_gives_the_fail_action() {
    let dir = Scratch::new("pol");
    let db = miab_box(dir.path());
    let dns = TestDns::start();
    let top = "checks = [\"sender_login\"]\nsecurity_fail_action = \"DEFER_IF_PERMIT Service temporarily unavailable\"";
    let cfg = config(&dir, dns.addr(), top, "").replace("[dns]", "db_busy_timeout_ms = 200\n[dns]");
    let d = start_in_process(&dir, &cfg);
    let mut c = Client::connect(d.port);
    let auth = |sender: &'static str| vec![("sasl_username", "me@example.com"), ("sender", sender)];
    assert_eq!(c.ask(&auth("me@example.com")), "DUNNO");
    assert_eq!(
        c.ask(&auth("you@example.com")),
        "553 5.7.1 not owned by user me@example.com"
    );
    let lock = rusqlite::Connection::open(&db).unwrap();
    lock.execute_batch(miab_e2e::fixture::CHANGE_THEN_LOCK)
        .unwrap();
    assert_eq!(
        c.ask(&auth("hello@example.com")),
        "DEFER_IF_PERMIT Service temporarily unavailable"
    );
    lock.execute_batch("COMMIT").unwrap();
    assert_eq!(
        c.ask(&auth("hello@example.com")),
        "DUNNO",
        "served again once the lock is gone"
    );
    let log = d.process.log();
    assert!(
        log.contains("check failed; answering the fail action"),
        "{log}"
    );
    drop(d);

    // By default sender login fails closed, as Postfix does when MIAB's own map fails.
    let top = "checks = [\"sender_login\", \"rhsbl\"]";
    let cfg = config(&dir, dns.addr(), top, "").replace("[dns]", "db_busy_timeout_ms = 200\n[dns]");
    let d = start_in_process(&dir, &cfg);
    let mut c = Client::connect(d.port);
    lock.execute_batch(miab_e2e::fixture::CHANGE_THEN_LOCK)
        .unwrap();
    assert_eq!(
        c.ask(&auth("hello@example.com")),
        "451 4.3.0 Temporary lookup failure"
    );
    lock.execute_batch("COMMIT").unwrap();
    drop(d);

    // With a DUNNO fail action, the checks after the failed one still run.
    dns.add_a(
        "spam.example.dbl.spamhaus.org",
        "127.0.1.2".parse().unwrap(),
    );
    let top = "checks = [\"sender_login\", \"rhsbl\"]\nsecurity_fail_action = \"DUNNO\"";
    let cfg = config(&dir, dns.addr(), top, "").replace("[dns]", "db_busy_timeout_ms = 200\n[dns]");
    let d = start_in_process(&dir, &cfg);
    let mut c = Client::connect(d.port);
    lock.execute_batch(miab_e2e::fixture::CHANGE_THEN_LOCK)
        .unwrap();
    let listed = c.ask(&auth("me@spam.example"));
    assert!(
        listed.starts_with("554 5.7.1 Service unavailable; Sender address [me@spam.example]"),
        "{listed}"
    );
    assert_eq!(c.ask(&auth("me@example.com")), "DUNNO");
    lock.execute_batch("COMMIT").unwrap();
}

/// One message through the policy protocol as Postfix sends it: an RCPT request per
/// recipient (sender restrictions, `policy_context=sender`), then the end of data
/// (`policy_context=data`). Returns the RCPT replies and the end-of-data reply.
fn message(c: &mut Client, login: &str, inst: &str, rcpts: &[String]) -> (Vec<String>, String) {
    let mut replies = Vec::new();
    for r in rcpts {
        replies.push(c.ask(&[
            ("sasl_username", login),
            ("sender", login),
            ("instance", inst),
            ("recipient", r),
            ("policy_context", "sender"),
        ]));
    }
    let n = rcpts.len().to_string();
    let eod = c.ask(&[
        ("protocol_state", "END-OF-MESSAGE"),
        ("sasl_username", login),
        ("sender", login),
        ("instance", inst),
        ("recipient", ""),
        ("recipient_count", &n),
        ("policy_context", "data"),
    ]);
    (replies, eod)
}

fn one(r: impl std::fmt::Display) -> Vec<String> {
    vec![r.to_string()]
}

const HOLD: &str = "HOLD held: the login sends far past its own history (miabctl held)";

#[test]
fn containment_holds_past_the_floor_and_fails_closed_on_a_locked_db() {
    let dir = Scratch::new("pol");
    miab_box(dir.path());
    let dns = TestDns::start();
    // Containment first, so the hostile login below reaches it.
    let top = "checks = [\"containment\", \"sender_login\"]";
    let extra =
        "[policyd.containment]\nfloor_messages = 5\nfloor_new_recipients = 3\nnotify = \"\"";
    let d = start_in_process(&dir, &config(&dir, dns.addr(), top, extra));
    let mut c = Client::connect(d.port);
    for i in 0..3 {
        let (r, eod) = message(
            &mut c,
            "me@example.com",
            &format!("m{i}"),
            &one(format!("r{i}@x.example")),
        );
        assert_eq!((r[0].as_str(), eod.as_str()), ("DUNNO", "DUNNO"), "{i}");
    }
    // The fourth new recipient: the message is held at its end of data.
    let (r, eod) = message(&mut c, "me@example.com", "m3", &one("r3@x.example"));
    assert_eq!((r[0].as_str(), eod.as_str()), ("DUNNO", HOLD));
    let (_, eod) = message(&mut c, "me@example.com", "m4", &one("r0@x.example"));
    assert_eq!(eod, HOLD, "held until released");
    let (_, eod) = message(&mut c, "you@example.com", "y1", &one("r0@x.example"));
    assert_eq!(eod, "DUNNO", "other logins are not affected");
    assert_eq!(
        c.ask(&[("sender", "me@example.com"), ("recipient", "z@x.example")]),
        "DUNNO",
        "unauthenticated mail is not counted"
    );
    // A login that is no user (a request made up on the box) is never counted, held or
    // noticed, however much it "sends"; sender_login, after containment, refuses it.
    for i in 0..20 {
        let (r, eod) = message(
            &mut c,
            "nobody@example.com",
            &format!("n{i}"),
            &one(format!("n{i}@x.example")),
        );
        assert_eq!(
            r[0], "553 5.7.1 not owned by user nobody@example.com",
            "{i}"
        );
        assert_eq!(eod, "DUNNO", "{i}");
    }
    // A login Postfix would never send, far over any limit, is bounded and answered.
    let long = format!("{}@example.com", "\u{e9}".repeat(4000));
    let r = c.ask(&[
        ("sasl_username", long.as_str()),
        ("sender", long.as_str()),
        ("recipient", "a@x.example"),
    ]);
    assert_eq!(r, format!("553 5.7.1 not owned by user {long}"));
    let log = d.process.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("sending far past the login's own history"))
        .count();
    assert_eq!(lines, 1, "{log}");

    // A locked sending DB: the security fail action, and served again afterwards.
    let lock = rusqlite::Connection::open(dir.join("mail/policyd/sending.sqlite")).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let (_, eod) = message(&mut c, "boss@other.example", "b1", &one("q@x.example"));
    assert_eq!(eod, "451 4.3.0 Temporary lookup failure");
    lock.execute_batch("COMMIT").unwrap();
    let (_, eod) = message(&mut c, "boss@other.example", "b2", &one("q@x.example"));
    assert_eq!(eod, "DUNNO");

    // Released (as `miabctl held release` does): it sends again.
    let mut s = state::sending::Sending::open(&dir.join("mail/policyd/sending.sqlite")).unwrap();
    assert!(
        s.release("me@example.com", state::clock::unix_now())
            .unwrap()
    );
    let (_, eod) = message(&mut c, "me@example.com", "m5", &one("r9@x.example"));
    assert_eq!(eod, "DUNNO");
}

/// The ways around the limit that the rule closes, replayed through the real protocol with
/// the default rule: RCPT-only sessions, a thousand known correspondents, an alias to 200
/// outside addresses, and a login that sent at its limit every other hour for days.
#[test]
fn containment_counts_what_is_sent_to_whom_it_goes() {
    let dir = Scratch::new("pol");
    let db_path = miab_box(dir.path());
    let dns = TestDns::start();
    let top = "checks = [\"sender_login\", \"containment\"]";
    let extra = "[policyd.containment]\nnotify = \"\"";
    // History before the daemon starts: me@ sent at its limit every other hour on each of
    // the last five days (through the same code the daemon counts with).
    let sending = dir.join("mail/policyd/sending.sqlite");
    let mut s = state::sending::Sending::open(&sending).unwrap();
    let rule = state::sending::Rule::default();
    let today = state::clock::unix_now().div_euclid(86_400) * 86_400;
    let mut limit = rule.floor_new_recipients;
    for day in (1..=5).rev() {
        for h in (0..24).step_by(2) {
            let start = today - day * 86_400 + h * 3600;
            for i in 0..limit {
                let rcpt = format!("d{day}-h{h}-{i}@ramp.example");
                let t = start + i64::try_from(i).unwrap();
                let r = s.record(&rule, "me@example.com", &[rcpt], true, t).unwrap();
                assert_eq!(r, state::sending::Decision::Send);
            }
        }
        limit *= 2;
    }
    // A thousand correspondents you@ wrote to long ago.
    let list: Vec<String> = (0..1000)
        .map(|i| format!("member-{i}@list.example"))
        .collect();
    drop(s);
    let known = rusqlite::Connection::open(&sending).unwrap();
    for r in &list {
        known
            .execute(
                "INSERT INTO known (login, recipient, last_seen) VALUES ('you@example.com', ?1, ?2)",
                rusqlite::params![r, today - 20 * 86_400],
            )
            .unwrap();
    }
    drop(known);
    // An alias that forwards to 200 outside addresses.
    let outside: Vec<String> = (0..200)
        .map(|i| format!("fan-{i}@outside.example"))
        .collect();
    let mut db = userdb::UserDb::open(&db_path, userdb::Access::ReadWrite).unwrap();
    let env = userdb::BoxEnv {
        primary_hostname: miab_e2e::fixture::HOSTNAME.into(),
    };
    db.add_alias("fans@other.example", &outside.join(","), "", false, &env)
        .unwrap();
    drop(db);

    let d = start_in_process(&dir, &config(&dir, dns.addr(), top, extra));
    let mut c = Client::connect(d.port);

    // RCPT-only sessions: 300 new recipients named, no data ever sent: nothing counted.
    for i in 0..300 {
        let r = c.ask(&[
            ("sasl_username", "boss@other.example"),
            ("sender", "boss@other.example"),
            ("instance", &format!("rcpt-only-{i}")),
            ("recipient", &format!("probe-{i}@victims.example")),
            ("policy_context", "sender"),
        ]);
        assert_eq!(r, "DUNNO");
    }
    let status = |login: &str| {
        let s = state::sending::Sending::open(&sending).unwrap();
        s.status(&s.rule().unwrap(), login, state::clock::unix_now())
            .unwrap()
    };
    assert_eq!(status("boss@other.example").last_hour, Default::default());
    // Then a real message is counted, once.
    let (_, eod) = message(
        &mut c,
        "boss@other.example",
        "real-1",
        &one("friend@outside.example"),
    );
    assert_eq!(eod, "DUNNO");
    let st = status("boss@other.example").last_hour;
    assert_eq!((st.messages, st.recipients, st.new_recipients), (1, 1, 1));

    // One RCPT to the alias: its 200 outside addresses, all new, are what counts.
    let (r, eod) = message(
        &mut c,
        "boss@other.example",
        "alias-1",
        &one("fans@other.example"),
    );
    assert_eq!((r[0].as_str(), eod.as_str()), ("DUNNO", HOLD));
    assert!(
        d.process
            .log()
            .contains("201 new recipients in the last hour (limit 50)"),
        "{}",
        d.process.log()
    );

    // A thousand known correspondents in one message: past the total of 500.
    let (_, eod) = message(&mut c, "you@example.com", "list-1", &list);
    assert_eq!(eod, HOLD);
    assert!(
        d.process
            .log()
            .contains("1000 recipients in the last hour (limit 500)")
    );
    assert_eq!(status("you@example.com").last_hour.new_recipients, 0);

    // The every-other-hour ramp: five days doubled the limit five times (50 -> 1600), not
    // the threefold per burst the old rule allowed (which would stand at 2400 now).
    let st = status("me@example.com");
    assert_eq!(st.limits.new_recipients, 1600, "{st:?}");
    let batch: Vec<String> = (0..1600)
        .map(|i| format!("today-{i}@ramp.example"))
        .collect();
    let (_, eod) = message(&mut c, "me@example.com", "ramp-1", &batch);
    assert_eq!(eod, "DUNNO");
    let (_, eod) = message(
        &mut c,
        "me@example.com",
        "ramp-2",
        &one("one-more@ramp.example"),
    );
    assert_eq!(eod, HOLD);
    assert!(
        d.process
            .log()
            .contains("1601 new recipients in the last hour (limit 1600)")
    );
}

/// SIGHUP reads postgrey's whitelist files again, and the daemon goes on serving, on the same
/// connection too.
#[test]
fn sighup_reloads_the_whitelists_and_keeps_serving() {
    let dir = Scratch::new("pol");
    miab_box(dir.path());
    let dns = TestDns::start();
    let wl = dir.join("whitelist_clients");
    std::fs::write(&wl, "# none yet\n").unwrap();
    let extra = format!("whitelist_clients = [\"{}\"]", wl.display());
    let cfg = greylist_only(&dir, &dns, &extra).replace("whitelist_clients = []\n", "");
    let d = start(&dir, &cfg);
    let mut c = Client::connect(d.port);
    let from = |inst: &'static str| vec![("client_address", "203.0.113.9"), ("instance", inst)];
    assert!(c.ask(&from("a")).starts_with("DEFER_IF_PERMIT"));
    std::fs::write(&wl, "203.0.113.0/24\n").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(d.process.pid()).unwrap()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let passed = miab_e2e::wait_until(Duration::from_secs(5), || {
        (c.ask(&from("b")) == "DUNNO").then_some(())
    });
    assert!(passed.is_some(), "{}", d.process.log());
    assert!(
        Client::connect(d.port).ask(&from("c")) == "DUNNO",
        "a new connection is served"
    );
    let log = d.process.log();
    assert!(
        log.contains("reloading") && log.contains("whitelist files read again"),
        "{log}"
    );
}

/// A BATV sender with a multi-byte character in its tag, and raw 8-bit bytes (not UTF-8) in
/// every attribute, each get an answer on the same connection: no request drops it.
#[test]
fn utf8_batv_senders_and_raw_8bit_attributes_get_an_answer() {
    let dir = Scratch::new("pol");
    miab_box(dir.path());
    let dns = TestDns::start();
    let top = "checks = [\"sender_login\", \"rhsbl\", \"dnsbl\", \"greylist\"]";
    let d = start_in_process(&dir, &config(&dir, dns.addr(), top, ""));
    let mut c = Client::connect(d.port);
    for sender in [
        "prvs=123\u{e9}45678=user@example.org",
        "prvs=u=1\u{1F600}\u{1F600}xx@example.org",
    ] {
        let r = c.ask(&[("sender", sender), ("sasl_username", "me@example.com")]);
        assert!(
            r.starts_with("553 5.7.1") || r.starts_with("DEFER_IF_PERMIT"),
            "{r}"
        );
        let r = c.ask(&[("sender", sender)]);
        assert!(r.starts_with("DEFER_IF_PERMIT 4.2.0 Greylisted"), "{r}");
    }
    let names = [
        "sender",
        "recipient",
        "client_address",
        "client_name",
        "reverse_client_name",
        "helo_name",
        "sasl_username",
        "instance",
        "policy_context",
        "queue_id",
    ];
    for name in names {
        let mut raw = Vec::new();
        for line in request(&[])
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
        {
            if !line.starts_with(format!("{name}=").as_bytes()) {
                raw.extend_from_slice(line);
                raw.push(b'\n');
            }
        }
        raw.extend_from_slice(name.as_bytes());
        raw.extend_from_slice(b"=a\xff\xfe\xc3(\x80b@ex\xe9mple.org\n");
        raw.push(b'\n');
        c.send(&raw);
        let r = c.reply();
        assert!(r.as_deref().is_some_and(|r| !r.is_empty()), "{name}: {r:?}");
    }
    assert_eq!(
        c.ask(&[("client_address", "127.0.0.1")]),
        "DUNNO",
        "still served"
    );
}

/// The envelope check over the table the milter's From: check is also tested against.
#[test]
fn sender_login_follows_the_shared_table() {
    let dir = Scratch::new("pol");
    miab_box(dir.path());
    let dns = TestDns::start();
    let cfg = config(&dir, dns.addr(), "checks = [\"sender_login\"]", "");
    let d = start_in_process(&dir, &cfg);
    let mut c = Client::connect(d.port);
    for &(login, sender, allowed) in miab_e2e::fixture::SENDER_LOGIN_CASES {
        let action = c.ask(&[("sasl_username", login), ("sender", sender)]);
        let want = if allowed {
            "DUNNO".to_owned()
        } else {
            format!("553 5.7.1 not owned by user {login}")
        };
        assert_eq!(action, want, "{login} as {sender}");
    }
}

/// Asks the policy service on the UNIX socket `path` as the local user `user` with `attrs`;
/// the action, or the error the connection got.
fn ask_as(user: &str, path: &std::path::Path, attrs: &[(&str, &str)]) -> String {
    const ASK: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("refused:", e.strerror); sys.exit(0)
s.sendall(sys.stdin.buffer.read())
got = b""
while not got.endswith(b"\n\n"):
    b = s.recv(4096)
    if not b: break
    got += b
print(got.decode().strip())
"#;
    let (uid, gid) = miab_e2e::system_user(user);
    let req = String::from_utf8(request(attrs)).unwrap();
    let r = miab_e2e::tools::run(
        std::process::Command::new("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .args(["--clear-groups", "/usr/bin/python3", "-c", ASK])
            .arg(path),
        Some(&req),
    );
    r.stdout.trim().to_owned()
}

/// The service that acts on `sasl_username` is a socket only Postfix's group can reach; on
/// the TCP port any local process can reach, no check about a login runs.
#[test]
fn only_postfix_reaches_the_login_checks() {
    let dir = Scratch::new("pol");
    miab_box(dir.path());
    let dns = TestDns::start();
    let sock_dir = dir.mkdir("spool");
    let sock = sock_dir.join("policy");
    let port = miab_e2e::free_port();
    let top = format!(
        "checks = [\"sender_login\", \"containment\", \"greylist\"]\nlisten = \"unix:{}\"\nsocket_mode = \"0660\"\nsocket_group = \"postfix\"\ngreylist_listen = \"inet:127.0.0.1:{port}\"",
        sock.display()
    );
    let extra = "[policyd.containment]\nnotify = \"\"\nfloor_new_recipients = 3";
    let path = dir.join("sidecars.toml");
    std::fs::write(&path, config(&dir, dns.addr(), &top, extra)).unwrap();
    let d = miab_e2e::process::DaemonProcess::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_miab-policyd")),
        &["--config", path.to_str().unwrap()],
        dir.join("policyd.log"),
    );
    assert!(
        miab_e2e::wait_until(Duration::from_secs(10), || sock.exists().then_some(())).is_some()
            && miab_e2e::wait_for_port(port, Duration::from_secs(10)),
        "{}",
        d.log()
    );
    let forged = [
        ("sasl_username", "me@example.com"),
        ("sender", "you@example.com"),
        ("recipient", "x@victims.example"),
        ("policy_context", "sender"),
    ];
    // Any other local user cannot connect at all; Postfix's group gets the sender check.
    let r = ask_as("nobody", &sock, &forged);
    assert!(r.starts_with("refused: Permission denied"), "{r}");
    assert_eq!(
        ask_as("postfix", &sock, &forged),
        "action=553 5.7.1 not owned by user me@example.com"
    );
    // The TCP port: no check about a login, whatever it is told.
    let mut c = Client::connect(port);
    assert_eq!(c.ask(&forged), "DUNNO");
    let many: Vec<String> = (0..20).map(|i| format!("v{i}@victims.example")).collect();
    let (_, eod) = message(&mut c, "me@example.com", "tcp-1", &many);
    assert_eq!(eod, "DUNNO");
    let s = state::sending::Sending::open(&dir.join("mail/policyd/sending.sqlite")).unwrap();
    let st = s
        .status(
            &s.rule().unwrap(),
            "me@example.com",
            state::clock::unix_now(),
        )
        .unwrap();
    assert_eq!(st.last_hour, Default::default(), "nothing counted");
    assert!(st.held_since.is_none());
    // Greylisting still answers there, as postgrey's port did.
    let r = c.ask(&[
        ("recipient", "me@example.com"),
        ("policy_context", "recipient"),
    ]);
    assert!(r.starts_with("DEFER_IF_PERMIT"), "{r}");
}
