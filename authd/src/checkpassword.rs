//! `miab-checkpassword`: the program Dovecot 2.3's `passdb checkpassword` and `userdb
//! checkpassword` run, as a client of miab-authd's checkpassword socket, so IMAP and POP3 logins
//! get the limits, cache and app passwords SMTP gets.
//!
//! Responsibilities:
//! - read the request Dovecot writes to fd 3 (`user NUL password NUL timestamp NUL`, at most
//!   512 bytes) and the environment it sets (`SERVICE`, `TCPREMOTEIP`, `AUTHORIZED`, ...);
//! - ask miab-authd: `AUTH PLAIN` to check a password, `USER` for a userdb lookup;
//! - turn the answer into what Dovecot expects: the userdb variables for the reply program
//!   it names (`checkpassword-reply`), or the exit code for a refusal (1), an unknown user in a
//!   lookup (3) or a temporary failure (111: miab-authd down, the DB locked).
//!
//! Blocking I/O with timeouts: one short exchange per process.

use crate::proto::{self, MAX_LINE};
use base64::Engine as _;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Where miab-authd's checkpassword socket is by default.
pub const DEFAULT_SOCKET: &str = "/run/miab-authd/checkpassword";
/// Dovecot's `CHECKPASSWORD_MAX_REQUEST_LEN`.
pub const MAX_INPUT: usize = 512;
/// The most handshake lines accepted before `DONE`.
const MAX_HANDSHAKE_LINES: usize = 64;

/// Exit codes Dovecot's `db-checkpassword.c` understands.
pub mod exit {
    /// Wrong password or unknown user (authentication mode).
    pub const BAD_CREDENTIALS: u8 = 1;
    /// Internal failure.
    pub const INTERNAL: u8 = 2;
    /// Unknown user (lookup mode).
    pub const NOT_FOUND: u8 = 3;
    /// Temporary failure: try again later.
    pub const TEMP: u8 = 111;
}

/// Dovecot's request from fd 3.
pub struct Request {
    pub user: String,
    password: Vec<u8>,
}

// The password never shows.
impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Parses fd 3's bytes: `user NUL password NUL [timestamp NUL]`.
pub fn parse_input(bytes: &[u8]) -> Result<Request, &'static str> {
    if bytes.len() > MAX_INPUT {
        return Err("request on fd 3 longer than 512 bytes");
    }
    let mut parts = bytes.split(|&b| b == 0);
    let (Some(user), Some(password)) = (parts.next(), parts.next()) else {
        return Err("request on fd 3 is not user NUL password NUL");
    };
    if bytes.len() == user.len() {
        return Err("request on fd 3 is not user NUL password NUL");
    }
    let user = std::str::from_utf8(user).map_err(|_| "user name is not UTF-8")?;
    if user.is_empty() {
        return Err("empty user name");
    }
    Ok(Request {
        user: user.to_owned(),
        password: password.to_vec(),
    })
}

/// What Dovecot asks for, from its environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    /// `imap`, `pop3`, ... (`SERVICE`).
    pub service: String,
    /// `TCPREMOTEIP` or `REMOTE_IP`.
    pub remote_ip: String,
    /// `TCPLOCALIP` or `LOCAL_IP`.
    pub local_ip: String,
    /// `AUTHORIZED=1`: a userdb (or prefetch-less) lookup; the password is empty.
    pub lookup: bool,
    /// `CREDENTIALS_LOOKUP=1`: Dovecot wants the stored hash, which we never hand out.
    pub credentials_lookup: bool,
}

impl Env {
    /// Reads the variables through `get` (`std::env::var` in the program).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Env {
        let either = |a: &str, b: &str| get(a).or_else(|| get(b)).unwrap_or_default();
        Env {
            service: get("SERVICE").unwrap_or_default(),
            remote_ip: either("TCPREMOTEIP", "REMOTE_IP"),
            local_ip: either("TCPLOCALIP", "LOCAL_IP"),
            lookup: get("AUTHORIZED").as_deref() == Some("1"),
            credentials_lookup: get("CREDENTIALS_LOOKUP").as_deref() == Some("1"),
        }
    }
}

/// miab-authd's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The canonical address and the userdb fields (`home`, `uid`, `gid`, `quota_rule`).
    Found {
        user: String,
        fields: Vec<(String, String)>,
    },
    /// Wrong password, unknown user, or refused by the brake.
    Refused,
    /// A lookup for a user that does not exist.
    NotFound,
    /// Try again later, and why.
    Temp(String),
}

/// The line sent to miab-authd for `req`.
fn request_line(req: &Request, env: &Env) -> String {
    let mut line = String::new();
    let mut push_param = |name: &str, value: &str| {
        line.push('\t');
        line.push_str(name);
        line.push('=');
        proto::escape(value, &mut line);
    };
    let service = if env.service.is_empty() {
        "imap"
    } else {
        &env.service
    };
    if env.lookup {
        let mut l = String::from("USER\t1\t");
        proto::escape(&req.user, &mut l);
        l.push_str("\tservice=");
        proto::escape(service, &mut l);
        return l + "\n";
    }
    push_param("service", service);
    if !env.local_ip.is_empty() {
        push_param("lip", &env.local_ip);
    }
    if !env.remote_ip.is_empty() {
        push_param("rip", &env.remote_ip);
    }
    let mut plain = Vec::with_capacity(req.user.len() + req.password.len() + 2);
    plain.push(0);
    plain.extend_from_slice(req.user.as_bytes());
    plain.push(0);
    plain.extend_from_slice(&req.password);
    // Dovecot has applied its own disable_plaintext_auth before running us.
    format!(
        "AUTH\t1\tPLAIN{line}\tsecured\tnologin\tresp={}\n",
        base64::engine::general_purpose::STANDARD.encode(plain)
    )
}

/// Turns a reply line into an [`Answer`].
fn parse_reply(line: &str) -> Answer {
    let mut parts = line.split('\t');
    let cmd = parts.next().unwrap_or_default();
    let _id = parts.next();
    let fields = |parts: std::str::Split<'_, char>| {
        parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_owned(), proto::unescape(v)))
            .collect::<Vec<_>>()
    };
    match cmd {
        "OK" => {
            let mut all = fields(parts);
            match all.iter().position(|(k, _)| k == "user") {
                Some(i) => {
                    let user = all.remove(i).1;
                    Answer::Found { user, fields: all }
                }
                None => Answer::Temp("miab-authd sent OK without user=".into()),
            }
        }
        "USER" => match parts.next() {
            Some(user) if !user.is_empty() => Answer::Found {
                user: proto::unescape(user),
                fields: fields(parts),
            },
            _ => Answer::Temp("miab-authd sent USER without a user".into()),
        },
        "NOTFOUND" => Answer::NotFound,
        "FAIL" => {
            let rest: Vec<&str> = parts.collect();
            if rest.iter().any(|p| *p == "temp" || *p == "code=temp_fail") {
                Answer::Temp("miab-authd: temporary failure".into())
            } else {
                Answer::Refused
            }
        }
        _ => Answer::Temp("miab-authd sent an unexpected reply".into()),
    }
}

/// Asks miab-authd at `socket`. Every failure to reach it or to understand it is temporary.
pub fn ask(socket: &Path, req: &Request, env: &Env, timeout: Duration) -> Answer {
    let temp = |what: &str, e: &dyn std::fmt::Display| {
        Answer::Temp(format!("miab-authd at {}: {what}: {e}", socket.display()))
    };
    let stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => return temp("connect", &e),
    };
    if let Err(e) = stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
    {
        return temp("socket", &e);
    }
    let mut reader = BufReader::new(&stream);
    let mut read_line = || -> Result<String, String> {
        let mut buf = Vec::new();
        let n = std::io::Read::take(&mut reader, MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
        if buf.last() != Some(&b'\n') {
            return Err("over-long line".into());
        }
        buf.pop();
        String::from_utf8(buf).map_err(|_| "reply is not UTF-8".to_owned())
    };
    for _ in 0..MAX_HANDSHAKE_LINES {
        match read_line() {
            Ok(l) if l == "DONE" => break,
            Ok(_) => {}
            Err(e) => return temp("handshake", &e),
        }
    }
    let hello = format!(
        "VERSION\t{}\t{}\nCPID\t{}\n",
        proto::VERSION_MAJOR,
        proto::VERSION_MINOR,
        std::process::id()
    );
    let line = request_line(req, env);
    if let Err(e) = (&stream).write_all(format!("{hello}{line}").as_bytes()) {
        return temp("send", &e);
    }
    match read_line() {
        Ok(l) => parse_reply(&l),
        Err(e) => temp("reply", &e),
    }
}

/// The environment for Dovecot's `checkpassword-reply`: `USER`, `HOME`, and the other userdb
/// fields as `userdb_*` variables named in `EXTRA`; `AUTHORIZED=2` confirms a lookup.
pub fn reply_env(user: &str, fields: &[(String, String)], lookup: bool) -> Vec<(String, String)> {
    let mut env = vec![("USER".to_owned(), user.to_owned())];
    let mut extra = Vec::new();
    for (k, v) in fields {
        // checkpassword-reply refuses a TAB in USER or HOME and copies other values raw.
        if v.contains(['\t', '\n']) {
            continue;
        }
        if k == "home" {
            env.push(("HOME".to_owned(), v.clone()));
        } else if k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            let name = format!("userdb_{k}");
            extra.push(name.clone());
            env.push((name, v.clone()));
        }
    }
    env.push(("EXTRA".to_owned(), extra.join(" ")));
    if lookup {
        env.push(("AUTHORIZED".to_owned(), "2".to_owned()));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd3_input() {
        let r = parse_input(b"me@example.com\0secret\0\0").unwrap();
        assert_eq!(
            (r.user.as_str(), r.password.as_slice()),
            ("me@example.com", &b"secret"[..])
        );
        let r = parse_input(b"me@example.com\0\0").unwrap();
        assert!(r.password.is_empty());
        assert!(!format!("{r:?}").contains("secret"));
        for bad in [&b""[..], b"me", b"\0pw\0", b"\xff\0pw\0"] {
            assert!(parse_input(bad).is_err(), "{bad:?}");
        }
        assert!(parse_input(&[b'a'; 513]).is_err());
    }

    #[test]
    fn environment() {
        let vars = [
            ("SERVICE", "imap"),
            ("TCPREMOTEIP", "192.0.2.7"),
            ("LOCAL_IP", "127.0.0.1"),
            ("AUTHORIZED", "1"),
        ];
        let env = Env::from_vars(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        });
        assert_eq!(
            env,
            Env {
                service: "imap".into(),
                remote_ip: "192.0.2.7".into(),
                local_ip: "127.0.0.1".into(),
                lookup: true,
                credentials_lookup: false,
            }
        );
    }

    #[test]
    fn request_lines() {
        let req = parse_input(b"me@example.com\0pw\0\0").unwrap();
        let mut env = Env {
            service: "pop3".into(),
            remote_ip: "192.0.2.7".into(),
            ..Env::default()
        };
        let line = request_line(&req, &env);
        assert_eq!(
            line,
            "AUTH\t1\tPLAIN\tservice=pop3\trip=192.0.2.7\tsecured\tnologin\tresp=AG1lQGV4YW1wbGUuY29tAHB3\n"
        );
        let Ok(proto::Command::Auth(a)) = proto::parse(line.trim_end()) else {
            panic!("authd cannot parse {line:?}");
        };
        let creds = crate::handler::plain(a.resp.as_deref().unwrap()).unwrap();
        assert_eq!(
            (creds.login.as_str(), creds.password.expose()),
            ("me@example.com", "pw")
        );
        env.lookup = true;
        assert_eq!(
            request_line(&req, &env),
            "USER\t1\tme@example.com\tservice=pop3\n"
        );
    }

    #[test]
    fn replies() {
        assert_eq!(
            parse_reply("OK\t1\tuser=me@example.com\thome=/m/example.com/me\tuid=mail"),
            Answer::Found {
                user: "me@example.com".into(),
                fields: vec![
                    ("home".into(), "/m/example.com/me".into()),
                    ("uid".into(), "mail".into())
                ],
            }
        );
        assert_eq!(
            parse_reply("USER\t1\tme@example.com\tquota_rule=*:bytes=0"),
            Answer::Found {
                user: "me@example.com".into(),
                fields: vec![("quota_rule".into(), "*:bytes=0".into())],
            }
        );
        assert_eq!(parse_reply("NOTFOUND\t1"), Answer::NotFound);
        assert_eq!(parse_reply("FAIL\t1"), Answer::Refused);
        assert_eq!(parse_reply("FAIL\t1\treason=Too many"), Answer::Refused);
        assert!(matches!(
            parse_reply("FAIL\t1\ttemp\tcode=temp_fail"),
            Answer::Temp(_)
        ));
        assert!(matches!(parse_reply("OK\t1"), Answer::Temp(_)));
        assert!(matches!(parse_reply("garbage"), Answer::Temp(_)));
    }

    #[test]
    fn reply_environment() {
        let fields = [
            ("home".to_owned(), "/m/example.com/me".to_owned()),
            ("uid".to_owned(), "mail".to_owned()),
            ("quota_rule".to_owned(), "*:bytes=0".to_owned()),
            ("bad key".to_owned(), "x".to_owned()),
        ];
        let env = reply_env("me@example.com", &fields, true);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("USER"), Some("me@example.com"));
        assert_eq!(get("HOME"), Some("/m/example.com/me"));
        assert_eq!(get("userdb_uid"), Some("mail"));
        assert_eq!(get("EXTRA"), Some("userdb_uid userdb_quota_rule"));
        assert_eq!(get("AUTHORIZED"), Some("2"));
        assert!(
            !reply_env("u", &fields, false)
                .iter()
                .any(|(k, _)| k == "AUTHORIZED")
        );
    }
}
