//! `miab-authd` behind the real clients: Postfix's SMTP AUTH (`smtpd_sasl_type = dovecot`)
//! driven by swaks with PLAIN and LOGIN, app passwords, Postfix's sender-login check fed by the
//! canonical `user=`, Dovecot's own client (`doveadm auth test -a`), and Dovecot 2.3 running
//! `miab-checkpassword` for IMAP logins, `doveadm auth test` and `doveadm user`.

use miab_e2e::dovecot::{Auth, Dovecot};
use miab_e2e::fixture::miab_box;
use miab_e2e::postfix::{MiabSqliteMaps, Postfix, PostfixConfig};
use miab_e2e::process::DaemonProcess;
use miab_e2e::tools::{Run, imap_login_from, run, swaks};
use miab_e2e::{Scratch, require_program};
use std::path::Path;
use std::process::Command;
use userdb::{Access, UserDb};

/// miab-authd with Postfix's socket at `socket` and the checkpassword socket as packaged
/// (mode 0660, group dovecot) at `dir/checkpassword.sock`.
fn start(dir: &Scratch, socket: &Path) -> DaemonProcess {
    let config = format!(
        "storage_root = \"{}\"\ndb_busy_timeout_ms = 200\n[authd]\nfailure_delay_ms = 0\nsocket_mode = \"0666\"\ncheckpassword_socket_group = \"dovecot\"\n",
        dir.path().display()
    );
    let listen = format!("unix:{}", socket.display());
    let helper = format!("unix:{}", dir.join("checkpassword.sock").display());
    DaemonProcess::with_config(
        Path::new(env!("CARGO_BIN_EXE_miab-authd")),
        dir,
        "authd",
        &config,
        &["--listen", &listen, "--checkpassword-listen", &helper],
    )
}

/// Creates an app password for `email` as `miabctl user app-password add` does.
fn app_password(db: &Path, email: &str, label: &str, scopes: &[&str]) -> (i64, String) {
    let mut db = UserDb::open(db, Access::ReadWrite).unwrap();
    let (id, pw) = db.add_app_password(email, label, scopes, 1).unwrap();
    (id, pw.expose().to_owned())
}

fn revoke(db: &Path, email: &str, id: i64) {
    let mut db = UserDb::open(db, Access::ReadWrite).unwrap();
    db.revoke_app_password(email, id).unwrap();
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
    // App passwords: one for SMTP works, one for IMAP only does not, a revoked one stops.
    let (smtp_id, smtp_pw) = app_password(&db, "me@example.com", "mail app", &["smtp"]);
    let (_, imap_pw) = app_password(&db, "me@example.com", "reader", &["imap"]);
    let ok = auth("LOGIN", "me@example.com", &smtp_pw, "me@example.com");
    assert!(ok.ok(), "{}", ok.stdout);
    // The last use is recorded in miab-authd's own file; the user DB is never written.
    let usage = db.with_file_name("authd").join("app-password-use.sqlite");
    let used = miab_e2e::wait_until(std::time::Duration::from_secs(5), || {
        state::app_password_use::UsageLog::read(&usage)
            .unwrap()
            .get(&smtp_id)
            .copied()
    });
    assert!(used.is_some(), "last use not recorded");
    let scoped = auth("PLAIN", "me@example.com", &imap_pw, "me@example.com");
    assert!(scoped.stdout.contains("<** 535 5.7.8"), "{}", scoped.stdout);
    revoke(&db, "me@example.com", smtp_id);
    let revoked = auth("PLAIN", "me@example.com", &smtp_pw, "me@example.com");
    assert!(
        revoked.stdout.contains("<** 535 5.7.8"),
        "{}",
        revoked.stdout
    );
    // Required app passwords shut the main password out.
    UserDb::open(&db, Access::ReadWrite)
        .unwrap()
        .set_app_passwords_required("me@example.com", true)
        .unwrap();
    let main = auth(
        "PLAIN",
        "me@example.com",
        "a-long-password",
        "me@example.com",
    );
    assert!(main.stdout.contains("<** 535 5.7.8"), "{}", main.stdout);

    // A locked DB: FAIL with `temp`. Postfix 3.7 answers every FAIL with 535 (only a lost auth
    // connection gives 454), so the client sees our reason, as with Dovecot's own socket.
    let lock = rusqlite::Connection::open(&db).unwrap();
    lock.execute_batch(miab_e2e::fixture::CHANGE_THEN_LOCK)
        .unwrap();
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

#[test]
fn dovecot_logins_through_miab_checkpassword() {
    let dir = Scratch::new("acp");
    let db = miab_box(dir.path());
    let socket = dir.join("auth.sock");
    let mut d = start(&dir, &socket);
    let helper = format!(
        "{} --socket {}",
        env!("CARGO_BIN_EXE_miab-checkpassword"),
        dir.join("checkpassword.sock").display()
    );
    let dv = Dovecot::start_with(dir.path(), &Auth::Checkpassword(helper));
    let (imap_id, imap_pw) = app_password(&db, "you@example.com", "phone", &["imap"]);
    let (_, smtp_pw) = app_password(&db, "you@example.com", "relay", &["smtp"]);

    // Each login from its own address, so Dovecot's per-address penalty never kicks in.
    let source = std::cell::Cell::new(10u8);
    let login = |user: &str, pass: &str| {
        source.set(source.get() + 1);
        imap_login_from(
            &format!("127.0.0.{}", source.get()),
            dv.imap_port(),
            user,
            pass,
        )
    };
    let ok = login("me@example.com", "a-long-password");
    assert!(
        ok.ok() && ok.stdout.starts_with("OK OK"),
        "{ok:?}\n{}\n{}",
        dv.log(),
        d.log()
    );
    let folded = login("You@Example.com", &imap_pw);
    assert!(folded.ok(), "{folded:?}\n{}", dv.log());
    for (user, pass) in [
        ("me@example.com", "not-it"),
        ("nobody@example.com", "a-long-password"),
        ("you@example.com", smtp_pw.as_str()),
    ] {
        let r = login(user, pass);
        assert!(
            !r.ok() && r.stdout.contains("[AUTHENTICATIONFAILED]"),
            "{user}: {r:?}"
        );
    }
    revoke(&db, "you@example.com", imap_id);
    let r = login("you@example.com", &imap_pw);
    assert!(r.stdout.contains("[AUTHENTICATIONFAILED]"), "{r:?}");

    // doveadm through Dovecot's auth service, which runs our program.
    let doveadm = require_program("/usr/bin/doveadm", "dovecot-core");
    let dove = |args: &[&str]| {
        run(
            Command::new(&doveadm).arg("-c").arg(dv.config()).args(args),
            None,
        )
    };
    let home = dir.join("mail/mailboxes/example.com/me");
    let t = dove(&["auth", "test", "me@example.com", "a-long-password"]);
    assert!(
        t.ok() && t.stdout.contains("passdb: me@example.com auth succeeded"),
        "{t:?}"
    );
    let t = dove(&["auth", "test", "me@example.com", "wrong-password"]);
    assert!(!t.ok() && t.stdout.contains("auth failed"), "{t:?}");
    // Login as a mail process would: passdb, then userdb through prefetch.
    let t = dove(&["auth", "login", "me@example.com", "a-long-password"]);
    assert!(
        t.ok() && t.stdout.contains(&format!("home={}", home.display())),
        "{t:?}"
    );
    let u = dove(&["user", "me@example.com"]);
    assert!(u.ok(), "{u:?}\n{}", dv.log());
    for want in [
        format!("\nhome\t{}\n", home.display()),
        "\nquota_rule\t*:bytes=0\n".into(),
        "\nuid\t8\n".into(),
    ] {
        assert!(u.stdout.contains(&want), "{want:?} in {u:?}");
    }
    let nobody = dove(&["user", "nobody@example.com"]);
    assert!(
        !nobody.ok() && nobody.stdout.contains("doesn't exist"),
        "{nobody:?}"
    );

    // miab-authd stopped: a temporary failure, not a wrong password.
    d.terminate();
    let r = login("me@example.com", "a-long-password");
    assert!(
        !r.ok() && r.stdout.contains("[UNAVAILABLE]"),
        "{r:?}\n{}",
        dv.log()
    );
    let u = dove(&["user", "me@example.com"]);
    assert!(!u.ok() && !u.stdout.contains("doesn't exist"), "{u:?}");
}

/// An IMAP login from 127.0.0.1 as webmail makes it: with `forwarded`, an `ID` command
/// carrying the browser's address first (Dovecot's parameter forwarding), as a proxy that
/// passes the real client address does.
fn webmail_login(port: u16, forwarded: Option<&str>, user: &str, password: &str) -> Run {
    const LOGIN: &str = r#"
import imaplib, sys
port, fwd, user, pw = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
imaplib.Commands["ID"] = ("NONAUTH", "AUTH", "SELECTED")
m = imaplib.IMAP4("127.0.0.1", port)
if fwd:
    typ, data = m._simple_command("ID", '("x-originating-ip" "%s")' % fwd)
    m._untagged_response(typ, data, "ID")
try:
    m.login(user, pw)
    print("OK")
except imaplib.IMAP4.error as e:
    print("NO", e)
    sys.exit(3)
"#;
    let python = require_program("/usr/bin/python3", "python3");
    run(
        Command::new(python)
            .arg("-c")
            .arg(LOGIN)
            .arg(port.to_string())
            .arg(forwarded.unwrap_or(""))
            .arg(user)
            .arg(password),
        None,
    )
}

/// Webmail on 127.0.0.1 that passes each browser's address (Dovecot's
/// `login_trusted_networks`): strangers' failures through it brake the login for strangers,
/// while the owner's own browser, a known device, still logs in there, and so does the
/// webmail bucket without a forwarded address; the known device survives a restart.
#[test]
fn strangers_through_a_forwarding_proxy_do_not_lock_out_the_owners_webmail() {
    let dir = Scratch::new("afw");
    miab_box(dir.path());
    let socket = dir.join("auth.sock");
    let config = format!(
        "storage_root = \"{}\"\n[authd]\nfailure_delay_ms = 0\nsocket_mode = \"0666\"\ncheckpassword_socket_group = \"dovecot\"\nip_failures_per_minute = 3\nlogin_failures_per_minute = 5\n",
        dir.path().display()
    );
    let listen = format!("unix:{}", socket.display());
    let cp = format!("unix:{}", dir.join("checkpassword.sock").display());
    let start = || {
        DaemonProcess::with_config(
            Path::new(env!("CARGO_BIN_EXE_miab-authd")),
            &dir,
            "authd",
            &config,
            &["--listen", &listen, "--checkpassword-listen", &cp],
        )
    };
    let mut d = start();
    let helper = format!(
        "{} --socket {}",
        env!("CARGO_BIN_EXE_miab-checkpassword"),
        dir.join("checkpassword.sock").display()
    );
    let dv = Dovecot::start_full(
        dir.path(),
        &Auth::Checkpassword(helper),
        "login_trusted_networks = 127.0.0.0/8\n",
    );
    let port = dv.imap_port();
    let owner = Some("198.51.100.20");
    let me = |from: Option<&str>, pw: &str| webmail_login(port, from, "me@example.com", pw);
    let ok = |r: Run| assert!(r.ok() && r.stdout.starts_with("OK"), "{r:?}\n{}", dv.log());
    let no = |r: Run| assert!(!r.ok(), "{r:?}");
    // Strangers through the same webmail, each from its own address.
    let strangers = |from: std::ops::Range<u8>| {
        for i in from {
            no(me(Some(&format!("203.0.113.{i}")), "guess"));
        }
    };
    ok(me(owner, "a-long-password"));
    strangers(0..12);
    assert!(
        d.log()
            .contains("too many failures for login=\"me@example.com\""),
        "{}",
        d.log()
    );
    // A stranger with the right password from a new address is refused without a check...
    no(me(Some("192.0.2.77"), "a-long-password"));
    // ...the owner's browser is not, nor webmail without a forwarded address.
    ok(me(owner, "a-long-password"));
    ok(me(None, "a-long-password"));

    // After a restart (a package upgrade), strangers brake the login again; the owner's
    // browser is still known.
    d.terminate();
    let d = start();
    strangers(20..32);
    no(me(Some("192.0.2.78"), "a-long-password"));
    ok(me(owner, "a-long-password"));
    assert!(
        d.log().contains("known devices read known_devices=1"),
        "{}",
        d.log()
    );
}
