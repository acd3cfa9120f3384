//! End-to-end test harness: throw-away Postfix and Dovecot instances on loopback, an SMTP sink,
//! and helpers for the real clients (`swaks`, `postmap -q`, `doveadm`, Python's `imaplib`).
//!
//! Every instance lives in its own temporary directory with its own ports and is stopped when
//! its value is dropped, so a failing test does not leave servers behind. The programs come
//! from Debian's packages (`.ci/run` installs them); a missing one is a test failure, not a skip.

pub mod dns;
pub mod dovecot;
pub mod fixture;
pub mod inproc;
pub mod live_box;
pub mod postfix;
pub mod postgres;
pub mod process;
pub mod sidecars;
pub mod sink;
pub mod tools;

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A temporary directory that system users (postfix, dovecot, mail) can traverse.
#[derive(Debug)]
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    /// A new directory under `/tmp` with a short name (UNIX socket paths are short).
    pub fn new(prefix: &str) -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/tmp")
            .expect("create a temporary directory");
        set_mode(dir.path(), 0o755);
        Scratch { dir }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside it.
    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Creates a subdirectory with mode 0755.
    pub fn mkdir(&self, p: impl AsRef<Path>) -> PathBuf {
        let d = self.join(p);
        std::fs::create_dir_all(&d).expect("create a directory");
        set_mode(&d, 0o755);
        d
    }
}

/// `chmod`.
pub fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

/// Looks up a system user's uid and gid in /etc/passwd.
pub fn system_user(name: &str) -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&name) && f.len() > 3)
        .map(|f| (f[2].parse().unwrap(), f[3].parse().unwrap()))
        .unwrap_or_else(|| panic!("no system user {name}: is the Debian package installed?"))
}

/// `chown -R` to a system user.
pub fn chown_to(p: &Path, user: &str) {
    let (uid, gid) = system_user(user);
    std::os::unix::fs::chown(p, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
}

/// A loopback TCP port that was free a moment ago, for a server a test is about to start.
///
/// Taken from 20000-31999, below the kernel's ephemeral range (32768+), and handed out once
/// per test process: a port from `bind(0)` could be handed to a parallel test as well, or
/// taken meanwhile as the local port of some outgoing connection.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() * 97) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = u16::try_from(LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN)
            .expect("ports stay below 32000");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}-{}", LOW + SPAN - 1)
}

/// Waits until something accepts connections on `127.0.0.1:port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A binary of another package of this workspace, from the target directory the running test
/// was built in. `cargo test --workspace` builds every package's binaries before it runs a
/// test; run alone, a test that needs one says how to build it.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(name))
        .expect("the test runs from a target directory");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --workspace`; the README's test command does)",
        bin.display()
    );
    bin
}

/// Finds a program or fails the test with the package to install.
pub fn require_program(path: &str, package: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.exists(),
        "{path} is missing: install the Debian package `{package}` (`.ci/run` does)"
    );
    p
}

/// Inputs for a fuzz body in an ordinary test: `runs` byte strings of up to 40 pieces, each
/// piece either one of `pieces` or a run of up to 300 copies of a pseudo-random byte
/// (xorshift, fixed seed, so a failure repeats).
pub fn pseudo_random_inputs(pieces: &[&[u8]], runs: usize, mut f: impl FnMut(&[u8])) {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut data = Vec::new();
    for _ in 0..runs {
        data.clear();
        for _ in 0..(next() % 40) {
            let r = next();
            if r % 5 == 0 || pieces.is_empty() {
                data.extend(std::iter::repeat_n(
                    (r >> 8) as u8,
                    (r >> 16) as usize % 300,
                ));
            } else {
                data.extend_from_slice(pieces[(r >> 8) as usize % pieces.len()]);
            }
        }
        f(&data);
    }
}

/// One HTTP exchange with 127.0.0.1:`port` (a daemon's `/metrics`): the whole answer, head
/// and body.
pub fn http(port: u16, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the HTTP port");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of the sample `name{labels}` (labels as the text spells them) in a metrics text,
/// or 0.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}
