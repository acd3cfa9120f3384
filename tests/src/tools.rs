//! The real clients: `swaks`, `postmap -q`, `doveadm pw`, and IMAP login through Python's
//! `imaplib`. Secrets go to the child through stdin or the environment, never through argv.

use crate::require_program;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The result of running a client.
#[derive(Debug, Clone)]
pub struct Run {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// True if the program exited 0.
    pub fn ok(&self) -> bool {
        self.code == 0
    }
}

/// Runs `cmd`, feeding `stdin` if given.
pub fn run(cmd: &mut Command, stdin: Option<&str>) -> Run {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    // Fed from a thread: a child that answers as it reads would otherwise block on a full
    // stdout pipe while we block on its full stdin.
    let feeder = stdin.map(|input| {
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_owned();
        std::thread::spawn(move || pipe.write_all(input.as_bytes()))
    });
    let out = child.wait_with_output().unwrap();
    if let Some(f) = feeder {
        f.join().unwrap().unwrap();
    }
    Run::from(out)
}

/// `swaks --server 127.0.0.1:PORT` with extra arguments (`--to`, `--from`, `--auth`, ...).
/// swaks exits 0 when the message was accepted, 23/24/25 when MAIL, RCPT or DATA was refused.
pub fn swaks(port: u16, args: &[&str]) -> Run {
    let swaks = require_program("/usr/bin/swaks", "swaks");
    run(
        Command::new(swaks)
            .arg("--server")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--timeout")
            .arg("30")
            .args(args),
        None,
    )
}

/// `postmap -q KEY MAP` (with `-c DIR` when given): the value, or `None` when not found.
/// Panics on a table error.
pub fn postmap_q(config_dir: Option<&Path>, key: &str, map: &str) -> Option<String> {
    postmap_lookup(config_dir, key, map)
        .unwrap_or_else(|e| panic!("postmap -q {key} {map} failed: {e}"))
}

/// `postmap -q KEY MAP`, telling a table error (a `TEMP`/`PERM` socketmap answer, a dead
/// server: postmap exits 1 with a fatal message) from "not found" (exit 1, silent).
pub fn postmap_lookup(
    config_dir: Option<&Path>,
    key: &str,
    map: &str,
) -> Result<Option<String>, String> {
    let postmap = require_program("/usr/sbin/postmap", "postfix");
    let mut cmd = Command::new(postmap);
    if let Some(d) = config_dir {
        cmd.arg("-c").arg(d);
    }
    let r = run(cmd.arg("-q").arg(key).arg(map), None);
    match r.code {
        0 => Ok(Some(r.stdout.trim_end_matches('\n').to_owned())),
        1 if !r.stderr.contains("fatal") && !r.stderr.contains("error") => Ok(None),
        _ => Err(r.stderr),
    }
}

/// `doveadm pw -s SHA512-CRYPT [-r ROUNDS]`, the password given on the prompt (stdin).
pub fn doveadm_pw_hash(password: &str, rounds: Option<u32>) -> String {
    let doveadm = require_program("/usr/bin/doveadm", "dovecot-core");
    let mut cmd = Command::new(doveadm);
    cmd.args(["pw", "-s", "SHA512-CRYPT"]);
    if let Some(r) = rounds {
        cmd.arg("-r").arg(r.to_string());
    }
    let r = run(&mut cmd, Some(&format!("{password}\n{password}\n")));
    assert!(r.ok(), "doveadm pw failed: {}", r.stderr);
    r.stdout.trim().to_owned()
}

/// `doveadm pw -t HASH`, the password given on the prompt: true if Dovecot verifies it.
pub fn doveadm_pw_verify(password: &str, hash: &str) -> bool {
    let doveadm = require_program("/usr/bin/doveadm", "dovecot-core");
    let r = run(
        Command::new(doveadm).args(["pw", "-t", hash]),
        Some(&format!("{password}\n")),
    );
    r.ok() && r.stdout.contains("(verified)")
}

const IMAP_LOGIN: &str = r#"
import imaplib, os, socket, sys
class FromSource(imaplib.IMAP4):
    # Dovecot's auth penalty grows per client address; each test login may pick its own.
    def _create_socket(self, timeout):
        src = (os.environ.get("IMAP_SOURCE", "127.0.0.1"), 0)
        return socket.create_connection((self.host, self.port), timeout, source_address=src)
m = FromSource("127.0.0.1", int(sys.argv[1]))
try:
    m.login(os.environ["IMAP_USER"], os.environ["IMAP_PASSWORD"])
except imaplib.IMAP4.error as e:
    print("NO", e)
    sys.exit(1)
typ, data = m.select("INBOX")
print("OK", typ, data[0].decode())
m.logout()
"#;

/// Logs in over IMAP with Python's `imaplib` and selects INBOX.
pub fn imap_login(port: u16, user: &str, password: &str) -> Run {
    imap_login_from("127.0.0.1", port, user, password)
}

/// [`imap_login`] from the loopback address `source`.
pub fn imap_login_from(source: &str, port: u16, user: &str, password: &str) -> Run {
    let python = require_program("/usr/bin/python3", "python3");
    run(
        Command::new(python)
            .arg("-c")
            .arg(IMAP_LOGIN)
            .arg(port.to_string())
            .env("IMAP_SOURCE", source)
            .env("IMAP_USER", user)
            .env("IMAP_PASSWORD", password),
        None,
    )
}
