//! `bench-authd`: miab-authd side by side with Dovecot's own auth socket, configured as MIAB
//! configures it (`passdb sql` over the same `users.sqlite`, SHA512-CRYPT), in one run, with
//! the protocol Postfix speaks: handshake, then `AUTH PLAIN` with an initial response, one at
//! a time per connection, many connections.
//!
//! Two streams: first-time credentials (every user once: each one costs a SHA512-crypt in
//! both servers) and repeated credentials (a few users over and over, as smtpd re-authenticates
//! clients that send many messages). Reports auths/s, p50/p99, CPU per auth (the daemon, or
//! Dovecot's master with its auth processes) and peak RSS.
//!
//! Build and run (as root; dovecot-core and dovecot-sqlite installed):
//! `cargo build --release -p authd -p miab-bench && target/release/bench-authd [--quick]`

use base64::Engine as _;
use miab_bench::{cpu_seconds, percentile, status_kib, with_children};
use miab_e2e::dovecot::Dovecot;
use miab_e2e::process::DaemonProcess;
use miab_e2e::{Scratch, fixture};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use userdb::{BoxEnv, Password, UserDb};

const CONNS: usize = 8;
const PASSWORD: &str = "bench-password-1";

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (users, repeated) = if quick { (64, 4_000) } else { (800, 40_000) };
    let bin = std::env::current_exe()
        .unwrap()
        .with_file_name("miab-authd");
    assert!(
        bin.exists(),
        "{} missing: cargo build --release -p authd -p miab-bench",
        bin.display()
    );

    let dir = Scratch::new("bench");
    let root = dir.mkdir("data");
    let db = fixture::miab_box(&root);
    add_users(&db, users);
    let dovecot = Dovecot::start(&root);
    let sock = dir.join("authd.sock");
    let config = format!(
        "storage_root = \"{}\"\n[authd]\nsocket_mode = \"0666\"\nfailure_delay_ms = 0\ncheckpassword_listen = \"\"\n",
        root.display()
    );
    let listen = format!("unix:{}", sock.display());
    let ours = DaemonProcess::with_config(&bin, &dir, "authd", &config, &["--listen", &listen]);

    let first: Vec<String> = (0..users)
        .map(|i| format!("user{i}@bench.example"))
        .collect();
    let again: Vec<String> = (0..repeated)
        .map(|i| format!("user{}@bench.example", i % 8))
        .collect();
    println!(
        "# miab-authd vs Dovecot's auth socket (passdb sql, MIAB's configuration)\n\n{CONNS} connections; AUTH PLAIN as Postfix sends it; SHA512-CRYPT (5000 rounds) hashes.\nFirst-time: {users} users once each. Repeated: {repeated} authentications over 8 users.\n"
    );
    println!("| stream | server | auths | auths/s | p50 | p99 | CPU per auth | peak RSS |");
    println!("|---|---|---|---|---|---|---|---|");
    let dovecot_sock = dovecot.auth_client_socket();
    let dovecot_pids = || with_children(dovecot.pid());
    for (name, stream) in [("first-time", &first), ("repeated", &again)] {
        let d = measure(&dovecot_sock, stream, &dovecot_pids);
        let o = measure(&sock, stream, &|| vec![ours.pid()]);
        for (server, r) in [("Dovecot", &d), ("miab-authd", &o)] {
            println!(
                "| {name} | {server} | {} | {:.0} | {:.3} ms | {:.3} ms | {:.3} ms | {:.1} MiB |",
                r.auths,
                r.rate(),
                r.p50.as_secs_f64() * 1000.0,
                r.p99.as_secs_f64() * 1000.0,
                r.cpu * 1000.0 / r.auths as f64,
                r.rss_kib as f64 / 1024.0
            );
        }
        println!(
            "| {name} | ratio | | {:.2}x | | | {:.3}x | {:.2}x |",
            o.rate() / d.rate(),
            (o.cpu / o.auths as f64) / (d.cpu / d.auths as f64),
            o.rss_kib as f64 / d.rss_kib as f64
        );
    }
}

fn add_users(db: &Path, n: usize) {
    let mut udb = UserDb::open(db, userdb::Access::ReadWrite).unwrap();
    let env = BoxEnv {
        primary_hostname: fixture::HOSTNAME.into(),
    };
    for i in 0..n {
        udb.add_user(
            &format!("user{i}@bench.example"),
            &Password::new(PASSWORD),
            "",
            "0",
            &env,
        )
        .unwrap();
    }
}

struct Measured {
    auths: usize,
    wall: Duration,
    p50: Duration,
    p99: Duration,
    cpu: f64,
    rss_kib: u64,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.auths as f64 / self.wall.as_secs_f64()
    }
}

fn measure(sock: &Path, logins: &[String], pids: &dyn Fn() -> Vec<u32>) -> Measured {
    let cpu = |p: &[u32]| p.iter().map(|&pid| cpu_seconds(pid)).sum::<f64>();
    let before = pids();
    let cpu0 = cpu(&before);
    let start = Instant::now();
    let workers: Vec<_> = (0..CONNS)
        .map(|c| {
            let mine: Vec<String> = logins.iter().skip(c).step_by(CONNS).cloned().collect();
            let sock: PathBuf = sock.to_owned();
            std::thread::spawn(move || run_conn(&sock, &mine))
        })
        .collect();
    let mut lat: Vec<Duration> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let wall = start.elapsed();
    let after = pids();
    lat.sort();
    Measured {
        auths: lat.len(),
        wall,
        p50: percentile(&lat, 50.0),
        p99: percentile(&lat, 99.0),
        cpu: cpu(&after) - cpu0,
        rss_kib: after.iter().map(|&p| status_kib(p, "VmHWM")).sum(),
    }
}

/// One Postfix-like connection: handshake, then one AUTH at a time; every one must succeed.
fn run_conn(sock: &Path, logins: &[String]) -> Vec<Duration> {
    let s = UnixStream::connect(sock).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    w.write_all(b"VERSION\t1\t0\nCPID\t1\n").unwrap();
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "DONE\n" {
            break;
        }
    }
    let mut lat = Vec::with_capacity(logins.len());
    for (i, login) in logins.iter().enumerate() {
        let resp =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{login}\0{PASSWORD}"));
        let req = format!(
            "AUTH\t{}\tPLAIN\tservice=smtp\tnologin\tlip=127.0.0.1\trip=127.0.0.1\tresp={resp}\n",
            i + 1
        );
        let t = Instant::now();
        w.write_all(req.as_bytes()).unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        lat.push(t.elapsed());
        assert!(line.starts_with("OK\t"), "{login}: {line}");
    }
    lat
}
