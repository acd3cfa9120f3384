//! What the milter's Postfix tests share: a box with RSA (PKCS#1 and PKCS#8) and Ed25519 keys,
//! a test DNS server holding their records, `miab-milter` and a Postfix instance using it
//! (optionally with SMTP AUTH through Dovecot), and python3-dkim as the independent verifier.

#![allow(dead_code)]

use miab_e2e::dns::TestDns;
use miab_e2e::dovecot::Dovecot;
use miab_e2e::fixture::miab_box;
use miab_e2e::postfix::{Postfix, PostfixConfig};
use miab_e2e::process::DaemonProcess;
use miab_e2e::tools::{Run, run, swaks};
use miab_e2e::{Scratch, free_port, require_program};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const HOST: &str = "box.example.com";

pub fn openssl(args: &[&str]) -> Vec<u8> {
    let o = Command::new(require_program("/usr/bin/openssl", "openssl"))
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o.stdout
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The SubjectPublicKeyInfo (DER) of a private key file in any PEM form.
pub fn public_der(key: &Path) -> Vec<u8> {
    openssl(&[
        "pkey",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-outform",
        "DER",
    ])
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
    let own_pub = public_der(&own);
    let rsa = dkim.join("mail.private");
    openssl(&[
        "genrsa",
        "-traditional",
        "-out",
        rsa.to_str().unwrap(),
        "2048",
    ]);
    let rsa_pub = public_der(&rsa);
    let ed = dkim.join("ed25519.private");
    openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        ed.to_str().unwrap(),
    ]);
    let ed_pub = public_der(&ed);
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

pub struct Setup {
    pub milter: DaemonProcess,
    pub pf: Postfix,
    /// The Dovecot whose auth socket Postfix uses for SMTP AUTH, when asked for.
    pub dovecot: Option<Dovecot>,
    pub dns: TestDns,
    pub records: Vec<(String, String)>,
    /// The milter's port on 127.0.0.1.
    pub port: u16,
    /// Dropped last, so that the processes' logs are still there when they print them.
    pub dir: Scratch,
}

pub fn setup() -> Setup {
    setup_with(false)
}

/// As [`setup`], and with `sasl` Postfix offers SMTP AUTH through a Dovecot over the box's DB.
pub fn setup_with(sasl: bool) -> Setup {
    setup_full(sasl, "")
}

/// As [`setup_with`], with `milter_extra` added to the `[milter]` section.
pub fn setup_full(sasl: bool, milter_extra: &str) -> Setup {
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
    // The signing tests send from a trusted client without a login, so its domains are
    // named (the side-door tests leave them out).
    let local = if milter_extra.contains("sign_local_domains") {
        ""
    } else {
        "sign_local_domains = [\"example.com\", \"other.example\"]\n"
    };
    let config = format!(
        "storage_root = \"{root}\"\nhostname = \"{HOST}\"\n[dns]\nnameservers = [\"{dns}\"]\ntimeout_ms = 1000\n[milter]\nkey_file = \"{rsa}\"\ned25519_key_file = \"{ed}\"\nverify_timeout_secs = 5\n{local}{milter_extra}\n",
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
    let mut config = PostfixConfig::default()
        .set("smtpd_milters", endpoint.clone())
        .set("non_smtpd_milters", endpoint)
        .set("milter_default_action", "accept")
        .set("message_size_limit", "60000000");
    let dovecot = sasl.then(|| Dovecot::start(dir.path()));
    if let Some(dv) = &dovecot {
        config = config
            .set("smtpd_sasl_auth_enable", "yes")
            .set("smtpd_sasl_type", "dovecot")
            .set(
                "smtpd_sasl_path",
                dv.auth_client_socket().display().to_string(),
            );
    }
    let pf = Postfix::start(config);
    Setup {
        dir,
        dns,
        milter,
        pf,
        records,
        port,
        dovecot,
    }
}

/// Sends a message through Postfix from `source` and returns what the sink got.
pub fn send(s: &Setup, source: &str, from: &str, extra: &[&str], marker: &str) -> String {
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
pub fn dkimpy(dir: &Scratch, msg: &str, records: &[(String, String)]) -> Run {
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

pub fn header_block(msg: &str) -> &str {
    msg.split("\r\n\r\n").next().unwrap_or_default()
}

/// Each Authentication-Results header of `msg`, unfolded.
pub fn auth_results(msg: &str) -> Vec<String> {
    header_block(msg)
        .replace("\r\n\t", " ")
        .split("\r\n")
        .filter(|l| l.starts_with("Authentication-Results:"))
        .map(str::to_owned)
        .collect()
}

/// Writes a message file: the header lines `headers`, a To:, `Subject: MARKER` and a short
/// body, CRLF line ends.
pub fn message_file(s: &Setup, headers: &[&str], marker: &str) -> PathBuf {
    let path = s.dir.join(format!("{marker}.eml"));
    let mut msg = String::new();
    for h in headers {
        msg.push_str(h);
        msg.push_str("\r\n");
    }
    msg.push_str(&format!(
        "To: someone@elsewhere.example\r\nSubject: {marker}\r\n\r\nbody\r\n"
    ));
    std::fs::write(&path, msg).unwrap();
    path
}

/// swaks sending the message file `path` as it is to the Postfix on `port`, from `source`,
/// envelope sender `from`, with `extra` flags (`--auth ...`).
pub fn swaks_file(port: u16, source: &str, from: &str, path: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "--local-interface",
        source,
        "--from",
        from,
        "--to",
        "someone@elsewhere.example",
        "--data",
        path.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    swaks(port, &args)
}

/// Sends the message file `path` as it is from `source` and returns what the sink got.
pub fn send_file(s: &Setup, source: &str, from: &str, path: &Path, marker: &str) -> String {
    let r = swaks_file(s.pf.smtp_port(), source, from, path, &[]);
    assert!(r.ok(), "{}\n{}", r.stdout, s.pf.log());
    s.pf.sink
        .wait_for(marker, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{marker} not delivered\n{}\n{}", s.pf.log(), s.milter.log()))
        .data
}
