//! postgrey's log lines, sent to the local syslog socket under the program name `postgrey`
//! and the mail facility, exactly where MIAB's `mail_log.py` looks for them.

use std::os::unix::net::UnixDatagram;
use std::path::Path;

/// `<22>`: facility mail (2) × 8 + severity info (6).
const PRI_MAIL_INFO: u8 = 22;

/// A connected syslog socket, or nothing when there is none (tests, containers).
#[derive(Debug)]
pub struct Syslog {
    sock: Option<UnixDatagram>,
    pid: u32,
}

impl Syslog {
    /// Connects to `path` (usually `/dev/log`); an empty path or a missing socket disables it.
    pub fn connect(path: &Path) -> Syslog {
        let sock = (!path.as_os_str().is_empty())
            .then(|| {
                let s = UnixDatagram::unbound().ok()?;
                s.connect(path).ok()?;
                // A stalled syslog daemon must never stall a policy answer.
                s.set_nonblocking(true).ok()?;
                Some(s)
            })
            .flatten();
        Syslog {
            sock,
            pid: std::process::id(),
        }
    }

    /// Is a socket connected?
    pub fn is_connected(&self) -> bool {
        self.sock.is_some()
    }

    /// Logs a postgrey line: to syslog when connected (journald or rsyslog get it there, so
    /// it is not written twice), else to the daemon's own log.
    pub fn postgrey(&self, line: &str) {
        if self.sock.is_some() {
            self.send(line);
        } else {
            tracing::info!(target: "postgrey", "{line}");
        }
    }

    /// Sends one line; dropped if the socket is gone or full.
    pub fn send(&self, line: &str) {
        if let Some(s) = &self.sock {
            let msg = format!("<{PRI_MAIL_INFO}>postgrey[{}]: {line}", self.pid);
            let _ = s.send(msg.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let server = UnixDatagram::bind(&path).unwrap();
        let log = Syslog::connect(&path);
        assert!(log.is_connected());
        log.send("action=pass, reason=client AWL");
        let mut buf = [0u8; 256];
        let n = server.recv(&mut buf).unwrap();
        let got = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(got.starts_with("<22>postgrey["), "{got}");
        assert!(got.ends_with("]: action=pass, reason=client AWL"), "{got}");
        assert!(!Syslog::connect(Path::new("")).is_connected());
        assert!(!Syslog::connect(&dir.path().join("none")).is_connected());
    }
}
