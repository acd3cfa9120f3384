//! `packaging/dovecot-auth.lua`, Dovecot 2.4's passdb and userdb over miab-authd, run by the
//! real Lua 5.4 with the real LuaSocket (as Dovecot's auth-worker runs it; the `dovecot.auth`
//! constants and the request object are stood in for by a small driver): against the real
//! `miab-authd`, with miab-authd away, and against a hostile peer on its socket. The live
//! Debian 13 box (`tests/live-box/trixie`) runs it inside Dovecot 2.4 itself.

use miab_e2e::Scratch;
use miab_e2e::fixture::miab_box;
use miab_e2e::process::DaemonProcess;
use miab_e2e::tools::{Run, run};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Loads the script as Dovecot would, then runs one call and prints its result and fields
/// (sorted) and what the script logged.
const DRIVER: &str = r#"
local script, socket, op, user, pass = arg[1], arg[2], arg[3], arg[4], arg[5]
dovecot = { auth = {
  PASSDB_RESULT_OK = "PASSDB_OK", PASSDB_RESULT_PASSWORD_MISMATCH = "PASSDB_MISMATCH",
  PASSDB_RESULT_INTERNAL_FAILURE = "PASSDB_INTERNAL", PASSDB_RESULT_USER_UNKNOWN = "PASSDB_UNKNOWN",
  PASSDB_RESULT_SCHEME_NOT_AVAILABLE = "PASSDB_SCHEME",
  USERDB_RESULT_OK = "USERDB_OK", USERDB_RESULT_USER_UNKNOWN = "USERDB_UNKNOWN",
  USERDB_RESULT_INTERNAL_FAILURE = "USERDB_INTERNAL" } }
dofile(script)
script_init({ socket = socket, timeout = "1" })
local logged = {}
local req = { user = user, service = "imap", remote_ip = "192.0.2.7", local_ip = "127.0.0.1" }
function req:log_warning(m) logged[#logged + 1] = m end
function req:log_info(m) logged[#logged + 1] = m end
function req:log_error(m) logged[#logged + 1] = m end
local result, fields
if op == "verify" then
  result, fields = auth_password_verify(req, pass)
elseif op == "lookup" then
  result, fields = auth_userdb_lookup(req)
elseif op == "credentials" then
  result, fields = auth_passdb_lookup(req)
else
  result, fields = "ITERATE", auth_userdb_iterate()
end
print("RESULT " .. result)
if type(fields) == "table" then
  local keys = {}
  for k in pairs(fields) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do print("FIELD " .. k .. "=" .. tostring(fields[k])) end
end
for _, m in ipairs(logged) do print("LOG " .. m) end
"#;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/dovecot-auth.lua")
}

fn lua(dir: &Scratch, socket: &Path, op: &str, user: &str, pass: &str) -> Run {
    let driver = dir.join("driver.lua");
    std::fs::write(&driver, DRIVER).unwrap();
    let mut cmd = Command::new("lua5.4");
    cmd.arg(&driver)
        .arg(script())
        .arg(socket)
        .arg(op)
        .arg(user)
        .arg(pass);
    let r = run(&mut cmd, None);
    assert!(
        r.ok(),
        "lua5.4 with LuaSocket (Debian: lua5.4 lua-socket) must run the script: {r:?}"
    );
    r
}

fn result(r: &Run) -> &str {
    r.stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_default()
}

fn field<'a>(r: &'a Run, name: &str) -> Option<&'a str> {
    r.stdout
        .lines()
        .filter_map(|l| l.strip_prefix("FIELD "))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
}

fn start_authd(dir: &Scratch) -> DaemonProcess {
    let config = format!(
        "storage_root = \"{}\"\n[authd]\nfailure_delay_ms = 0\n",
        dir.path().display()
    );
    let listen = format!("unix:{}", dir.join("pf.sock").display());
    let helper = format!("unix:{}", dir.join("cp.sock").display());
    let d = DaemonProcess::with_config(
        Path::new(env!("CARGO_BIN_EXE_miab-authd")),
        dir,
        "authd",
        &config,
        &["--listen", &listen, "--checkpassword-listen", &helper],
    );
    for _ in 0..100 {
        if dir.join("cp.sock").exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    d
}

#[test]
fn logins_and_lookups_through_the_real_miab_authd() {
    let dir = Scratch::new("lua");
    miab_box(dir.path());
    let mut d = start_authd(&dir);
    let sock = dir.join("cp.sock");

    let ok = lua(&dir, &sock, "verify", "Me@Example.com", "a-long-password");
    assert_eq!(result(&ok), "PASSDB_OK", "{ok:?}\n{}", d.log());
    assert_eq!(field(&ok, "user"), Some("me@example.com"), "{ok:?}");
    let home = dir.join("mail/mailboxes/example.com/me");
    assert_eq!(field(&ok, "userdb_home"), home.to_str(), "{ok:?}");
    assert_eq!(field(&ok, "userdb_uid"), Some("mail"));
    assert_eq!(field(&ok, "userdb_gid"), Some("mail"));
    assert_eq!(field(&ok, "userdb_quota_storage_size"), Some("0"));
    assert_eq!(field(&ok, "userdb_quota_storage_grace"), Some("0"));
    assert!(!ok.stdout.contains("quota_rule"), "{ok:?}");

    for (user, pass) in [
        ("me@example.com", "wrong"),
        ("nobody@example.com", "a-long-password"),
        // Bytes that end a line or a field in the protocol stay inside the password.
        ("me@example.com", "a-long-password\n\tAUTH\t2\tPLAIN"),
        (
            "me@example.com\tresp=AG1lQGV4YW1wbGUuY29tAGEtbG9uZy1wYXNzd29yZA==",
            "x",
        ),
        ("me@example.com", "pässwörd ☃"),
    ] {
        let r = lua(&dir, &sock, "verify", user, pass);
        assert_eq!(result(&r), "PASSDB_MISMATCH", "{user:?} {r:?}");
        assert!(!r.stdout.contains(pass), "a password in the output: {r:?}");
    }

    let look = lua(&dir, &sock, "lookup", "You@Example.com", "");
    assert_eq!(result(&look), "USERDB_OK", "{look:?}");
    assert_eq!(field(&look, "user"), Some("you@example.com"));
    assert_eq!(field(&look, "uid"), Some("mail"));
    assert_eq!(field(&look, "quota_storage_size"), Some("0"));
    let none = lua(&dir, &sock, "lookup", "nobody@example.com", "");
    assert_eq!(result(&none), "USERDB_UNKNOWN", "{none:?}");

    // Stored hashes are never handed out; listing is the SQL userdb's.
    let cred = lua(&dir, &sock, "credentials", "me@example.com", "");
    assert_eq!(result(&cred), "PASSDB_SCHEME", "{cred:?}");
    let it = lua(&dir, &sock, "iterate", "", "");
    assert_eq!(result(&it), "ITERATE", "{it:?}");

    let log = d.log();
    assert!(log.contains("service=\"imap\""), "{log}");
    assert!(log.contains("rip=\"192.0.2.7\""), "{log}");
    assert!(!log.contains("a-long-password"), "{log}");
    d.terminate();

    // miab-authd away: a temporary failure, never a wrong password, and no password logged.
    let away = lua(&dir, &sock, "verify", "me@example.com", "a-long-password");
    assert_eq!(result(&away), "PASSDB_INTERNAL", "{away:?}");
    assert!(
        away.stdout.contains("LOG miab-authd unavailable"),
        "{away:?}"
    );
    assert!(!away.stdout.contains("a-long-password"), "{away:?}");
    let away = lua(&dir, &sock, "lookup", "me@example.com", "");
    assert_eq!(result(&away), "USERDB_INTERNAL", "{away:?}");
}

/// A peer on the socket that sends `reply` (after the handshake, if `handshake`) to every
/// connection, or nothing at all if `reply` is `None`.
fn hostile(
    sock: &Path,
    handshake: bool,
    reply: Option<&'static str>,
) -> std::thread::JoinHandle<()> {
    let _ = std::fs::remove_file(sock);
    let listener = UnixListener::bind(sock).unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            if handshake {
                let _ = s.write_all(b"VERSION\t1\t2\nSPID\t1\nCUID\t1\nDONE\n");
            }
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            for _ in 0..3 {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
            }
            match reply {
                Some(text) => {
                    let _ = s.write_all(text.as_bytes());
                }
                None => std::thread::sleep(Duration::from_secs(3)),
            }
        }
    })
}

#[test]
fn a_hostile_or_broken_peer_is_a_temporary_failure_never_a_login() {
    let dir = Scratch::new("lua-hostile");
    let sock = dir.join("evil.sock");
    let cases: &[(bool, Option<&'static str>, &str)] = &[
        (false, Some(""), "no handshake"),
        (true, Some("OK\t1\n"), "OK without user"),
        (true, Some("OK\t1\tuserdb_home=/x\n"), "OK without user"),
        (true, Some("BOGUS\t1\n"), "unknown reply"),
        (true, Some("FAIL\t1\ttemp\n"), "temporary failure"),
        (true, Some("FAIL\t1\tcode=temp_fail\n"), "temporary failure"),
        (true, Some(""), "closed before replying"),
        (true, None, "silent past the timeout"),
    ];
    let long: &'static str =
        format!("OK\t1\tuser=me@example.com\tx={}\n", "a".repeat(70_000)).leak();
    let cases = [cases, &[(true, Some(long), "an over-long line")]].concat();
    for (handshake, reply, what) in &cases {
        let peer = hostile(&sock, *handshake, *reply);
        let t0 = Instant::now();
        let r = lua(&dir, &sock, "verify", "me@example.com", "pw");
        assert_eq!(result(&r), "PASSDB_INTERNAL", "{what}: {r:?}");
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "{what}: the timeout holds"
        );
        peer.join().unwrap();
    }
    // A lookup answered with USER and no name is no user.
    let peer = hostile(&sock, true, Some("USER\t1\t\n"));
    let r = lua(&dir, &sock, "lookup", "me@example.com", "");
    assert_eq!(result(&r), "USERDB_INTERNAL", "{r:?}");
    peer.join().unwrap();
    // A plain FAIL is a wrong password.
    let peer = hostile(&sock, true, Some("FAIL\t1\n"));
    let r = lua(&dir, &sock, "verify", "me@example.com", "pw");
    assert_eq!(result(&r), "PASSDB_MISMATCH", "{r:?}");
    peer.join().unwrap();
}

/// MIAB's quota column as Dovecot 2.4 takes it: the size, and a tenth of it in bytes as
/// grace, computed as SQLite computes the translated user_query.
#[test]
fn quotas_become_storage_size_and_a_tenth_as_grace() {
    let dir = Scratch::new("lua-quota");
    let sock = dir.join("q.sock");
    for (quota, reply, grace) in [
        (
            "5G",
            "OK\t1\tuser=me@example.com\tquota_rule=*:bytes=5G\n",
            "536870912",
        ),
        (
            "500M",
            "OK\t1\tuser=me@example.com\tquota_rule=*:bytes=500M\n",
            "52428800",
        ),
        (
            "1000",
            "OK\t1\tuser=me@example.com\tquota_rule=*:bytes=1000\n",
            "100",
        ),
        (
            "0",
            "OK\t1\tuser=me@example.com\tquota_rule=*:bytes=0\n",
            "0",
        ),
    ] {
        let peer = hostile(&sock, true, Some(reply));
        let r = lua(&dir, &sock, "verify", "me@example.com", "pw");
        assert_eq!(result(&r), "PASSDB_OK", "{r:?}");
        assert_eq!(field(&r, "userdb_quota_storage_size"), Some(quota), "{r:?}");
        assert_eq!(
            field(&r, "userdb_quota_storage_grace"),
            Some(grace),
            "{r:?}"
        );
        peer.join().unwrap();
    }
}
