//! The user DB as Mail-in-a-Box makes it: fresh schema text, a 2014-era DB upgraded by MIAB's
//! own ALTER TABLEs, MIAB's alias and sender-login semantics, and bad input.

use directory::SqlMaps;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use userdb::{Access, BoxEnv, Delimiters, Error, Password, UserDb};

fn env() -> BoxEnv {
    BoxEnv {
        primary_hostname: "box.example.com".into(),
    }
}

/// The statements exactly as MIAB's `setup/mail-users.sh` pipes them into `sqlite3`.
const MIAB_MAIL_USERS_SH: &str = "\
CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, email TEXT NOT NULL UNIQUE, password TEXT NOT NULL, extra, privileges TEXT NOT NULL DEFAULT '', quota TEXT NOT NULL DEFAULT '0');
CREATE TABLE aliases (id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL UNIQUE, destination TEXT NOT NULL, permitted_senders TEXT);
CREATE TABLE mfa (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id INTEGER NOT NULL, type TEXT NOT NULL, secret TEXT NOT NULL, mru_token TEXT, label TEXT, FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE);
CREATE TABLE auto_aliases (id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL UNIQUE, destination TEXT NOT NULL, permitted_senders TEXT);
";

/// 2013-2014 schema with rows, then MIAB migrations 4, 9, 13, 14 and 15 verbatim.
const MIAB_2014_THEN_MIGRATED: &[&str] = &[
    "CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, email TEXT NOT NULL UNIQUE, password TEXT NOT NULL, extra);",
    "CREATE TABLE aliases (id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL UNIQUE, destination TEXT NOT NULL);",
    "INSERT INTO users (email, password) VALUES ('old@example.com', '{SHA512-CRYPT}$6$uGr/TMBAVNnsxfR6$GBw70MN/awrfRbmXLNIKnvITDLT0YTTymu8ETy8gLQNJradmc4MDPTIiVpDLusOkw4d3UxP3RSZEjWj9MMi1T0');",
    "INSERT INTO aliases (source, destination) VALUES ('hello@example.com', 'old@example.com');",
    "ALTER TABLE users ADD privileges TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE aliases ADD permitted_senders TEXT",
    "CREATE TABLE mfa (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id INTEGER NOT NULL, type TEXT NOT NULL, secret TEXT NOT NULL, mru_token TEXT, label TEXT, FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE);",
    "CREATE TABLE auto_aliases (id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL UNIQUE, destination TEXT NOT NULL, permitted_senders TEXT);",
    "ALTER TABLE users ADD COLUMN quota TEXT NOT NULL DEFAULT '0';",
];

fn sqlite3(db: &Path, sql: &str) {
    let out = std::process::Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("the sqlite3 command (Debian package sqlite3) is needed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

type SchemaRow = (String, String, Option<String>);

fn schema_text(db: &Path) -> Vec<SchemaRow> {
    let c = Connection::open(db).unwrap();
    let mut s = c
        .prepare("SELECT type, name, sql FROM sqlite_master ORDER BY name")
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn tmpdb(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("mail").join("users.sqlite")
}

fn v(xs: &[&str]) -> Option<Vec<String>> {
    Some(xs.iter().map(ToString::to_string).collect())
}

#[test]
fn fresh_schema_is_byte_for_byte_miabs() {
    let dir = tempfile::tempdir().unwrap();
    let ours = tmpdb(&dir);
    UserDb::create(&ours).unwrap();
    let theirs = dir.path().join("miab.sqlite");
    for stmt in MIAB_MAIL_USERS_SH.lines() {
        sqlite3(&theirs, stmt);
    }
    assert_eq!(schema_text(&ours), schema_text(&theirs));
    let c = Connection::open(&ours).unwrap();
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
}

#[test]
fn reads_and_writes_a_2014_db_upgraded_by_miab() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.sqlite");
    for stmt in MIAB_2014_THEN_MIGRATED {
        sqlite3(&path, stmt);
    }
    let before = schema_text(&path);
    let mut db = UserDb::open(&path, Access::ReadWrite).unwrap();
    let want = userdb::schema::Schema {
        cookie: db.schema().cookie,
        ..userdb::schema::Schema::current()
    };
    assert_eq!(db.schema(), want);
    let old = db.user("old@example.com").unwrap().unwrap();
    assert_eq!(old.quota, "0");
    assert!(old.privileges.is_empty());
    assert!(userdb::password::verify_password(
        &Password::new("correct horse"),
        &old.password_hash
    ));
    let d = Delimiters::default();
    assert_eq!(
        db.resolve_alias("hello@example.com", &d).unwrap(),
        v(&["old@example.com"])
    );
    db.add_user(
        "new@example.com",
        &Password::new("12345678"),
        "",
        "1G",
        &env(),
    )
    .unwrap();
    db.set_privilege("old@example.com", "admin", true).unwrap();
    db.add_alias(
        "team@example.com",
        "old@example.com,new@example.com",
        "new@example.com",
        false,
        &env(),
    )
    .unwrap();
    assert_eq!(db.quota("new@example.com").unwrap(), "1G");
    assert!(
        db.may_send_as("new@example.com", "team@example.com", &d)
            .unwrap()
    );
    assert!(
        !db.may_send_as("old@example.com", "team@example.com", &d)
            .unwrap()
    );
    // MIAB's tables were written, never altered.
    assert_eq!(schema_text(&path), before);
}

#[test]
fn reads_every_older_generation() {
    let dir = tempfile::tempdir().unwrap();
    for n in [4, 5, 6, 7, 8] {
        let path = dir.path().join(format!("gen{n}.sqlite"));
        for stmt in &MIAB_2014_THEN_MIGRATED[..n] {
            sqlite3(&path, stmt);
        }
        let db = UserDb::open(&path, Access::ReadOnly).unwrap();
        let d = Delimiters::default();
        assert!(db.is_local_domain("example.com").unwrap(), "gen {n}");
        assert_eq!(
            db.resolve_alias("Hello+x@example.com", &d).unwrap(),
            v(&["old+x@example.com"]),
            "gen {n}"
        );
        assert_eq!(
            db.sender_owners("hello@example.com", &d).unwrap(),
            v(&["old@example.com"])
        );
        assert_eq!(db.users().unwrap().len(), 1);
        assert_eq!(db.aliases().unwrap().len(), 1);
    }
    // Writing needs at least the auto_aliases table (MIAB v55); the error says what to do.
    let path = dir.path().join("gen6.sqlite");
    let mut db = UserDb::open(&path, Access::ReadWrite).unwrap();
    let e = db
        .add_user("x@example.com", &Password::new("12345678"), "", "0", &env())
        .unwrap_err();
    assert!(e.to_string().contains("migrate.py"), "{e}");
}

struct Fixture {
    _dir: tempfile::TempDir,
    db: UserDb,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut db = UserDb::create(tmpdb(&dir)).unwrap();
    let pw = Password::new("12345678");
    for u in [
        "me@example.com",
        "you@example.com",
        "shadow@example.com",
        "other@example.net",
    ] {
        db.add_user(u, &pw, "", "0", &env()).unwrap();
    }
    db.set_privilege("me@example.com", "admin", true).unwrap();
    for (a, f, p) in [
        ("administrator@box.example.com", "me@example.com", ""),
        (
            "list@example.com",
            "me@example.com,you@example.com,friend@elsewhere.example",
            "",
        ),
        ("shadow@example.com", "me@example.com", ""),
        (
            "sales@example.com",
            "me@example.com",
            "you@example.com,other@example.net",
        ),
        ("sendonly@example.com", "", "you@example.com"),
        ("@example.net", "me@example.com", ""),
        ("@alias.example", "@example.com", ""),
        ("hi@münchen.example", "me@example.com", ""),
    ] {
        db.add_alias(a, f, p, false, &env()).unwrap();
    }
    Fixture { _dir: dir, db }
}

#[test]
fn alias_priority_cases() {
    let b = fixture();
    let d = Delimiters::default();
    let r = |a: &str| b.db.resolve_alias(a, &d).unwrap();
    // A user maps to itself; a +tag survives, as the client wrote it.
    assert_eq!(r("me@example.com"), v(&["me@example.com"]));
    assert_eq!(r("ME+News@Example.com"), v(&["me+News@example.com"]));
    // An alias shadows a user of the same address.
    assert_eq!(r("shadow@example.com"), v(&["me@example.com"]));
    // Several destinations, the tag on each.
    assert_eq!(
        r("list+x@example.com"),
        v(&[
            "me+x@example.com",
            "you+x@example.com",
            "friend+x@elsewhere.example"
        ])
    );
    // A send-only alias does not receive.
    assert_eq!(r("sendonly@example.com"), None);
    // A catch-all takes unknown addresses (without the tag) but never an existing user's.
    assert_eq!(r("random+tag@example.net"), v(&["me@example.com"]));
    assert_eq!(r("other@example.net"), v(&["other@example.net"]));
    // A domain alias keeps the whole local part, as Postfix does.
    assert_eq!(r("me@alias.example"), v(&["me@example.com"]));
    assert_eq!(r("x+y@alias.example"), v(&["x+y@example.com"]));
    // Auto-aliases lose to users, manual aliases and catch-alls.
    assert_eq!(
        r("postmaster@example.com"),
        v(&["administrator@box.example.com"])
    );
    assert_eq!(
        r("abuse@example.net"),
        v(&["administrator@box.example.com"])
    );
    // IDN: the alias is stored in IDNA; the Unicode domain is an auto domain alias.
    assert_eq!(r("hi@xn--mnchen-3ya.example"), v(&["me@example.com"]));
    assert_eq!(r("hi@münchen.example"), v(&["hi@xn--mnchen-3ya.example"]));
    assert!(b.db.is_local_domain("xn--mnchen-3ya.example").unwrap());
    assert!(b.db.is_local_domain("EXAMPLE.com").unwrap());
    assert!(!b.db.is_local_domain(".example.com").unwrap());
    assert!(!b.db.is_local_domain("elsewhere.example").unwrap());
    assert!(b.db.is_mailbox("me+x@example.com", &d).unwrap());
    assert!(!b.db.is_mailbox("list@example.com", &d).unwrap());
    // Another delimiter set.
    let dash = Delimiters::new("-");
    assert_eq!(
        b.db.resolve_alias("me-x@example.com", &dash).unwrap(),
        v(&["me-x@example.com"])
    );
}

#[test]
fn sender_owner_cases() {
    let b = fixture();
    let d = Delimiters::default();
    let may = |login: &str, sender: &str| b.db.may_send_as(login, sender, &d).unwrap();
    // Plain user, and with +ext; logins compare case-insensitively as in Postfix.
    assert!(may("me@example.com", "me@example.com"));
    assert!(may("ME@example.com", "me+x@example.com"));
    assert!(!may("you@example.com", "me@example.com"));
    // permitted_senders set: only those, whatever the destination.
    assert!(may("you@example.com", "sales@example.com"));
    assert!(may("other@example.net", "sales@example.com"));
    assert!(!may("me@example.com", "sales@example.com"));
    // NULL permitted_senders: the destinations own it.
    assert!(may("you@example.com", "list@example.com"));
    assert_eq!(
        b.db.sender_owners("list@example.com", &d).unwrap(),
        v(&[
            "me@example.com",
            "you@example.com",
            "friend@elsewhere.example"
        ])
    );
    // An alias on a user's own address takes the right away from the user (MIAB #511).
    assert!(!may("shadow@example.com", "shadow@example.com"));
    assert!(may("me@example.com", "shadow@example.com"));
    // Auto-aliases are not consulted.
    assert!(!may("me@example.com", "postmaster@example.com"));
    assert_eq!(
        b.db.sender_owners("postmaster@example.com", &d).unwrap(),
        None
    );
    // A catch-all's destination may send as any unmatched address of the domain.
    assert!(may("me@example.com", "anything@example.net"));
    assert!(may("other@example.net", "other@example.net"));
    // A domain alias's owner is the literal @example.com, which matches no login.
    assert_eq!(
        b.db.sender_owners("me@alias.example", &d).unwrap(),
        v(&["@example.com"])
    );
    assert!(!may("me@example.com", "me@alias.example"));
    // Send-only alias.
    assert!(may("you@example.com", "sendonly@example.com"));
    // Nobody owns an unknown address or the null sender.
    assert_eq!(
        b.db.sender_owners("ghost@elsewhere.example", &d).unwrap(),
        None
    );
    assert_eq!(b.db.sender_owners("", &d).unwrap(), None);
}

#[test]
fn kick_removes_unneeded_legacy_admin_aliases() {
    let mut b = fixture();
    // A manual admin@ alias to the administrator, for a domain with nothing else: MIAB's kick
    // removes it again at once, and says so.
    let o =
        b.db.add_alias(
            "admin@gone.example",
            "administrator@box.example.com",
            "",
            false,
            &env(),
        )
        .unwrap();
    assert!(
        o.text().contains(
            "removed alias admin@gone.example (was to administrator@box.example.com; domain no longer used for email)"
        ),
        "{}",
        o.text()
    );
    // Without users or aliases left, a domain loses its auto-aliases.
    b.db.remove_user("other@example.net", &env()).unwrap();
    b.db.remove_alias("@example.net", &env()).unwrap();
    assert_eq!(
        b.db.resolve_alias("postmaster@example.net", &Delimiters::default())
            .unwrap(),
        None
    );
}

#[test]
fn missing_foreign_and_readonly_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope").join("users.sqlite");
    let e = UserDb::open(&missing, Access::ReadOnly).unwrap_err();
    assert!(matches!(e, Error::Missing(_)));
    assert!(e.to_string().contains(&missing.display().to_string()));

    let garbage = dir.path().join("garbage.sqlite");
    std::fs::write(&garbage, vec![b'x'; 4096]).unwrap();
    let e = UserDb::open(&garbage, Access::ReadOnly).unwrap_err();
    assert!(matches!(e, Error::NotUserDb { .. }), "{e}");

    let foreign = dir.path().join("foreign.sqlite");
    sqlite3(&foreign, "CREATE TABLE users (name TEXT);");
    assert!(matches!(
        UserDb::open(&foreign, Access::ReadOnly),
        Err(Error::NotUserDb { .. })
    ));

    // A read-only handle cannot write, and says so; nothing is half-written.
    let path = tmpdb(&dir);
    UserDb::create(&path).unwrap();
    let mut ro = UserDb::open(&path, Access::ReadOnly).unwrap();
    let e = ro
        .add_user(
            "me@example.com",
            &Password::new("12345678"),
            "",
            "0",
            &env(),
        )
        .unwrap_err();
    assert!(matches!(e, Error::ReadOnly(_)), "{e}");
    assert!(ro.users().unwrap().is_empty());
}

#[test]
fn a_held_lock_fails_cleanly_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = tmpdb(&dir);
    let mut db = UserDb::create(&path).unwrap();
    db.add_user(
        "me@example.com",
        &Password::new("12345678"),
        "",
        "0",
        &env(),
    )
    .unwrap();
    let before = db.aliases().unwrap();
    let short = std::time::Duration::from_millis(200);

    // Another program (Roundcube, MIAB's daemon) holds the write lock.
    let holder = Connection::open(&path).unwrap();
    holder
        .execute_batch("BEGIN IMMEDIATE; UPDATE users SET quota='1G';")
        .unwrap();
    let mut w = UserDb::open_with_timeout(&path, Access::ReadWrite, short).unwrap();
    let e = w
        .add_user(
            "you@example.com",
            &Password::new("12345678"),
            "",
            "0",
            &env(),
        )
        .unwrap_err();
    assert!(matches!(e, Error::Busy(_)) && e.is_temporary(), "{e}");
    assert!(e.to_string().contains("nothing was changed"));
    // Readers still read (rollback journal: the writer has not committed).
    let r = UserDb::open_with_timeout(&path, Access::ReadOnly, short).unwrap();
    assert!(
        r.is_mailbox("me@example.com", &Delimiters::default())
            .unwrap()
    );
    holder.execute_batch("ROLLBACK").unwrap();
    assert!(w.user("you@example.com").unwrap().is_none());
    assert_eq!(w.aliases().unwrap(), before);
    w.add_user(
        "you@example.com",
        &Password::new("12345678"),
        "",
        "0",
        &env(),
    )
    .unwrap();

    // An exclusive lock (a writer committing) makes readers wait, then report a temporary error.
    let holder = Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE;").unwrap();
    let e = r
        .is_mailbox("me@example.com", &Delimiters::default())
        .unwrap_err();
    assert!(e.is_temporary(), "{e}");
    holder.execute_batch("ROLLBACK").unwrap();
    assert!(
        r.is_mailbox("you@example.com", &Delimiters::default())
            .unwrap()
    );
}

#[test]
fn hostile_input_is_refused_without_writing() {
    let mut b = fixture();
    let before = (b.db.users().unwrap(), b.db.aliases().unwrap());
    let long = "a".repeat(100_000);
    let pw = Password::new("12345678");
    for bad in [
        "",
        "   ",
        "no-at",
        "a@b",
        "a@@example.com",
        "a\0b@example.com",
        "a@exa mple.com",
        "Ü@example.com",
        "a@example.com'; DROP TABLE users; --",
        long.as_str(),
    ] {
        assert!(
            matches!(
                b.db.add_user(bad, &pw, "", "0", &env()),
                Err(Error::Invalid(_))
            ),
            "{bad:?}"
        );
        assert!(
            matches!(
                b.db.add_alias(bad, "me@example.com", "", false, &env()),
                Err(Error::Invalid(_))
            ),
            "{bad:?}"
        );
        assert!(!b.db.is_mailbox(bad, &Delimiters::default()).unwrap());
        b.db.resolve_alias(bad, &Delimiters::default()).unwrap();
        b.db.is_local_domain(bad).unwrap();
    }
    // MIAB strips alias addresses but not user addresses.
    assert!(matches!(
        b.db.add_user("a@example.com\n", &pw, "", "0", &env()),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        b.db.add_user("x@example.com", &pw, "admin\n", "0", &env()),
        Err(Error::Invalid(_))
    ));
    assert_eq!((b.db.users().unwrap(), b.db.aliases().unwrap()), before);
    assert!(!b.db.is_local_domain("%").unwrap());
    assert!(!b.db.is_local_domain("_xample.com").unwrap());
}
