//! `bench-lookup`: miab-lookup side by side with Postfix's own `sqlite:` tables over the same
//! Mail-in-a-Box DB, in one run:
//!
//! 1. raw socketmap lookups from many concurrent connections, the daemon pinned to one core and
//!    this client to the other: lookups/s, p50/p99 latency, daemon CPU time and peak RSS, for
//!    keys that repeat and for a mix where a quarter of the keys are unknown and never repeat
//!    (a dictionary attack), at 200 and at 20,000 users; then the directory's size: snapshot
//!    read time and the daemon's RSS at 1,000, 20,000 and 100,000 users (with as many aliases);
//! 2. Postfix's own table client (`postmap -q -`) over `sqlite:` and over `socketmap:`;
//! 3. end to end: `smtp-source` into two Postfix instances, one with MIAB's `sqlite:` maps and
//!    one with the socketmaps, delivering to `smtp-sink`.
//!
//! Build and run (as root, Postfix must be installed):
//! `cargo build --release -p lookup -p miab-bench && target/release/bench-lookup`
//!
//! `--store` measures the directory shared through PostgreSQL instead (a throw-away
//! PostgreSQL 15): at 1,000, 20,000 and 100,000 users (with as many aliases), the primary's
//! publication, another host's rebuild from the mirror, and how long a change on the primary
//! takes to answer on another host, beside the SQLite snapshot read.

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

/// Users and aliases added to the fixture for sections 2 and 3 (the domain query of Postfix's
/// `sqlite:` map scans the tables).
const USERS: usize = 5000;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    if std::env::args().any(|a| a == "--store") {
        return store(quick);
    }
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
    let start_daemon = |name: &str, users: usize| {
        let root = dir.mkdir(format!("{name}-data"));
        let db = fixture::miab_box(&root);
        grow(&db, users);
        let sock = dir.join(format!("{name}.sock"));
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "storage_root = \"{}\"\n[lookup]\nlisten = \"unix:{}\"\nsocket_mode = \"0666\"\n",
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
        (daemon, sock, db)
    };
    let (daemon, sock, db) = start_daemon("lookup", USERS);
    let (small, small_sock, _) = start_daemon("small", 200);
    let (large, large_sock, _) = start_daemon("large", 20_000);
    pin_self_to_core_1();
    let keys = key_mix();
    let repeating_keys: Mix = Arc::new(move |n| keys[n % keys.len()].clone());
    // Every fourth key an address never asked before; the rest as in the repeating mix.
    let keys = key_mix();
    let attack: Mix = Arc::new(move |n| {
        if n % 4 == 3 {
            (
                "aliases",
                format!("never{n}-{}@d{}.example", n * 7919, n % 50),
            )
        } else {
            keys[(n / 4 * 3 + n % 4) % keys.len()].clone()
        }
    });
    // The issue's aliases-only mix: user, user+tag, a never-repeating unknown, a bare domain.
    let aliases_only: Mix = Arc::new(|n| {
        let i = n / 4 % 200;
        let key = match n % 4 {
            0 => format!("user{i}@d{}.example", i % 50),
            1 => format!("user{i}+tag@d{}.example", i % 50),
            2 => format!("nobody{n}@d{}.example", i % 50),
            _ => format!("d{}.example", i % 50),
        };
        ("aliases", key)
    });
    println!(
        "# miab-lookup benchmark\n\nDB: fixture + {USERS} users + {USERS} aliases (200 and 20,000 for the scaling rows); repeating mix: {} keys over the 4 maps.\n",
        key_mix().len()
    );

    println!("## 1. Raw socketmap lookups, daemon pinned to one core, client to the other\n");
    println!(
        "| users | key mix | connections | lookups | lookups/s | p50 | p99 | daemon CPU s | lookups per daemon CPU s | daemon peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut rates = std::collections::HashMap::new();
    for (row, (users, mix_name, mix, d, s, conns)) in [
        (USERS, "repeating", &repeating_keys, &daemon, &sock, 1),
        (USERS, "repeating", &repeating_keys, &daemon, &sock, 16),
        (USERS, "repeating", &repeating_keys, &daemon, &sock, 64),
        (USERS, "25% new unknown", &attack, &daemon, &sock, 16),
        (USERS, "25% new unknown", &attack, &daemon, &sock, 64),
        (
            USERS,
            "aliases: user/+tag/new unknown/domain",
            &aliases_only,
            &daemon,
            &sock,
            16,
        ),
        (200, "25% new unknown", &attack, &small, &small_sock, 16),
        (20_000, "25% new unknown", &attack, &large, &large_sock, 16),
    ]
    .into_iter()
    .enumerate()
    {
        let total = 300_000 / scale;
        // Each row its own key numbers: a new unknown is new to the daemon.
        let first = (row + 1) * 100_000_000;
        hammer(s, mix, 4, 5000, first);
        let cpu0 = cpu_seconds(d.pid());
        let (elapsed, mut lat) = hammer(s, mix, conns, total, first + 5000);
        let cpu = cpu_seconds(d.pid()) - cpu0;
        lat.sort_unstable();
        let rate = total as f64 / elapsed.as_secs_f64();
        rates.insert((users, mix_name, conns), rate);
        println!(
            "| {users} | {mix_name} | {conns} | {total} | {rate:.0} | {:?} | {:?} | {cpu:.2} | {:.0} | {} MiB |",
            percentile(&lat, 50.0),
            percentile(&lat, 99.0),
            total as f64 / cpu.max(0.01),
            status_kib(d.pid(), "VmHWM") / 1024,
        );
    }
    let r = |u, m, c| rates[&(u, m, c)];
    println!(
        "\n25% new unknown vs repeating (16 connections): {}; 20,000 users vs 200 users: {}",
        ratio(r(USERS, "25% new unknown", 16), r(USERS, "repeating", 16)),
        ratio(
            r(20_000, "25% new unknown", 16),
            r(200, "25% new unknown", 16)
        ),
    );
    drop((small, large));

    println!("\n## 1b. The directory's size\n");
    println!(
        "| users + aliases | snapshot read (best of 3) | daemon RSS after start | daemon RSS after a change was read | daemon peak RSS | read in the daemon |"
    );
    println!("|---|---|---|---|---|---|");
    for n in [1_000, 20_000, 100_000] {
        let (d, s, db) = start_daemon(&format!("size{n}"), n);
        let read = (0..3)
            .map(|_| {
                let u = userdb::UserDb::open(&db, userdb::Access::ReadOnly).unwrap();
                let t = Instant::now();
                let snap = directory::Snapshot::read(&u).unwrap();
                assert!(snap.counts().0 >= n);
                t.elapsed()
            })
            .min()
            .unwrap();
        hammer(&s, &repeating_keys, 1, 10, 0);
        let rss0 = status_kib(d.pid(), "VmRSS");
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute(
            "INSERT INTO aliases (source, destination) VALUES ('changed@d1.example', 'user1@d1.example')",
            [],
        )
        .unwrap();
        hammer(&s, &repeating_keys, 1, 10, 0);
        let logged = d
            .log()
            .lines()
            .rev()
            .find_map(|l| {
                l.split(" ms=")
                    .nth(1)
                    .map(|m| m.split(' ').next().unwrap_or("").to_owned())
            })
            .unwrap_or_default();
        println!(
            "| {n} + {n} | {read:?} | {} MiB | {} MiB | {} MiB | {logged} ms |",
            rss0 / 1024,
            status_kib(d.pid(), "VmRSS") / 1024,
            status_kib(d.pid(), "VmHWM") / 1024,
        );
    }

    let keys = key_mix();
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

/// Adds `n` users (with one fixed hash: hashing is not what is measured) and `n` aliases.
/// `--store`: the directory through PostgreSQL.
fn store(quick: bool) {
    use directory::pg::{PgSource, Publisher};
    use state::pg::{Limits, Pg};
    let server = miab_e2e::postgres::Postgres::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let limits = Limits {
        deadline: Duration::from_secs(60),
        ..Limits::default()
    };
    let pg = Arc::new(Pg::new(&server.url(), limits).unwrap());
    rt.block_on(pg.call(pg.migrate())).unwrap();
    println!("# The directory through PostgreSQL\n");
    println!(
        "PostgreSQL 15 on loopback (fsync off). Publication: the primary's miab-lookup reads users.sqlite and replaces the mirror in one transaction. Rebuild: another host reads the mirror into its in-memory directory (its start, and every change). Change answered: an alias added to users.sqlite on the primary until another host's directory answers it (publication, NOTIFY, rebuild).\n"
    );
    println!(
        "| users + aliases | SQLite snapshot read | publication | rebuild from PostgreSQL | change answered on another host |"
    );
    println!("|---|---|---|---|---|");
    let sizes: &[usize] = if quick {
        &[1_000, 10_000]
    } else {
        &[1_000, 20_000, 100_000]
    };
    let dir = Scratch::new("bench");
    let version = || server.psql("SELECT version FROM directory_version");
    for &n in sizes {
        let root = dir.mkdir(format!("store{n}-data"));
        let db = fixture::miab_box(&root);
        grow(&db, n);
        let read = (0..3)
            .map(|_| {
                let u = userdb::UserDb::open(&db, userdb::Access::ReadOnly).unwrap();
                let t = Instant::now();
                let snap = directory::Snapshot::read(&u).unwrap();
                assert!(snap.counts().0 >= n);
                t.elapsed()
            })
            .min()
            .unwrap();
        let before = version();
        let t = Instant::now();
        let _guard = rt.enter();
        let publisher = Publisher::start(&db, Duration::from_secs(5), Arc::clone(&pg)).unwrap();
        while version() == before {
            std::thread::sleep(Duration::from_millis(5));
        }
        let published = t.elapsed();
        let t = Instant::now();
        let source = rt
            .block_on(PgSource::start(Arc::clone(&pg), &server.url()))
            .unwrap();
        let rebuilt = t.elapsed();
        let live = directory::Live::new(source).unwrap();
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute(
            "INSERT INTO aliases (source, destination) VALUES ('changed@d1.example', 'user1@d1.example')",
            [],
        )
        .unwrap();
        let t = Instant::now();
        let delims = userdb::Delimiters::default();
        let answered = loop {
            let snap = rt.block_on(live.current()).unwrap();
            if directory::Directory::resolve_alias(&*snap, "changed@d1.example", &delims).is_some()
            {
                break t.elapsed();
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        drop(publisher);
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
        println!(
            "| {} + {} | {} | {} | {} | {} |",
            n + 4,
            n + 10,
            ms(read),
            ms(published),
            ms(rebuilt),
            ms(answered)
        );
    }
}

fn grow(db: &Path, n: usize) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch("BEGIN").unwrap();
    let hash = "{SHA512-CRYPT}$6$abcdefghijklmnop$x";
    for i in 0..n {
        c.execute(
            "INSERT INTO users (email, password, privileges, quota) VALUES (?1, ?2, '', '0')",
            [format!("user{i}@d{}.example", i % 50), hash.to_owned()],
        )
        .unwrap();
    }
    for i in 0..n {
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

/// Key number `n` of a mix.
type Mix = Arc<dyn Fn(usize) -> (&'static str, String) + Send + Sync>;

/// `conns` connections share `total` lookups, keys `first..`; returns the wall time and every
/// latency.
fn hammer(
    sock: &Path,
    keys: &Mix,
    conns: usize,
    total: usize,
    first: usize,
) -> (Duration, Vec<Duration>) {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            let (keys, next, sock) = (Arc::clone(keys), Arc::clone(&next), sock.to_owned());
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(sock).unwrap();
                let mut lat = Vec::new();
                let (mut out, mut buf, mut chunk) = (Vec::new(), Vec::new(), [0u8; 4096]);
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if n >= total {
                        return lat;
                    }
                    let (map, key) = keys(first + n);
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
