//! A throw-away PostgreSQL 15, started the way a test starts Postfix and Dovecot: its own data
//! directory in a scratch directory, run as the `postgres` user (PostgreSQL refuses root) with
//! `pg_ctl`, listening on a free loopback port and a socket in the scratch directory, with
//! `fsync` off (nothing here must survive a power loss). It can be stopped hard and started
//! again on the same port and data, which is how a test takes the database away from the
//! daemons and gives it back. Dropping it stops it.

use crate::Scratch;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian's PostgreSQL 15 programs.
const BIN: &str = "/usr/lib/postgresql/15/bin";

/// A running (or stopped) server.
#[derive(Debug)]
pub struct Postgres {
    data: PathBuf,
    sockets: PathBuf,
    log: PathBuf,
    port: u16,
    _dir: Scratch,
}

fn as_postgres(program: &str, args: &[&str]) -> std::process::Output {
    let bin = Path::new(BIN).join(program);
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(&bin)
        .args(args)
        .current_dir("/")
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Postgres {
    /// Initialises a cluster (trust authentication on loopback), starts it and creates the
    /// database `miab`.
    pub fn start() -> Postgres {
        let dir = Scratch::new("pg");
        let data = dir.join("data");
        let sockets = dir.mkdir("run");
        let log = dir.join("server.log");
        for p in [&sockets, dir.path()] {
            let status = Command::new("chown")
                .args(["postgres:postgres", p.to_str().unwrap()])
                .status()
                .unwrap();
            assert!(status.success());
        }
        as_postgres(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
        let pg = Postgres {
            data,
            sockets,
            log,
            port: crate::free_port(),
            _dir: dir,
        };
        pg.resume();
        as_postgres(
            "createdb",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-U",
                "postgres",
                "miab",
            ],
        );
        pg
    }

    /// The URL the daemons are given.
    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/miab", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts the server on its data and port (again, after [`Postgres::kill`]).
    pub fn resume(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.sockets.display()
        );
        as_postgres(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-l",
                self.log.to_str().unwrap(),
                "-o",
                &opts,
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
    }

    /// Stops the server at once (`immediate`: connections are cut, as when a host dies).
    pub fn kill(&self) {
        as_postgres(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    /// Runs `sql` with psql and returns its unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        let out = as_postgres(
            "psql",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "miab",
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The postmaster's process id (its backends are its children).
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(Path::new(BIN).join("pg_ctl"))
            .args([
                "-D",
                self.data.to_str().unwrap_or(""),
                "-m",
                "immediate",
                "stop",
            ])
            .current_dir("/")
            .output();
    }
}
