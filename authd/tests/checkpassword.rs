//! `miab-checkpassword` run as Dovecot runs it (request on fd 3, environment, reply program),
//! against the real `miab-authd`: exit codes for every outcome, the reply program's
//! environment, and the checkpassword socket's own rules.

use miab_e2e::fixture::miab_box;
use miab_e2e::process::DaemonProcess;
use miab_e2e::tools::{Run, run};
use miab_e2e::{Scratch, free_port};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Command;

fn start(dir: &Scratch) -> (DaemonProcess, u16) {
    let port = free_port();
    let config = format!(
        "storage_root = \"{}\"\ndb_busy_timeout_ms = 200\n[authd]\nfailure_delay_ms = 0\n",
        dir.path().display()
    );
    let listen = format!("inet:127.0.0.1:{port}");
    let helper = format!("unix:{}", dir.join("cp.sock").display());
    let d = DaemonProcess::with_config(
        Path::new(env!("CARGO_BIN_EXE_miab-authd")),
        dir,
        "authd",
        &config,
        &["--listen", &listen, "--checkpassword-listen", &helper],
    );
    (d, port)
}

/// Runs the helper with `request` on fd 3 and `/usr/bin/env` as the reply program, so the
/// environment it would hand to checkpassword-reply is printed.
fn helper(dir: &Scratch, request: &[u8], env: &[(&str, &str)]) -> Run {
    let req = dir.join("request");
    std::fs::write(&req, request).unwrap();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("exec \"$0\" --socket \"$1\" /usr/bin/env 3<\"$2\"")
        .arg(env!("CARGO_BIN_EXE_miab-checkpassword"))
        .arg(dir.join("cp.sock"))
        .arg(&req)
        .env_clear()
        .env("SERVICE", "imap")
        .env("TCPREMOTEIP", "192.0.2.9");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd, None)
}

#[test]
fn exit_codes_and_reply_environment() {
    let dir = Scratch::new("cpw");
    let db = miab_box(dir.path());
    let (mut d, port) = start(&dir);

    let ok = helper(&dir, b"me@example.com\0a-long-password\0\0", &[]);
    assert!(ok.ok(), "{ok:?}\n{}", d.log());
    let home = dir.join("mail/mailboxes/example.com/me");
    for want in [
        "USER=me@example.com".to_owned(),
        format!("HOME={}", home.display()),
        "userdb_uid=mail".into(),
        "userdb_gid=mail".into(),
        "userdb_quota_rule=*:bytes=0".into(),
        "EXTRA=userdb_uid userdb_gid userdb_quota_rule".into(),
    ] {
        assert!(ok.stdout.lines().any(|l| l == want), "{want} in {ok:?}");
    }
    assert!(!ok.stdout.contains("AUTHORIZED"), "{ok:?}");
    assert!(!ok.stdout.contains("a-long-password"));

    let bad = helper(&dir, b"me@example.com\0wrong\0\0", &[]);
    assert_eq!(bad.code, 1, "{bad:?}");
    let unknown = helper(&dir, b"nobody@example.com\0a-long-password\0\0", &[]);
    assert_eq!(unknown.code, 1, "{unknown:?}");

    // Lookup mode (userdb): no password, AUTHORIZED=2 for the reply program, 3 if unknown.
    let look = helper(&dir, b"You@Example.com\0\0", &[("AUTHORIZED", "1")]);
    assert!(look.ok(), "{look:?}");
    assert!(
        look.stdout.lines().any(|l| l == "USER=you@example.com")
            && look.stdout.lines().any(|l| l == "AUTHORIZED=2"),
        "{look:?}"
    );
    let none = helper(&dir, b"nobody@example.com\0\0", &[("AUTHORIZED", "1")]);
    assert_eq!(none.code, 3, "{none:?}");
    let creds = helper(
        &dir,
        b"me@example.com\0\0",
        &[("AUTHORIZED", "1"), ("CREDENTIALS_LOOKUP", "1")],
    );
    assert_eq!(creds.code, 1, "{creds:?}");

    // Bad requests on fd 3: an internal failure (2), never a login.
    for req in [&b""[..], b"me@example.com", &[b'a'; 600]] {
        let r = helper(&dir, req, &[]);
        assert_eq!(r.code, 2, "{r:?}");
    }

    // A DB changed and then locked before the change could be read: temporary (111), not a
    // wrong password and not the old data.
    let lock = rusqlite::Connection::open(&db).unwrap();
    lock.execute_batch(miab_e2e::fixture::CHANGE_THEN_LOCK)
        .unwrap();
    let temp = helper(&dir, b"boss@other.example\0a-long-password\0\0", &[]);
    lock.execute_batch("COMMIT").unwrap();
    assert_eq!(temp.code, 111, "{temp:?}");
    let temp = helper(&dir, b"boss@other.example\0\0", &[("AUTHORIZED", "1")]);
    assert!(temp.ok(), "unlocked again: {temp:?}");

    // USER lookups belong to the checkpassword socket only.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"VERSION\t1\t2\nCPID\t1\nUSER\t7\tme@example.com\tservice=smtp\n")
        .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.starts_with("FAIL") || line.is_empty() {
            break;
        }
    }
    assert!(line.starts_with("FAIL\t7\t"), "{line:?}");

    // miab-authd gone: temporary.
    d.terminate();
    let down = helper(&dir, b"me@example.com\0a-long-password\0\0", &[]);
    assert_eq!(down.code, 111, "{down:?}");
    assert!(
        down.stderr.contains("miab-checkpassword: miab-authd at"),
        "{down:?}"
    );
}
