//! Hijacked-account containment through the real parts: Postfix with SMTP AUTH through
//! miab-authd, Dovecot logging in through miab-checkpassword, miab-policyd's containment
//! check in the sender list, its notice over SMTP to that Postfix, and `miabctl held`
//! and `miabctl user suspend` run as an administrator would.
//!
//! A login with a quiet week of history that suddenly sends 200 messages to new recipients
//! has everything past the floor held in Postfix's hold queue; the administrator gets exactly
//! one notice; `miabctl held` shows it; release delivers the held mail, and `held drop`
//! deletes a stolen login's. A busy login sending within its own history is never held. Suspension refuses the next SMTP AUTH and IMAP
//! login, and mail from a session that logged in before it.

use miab_e2e::dovecot::{Auth, Dovecot};
use miab_e2e::fixture::{HOSTNAME, miab_box};
use miab_e2e::postfix::{Postfix, PostfixConfig};
use miab_e2e::process::DaemonProcess;
use miab_e2e::tools::{Run, imap_login_from, run, swaks};
use miab_e2e::{Scratch, free_port, require_program, wait_until, workspace_bin};
use state::sending::{Decision, Rule, Sending};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const PASSWORD: &str = "a-long-password";
const DAY: i64 = 86_400;

/// Writes a week of office-hours history for `login` through the same code the daemon
/// counts with: eight hours a day, `per_hour` messages an hour spread over the hour,
/// `new_per_hour` of them to recipients never seen before, the rest to five regular
/// correspondents. A new login grows into that (at most 40 an hour on the first day,
/// doubling daily), as the rule expects of a real one.
fn history(db: &Path, login: &str, per_hour: i64, new_per_hour: i64) {
    let mut s = Sending::open(db).unwrap();
    let rule = Rule::default();
    // Whole days before today: today is never history.
    let today = state::clock::unix_now().div_euclid(DAY) * DAY;
    for (n, day) in (1..=7).rev().enumerate() {
        let cap = 40i64 << n.min(10);
        let (per_hour, new_per_hour) = (per_hour.min(cap), new_per_hour.min(cap));
        for h in 0..8 {
            let start = today - day * DAY + (9 + h) * 3600;
            for i in 0..per_hour {
                let rcpt = if i < new_per_hour {
                    format!("d{day}-h{h}-{i}@elsewhere.example")
                } else {
                    format!("friend-{}@elsewhere.example", i % 5)
                };
                let t = start + i * 3600 / per_hour;
                let d = s.record(&rule, login, &[rcpt], true, t).unwrap();
                assert_eq!(d, Decision::Send, "{login}'s history at {t}");
            }
        }
    }
}

/// Sends `n` messages in one authenticated SMTP session, each to its own new recipient;
/// with `suspend_first` the login is suspended (by that miabctl command line) after AUTH and
/// before the first message. Prints what each RCPT got.
const SEND_MANY: &str = r#"
import smtplib, subprocess, sys
port, user, sender, n, tag = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
suspend = sys.argv[6:]
s = smtplib.SMTP("127.0.0.1", int(port), timeout=30)
s.login(user, sys.stdin.readline().strip())
if suspend:
    subprocess.run(suspend, check=True)
for i in range(n):
    rcpt = f"{tag}-{i}@victims.example"
    msg = f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {tag} {i}\r\n\r\nbody\r\n"
    try:
        s.sendmail(sender, [rcpt], msg)
        print("sent", rcpt)
    except smtplib.SMTPRecipientsRefused as e:
        print("refused", rcpt, e.recipients[rcpt][0], e.recipients[rcpt][1].decode())
s.quit()
"#;

fn send_many(port: u16, login: &str, n: usize, tag: &str, suspend_first: &[&str]) -> Run {
    let python = require_program("/usr/bin/python3", "python3");
    let r = run(
        Command::new(python)
            .arg("-c")
            .arg(SEND_MANY)
            .args([&port.to_string(), login, login, &n.to_string(), tag])
            .args(suspend_first),
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(r.ok(), "{tag}: {}{}", r.stdout, r.stderr);
    r
}

/// Messages the sink got whose subject starts with `tag`.
fn delivered(pf: &Postfix, tag: &str) -> usize {
    let subject = format!("Subject: {tag} ");
    pf.sink
        .messages()
        .iter()
        .filter(|m| m.data.contains(&subject))
        .count()
}

fn wait_delivered(pf: &Postfix, tag: &str, n: usize) {
    let got = wait_until(Duration::from_secs(60), || {
        pf.flush();
        (delivered(pf, tag) >= n).then_some(())
    });
    assert!(
        got.is_some(),
        "{tag}: {} of {n} delivered; queue:\n{}",
        delivered(pf, tag),
        pf.queue()
    );
}

fn smtp_auth(pf: &Postfix, login: &str) -> Run {
    swaks(
        pf.smtp_port(),
        &[
            "--from",
            login,
            "--to",
            "someone@elsewhere.example",
            "--auth",
            "PLAIN",
            "--auth-user",
            login,
            "--auth-password",
            PASSWORD,
        ],
    )
}

#[test]
fn a_hijacked_login_is_held_told_released_and_suspended() {
    require_program("/usr/bin/swaks", "swaks");
    let dir = Scratch::new("con");
    miab_box(dir.path());
    let sending = dir.join("mail/policyd/sending.sqlite");
    history(&sending, "me@example.com", 5, 2);
    history(&sending, "you@example.com", 120, 80);

    // miab-authd for Postfix's SMTP AUTH and Dovecot's checkpassword.
    let auth_sock = dir.join("auth.sock");
    let helper_sock = dir.join("checkpassword.sock");
    let authd = DaemonProcess::with_config(
        &workspace_bin("miab-authd"),
        &dir,
        "authd",
        &format!(
            "storage_root = \"{}\"\n[authd]\nfailure_delay_ms = 0\nsocket_mode = \"0666\"\ncheckpassword_socket_group = \"dovecot\"\n",
            dir.path().display()
        ),
        &[
            "--listen",
            &format!("unix:{}", auth_sock.display()),
            "--checkpassword-listen",
            &format!("unix:{}", helper_sock.display()),
        ],
    );
    let checkpassword = format!(
        "{} --socket {}",
        workspace_bin("miab-checkpassword").display(),
        helper_sock.display()
    );
    let dovecot = Dovecot::start_with(dir.path(), &Auth::Checkpassword(checkpassword));

    let policy_port = free_port();
    let pf = Postfix::start(
        PostfixConfig::default()
            .set("mynetworks", "127.0.0.1/32")
            .set("smtpd_sasl_auth_enable", "yes")
            .set("smtpd_sasl_type", "dovecot")
            .set("smtpd_sasl_path", auth_sock.display().to_string())
            .set(
                "smtpd_sender_restrictions",
                format!("check_policy_service {{ inet:127.0.0.1:{policy_port}, timeout=10s, default_action=DEFER_IF_PERMIT, policy_context=sender }}"),
            )
            .set(
                "smtpd_recipient_restrictions",
                "permit_sasl_authenticated, permit_mynetworks, reject_unauth_destination",
            )
            .set(
                "smtpd_end_of_data_restrictions",
                format!("check_policy_service {{ inet:127.0.0.1:{policy_port}, timeout=10s, default_action=DEFER_IF_PERMIT, policy_context=data }}"),
            ),
    );
    let config = format!(
        "storage_root = \"{root}\"\nhostname = \"{HOSTNAME}\"\n\
         [dns]\nnameservers = [\"127.0.0.1:53\"]\n\
         [policyd]\nchecks = [\"sender_login\", \"containment\"]\n\
         [policyd.greylist]\nsyslog_socket = \"\"\n\
         [policyd.containment]\nnotify_smtp = \"127.0.0.1:{smtp}\"\n",
        root = dir.path().display(),
        smtp = pf.smtp_port(),
    );
    let policyd = DaemonProcess::with_config(
        Path::new(env!("CARGO_BIN_EXE_miab-policyd")),
        &dir,
        "policyd",
        &config,
        &["--listen", &format!("inet:127.0.0.1:{policy_port}")],
    );
    let miabctl = workspace_bin("miabctl");
    let root = dir.path().display().to_string();
    let ctl = |args: &[&str]| {
        run(
            Command::new(&miabctl)
                .args(["--storage-root", &root, "--hostname", HOSTNAME])
                .args(args),
            None,
        )
    };
    let logs = || format!("policyd:\n{}\nauthd:\n{}", policyd.log(), authd.log());

    // A busy login within its own history: 150 new recipients in a minute, none held.
    send_many(pf.smtp_port(), "you@example.com", 150, "busy", &[]);
    wait_delivered(&pf, "busy", 150);
    assert!(pf.held_ids().is_empty(), "{}", pf.queue());

    // The quiet login, hijacked: 200 messages to new recipients in a few seconds.
    let r = send_many(pf.smtp_port(), "me@example.com", 200, "spam", &[]);
    assert_eq!(
        r.stdout.matches("sent ").count(),
        200,
        "HOLD accepts: {}",
        r.stdout
    );
    wait_delivered(&pf, "spam", 50);
    let held = wait_until(Duration::from_secs(30), || {
        let ids = pf.held_ids();
        (ids.len() == 150).then_some(ids)
    });
    assert!(
        held.is_some(),
        "150 held expected:\n{}\n{}",
        pf.queue(),
        logs()
    );
    assert_eq!(delivered(&pf, "spam"), 50, "only the floor went out");
    assert!(
        pf.log().contains(": hold: END-OF-MESSAGE from "),
        "{}",
        pf.log()
    );
    let lines: Vec<String> = policyd
        .log()
        .lines()
        .filter(|l| l.contains("sending far past the login's own history"))
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 1, "one log line:\n{}", logs());
    assert!(
        lines[0].contains("login=\"me@example.com\"")
            && lines[0].contains("reason=51 new recipients in the last hour (limit 50)"),
        "{}",
        lines[0]
    );

    // Exactly one notice, to the administrator, naming the login and the commands.
    let subject = format!("Subject: [{HOSTNAME}] Outgoing mail from me@example.com is held");
    let notice = wait_until(Duration::from_secs(30), || {
        pf.sink
            .messages()
            .into_iter()
            .find(|m| m.data.contains(&subject))
    })
    .unwrap_or_else(|| panic!("no notice:\n{}\n{}", pf.queue(), logs()));
    assert_eq!(notice.rcpt_to, [format!("administrator@{HOSTNAME}")]);
    assert!(
        notice
            .data
            .contains("51 new recipients in the last hour (limit 50)")
            && notice.data.contains("miabctl held release me@example.com"),
        "{}",
        notice.data
    );
    // More mail from the held login: held too, and no second notice.
    send_many(pf.smtp_port(), "me@example.com", 5, "more", &[]);
    wait_until(Duration::from_secs(30), || {
        (pf.held_ids().len() == 155).then_some(())
    })
    .unwrap_or_else(|| panic!("{}", pf.queue()));
    std::thread::sleep(Duration::from_secs(2));
    let notices = pf
        .sink
        .messages()
        .iter()
        .filter(|m| m.data.contains("Outgoing mail from"))
        .count();
    assert_eq!(notices, 1, "one notice per login per hour");

    // miabctl shows it.
    let list = ctl(&["held"]);
    assert!(list.ok(), "{list:?}");
    assert!(
        list.stdout.starts_with("me@example.com\tHELD since ")
            && list
                .stdout
                .contains(": 51 new recipients in the last hour (limit 50)")
            && list
                .stdout
                .contains("limits: 100 messages, 500 recipients, 50 new recipients"),
        "{}",
        list.stdout
    );
    assert!(!list.stdout.contains("you@example.com"), "{}", list.stdout);

    // Release delivers the held mail, and the login sends again.
    let config_dir = pf.config_dir().display().to_string();
    let rel = ctl(&[
        "held",
        "release",
        "me@example.com",
        "--postfix-config",
        &config_dir,
    ]);
    assert!(rel.ok(), "{rel:?}");
    assert_eq!(
        rel.stdout.trim(),
        "me@example.com may send again; 155 held messages released"
    );
    wait_delivered(&pf, "spam", 200);
    wait_delivered(&pf, "more", 5);
    assert!(pf.held_ids().is_empty(), "{}", pf.queue());
    assert_eq!(ctl(&["held"]).stdout.trim(), "no login is held");

    // Suspension: the next SMTP AUTH and IMAP login are refused, and so is mail from a
    // session that logged in before it.
    let imap =
        |user: &str, source: &str| imap_login_from(source, dovecot.imap_port(), user, PASSWORD);
    assert!(
        imap("me@example.com", "127.0.0.11").ok(),
        "{}",
        dovecot.log()
    );
    assert!(smtp_auth(&pf, "me@example.com").ok());
    let open_session = send_many(
        pf.smtp_port(),
        "me@example.com",
        1,
        "open-session",
        &[
            miabctl.to_str().unwrap(),
            "--storage-root",
            &root,
            "user",
            "suspend",
            "me@example.com",
            "--reason",
            "sent spam",
        ],
    );
    assert!(
        open_session
            .stdout
            .contains("refused open-session-0@victims.example 554 5.7.1 <me@example.com>: Sender address rejected: me@example.com is suspended"),
        "{}",
        open_session.stdout
    );
    let refused = smtp_auth(&pf, "me@example.com");
    assert!(
        refused
            .stdout
            .contains("<** 535 5.7.8 Error: authentication failed"),
        "{}",
        refused.stdout
    );
    let r = imap("me@example.com", "127.0.0.12");
    assert!(
        !r.ok() && r.stdout.contains("[AUTHENTICATIONFAILED]"),
        "{r:?}"
    );
    let listed = ctl(&["user", "suspended"]);
    assert!(
        listed.stdout.starts_with("me@example.com\t") && listed.stdout.contains("\tsent spam"),
        "{listed:?}"
    );
    assert!(
        authd.log().contains("reason=\"login suspended\""),
        "{}",
        authd.log()
    );
    // A stolen login's held mail is deleted; the login stays held.
    send_many(pf.smtp_port(), "boss@other.example", 60, "stolen", &[]);
    wait_until(Duration::from_secs(30), || {
        (pf.held_ids().len() == 10).then_some(())
    })
    .unwrap_or_else(|| panic!("{}", pf.queue()));
    let dropped = ctl(&[
        "held",
        "drop",
        "boss@other.example",
        "--postfix-config",
        &config_dir,
    ]);
    assert_eq!(
        dropped.stdout.trim(),
        "10 held messages of boss@other.example deleted",
        "{dropped:?}"
    );
    assert!(pf.held_ids().is_empty(), "{}", pf.queue());
    assert!(
        ctl(&["held"])
            .stdout
            .starts_with("boss@other.example\tHELD since ")
    );
    wait_delivered(&pf, "stolen", 50);
    assert_eq!(delivered(&pf, "stolen"), 50, "only the floor went out");

    // Others are untouched; letting it in again restores the same password.
    assert!(smtp_auth(&pf, "you@example.com").ok());
    assert_eq!(
        ctl(&["user", "unsuspend", "me@example.com"]).stdout.trim(),
        "OK"
    );
    assert!(smtp_auth(&pf, "me@example.com").ok());
    assert!(imap("me@example.com", "127.0.0.13").ok());
}
