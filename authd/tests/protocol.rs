//! `miab-authd` over a raw socket: the handshake Postfix needs, PLAIN and LOGIN, folding and
//! the canonical user, bad input, thousands of exchanges in flight, the failure delay (which
//! holds up only its own connection), the plaintext rule and a locked DB. Most tests serve
//! `authd::run` in this process; the one that checks that no password reaches the most
//! verbose log, and the locked-DB one, start the real binary.

use base64::Engine as _;
use miab_e2e::fixture::miab_box;
use miab_e2e::inproc::InProcess;
use miab_e2e::process::DaemonProcess;
use miab_e2e::{Scratch, free_port};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// `authd::run` in this process, over the box in `dir`, with `extra` in `[authd]`.
fn start(dir: &Scratch, extra: &str) -> (InProcess, u16) {
    let config = format!(
        "storage_root = \"{}\"\n[authd]\ncheckpassword_listen = \"\"\n{extra}\n",
        dir.path().display()
    );
    let config = daemon::Config::from_toml(&config, &dir.join("authd.toml")).unwrap();
    let section = config.section::<authd::settings::Settings>().unwrap();
    let d = InProcess::start(
        "info",
        move || async move { authd::State::open(&config, &section).await.unwrap() },
        |listener, state, shutdown| authd::run(listener, None, state, shutdown),
    );
    let port = d.port;
    (d, port)
}

fn start_logging(dir: &Scratch, extra: &str, level: &str) -> (DaemonProcess, u16) {
    let port = free_port();
    let config = format!(
        "storage_root = \"{}\"\n[authd]\ncheckpassword_listen = \"\"\n{extra}\n",
        dir.path().display()
    );
    let listen = format!("inet:127.0.0.1:{port}");
    let path = dir.join("authd.toml");
    std::fs::write(&path, config).unwrap();
    let d = DaemonProcess::start_logging(
        Path::new(env!("CARGO_BIN_EXE_miab-authd")),
        &["--config", path.to_str().unwrap(), "--listen", &listen],
        dir.join("authd.log"),
        level,
    );
    (d, port)
}

struct Client {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Client {
    /// Connects and reads the handshake up to DONE.
    fn connect(port: u16) -> (Client, Vec<String>) {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut c = Client {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        };
        c.send("VERSION\t1\t0\nCPID\t4711\n");
        let mut hs = Vec::new();
        loop {
            let l = c.line().expect("handshake");
            let done = l == "DONE";
            hs.push(l);
            if done {
                return (c, hs);
            }
        }
    }
    fn send(&mut self, s: &str) {
        self.w.write_all(s.as_bytes()).unwrap();
    }
    /// One reply line without its LF; `None` when the server closed.
    fn line(&mut self) -> Option<String> {
        let mut l = String::new();
        match self.r.read_line(&mut l) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(l.trim_end_matches('\n').to_owned()),
        }
    }
    fn ask(&mut self, s: &str) -> String {
        self.send(s);
        self.line().expect("a reply")
    }
}

fn plain(id: u32, user: &str, pass: &str) -> String {
    format!(
        "AUTH\t{id}\tPLAIN\tservice=smtp\tnologin\tlip=127.0.0.1\trip=127.0.0.1\tresp={}\n",
        b64(&format!("\0{user}\0{pass}"))
    )
}

#[test]
fn postfix_exchanges() {
    let dir = Scratch::new("aut");
    miab_box(dir.path());
    // The most verbose logging: no password, in clear or in base64, may reach it.
    let (d, port) = start_logging(&dir, "failure_delay_ms = 0", "trace");
    let (mut c, hs) = Client::connect(port);
    let kinds: Vec<&str> = hs.iter().map(|l| l.split('\t').next().unwrap()).collect();
    assert_eq!(
        kinds,
        ["VERSION", "MECH", "MECH", "SPID", "CUID", "COOKIE", "DONE"],
        "MECH before SPID"
    );
    assert_eq!(hs[0], "VERSION\t1\t2");
    assert_eq!(hs[1], "MECH\tPLAIN\tplaintext");
    assert_eq!(hs[5].len(), "COOKIE\t".len() + 32);

    assert_eq!(
        c.ask(&plain(1, "me@example.com", "a-long-password")),
        "OK\t1\tuser=me@example.com"
    );
    assert_eq!(
        c.ask(&plain(2, " Me@EXAMPLE.com", "a-long-password")),
        "OK\t2\tuser=me@example.com",
        "%Lu"
    );
    assert_eq!(c.ask(&plain(3, "me@example.com", "wrong")), "FAIL\t3");
    assert_eq!(
        c.ask(&plain(4, "nobody@example.com", "a-long-password")),
        "FAIL\t4"
    );
    // A send-only alias is no login.
    assert_eq!(
        c.ask(&plain(5, "sendonly@example.com", "a-long-password")),
        "FAIL\t5"
    );

    // PLAIN without an initial response, then LOGIN step by step.
    assert_eq!(
        c.ask("AUTH\t6\tPLAIN\tservice=smtp\tnologin\trip=127.0.0.1\n"),
        "CONT\t6\t"
    );
    assert_eq!(
        c.ask(&format!(
            "CONT\t6\t{}\n",
            b64("\0you@example.com\0a-long-password")
        )),
        "OK\t6\tuser=you@example.com"
    );
    assert_eq!(
        c.ask("AUTH\t7\tLOGIN\tservice=smtp\tnologin\trip=127.0.0.1\n"),
        "CONT\t7\tVXNlcm5hbWU6"
    );
    assert_eq!(
        c.ask(&format!("CONT\t7\t{}\n", b64("boss@other.example"))),
        "CONT\t7\tUGFzc3dvcmQ6"
    );
    assert_eq!(
        c.ask(&format!("CONT\t7\t{}\n", b64("a-long-password"))),
        "OK\t7\tuser=boss@other.example"
    );
    assert_eq!(
        c.ask(&format!(
            "AUTH\t8\tLOGIN\tservice=smtp\trip=127.0.0.1\tresp={}\n",
            b64("me@example.com")
        )),
        "CONT\t8\tUGFzc3dvcmQ6"
    );
    assert_eq!(c.ask(&format!("CONT\t8\t{}\n", b64("wrong"))), "FAIL\t8");

    // Clear answers that keep the connection: unknown id, bad base64, unknown mechanism,
    // a master-user authzid, a reused id.
    assert_eq!(
        c.ask("CONT\t99\tAAAA\n"),
        "FAIL\t99\treason=unknown authentication request"
    );
    assert_eq!(
        c.ask("AUTH\t9\tPLAIN\tservice=smtp\trip=127.0.0.1\tresp=!!!\n"),
        "FAIL\t9"
    );
    assert_eq!(
        c.ask("AUTH\t10\tCRAM-MD5\tservice=smtp\trip=127.0.0.1\n"),
        "FAIL\t10\treason=Unsupported authentication mechanism."
    );
    let master = format!(
        "AUTH\t11\tPLAIN\tservice=smtp\trip=127.0.0.1\tresp={}\n",
        b64("you@example.com\0me@example.com\0a-long-password")
    );
    assert_eq!(c.ask(&master), "FAIL\t11");
    c.send("AUTH\t12\tLOGIN\tservice=smtp\trip=127.0.0.1\n");
    assert_eq!(c.line().unwrap(), "CONT\t12\tVXNlcm5hbWU6");
    assert_eq!(
        c.ask("AUTH\t12\tLOGIN\tservice=smtp\trip=127.0.0.1\n"),
        "FAIL\t12\treason=request id already in use"
    );
    // Plaintext from a non-loopback client without TLS: refused with Dovecot's words.
    assert_eq!(
        c.ask(
            &plain(13, "me@example.com", "a-long-password")
                .replace("rip=127.0.0.1", "rip=192.0.2.9")
        ),
        "FAIL\t13\treason=Plaintext authentication disallowed on non-secure (SSL/TLS) connections."
    );
    let secured = plain(14, "me@example.com", "a-long-password")
        .replace("rip=127.0.0.1", "rip=192.0.2.9\tsecured");
    assert_eq!(c.ask(&secured), "OK\t14\tuser=me@example.com");

    // Lines that close the connection: unknown command, too long, another protocol version.
    for bad in [
        "REQUEST\t1\t2\t3\n".to_owned(),
        format!("AUTH\t1\tPLAIN\tresp={}\n", "A".repeat(20_000)),
        "VERSION\t2\t0\n".to_owned(),
    ] {
        let (mut b, _) = Client::connect(port);
        b.send(&bad);
        assert_eq!(b.line(), None, "closed after {:?}", &bad[..12]);
    }
    let log = d.log();
    assert!(
        log.contains("unknown command") && log.contains("longer than 16384"),
        "{log}"
    );
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "the check is worth something only at trace level: {log}"
    );
    assert!(!log.contains("a-long-password"), "no password in the log");
    let encoded = b64("\0me@example.com\0a-long-password");
    assert!(!log.contains(&encoded), "no SASL response in the log");
    assert!(!log.contains("{SHA512-CRYPT}"), "no hash in the log");
}

#[test]
fn ten_thousand_exchanges_in_flight_on_one_connection() {
    let dir = Scratch::new("aut");
    miab_box(dir.path());
    let (_d, port) = start(&dir, "failure_delay_ms = 0");
    let (mut c, _) = Client::connect(port);
    let n = 10_000u32;
    let mut all = String::new();
    for id in 1..=n {
        all.push_str(&format!("AUTH\t{id}\tLOGIN\tservice=smtp\trip=127.0.0.1\n"));
    }
    c.send(&all);
    for id in 1..=n {
        assert_eq!(c.line().unwrap(), format!("CONT\t{id}\tVXNlcm5hbWU6"));
    }
    let mut all = String::new();
    for id in (1..=n).rev() {
        all.push_str(&format!(
            "CONT\t{id}\t{}\n",
            b64(&format!("u{id}@example.com"))
        ));
    }
    c.send(&all);
    for id in (1..=n).rev() {
        assert_eq!(c.line().unwrap(), format!("CONT\t{id}\tUGFzc3dvcmQ6"));
    }
    // Finish a few; the rest stay pending until the connection ends.
    let user = b64("me@example.com");
    assert_eq!(
        c.ask(&format!(
            "AUTH\t{}\tLOGIN\tservice=smtp\trip=127.0.0.1\tresp={user}\n",
            n + 1
        )),
        format!("CONT\t{}\tUGFzc3dvcmQ6", n + 1)
    );
    assert_eq!(
        c.ask(&format!("CONT\t{}\t{}\n", n + 1, b64("a-long-password"))),
        format!("OK\t{}\tuser=me@example.com", n + 1)
    );
}

#[test]
fn failure_delay_and_a_locked_db() {
    let dir = Scratch::new("aut");
    let db = miab_box(dir.path());
    let (d, port) = start(&dir, "failure_delay_ms = 700");
    let (mut slow, _) = Client::connect(port);
    let (mut fast, _) = Client::connect(port);
    let t = Instant::now();
    slow.send(&plain(1, "me@example.com", "wrong"));
    // Another client is answered at once while the failure waits.
    assert_eq!(
        fast.ask(&plain(1, "me@example.com", "a-long-password")),
        "OK\t1\tuser=me@example.com"
    );
    assert!(
        t.elapsed() < Duration::from_millis(600),
        "not held up: {:?}",
        t.elapsed()
    );
    assert_eq!(slow.line().unwrap(), "FAIL\t1");
    assert!(
        t.elapsed() >= Duration::from_millis(700),
        "{:?}",
        t.elapsed()
    );
    drop(d);

    // A DB that cannot be read: a temporary failure, not a wrong password.
    let cfg = format!(
        "db_busy_timeout_ms = 200\nstorage_root = \"{}\"\n[authd]\nfailure_delay_ms = 0\ncheckpassword_listen = \"\"\n",
        dir.path().display()
    );
    let port = free_port();
    let listen = format!("inet:127.0.0.1:{port}");
    let _d = DaemonProcess::with_config(
        Path::new(env!("CARGO_BIN_EXE_miab-authd")),
        &dir,
        "authd2",
        &cfg,
        &["--listen", &listen],
    );
    let (mut c, _) = Client::connect(port);
    let lock = rusqlite::Connection::open(&db).unwrap();
    lock.execute_batch(miab_e2e::fixture::CHANGE_THEN_LOCK)
        .unwrap();
    assert_eq!(
        c.ask(&plain(1, "me@example.com", "a-long-password")),
        "FAIL\t1\ttemp\tcode=temp_fail\treason=Temporary authentication failure"
    );
    lock.execute_batch("COMMIT").unwrap();
    assert_eq!(
        c.ask(&plain(2, "me@example.com", "a-long-password")),
        "OK\t2\tuser=me@example.com"
    );
}

#[test]
fn brute_force_is_braked_per_client_and_the_cache_follows_password_changes() {
    let dir = Scratch::new("aut");
    let db = miab_box(dir.path());
    let (d, port) = start(
        &dir,
        "failure_delay_ms = 100\nip_failures_per_minute = 3\nlogin_failures_per_minute = 0",
    );
    let from = |ip: &str, id: u32, user: &str, pass: &str| {
        plain(id, user, pass).replace("rip=127.0.0.1", &format!("rip={ip}\tsecured"))
    };
    let (mut attacker, _) = Client::connect(port);
    let (mut other, _) = Client::connect(port);
    let t = Instant::now();
    for id in 1..=4 {
        assert_eq!(
            attacker.ask(&from("192.0.2.9", id, "me@example.com", "guess")),
            format!("FAIL\t{id}")
        );
    }
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "each failure was delayed"
    );
    // Now refused at once, even with the right password.
    let t = Instant::now();
    assert_eq!(
        attacker.ask(&from("192.0.2.9", 5, "me@example.com", "a-long-password")),
        "FAIL\t5\treason=Too many failed authentications; try again later."
    );
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "no delay, no hash: {:?}",
        t.elapsed()
    );
    // Another client logs in as usual, the same login included.
    assert_eq!(
        other.ask(&from("192.0.2.10", 1, "me@example.com", "a-long-password")),
        "OK\t1\tuser=me@example.com"
    );
    let log = d.log();
    assert!(
        log.contains(
            "authentication brake: too many failures from rip=192.0.2.9, refused for 300 s"
        ),
        "{log}"
    );
    assert_eq!(
        log.matches("too many failures from rip=192.0.2.9").count(),
        1,
        "logged once"
    );

    // A remembered success stops counting the moment the password changes.
    assert_eq!(
        other.ask(&from("192.0.2.10", 2, "me@example.com", "a-long-password")),
        "OK\t2\tuser=me@example.com"
    );
    let hit = miab_e2e::wait_until(Duration::from_secs(5), || {
        let l = d.log();
        l.contains("with=\"remembered password\"").then_some(())
    });
    assert!(
        hit.is_some(),
        "the second login is a cache hit: {}",
        d.log()
    );
    let mut udb = userdb::UserDb::open(&db, userdb::Access::ReadWrite).unwrap();
    udb.set_password(
        "me@example.com",
        &userdb::Password::new("a-new-long-password"),
    )
    .unwrap();
    assert_eq!(
        other.ask(&from("192.0.2.10", 3, "me@example.com", "a-long-password")),
        "FAIL\t3"
    );
    assert_eq!(
        other.ask(&from(
            "192.0.2.10",
            4,
            "me@example.com",
            "a-new-long-password"
        )),
        "OK\t4\tuser=me@example.com"
    );
}

/// A login with a line break in it cannot write a line of its own (say, the brake line that
/// fail2ban acts on): it is refused as malformed, logged once without it, and the connection
/// goes on. (The log writer escapes any control character that would still reach a line.)
#[test]
fn a_login_with_a_line_break_writes_no_line_of_its_own() {
    let dir = Scratch::new("aut");
    miab_box(dir.path());
    let (d, port) = start(&dir, "failure_delay_ms = 0");
    let (mut c, _) = Client::connect(port);
    let forged = "x\nWARN authd::guard: authentication brake: too many failures from rip=198.51.100.7, refused for 300 s";
    let r = c.ask(&plain(1, forged, "wrong-password"));
    assert!(r.starts_with("FAIL\t1"), "{r}");
    let r = c.ask(&format!(
        "AUTH\t3\tLOGIN\tservice=smtp\tnologin\tlip=127.0.0.1\trip=127.0.0.1\tresp={}\n",
        b64(forged)
    ));
    assert!(r.starts_with("FAIL\t3"), "{r}");
    let r = c.ask(&plain(2, "me@example.com", "a-long-password"));
    assert!(r.starts_with("OK\t2"), "the connection goes on: {r}");
    let log = miab_e2e::wait_until(Duration::from_secs(5), || {
        let l = d.log();
        (l.matches("malformed SASL response").count() >= 4).then_some(l)
    })
    .expect("both refusals are logged");
    assert!(!log.contains("198.51.100.7"), "{log}");
    assert!(!log.lines().any(|l| l.starts_with("WARN")), "{log}");
}

/// An exchange the client walked away from (AUTH LOGIN, then nothing) expires: its CONT is
/// refused afterwards, and its id can start afresh.
#[test]
fn an_aborted_exchange_expires() {
    let dir = Scratch::new("aut");
    miab_box(dir.path());
    let (_d, port) = start(&dir, "failure_delay_ms = 0\nexchange_timeout_secs = 1");
    let (mut c, _) = Client::connect(port);
    let login = "AUTH\t7\tLOGIN\tservice=smtp\tnologin\tlip=127.0.0.1\trip=127.0.0.1\n";
    assert!(c.ask(login).starts_with("CONT\t7\t"));
    std::thread::sleep(Duration::from_millis(1300));
    let late = c.ask(&format!("CONT\t7\t{}\n", b64("me@example.com")));
    assert!(late.starts_with("FAIL\t7"), "{late}");
    assert!(
        c.ask(login).starts_with("CONT\t7\t"),
        "the id is free again"
    );
    assert!(
        c.ask(&format!("CONT\t7\t{}\n", b64("me@example.com")))
            .starts_with("CONT\t7\t")
    );
    let ok = c.ask(&format!("CONT\t7\t{}\n", b64("a-long-password")));
    assert!(ok.starts_with("OK\t7"), "{ok}");
}

/// Strangers' failures cannot keep a user out: from a network that logged in as the user
/// before, the right password still works; strangers spreading guesses over many addresses
/// are still refused; behind the trusted proxy (webmail on 127.0.0.1) one user's failures
/// refuse neither the next user nor the proxy itself.
#[test]
fn strangers_cannot_lock_out_a_user_and_webmail_users_are_braked_apart() {
    let dir = Scratch::new("aut");
    miab_box(dir.path());
    let (d, port) = start(
        &dir,
        "failure_delay_ms = 0\nip_failures_per_minute = 3\nlogin_failures_per_minute = 5",
    );
    let from = |ip: &str, id: u32, user: &str, pass: &str| {
        plain(id, user, pass).replace("rip=127.0.0.1", &format!("rip={ip}\tsecured"))
    };
    let (mut c, _) = Client::connect(port);
    let ok = |r: String, id: u32| assert!(r.starts_with(&format!("OK\t{id}")), "{r}");
    let fail = |r: String, id: u32| assert!(r.starts_with(&format!("FAIL\t{id}")), "{r}");
    // Her phone logs in, then strangers guess from six addresses, two guesses each.
    ok(
        c.ask(&from(
            "198.51.100.20",
            1,
            "me@example.com",
            "a-long-password",
        )),
        1,
    );
    let mut id = 10;
    for n in 1..=6 {
        for _ in 0..2 {
            id += 1;
            fail(
                c.ask(&from(
                    &format!("203.0.113.{n}"),
                    id,
                    "me@example.com",
                    "guess",
                )),
                id,
            );
        }
    }
    // A stranger with the right password is refused without a check...
    let refused = c.ask(&from(
        "192.0.2.77",
        100,
        "me@example.com",
        "a-long-password",
    ));
    assert_eq!(
        refused,
        "FAIL\t100\treason=Too many failed authentications; try again later."
    );
    // ...her phone is not.
    ok(
        c.ask(&from(
            "198.51.100.20",
            101,
            "me@example.com",
            "a-long-password",
        )),
        101,
    );
    // Webmail: you@ fails six times behind 127.0.0.1; me@ logs in there, you@ is refused
    // there but not from her own laptop.
    ok(
        c.ask(&from(
            "192.0.2.50",
            102,
            "you@example.com",
            "a-long-password",
        )),
        102,
    );
    for i in 0..6 {
        fail(
            c.ask(&from("127.0.0.1", 110 + i, "you@example.com", "stale")),
            110 + i,
        );
    }
    ok(
        c.ask(&from("127.0.0.1", 120, "me@example.com", "a-long-password")),
        120,
    );
    fail(
        c.ask(&from(
            "127.0.0.1",
            121,
            "you@example.com",
            "a-long-password",
        )),
        121,
    );
    ok(
        c.ask(&from(
            "192.0.2.50",
            122,
            "you@example.com",
            "a-long-password",
        )),
        122,
    );
    ok(
        c.ask(&from(
            "127.0.0.1",
            123,
            "boss@other.example",
            "a-long-password",
        )),
        123,
    );
    let log = d.log();
    assert!(log.contains("for login=\"me@example.com\""), "{log}");
    assert!(log.contains("through a trusted proxy"), "{log}");
    assert!(
        !log.contains("from rip=127.0.0.1"),
        "the proxy itself is never braked: {log}"
    );
}
