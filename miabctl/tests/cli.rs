//! `miabctl` as an operator runs it, against DBs it creates and DBs made the way MIAB makes
//! them, and against a real Dovecot configured as MIAB configures it.

use miab_e2e::dovecot::Dovecot;
use miab_e2e::tools::{self, Run};
use miab_e2e::{Scratch, set_mode};
use std::path::Path;
use std::process::Command;

fn miabctl(root: &Path, args: &[&str], stdin: Option<&str>) -> Run {
    tools::run(
        Command::new(env!("CARGO_BIN_EXE_miabctl"))
            .env("MIAB_STORAGE_ROOT", root)
            .env("MIAB_HOSTNAME", "box.example.com")
            .args(args),
        stdin,
    )
}

fn ok(root: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let r = miabctl(root, args, stdin);
    assert!(r.ok(), "miabctl {args:?}: {} {}", r.stdout, r.stderr);
    r.stdout
}

fn refused(root: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let r = miabctl(root, args, stdin);
    assert_eq!(r.code, 1, "miabctl {args:?} should fail: {}", r.stdout);
    r.stderr.trim().to_owned()
}

#[test]
fn imap_login_through_miab_sql_passdb_over_a_db_miabctl_wrote() {
    let root = Scratch::new("ctl");
    ok(root.path(), &["init"], None);
    set_mode(&root.join("mail"), 0o755);
    set_mode(&root.join("mail/users.sqlite"), 0o644);
    assert_eq!(
        ok(
            root.path(),
            &["user", "add", "me@example.com", "--password-stdin"],
            Some("first-password\n")
        ),
        "mail user added\n"
    );
    let dv = Dovecot::start(root.path());
    let good = tools::imap_login(dv.imap_port(), "me@example.com", "first-password");
    assert!(good.ok(), "{} {}\n{}", good.stdout, good.stderr, dv.log());
    assert!(good.stdout.starts_with("OK OK"), "{}", good.stdout);
    // Dovecot's default %Lu lowercases the login.
    assert!(tools::imap_login(dv.imap_port(), "Me@Example.com", "first-password").ok());
    assert!(!tools::imap_login(dv.imap_port(), "me@example.com", "wrong-password").ok());
    assert!(!tools::imap_login(dv.imap_port(), "nobody@example.com", "first-password").ok());

    // A password change is seen at once, with no reload.
    assert_eq!(
        ok(
            root.path(),
            &["user", "password", "me@example.com", "--password-stdin"],
            Some("second-password\n")
        ),
        "OK\n"
    );
    assert!(tools::imap_login(dv.imap_port(), "me@example.com", "second-password").ok());
    assert!(!tools::imap_login(dv.imap_port(), "me@example.com", "first-password").ok());

    // Removing the user stops logins but keeps the maildir (MIAB's archive semantics).
    let maildir = root.join("mail/mailboxes/example.com/me");
    assert!(
        maildir.is_dir(),
        "dovecot should have created {}",
        maildir.display()
    );
    assert_eq!(
        ok(root.path(), &["user", "remove", "me@example.com"], None)
            .lines()
            .next(),
        Some("mail user removed")
    );
    assert!(!tools::imap_login(dv.imap_port(), "me@example.com", "second-password").ok());
    assert!(maildir.is_dir());
    let listing = ok(root.path(), &["--json", "user"], None);
    assert!(listing.contains("\"inactive\""), "{listing}");
    assert_eq!(ok(root.path(), &["user"], None), "");
}

#[test]
fn hashes_are_interchangeable_with_doveadm() {
    let root = Scratch::new("ctl");
    ok(root.path(), &["init"], None);
    ok(
        root.path(),
        &["user", "add", "me@example.com", "--password-stdin"],
        Some("pa55-word-ok\n"),
    );
    let db = userdb::UserDb::open(userdb::db_path(root.path()), userdb::Access::ReadOnly).unwrap();
    let stored = db.user("me@example.com").unwrap().unwrap().password_hash;
    assert!(
        tools::doveadm_pw_verify("pa55-word-ok", &stored),
        "{stored}"
    );
    assert!(!tools::doveadm_pw_verify("pa55-word-no", &stored));
    for rounds in [None, Some(6000)] {
        let h = tools::doveadm_pw_hash("from doveadm!", rounds);
        assert_eq!(h.contains("rounds=6000"), rounds.is_some(), "{h}");
        let pw = userdb::Password::new("from doveadm!");
        assert!(userdb::password::verify_password(&pw, &h), "{h}");
        assert!(userdb::password::verify_password(
            &pw,
            h.strip_prefix("{SHA512-CRYPT}").unwrap()
        ));
        assert!(!userdb::password::verify_password(
            &userdb::Password::new("from doveadm?"),
            &h
        ));
    }
}

#[test]
fn outputs_and_error_texts_match_cli_py() {
    let root = Scratch::new("ctl");
    let r = root.path();
    assert!(refused(r, &["user"], None).contains("user database not found: "));
    assert!(refused(r, &["user"], None).contains("mail/users.sqlite"));
    ok(r, &["init"], None);
    assert!(refused(r, &["init"], None).contains("already exists"));
    let pw = Some("a-good-password\n");
    ok(
        r,
        &["user", "add", "me@example.com", "--password-stdin"],
        pw,
    );
    ok(
        r,
        &["user", "add", "amy@example.com", "--password-stdin"],
        pw,
    );
    ok(
        r,
        &["user", "add", "zed@example.com", "--password-stdin"],
        pw,
    );
    ok(
        r,
        &["user", "add", "a@box.example.com", "--password-stdin"],
        pw,
    );
    assert_eq!(
        refused(
            r,
            &["user", "add", "me@example.com", "--password-stdin"],
            pw
        ),
        "User already exists."
    );
    assert_eq!(
        refused(
            r,
            &["user", "add", "Me@example.com", "--password-stdin"],
            pw
        ),
        "User account email addresses may only use the lowercase ASCII letters a-z, the digits 0-9, underscore (_), hyphen (-), and period (.)."
    );
    assert_eq!(
        refused(
            r,
            &["user", "add", "not-an-address", "--password-stdin"],
            pw
        ),
        "Invalid email address."
    );
    assert_eq!(
        refused(r, &["user", "add", " ", "--password-stdin"], pw),
        "No email address provided."
    );
    let long = format!("{}@example.com", "a".repeat(300));
    assert_eq!(
        refused(r, &["user", "add", &long, "--password-stdin"], pw),
        "Invalid email address."
    );
    assert!(
        refused(
            r,
            &["user", "add", "postmaster@example.com", "--password-stdin"],
            pw
        )
        .starts_with("You may not make a user account for that address")
    );
    assert_eq!(
        refused(
            r,
            &["user", "add", "x@example.com", "--password-stdin"],
            Some("short\n")
        ),
        "Passwords must be at least eight characters."
    );
    assert_eq!(
        refused(
            r,
            &["user", "add", "x@example.com", "--password-stdin"],
            Some("\n")
        ),
        "No password provided."
    );
    assert_eq!(
        refused(
            r,
            &[
                "user",
                "add",
                "x@example.com",
                "--quota",
                "1.5G",
                "--password-stdin"
            ],
            pw
        ),
        "Quotas cannot contain spaces, commas, or decimal points."
    );
    // Without a terminal and without --password-stdin there is nothing to read.
    assert!(refused(r, &["user", "add", "x@example.com"], None).contains("--password-stdin"));

    assert_eq!(
        ok(r, &["user", "make-admin", "me@example.com"], None),
        "OK\n"
    );
    assert_eq!(
        refused(r, &["user", "make-admin", "ghost@example.com"], None),
        "That's not a user (ghost@example.com)."
    );
    // MIAB's order: the primary hostname's zone first, users sorted within a domain, admins starred.
    assert_eq!(
        ok(r, &["user"], None),
        "a@box.example.com\namy@example.com\nme@example.com*\nzed@example.com\n"
    );
    assert_eq!(ok(r, &["user", "admins"], None), "me@example.com\n");
    ok(r, &["user", "remove-admin", "me@example.com"], None);
    assert_eq!(ok(r, &["user", "admins"], None), "");

    assert_eq!(ok(r, &["user", "quota", "me@example.com"], None), "0\n");
    assert_eq!(
        ok(r, &["user", "quota", "me@example.com", "500m"], None),
        ""
    );
    assert_eq!(ok(r, &["user", "quota", "me@example.com"], None), "500M\n");
    assert_eq!(
        refused(r, &["user", "quota", "me@example.com", "lots"], None),
        "Invalid quota."
    );

    assert_eq!(
        ok(r, &["user", "mfa", "show", "me@example.com"], None),
        "id,type,label\r\n"
    );
    assert_eq!(
        refused(r, &["user", "mfa", "show", "ghost@example.com"], None),
        "User does not exist."
    );
    assert_eq!(
        refused(r, &["user", "mfa", "disable", "me@example.com"], None),
        "Invalid user or MFA id."
    );

    assert_eq!(
        ok(
            r,
            &[
                "alias",
                "add",
                "Hello@Bücher.example",
                "me@example.com, zed@example.com"
            ],
            None
        ),
        "alias added\n"
    );
    assert_eq!(
        refused(
            r,
            &["alias", "add", "hello@bücher.example", "me@example.com"],
            None
        ),
        "Alias already exists (hello@xn--bcher-kva.example)."
    );
    assert_eq!(
        ok(
            r,
            &[
                "alias",
                "add",
                "hello@bücher.example",
                "zed@example.com",
                "--update"
            ],
            None
        ),
        "alias updated\n"
    );
    assert_eq!(
        ok(
            r,
            &[
                "alias",
                "add",
                "send@example.com",
                "",
                "--permitted-senders",
                "me@example.com"
            ],
            None
        ),
        "alias added\n"
    );
    assert_eq!(
        refused(
            r,
            &[
                "alias",
                "add",
                "x@example.com",
                "",
                "--permitted-senders",
                "ghost@example.com"
            ],
            None
        ),
        "Invalid permitted sender: ghost@example.com is not a user on this system."
    );
    assert_eq!(
        refused(r, &["alias", "add", "x@example.com", ""], None),
        "The alias must either forward to an address or have a permitted sender."
    );
    assert_eq!(
        refused(r, &["alias", "add", "x@example.com", "a@b.com,bad"], None),
        "Invalid receiver email address (bad)."
    );
    assert_eq!(
        refused(r, &["alias", "add", "bad address", "me@example.com"], None),
        "Invalid email address (bad address)."
    );
    assert!(
        refused(
            r,
            &["alias", "add", "abuse@example.com", "zed@example.com"],
            None
        )
        .starts_with("This alias can only have administrators")
    );
    assert_eq!(
        refused(r, &["alias", "remove", "nope@example.com"], None),
        "That's not an alias (nope@example.com)."
    );
    let tsv = ok(r, &["alias"], None);
    assert!(
        tsv.contains("hello@xn--bcher-kva.example\tzed@example.com\t\n"),
        "{tsv}"
    );
    assert!(
        tsv.contains("send@example.com\t\tme@example.com\n"),
        "{tsv}"
    );
    assert!(
        tsv.contains("postmaster@example.com\tadministrator@box.example.com\t\n"),
        "{tsv}"
    );
    assert!(
        tsv.contains("@bücher.example\t@xn--bcher-kva.example\t\n"),
        "{tsv}"
    );
    assert!(tsv.starts_with("abuse@box.example.com\t"), "{tsv}");
    let json: serde_json::Value = serde_json::from_str(&ok(r, &["--json", "alias"], None)).unwrap();
    assert!(
        json.as_array()
            .unwrap()
            .iter()
            .any(|d| d["domain"] == "bücher.example")
    );
    assert_eq!(
        ok(r, &["alias", "remove", "hello@bücher.example"], None),
        "alias removed\n"
    );
    assert_eq!(
        ok(r, &["domain", "list"], None),
        "box.example.com\nexample.com\n"
    );
    assert_eq!(ok(r, &["kick"], None), "auto aliases up to date\n");

    // Usage errors exit 2, as cli.py's argument errors are usage errors.
    assert_eq!(miabctl(r, &["user", "frobnicate"], None).code, 2);
}

#[test]
fn app_passwords_add_list_revoke_require() {
    let root = Scratch::new("ctl");
    ok(root.path(), &["init"], None);
    ok(
        root.path(),
        &["user", "add", "me@example.com", "--password-stdin"],
        Some("first-password\n"),
    );
    // Opening the DB for writes adds nothing of ours until app passwords are used.
    let tables = |root: &Path| {
        let c = rusqlite::Connection::open(root.join("mail/users.sqlite")).unwrap();
        let n: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name LIKE 'miab_sidecar%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        n
    };
    assert_eq!(tables(root.path()), 0);
    let app = "user app-password";
    let args = |extra: &[&'static str]| -> Vec<&'static str> {
        app.split(' ').chain(extra.iter().copied()).collect()
    };
    let r = miabctl(
        root.path(),
        &args(&[
            "add",
            "me@example.com",
            "--label",
            "phone",
            "--scope",
            "imap,smtp",
        ]),
        None,
    );
    assert!(r.ok(), "{r:?}");
    let pw = r.stdout.trim();
    assert_eq!(pw.len(), 24, "{pw}");
    assert!(r.stderr.contains("shown only this once"), "{r:?}");
    assert!(tables(root.path()) > 0);
    let list = ok(root.path(), &args(&["list", "me@example.com"]), None);
    assert!(
        list.lines()
            .any(|l| l.starts_with("1\tphone\tsmtp,imap\t") && l.ends_with("\tnever")),
        "{list}"
    );
    assert!(!list.contains(pw), "the secret is never listed");
    assert_eq!(
        refused(
            root.path(),
            &args(&["add", "me@example.com", "--label", "x", "--scope", "web"]),
            None
        ),
        "Unknown scope \"web\"; use smtp, imap, pop3."
    );
    assert_eq!(
        refused(
            root.path(),
            &args(&["add", "nobody@example.com", "--label", "x"]),
            None
        ),
        "User does not exist."
    );
    ok(
        root.path(),
        &args(&["require", "me@example.com", "on"]),
        None,
    );
    ok(root.path(), &args(&["revoke", "me@example.com", "1"]), None);
    assert_eq!(
        refused(root.path(), &args(&["revoke", "me@example.com", "1"]), None),
        "Invalid user or app password id."
    );
    let json = ok(
        root.path(),
        &["--json", "user", "app-password", "list", "me@example.com"],
        None,
    );
    assert_eq!(json.trim(), "[]");
    // Removing the user takes its app passwords along.
    ok(
        root.path(),
        &args(&["add", "me@example.com", "--label", "laptop"]),
        None,
    );
    ok(root.path(), &["user", "remove", "me@example.com"], None);
    let c = rusqlite::Connection::open(root.join("mail/users.sqlite")).unwrap();
    let left: i64 = c
        .query_row("SELECT count(*) FROM miab_sidecar_app_passwords", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(left, 0);
}

#[test]
fn dkim_keys_and_dns_records() {
    use std::os::unix::fs::PermissionsExt;
    let root = Scratch::new("ctl");
    ok(root.path(), &["init"], None);
    ok(
        root.path(),
        &["user", "add", "me@example.com", "--password-stdin"],
        Some("first-password\n"),
    );
    let out = ok(root.path(), &["dkim", "generate", "--ed25519"], None);
    let rsa = root.join("mail/dkim/mail.private");
    let ed = root.join("mail/dkim/ed25519.private");
    assert_eq!(out.lines().count(), 2, "{out}");
    for key in [&rsa, &ed] {
        let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
        assert!(
            std::fs::read_to_string(key)
                .unwrap()
                .starts_with("-----BEGIN PRIVATE KEY-----")
        );
    }
    assert!(
        std::fs::read_to_string(root.join("mail/dkim/mail.txt"))
            .unwrap()
            .starts_with("mail._domainkey\tIN\tTXT\t( \"v=DKIM1; k=rsa; \"")
    );
    // A second run keeps the keys unless told otherwise.
    assert!(refused(root.path(), &["dkim", "generate"], None).contains("exists"));

    let records = ok(root.path(), &["dns", "records"], None);
    let lines: Vec<&str> = records.lines().collect();
    assert_eq!(lines[0], "example.com.\tIN\tTXT\t\"v=spf1 mx -all\"");
    assert_eq!(
        lines[3],
        "_dmarc.example.com.\tIN\tTXT\t\"v=DMARC1; p=quarantine;\""
    );
    // The DKIM public keys are the ones OpenSSL derives from the private keys.
    let openssl_pub = |key: &Path| {
        let o = Command::new("openssl")
            .args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(key)
            .output()
            .unwrap();
        assert!(o.status.success());
        o.stdout
    };
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let json = ok(
        root.path(),
        &["--json", "dns", "records", "example.com"],
        None,
    );
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    let value = |q: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["qname"] == q)
            .unwrap()["value"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        value("mail._domainkey.example.com."),
        format!("v=DKIM1; k=rsa; p={}", b64(&openssl_pub(&rsa)))
    );
    let ed_pub = openssl_pub(&ed);
    assert_eq!(
        value("ed._domainkey.example.com."),
        format!(
            "v=DKIM1; k=ed25519; p={}",
            b64(&ed_pub[ed_pub.len() - 32..])
        )
    );
    assert!(lines[1].starts_with("mail._domainkey.example.com.\tIN\tTXT\t\"v=DKIM1; k=rsa; p="));
}

/// As root, every miabctl command that reaches into a daemon's own directory
/// (`STORAGE_ROOT/mail/policyd`, `mail/authd`) works there as that directory's owner: links a
/// compromised daemon account planted (each state DB's `-wal` to a root-only file, its `-shm`
/// to a file yet to be made in a root-only place, a DB itself a link, the directory replaced
/// by a link) never make root write, chown or create anything outside.
#[test]
fn root_commands_follow_no_link_planted_in_the_daemons_directories() {
    use std::os::unix::fs::{MetadataExt, symlink};
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let root = Scratch::new("ctl");
    ok(root.path(), &["init"], None);
    ok(
        root.path(),
        &["user", "add", "me@example.com", "a-long-password"],
        None,
    );
    ok(
        root.path(),
        &[
            "user",
            "app-password",
            "add",
            "me@example.com",
            "--label",
            "phone",
        ],
        None,
    );
    // As on a box: the daemons can reach their directories.
    set_mode(root.path(), 0o755);
    set_mode(&root.join("mail"), 0o755);
    let outside = root.join("outside");
    std::fs::create_dir(&outside).unwrap();
    let (wal_victim, shm_victim) = (outside.join("shadow"), outside.join("crontab"));
    for v in [&wal_victim, &shm_victim] {
        std::fs::write(v, "root's own\n").unwrap();
        set_mode(v, 0o600);
    }
    set_mode(&outside, 0o700);
    let planted_new = outside.join("cron.d-evil");
    let policyd = root.join("mail/policyd");
    let authd = root.join("mail/authd");
    let db = policyd.join("sending.sqlite");
    std::fs::create_dir_all(&policyd).unwrap();
    std::fs::create_dir_all(&authd).unwrap();
    drop(state::sending::Sending::open(&db).unwrap());
    let usage = authd.join("app-password-use.sqlite");
    state::app_password_use::UsageLog::open(&usage)
        .unwrap()
        .record(1, 5)
        .unwrap();
    let known = authd.join("known-devices.sqlite");
    drop(state::known_devices::KnownDevices::open(&known).unwrap());
    for p in [&policyd, &authd, &db, &usage, &known] {
        std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
    }
    for d in [&db, &usage, &known] {
        for side in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{side}", d.display()));
        }
        symlink(&wal_victim, format!("{}-wal", d.display())).unwrap();
        symlink(&planted_new, format!("{}-shm", d.display())).unwrap();
    }
    // The greylist DB itself a link to a root-only file.
    symlink(&wal_victim, policyd.join("greylist.sqlite")).unwrap();
    let before = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        (std::fs::read(p).unwrap(), m.uid(), m.gid(), m.mode())
    };
    let (w, s) = (before(&wal_victim), before(&shm_victim));
    for args in [
        &["held"][..],
        &["held", "--all"],
        &["held", "release", "me@example.com"],
        &["user", "app-password", "list", "me@example.com"],
        &["sidecars", "backup-hold"],
        &["sidecars", "backup-release"],
        &["sidecars", "status"],
        &["sidecars", "repair"],
    ] {
        let r = miabctl(root.path(), args, None);
        assert_eq!(before(&wal_victim), w, "miabctl {args:?}: {}", r.stderr);
        assert_eq!(before(&shm_victim), s, "miabctl {args:?}: {}", r.stderr);
        assert!(
            !planted_new.exists(),
            "miabctl {args:?} made {}",
            planted_new.display()
        );
    }
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 2);
    // The directory itself a link to somewhere root owns: refused outright.
    let real = root.join("mail/policyd-real");
    std::fs::rename(&policyd, &real).unwrap();
    symlink(&outside, &policyd).unwrap();
    let r = miabctl(root.path(), &["held"], None);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stderr.contains("not a directory (a link?)"),
        "{}",
        r.stderr
    );
    assert_eq!(before(&wal_victim), w);
}

/// miabctl asks the daemons' storage layout for every path: with a configuration that moves
/// the sending DB and the DKIM key, `held` opens the moved DB and `dkim generate` writes the
/// key where miab-milter would read it (and `dns records` publishes that key).
#[test]
fn the_configured_layout_is_the_one_miabctl_uses() {
    let root = Scratch::new("miabctl-layout");
    ok(root.path(), &["init"], None);
    let sending = root.path().join("elsewhere/sending.sqlite");
    let key = root.path().join("keys/box.pem");
    let config = root.path().join("sidecars.toml");
    std::fs::write(
        &config,
        format!(
            "storage_root = {:?}\n[policyd.containment]\ndb = {:?}\n[milter]\nkey_file = {:?}\n",
            root.path(),
            sending,
            key
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let without = refused(root.path(), &["held"], None);
    assert!(
        without.contains("mail/policyd"),
        "without the configuration, the default path: {without}"
    );
    state::sending::Sending::open(&sending).unwrap();
    assert_eq!(
        ok(root.path(), &["--config", config, "held"], None).trim(),
        "no login is held"
    );
    let written = ok(root.path(), &["--config", config, "dkim", "generate"], None);
    assert_eq!(written.lines().next(), Some(key.to_str().unwrap()));
    assert!(key.is_file() && !root.path().join("mail/dkim/mail.private").exists());
    let records = ok(
        root.path(),
        &["--config", config, "dns", "records", "example.com"],
        None,
    );
    assert!(
        records.contains("mail._domainkey.example.com."),
        "{records}"
    );
}
