//! A small Mail-in-a-Box box covering every case the maps distinguish: users, `+tag`
//! extensions, multi-destination and chained aliases, a catch-all, a domain alias, an alias over
//! a user, a send-only alias, an IDN domain, auto-aliases, and aliases with and without permitted
//! senders.

use std::path::{Path, PathBuf};
use userdb::{BoxEnv, Password, UserDb};

/// The box's `PRIMARY_HOSTNAME`.
pub const HOSTNAME: &str = "box.example.com";

/// Creates the box's DB at `STORAGE_ROOT/mail/users.sqlite`, world-readable like MIAB's, and
/// returns its path.
pub fn miab_box(storage_root: &Path) -> PathBuf {
    let mail = storage_root.join("mail");
    std::fs::create_dir_all(&mail).unwrap();
    crate::set_mode(&mail, 0o755);
    let db_path = mail.join("users.sqlite");
    let mut db = UserDb::create(&db_path).unwrap();
    let env = BoxEnv {
        primary_hostname: HOSTNAME.into(),
    };
    let pw = Password::new("a-long-password");
    for u in ["me@example.com", "you@example.com", "boss@other.example"] {
        db.add_user(u, &pw, "", "0", &env).unwrap();
    }
    // As setup/firstuser.sh: the first user is an admin, so administrator@ may point at it.
    db.set_privilege("me@example.com", "admin", true).unwrap();
    let aliases: &[(&str, &str, &str)] = &[
        ("administrator@box.example.com", "me@example.com", ""),
        ("hello@example.com", "me@example.com,you@example.com", ""),
        ("chain@example.com", "hello@example.com", ""),
        ("@catch.example", "me@example.com", ""),
        ("@alias.example", "@example.com", ""),
        (
            "you@example.com",
            "you@example.com,copy@external.example",
            "you@example.com",
        ),
        ("sendonly@example.com", "", "me@example.com"),
        ("hi@bücher.example", "boss@other.example", ""),
        (
            "team@other.example",
            "boss@other.example,me@example.com",
            "",
        ),
        ("@other.example", "boss@other.example", ""),
    ];
    for (a, f, p) in aliases {
        db.add_alias(a, f, p, false, &env).unwrap();
    }
    crate::set_mode(&db_path, 0o644);
    db_path
}

/// Keys that exercise every rule, in the case mixes clients send.
pub const ADDRESS_KEYS: &[&str] = &[
    "me@example.com",
    "Me@Example.COM",
    "me+tag@example.com",
    "me+a+b@example.com",
    "hello@example.com",
    "hello+x@example.com",
    "chain@example.com",
    "nobody@example.com",
    "nobody+x@example.com",
    "anything@catch.example",
    "any+tag@catch.example",
    "me@catch.example",
    "me@alias.example",
    "me+t@alias.example",
    "nobody@alias.example",
    "you@example.com",
    "you+x@example.com",
    "sendonly@example.com",
    "sendonly+x@example.com",
    "postmaster@example.com",
    "postmaster+x@example.com",
    "abuse@other.example",
    "hostmaster@box.example.com",
    "administrator@box.example.com",
    "hi@xn--bcher-kva.example",
    "team@other.example",
    "team+x@other.example",
    "stranger@other.example",
    "someone@elsewhere.example",
    "+tag@example.com",
    "@catch.example",
    "@example.com",
    "example.com",
    "me",
];

/// Domain keys, including case, IDN and parent-style forms.
pub const DOMAIN_KEYS: &[&str] = &[
    "example.com",
    "EXAMPLE.com",
    "catch.example",
    "alias.example",
    "xn--bcher-kva.example",
    "bücher.example",
    "box.example.com",
    "other.example",
    "elsewhere.example",
    "ample.com",
    ".example.com",
];

/// SQL for a writer that commits a change and then holds the DB's lock: the one state in which
/// the daemons cannot read the directory again and must answer a temporary failure. A lock
/// held without a change is no failure, since the directory in memory is still right. The
/// change touches no MIAB table.
pub const CHANGE_THEN_LOCK: &str =
    "CREATE TABLE miab_lock_probe (x); DROP TABLE miab_lock_probe; BEGIN EXCLUSIVE";

/// Who may send as what on the [`miab_box`] DB, under MIAB's sender-login rule (the login
/// itself, `+ext`, aliases it receives or is a permitted sender of, catch-all ownership):
/// (login, address, allowed). Both policyd's envelope check and the milter's From: check are
/// tested against it.
pub const SENDER_LOGIN_CASES: &[(&str, &str, bool)] = &[
    ("me@example.com", "me@example.com", true),
    ("me@example.com", "ME@Example.COM", true),
    ("me@example.com", "me+news@example.com", true),
    ("me@example.com", "hello@example.com", true),
    ("me@example.com", "sendonly@example.com", true),
    ("me@example.com", "administrator@box.example.com", true),
    ("me@example.com", "anyone@catch.example", true),
    ("me@example.com", "team@other.example", true),
    ("me@example.com", "you@example.com", false),
    ("me@example.com", "boss@other.example", false),
    ("me@example.com", "someone@other.example", false),
    ("me@example.com", "stranger@external.example", false),
    ("me@example.com", "me@example.org", false),
    ("you@example.com", "you@example.com", true),
    ("you@example.com", "hello@example.com", true),
    ("you@example.com", "sendonly@example.com", false),
    ("you@example.com", "me@example.com", false),
    ("boss@other.example", "someone@other.example", true),
    ("boss@other.example", "hi@xn--bcher-kva.example", true),
    ("boss@other.example", "me@example.com", false),
];

/// swaks's flags for SMTP AUTH PLAIN as me@example.com with the [`miab_box`] password.
pub const SWAKS_AUTH_ME: [&str; 6] = [
    "--auth",
    "PLAIN",
    "--auth-user",
    "me@example.com",
    "--auth-password",
    "a-long-password",
];

/// Does a network list (a settings file's) take loopback, also as an IPv4-mapped IPv6
/// address (a dual-stack listener's view of 127.0.0.1), and nothing else?
pub fn takes_mapped_loopback_only(contains: impl Fn(std::net::IpAddr) -> bool) -> bool {
    ["127.0.0.1", "::ffff:127.0.0.1", "::1"]
        .iter()
        .all(|ip| contains(ip.parse().unwrap()))
        && !contains("::ffff:192.0.2.1".parse().unwrap())
}
