//! One of our daemons run as a child process, the way systemd runs it: its stderr goes to a
//! log file, readiness is its "ready" log line, SIGTERM stops it, and drop kills what is left.
//! Its RUST_LOG is `info`, or `MIAB_TEST_LOG` when set (`MIAB_TEST_LOG=trace` shows the wire).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// A running daemon.
#[derive(Debug)]
pub struct DaemonProcess {
    child: Child,
    log: PathBuf,
}

impl DaemonProcess {
    /// Starts `bin` with `args` and waits for a log line containing `ready`.
    pub fn start(bin: &Path, args: &[&str], log: PathBuf) -> DaemonProcess {
        let level = std::env::var("MIAB_TEST_LOG").unwrap_or_else(|_| "info".into());
        Self::start_logging(bin, args, log, &level)
    }

    /// [`start`](Self::start) with `RUST_LOG=level`, for tests that look at what the most
    /// verbose logging writes.
    pub fn start_logging(bin: &Path, args: &[&str], log: PathBuf, level: &str) -> DaemonProcess {
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", level)
            .env_remove("MIAB_CONFIG")
            .env_remove("MIAB_STORAGE_ROOT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let mut d = DaemonProcess { child, log };
        let ready = crate::wait_until(Duration::from_secs(20), || {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("{} exited with {status}:\n{}", bin.display(), d.log());
            }
            d.log().contains("ready").then_some(())
        });
        assert!(ready.is_some(), "{} not ready:\n{}", bin.display(), d.log());
        d
    }

    /// Writes `config` to `NAME.toml` in `dir` and starts `bin --config FILE ARGS...`, logging
    /// to `NAME.log` there.
    pub fn with_config(
        bin: &Path,
        dir: &crate::Scratch,
        name: &str,
        config: &str,
        args: &[&str],
    ) -> DaemonProcess {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        let mut all = vec!["--config", path.to_str().unwrap()];
        all.extend_from_slice(args);
        DaemonProcess::start(bin, &all, dir.join(format!("{name}.log")))
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.child.wait().unwrap()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- daemon log ({}) ---\n{}",
                self.log.display(),
                self.log()
            );
        }
    }
}
