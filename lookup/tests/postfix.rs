//! A real Postfix using the four socketmaps, side by side with the same Postfix using MIAB's
//! `sqlite:` maps over the same DB: the same recipients accepted and refused, the same final
//! recipients after rewriting (`+tag` included), with the DB locked a 4xx that turns into a
//! delivery once the lock is gone, and with the daemon stopped a 4xx too.

mod common;

use common::start_lookup;
use miab_e2e::fixture::{self, HOSTNAME};
use miab_e2e::postfix::{MiabSqliteMaps, Postfix, PostfixConfig, lookup_socketmaps};
use miab_e2e::{Scratch, tools};
use std::time::Duration;

/// The SMTP reply code of the first refused command, else of RCPT TO.
fn smtp_code(pf: &Postfix, rcpt: &str) -> String {
    let r = tools::swaks(
        pf.smtp_port(),
        &[
            "--to",
            rcpt,
            "--from",
            "sender@elsewhere.example",
            "--quit-after",
            "RCPT",
        ],
    );
    let lines: Vec<&str> = r.stdout.lines().collect();
    let line = lines
        .iter()
        .find(|l| l.starts_with("<**"))
        .or_else(|| {
            let rcpt_at = lines.iter().position(|l| l.starts_with(" -> RCPT TO"))?;
            lines[rcpt_at..].iter().find(|l| l.starts_with("<-"))
        })
        .unwrap_or_else(|| panic!("no reply found:\n{}", r.stdout));
    line.trim_start_matches(['<', '-', '*', ' '])
        .chars()
        .take(3)
        .collect()
}

#[test]
fn postfix_with_socketmaps_behaves_as_with_miab_sqlite_maps() {
    let dir = Scratch::new("lkpf");
    let root = dir.mkdir("data");
    let db = fixture::miab_box(&root);
    let sock = dir.join("lookup.sock");
    let mut daemon = start_lookup(
        &dir,
        &format!(
            "storage_root = \"{}\"\ndb_busy_timeout_ms = 300\n[lookup]\nlisten = \"unix:{}\"\nsocket_mode = \"0660\"\nsocket_group = \"postfix\"\n",
            root.display(),
            sock.display()
        ),
        &[],
    );
    let maps = MiabSqliteMaps::write(dir.path(), &db);
    let sqlite = Postfix::start(maps.main_cf(PostfixConfig::default()));
    let ours = Postfix::start(lookup_socketmaps(
        &format!("unix:{}", sock.display()),
        PostfixConfig::default(),
    ));

    let deliverable = [
        "me@example.com",
        "Me+Tag@Example.com",
        "hello@example.com",
        "hello+x@example.com",
        "chain@example.com",
        "random+tag@catch.example",
        "me+t@alias.example",
        "nobody@alias.example",
        "you@example.com",
        "you+x@example.com",
        "postmaster@example.com",
        "abuse@other.example",
        &format!("hostmaster@{HOSTNAME}"),
        "hi@xn--bcher-kva.example",
        "team+x@other.example",
        "stranger@other.example",
    ];
    for (i, rcpt) in deliverable.iter().enumerate() {
        let marker = format!("marker-{i}");
        let want = sqlite.final_recipients(rcpt, &marker);
        let got = ours.final_recipients(rcpt, &marker);
        assert_eq!(got, want, "final recipients of {rcpt}");
    }

    for rcpt in [
        "nobody@example.com",
        "Nobody+x@EXAMPLE.com",
        "sendonly@example.com",
    ] {
        let want = smtp_code(&sqlite, rcpt);
        assert!(want.starts_with('5'), "{rcpt}: sqlite gave {want}");
        assert_eq!(smtp_code(&ours, rcpt), want, "RCPT {rcpt}");
    }
    assert_eq!(smtp_code(&ours, "nobody@example.com"), "550");

    // The DB locked by a writer: a temporary refusal, then delivery once the lock is gone.
    let send = |rcpt: &str, extra: &[&str]| {
        let mut args = vec!["--to", rcpt, "--from", "sender@elsewhere.example"];
        args.extend_from_slice(extra);
        tools::swaks(ours.smtp_port(), &args)
    };
    let locker = rusqlite::Connection::open(&db).unwrap();
    locker.execute_batch(fixture::CHANGE_THEN_LOCK).unwrap();
    let r = send("me+locked@example.com", &[]);
    assert!(!r.ok());
    assert!(r.stdout.contains("<** 451 4.3.0"), "{}", r.stdout);
    locker.execute_batch("COMMIT").unwrap();
    let delivered = miab_e2e::wait_until(Duration::from_secs(30), || {
        let r = send(
            "me+locked@example.com",
            &["--header", "Subject: after-the-lock"],
        );
        r.ok().then_some(())
    });
    assert!(delivered.is_some(), "{}", ours.log());
    let msg = ours
        .sink
        .wait_for("after-the-lock", Duration::from_secs(30));
    assert_eq!(
        msg.expect("delivered after the lock").rcpt_to,
        vec!["me+locked@example.com".to_owned()]
    );
    assert!(daemon.log().contains("answering TEMP"));

    // The daemon gone: Postfix defers (4xx), it does not bounce.
    assert!(daemon.terminate().success());
    let r = send("me+down@example.com", &[]);
    assert!(r.stdout.contains("<** 451 4.3.0"), "{}", r.stdout);
}
