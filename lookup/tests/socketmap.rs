//! `miab-lookup` as Postfix sees it: the real `postmap -q` client against the running binary,
//! compared with MIAB's own `sqlite:` maps queried in Postfix's partial-key order over the same
//! DB; and raw-socket tests for bad input, concurrency, DB changes, a locked DB and shutdown.

mod common;

use common::start_lookup;
use lookup::proto;
use miab_e2e::fixture::{self, ADDRESS_KEYS, DOMAIN_KEYS};
use miab_e2e::postfix::MiabSqliteMaps;
use miab_e2e::process::DaemonProcess;
use miab_e2e::{Scratch, tools};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

struct Box {
    dir: Scratch,
    db: PathBuf,
    sock: PathBuf,
    daemon: DaemonProcess,
}

/// The fixture box and the daemon on a UNIX socket, with `--storage-root` and `--listen` given
/// as flags and the rest in a config file.
fn start(extra_lookup: &str) -> Box {
    let dir = Scratch::new("lk");
    let root = dir.mkdir("data");
    let db = fixture::miab_box(&root);
    let sock = dir.join("lookup.sock");
    let daemon = start_lookup(
        &dir,
        &format!(
            "storage_root = \"/nonexistent\"\ndb_busy_timeout_ms = 300\n[lookup]\nsocket_mode = \"0666\"\n{extra_lookup}\n"
        ),
        &[
            "--storage-root",
            root.to_str().unwrap(),
            "--listen",
            &format!("unix:{}", sock.display()),
        ],
    );
    Box {
        dir,
        db,
        sock,
        daemon,
    }
}

impl Box {
    fn map(&self, name: &str) -> String {
        format!("socketmap:unix:{}:{name}", self.sock.display())
    }

    fn connect(&self) -> UnixStream {
        let s = UnixStream::connect(&self.sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }
}

/// Sends one request, returns the reply payload.
fn ask(s: &mut UnixStream, payload: &[u8]) -> String {
    let mut out = Vec::new();
    proto::encode(payload, &mut out);
    s.write_all(&out).unwrap();
    read_reply(s).unwrap_or_else(|| panic!("connection closed after {payload:?}"))
}

/// Reads one reply; `None` on EOF.
fn read_reply(s: &mut UnixStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    loop {
        if let Some((payload, _)) = proto::decode(&buf, proto::MAX_REPLY).unwrap() {
            return Some(String::from_utf8(payload.to_vec()).unwrap());
        }
        match s.read(&mut b) {
            Ok(0) => return None,
            Ok(_) => buf.push(b[0]),
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// True if the server closed the connection (EOF or reset) without a reply.
fn closed(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 64];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

fn list(v: &str) -> Vec<String> {
    v.split([',', ' '])
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The keys Postfix's `mail_addr_find()` tries for an address, in order, each with the
/// extension it stripped: `user+ext@domain`, `user@domain`, `@domain` (lowercased).
fn postfix_keys(addr: &str) -> Vec<(String, Option<String>)> {
    let (local, domain) = match addr.rfind('@') {
        Some(i) => (&addr[..i], &addr[i..]),
        None => (addr, ""),
    };
    let mut keys = vec![(addr.to_ascii_lowercase(), None)];
    if let Some(i) = local.find('+').filter(|&i| i > 0) {
        let base = format!("{}{domain}", &local[..i]).to_ascii_lowercase();
        keys.push((base, Some(local[i..].to_owned())));
    }
    if !domain.is_empty() && !local.is_empty() {
        keys.push((domain.to_ascii_lowercase(), None));
    }
    keys
}

/// What Postfix reaches with a `sqlite:` table: the first partial key that answers. For
/// `virtual_alias_maps` (`rewrite`), an `@domain` answer gets the local part and a stripped
/// extension goes back onto every address (`propagate_unmatched_extensions`).
fn postfix_reaches(addr: &str, map: &str, rewrite: bool) -> Option<Vec<String>> {
    for (key, ext) in postfix_keys(addr) {
        let Some(value) = tools::postmap_q(None, &key, map) else {
            continue;
        };
        if !rewrite {
            return Some(list(&value));
        }
        let local = &addr[..addr.rfind('@').unwrap_or(addr.len())];
        let base = &local[..local.len() - ext.as_deref().map_or(0, str::len)];
        let value = if value.starts_with('@') {
            format!("{base}{value}")
        } else {
            value
        };
        let mut out = list(&value);
        if let Some(ext) = &ext {
            for a in &mut out {
                let at = a.rfind('@').unwrap_or(a.len());
                a.insert_str(at, ext);
            }
        }
        return Some(out);
    }
    None
}

#[test]
fn postmap_over_socketmap_matches_miab_sqlite_maps_in_postfix_order() {
    let b = start("");
    let maps = MiabSqliteMaps::write(b.dir.path(), &b.db);
    let (mut compared, mut found) = (0, 0);
    for key in ADDRESS_KEYS {
        let ours = |m: &str| tools::postmap_q(None, key, &b.map(m)).map(|v| list(&v));
        let aliases = ours("aliases");
        assert_eq!(
            aliases,
            postfix_reaches(key, &maps.aliases, true),
            "aliases {key}"
        );
        found += usize::from(aliases.is_some());
        assert_eq!(
            ours("senders"),
            postfix_reaches(key, &maps.senders, false),
            "senders {key}"
        );
        assert_eq!(
            ours("mailboxes").is_some(),
            postfix_reaches(key, &maps.mailboxes, false).is_some(),
            "mailboxes {key}"
        );
        compared += 3;
    }
    for domain in DOMAIN_KEYS {
        let ours = tools::postmap_q(None, domain, &b.map("domains"));
        let want = tools::postmap_q(None, &domain.to_ascii_lowercase(), &maps.domains);
        assert_eq!(ours.is_some(), want.is_some(), "domains {domain}");
        // Never an empty OK: Postfix 3.7 would read it as not found.
        assert!(ours.is_none_or(|v| !v.is_empty()));
        compared += 1;
    }
    assert_eq!(compared, ADDRESS_KEYS.len() * 3 + DOMAIN_KEYS.len());
    assert!(
        found > 20,
        "only {found} alias keys found: the fixture is not being read"
    );
}

#[test]
fn bad_input_gets_a_clear_answer_and_the_daemon_keeps_serving() {
    let b = start("io_timeout_secs = 1");
    let mut s = b.connect();

    // Many requests on one connection, pipelined in one write.
    let mut burst = Vec::new();
    for i in 0..500 {
        let key = if i % 2 == 0 {
            "me+x@example.com"
        } else {
            "nobody@example.com"
        };
        proto::encode(format!("mailboxes {key}").as_bytes(), &mut burst);
    }
    s.write_all(&burst).unwrap();
    for i in 0..500 {
        let want = if i % 2 == 0 { "OK 1" } else { "NOTFOUND " };
        assert_eq!(read_reply(&mut s).unwrap(), want, "reply {i}");
    }

    // Request-level errors get a reply and keep the connection.
    let r = ask(&mut s, b"virtual me@example.com");
    assert!(r.starts_with("PERM unknown map \"virtual\""), "{r}");
    assert!(ask(&mut s, b"aliases").starts_with("PERM malformed request"));
    assert_eq!(ask(&mut s, b"aliases \xffme@example.com"), "NOTFOUND ");
    assert_eq!(ask(&mut s, b"aliases "), "NOTFOUND ");
    assert_eq!(ask(&mut s, b"domains example.com"), "OK 1");
    assert_eq!(
        ask(&mut s, b"aliases hello+x@example.com"),
        "OK me+x@example.com,you+x@example.com"
    );

    // Frame-level errors close the connection with a log line.
    for bad in [
        &b"abc:xyz,"[..],
        b"5:hello;",
        b":,",
        b"99999999999:",
        b"10129:",
        b"-1:x,",
    ] {
        let mut c = b.connect();
        c.write_all(bad).unwrap();
        assert!(closed(&mut c), "{bad:?} did not close the connection");
    }
    // A request cut off mid-frame is dropped after the I/O timeout.
    let mut c = b.connect();
    c.write_all(b"25:mailboxes me@").unwrap();
    let t = Instant::now();
    assert!(closed(&mut c));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "io timeout not applied"
    );
    // So is one trickled a byte at a time, each gap shorter than the timeout.
    let mut c = b.connect();
    c.write_all(b"25:mailboxes").unwrap();
    let t = Instant::now();
    let cut = (0..16).any(|_| {
        std::thread::sleep(Duration::from_millis(300));
        c.write_all(b"x").is_err()
    });
    assert!(cut, "a trickled frame was never cut off");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // The first connection and new ones still work.
    assert_eq!(ask(&mut s, b"mailboxes me@example.com"), "OK 1");
    assert_eq!(
        ask(&mut b.connect(), b"senders sendonly@example.com"),
        "OK me@example.com"
    );
    let log = b.daemon.log();
    assert!(log.contains("malformed request frame"), "{log}");
    assert!(log.contains("not terminated by ','"), "{log}");
    assert!(log.contains("exceeds the limit of 10128"), "{log}");
    assert!(log.contains("unknown map name"), "{log}");

    // Many connections at once.
    let threads: Vec<_> = (0..48)
        .map(|t| {
            let sock = b.sock.clone();
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(sock).unwrap();
                for i in 0..50 {
                    let r = ask(&mut s, format!("aliases x{t}-{i}@catch.example").as_bytes());
                    assert_eq!(r, "OK me@example.com");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn db_changes_show_at_once_and_a_locked_or_unreadable_db_answers_temp() {
    let mut b = start("");
    let mut s = b.connect();
    assert_eq!(ask(&mut s, b"aliases new@example.com"), "NOTFOUND ");
    assert_eq!(ask(&mut s, b"domains new.example"), "NOTFOUND ");
    {
        let mut db = userdb::UserDb::open(&b.db, userdb::Access::ReadWrite).unwrap();
        let env = userdb::BoxEnv {
            primary_hostname: fixture::HOSTNAME.into(),
        };
        db.add_alias("new@example.com", "you@example.com", "", false, &env)
            .unwrap();
        db.add_user(
            "x@new.example",
            &userdb::Password::new("a-long-password"),
            "",
            "0",
            &env,
        )
        .unwrap();
    }
    assert_eq!(
        ask(&mut s, b"aliases new@example.com"),
        "OK you@example.com"
    );
    assert_eq!(ask(&mut s, b"domains new.example"), "OK 1");

    // A writer holding the lock: TEMP after the busy timeout, and Postfix's client sees a
    // table error, not "not found".
    let locker = rusqlite::Connection::open(&b.db).unwrap();
    locker.execute_batch(fixture::CHANGE_THEN_LOCK).unwrap();
    let r = ask(&mut s, b"mailboxes me@example.com");
    assert_eq!(r, "TEMP user database is locked");
    let e = tools::postmap_lookup(None, "me@example.com", &b.map("aliases")).unwrap_err();
    assert!(e.contains("fatal"), "{e}");
    locker.execute_batch("COMMIT").unwrap();
    assert_eq!(ask(&mut s, b"mailboxes me@example.com"), "OK 1");
    assert!(b.daemon.log().contains("answering TEMP"));

    // A DB that cannot be read (its bytes overwritten in place): TEMP too, and still serving.
    std::fs::write(&b.db, vec![0x5a; 8192]).unwrap();
    assert_eq!(
        ask(&mut s, b"mailboxes me@example.com"),
        "TEMP user database unavailable"
    );
    assert_eq!(
        ask(&mut s, b"nosuchmap x"),
        "PERM unknown map \"nosuchmap\": this server answers domains, mailboxes, aliases, senders"
    );

    // SIGTERM: a clean exit, and the socket file is gone.
    drop(s);
    let status = b.daemon.terminate();
    assert!(status.success(), "{status}");
    assert!(!b.sock.exists());
    assert!(b.daemon.log().contains("miab-lookup stopped"));
}

/// A users.sqlite replaced by a rename (a restore from backup) is what the next lookup reads,
/// without a restart; so is a change made with sqlite3, as MIAB's Python makes it.
#[test]
fn a_replaced_db_file_and_changes_by_sqlite3_python_and_miabctl_are_seen() {
    let b = start("");
    let key = "restored@example.com";
    assert_eq!(tools::postmap_q(None, key, &b.map("aliases")), None);
    let copy = b.db.with_extension("restore");
    std::fs::copy(&b.db, &copy).unwrap();
    let conn = rusqlite::Connection::open(&copy).unwrap();
    conn.execute(
        "INSERT INTO aliases (source, destination, permitted_senders) VALUES (?1, 'me@example.com', NULL)",
        [key],
    )
    .unwrap();
    drop(conn);
    std::fs::rename(&copy, &b.db).unwrap();
    assert_eq!(
        tools::postmap_q(None, key, &b.map("aliases")).as_deref(),
        Some("me@example.com")
    );
    let sqlite3 = miab_e2e::require_program("/usr/bin/sqlite3", "sqlite3");
    let out = std::process::Command::new(sqlite3)
        .arg(&b.db)
        .arg(format!(
            "UPDATE aliases SET destination = 'you@example.com' WHERE source = '{key}'"
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        tools::postmap_q(None, key, &b.map("aliases")).as_deref(),
        Some("you@example.com")
    );

    // MIAB's Python (the sqlite3 module, autocommit) and miabctl, one after the other.
    let python = miab_e2e::require_program("/usr/bin/python3", "python3");
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(format!(
            "import sqlite3\nc = sqlite3.connect({:?})\nc.execute(\"UPDATE aliases SET destination = 'me@example.com,you@example.com' WHERE source = '{key}'\")\nc.commit()",
            b.db.display().to_string()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        tools::postmap_q(None, key, &b.map("aliases")).as_deref(),
        Some("me@example.com,you@example.com")
    );
    let miabctl = std::path::Path::new(env!("CARGO_BIN_EXE_miab-lookup")).with_file_name("miabctl");
    assert!(
        miabctl.exists(),
        "{} is built by `cargo test --workspace`",
        miabctl.display()
    );
    let root = b.db.parent().and_then(|p| p.parent()).unwrap();
    let out = std::process::Command::new(&miabctl)
        .args(["--storage-root", root.to_str().unwrap()])
        .args(["alias", "add", "fresh@example.com", "you@example.com"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        tools::postmap_q(None, "fresh+x@example.com", &b.map("aliases")).as_deref(),
        Some("you+x@example.com")
    );
}
