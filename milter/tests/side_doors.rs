//! Mail that never met SMTP AUTH, through a real Postfix: `sendmail` as the web server's user
//! and a loopback client without a login are not signed for a user's domain; the box's own
//! mail (cron as root) and a Sieve vacation reply are; and an inbound spoof of a box domain,
//! redirected by a real Dovecot Sieve rule, leaves without our signature.

mod common;

use common::{HOST, Setup, dkimpy, header_block, setup_full};
use miab_e2e::dovecot::{Auth, Dovecot};
use miab_e2e::tools::swaks;
use miab_e2e::{chown_to, require_program, system_user};
use std::process::Command;
use std::time::Duration;

/// The milter with no `sign_local_domains`: the packaged default.
fn setup() -> Setup {
    let mut s = setup_full(false, "sign_local_domains = []");
    // The box's hostname signs with the same keys as the user domains.
    let rsa = s.records[0].1.clone();
    let ed = s.records[1].1.clone();
    for (n, v) in [
        (format!("mail._domainkey.{HOST}"), rsa),
        (format!("ed._domainkey.{HOST}"), ed),
    ] {
        s.dns.add_txt(&n, &v);
        s.records.push((n, v));
    }
    s
}

fn signatures(msg: &str) -> Vec<String> {
    header_block(msg)
        .split("\r\n")
        .filter(|l| l.to_ascii_lowercase().starts_with("dkim-signature:"))
        .map(str::to_owned)
        .collect()
}

fn delivered(s: &Setup, marker: &str) -> String {
    s.pf.sink
        .wait_for(marker, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{marker} not delivered\n{}\n{}", s.pf.log(), s.milter.log()))
        .data
}

/// `sendmail -f FROM someone@elsewhere.example` as `user`, the header From: `header_from`.
fn sendmail(
    s: &Setup,
    user: &str,
    envelope: &str,
    header_from: &str,
    extra: &str,
    marker: &str,
) -> String {
    let (uid, gid) = system_user(user);
    let msg = format!(
        "From: <{header_from}>\nTo: <someone@elsewhere.example>\nSubject: {marker}\n{extra}\nhello\n"
    );
    let r = s.pf.sendmail_as(
        uid,
        gid,
        &["-f", envelope, "someone@elsewhere.example"],
        &msg,
    );
    assert!(r.ok(), "sendmail as {user}: {} {}", r.stdout, r.stderr);
    delivered(s, marker)
}

#[test]
fn local_mail_without_a_login_is_signed_only_for_the_box_and_automatic_replies() {
    let s = setup();

    // The web server's user, as Z-Push and a compromised web application would.
    let msg = sendmail(
        &s,
        "www-data",
        "ceo@example.com",
        "ceo@example.com",
        "",
        "www-data-spoof",
    );
    assert!(signatures(&msg).is_empty(), "signed:\n{msg}");
    assert!(
        s.milter
            .log()
            .contains("local mail without SMTP AUTH for a user domain"),
        "{}",
        s.milter.log()
    );

    // A loopback client without a login: the same.
    let r = swaks(
        s.pf.smtp_port(),
        &[
            "--local-interface",
            "127.0.0.1",
            "--from",
            "ceo@example.com",
            "--to",
            "someone@elsewhere.example",
            "--header",
            "From: <ceo@example.com>",
            "--header",
            "Subject: loopback-spoof",
        ],
    );
    assert!(r.ok(), "{}", r.stdout);
    let msg = delivered(&s, "loopback-spoof");
    assert!(signatures(&msg).is_empty(), "signed:\n{msg}");

    // cron's mail to root: the box's own name, signed and verifiable.
    let from = format!("root@{HOST}");
    let msg = sendmail(&s, "root", &from, &from, "", "cron-mail");
    let sigs = signatures(&msg);
    assert_eq!(sigs.len(), 2, "{msg}");
    assert!(
        sigs.iter().all(|h| h.contains(&format!("d={HOST}"))),
        "{sigs:?}"
    );
    let v = dkimpy(&s.dir, &msg, &s.records);
    assert!(v.ok(), "python3-dkim: {} {}", v.stdout, v.stderr);

    // A Sieve vacation reply (Dovecot's LMTP runs as mail): null sender, Auto-Submitted, From:
    // the mailbox. Signed.
    let msg = sendmail(
        &s,
        "mail",
        "",
        "me@example.com",
        "Auto-Submitted: auto-replied (vacation)\n",
        "vacation-reply",
    );
    assert_eq!(signatures(&msg).len(), 2, "{msg}");
    let v = dkimpy(&s.dir, &msg, &s.records);
    assert!(v.ok(), "python3-dkim: {} {}", v.stdout, v.stderr);

    // The web server's user writing a "pass" result of ours itself: that reads as mail that
    // came in, which is never signed again.
    let msg = sendmail(
        &s,
        "www-data",
        "ceo@example.com",
        "ceo@example.com",
        &format!(
            "Authentication-Results: {HOST}; dmarc=pass (p=none dis=none) header.from=example.com\n"
        ),
        "www-data-forged-pass",
    );
    assert!(signatures(&msg).is_empty(), "signed:\n{msg}");

    // The same headers from the web server's user with its own sender: not a reply.
    let msg = sendmail(
        &s,
        "www-data",
        "ceo@example.com",
        "ceo@example.com",
        "Auto-Submitted: auto-replied\n",
        "www-data-auto",
    );
    assert!(signatures(&msg).is_empty(), "signed:\n{msg}");
}

#[test]
fn a_sieve_redirect_of_an_inbound_spoof_leaves_unsigned() {
    require_program(
        "/usr/lib/dovecot/modules/lib90_sieve_plugin.so",
        "dovecot-sieve",
    );
    let s = setup();
    let root = s.dir.path();
    // me@example.com redirects everything, with MIAB's script locations.
    let sieve = root.join("mail/sieve/example.com");
    std::fs::create_dir_all(&sieve).unwrap();
    std::fs::write(
        sieve.join("me.sieve"),
        "redirect \"someone@elsewhere.example\";\n",
    )
    .unwrap();
    chown_to(&root.join("mail/sieve"), "mail");
    chown_to(&sieve, "mail");
    chown_to(&sieve.join("me.sieve"), "mail");
    let extra = format!(
        "protocol lmtp {{\n  mail_plugins = $mail_plugins sieve\n}}\nplugin {{\n  sieve = file:{d}/%d/%n;active={d}/%d/%n.sieve\n}}\nsubmission_host = 127.0.0.1:{port}\n",
        d = root.join("mail/sieve").display(),
        port = s.pf.smtp_port(),
    );
    let dv = Dovecot::start_full(root, &Auth::Sql, &extra);
    // Mail for example.com goes to Dovecot's LMTP.
    let postconf = |kv: &str| {
        let out = Command::new("/usr/sbin/postconf")
            .arg("-c")
            .arg(s.pf.config_dir())
            .args(["-e", kv])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    postconf(&format!(
        "transport_maps = inline:{{ example.com=lmtp:inet:127.0.0.1:{} }}",
        dv.lmtp_port()
    ));
    postconf("relay_domains = example.com");
    let out = Command::new("/usr/sbin/postfix")
        .arg("-c")
        .arg(s.pf.config_dir())
        .arg("reload")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::thread::sleep(Duration::from_secs(1));

    // From outside (127.0.0.5), a From: of a box domain that proves nothing.
    let r = swaks(
        s.pf.smtp_port(),
        &[
            "--local-interface",
            "127.0.0.5",
            "--helo",
            "mx.evil.example",
            "--from",
            "ceo@example.com",
            "--to",
            "me@example.com",
            "--header",
            "From: The CEO <ceo@example.com>",
            "--header",
            "Subject: sieve-redirected-spoof",
        ],
    );
    assert!(r.ok(), "{}", r.stdout);
    let msg =
        s.pf.sink
            .wait_for("sieve-redirected-spoof", Duration::from_secs(30))
            .unwrap_or_else(|| {
                panic!(
                    "the redirect never left\n{}\n{}\n{}",
                    s.pf.log(),
                    dv.log(),
                    s.milter.log()
                )
            });
    assert_eq!(msg.rcpt_to, vec!["someone@elsewhere.example".to_owned()]);
    let data = msg.data;
    assert!(signatures(&data).is_empty(), "signed:\n{data}");
    assert!(
        s.milter.log().contains(
            "came in from outside (it carries our Authentication-Results); not signed again"
        ),
        "{}",
        s.milter.log()
    );
}
