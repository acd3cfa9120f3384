//! Dovecot's auth-client protocol (what Postfix's `smtpd_sasl_type = dovecot` speaks), server
//! side, without I/O: tab-separated lines, tab-escaping, the client's commands parsed, the
//! server's lines built.
//!
//! Lines are capped at Dovecot's own `AUTH_CLIENT_MAX_LINE_LENGTH`; a longer one, a line that
//! is not a known command, or a malformed one is an error and the connection is closed, as
//! Dovecot does.

use std::fmt::Write as _;

/// Longest line, LF excluded: Dovecot's `AUTH_CLIENT_MAX_LINE_LENGTH`.
pub const MAX_LINE: usize = 16384;
/// The protocol version this server speaks (Dovecot 2.3's); only the major must match.
pub const VERSION_MAJOR: u32 = 1;
pub const VERSION_MINOR: u32 = 2;

/// Why a line cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("line is not UTF-8")]
    NotUtf8,
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    #[error("malformed {0} command")]
    Malformed(&'static str),
    #[error("client speaks protocol version {0}, not {VERSION_MAJOR}")]
    Version(String),
}

/// A command from the client.
#[derive(Clone, PartialEq, Eq)]
pub enum Command {
    /// `VERSION major minor`.
    Version { major: u32, minor: u32 },
    /// `CPID pid`: the client's process id, for logs.
    Cpid(String),
    /// `AUTH id mech params...`.
    Auth(Auth),
    /// `CONT id base64`.
    Cont { id: u32, data: String },
    /// `USER id login params...`: a userdb lookup without a password, as Dovecot's
    /// auth-master protocol has it. Served only on the checkpassword socket.
    User {
        id: u32,
        login: String,
        service: String,
    },
}

// Responses carry secrets: never print them.
impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Version { major, minor } => write!(f, "VERSION {major}.{minor}"),
            Command::Cpid(p) => write!(f, "CPID {p}"),
            Command::Auth(a) => write!(f, "AUTH {} {} service={}", a.id, a.mech, a.service),
            Command::Cont { id, .. } => write!(f, "CONT {id}"),
            Command::User { id, login, .. } => write!(f, "USER {id} {login}"),
        }
    }
}

/// An `AUTH` request.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Auth {
    pub id: u32,
    /// Upper-cased mechanism name.
    pub mech: String,
    pub service: String,
    /// The SMTP session has TLS.
    pub secured: bool,
    /// Only check the credentials (Postfix always says so).
    pub nologin: bool,
    /// Local and remote IP, as Postfix sends them.
    pub local_ip: String,
    pub remote_ip: String,
    /// The initial response (base64), if any.
    pub resp: Option<String>,
}

impl std::fmt::Debug for Auth {
    // The initial response holds the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("id", &self.id)
            .field("mech", &self.mech)
            .field("service", &self.service)
            .field("secured", &self.secured)
            .field("remote_ip", &self.remote_ip)
            .finish_non_exhaustive()
    }
}

/// Reverses Dovecot's tab-escaping: `\x01` followed by `0`, `1`, `t`, `r`, `n` stands for NUL,
/// `\x01`, TAB, CR, LF; followed by anything else, for that byte.
pub fn unescape(s: &str) -> String {
    if !s.contains('\x01') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\x01' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push('\0'),
            Some('1') => out.push('\x01'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// Dovecot's tab-escaping, for values the server sends.
pub fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '\0' => out.push_str("\x010"),
            '\x01' => out.push_str("\x011"),
            '\t' => out.push_str("\x01t"),
            '\r' => out.push_str("\x01r"),
            '\n' => out.push_str("\x01n"),
            c => out.push(c),
        }
    }
}

/// Splits complete lines off a connection's bytes.
#[derive(Debug, Default)]
pub struct Lines {
    buf: Vec<u8>,
    scanned: usize,
}

impl Lines {
    /// Appends bytes from the socket.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that do not form a line yet.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete line, without its LF (and a CR before it).
    pub fn next_line(&mut self) -> Result<Option<String>, LineError> {
        let Some(nl) = memchr::memchr(b'\n', &self.buf[self.scanned..]).map(|i| i + self.scanned)
        else {
            self.scanned = self.buf.len();
            return if self.buf.len() > MAX_LINE {
                Err(LineError::TooLong)
            } else {
                Ok(None)
            };
        };
        if nl > MAX_LINE {
            return Err(LineError::TooLong);
        }
        let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
        self.scanned = 0;
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        String::from_utf8(line)
            .map(Some)
            .map_err(|_| LineError::NotUtf8)
    }
}

/// Parses one client line.
pub fn parse(line: &str) -> Result<Command, LineError> {
    let mut args = line.split('\t');
    let cmd = args.next().unwrap_or("");
    match cmd {
        "VERSION" => {
            let (Some(major), Some(minor)) = (args.next(), args.next()) else {
                return Err(LineError::Malformed("VERSION"));
            };
            let major: u32 = major.parse().map_err(|_| LineError::Malformed("VERSION"))?;
            let minor: u32 = minor.parse().map_err(|_| LineError::Malformed("VERSION"))?;
            if major != VERSION_MAJOR {
                return Err(LineError::Version(format!("{major}.{minor}")));
            }
            Ok(Command::Version { major, minor })
        }
        "CPID" => args
            .next()
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .map(|p| Command::Cpid(p.to_owned()))
            .ok_or(LineError::Malformed("CPID")),
        "AUTH" => parse_auth(args).map(Command::Auth),
        "CONT" => {
            let id = args
                .next()
                .and_then(|i| i.parse().ok())
                .ok_or(LineError::Malformed("CONT"))?;
            let data = args.next().ok_or(LineError::Malformed("CONT"))?;
            Ok(Command::Cont {
                id,
                data: data.to_owned(),
            })
        }
        "USER" => {
            let bad = LineError::Malformed("USER");
            let id = args
                .next()
                .and_then(|i| i.parse().ok())
                .ok_or(bad.clone())?;
            let login = args.next().filter(|l| !l.is_empty()).ok_or(bad)?;
            let service = args
                .filter_map(|p| p.strip_prefix("service="))
                .next_back()
                .map(unescape)
                .unwrap_or_default();
            Ok(Command::User {
                id,
                login: unescape(login),
                service,
            })
        }
        other => Err(LineError::UnknownCommand(
            other.chars().take(32).collect::<String>(),
        )),
    }
}

fn parse_auth<'a>(mut args: impl Iterator<Item = &'a str>) -> Result<Auth, LineError> {
    let bad = LineError::Malformed("AUTH");
    let id = args
        .next()
        .and_then(|i| i.parse().ok())
        .ok_or(bad.clone())?;
    let mech = args
        .next()
        .filter(|m| !m.is_empty())
        .ok_or(bad)?
        .to_ascii_uppercase();
    let mut auth = Auth {
        id,
        mech,
        ..Auth::default()
    };
    for p in args {
        let (name, value) = p.split_once('=').unwrap_or((p, ""));
        match name {
            "service" => auth.service = unescape(value),
            "secured" => auth.secured = true,
            "nologin" => auth.nologin = true,
            "lip" => auth.local_ip = unescape(value),
            "rip" => auth.remote_ip = unescape(value),
            "resp" => auth.resp = Some(value.to_owned()),
            _ => {}
        }
    }
    Ok(auth)
}

/// A line the server sends.
#[derive(Clone, PartialEq, Eq)]
pub enum Reply {
    /// More data needed; the challenge, base64.
    Cont { id: u32, challenge: String },
    /// Authenticated as `user`; `fields` (userdb fields) only on the checkpassword socket.
    Ok {
        id: u32,
        user: String,
        fields: Vec<(&'static str, String)>,
    },
    /// A `USER` lookup found `user`.
    User {
        id: u32,
        user: String,
        fields: Vec<(&'static str, String)>,
    },
    /// A `USER` lookup found no such user.
    NotFound { id: u32 },
    /// Refused; `temp` asks the client to try again later, `reason` is shown to the user.
    Fail {
        id: u32,
        temp: bool,
        reason: Option<String>,
    },
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Cont { id, .. } => write!(f, "CONT {id}"),
            Reply::Ok { id, user, .. } => write!(f, "OK {id} user={user}"),
            Reply::User { id, user, .. } => write!(f, "USER {id} {user}"),
            Reply::NotFound { id } => write!(f, "NOTFOUND {id}"),
            Reply::Fail { id, temp, .. } => write!(f, "FAIL {id} temp={temp}"),
        }
    }
}

impl Reply {
    /// The request id it answers.
    pub fn id(&self) -> u32 {
        match self {
            Reply::Cont { id, .. }
            | Reply::Ok { id, .. }
            | Reply::User { id, .. }
            | Reply::NotFound { id }
            | Reply::Fail { id, .. } => *id,
        }
    }

    /// Appends the line, LF included.
    pub fn encode(&self, out: &mut String) {
        match self {
            Reply::Cont { id, challenge } => {
                let _ = write!(out, "CONT\t{id}\t{challenge}");
            }
            Reply::Ok { id, user, fields } => {
                let _ = write!(out, "OK\t{id}\tuser=");
                escape(user, out);
                encode_fields(fields, out);
            }
            Reply::User { id, user, fields } => {
                let _ = write!(out, "USER\t{id}\t");
                escape(user, out);
                encode_fields(fields, out);
            }
            Reply::NotFound { id } => {
                let _ = write!(out, "NOTFOUND\t{id}");
            }
            Reply::Fail { id, temp, reason } => {
                let _ = write!(out, "FAIL\t{id}");
                // Dovecot 2.3 says `temp`, 2.4 `code=temp_fail`; clients ignore what they
                // do not know.
                if *temp {
                    out.push_str("\ttemp\tcode=temp_fail");
                }
                if let Some(r) = reason {
                    out.push_str("\treason=");
                    escape(r, out);
                }
            }
        }
        out.push('\n');
    }
}

fn encode_fields(fields: &[(&str, String)], out: &mut String) {
    for (k, v) in fields {
        let _ = write!(out, "\t{k}=");
        escape(v, out);
    }
}

/// The handshake: VERSION, the mechanisms (before SPID, or Postfix takes us for the
/// auth-master socket), SPID, CUID, COOKIE, DONE.
pub fn handshake(mechs: &[&str], pid: u32, cuid: u64, cookie: &str) -> String {
    let mut s = format!("VERSION\t{VERSION_MAJOR}\t{VERSION_MINOR}\n");
    for m in mechs {
        let _ = writeln!(s, "MECH\t{m}\tplaintext");
    }
    let _ = write!(s, "SPID\t{pid}\nCUID\t{cuid}\nCOOKIE\t{cookie}\nDONE\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tab_escaping_round_trips() {
        let raw = "a\tb\0c\x01d\re\nf";
        let mut esc = String::new();
        escape(raw, &mut esc);
        assert_eq!(esc, "a\x01tb\x010c\x011d\x01re\x01nf");
        assert!(!esc.contains(['\t', '\n', '\r', '\0']));
        assert_eq!(unescape(&esc), raw);
        assert_eq!(
            unescape("x\x01zy"),
            "xzy",
            "any other byte stands for itself"
        );
        assert_eq!(unescape("trailing\x01"), "trailing");
    }

    #[test]
    fn postfix_requests() {
        let c = parse("AUTH\t1\tplain\tservice=smtp\tnologin\tlip=198.51.100.5\trip=192.0.2.10\tsecured\tresp=AGFsaWNlAHNlY3JldA==").unwrap();
        let Command::Auth(a) = c else { panic!() };
        assert_eq!(
            (a.id, a.mech.as_str(), a.service.as_str()),
            (1, "PLAIN", "smtp")
        );
        assert!(a.secured && a.nologin);
        assert_eq!(
            (a.local_ip.as_str(), a.remote_ip.as_str()),
            ("198.51.100.5", "192.0.2.10")
        );
        assert_eq!(a.resp.as_deref(), Some("AGFsaWNlAHNlY3JldA=="));
        assert_eq!(
            parse("VERSION\t1\t0").unwrap(),
            Command::Version { major: 1, minor: 0 }
        );
        assert_eq!(parse("CPID\t4711").unwrap(), Command::Cpid("4711".into()));
        assert_eq!(
            parse("CONT\t2\tc2VjcmV0").unwrap(),
            Command::Cont {
                id: 2,
                data: "c2VjcmV0".into()
            }
        );
        assert_eq!(
            parse("USER\t3\tme\x01t@example.com\tservice=imap").unwrap(),
            Command::User {
                id: 3,
                login: "me\t@example.com".into(),
                service: "imap".into()
            }
        );
        let mut out = String::new();
        Reply::User {
            id: 3,
            user: "me@example.com".into(),
            fields: vec![("home", "/m/a\tb".into()), ("uid", "mail".into())],
        }
        .encode(&mut out);
        Reply::NotFound { id: 4 }.encode(&mut out);
        assert_eq!(
            out,
            "USER\t3\tme@example.com\thome=/m/a\x01tb\tuid=mail\nNOTFOUND\t4\n"
        );
    }

    #[test]
    fn malformed_lines() {
        for (line, want) in [
            ("VERSION\t2\t0", LineError::Version("2.0".into())),
            ("VERSION\tx", LineError::Malformed("VERSION")),
            ("CPID\t", LineError::Malformed("CPID")),
            ("AUTH\tx\tPLAIN", LineError::Malformed("AUTH")),
            ("AUTH\t1", LineError::Malformed("AUTH")),
            ("CONT\t1", LineError::Malformed("CONT")),
            ("CONT\tid\tx", LineError::Malformed("CONT")),
            ("USER\t1", LineError::Malformed("USER")),
            ("USER\tx\tme", LineError::Malformed("USER")),
            ("REQUEST\t1\t2", LineError::UnknownCommand("REQUEST".into())),
            ("", LineError::UnknownCommand(String::new())),
        ] {
            assert_eq!(parse(line).unwrap_err(), want, "{line:?}");
        }
    }

    #[test]
    fn lines_chunk_sweep_and_limits() {
        let input = b"VERSION\t1\t0\nCPID\t1\r\nAUTH\t1\tPLAIN\tservice=smtp\n";
        for chunk in 1..=input.len() {
            let mut l = Lines::default();
            let mut got = Vec::new();
            for piece in input.chunks(chunk) {
                l.push(piece);
                while let Some(line) = l.next_line().unwrap() {
                    got.push(line);
                }
            }
            assert_eq!(
                got,
                ["VERSION\t1\t0", "CPID\t1", "AUTH\t1\tPLAIN\tservice=smtp"],
                "chunk {chunk}"
            );
        }
        let mut l = Lines::default();
        l.push(&vec![b'a'; MAX_LINE + 1]);
        assert_eq!(
            l.next_line().unwrap_err(),
            LineError::TooLong,
            "before the LF comes"
        );
        let mut l = Lines::default();
        l.push(b"\xff\xfe\n");
        assert_eq!(l.next_line().unwrap_err(), LineError::NotUtf8);
    }

    #[test]
    fn replies_and_handshake() {
        let mut out = String::new();
        Reply::Ok {
            id: 3,
            user: "a\tb@example.com".into(),
            fields: Vec::new(),
        }
        .encode(&mut out);
        Reply::Fail {
            id: 4,
            temp: true,
            reason: Some("DB busy".into()),
        }
        .encode(&mut out);
        Reply::Fail {
            id: 5,
            temp: false,
            reason: None,
        }
        .encode(&mut out);
        Reply::Cont {
            id: 6,
            challenge: "VXNlcm5hbWU6".into(),
        }
        .encode(&mut out);
        assert_eq!(
            out,
            "OK\t3\tuser=a\x01tb@example.com\nFAIL\t4\ttemp\tcode=temp_fail\treason=DB busy\nFAIL\t5\nCONT\t6\tVXNlcm5hbWU6\n"
        );
        let h = handshake(&["PLAIN", "LOGIN"], 99, 7, "00ff");
        assert_eq!(
            h,
            "VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nMECH\tLOGIN\tplaintext\nSPID\t99\nCUID\t7\nCOOKIE\t00ff\nDONE\n"
        );
    }
}
