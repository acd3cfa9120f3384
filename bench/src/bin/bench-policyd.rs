//! `bench-policyd`: miab-policyd side by side with postgrey (Debian's package) on the same
//! stream of policy requests, in one run. Each daemon is pinned to core 0, the client to core 1;
//! both greylist with the same settings and the same whitelist files, and both answer every
//! request from their on-disk state (BerkeleyDB for postgrey, SQLite for us).
//!
//! The stream: `conns` connections, each sending requests one at a time as smtpd does. Four
//! in five are new triplets (postgrey's own benchmark advice: its `--delay=0` means 300 s), one
//! in five repeats an earlier one. Reports requests/s, p50/p99 latency, CPU per request and
//! peak RSS, and the ratios.
//!
//! Build and run (as root; `apt-get install postgrey`):
//! `cargo build --release -p policyd -p miab-bench && target/release/bench-policyd [--quick]`
//!
//! `--outbound` measures the authenticated path instead: the same stream of authenticated
//! RCPT and END-OF-MESSAGE requests (each a new message to a recipient never seen before, the containment
//! check's most expensive case, with floors so high that nothing is held) to three
//! miab-policyd instances: `sender_login` alone (what MIAB's Postfix map does), with the
//! fixed `rate_limit`, and with `containment`, whose sending DB holds four weeks of hourly
//! history for each login first.
//!
//! `--store` measures the store several hosts share: miab-policyd on its SQLite files and on
//! PostgreSQL (a throw-away PostgreSQL 15, pinned to the daemon's core, its CPU counted with
//! the daemon's), on the greylisting stream above and on the authenticated stream with
//! containment, in one run.
//!
//! `--watching` measures what watching costs: on the greylisting stream and on the
//! authenticated stream with containment, miab-policyd without a decision journal or a metrics
//! endpoint, and with both (the endpoint asked every second during the run). The figures are
//! counted in either case (they are plain atomic counters); the difference is the journal
//! and serving the scrapes.

use miab_bench::{cpu_seconds, percentile, pin_self_to_core_1, status_kib};
use miab_e2e::process::DaemonProcess;
use miab_e2e::{Scratch, chown_to, fixture, free_port, wait_for_port};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CONNS: usize = 16;

#[derive(Debug)]
struct Run {
    name: &'static str,
    wall: Duration,
    requests: usize,
    latencies: Vec<Duration>,
    cpu: f64,
    rss_kib: u64,
    deferred: usize,
}

/// One table row: round, name, rate, p50, p99, CPU per request, peak RSS, the count column.
fn print_row(round: usize, r: &Run) {
    let mut l = r.latencies.clone();
    l.sort();
    println!(
        "| {round} | {} | {:.0} | {:.3} ms | {:.3} ms | {:.4} ms | {:.1} MiB | {} |",
        r.name,
        r.rate(),
        percentile(&l, 50.0).as_secs_f64() * 1000.0,
        percentile(&l, 99.0).as_secs_f64() * 1000.0,
        r.cpu_per_request_ms(),
        r.rss_kib as f64 / 1024.0,
        r.deferred
    );
}

impl Run {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.wall.as_secs_f64()
    }
    fn cpu_per_request_ms(&self) -> f64 {
        self.cpu * 1000.0 / self.requests as f64
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (per_conn, rounds) = if quick { (250, 1) } else { (2500, 5) };
    if std::env::args().any(|a| a == "--outbound") {
        return outbound(per_conn, rounds);
    }
    if std::env::args().any(|a| a == "--store") {
        return store(per_conn, rounds);
    }
    if std::env::args().any(|a| a == "--watching") {
        return watching(per_conn, rounds);
    }
    let bin = std::env::current_exe()
        .unwrap()
        .with_file_name("miab-policyd");
    assert!(
        bin.exists(),
        "{} missing: cargo build --release -p policyd -p miab-bench",
        bin.display()
    );
    let postgrey = Path::new("/usr/sbin/postgrey");
    assert!(
        postgrey.exists(),
        "postgrey missing: apt-get install postgrey"
    );

    // Both daemons log every decision to syslog, as on a real box. Without a syslog daemon
    // here, the bench stands in for one.
    let _syslog = miab_bench::SyslogSink::open();
    let dir = Scratch::new("bench");
    let root = dir.mkdir("data");
    fixture::miab_box(&root);

    // postgrey, as MIAB runs it (delay 180), in the foreground.
    let pg_db = dir.mkdir("postgrey-db");
    chown_to(&pg_db, "postgrey");
    let pg_port = free_port();
    let mut pg: Child = Command::new("/usr/bin/taskset")
        .args(["-c", "0", "/usr/sbin/postgrey"])
        .arg(format!("--inet=127.0.0.1:{pg_port}"))
        .arg(format!("--dbdir={}", pg_db.display()))
        .args(["--delay=180", "--user=postgrey", "--group=postgrey"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start postgrey");
    assert!(
        wait_for_port(pg_port, Duration::from_secs(20)),
        "postgrey did not listen"
    );

    // miab-policyd with the same settings: greylisting only, the same whitelist files, no
    // DNS (SPF pool keying off: postgrey has no equivalent to compare with).
    let port = free_port();
    let config = dir.join("policyd.toml");
    std::fs::write(
        &config,
        format!(
            "storage_root = \"{}\"\nhostname = \"bench.example\"\n[policyd]\nlisten = \"inet:127.0.0.1:{port}\"\n\
             checks = [\"greylist\"]\ntrusted_clients = []\n[policyd.greylist]\nspf_pool = false\n",
            root.display()
        ),
    )
    .unwrap();
    let ours = DaemonProcess::start(
        Path::new("/usr/bin/taskset"),
        &[
            "-c",
            "0",
            bin.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        dir.join("policyd.log"),
    );
    pin_self_to_core_1();

    println!(
        "# miab-policyd vs postgrey\n\n{rounds} rounds; each sends {CONNS} connections x {per_conn} requests (one at a time per connection, as smtpd sends them) to postgrey, then the same requests to miab-policyd; 4 in 5 new triplets, 1 in 5 repeats, new triplets every round.\nEach daemon pinned to core 0, the client to core 1.\n"
    );
    println!("| round | daemon | requests/s | p50 | p99 | CPU per request | peak RSS | deferred |");
    println!("|---|---|---|---|---|---|---|---|");
    let pg_pid = pg.id();
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        // The same stream for both; a new one each round.
        let streams = streams(round, CONNS, per_conn);
        let a = measure("postgrey", pg_port, pg_pid, &streams);
        let b = measure("miab-policyd", port, ours.pid(), &streams);
        for r in [&a, &b] {
            print_row(round, r);
        }
        ratios.push((
            b.rate() / a.rate(),
            b.cpu_per_request_ms() / a.cpu_per_request_ms(),
            b.rss_kib as f64 / a.rss_kib as f64,
        ));
    }
    let _ = Command::new("kill").arg(pg_pid.to_string()).status();
    let _ = pg.wait();
    let median =
        |f: fn(&(f64, f64, f64)) -> f64| miab_bench::median(ratios.iter().map(f).collect());
    println!(
        "\nmiab-policyd / postgrey, median of {rounds} rounds: throughput {:.2}x, CPU per request {:.3}x, peak RSS {:.2}x",
        median(|r| r.0),
        median(|r| r.1),
        median(|r| r.2)
    );
}

/// `--outbound`: three miab-policyd instances on one authenticated stream.
fn outbound(per_conn: usize, rounds: usize) {
    let bin = std::env::current_exe()
        .unwrap()
        .with_file_name("miab-policyd");
    let dir = Scratch::new("bench");
    let root = dir.mkdir("data");
    fixture::miab_box(&root);
    let variants: [(&'static str, &str); 3] = [
        ("sender_login", "checks = [\"sender_login\"]"),
        (
            "+ rate_limit",
            "checks = [\"sender_login\", \"rate_limit\"]\n[policyd.rate_limit]\nmessages_per_hour = 1000000000\nrecipients_per_hour = 1000000000",
        ),
        (
            "+ containment",
            "checks = [\"sender_login\", \"containment\"]\n[policyd.containment]\nfloor_messages = 1000000000\nfloor_recipients = 1000000000\nfloor_new_recipients = 1000000000\nnotify = \"\"",
        ),
    ];
    // Four weeks of history, an hour at a time, as a box that ran for a month has.
    let mut sending =
        state::sending::Sending::open(&root.join("mail/policyd/sending.sqlite")).unwrap();
    let now = state::clock::unix_now();
    let rule = state::sending::Rule::default();
    for login in ["me@example.com", "you@example.com", "boss@other.example"] {
        for h in 2..28 * 24 {
            let rcpt = format!("history-{h}@elsewhere.example");
            sending
                .record(&rule, login, &[rcpt], true, now - h * 3600)
                .unwrap();
        }
    }
    drop(sending);
    let daemons: Vec<(&'static str, u16, DaemonProcess)> = variants
        .iter()
        .map(|(name, checks)| {
            let (port, d) = start_pinned(&bin, &dir, &root, "", checks);
            (*name, port, d)
        })
        .collect();
    pin_self_to_core_1();
    println!(
        "# miab-policyd, authenticated RCPT requests\n\n{rounds} rounds; each sends {CONNS} connections x {per_conn} authenticated requests (3 logins, each request a new message to a new recipient) to each instance in turn.\nEach daemon pinned to core 0, the client to core 1.\n"
    );
    println!(
        "| round | checks | requests/s | p50 | p99 | CPU per request | peak RSS | not DUNNO |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let streams = outbound_streams(round, CONNS, per_conn);
        let runs: Vec<Run> = daemons
            .iter()
            .map(|(name, port, d)| measure(name, *port, d.pid(), &streams))
            .collect();
        for r in &runs {
            print_row(round, r);
        }
        ratios.push((
            runs[2].rate() / runs[0].rate(),
            runs[2].cpu_per_request_ms() / runs[0].cpu_per_request_ms(),
            runs[2].cpu_per_request_ms() / runs[1].cpu_per_request_ms(),
        ));
    }
    let mut v: Vec<(f64, f64, f64)> = ratios.clone();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let m = v[v.len() / 2];
    println!(
        "\ncontainment / sender_login alone, round with the median throughput ratio: throughput {:.2}x, CPU per request {:.2}x (vs the fixed rate_limit: {:.2}x)",
        m.0, m.1, m.2
    );
}

/// `--watching`: journal and metrics endpoint off and on, greylisting and containment.
fn watching(per_conn: usize, rounds: usize) {
    let bin = std::env::current_exe()
        .unwrap()
        .with_file_name("miab-policyd");
    let dir = Scratch::new("bench");
    let greylist = "checks = [\"greylist\"]\ntrusted_clients = []\n[policyd.greylist]\nspf_pool = false\nsyslog_socket = \"\"";
    let containment = "checks = [\"sender_login\", \"containment\"]\n[policyd.containment]\nfloor_messages = 1000000000\nfloor_recipients = 1000000000\nfloor_new_recipients = 1000000000\nnotify = \"\"";
    let watched = |n: usize| {
        let m = free_port();
        let journal = dir.join(format!("journal-{n}.sqlite"));
        (
            m,
            format!(
                "metrics_listen = \"inet:127.0.0.1:{m}\"\njournal = \"{}\"\n",
                journal.display()
            ),
        )
    };
    let (m1, w1) = watched(1);
    let (m2, w2) = watched(2);
    let setups: Vec<(&'static str, Option<u16>, String, bool)> = vec![
        ("greylist", None, greylist.to_owned(), false),
        (
            "greylist + journal + metrics",
            Some(m1),
            format!("{w1}{greylist}"),
            false,
        ),
        ("containment", None, containment.to_owned(), true),
        (
            "containment + journal + metrics",
            Some(m2),
            format!("{w2}{containment}"),
            true,
        ),
    ];
    // Each instance has its own storage root, so greylisting starts empty for each.
    let daemons: Vec<(&'static str, Option<u16>, bool, u16, DaemonProcess)> = setups
        .into_iter()
        .enumerate()
        .map(|(i, (name, metrics, checks, outbound))| {
            let root = dir.mkdir(format!("data-{i}"));
            fixture::miab_box(&root);
            let (port, d) = start_pinned(&bin, &dir, &root, "", &checks);
            (name, metrics, outbound, port, d)
        })
        .collect();
    pin_self_to_core_1();
    println!(
        "# miab-policyd: the cost of the decision journal and the metrics endpoint\n\n{rounds} rounds; each sends {CONNS} connections x {per_conn} requests to each instance in turn: the greylisting stream (4 in 5 new triplets) and the authenticated stream (each request a new message to a new recipient, counted by containment). \"+ journal + metrics\": a decision journal and /metrics asked every second.\nEach daemon pinned to core 0, the client to core 1.\n"
    );
    println!(
        "| round | daemon | requests/s | p50 | p99 | CPU per request | peak RSS | not DUNNO |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut ratios: Vec<(f64, f64, f64, f64)> = Vec::new();
    for round in 1..=rounds {
        let grey = streams(round, CONNS, per_conn);
        let auth = outbound_streams(round, CONNS, per_conn);
        let runs: Vec<Run> = daemons
            .iter()
            .map(|(name, metrics, outbound, port, d)| {
                let scraper =
                    metrics.map(|m| miab_bench::Scraper::start(m, Duration::from_secs(1)));
                let s = if *outbound { &auth } else { &grey };
                let r = measure(name, *port, d.pid(), s);
                if let Some(sc) = scraper {
                    assert!(sc.finish() > 0, "{name}: no scrape answered");
                }
                r
            })
            .collect();
        for r in &runs {
            print_row(round, r);
        }
        ratios.push(pair_ratios(&runs));
    }
    print_pair_medians("watched / not watched", &ratios);
}

/// Second run over first and fourth over third, throughput and CPU per request: the two
/// pairs (greylisting, containment) a round of `--store` or `--watching` measures.
fn pair_ratios(runs: &[Run]) -> (f64, f64, f64, f64) {
    (
        runs[1].rate() / runs[0].rate(),
        runs[1].cpu_per_request_ms() / runs[0].cpu_per_request_ms(),
        runs[3].rate() / runs[2].rate(),
        runs[3].cpu_per_request_ms() / runs[2].cpu_per_request_ms(),
    )
}

/// The median of each of [`pair_ratios`]'s figures over the rounds, as the closing line.
fn print_pair_medians(what: &str, ratios: &[(f64, f64, f64, f64)]) {
    let median =
        |f: fn(&(f64, f64, f64, f64)) -> f64| miab_bench::median(ratios.iter().map(f).collect());
    println!(
        "\n{what}, median of {} rounds: greylisting throughput {:.2}x, CPU per request {:.2}x; containment throughput {:.2}x, CPU per request {:.2}x",
        ratios.len(),
        median(|r| r.0),
        median(|r| r.1),
        median(|r| r.2),
        median(|r| r.3)
    );
}

/// miab-policyd pinned to core 0 on a free port, over the storage root `root`, with `top`
/// (shared settings, `[store]`) and `checks` (the rest of `[policyd]`) in its configuration.
fn start_pinned(
    bin: &Path,
    dir: &Scratch,
    root: &Path,
    top: &str,
    checks: &str,
) -> (u16, DaemonProcess) {
    let port = free_port();
    let config = dir.join(format!("policyd-{port}.toml"));
    std::fs::write(
        &config,
        format!(
            "storage_root = \"{}\"\nhostname = \"bench.example\"\n{top}[policyd]\nlisten = \"inet:127.0.0.1:{port}\"\n{checks}\n",
            root.display()
        ),
    )
    .unwrap();
    let d = DaemonProcess::start(
        Path::new("/usr/bin/taskset"),
        &[
            "-c",
            "0",
            bin.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        dir.join(format!("policyd-{port}.log")),
    );
    (port, d)
}

/// `--store`: SQLite files against PostgreSQL, greylisting and containment.
fn store(per_conn: usize, rounds: usize) {
    let bin = std::env::current_exe()
        .unwrap()
        .with_file_name("miab-policyd");
    let pg = miab_e2e::postgres::Postgres::start();
    let pg_pid = pg.pid().expect("the postmaster's pid");
    // The server and every backend it forks later on the daemon's core.
    let _ = Command::new("/usr/bin/taskset")
        .args(["-a", "-p", "-c", "0", &pg_pid.to_string()])
        .stdout(Stdio::null())
        .status();
    let _syslog = miab_bench::SyslogSink::open();
    let dir = Scratch::new("bench");
    let root = dir.mkdir("data");
    fixture::miab_box(&root);
    let greylist = "checks = [\"greylist\"]\ntrusted_clients = []\n[policyd.greylist]\nspf_pool = false\nsyslog_socket = \"\"";
    let containment = "checks = [\"sender_login\", \"containment\"]\n[policyd.containment]\nfloor_messages = 1000000000\nfloor_recipients = 1000000000\nfloor_new_recipients = 1000000000\nnotify = \"\"";
    let store = format!("[store]\nurl = \"{}\"\npublish = true\n", pg.url());
    let variants: [(&'static str, &str, String); 4] = [
        ("greylist, SQLite", greylist, String::new()),
        ("greylist, PostgreSQL", greylist, store.clone()),
        ("containment, SQLite", containment, String::new()),
        ("containment, PostgreSQL", containment, store),
    ];
    let daemons: Vec<(&'static str, u16, DaemonProcess)> = variants
        .iter()
        .map(|(name, checks, store)| {
            let (port, d) = start_pinned(&bin, &dir, &root, store, checks);
            (*name, port, d)
        })
        .collect();
    pin_self_to_core_1();
    println!(
        "# miab-policyd on SQLite and on PostgreSQL\n\n{rounds} rounds; each sends {CONNS} connections x {per_conn} requests to each instance in turn: the greylisting stream (4 in 5 new triplets, 1 in 5 repeats) and the authenticated stream (RCPT then END-OF-MESSAGE, each message new, containment counting it). PostgreSQL 15 (fsync off, as in the tests) pinned to the daemons' core; its CPU is counted with the daemon's.\n"
    );
    println!(
        "| round | daemon | requests/s | p50 | p99 | CPU per request | peak RSS | deferred / not DUNNO |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let grey = streams(round, CONNS, per_conn);
        let auth = outbound_streams(round, CONNS, per_conn);
        let mut runs = Vec::new();
        for (i, (name, port, d)) in daemons.iter().enumerate() {
            let stream = if i < 2 { &grey } else { &auth };
            let with_pg = i % 2 == 1;
            let pg_cpu = || -> f64 {
                miab_bench::with_children(pg_pid)
                    .into_iter()
                    .map(cpu_seconds)
                    .sum()
            };
            let before = if with_pg { pg_cpu() } else { 0.0 };
            let mut r = measure(name, *port, d.pid(), stream);
            if with_pg {
                r.cpu += pg_cpu() - before;
            }
            print_row(round, &r);
            runs.push(r);
        }
        ratios.push(pair_ratios(&runs));
    }
    print_pair_medians("PostgreSQL / SQLite", &ratios);
}

/// Authenticated messages, as two requests each (RCPT, then END-OF-MESSAGE): each a new
/// message (its own `instance`) to a recipient that was never written to, from one of the
/// box's three users as itself.
fn outbound_streams(round: usize, conns: usize, per_conn: usize) -> Vec<Vec<Vec<u8>>> {
    let logins = ["me@example.com", "you@example.com", "boss@other.example"];
    (0..conns)
        .map(|c| {
            (0..per_conn)
                .map(|i| {
                    let login = logins[(c + i) % logins.len()];
                    // Every other request is the end of data of the message before it.
                    let (state, context, i) = if i % 2 == 1 {
                        ("END-OF-MESSAGE", "data", i - 1)
                    } else {
                        ("RCPT", "sender", i)
                    };
                    let login = if state == "RCPT" { login } else { logins[(c + i) % logins.len()] };
                    format!(
                        "request=smtpd_access_policy\nprotocol_state={state}\nprotocol_name=ESMTP\n\
                         client_address=192.0.2.{c}\nclient_name=client{c}.example\n\
                         reverse_client_name=client{c}.example\nhelo_name=laptop{c}\n\
                         sender={login}\nrecipient=r{round}-{c}-{i}@elsewhere.example\n\
                         recipient_count=0\nqueue_id=\ninstance={round}.{c}.{i}\nsize=0\netrn_domain=\n\
                         stress=\nsasl_method=PLAIN\nsasl_username={login}\nsasl_sender=\nccert_subject=\n\
                         ccert_issuer=\nccert_fingerprint=\nccert_pubkey_fingerprint=\n\
                         encryption_protocol=TLSv1.3\nencryption_cipher=TLS_AES_256_GCM_SHA384\nencryption_keysize=256\npolicy_context={context}\n\n"
                    )
                    .into_bytes()
                })
                .collect()
        })
        .collect()
}

/// Per connection, the requests it sends (the same for both daemons).
fn streams(round: usize, conns: usize, per_conn: usize) -> Vec<Vec<Vec<u8>>> {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ round as u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..conns)
        .map(|c| {
            (0..per_conn)
                .map(|i| {
                    let r = next();
                    // One in five repeats an earlier request of this connection.
                    let n = if i > 0 && r % 5 == 0 { (r >> 8) as usize % i } else { i };
                    let (a, b) = ((n / 250) % 250, n % 250);
                    format!(
                        "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n\
                         client_address=10.{c}.{a}.{b}\nclient_name=mx{n}.sender{c}-r{round}.example\n\
                         reverse_client_name=mx{n}.sender{c}-r{round}.example\nhelo_name=mx{n}.sender{c}-r{round}.example\n\
                         sender=news-{n}@sender{c}-r{round}.example\nrecipient=user{}@example.com\n\
                         recipient_count=0\nqueue_id=\ninstance={c}.{n}\nsize=0\netrn_domain=\n\
                         stress=\nsasl_method=\nsasl_username=\nsasl_sender=\nccert_subject=\n\
                         ccert_issuer=\nccert_fingerprint=\nccert_pubkey_fingerprint=\n\
                         encryption_protocol=\nencryption_cipher=\nencryption_keysize=0\npolicy_context=\n\n",
                        n % 97
                    )
                    .into_bytes()
                })
                .collect()
        })
        .collect()
}

fn outbound_stream(req: &[u8]) -> bool {
    req.windows(13).any(|w| w == b"sasl_method=P")
}

fn measure(name: &'static str, port: u16, pid: u32, streams: &[Vec<Vec<u8>>]) -> Run {
    let cpu0 = cpu_seconds(pid);
    let start = Instant::now();
    let workers: Vec<_> = streams
        .iter()
        .cloned()
        .map(|reqs| {
            std::thread::spawn(move || {
                let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_nodelay(true).unwrap();
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                let mut lat = Vec::with_capacity(reqs.len());
                let mut deferred = 0;
                let mut line = String::new();
                for req in &reqs {
                    let t = Instant::now();
                    w.write_all(req).unwrap();
                    let mut action = String::new();
                    loop {
                        line.clear();
                        assert!(r.read_line(&mut line).unwrap() > 0, "connection closed");
                        if line == "\n" {
                            break;
                        }
                        action.push_str(&line);
                    }
                    lat.push(t.elapsed());
                    let action = action.to_ascii_uppercase();
                    if action.starts_with("ACTION=DEFER_IF_PERMIT")
                        || (outbound_stream(req) && !action.starts_with("ACTION=DUNNO"))
                    {
                        deferred += 1;
                    }
                }
                (lat, deferred)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut deferred = 0;
    for w in workers {
        let (l, d) = w.join().unwrap();
        latencies.extend(l);
        deferred += d;
    }
    let wall = start.elapsed();
    Run {
        name,
        wall,
        requests: latencies.len(),
        latencies,
        cpu: cpu_seconds(pid) - cpu0,
        rss_kib: status_kib(pid, "VmHWM"),
        deferred,
    }
}
