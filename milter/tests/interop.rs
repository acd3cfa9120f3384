//! `miab-milter` against others' code, through real Postfix instances: the public DKIM vectors
//! verify; OpenDKIM (Debian's package) verifies what we sign and we verify what it signs; mail
//! from an SMTP AUTH session (Dovecot's auth socket) and from `sendmail` is signed, while the
//! same From: from an unauthenticated outside client is not; malformed milter packets on a raw
//! socket cost one connection and nothing else; a locked user DB answers tempfail and a dead
//! DNS server gives temperror results, and neither loses mail.

mod common;

use common::{
    HOST, auth_results, dkimpy, header_block, send, send_file, setup, setup_with, swaks_file,
};
use miab_e2e::postfix::{Postfix, PostfixConfig};
use miab_e2e::tools::{run, swaks};
use miab_e2e::{Scratch, free_port, require_program, wait_for_port};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Splits a vector file into its DNS records and its message (CRLF line ends).
fn vector(path: &Path) -> (Vec<(String, String)>, String) {
    let text = std::fs::read_to_string(path).unwrap();
    let (dns, msg) = text.split_once("\n\n").unwrap();
    let records = dns
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    (records, msg.replace('\n', "\r\n"))
}

#[test]
fn public_vectors_verify() {
    require_program("/usr/bin/swaks", "swaks");
    let s = setup();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    // (file, the signatures that must pass as "d s", or none for a signature that must not).
    let cases: &[(&str, &[&str])] = &[
        (
            "rfc8463",
            &["football.example.com brisbane", "football.example.com test"],
        ),
        ("rfc6376-a2", &["example.com brisbane"]),
        ("rfc6376-a2-resigned-pkcs1", &["example.com newengland"]),
        ("ietf", &["ietf.org ietf1"]),
        ("facebookmail", &["facebookmail.com s1024-2013-q3"]),
        ("github", &["github.com dk2016"]),
        ("topicbox-expired", &[]),
    ];
    for (name, passes) in cases {
        let (records, msg) = vector(&dir.join(format!("{name}.txt")));
        for (n, v) in &records {
            s.dns.add_txt(n, v);
        }
        // An unsigned marker header on top, so the sink's copy can be found.
        let path = s.dir.join(format!("{name}.eml"));
        std::fs::write(&path, format!("X-Vector: {name}\r\n{msg}")).unwrap();
        let got = send_file(
            &s,
            "127.0.0.5",
            "x@vectors.example",
            &path,
            &format!("X-Vector: {name}\r\n"),
        );
        let ar = auth_results(&got);
        let dkim = ar
            .iter()
            .find(|h| h.contains("; dkim="))
            .unwrap_or_else(|| panic!("{name}: no dkim result in {ar:?}"));
        for want in *passes {
            let (d, sel) = want.split_once(' ').unwrap();
            let needle = format!("header.d={d}");
            let ok = dkim.split("; dkim=").skip(1).any(|r| {
                r.starts_with("pass")
                    && r.contains(&needle)
                    && r.contains(&format!("header.s={sel}"))
            });
            assert!(
                ok,
                "{name}: {want} did not pass: {dkim}\n{}",
                s.milter.log()
            );
        }
        if passes.is_empty() {
            assert!(!dkim.contains("dkim=pass"), "{name}: {dkim}");
            assert!(dkim.contains("dkim="), "{name}: {dkim}");
        }
        eprintln!("{name}: {dkim}");
    }
}

/// A throw-away OpenDKIM in sign-and-verify mode: it signs for signer.example when the client
/// is 127.0.0.1 and verifies everything else, with `TestDNSData` as its DNS.
struct OpenDkim {
    child: Child,
    port: u16,
}

impl Drop for OpenDkim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn opendkim(dir: &Scratch, records: &[(String, String)]) -> (OpenDkim, String) {
    let bin = require_program("/usr/sbin/opendkim", "opendkim");
    let keys = dir.mkdir("od");
    let genkey = require_program("/usr/sbin/opendkim-genkey", "opendkim-tools");
    let r = run(
        Command::new(genkey)
            .args(["-b", "2048", "-d", "signer.example", "-s", "od", "-D"])
            .arg(&keys),
        None,
    );
    assert!(r.ok(), "{r:?}");
    // od.txt is a zone-file fragment: the record is its quoted strings, joined.
    let zone = std::fs::read_to_string(keys.join("od.txt")).unwrap();
    let od_txt: String = zone.split('"').skip(1).step_by(2).collect();
    // OpenDKIM's data-set files split a line at its first blank: write records without blanks.
    let mut data: String = records
        .iter()
        .map(|(n, v)| format!("{n} {}\n", v.replace(' ', "")))
        .collect();
    data.push_str(&format!(
        "od._domainkey.signer.example {}\n",
        od_txt.replace(' ', "")
    ));
    std::fs::write(keys.join("dns.txt"), data).unwrap();
    let port = free_port();
    let conf = format!(
        "Syslog no
Mode sv
Socket inet:{port}@127.0.0.1
Domain signer.example
KeyFile {keys}/od.private
Selector od
Canonicalization relaxed/simple
InternalHosts 127.0.0.1
TestDNSData file:{keys}/dns.txt
AuthservID verifier.example
PidFile {keys}/opendkim.pid
RequireSafeKeys false
",
        keys = keys.display()
    );
    let conf_path = keys.join("opendkim.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new(bin)
        .arg("-f")
        .arg("-x")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_for_port(port, Duration::from_secs(20)),
        "opendkim did not listen"
    );
    (OpenDkim { child, port }, od_txt)
}

#[test]
fn opendkim_cross_check() {
    require_program("/usr/bin/swaks", "swaks");
    let s = setup();
    let (od, od_txt) = opendkim(&s.dir, &s.records);
    s.dns.add_txt("od._domainkey.signer.example", &od_txt);
    let b = Postfix::start(
        PostfixConfig::default()
            .set("smtpd_milters", format!("inet:127.0.0.1:{}", od.port))
            .set("milter_default_action", "tempfail"),
    );

    // OpenDKIM signs a local message for signer.example ...
    let r = swaks(
        b.smtp_port(),
        &[
            "--local-interface",
            "127.0.0.1",
            "--from",
            "x@signer.example",
            "--to",
            "someone@elsewhere.example",
            "--header",
            "From: X <x@signer.example>",
            "--header",
            "Subject: od-signed",
        ],
    );
    assert!(r.ok(), "{}\n{}", r.stdout, b.log());
    let signed = b
        .sink
        .wait_for("od-signed", Duration::from_secs(30))
        .expect("OpenDKIM's instance delivered")
        .data;
    assert!(
        header_block(&signed).contains("d=signer.example")
            && header_block(&signed).contains("s=od"),
        "{signed}"
    );
    // ... and our milter, receiving it from outside, says dkim=pass.
    let path = s.dir.join("od-signed.eml");
    std::fs::write(&path, &signed).unwrap();
    let got = send_file(&s, "127.0.0.5", "x@signer.example", &path, "od-signed");
    let ar = auth_results(&got);
    assert!(
        ar[0].starts_with(&format!("Authentication-Results: {HOST}; dkim=pass"))
            && ar[0].contains("header.d=signer.example")
            && ar[0].contains("header.s=od"),
        "{ar:?}"
    );

    // We sign (RSA and Ed25519); OpenDKIM, receiving it from outside, passes both.
    let ours = send(&s, "127.0.0.1", "me@example.com", &[], "ours-to-od");
    let path = s.dir.join("ours.eml");
    std::fs::write(&path, ours.replacen("Received:", "X-Old-Received:", 1)).unwrap();
    let r = swaks_file(b.smtp_port(), "127.0.0.5", "me@example.com", &path, &[]);
    assert!(r.ok(), "{}\n{}", r.stdout, b.log());
    let verified = b
        .sink
        .wait_for("ours-to-od", Duration::from_secs(30))
        .expect("OpenDKIM's instance delivered")
        .data;
    let od_ar: Vec<String> = auth_results(&verified)
        .into_iter()
        .filter(|l| l.starts_with("Authentication-Results: verifier.example"))
        .collect();
    let passes = od_ar
        .iter()
        .map(|h| h.matches("dkim=pass").count())
        .sum::<usize>();
    assert_eq!(passes, 2, "{od_ar:?}\n{verified}");
    assert!(
        od_ar.iter().any(|h| h.contains("header.a=ed25519-sha256"))
            || od_ar.iter().any(|h| h.contains("header.s=ed")),
        "{od_ar:?}"
    );
}

#[test]
fn authenticated_and_sendmail_mail_is_signed() {
    require_program("/usr/bin/swaks", "swaks");
    let s = setup_with(true);

    // SMTP AUTH from an address that is not trusted: signed, and python3-dkim agrees.
    let auth = send(
        &s,
        "127.0.0.5",
        "me@example.com",
        &miab_e2e::fixture::SWAKS_AUTH_ME,
        "auth-signed",
    );
    assert!(header_block(&auth).starts_with("DKIM-Signature:"), "{auth}");
    let v = dkimpy(&s.dir, &auth, &s.records);
    assert!(v.stdout.starts_with("2 [True, True]"), "{v:?}");
    assert!(auth_results(&auth).is_empty(), "{auth}");

    // The same From: without AUTH, from outside: not signed, checked instead.
    let spoof = send(&s, "127.0.0.5", "me@example.com", &[], "unauth-unsigned");
    assert!(!spoof.contains("DKIM-Signature:"), "{spoof}");
    assert_eq!(auth_results(&spoof).len(), 3, "{spoof}");

    // sendmail(1): Postfix's non_smtpd_milters path.
    let sendmail = require_program("/usr/sbin/sendmail", "postfix");
    let msg = "From: Me <me@example.com>\nTo: someone@elsewhere.example\nSubject: sendmail-signed\n\nSent with sendmail.\n";
    let r = run(
        Command::new(sendmail)
            .arg("-C")
            .arg(s.pf.config_dir())
            .args(["-f", "me@example.com", "-t"]),
        Some(msg),
    );
    assert!(r.ok(), "{r:?}");
    let local =
        s.pf.sink
            .wait_for("sendmail-signed", Duration::from_secs(30))
            .unwrap_or_else(|| panic!("not delivered\n{}\n{}", s.pf.log(), s.milter.log()))
            .data;
    assert!(
        header_block(&local).starts_with("DKIM-Signature:"),
        "{local}"
    );
    let v = dkimpy(&s.dir, &local, &s.records);
    assert!(v.stdout.starts_with("2 [True, True]"), "{v:?}");
}

/// Reads until the milter closes the connection; true when it did within the timeout.
fn closed_by_peer(conn: &mut TcpStream) -> bool {
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

fn packet(cmd: u8, data: &[u8]) -> Vec<u8> {
    let mut p = u32::try_from(data.len() + 1)
        .unwrap()
        .to_be_bytes()
        .to_vec();
    p.push(cmd);
    p.extend_from_slice(data);
    p
}

/// Every protocol option of milter protocol version 6.
const ALL_OPTS: u32 = 0x001f_ffff;
/// The "no reply" options for connect, helo, mail, header, end of headers and body.
const NO_REPLY: u32 = 0x1000 | 0x2000 | 0x4000 | 0x80 | 0x4_0000 | 0x8_0000;

/// SMFIC_OPTNEG for milter protocol version 6 offering every action and the options `opts`,
/// by default all but "no reply", so that every stage answers.
fn optneg_with(opts: u32) -> Vec<u8> {
    let mut d = 6u32.to_be_bytes().to_vec();
    d.extend_from_slice(&0x1ffu32.to_be_bytes());
    d.extend_from_slice(&opts.to_be_bytes());
    packet(b'O', &d)
}

fn optneg() -> Vec<u8> {
    optneg_with(ALL_OPTS & !NO_REPLY)
}

#[test]
fn malformed_milter_packets_cost_one_connection() {
    require_program("/usr/bin/swaks", "swaks");
    let s = setup();
    let port = s.port;
    let open = || {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c
    };

    // Each of these closes the connection: the frame cannot be read or parsed.
    let connect = |host: &[u8]| packet(b'C', &[host, b"\x004\x30\x39127.0.0.9\x00"].concat());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a 2 GiB length", [0x7f, 0xff, 0xff, 0xff, b'O'].to_vec()),
        ("an unknown command", packet(b'Z', b"junk")),
        ("garbage", b"GET / HTTP/1.0\r\n\r\n".to_vec()),
        (
            "a connect with no NUL",
            [optneg(), packet(b'C', b"host-without-terminator")].concat(),
        ),
        (
            "a header with no value",
            [
                optneg(),
                connect(b"client.example"),
                packet(b'M', b"<a@b.example>\x00"),
                packet(b'L', b"Subject\x00"),
            ]
            .concat(),
        ),
    ];
    for (name, bytes) in cases {
        let mut c = open();
        c.write_all(&bytes).unwrap();
        assert!(closed_by_peer(&mut c), "{name}: the connection stayed open");
    }

    // Invalid UTF-8 in a well-formed connect or header is answered like anything else; a body
    // before MAIL is ignored without a reply (as libmilter does); QUIT ends the session.
    let mut c = open();
    let reply = |c: &mut TcpStream, cmd: &[u8]| {
        c.write_all(cmd).unwrap();
        let mut head = [0u8; 5];
        c.read_exact(&mut head).unwrap();
        let len = u32::from_be_bytes(head[..4].try_into().unwrap()) as usize;
        let mut rest = vec![0u8; len - 1];
        c.read_exact(&mut rest).unwrap();
        head[4]
    };
    // Offered "no reply", the milter takes it: its answers before end-of-message cost a round
    // trip each.
    let mut full = open();
    full.write_all(&optneg_with(ALL_OPTS)).unwrap();
    let mut answer = [0u8; 17];
    full.read_exact(&mut answer).unwrap();
    let taken = u32::from_be_bytes(answer[13..17].try_into().unwrap());
    assert_eq!(taken & NO_REPLY, NO_REPLY, "{taken:#x}");
    drop(full);

    assert_eq!(reply(&mut c, &optneg()), b'O');
    assert_eq!(reply(&mut c, &connect(b"\xff\xfe.example")), b'c');
    c.write_all(&packet(b'B', b"body")).unwrap();
    assert_eq!(reply(&mut c, &packet(b'M', b"<a@b.example>\x00")), b'c');
    assert_eq!(
        reply(&mut c, &packet(b'L', b"Subject\x00 \xff\xfe\x80\x00")),
        b'c'
    );
    c.write_all(&packet(b'Q', b"")).unwrap();
    assert!(closed_by_peer(&mut c), "QUIT left the connection open");

    // Half a frame, then the client goes away.
    let mut c = open();
    c.write_all(&[0, 0, 0, 40, b'C', 1, 2]).unwrap();
    drop(c);

    // The daemon is still there and still signs.
    let after = send(&s, "127.0.0.1", "me@example.com", &[], "after-garbage");
    assert!(
        header_block(&after).starts_with("DKIM-Signature:"),
        "{after}"
    );
    let v = dkimpy(&s.dir, &after, &s.records);
    assert!(v.ok(), "{v:?}");
}

#[test]
fn locked_user_db_answers_tempfail_and_loses_nothing() {
    require_program("/usr/bin/swaks", "swaks");
    let s = setup();
    // MIAB's tools hold an exclusive lock while they write; here a change, then the lock for
    // 60 s at most, so the directory in memory is out of date and cannot be read again.
    let db = s.dir.join("mail/users.sqlite");
    let mut locker = Command::new(require_program("/usr/bin/python3", "python3"))
        .arg("-c")
        .arg(format!(
            "import sqlite3, sys, time\nc = sqlite3.connect({:?}, isolation_level=None)\nc.executescript({:?})\nprint('locked', flush=True)\ntime.sleep(60)",
            db.display().to_string(),
            miab_e2e::fixture::CHANGE_THEN_LOCK
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = [0u8; 6];
    locker
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut line)
        .unwrap();
    assert_eq!(&line, b"locked");

    // The first question about other.example needs the new directory: refused for now.
    let r = swaks(
        s.pf.smtp_port(),
        &[
            "--local-interface",
            "127.0.0.1",
            "--from",
            "boss@other.example",
            "--to",
            "someone@elsewhere.example",
            "--header",
            "From: <boss@other.example>",
            "--header",
            "Subject: while-locked",
        ],
    );
    assert!(!r.ok(), "{}", r.stdout);
    assert!(r.stdout.contains("<** 451"), "{}", r.stdout);
    assert!(
        s.milter.log().contains("user DB unavailable"),
        "{}",
        s.milter.log()
    );

    // Unlocked, the retry is signed; the daemon kept serving.
    let _ = locker.kill();
    let _ = locker.wait();
    let again = send(&s, "127.0.0.1", "boss@other.example", &[], "after-lock");
    assert!(header_block(&again).contains("d=other.example"), "{again}");
    assert!(
        s.pf.sink
            .wait_for("while-locked", Duration::from_secs(1))
            .is_none()
    );
}

#[test]
fn dead_dns_server_gives_temperror_and_delivers() {
    require_program("/usr/bin/swaks", "swaks");
    let s = setup();
    s.dns.set_silent(true);
    // A signed message from outside while DNS answers nothing: every method says temperror,
    // and the message goes through.
    let ours = send(&s, "127.0.0.1", "me@example.com", &[], "signed-first");
    let path = s.dir.join("signed.eml");
    std::fs::write(&path, ours.replace("signed-first", "dns-dead")).unwrap();
    let got = send_file(&s, "127.0.0.5", "a@quiet.example", &path, "dns-dead");
    let ar = auth_results(&got);
    assert_eq!(ar.len(), 3, "{ar:?}");
    assert!(ar[0].contains("; dkim=temperror"), "{ar:?}");
    assert!(ar[1].contains("; spf=temperror"), "{ar:?}");
    assert!(ar[2].contains("; dmarc=temperror"), "{ar:?}");
}
