//! `bench-lookup`: miab-lookup side by side with Postfix's own `sqlite:` tables over the same
//! Mail-in-a-Box DB, in one run:
//!
//! 1. raw socketmap lookups from many concurrent connections, the daemon pinned to one core:
//!    lookups/s, p50/p99 latency, daemon CPU time and peak RSS;
//! 2. Postfix's own table client (`postmap -q -`) over `sqlite:` and over `socketmap:`;
//! 3. end to end: `smtp-source` into two Postfix instances, one with MIAB's `sqlite:` maps and
//!    one with the socketmaps, delivering to `smtp-sink`.
//!
//! Build and run (as root, Postfix must be installed):
//! `cargo build --release -p lookup -p miab-bench && target/release/bench-lookup`

use lookup::proto;
use miab_bench::{
    children_cpu_seconds, cpu_seconds, percentile, pin_self_to_core_1, postfix_pids, ratio,
    status_kib,
};
use miab_e2e::postfix::{MiabSqliteMaps, Postfix, PostfixConfig, lookup_socketmaps};
use miab_e2e::process::DaemonProcess;
use miab_e2e::{Scratch, fixture, free_port, tools};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Users and aliases added to the fixture, so that the domain query scans a realistic table.
const USERS: usize = 2000;
const ALIASES: usize = 2000;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 10 } else { 1 };
    let lookup_bin = std::env::current_exe()
        .unwrap()
        .with_file_name("miab-lookup");
    assert!(
        lookup_bin.exists(),
        "{} missing: cargo build --release -p lookup -p miab-bench",
        lookup_bin.display()
    );

    let dir = Scratch::new("bench");
    let root = dir.mkdir("data");
    let db = fixture::miab_box(&root);
    grow(&db);
    let keys = key_mix();
    let start_daemon = |name: &str, extra: &str| {
        let sock = dir.join(format!("{name}.sock"));
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "storage_root = \"{}\"\n[lookup]\nlisten = \"unix:{}\"\nsocket_mode = \"0666\"\n{extra}\n",
                root.display(),
                sock.display()
            ),
        )
        .unwrap();
        // The daemon gets core 0; this process and Postfix's client get the rest.
        let daemon = DaemonProcess::start(
            Path::new("/usr/bin/taskset"),
            &[
                "-c",
                "0",
                lookup_bin.to_str().unwrap(),
                "--config",
                config.to_str().unwrap(),
            ],
            dir.join(format!("{name}.log")),
        );
        (daemon, sock)
    };
    let (daemon, sock) = start_daemon("lookup", "");
    let (uncached, uncached_sock) = start_daemon("uncached", "cache_entries = 0");
    pin_self_to_core_1();
    println!(
        "# miab-lookup benchmark\n\nDB: fixture + {USERS} users + {ALIASES} aliases; key mix: {} keys over the 4 maps.\n",
        keys.len()
    );

    println!("## 1. Raw socketmap lookups, daemon pinned to one core\n");
    println!(
        "| memo | connections | lookups | lookups/s | p50 | p99 | daemon CPU s | lookups per daemon CPU s | daemon peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (memo, d, s, conns) in [
        ("on", &daemon, &sock, 1),
        ("on", &daemon, &sock, 8),
        ("on", &daemon, &sock, 64),
        ("off", &uncached, &uncached_sock, 8),
        ("off", &uncached, &uncached_sock, 64),
    ] {
        let total = 200_000 / scale;
        // Warm-up: the first pass over the keys fills the memo.
        hammer(s, &keys, 4, keys.len());
        let cpu0 = cpu_seconds(d.pid());
        let (elapsed, mut lat) = hammer(s, &keys, conns, total);
        let cpu = cpu_seconds(d.pid()) - cpu0;
        lat.sort_unstable();
        println!(
            "| {memo} | {conns} | {total} | {:.0} | {:?} | {:?} | {cpu:.2} | {:.0} | {} MiB |",
            total as f64 / elapsed.as_secs_f64(),
            percentile(&lat, 50.0),
            percentile(&lat, 99.0),
            total as f64 / cpu.max(0.01),
            status_kib(d.pid(), "VmHWM") / 1024,
        );
    }
    drop(uncached);

    let maps = MiabSqliteMaps::write(dir.path(), &db);
    println!("\n## 2. Postfix's own client: `postmap -q -` over each table\n");
    println!(
        "| map | keys | sqlite: lookups/s | socketmap: lookups/s | ratio | sqlite: CPU s | socketmap: CPU s (postmap + daemon) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, sqlite_map) in [
        ("domains", &maps.domains),
        ("mailboxes", &maps.mailboxes),
        ("aliases", &maps.aliases),
        ("senders", &maps.senders),
    ] {
        let batch: Vec<&str> = keys
            .iter()
            .filter(|(m, _)| *m == name)
            .map(|(_, k)| k.as_str())
            .cycle()
            .take(20_000 / scale)
            .collect();
        let (t_sql, cpu_sql) = postmap_batch(sqlite_map, &batch, None);
        let socketmap = format!("socketmap:unix:{}:{name}", sock.display());
        let (t_sock, cpu_sock) = postmap_batch(&socketmap, &batch, Some(daemon.pid()));
        let rate = |t: Duration| batch.len() as f64 / t.as_secs_f64();
        println!(
            "| {name} | {} | {:.0} | {:.0} | {} | {cpu_sql:.2} | {cpu_sock:.2} |",
            batch.len(),
            rate(t_sql),
            rate(t_sock),
            ratio(rate(t_sock), rate(t_sql)),
        );
    }

    println!("\n## 3. End to end: smtp-source -> Postfix -> smtp-sink\n");
    let sink_port = free_port();
    let mut sink = Command::new("/usr/sbin/smtp-sink")
        .args(["-u", "postfix", &format!("127.0.0.1:{sink_port}"), "256"])
        .stdout(Stdio::null())
        .spawn()
        .expect("smtp-sink (package postfix)");
    let tune = |c: PostfixConfig| {
        c.set("relayhost", format!("[127.0.0.1]:{sink_port}"))
            .set("virtual_transport", format!("smtp:[127.0.0.1]:{sink_port}"))
            .set("default_destination_concurrency_limit", "50")
            .set("smtp_destination_concurrency_limit", "50")
    };
    let sqlite = Postfix::start(tune(maps.main_cf(PostfixConfig::default())));
    let socketmap = Postfix::start(tune(lookup_socketmaps(
        &format!("unix:{}", sock.display()),
        PostfixConfig::default(),
    )));
    let messages = 3000 / scale;
    println!("{messages} messages of 5 recipients each (catch-all addresses), 16 sessions.\n");
    println!(
        "| maps | accepted msg/s | delivered msg/s | CPU s (Postfix + daemon) | peak RSS (Postfix + daemon) |"
    );
    println!("|---|---|---|---|---|");
    let mut rows = Vec::new();
    for (label, pf, extra) in [
        ("sqlite: (MIAB)", &sqlite, None),
        ("socketmap: (miab-lookup)", &socketmap, Some(daemon.pid())),
    ] {
        smtp_source(pf, 100);
        wait_drained(pf);
        let r = end_to_end(pf, messages, extra);
        println!(
            "| {label} | {:.0} | {:.0} | {:.2} | {} MiB |",
            messages as f64 / r.accept.as_secs_f64(),
            messages as f64 / r.total.as_secs_f64(),
            r.cpu,
            r.peak_rss_kib / 1024
        );
        rows.push(r);
    }
    let (a, b) = (&rows[0], &rows[1]);
    println!(
        "\nsocketmap vs sqlite: delivered msg/s {}, CPU {}, peak RSS {}",
        ratio(a.total.as_secs_f64(), b.total.as_secs_f64()),
        ratio(b.cpu, a.cpu),
        ratio(b.peak_rss_kib as f64, a.peak_rss_kib as f64),
    );
    let _ = sink.kill();
    let _ = sink.wait();
    drop(daemon);
}

/// Adds users (with one fixed hash: hashing is not what is measured) and aliases.
fn grow(db: &Path) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch("BEGIN").unwrap();
    let hash = "{SHA512-CRYPT}$6$abcdefghijklmnop$x";
    for i in 0..USERS {
        c.execute(
            "INSERT INTO users (email, password, privileges, quota) VALUES (?1, ?2, '', '0')",
            [format!("user{i}@d{}.example", i % 50), hash.to_owned()],
        )
        .unwrap();
    }
    for i in 0..ALIASES {
        c.execute(
            "INSERT INTO aliases (source, destination, permitted_senders) VALUES (?1, ?2, NULL)",
            [
                format!("alias{i}@d{}.example", i % 50),
                format!("user{i}@d{}.example", i % 50),
            ],
        )
        .unwrap();
    }
    c.execute_batch("COMMIT").unwrap();
}

/// What Postfix asks in practice: domains, existing and unknown addresses, extensions and
/// catch-alls, over every map.
fn key_mix() -> Vec<(&'static str, String)> {
    let mut keys = Vec::new();
    for i in 0..200 {
        let d = i % 50;
        keys.push(("domains", format!("d{d}.example")));
        keys.push(("domains", format!("nope{i}.example")));
        keys.push(("mailboxes", format!("user{i}@d{d}.example")));
        keys.push(("mailboxes", format!("user{i}+tag@d{d}.example")));
        keys.push(("mailboxes", format!("unknown{i}@d{d}.example")));
        keys.push(("aliases", format!("alias{i}@d{d}.example")));
        keys.push(("aliases", format!("user{i}+x@d{d}.example")));
        keys.push(("aliases", format!("x{i}@catch.example")));
        keys.push(("aliases", format!("unknown{i}@d{d}.example")));
        keys.push(("senders", format!("user{i}@d{d}.example")));
        keys.push(("senders", format!("alias{i}@d{d}.example")));
        keys.push(("senders", format!("x{i}@elsewhere.example")));
    }
    keys
}

/// `conns` connections share `total` lookups; returns the wall time and every latency.
fn hammer(
    sock: &Path,
    keys: &[(&'static str, String)],
    conns: usize,
    total: usize,
) -> (Duration, Vec<Duration>) {
    let keys = Arc::new(keys.to_vec());
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            let (keys, next, sock) = (Arc::clone(&keys), Arc::clone(&next), sock.to_owned());
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(sock).unwrap();
                let mut lat = Vec::new();
                let (mut out, mut buf, mut chunk) = (Vec::new(), Vec::new(), [0u8; 4096]);
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if n >= total {
                        return lat;
                    }
                    let (map, key) = &keys[n % keys.len()];
                    out.clear();
                    proto::encode(format!("{map} {key}").as_bytes(), &mut out);
                    let t = Instant::now();
                    s.write_all(&out).unwrap();
                    buf.clear();
                    loop {
                        if let Some((p, _)) = proto::decode(&buf, proto::MAX_REPLY).unwrap() {
                            assert!(!p.starts_with(b"TEMP") && !p.starts_with(b"PERM"));
                            break;
                        }
                        let r = s.read(&mut chunk).unwrap();
                        assert!(r > 0, "server closed the connection");
                        buf.extend_from_slice(&chunk[..r]);
                    }
                    lat.push(t.elapsed());
                }
            })
        })
        .collect();
    let lat = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    (start.elapsed(), lat)
}

/// Runs `postmap -q - MAP` over `keys`; returns the wall time and the CPU seconds of postmap
/// plus, when given, the daemon.
fn postmap_batch(map: &str, keys: &[&str], daemon: Option<u32>) -> (Duration, f64) {
    let input = keys.join("\n") + "\n";
    let cpu0 = children_cpu_seconds();
    let d0 = daemon.map_or(0.0, cpu_seconds);
    let t = Instant::now();
    let r = tools::run(
        Command::new("/usr/sbin/postmap").args(["-q", "-", map]),
        Some(&input),
    );
    assert!(
        r.code <= 1 && !r.stderr.contains("fatal"),
        "postmap on {map}: {}",
        r.stderr
    );
    let elapsed = t.elapsed();
    let cpu1 = children_cpu_seconds();
    let d1 = daemon.map_or(0.0, cpu_seconds);
    (elapsed, (cpu1 - cpu0) + (d1 - d0))
}

fn smtp_source(pf: &Postfix, messages: usize) {
    let st = Command::new("/usr/sbin/smtp-source")
        .args([
            "-s",
            "16",
            "-m",
            &messages.to_string(),
            "-r",
            "5",
            "-f",
            "sender@elsewhere.example",
            "-t",
            "bench@catch.example",
            &format!("127.0.0.1:{}", pf.smtp_port()),
        ])
        .status()
        .expect("smtp-source (package postfix)");
    assert!(st.success());
}

/// Files still queued (incoming, active, deferred), counted without asking Postfix.
fn queued(pf: &Postfix) -> usize {
    fn count(p: &Path) -> usize {
        std::fs::read_dir(p).map_or(0, |d| {
            d.flatten()
                .map(|e| {
                    let p: PathBuf = e.path();
                    if p.is_dir() { count(&p) } else { 1 }
                })
                .sum()
        })
    }
    ["incoming", "active", "deferred", "maildrop"]
        .iter()
        .map(|q| count(&pf.path("queue").join(q)))
        .sum()
}

fn wait_drained(pf: &Postfix) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while queued(pf) > 0 {
        assert!(
            Instant::now() < deadline,
            "queue did not drain:\n{}",
            pf.queue()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct EndToEnd {
    accept: Duration,
    total: Duration,
    cpu: f64,
    peak_rss_kib: u64,
}

fn end_to_end(pf: &Postfix, messages: usize, daemon: Option<u32>) -> EndToEnd {
    let master = pf.path("queue").join("pid/master.pid");
    let all_pids = || {
        let mut p = postfix_pids(&master);
        p.extend(daemon);
        p
    };
    let cpu = || all_pids().into_iter().map(cpu_seconds).sum::<f64>();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (done, master) = (Arc::clone(&done), master.clone());
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                let mut pids = postfix_pids(&master);
                pids.extend(daemon);
                peak = peak.max(pids.iter().map(|&p| status_kib(p, "VmRSS")).sum::<u64>());
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        })
    };
    let cpu0 = cpu();
    let t = Instant::now();
    smtp_source(pf, messages);
    let accept = t.elapsed();
    wait_drained(pf);
    let total = t.elapsed();
    let cpu = cpu() - cpu0;
    done.store(true, Ordering::Relaxed);
    EndToEnd {
        accept,
        total,
        cpu,
        peak_rss_kib: sampler.join().unwrap(),
    }
}
