//! `miab-authd` behind the real clients: Postfix's SMTP AUTH (`smtpd_sasl_type = dovecot`)
//! driven by swaks with PLAIN and LOGIN, Postfix's sender-login check fed by the canonical
//! `user=`, and Dovecot's own client, `doveadm auth test -a`.

use miab_e2e::fixture::miab_box;
use miab_e2e::postfix::{MiabSqliteMaps, Postfix, PostfixConfig};
use miab_e2e::process::DaemonProcess;
use miab_e2e::tools::{Run, run, swaks};
use miab_e2e::{Scratch, require_program};
use std::path::Path;
use std::process::Command;

fn start(dir: &Scratch, socket: &Path) -> DaemonProcess {
    let config = format!(
        "storage_root = \"{}\"\ndb_busy_timeout_ms = 200\n[authd]\nfailure_delay_ms = 0\nsocket_mode = \"0666\"\n",
        dir.path().display()
    );
    let listen = format!("unix:{}", socket.display());
    DaemonProcess::with_config(
        Path::new(env!("CARGO_BIN_EXE_miab-authd")),
        dir,
        "authd",
        &config,
        &["--listen", &listen],
    )
}

#[test]
fn postfix_smtp_auth_and_sender_login() {
    let dir = Scratch::new("aut");
    let db = miab_box(dir.path());
    let socket = dir.join("auth.sock");
    let _d = start(&dir, &socket);
    let maps = MiabSqliteMaps::write(dir.path(), &db);
    let pf = Postfix::start(
        PostfixConfig::default()
            .set("mynetworks", "127.0.0.1/32")
            .set("smtpd_sasl_auth_enable", "yes")
            .set("smtpd_sasl_type", "dovecot")
            .set("smtpd_sasl_path", socket.display().to_string())
            .set("smtpd_sender_login_maps", maps.senders)
            .set("recipient_delimiter", "+")
            .set(
                "smtpd_sender_restrictions",
                "reject_authenticated_sender_login_mismatch",
            ),
    );
    let auth = |mech: &str, user: &str, pass: &str, from: &str| -> Run {
        swaks(
            pf.smtp_port(),
            &[
                "--local-interface",
                "127.0.0.5",
                "--from",
                from,
                "--to",
                "someone@elsewhere.example",
                "--auth",
                mech,
                "--auth-user",
                user,
                "--auth-password",
                pass,
            ],
        )
    };
    for mech in ["PLAIN", "LOGIN"] {
        let ok = auth(mech, "me@example.com", "a-long-password", "me@example.com");
        assert!(
            ok.ok()
                && ok
                    .stdout
                    .contains("<-  235 2.7.0 Authentication successful"),
            "{mech}: {}",
            ok.stdout
        );
        let wrong = auth(mech, "me@example.com", "not-it", "me@example.com");
        assert!(
            wrong
                .stdout
                .contains("<** 535 5.7.8 Error: authentication failed"),
            "{mech}: {}",
            wrong.stdout
        );
        let unknown = auth(
            mech,
            "nobody@example.com",
            "a-long-password",
            "nobody@example.com",
        );
        assert!(
            unknown.stdout.contains("<** 535 5.7.8"),
            "{mech}: {}",
            unknown.stdout
        );
    }
    // The login as typed is folded; Postfix compares the canonical user= with the sender map.
    let folded = auth(
        "PLAIN",
        "Me@Example.COM",
        "a-long-password",
        "me@example.com",
    );
    assert!(folded.ok(), "{}", folded.stdout);
    let other = auth(
        "PLAIN",
        "Me@Example.COM",
        "a-long-password",
        "you@example.com",
    );
    assert!(
        other.stdout.contains("<** 553 5.7.1 <you@example.com>: Sender address rejected: not owned by user me@example.com"),
        "{}",
        other.stdout
    );
    // A locked DB: FAIL with `temp`. Postfix 3.7 answers every FAIL with 535 (only a lost auth
    // connection gives 454), so the client sees our reason, as with Dovecot's own socket.
    let lock = rusqlite::Connection::open(&db).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let temp = auth(
        "PLAIN",
        "you@example.com",
        "a-long-password",
        "you@example.com",
    );
    lock.execute_batch("COMMIT").unwrap();
    assert!(
        temp.stdout.contains(
            "<** 535 5.7.8 Error: authentication failed: Temporary authentication failure"
        ),
        "{}",
        temp.stdout
    );
}

#[test]
fn doveadm_auth_test_against_our_socket() {
    let dir = Scratch::new("aut");
    miab_box(dir.path());
    let socket = dir.join("auth.sock");
    let d = start(&dir, &socket);
    let doveadm = require_program("/usr/bin/doveadm", "dovecot-core");
    let test = |user: &str, pass: &str| {
        run(
            Command::new(&doveadm)
                .args(["auth", "test", "-a"])
                .arg(&socket)
                .args(["-x", "service=smtp", user, pass]),
            None,
        )
    };
    let ok = test("me@example.com", "a-long-password");
    assert!(ok.ok(), "{ok:?}\n{}", d.log());
    assert!(
        ok.stdout.contains("auth succeeded") && ok.stdout.contains("user=me@example.com"),
        "{ok:?}"
    );
    let bad = test("me@example.com", "nope");
    assert!(!bad.ok() && bad.stdout.contains("auth failed"), "{bad:?}");
}
