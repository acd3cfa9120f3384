//! Two hosts sharing one PostgreSQL 15, each a Postfix with its own four daemons (miab-lookup,
//! miab-policyd, miab-authd, miab-milter; host 2 also a Dovecot logging in through them): host
//! 1 holds MIAB's `users.sqlite` and publishes it; host 2 has no user DB at all.
//!
//! - A sender greylisted at host 1 is accepted on its retry at host 2.
//! - A user added with `miabctl` on host 1 is known on host 2 within a second: its address
//!   takes mail there, it logs in there over IMAP and SMTP AUTH, and its mail is signed there.
//! - A login sending through both hosts is held at its one limit, not twice it.
//! - A device that logged in at host 1 is known at host 2 while strangers brake the login.
//! - PostgreSQL stopped: greylisting fails open, containment closed, the directory answers
//!   from its last snapshot, and no request waits longer than the deadline; started again,
//!   everything resumes, with the greylist and the holds written before the stop.

use miab_e2e::dns::TestDns;
use miab_e2e::dovecot::{Auth, Dovecot};
use miab_e2e::fixture::{HOSTNAME, miab_box};
use miab_e2e::postfix::Postfix;
use miab_e2e::postgres::Postgres;
use miab_e2e::sidecars::Sidecars;
use miab_e2e::tools::{Run, imap_login, postmap_lookup, run, swaks};
use miab_e2e::{Scratch, require_program, wait_until, workspace_bin};
use std::process::Command;
use std::time::{Duration, Instant};

/// The fixture's users' password.
const PASSWORD: &str = "a-long-password";
/// The store's deadline in the hosts' configuration, in milliseconds.
const DEADLINE_MS: u64 = 500;

struct Host {
    dir: Scratch,
    config: std::path::PathBuf,
    pf: Postfix,
    daemons: Sidecars,
}

impl Host {
    fn start(name: &str, pg: &Postgres, dns: &TestDns, primary: bool) -> Host {
        let dir = Scratch::new(name);
        if primary {
            miab_box(dir.path());
        }
        let config = dir.join("sidecars.toml");
        std::fs::write(
            &config,
            format!(
                "storage_root = \"{root}\"\nhostname = \"{HOSTNAME}\"\n\
                 [dns]\nnameservers = [\"{dns}\"]\ntimeout_ms = 400\n\
                 [store]\nurl = \"{url}\"\npublish = {primary}\ndeadline_ms = {DEADLINE_MS}\n\
                 failures_before_pause = 2\nretry_after_ms = 1000\n\
                 [policyd]\nchecks = [\"sender_login\", \"containment\", \"greylist\"]\n\
                 trusted_clients = [\"127.0.0.1/32\"]\n\
                 [policyd.greylist]\nsyslog_socket = \"\"\nwhitelist_clients = []\n\
                 whitelist_recipients = []\ndelay_secs = 2\n\
                 [policyd.containment]\nfloor_messages = 10\nnotify = \"\"\n\
                 [authd]\nfailure_delay_ms = 0\nsocket_mode = \"0666\"\n\
                 checkpassword_socket_group = \"dovecot\"\n\
                 login_failures_per_minute = 3\nip_failures_per_minute = 100\nproxy_networks = []\n",
                root = dir.path().display(),
                dns = dns.addr(),
                url = pg.url(),
            ),
        )
        .unwrap();
        let daemons = Sidecars::start(&dir, &config);
        let pf = Postfix::start(daemons.postfix_config());
        Host {
            dir,
            config,
            pf,
            daemons,
        }
    }

    fn checkpassword(&self) -> String {
        format!(
            "{} --socket {}",
            workspace_bin("miab-checkpassword").display(),
            self.daemons.checkpassword_sock.display()
        )
    }

    /// Does this host's miab-lookup know the mailbox (`postmap -q` over its socketmap)?
    fn knows(&self, address: &str) -> bool {
        let map = format!(
            "socketmap:inet:127.0.0.1:{}:mailboxes",
            self.daemons.lookup_port
        );
        matches!(postmap_lookup(None, address, &map), Ok(Some(_)))
    }

    fn send(&self, from_ip: &str, from: &str, to: &str, subject: &str) -> Run {
        swaks(
            self.pf.smtp_port(),
            &[
                "--local-interface",
                from_ip,
                "--from",
                from,
                "--to",
                to,
                "--header",
                &format!("Subject: {subject}"),
            ],
        )
    }

    fn auth(&self, from_ip: &str, login: &str, password: &str, subject: &str) -> Run {
        swaks(
            self.pf.smtp_port(),
            &[
                "--local-interface",
                from_ip,
                "--from",
                login,
                "--to",
                "someone@elsewhere.example",
                "--auth",
                "PLAIN",
                "--auth-user",
                login,
                "--auth-password",
                password,
                "--header",
                &format!("Subject: {subject}"),
            ],
        )
    }

    fn miabctl(&self, args: &[&str], stdin: Option<&str>) -> Run {
        run(
            Command::new(workspace_bin("miabctl"))
                .args(["--config", self.config.to_str().unwrap()])
                .args(["--hostname", HOSTNAME])
                .args(args),
            stdin,
        )
    }

    fn held(&self) -> usize {
        self.pf.held_ids().len()
    }

    fn logs(&self) -> String {
        self.daemons.logs()
    }
}

/// Sends `n` messages in one authenticated session through `port`, each to its own recipient.
fn send_many(port: u16, login: &str, n: usize, tag: &str) -> Run {
    let python = require_program("/usr/bin/python3", "python3");
    let script = r#"
import smtplib, sys
port, user, n, tag = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
s = smtplib.SMTP("127.0.0.1", port, timeout=30)
s.login(user, sys.stdin.readline().strip())
for i in range(n):
    rcpt = f"{tag}-{i}@elsewhere.example"
    s.sendmail(user, [rcpt], f"From: {user}\r\nTo: {rcpt}\r\nSubject: {tag} {i}\r\n\r\nbody\r\n")
s.quit()
"#;
    let r = run(
        Command::new(python).arg("-c").arg(script).args([
            &port.to_string(),
            login,
            &n.to_string(),
            tag,
        ]),
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(r.ok(), "{tag}: {}{}", r.stdout, r.stderr);
    r
}

fn delivered(h: &Host, tag: &str) -> usize {
    let subject = format!("Subject: {tag} ");
    h.pf.sink
        .messages()
        .iter()
        .filter(|m| m.data.contains(&subject))
        .count()
}

#[test]
fn two_hosts_share_one_postgresql() {
    require_program("/usr/bin/swaks", "swaks");
    let pg = Postgres::start();
    let dns = TestDns::start();
    let one = Host::start("h1", &pg, &dns, true);
    let two = Host::start("h2", &pg, &dns, false);
    let known = wait_until(Duration::from_secs(10), || {
        two.knows("me@example.com").then_some(())
    });
    assert!(known.is_some(), "host 2 has the directory\n{}", two.logs());
    let dovecot = Dovecot::start_with(two.dir.path(), &Auth::Checkpassword(two.checkpassword()));

    // Greylisted at host 1, accepted on the retry at host 2.
    let first = one.send("127.0.0.5", "alice@example.net", "me@example.com", "grey 1");
    assert!(
        first
            .stdout
            .contains("450 4.2.0 <me@example.com>: Recipient address rejected: Greylisted"),
        "{}",
        first.stdout
    );
    std::thread::sleep(Duration::from_millis(2200));
    let retry = two.send("127.0.0.5", "alice@example.net", "me@example.com", "grey 2");
    assert!(retry.ok(), "{}\n{}", retry.stdout, two.logs());
    assert!(
        two.daemons
            .policyd
            .log()
            .contains("action=pass, reason=triplet found"),
        "{}",
        two.daemons.policyd.log()
    );

    // A user added on host 1 is known on host 2 within a second.
    assert!(!two.knows("new@example.com"));
    let added = one.miabctl(
        &["user", "add", "new@example.com", "--password-stdin"],
        Some("a-new-password\n"),
    );
    assert!(added.ok(), "{}{}", added.stdout, added.stderr);
    let t = Instant::now();
    let seen = wait_until(Duration::from_secs(5), || {
        two.knows("new@example.com").then(|| t.elapsed())
    });
    let took = seen.unwrap_or_else(|| panic!("not on host 2\n{}\n{}", one.logs(), two.logs()));
    println!("a new user answered on host 2 after {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    let mail = two.send(
        "127.0.0.1",
        "bob@example.net",
        "new@example.com",
        "welcome 1",
    );
    assert!(mail.ok(), "{}", mail.stdout);
    assert!(
        imap_login(dovecot.imap_port(), "new@example.com", "a-new-password").ok(),
        "IMAP at host 2\n{}\n{}",
        two.logs(),
        dovecot.log()
    );
    let smtp = two.auth("127.0.0.1", "new@example.com", "a-new-password", "auth 1");
    assert!(smtp.ok(), "{}", smtp.stdout);
    let signed = two
        .pf
        .sink
        .wait_for("Subject: auth 1", Duration::from_secs(20))
        .expect("delivered");
    assert!(
        signed.data.contains("DKIM-Signature:") && signed.data.contains("d=example.com"),
        "signed at host 2 for the new user's domain:\n{}",
        signed.data
    );

    // One login through both hosts: one limit (10 an hour), not ten per host.
    send_many(one.pf.smtp_port(), "me@example.com", 8, "both-1");
    send_many(two.pf.smtp_port(), "me@example.com", 8, "both-2");
    let held = wait_until(Duration::from_secs(30), || (two.held() == 6).then_some(()));
    assert!(
        held.is_some(),
        "6 held at host 2: {} held\n{}\n{}",
        two.held(),
        two.pf.queue(),
        two.logs()
    );
    assert_eq!(one.held(), 0);
    let listed = two.miabctl(&["held"], None);
    assert!(
        listed.ok() && listed.stdout.contains("me@example.com\tHELD since"),
        "{}{}",
        listed.stdout,
        listed.stderr
    );
    let on_one = one.miabctl(&["held"], None);
    assert!(
        on_one.stdout.contains("me@example.com\tHELD since"),
        "the same hold on host 1"
    );

    // A device that logged in at host 1 is known at host 2, where strangers brake the login.
    assert!(
        one.auth("127.0.0.9", "you@example.com", PASSWORD, "device 1")
            .ok()
    );
    for ip in ["127.0.0.21", "127.0.0.22", "127.0.0.23", "127.0.0.24"] {
        assert!(
            !two.auth(ip, "you@example.com", "wrong-password", "stranger")
                .ok()
        );
    }
    let stranger = two.auth("127.0.0.25", "you@example.com", PASSWORD, "stranger 2");
    assert!(
        !stranger.ok(),
        "the login is braked for strangers: {}",
        stranger.stdout
    );
    let device = wait_until(Duration::from_secs(10), || {
        two.auth("127.0.0.9", "you@example.com", PASSWORD, "device 2")
            .ok()
            .then_some(())
    });
    assert!(
        device.is_some(),
        "the device known at host 1 is let in at host 2\n{}",
        two.logs()
    );

    // PostgreSQL stops: mail keeps flowing as the rules say, no request past the deadline.
    pg.kill();
    let bound = Duration::from_millis(DEADLINE_MS) + Duration::from_secs(2);
    for i in 0..4 {
        let t = Instant::now();
        let stranger = two.send(
            "127.0.0.6",
            &format!("s{i}@example.net"),
            "me@example.com",
            "down",
        );
        assert!(stranger.ok(), "greylisting fails open: {}", stranger.stdout);
        assert!(t.elapsed() < bound, "{:?}", t.elapsed());
        let t = Instant::now();
        let authed = two.auth(
            "127.0.0.1",
            "new@example.com",
            "a-new-password",
            "down-auth",
        );
        assert!(
            authed.stdout.contains("451 4.3.0"),
            "containment fails closed: {}",
            authed.stdout
        );
        assert!(t.elapsed() < bound, "{:?}", t.elapsed());
    }
    assert!(
        two.knows("new@example.com"),
        "the directory answers from its snapshot"
    );
    assert!(
        two.daemons
            .policyd
            .log()
            .contains("check failed; answering the fail action")
    );

    // Back: everything resumes, with what was written before the stop.
    pg.resume();
    let back = wait_until(Duration::from_secs(20), || {
        two.auth("127.0.0.1", "new@example.com", "a-new-password", "back")
            .ok()
            .then_some(())
    });
    assert!(back.is_some(), "{}", two.logs());
    assert_ne!(pg.psql("SELECT count(*) FROM greylist_triplets"), "0");
    assert_eq!(
        pg.psql("SELECT login FROM sending_logins WHERE held_since IS NOT NULL"),
        "me@example.com"
    );
    let released = two.miabctl(
        &[
            "held",
            "release",
            "me@example.com",
            "--postfix-config",
            two.pf.config_dir().to_str().unwrap(),
        ],
        None,
    );
    assert!(released.ok(), "{}{}", released.stdout, released.stderr);
    let out = wait_until(Duration::from_secs(30), || {
        two.pf.flush();
        (delivered(&two, "both-2") == 8).then_some(())
    });
    assert!(out.is_some(), "{}", two.pf.queue());
    assert_eq!(delivered(&one, "both-1"), 8);
}
