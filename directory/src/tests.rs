//! The snapshot against the SQL maps, and the file source's change detection.

use super::*;
use std::time::Duration;
use userdb::{BoxEnv, Password};

/// A box with the shapes MIAB's maps care about.
fn sample() -> (tempfile::TempDir, UserDb, BoxEnv) {
    let (dir, mut db, env) = userdb::one_user_box();
    let pw = Password::new("12345678");
    db.add_user("other@example.com", &pw, "", "0", &env)
        .unwrap();
    db.add_user("x@ext.example", &pw, "", "0", &env).unwrap();
    for (src, dst, ps) in [
        ("team@example.com", "me@example.com,x@ext.example", ""),
        ("@catch.example", "me@example.com", ""),
        ("@alias.example", "@example.com", ""),
        ("news@example.com", "", "me@example.com"),
        (
            "sales@example.com",
            "other@example.com",
            "me@example.com,other@example.com",
        ),
    ] {
        db.add_alias(src, dst, ps, false, &env).unwrap();
    }
    (dir, db, env)
}

const PROBES: &[&str] = &[
    "me@example.com",
    "ME+tag@Example.COM",
    "me+tag@example.com",
    "team@example.com",
    "team+t@example.com",
    "news@example.com",
    "sales@example.com",
    "anyone@catch.example",
    "any+x@catch.example",
    "who@alias.example",
    "nobody@example.com",
    "postmaster@example.com",
    "abuse@example.com",
    "@example.com",
    "@catch.example",
    "example.com",
    "EXAMPLE.com",
    "catch.example",
    ".example.com",
    "ext.example",
    "box.example.com",
    "nope.example",
    "",
    "@",
    "a@b@example.com",
    "me@example.com.",
    "%@example.com",
    "_xample.com",
];

/// The snapshot answers every map exactly as the SQL queries do.
#[test]
fn snapshot_answers_as_the_sql_maps() {
    let (_dir, db, _env) = sample();
    let s = Snapshot::read(&db).unwrap();
    for delims in [
        Delimiters::default(),
        Delimiters::new("+-"),
        Delimiters::new(""),
    ] {
        for &k in PROBES {
            assert_eq!(
                s.is_local_domain(k),
                db.is_local_domain(k).unwrap(),
                "{k:?}"
            );
            assert_eq!(
                s.is_mailbox(k, &delims),
                db.is_mailbox(k, &delims).unwrap(),
                "{k:?}"
            );
            assert_eq!(
                s.resolve_alias(k, &delims),
                db.resolve_alias(k, &delims).unwrap(),
                "{k:?}"
            );
            assert_eq!(
                s.sender_owners(k, &delims),
                db.sender_owners(k, &delims).unwrap(),
                "{k:?}"
            );
            for login in ["me@example.com", "other@example.com", "ME@example.com"] {
                assert_eq!(
                    s.may_send_as(login, k, &delims),
                    db.may_send_as(login, k, &delims).unwrap(),
                    "{login} {k:?}"
                );
            }
        }
    }
    let domains = db.mail_domains().unwrap();
    for d in [
        "example.com",
        "ext.example",
        "catch.example",
        "nope.example",
        "EXAMPLE.COM",
    ] {
        assert_eq!(s.is_mail_domain(d), domains.contains(d), "{d}");
    }
    let me = s.user("me@example.com").unwrap();
    assert_eq!(Some(me), db.user("me@example.com").unwrap());
    assert!(s.user("ME@example.com").is_none());
}

/// Rows no validator would let in (case, `+` and `@` in odd places, empty destinations,
/// permitted senders set and unset, auto-aliases), written with raw SQL, and keys made of
/// the same pieces: the snapshot and the SQL maps agree on every one.
#[test]
fn snapshot_matches_sql_on_odd_rows_and_keys() {
    let (_dir, db, _env) = userdb::one_user_box();
    let locals = ["a", "B", "a+x", "postmaster", "", "c-d", "ä"];
    let domains = [
        "x.example",
        "X.example",
        "y.example",
        "a@x.example",
        "ä.example",
    ];
    let mut seed = 7u64;
    let mut pick = |n: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize % n
    };
    let addr = |pick: &mut dyn FnMut(usize) -> usize| {
        format!(
            "{}@{}",
            locals[pick(locals.len())],
            domains[pick(domains.len())]
        )
    };
    for i in 0..40 {
        let src = addr(&mut pick);
        let dst = match pick(4) {
            0 => String::new(),
            1 => format!("@{}", domains[pick(domains.len())]),
            _ => format!("{},{}", addr(&mut pick), addr(&mut pick)),
        };
        let ps = match pick(3) {
            0 => None,
            1 => Some(String::new()),
            _ => Some(addr(&mut pick)),
        };
        let table = ["users", "aliases", "auto_aliases"][i % 3];
        let sql = if table == "users" {
            format!("INSERT OR IGNORE INTO users (email, password) VALUES ('{src}', 'x')")
        } else {
            format!(
                "INSERT OR IGNORE INTO {table} (source, destination, permitted_senders) VALUES ('{src}', '{dst}', {})",
                ps.map_or("NULL".into(), |p| format!("'{p}'"))
            )
        };
        rusqlite::Connection::open(db.path())
            .unwrap()
            .execute_batch(&sql)
            .unwrap();
    }
    let s = Snapshot::read(&db).unwrap();
    let delims = Delimiters::default();
    for _ in 0..400 {
        let k = match pick(4) {
            0 => domains[pick(domains.len())].to_owned(),
            1 => format!("@{}", domains[pick(domains.len())]),
            _ => addr(&mut pick),
        };
        let k = if pick(2) == 0 { k.to_uppercase() } else { k };
        assert_eq!(
            s.is_local_domain(&k),
            db.is_local_domain(&k).unwrap(),
            "{k:?}"
        );
        assert_eq!(
            s.is_mailbox(&k, &delims),
            db.is_mailbox(&k, &delims).unwrap(),
            "{k:?}"
        );
        assert_eq!(
            s.resolve_alias(&k, &delims),
            db.resolve_alias(&k, &delims).unwrap(),
            "{k:?}"
        );
        assert_eq!(
            s.sender_owners(&k, &delims),
            db.sender_owners(&k, &delims).unwrap(),
            "{k:?}"
        );
    }
    for d in domains {
        assert_eq!(
            s.is_mail_domain(d),
            db.mail_domains().unwrap().contains(d),
            "{d}"
        );
    }
}

#[test]
fn app_passwords_and_the_required_flag() {
    let (_dir, mut db, _env) = sample();
    let (row, secret) = db
        .add_app_password("me@example.com", "phone", &["imap"], 1)
        .unwrap();
    db.set_app_passwords_required("me@example.com", true)
        .unwrap();
    let s = Snapshot::read(&db).unwrap();
    let me = s.user("me@example.com").unwrap().id;
    let digest = userdb::app_password::candidate_digest(secret.expose()).unwrap();
    let m = s.app_password(me, &digest).unwrap();
    assert_eq!(Some(m), db.app_password_match(me, &digest).unwrap());
    assert_eq!(m_id(&s, me, &digest), Some(row));
    assert!(s.app_password(me + 1, &digest).is_none(), "another user's");
    assert!(s.app_passwords_required(me));
    assert!(!s.app_passwords_required(me + 1));
}

fn m_id(s: &Snapshot, uid: i64, digest: &str) -> Option<i64> {
    s.app_password(uid, digest).map(|m| m.id)
}

#[test]
fn version_moves_with_every_commit_and_with_a_replaced_file() {
    let (dir, mut db, env) = sample();
    let path = dir.path().join("users.sqlite");
    let src = SqliteSource::open(&path, Duration::from_secs(1)).unwrap();
    let v1 = src.version().unwrap();
    assert_eq!(src.version().unwrap(), v1);
    db.add_alias("new@example.com", "me@example.com", "", false, &env)
        .unwrap();
    let v2 = src.version().unwrap();
    assert_ne!(v1, v2);
    let snap = src.load().unwrap();
    assert_eq!(snap.version(), Some(v2));
    assert!(
        snap.resolve_alias("new@example.com", &Delimiters::default())
            .is_some()
    );
    let copy = dir.path().join("copy.sqlite");
    std::fs::copy(&path, &copy).unwrap();
    std::fs::rename(&copy, &path).unwrap();
    assert_ne!(src.version().unwrap(), v2, "a new inode is a new version");
}
