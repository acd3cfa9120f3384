//! Inbound verdicts a receiver can trust, through a real Postfix and swaks: every From: case
//! (none, several headers, unreadable, several domains) gets its reply or its
//! Authentication-Results; forged results claiming our authserv-id in every RFC 8601 form are
//! gone, and MIAB's SpamAssassin rules match only what we decided; an oversized header block
//! is answered with a temporary failure; 1,000 idle connections do not keep mail from being
//! signed.

mod common;

use common::{
    HOST, Setup, auth_results, header_block, message_file, setup, setup_full, swaks_file,
};
use miab_e2e::require_program;
use miab_e2e::tools::Run;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Sends the header lines `headers` and a body from 127.0.0.5, envelope sender `from`.
fn send(s: &Setup, headers: &[&str], marker: &str, from: &str) -> Run {
    let path = message_file(s, headers, marker);
    swaks_file(s.pf.smtp_port(), "127.0.0.5", from, &path, &[])
}

fn delivered(s: &Setup, headers: &[&str], marker: &str, from: &str) -> String {
    let r = send(s, headers, marker, from);
    assert!(r.ok(), "{marker}: {}\n{}", r.stdout, s.milter.log());
    s.pf.sink
        .wait_for(marker, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{marker} not delivered\n{}", s.milter.log()))
        .data
}

fn answered(s: &Setup, headers: &[&str], marker: &str, reply: &str) {
    let r = send(s, headers, marker, "a@good.example");
    assert!(!r.ok(), "{marker} was accepted: {}", r.stdout);
    assert!(
        r.stdout.contains(reply),
        "{marker}: want {reply:?}\n{}\n{}",
        r.stdout,
        s.milter.log()
    );
}

/// MIAB's SpamAssassin rules (`setup/spamassassin.sh`), with `HOST` for the escaped primary
/// hostname; each pattern is a plain string once the hostname is escaped, so `contains` is
/// the regex:
/// `header DMARC_PASS Authentication-Results =~ /HOST; dmarc=pass/` and the others below.
const SA_RULES: [(&str, &str); 8] = [
    ("DMARC_PASS", "; dmarc=pass"),
    ("DMARC_NONE", "; dmarc=none"),
    ("DMARC_FAIL_NONE", "; dmarc=fail (p=none"),
    ("DMARC_FAIL_QUARANTINE", "; dmarc=fail (p=quarantine"),
    ("DMARC_FAIL_REJECT", "; dmarc=fail (p=reject"),
    ("SPF_PASS", "; spf=pass"),
    ("SPF_NONE", "; spf=none"),
    ("SPF_FAIL", "; spf=fail"),
];

/// The rules that fire on `headers` (SpamAssassin joins every header of the name).
fn sa_fired(headers: &[String]) -> Vec<&'static str> {
    let all = headers.join("\n");
    SA_RULES
        .iter()
        .filter(|(_, p)| all.contains(&format!("{HOST}{p}")))
        .map(|(name, _)| *name)
        .collect()
}

/// The Authentication-Results values of a delivered message: ours (the ones on top, which we
/// insert) and all.
fn ours_and_all(msg: &str) -> (Vec<String>, Vec<String>) {
    let all: Vec<String> = auth_results(msg)
        .into_iter()
        .map(|h| h.trim_start_matches("Authentication-Results:").to_owned())
        .collect();
    let ours = all
        .iter()
        .take_while(|h| h.starts_with(&format!(" {HOST}; ")))
        .cloned()
        .collect();
    (ours, all)
}

#[test]
fn every_from_case_has_its_answer() {
    require_program("/usr/bin/swaks", "swaks");
    let s = setup();
    s.dns.add_txt("good.example", "v=spf1 ip4:127.0.0.5 -all");
    s.dns.add_txt("_dmarc.good.example", "v=DMARC1; p=none;");
    s.dns.add_txt("bank.example", "v=spf1 -all");
    s.dns.add_txt("_dmarc.bank.example", "v=DMARC1; p=reject;");

    answered(
        &s,
        &["From: <a@good.example>", "From: <ceo@bank.example>"],
        "two-froms",
        "550 5.7.1 the message has 2 From: headers (RFC 5322 allows one)",
    );
    answered(
        &s,
        &["Sender: <a@good.example>"],
        "no-from",
        "550 5.7.1 the message has no From: header (RFC 5322 requires one)",
    );
    for (i, bad) in [
        "From: Bank Customer Service",
        "From: undisclosed-recipients:;",
        "From: <ceo@bank.example;x>",
        "From: a@good.example, Bank",
    ]
    .iter()
    .enumerate()
    {
        answered(
            &s,
            &[bad],
            &format!("unreadable-{i}"),
            "550 5.7.1 the From: header names no address with a domain that can be checked",
        );
    }

    // Two domains: each is evaluated; the spoofed bank fails under its p=reject.
    let two = delivered(
        &s,
        &["From: a@good.example, CEO <ceo@bank.example>"],
        "two-domains",
        "a@good.example",
    );
    let (ours, _) = ours_and_all(&two);
    assert_eq!(ours.len(), 4, "{ours:?}");
    assert!(
        ours[2].contains("dmarc=pass") && ours[2].ends_with("header.from=good.example"),
        "{ours:?}"
    );
    assert!(
        ours[3].contains("dmarc=fail (p=reject dis=none) header.from=bank.example"),
        "{ours:?}"
    );
    assert!(sa_fired(&ours).contains(&"DMARC_FAIL_REJECT"), "{ours:?}");

    // The same spoof in one domain alone: a plain fail.
    let one = delivered(
        &s,
        &["From: <ceo@bank.example>"],
        "one-domain",
        "a@good.example",
    );
    let (ours, _) = ours_and_all(&one);
    assert!(
        ours[2].contains("dmarc=fail (p=reject dis=none) header.from=bank.example"),
        "{ours:?}"
    );
}

#[test]
fn under_dmarc_reject_the_strictest_domain_refuses() {
    require_program("/usr/bin/swaks", "swaks");
    let s = setup_full(false, "dmarc_reject = true\n");
    s.dns.add_txt("good.example", "v=spf1 ip4:127.0.0.5 -all");
    s.dns.add_txt("_dmarc.good.example", "v=DMARC1; p=none;");
    s.dns.add_txt("_dmarc.bank.example", "v=DMARC1; p=reject;");
    answered(
        &s,
        &["From: a@good.example, ceo@bank.example"],
        "reject-two",
        "550 5.7.1 rejected by DMARC policy for bank.example",
    );
    delivered(
        &s,
        &["From: a@good.example"],
        "reject-good",
        "a@good.example",
    );
}

#[test]
fn forged_results_are_gone_and_spamassassin_reads_only_ours() {
    require_program("/usr/bin/swaks", "swaks");
    let s = setup();
    s.dns.add_txt("bank.example", "v=spf1 -all");
    s.dns.add_txt("_dmarc.bank.example", "v=DMARC1; p=reject;");
    let forged = [
        format!("Authentication-Results: {HOST}; dmarc=pass header.from=bank.example"),
        format!("Authentication-Results: (our id, as we might write it) {HOST}; dmarc=pass"),
        format!("Authentication-Results: \"{HOST}\"; spf=pass smtp.mailfrom=bank.example"),
        format!(
            "Authentication-Results: {}.; dmarc=pass",
            HOST.to_uppercase()
        ),
        format!("Authentication-Results: {HOST} 1; dmarc=pass"),
        format!("Authentication-Results:\r\n\t{HOST}\r\n\t; dmarc=pass"),
        format!("authentication-results: {HOST}(c); dmarc=pass"),
        format!("Authentication-Results: mx.other.example; x=y ({HOST}; dmarc=pass)"),
        format!(
            "Authentication-Results: mx.other.example; dkim=pass header.i=\"{HOST}; dmarc=pass\""
        ),
    ];
    let kept =
        format!("Authentication-Results: mx.other.example; spf=pass smtp.mailfrom=user@{HOST}");
    // Values a sender controls that try to read as results: a DKIM-Signature whose i= is not
    // in d=, a From: domain, and (null sender) the HELO name.
    let sig = format!(
        "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/simple; d=bank.example; s=sel; \
         i=x=3B=20{HOST}=3B=20dmarc=3Dpass@bank.example; h=from; \
         bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=AAAA"
    );
    let mut headers: Vec<&str> = forged.iter().map(String::as_str).collect();
    headers.extend([kept.as_str(), sig.as_str(), "From: <ceo@bank.example>"]);
    let path = s.dir.join("forged.eml");
    let mut msg = headers.join("\r\n");
    msg.push_str("\r\nTo: someone@elsewhere.example\r\nSubject: forged-all\r\n\r\nbody\r\n");
    std::fs::write(&path, msg).unwrap();
    let helo = format!("x; {HOST}; spf=pass");
    let r = swaks_file(s.pf.smtp_port(), "127.0.0.5", "", &path, &["--helo", &helo]);
    assert!(r.ok(), "{}\n{}", r.stdout, s.milter.log());
    let got =
        s.pf.sink
            .wait_for("forged-all", Duration::from_secs(30))
            .expect("delivered")
            .data;
    let (ours, all) = ours_and_all(&got);
    assert_eq!(ours.len(), 3, "{all:?}");
    assert_eq!(
        all.len(),
        4,
        "only ours and the honest foreign one: {all:?}"
    );
    assert!(all[3].contains("smtp.mailfrom=user@"), "{all:?}");
    assert!(
        !header_block(&got)
            .to_ascii_lowercase()
            .contains("(c); dmarc"),
        "{got}"
    );
    // What SpamAssassin sees is what we decided: a DMARC fail under p=reject.
    assert_eq!(sa_fired(&all), sa_fired(&ours), "{all:?}");
    assert!(sa_fired(&all).contains(&"DMARC_FAIL_REJECT"), "{all:?}");
    assert!(!sa_fired(&all).contains(&"DMARC_PASS"), "{all:?}");
    assert!(
        ours.iter().all(|h| !h[HOST.len() + 2..].contains(HOST)),
        "no copied value names our host: {ours:?}"
    );
}

#[test]
fn an_oversized_header_block_is_answered_with_a_temporary_failure() {
    require_program("/usr/bin/swaks", "swaks");
    let s = setup_full(false, "max_header_bytes = 4096\n");
    let filler: Vec<String> = (0..60)
        .map(|i| format!("X-Filler-{i}: {}", "x".repeat(80)))
        .collect();
    let mut headers: Vec<&str> = filler.iter().map(String::as_str).collect();
    headers.push("From: <a@good.example>");
    answered(
        &s,
        &headers,
        "oversized",
        "451 4.7.0 the header block is larger than this server verifies",
    );
    assert!(
        s.pf.sink
            .wait_for("oversized", Duration::from_secs(2))
            .is_none()
    );
}

/// Raises this process's open-file limit to what the test needs.
fn raise_nofile(want: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard).unwrap();
    }
}

#[test]
fn a_thousand_idle_connections_do_not_keep_mail_out() {
    require_program("/usr/bin/swaks", "swaks");
    raise_nofile(4096);
    let s = setup();
    // Half say nothing; half negotiate as Postfix would and then say nothing.
    let optneg = {
        let mut data = vec![0, 0, 0, 6, 0, 0, 0x01, 0xff, 0, 0x1f, 0xff, 0xff];
        let mut f = u32::try_from(data.len() + 1)
            .unwrap()
            .to_be_bytes()
            .to_vec();
        f.push(b'O');
        f.append(&mut data);
        f
    };
    let mut idle = Vec::new();
    for i in 0..1000 {
        let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        if i % 2 == 1 {
            c.write_all(&optneg).unwrap();
        }
        idle.push(c);
    }
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let signed = common::send(&s, "127.0.0.1", "me@example.com", &[], "after-idle");
    let took = started.elapsed();
    assert!(
        header_block(&signed).starts_with("DKIM-Signature:"),
        "{signed}"
    );
    eprintln!("signed in {took:?} with 1,000 idle connections open");
    assert!(
        s.milter.log().contains("closing the one idle longest"),
        "{}",
        s.milter.log()
    );
    drop(idle);
}

/// One SMTP transaction over a raw socket, so the message's bytes reach Postfix as they are.
fn raw_smtp(port: u16, from: &str, data: &str) {
    use std::io::{BufRead, BufReader};
    let conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut w = conn;
    let mut expect = |code: &str| loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with(code), "want {code}: {line}");
        if line.as_bytes().get(3) == Some(&b' ') {
            break;
        }
    };
    expect("220");
    for (cmd, code) in [
        ("EHLO client.example".to_owned(), "250"),
        (format!("MAIL FROM:<{from}>"), "250"),
        ("RCPT TO:<someone@elsewhere.example>".to_owned(), "250"),
        ("DATA".to_owned(), "354"),
    ] {
        w.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
        expect(code);
    }
    w.write_all(data.as_bytes()).unwrap();
    w.write_all(b".\r\n").unwrap();
    expect("250");
    w.write_all(b"QUIT\r\n").unwrap();
}

/// A bare CR in the body (content in simple canonicalisation, which mail-auth 0.13's signer
/// drops; `canon.rs` keeps it) reaches the milter as Postfix passes it on, a space, and the
/// signature over it, and over whitespace-only last lines, passes in dkimpy and in our own
/// check.
#[test]
fn a_bare_cr_is_signed_as_postfix_passes_it_on() {
    require_program("/usr/bin/swaks", "swaks");
    let s = setup();
    let data = "From: <me@example.com>\r\nTo: someone@elsewhere.example\r\nSubject: bare-cr\r\n\r\nprice\r100\r\n \r\n\t\r\n";
    raw_smtp(s.pf.smtp_port(), "me@example.com", data);
    let signed =
        s.pf.sink
            .wait_for("bare-cr", Duration::from_secs(30))
            .expect("delivered")
            .data;
    assert!(
        header_block(&signed).starts_with("DKIM-Signature:"),
        "{signed}"
    );
    // Postfix (3.7) hands milters and the next hop a bare CR as a space.
    assert!(signed.contains("price 100\r\n"), "{signed:?}");
    let py = common::dkimpy(&s.dir, &signed, &s.records);
    assert!(py.ok(), "dkimpy: {}\n{}", py.stdout, py.stderr);
    // Back in from outside: our verification passes both signatures.
    let path = s.dir.join("bare-cr-back.eml");
    let back = format!(
        "X-Back: bare-cr-back\r\n{}",
        signed.replacen("Received:", "X-Old-Received:", 1)
    );
    std::fs::write(&path, back).unwrap();
    let r = swaks_file(s.pf.smtp_port(), "127.0.0.5", "me@example.com", &path, &[]);
    assert!(r.ok(), "{}", r.stdout);
    let verified =
        s.pf.sink
            .wait_for("bare-cr-back", Duration::from_secs(30))
            .expect("delivered")
            .data;
    assert!(verified.contains("price 100\r\n"), "{verified:?}");
    let (ours, _) = ours_and_all(&verified);
    assert_eq!(ours[0].matches("dkim=pass").count(), 2, "{ours:?}");
}
