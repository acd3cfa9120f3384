//! `miab-milter` behind a real Postfix (smtpd_milters and non_smtpd_milters), with a test DNS
//! server on 127.0.0.1 and python3-dkim as the independent verifier: signing of local and
//! authenticated mail (RSA and Ed25519, above Postfix's Received:), no signature for foreign
//! From: domains, Authentication-Results for inbound mail (pass, fail, none, temperror),
//! removal of forged results, a 50 MiB message with bounded memory, and Postfix's default
//! action with the milter stopped.

mod common;

use common::{HOST, auth_results as ar, dkimpy, header_block, send, send_file, setup};
use miab_e2e::require_program;

#[test]
fn signs_local_mail_and_checks_inbound_mail() {
    require_program("/usr/bin/swaks", "swaks");
    let s = setup();

    // Local mail (trusted 127.0.0.1) for one of our domains: RSA and Ed25519 signatures
    // above Postfix's Received:, both verified by python3-dkim.
    let signed = send(&s, "127.0.0.1", "me@example.com", &[], "local-signed");
    let head = header_block(&signed);
    let first = head.lines().next().unwrap_or_default();
    assert!(first.starts_with("DKIM-Signature:"), "{head}");
    assert_eq!(head.matches("DKIM-Signature:").count(), 2, "{head}");
    assert!(
        head.contains("a=ed25519-sha256") && head.contains("a=rsa-sha256"),
        "{head}"
    );
    assert!(
        head.contains("c=relaxed/simple") && head.contains("s=mail"),
        "{head}"
    );
    let received = head.find("Received:").unwrap();
    assert!(head.rfind("DKIM-Signature:").unwrap() < received, "{head}");
    let v = dkimpy(&s.dir, &signed, &s.records);
    assert!(v.ok(), "{v:?}\n{signed}");
    assert!(v.stdout.starts_with("2 [True, True]"), "{v:?}");
    // Its log line carries Postfix's queue id, so one message can be followed through both logs.
    let mlog = s.milter.log();
    let qid = mlog
        .lines()
        .find(|l| l.contains("msg{qid=") && l.ends_with("signed domain=\"example.com\""))
        .and_then(|l| l.split("msg{qid=").nth(1)?.split('}').next())
        .unwrap_or_else(|| panic!("no signed line with a queue id:\n{mlog}"));
    assert!(
        qid.len() >= 6 && s.pf.log().contains(&format!("{qid}: ")),
        "{qid} not in Postfix's log:\n{}",
        s.pf.log()
    );

    // A domain with its own key file is signed with it (d=other.example).
    let own = send(&s, "127.0.0.1", "boss@other.example", &[], "local-own-key");
    assert!(header_block(&own).contains("d=other.example"), "{own}");
    let v = dkimpy(&s.dir, &own, &s.records);
    assert!(v.stdout.starts_with("2 [True, True]"), "{v:?}");
    // The main key would not verify for it.
    let swapped: Vec<(String, String)> = s
        .records
        .iter()
        .map(|(n, v)| {
            let v = if n == "mail._domainkey.other.example" {
                s.records[0].1.clone()
            } else {
                v.clone()
            };
            (n.clone(), v)
        })
        .collect();
    assert!(!dkimpy(&s.dir, &own, &swapped).ok());

    // Local mail with a foreign From: stays unsigned and unverified.
    let foreign = send(&s, "127.0.0.1", "x@foreign.example", &[], "local-foreign");
    assert!(!foreign.contains("DKIM-Signature:"), "{foreign}");
    assert!(!foreign.contains("Authentication-Results:"), "{foreign}");

    // Inbound from an untrusted client: one Authentication-Results per method.
    s.dns.add_txt("good.example", "v=spf1 ip4:127.0.0.5 -all");
    s.dns
        .add_txt("_dmarc.good.example", "v=DMARC1; p=quarantine;");
    s.dns.add_txt("bad.example", "v=spf1 -all");
    s.dns.add_txt("_dmarc.bad.example", "v=DMARC1; p=reject;");
    s.dns.fail("broken.example");
    s.dns.fail("_dmarc.broken.example");
    let good = send(&s, "127.0.0.5", "a@good.example", &[], "in-good");
    assert_eq!(
        ar(&good),
        [
            format!("Authentication-Results: {HOST}; dkim=none"),
            format!("Authentication-Results: {HOST}; spf=pass smtp.mailfrom=good.example"),
            format!(
                "Authentication-Results: {HOST}; dmarc=pass (p=quarantine dis=none) header.from=good.example"
            ),
        ],
        "{good}"
    );
    let bad = send(&s, "127.0.0.5", "a@bad.example", &[], "in-bad");
    let bad_ar = ar(&bad);
    assert!(
        bad_ar[1].ends_with("spf=fail smtp.mailfrom=bad.example"),
        "{bad_ar:?}"
    );
    assert!(
        bad_ar[2].ends_with("dmarc=fail (p=reject dis=none) header.from=bad.example"),
        "{bad_ar:?}"
    );
    let none = send(&s, "127.0.0.5", "a@nothing.example", &[], "in-none");
    let none_ar = ar(&none);
    assert!(
        none_ar[1].ends_with("spf=none smtp.mailfrom=nothing.example"),
        "{none_ar:?}"
    );
    assert!(none_ar[2].contains("dmarc=none"), "{none_ar:?}");
    let broken = send(&s, "127.0.0.5", "a@broken.example", &[], "in-broken");
    let broken_ar = ar(&broken);
    assert!(broken_ar[1].contains("spf=temperror"), "{broken_ar:?}");
    assert!(broken_ar[2].contains("dmarc=temperror"), "{broken_ar:?}");

    // Our own signed message coming back in from outside with its Subject changed: that
    // breaks both signatures, so dkim=fail for each, with the domain.
    let body_file = s.dir.join("resend.eml");
    let resend = signed
        .replace("Subject: local-signed", "Subject: in-resigned")
        .replacen("Received:", "X-Old-Received:", 1);
    std::fs::write(&body_file, &resend).unwrap();
    let back = send_file(&s, "127.0.0.5", "me@example.com", &body_file, "in-resigned");
    let back_ar = ar(&back);
    assert_eq!(back_ar[0].matches("dkim=fail").count(), 2, "{back_ar:?}");
    assert!(
        back_ar[0].contains(
            "header.d=example.com header.i=@example.com header.a=rsa-sha256 header.s=mail"
        ) && back_ar[0].contains("header.a=ed25519-sha256 header.s=ed"),
        "{back_ar:?}"
    );

    // A forged result with our authserv-id is removed; someone else's stays.
    let forged = send(
        &s,
        "127.0.0.5",
        "a@good.example",
        &[
            "--header",
            &format!("Authentication-Results: {HOST}; dkim=pass header.d=good.example"),
            "--add-header",
            "Authentication-Results: mx.other.example; spf=pass",
        ],
        "in-forged",
    );
    let forged_ar = ar(&forged);
    assert_eq!(forged_ar.len(), 4, "{forged_ar:?}");
    assert!(
        !forged_ar
            .iter()
            .any(|h| h.contains("dkim=pass header.d=good.example")),
        "{forged_ar:?}"
    );
    assert!(
        forged_ar.iter().any(|h| h.contains("mx.other.example")),
        "{forged_ar:?}"
    );

    // A signature whose i= holds quoted-printable (decoded by the DKIM parser) must not put a
    // result of its own into our header: an i= that is no address in d='s domain is dropped.
    let sig = "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/simple; d=good.example; s=sel; \
        i==3B=20dkim=3Dpass=20header.d=3Dbank.example=0D=0A@good.example; h=from:subject; \
        bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=AAAA";
    let qp = send(
        &s,
        "127.0.0.5",
        "a@good.example",
        &["--add-header", sig],
        "in-qp-i",
    );
    let qp_ar = ar(&qp);
    let dkim = qp_ar
        .iter()
        .find(|h| h.contains("dkim="))
        .expect("a dkim result");
    let outside_quotes: String = dkim.split('"').step_by(2).collect();
    assert_eq!(outside_quotes.matches("dkim=").count(), 1, "{dkim}");
    assert!(!outside_quotes.contains("bank.example"), "{dkim}");
    assert!(
        !dkim.contains("bank.example")
            && !dkim.contains("header.i=")
            && dkim.contains("header.d=good.example"),
        "{dkim}"
    );
}

#[test]
fn large_message_and_milter_stopped() {
    require_program("/usr/bin/swaks", "swaks");
    let mut s = setup();
    // 50 MiB of body, signed while streaming: the milter's peak memory stays far below it.
    let line = "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n";
    let body_path = s.dir.join("big.txt");
    let mut body = String::with_capacity(50 << 20);
    while body.len() < 50 << 20 {
        body.push_str(line);
    }
    std::fs::write(&body_path, &body).unwrap();
    drop(body);
    let body_arg = format!("@{}", body_path.display());
    let big = send(
        &s,
        "127.0.0.1",
        "me@example.com",
        &["--body", &body_arg],
        "big-signed",
    );
    assert!(big.len() > 50 << 20);
    let v = dkimpy(&s.dir, &big, &s.records);
    assert!(v.ok(), "{v:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.milter.pid())).unwrap();
    let hwm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    eprintln!("miab-milter peak RSS after a 50 MiB message: {hwm_kib} KiB");
    assert!(
        hwm_kib < 40 * 1024,
        "peak RSS {hwm_kib} KiB for a 50 MiB message"
    );

    // Milter stopped: Postfix applies milter_default_action = accept.
    s.milter.terminate();
    let unsigned = send(&s, "127.0.0.1", "me@example.com", &[], "milter-down");
    assert!(!unsigned.contains("DKIM-Signature:"), "{unsigned}");
}

/// A message with 1,000 DKIM signatures (each its own domain to look up) costs at most
/// `max_signatures` checks: it gets its results, the rest reported as not checked, while a
/// message on another connection goes through meanwhile.
#[test]
fn a_thousand_signatures_are_capped() {
    let s = setup();
    let mut msg = String::new();
    for n in 0..1000 {
        msg.push_str(&format!(
            "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=d{n}.example; s=s; h=from; bh=frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY=; b=AAAA\r\n"
        ));
    }
    msg.push_str("From: <a@good.example>\r\nSubject: many-signatures\r\n\r\nbody\r\n");
    let path = s.dir.join("many.eml");
    std::fs::write(&path, msg).unwrap();
    let (many, other) = std::thread::scope(|t| {
        let many =
            t.spawn(|| send_file(&s, "127.0.0.5", "a@good.example", &path, "many-signatures"));
        let other = t.spawn(|| send(&s, "127.0.0.5", "b@good.example", &[], "meanwhile"));
        (many.join().unwrap(), other.join().unwrap())
    });
    assert!(ar(&other)[0].contains("dkim=none"), "{other}");
    let results = ar(&many);
    let dkim = &results[0];
    assert_eq!(dkim.matches("dkim=").count(), 6, "{dkim}");
    assert!(
        dkim.contains("dkim=policy (995 more signatures not checked)"),
        "{dkim}"
    );
    assert!(!dkim.contains("temperror (DNS timeout)"), "{dkim}");
    assert!(
        dkim.contains("header.d=d0.example") && !dkim.contains("header.d=d5.example"),
        "{dkim}"
    );
}

/// SIGHUP (systemctl reload) reads the keys again: after a rotation, mail is signed with the
/// new key, and the daemon went on serving.
#[test]
fn sighup_reads_a_rotated_key() {
    let s = setup();
    let key = s.dir.join("mail/dkim/mail.private");
    let fresh = s.dir.join("fresh.private");
    common::openssl(&[
        "genrsa",
        "-traditional",
        "-out",
        fresh.to_str().unwrap(),
        "2048",
    ]);
    std::fs::rename(&fresh, &key).unwrap();
    let record = format!(
        "v=DKIM1; k=rsa; p={}",
        common::b64(&common::public_der(&key))
    );
    let pid = i32::try_from(s.milter.pid()).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let reloaded = miab_e2e::wait_until(std::time::Duration::from_secs(10), || {
        s.milter
            .log()
            .contains("signing keys read again")
            .then_some(())
    });
    assert!(reloaded.is_some(), "{}", s.milter.log());
    let signed = send(&s, "127.0.0.1", "me@example.com", &[], "after-rotation");
    let rotated: Vec<(String, String)> = s
        .records
        .iter()
        .map(|(n, v)| {
            let v = if n == "mail._domainkey.example.com" {
                record.clone()
            } else {
                v.clone()
            };
            (n.clone(), v)
        })
        .collect();
    let v = dkimpy(&s.dir, &signed, &rotated);
    assert!(v.stdout.starts_with("2 [True, True]"), "{v:?}");
    let old = dkimpy(&s.dir, &signed, &s.records);
    assert!(!old.ok(), "the old record no longer verifies: {old:?}");
}
