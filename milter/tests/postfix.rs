//! `miab-milter` behind a real Postfix (smtpd_milters and non_smtpd_milters), with a test DNS
//! server on 127.0.0.1 and python3-dkim as the independent verifier: signing of local and
//! authenticated mail (RSA and Ed25519, above Postfix's Received:), no signature for foreign
//! From: domains, Authentication-Results for inbound mail (pass, fail, none, temperror),
//! removal of forged results, a 50 MiB message with bounded memory, and Postfix's default
//! action with the milter stopped.

use miab_e2e::dns::TestDns;
use miab_e2e::fixture::miab_box;
use miab_e2e::postfix::{Postfix, PostfixConfig};
use miab_e2e::process::DaemonProcess;
use miab_e2e::tools::{Run, run, swaks};
use miab_e2e::{Scratch, free_port, require_program};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const HOST: &str = "box.example.com";

fn openssl(args: &[&str]) -> Vec<u8> {
    let o = Command::new(require_program("/usr/bin/openssl", "openssl"))
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o.stdout
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// An RSA key in PKCS#1 PEM (as opendkim-genkey on OpenSSL 1.1) and an Ed25519 key; returns
/// their paths and the DNS TXT values.
fn keys(dir: &Scratch) -> (PathBuf, PathBuf, String, String, String) {
    let dkim = dir.mkdir("mail/dkim");
    // other.example has its own key, in PKCS#8 (opendkim-genkey on OpenSSL 3).
    let own = dkim.join("other.example.private");
    openssl(&[
        "genpkey",
        "-algorithm",
        "rsa",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        own.to_str().unwrap(),
    ]);
    let own_pub = openssl(&[
        "pkey",
        "-in",
        own.to_str().unwrap(),
        "-pubout",
        "-outform",
        "DER",
    ]);
    let rsa = dkim.join("mail.private");
    openssl(&[
        "genrsa",
        "-traditional",
        "-out",
        rsa.to_str().unwrap(),
        "2048",
    ]);
    let rsa_pub = openssl(&[
        "rsa",
        "-in",
        rsa.to_str().unwrap(),
        "-pubout",
        "-outform",
        "DER",
    ]);
    let ed = dkim.join("ed25519.private");
    openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        ed.to_str().unwrap(),
    ]);
    let ed_pub = openssl(&[
        "pkey",
        "-in",
        ed.to_str().unwrap(),
        "-pubout",
        "-outform",
        "DER",
    ]);
    (
        rsa,
        ed,
        format!("v=DKIM1; k=rsa; p={}", b64(&rsa_pub)),
        format!(
            "v=DKIM1; k=ed25519; p={}",
            b64(&ed_pub[ed_pub.len() - 32..])
        ),
        format!("v=DKIM1; k=rsa; p={}", b64(&own_pub)),
    )
}

struct Setup {
    dir: Scratch,
    dns: TestDns,
    milter: DaemonProcess,
    pf: Postfix,
    records: Vec<(String, String)>,
}

fn setup() -> Setup {
    let dir = Scratch::new("mlt");
    miab_box(dir.path());
    let (rsa, ed, rsa_txt, ed_txt, own_txt) = keys(&dir);
    let dns = TestDns::start();
    let records = vec![
        ("mail._domainkey.example.com".to_owned(), rsa_txt),
        ("ed._domainkey.example.com".to_owned(), ed_txt.clone()),
        ("mail._domainkey.other.example".to_owned(), own_txt),
        ("ed._domainkey.other.example".to_owned(), ed_txt),
    ];
    for (n, v) in &records {
        dns.add_txt(n, v);
    }
    let port = free_port();
    let config = format!(
        "storage_root = \"{root}\"\nhostname = \"{HOST}\"\n[dns]\nnameservers = [\"{dns}\"]\ntimeout_ms = 1000\n[milter]\nkey_file = \"{rsa}\"\ned25519_key_file = \"{ed}\"\nverify_timeout_secs = 5\n",
        root = dir.path().display(),
        dns = dns.addr(),
        rsa = rsa.display(),
        ed = ed.display(),
    );
    let listen = format!("inet:127.0.0.1:{port}");
    let milter = DaemonProcess::with_config(
        Path::new(env!("CARGO_BIN_EXE_miab-milter")),
        &dir,
        "milter",
        &config,
        &["--listen", &listen],
    );
    let endpoint = format!("inet:127.0.0.1:{port}");
    let pf = Postfix::start(
        PostfixConfig::default()
            .set("smtpd_milters", endpoint.clone())
            .set("non_smtpd_milters", endpoint)
            .set("milter_default_action", "accept")
            .set("message_size_limit", "60000000"),
    );
    Setup {
        dir,
        dns,
        milter,
        pf,
        records,
    }
}

/// Sends a message through Postfix from `source` and returns what the sink got.
fn send(s: &Setup, source: &str, from: &str, extra: &[&str], marker: &str) -> String {
    let header_from = format!("From: <{from}>");
    let subject = format!("Subject: {marker}");
    let mut args = vec![
        "--local-interface",
        source,
        "--from",
        from,
        "--to",
        "someone@elsewhere.example",
        "--helo",
        "client.example",
        "--header",
        &header_from,
        "--header",
        &subject,
    ];
    args.extend_from_slice(extra);
    let r = swaks(s.pf.smtp_port(), &args);
    assert!(r.ok(), "{}\n{}", r.stdout, s.pf.log());
    s.pf.sink
        .wait_for(marker, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{marker} not delivered\n{}\n{}", s.pf.log(), s.milter.log()))
        .data
}

/// python3-dkim's verdict on every DKIM-Signature of `msg`, with `records` as DNS.
fn dkimpy(dir: &Scratch, msg: &str, records: &[(String, String)]) -> Run {
    let path = dir.join("verify.eml");
    std::fs::write(&path, msg).unwrap();
    let recs: Vec<String> = records
        .iter()
        .map(|(n, v)| format!("{n:?}: {v:?}"))
        .collect();
    let script = format!(
        r#"
import dkim, re, sys
recs = {{{recs}}}
def dns(name, timeout=5):
    n = name.decode().rstrip(".") if isinstance(name, bytes) else name.rstrip(".")
    v = recs.get(n)
    return v.encode() if v else None
msg = open(sys.argv[1], "rb").read()
count = len(re.findall(rb"(?mi)^DKIM-Signature:", msg.split(b"\r\n\r\n", 1)[0]))
d = dkim.DKIM(msg)
ok = [d.verify(idx=i, dnsfunc=dns) for i in range(count)]
print(count, ok)
sys.exit(0 if count and all(ok) else 1)
"#,
        recs = recs.join(", ")
    );
    let python = require_program("/usr/bin/python3", "python3");
    run(Command::new(python).arg("-c").arg(script).arg(&path), None)
}

fn header_block(msg: &str) -> &str {
    msg.split("\r\n\r\n").next().unwrap_or_default()
}

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
    // Each Authentication-Results header, unfolded.
    let ar = |msg: &str| -> Vec<String> {
        header_block(msg)
            .replace("\r\n\t", " ")
            .split("\r\n")
            .filter(|l| l.starts_with("Authentication-Results:"))
            .map(str::to_owned)
            .collect()
    };
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

    // Our own signed message, coming back in from outside: dkim=pass.
    let body_file = s.dir.join("resend.eml");
    let resend = signed
        .replace("Subject: local-signed", "Subject: in-resigned")
        .replacen("Received:", "X-Old-Received:", 1);
    std::fs::write(&body_file, &resend).unwrap();
    let r = swaks(
        s.pf.smtp_port(),
        &[
            "--local-interface",
            "127.0.0.5",
            "--from",
            "me@example.com",
            "--to",
            "someone@elsewhere.example",
            "--data",
            body_file.to_str().unwrap(),
        ],
    );
    assert!(r.ok(), "{}", r.stdout);
    // The subject change breaks both signatures: dkim=fail for each, with the domain.
    let back =
        s.pf.sink
            .wait_for("in-resigned", Duration::from_secs(30))
            .unwrap()
            .data;
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
