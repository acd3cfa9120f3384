//! Starting `miab-policyd` for the integration tests (the real binary, or `policyd::run` in
//! this test process for tests of its answers alone), and speaking the policy protocol to it.

#![allow(dead_code)]

use miab_e2e::inproc::InProcess;
use miab_e2e::process::DaemonProcess;
use miab_e2e::{Scratch, free_port};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

/// A started daemon and its port.
#[derive(Debug)]
pub struct Policyd {
    pub process: Server,
    pub port: u16,
}

/// Where the daemon runs.
#[derive(Debug)]
pub enum Server {
    /// The real binary, for what needs a process: signals, a crash, the start-up line.
    Process(DaemonProcess),
    /// `policyd::run` on a thread of this process, its log lines captured.
    InProcess(InProcess),
}

impl Server {
    /// What it logged so far.
    pub fn log(&self) -> String {
        match self {
            Server::Process(p) => p.log(),
            Server::InProcess(i) => i.log(),
        }
    }

    /// Sends SIGTERM and waits for the exit (of the real binary only).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        match self {
            Server::Process(p) => p.terminate(),
            Server::InProcess(_) => panic!("an in-process server has no process of its own"),
        }
    }

    /// The process id (of the real binary only).
    pub fn pid(&self) -> u32 {
        match self {
            Server::Process(p) => p.pid(),
            Server::InProcess(_) => panic!("an in-process server has no process of its own"),
        }
    }
}

/// Starts `policyd::run` with `config` in this process ([`InProcess`]), its state opened as
/// `daemon::launch` would.
pub fn start_in_process(dir: &Scratch, config: &str) -> Policyd {
    let path = dir.join("sidecars.toml");
    let config = daemon::Config::from_toml(config, &path).unwrap();
    let section = config.section::<policyd::settings::Settings>().unwrap();
    let inproc = InProcess::start(
        "info",
        move || async move { policyd::State::open(&config, &section).await.unwrap().0 },
        |l, s, sh| policyd::run(l, None, s, sh),
    );
    Policyd {
        port: inproc.port,
        process: Server::InProcess(inproc),
    }
}

/// A configuration for tests: storage under `dir`, DNS from `dns`, no syslog, only
/// 127.0.0.1 trusted, then `extra` TOML appended (sections after the top-level keys).
pub fn config(dir: &Scratch, dns: SocketAddr, top: &str, extra: &str) -> String {
    format!(
        "storage_root = \"{root}\"\nhostname = \"box.example.com\"\n\
         [dns]\nnameservers = [\"{dns}\"]\ntimeout_ms = 400\n\
         [policyd]\ntrusted_clients = [\"127.0.0.1/32\"]\n{top}\n\
         [policyd.greylist]\nsyslog_socket = \"\"\nwhitelist_clients = []\nwhitelist_recipients = []\n{extra}\n",
        root = dir.path().display(),
    )
}

/// Writes `config` to `sidecars.toml` in `dir` and starts the daemon on a free port.
pub fn start(dir: &Scratch, config: &str) -> Policyd {
    let path = dir.join("sidecars.toml");
    std::fs::write(&path, config).unwrap();
    let port = free_port();
    let listen = format!("inet:127.0.0.1:{port}");
    let process = DaemonProcess::start(
        Path::new(env!("CARGO_BIN_EXE_miab-policyd")),
        &["--config", path.to_str().unwrap(), "--listen", &listen],
        dir.join("policyd.log"),
    );
    Policyd {
        process: Server::Process(process),
        port,
    }
}

/// One client connection.
#[derive(Debug)]
pub struct Client {
    s: TcpStream,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client { s }
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// Reads one reply (up to the blank line); `None` if the server closed instead.
    pub fn reply(&mut self) -> Option<String> {
        let mut got = Vec::new();
        let mut b = [0u8; 1];
        while !got.ends_with(b"\n\n") {
            match self.s.read(&mut b) {
                Ok(0) => return None,
                Ok(_) => got.push(b[0]),
                // A reset: the server closed with our bytes unread.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
        let text = String::from_utf8(got).unwrap();
        Some(text.trim_end().strip_prefix("action=").unwrap().to_owned())
    }

    /// Sends a request built from `attrs` and returns the action.
    pub fn ask(&mut self, attrs: &[(&str, &str)]) -> String {
        self.send(&request(attrs));
        self.reply().expect("a reply")
    }
}

/// A Postfix-style RCPT request with `attrs` overriding the defaults.
pub fn request(attrs: &[(&str, &str)]) -> Vec<u8> {
    let mut all: Vec<(&str, &str)> = vec![
        ("request", "smtpd_access_policy"),
        ("protocol_state", "RCPT"),
        ("protocol_name", "ESMTP"),
        ("client_address", "192.0.2.10"),
        ("client_name", "mx.example.net"),
        ("reverse_client_name", "mx.example.net"),
        ("helo_name", "mx.example.net"),
        ("sender", "alice@example.net"),
        ("recipient", "me@example.com"),
        ("instance", "1.1.1.1"),
        ("etrn_domain", ""),
        ("sasl_username", ""),
        ("policy_context", ""),
    ];
    for (k, v) in attrs {
        if let Some(slot) = all.iter_mut().find(|(n, _)| n == k) {
            slot.1 = v;
        } else {
            all.push((k, v));
        }
    }
    let mut out = Vec::new();
    for (k, v) in all {
        out.extend_from_slice(format!("{k}={v}\n").as_bytes());
    }
    out.push(b'\n');
    out
}
