//! postgrey's log lines, sent to the local syslog socket under the program name `postgrey`
//! and the mail facility, exactly where MIAB's `mail_log.py` looks for them.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// `<22>`: facility mail (2) × 8 + severity info (6).
const PRI_MAIL_INFO: u8 = 22;

/// A connected syslog socket, or nothing when there is none (tests, containers).
#[derive(Debug)]
pub struct Syslog {
    sock: Option<Arc<UnixDatagram>>,
    pid: u32,
    /// Lines waiting for this turn of the event loop to end, and whether a flush is due.
    pending: Arc<Mutex<(Vec<String>, bool)>>,
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
                Some(Arc::new(s))
            })
            .flatten();
        Syslog {
            sock,
            pid: std::process::id(),
            pending: Arc::default(),
        }
    }

    /// Is a socket connected?
    pub fn is_connected(&self) -> bool {
        self.sock.is_some()
    }

    /// Logs a postgrey line: to syslog when connected (journald or rsyslog get it there, so
    /// it is not written twice), else to the daemon's own log.
    ///
    /// Lines logged while the event loop answers a burst of requests go out together after
    /// it, one datagram each, so the syslog daemon is woken once per burst, not per line.
    pub fn postgrey(&self, line: &str) {
        let Some(sock) = &self.sock else {
            tracing::info!(target: "postgrey", "{line}");
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.send(line);
            return;
        };
        let msg = self.format(line);
        let schedule = {
            let mut p = self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            p.0.push(msg);
            !std::mem::replace(&mut p.1, true)
        };
        if schedule {
            let (sock, pending) = (Arc::clone(sock), Arc::clone(&self.pending));
            runtime.spawn(async move {
                tokio::task::yield_now().await;
                let lines = {
                    let mut p = pending
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    p.1 = false;
                    std::mem::take(&mut p.0)
                };
                for l in lines {
                    let _ = sock.send(l.as_bytes());
                }
            });
        }
    }

    /// Sends one line now; dropped if the socket is gone or full.
    pub fn send(&self, line: &str) {
        if let Some(s) = &self.sock {
            let _ = s.send(self.format(line).as_bytes());
        }
    }

    fn format(&self, line: &str) -> String {
        format!("<{PRI_MAIL_INFO}>postgrey[{}]: {line}", self.pid)
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
