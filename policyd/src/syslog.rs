//! postgrey's log lines, sent to the local syslog socket under the program name `postgrey`
//! and the mail facility, exactly where MIAB's `mail_log.py` looks for them.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// `<22>`: facility mail (2) × 8 + severity info (6).
const PRI_MAIL_INFO: u8 = 22;

/// A socket that went away is looked for again at most this often.
const RETRY: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The syslog socket, connected again when the syslog daemon restarts (a datagram socket
/// connected to the old `/dev/log` is refused from then on) or appears late.
#[derive(Debug)]
struct Link {
    path: PathBuf,
    sock: Mutex<Option<UnixDatagram>>,
    tried: Mutex<Option<Instant>>,
}

impl Link {
    fn open(path: &Path) -> Option<UnixDatagram> {
        let s = UnixDatagram::unbound().ok()?;
        s.connect(path).ok()?;
        // A stalled syslog daemon must never stall a policy answer.
        s.set_nonblocking(true).ok()?;
        Some(s)
    }

    /// Sends one datagram; on a refused or vanished socket, connects again (at most every
    /// [`RETRY`]) and sends once more. Returns whether a socket took it.
    fn send(&self, bytes: &[u8]) -> bool {
        let mut sock = lock(&self.sock);
        if let Some(s) = sock.as_ref() {
            match s.send(bytes) {
                Ok(_) => return true,
                // Full: dropped, as syslog(3) drops it; the socket itself is fine.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(_) => *sock = None,
            }
        }
        let mut tried = lock(&self.tried);
        if tried.is_some_and(|t| t.elapsed() < RETRY) {
            return false;
        }
        *tried = Some(Instant::now());
        *sock = Self::open(&self.path);
        match sock.as_ref() {
            Some(s) => {
                tracing::info!(path = ?self.path, "syslog socket connected again");
                s.send(bytes).is_ok()
            }
            None => false,
        }
    }
}

/// postgrey's lines to the syslog socket, or to the daemon's own log when there is none.
#[derive(Debug)]
pub struct Syslog {
    link: Option<Arc<Link>>,
    pid: u32,
    /// Lines waiting for this turn of the event loop to end, and whether a flush is due.
    pending: Arc<Mutex<(Vec<String>, bool)>>,
}

impl Syslog {
    /// Connects to `path` (usually `/dev/log`); an empty path disables it. A socket that is
    /// missing now is looked for again later.
    pub fn connect(path: Option<&Path>) -> Syslog {
        let link = path.map(|path| {
            Arc::new(Link {
                path: path.to_owned(),
                sock: Mutex::new(Link::open(path)),
                tried: Mutex::new(Some(Instant::now())),
            })
        });
        Syslog {
            link,
            pid: std::process::id(),
            pending: Arc::default(),
        }
    }

    /// Is a socket connected?
    pub fn is_connected(&self) -> bool {
        self.link.as_ref().is_some_and(|l| lock(&l.sock).is_some())
    }

    /// Logs a postgrey line: to syslog when there is a socket (journald or rsyslog get it
    /// there, so it is not written twice), else to the daemon's own log.
    ///
    /// Lines logged while the event loop answers a burst of requests go out together after
    /// it, one datagram each, so the syslog daemon is woken once per burst, not per line.
    pub fn postgrey(&self, line: &str) {
        let Some(link) = &self.link else {
            tracing::info!(target: "postgrey", "{line}");
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.send(line);
            return;
        };
        let msg = self.format(line);
        let schedule = {
            let mut p = lock(&self.pending);
            p.0.push(msg);
            !std::mem::replace(&mut p.1, true)
        };
        if schedule {
            let (link, pending) = (Arc::clone(link), Arc::clone(&self.pending));
            runtime.spawn(async move {
                tokio::task::yield_now().await;
                let lines = {
                    let mut p = lock(&pending);
                    p.1 = false;
                    std::mem::take(&mut p.0)
                };
                for l in lines {
                    if !link.send(l.as_bytes()) {
                        tracing::info!(target: "postgrey", "{}", l.split_once("]: ").map_or(l.as_str(), |(_, m)| m));
                    }
                }
            });
        }
    }

    /// Sends one line now; logged to the daemon's own log if no socket takes it.
    pub fn send(&self, line: &str) {
        let sent = self
            .link
            .as_ref()
            .is_some_and(|l| l.send(self.format(line).as_bytes()));
        if !sent {
            tracing::info!(target: "postgrey", "{line}");
        }
    }

    /// One syslog datagram; control characters from the peer's values become spaces.
    fn format(&self, line: &str) -> String {
        let clean: String = line
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        format!("<{PRI_MAIL_INFO}>postgrey[{}]: {clean}", self.pid)
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
        let log = Syslog::connect(Some(&path));
        assert!(log.is_connected());
        log.send("action=pass, reason=client AWL");
        let mut buf = [0u8; 256];
        let n = server.recv(&mut buf).unwrap();
        let got = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(got.starts_with("<22>postgrey["), "{got}");
        assert!(got.ends_with("]: action=pass, reason=client AWL"), "{got}");
        assert!(!Syslog::connect(None).is_connected());
        assert!(!Syslog::connect(Some(&dir.path().join("none"))).is_connected());
        log.send("a\nb");
        let n = server.recv(&mut buf).unwrap();
        assert!(std::str::from_utf8(&buf[..n]).unwrap().ends_with("]: a b"));
    }

    #[test]
    fn a_restarted_syslog_daemon_is_found_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let first = UnixDatagram::bind(&path).unwrap();
        let log = Syslog::connect(Some(&path));
        log.send("one");
        let mut buf = [0u8; 256];
        assert!(first.recv(&mut buf).is_ok());
        // The daemon restarts: a new socket at the same path.
        drop(first);
        std::fs::remove_file(&path).unwrap();
        let second = UnixDatagram::bind(&path).unwrap();
        second.set_nonblocking(true).unwrap();
        if let Some(l) = &log.link {
            *lock(&l.tried) = None;
        }
        log.send("two");
        let n = second.recv(&mut buf).unwrap();
        assert!(std::str::from_utf8(&buf[..n]).unwrap().ends_with("]: two"));
    }
}
