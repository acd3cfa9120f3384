//! `bench-milter`: miab-milter side by side with OpenDKIM (signing) and OpenDKIM + OpenDMARC
//! (verifying), in one run. Each milter sits behind its own throw-away Postfix; `smtp-source`
//! pushes the same message file through it in 8 parallel sessions, and Postfix relays every
//! message to the harness's loopback SMTP sink. All four setups use one DNS server on
//! 127.0.0.1:53 (OpenDMARC reads only /etc/resolv.conf, so it runs in a mount namespace whose
//! resolv.conf points there).
//!
//! - signing: From: me@example.com from 127.0.0.1, the same RSA-2048 key (opendkim-genkey),
//!   relaxed/simple; OpenDKIM configured as MIAB configures it (KeyTable, SigningTable,
//!   InternalHosts 127.0.0.1).
//! - verifying: a message signed by sender.example (RSA-2048), with SPF and DMARC p=reject
//!   records; OpenDKIM in verify mode followed by OpenDMARC with MIAB's settings
//!   (SPFSelfValidate), against miab-milter with no trusted hosts.
//!
//! Reports messages/s end to end, the milters' CPU seconds per 1,000 messages (every thread,
//! from /proc) and their peak RSS, and the ratios. Every milter logs a line per message, the
//! OpenDKIM pair to syslog (the bench reads /dev/log when no syslog daemon does), ours to a file.
//!
//! Build and run (as root; `apt-get install opendkim opendkim-tools opendmarc postfix`):
//! `cargo build --release -p miab-milter -p miab-bench && target/release/bench-milter [--quick]
//! [--ours-only | --watching]`
//!
//! `--watching`: miab-milter alone, signing and verifying, each without and with a decision
//! journal and a metrics endpoint (asked every second during the run): what watching costs.

use miab_bench::{cpu_seconds, ratio, status_kib};
use miab_e2e::dns::TestDns;
use miab_e2e::postfix::{Postfix, PostfixConfig};
use miab_e2e::process::DaemonProcess;
use miab_e2e::{Scratch, fixture, free_port, wait_for_port, wait_until};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SESSIONS: usize = 8;
const HOST: &str = "box.example.com";

#[derive(Debug)]
struct Outcome {
    name: &'static str,
    messages: usize,
    wall: Duration,
    cpu: f64,
    rss_kib: u64,
    marked: usize,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.messages as f64 / self.wall.as_secs_f64()
    }
    fn cpu_per_1000(&self) -> f64 {
        self.cpu * 1000.0 / self.messages as f64
    }
}

/// A milter started for one setup: its processes are killed on drop.
struct Milters {
    endpoints: Vec<String>,
    pids: Vec<u32>,
    children: Vec<Child>,
    _ours: Option<DaemonProcess>,
}

impl Drop for Milters {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn must_run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// opendkim-genkey's key and its TXT record value.
fn genkey(dir: &Path, domain: &str, selector: &str) -> (PathBuf, String) {
    must_run(
        Command::new("/usr/sbin/opendkim-genkey")
            .args(["-b", "2048", "-d", domain, "-s", selector, "-D"])
            .arg(dir),
    );
    let zone = std::fs::read_to_string(dir.join(format!("{selector}.txt"))).unwrap();
    let txt: String = zone.split('"').skip(1).step_by(2).collect();
    (dir.join(format!("{selector}.private")), txt)
}

fn body() -> String {
    let line = "The quick brown fox jumps over the lazy dog, again and again and again.\n";
    line.repeat(30)
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn opendkim(dir: &Path, name: &str, lines: &str) -> (Child, String) {
    let port = free_port();
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(
        &conf,
        format!(
            "Syslog yes\nSyslogSuccess yes\nSocket inet:{port}@127.0.0.1\nPidFile {}/{name}.pid\nRequireSafeKeys false\nNameservers 127.0.0.1\n{lines}",
            dir.display()
        ),
    )
    .unwrap();
    let child = spawn(
        Command::new("/usr/sbin/opendkim")
            .arg("-f")
            .arg("-x")
            .arg(&conf),
    );
    assert!(
        wait_for_port(port, Duration::from_secs(20)),
        "{name} did not listen"
    );
    (child, format!("inet:127.0.0.1:{port}"))
}

fn opendmarc(dir: &Path) -> (Child, String) {
    let port = free_port();
    let conf = dir.join("opendmarc.conf");
    let ignore = dir.join("opendmarc-ignore");
    // OpenDMARC skips 127.0.0.1 by default; smtp-source can only connect from there.
    std::fs::write(&ignore, "192.0.2.1\n").unwrap();
    // Debian's opendmarc.conf, which MIAB edits, names the public suffix list.
    let psl = Path::new("/usr/share/publicsuffix/public_suffix_list.dat");
    let psl = if psl.exists() {
        format!("PublicSuffixList {}\n", psl.display())
    } else {
        String::new()
    };
    std::fs::write(
        &conf,
        format!(
            "{psl}Syslog true\nSocket inet:{port}@127.0.0.1\nPidFile {d}/opendmarc.pid\nAuthservID {HOST}\nTrustedAuthservIDs {HOST}\nIgnoreHosts {ignore}\nFailureReports false\nFailureReportsOnNone false\nSPFIgnoreResults true\nSPFSelfValidate true\n",
            d = dir.display(),
            ignore = ignore.display()
        ),
    )
    .unwrap();
    let resolv = dir.join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.1\n").unwrap();
    let script = format!(
        "mount --bind {} /etc/resolv.conf && exec /usr/sbin/opendmarc -f -c {}",
        resolv.display(),
        conf.display()
    );
    let child = spawn(Command::new("/usr/bin/unshare").args(["-m", "sh", "-c", &script]));
    assert!(
        wait_for_port(port, Duration::from_secs(20)),
        "opendmarc did not listen"
    );
    (child, format!("inet:127.0.0.1:{port}"))
}

fn ours(dir: &Scratch, root: &Path, name: &str, extra: &str) -> Milters {
    let port = free_port();
    let config = format!(
        "storage_root = \"{}\"\nhostname = \"{HOST}\"\n[dns]\nnameservers = [\"127.0.0.1:53\"]\n[milter]\n{extra}",
        root.display()
    );
    let listen = format!("inet:127.0.0.1:{port}");
    let bin = std::env::current_exe()
        .unwrap()
        .with_file_name("miab-milter");
    let d = DaemonProcess::with_config(&bin, dir, name, &config, &["--listen", &listen]);
    Milters {
        endpoints: vec![listen],
        pids: vec![d.pid()],
        children: vec![],
        _ours: Some(d),
    }
}

/// What a setup sends, and what every delivered copy must carry.
struct Load<'a> {
    message: &'a Path,
    from: &'a str,
    mark: &'a str,
}

/// Pushes `count` copies of `message` through a Postfix using `milters` (after a warm-up) and
/// measures the milters. `unshare` and `sh` exec into OpenDMARC, so the child's pid is its pid.
fn run_setup(name: &'static str, milters: &Milters, load: &Load<'_>, count: usize) -> Outcome {
    let Load {
        message,
        from,
        mark,
    } = *load;
    let pf = Postfix::start(
        PostfixConfig::default()
            .set("smtpd_milters", milters.endpoints.join(" "))
            .set("milter_default_action", "tempfail")
            .set("default_process_limit", "100"),
    );
    let source = |n: usize| {
        must_run(
            Command::new("/usr/sbin/smtp-source")
                .args(["-s", &SESSIONS.to_string(), "-m", &n.to_string()])
                .arg("-F")
                .arg(message)
                .args(["-f", from, "-t", "someone@elsewhere.example"])
                .arg(format!("127.0.0.1:{}", pf.smtp_port())),
        );
    };
    let wait = |n: usize| {
        wait_until(Duration::from_secs(600), || {
            (pf.sink.count() >= n).then_some(())
        })
        .unwrap_or_else(|| panic!("{name}: {} of {n} delivered\n{}", pf.sink.count(), pf.log()));
    };
    // Warm up: keys loaded, connections and caches in place.
    let warm = 50;
    source(warm);
    wait(warm);
    let cpu = |pids: &[u32]| pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let before = cpu(&milters.pids);
    let start = Instant::now();
    source(count);
    wait(warm + count);
    let wall = start.elapsed();
    let used = cpu(&milters.pids) - before;
    let rss_kib = milters.pids.iter().map(|p| status_kib(*p, "VmHWM")).sum();
    let marked = pf
        .sink
        .messages()
        .iter()
        .filter(|m| m.data.contains(mark))
        .count();
    Outcome {
        name,
        messages: count,
        wall,
        cpu: used,
        rss_kib,
        marked: marked.saturating_sub(warm),
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // Only miab-milter's two setups, for quick before/after comparisons of our own changes.
    let watching = std::env::args().any(|a| a == "--watching");
    let ours_only = watching || std::env::args().any(|a| a == "--ours-only");
    let count = if quick { 300 } else { 3000 };
    for (p, pkg) in [
        ("/usr/sbin/opendkim", "opendkim"),
        ("/usr/sbin/opendkim-genkey", "opendkim-tools"),
        ("/usr/sbin/opendmarc", "opendmarc"),
        ("/usr/sbin/smtp-source", "postfix"),
        ("/usr/bin/unshare", "util-linux"),
    ] {
        assert!(Path::new(p).exists(), "{p} missing: apt-get install {pkg}");
    }
    let bin = std::env::current_exe()
        .unwrap()
        .with_file_name("miab-milter");
    assert!(
        bin.exists(),
        "{} missing: cargo build --release -p miab-milter -p miab-bench",
        bin.display()
    );

    // OpenDKIM and OpenDMARC log every message to syslog, as on MIAB, and miab-milter writes a
    // line per message to its log. Without a syslog daemon here, the bench stands in for one.
    let _syslog = miab_bench::SyslogSink::open();
    let dir = Scratch::new("bmilt");
    let root = dir.mkdir("data");
    fixture::miab_box(&root);
    let (key, key_txt) = genkey(&dir.mkdir("data/mail/dkim"), "example.com", "mail");
    let (sender_key, sender_txt) = genkey(&dir.mkdir("sender"), "sender.example", "s1");
    let dns = TestDns::start_at("127.0.0.1:53".parse().unwrap());
    dns.add_txt("mail._domainkey.example.com", &key_txt);
    dns.add_txt("s1._domainkey.sender.example", &sender_txt);
    dns.add_txt("sender.example", "v=spf1 ip4:127.0.0.0/8 -all");
    dns.add_txt("_dmarc.sender.example", "v=DMARC1; p=reject;");

    let outbound = dir.join("outbound.eml");
    std::fs::write(
        &outbound,
        format!(
            "From: Me <me@example.com>\nTo: Someone <someone@elsewhere.example>\nSubject: bench\nDate: Sun, 22 Nov 2026 08:00:00 +0000\nMessage-ID: <bench@example.com>\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n{}",
            body()
        ),
    )
    .unwrap();
    // The inbound message, signed once by python3-dkim for sender.example.
    let inbound = dir.join("inbound.eml");
    let unsigned = format!(
        "From: Sender <news@sender.example>\r\nTo: Me <me@example.com>\r\nSubject: bench\r\nDate: Sun, 22 Nov 2026 08:00:00 +0000\r\nMessage-ID: <bench@sender.example>\r\n\r\n{}",
        body().replace('\n', "\r\n")
    );
    std::fs::write(dir.join("inbound.unsigned"), &unsigned).unwrap();
    must_run(Command::new("/usr/bin/python3").arg("-c").arg(format!(
        "import dkim\nm=open({u:?},'rb').read()\nk=open({k:?},'rb').read()\ns=dkim.sign(m,b's1',b'sender.example',k,canonicalize=(b'relaxed',b'simple'),include_headers=[b'from',b'to',b'subject',b'date',b'message-id'])\nopen({o:?},'wb').write((s+m).replace(b'\\r\\n',b'\\n'))",
        u = dir.join("inbound.unsigned").display().to_string(),
        k = sender_key.display().to_string(),
        o = inbound.display().to_string(),
    )));

    let sign = Load {
        message: &outbound,
        from: "me@example.com",
        mark: "d=example.com",
    };
    let verify = Load {
        message: &inbound,
        from: "news@sender.example",
        mark: "dmarc=pass",
    };
    let mut outcomes = Vec::new();

    let od_dir = dir.mkdir("opendkim");
    let trusted = od_dir.join("TrustedHosts");
    std::fs::write(&trusted, "127.0.0.1\n").unwrap();
    std::fs::write(
        od_dir.join("KeyTable"),
        format!("example.com example.com:mail:{}\n", key.display()),
    )
    .unwrap();
    std::fs::write(od_dir.join("SigningTable"), "*@example.com example.com\n").unwrap();
    if !ours_only {
        let (child, endpoint) = opendkim(
            &od_dir,
            "sign",
            &format!(
                "Canonicalization relaxed/simple\nOversignHeaders From\nMinimumKeyBits 1024\nExternalIgnoreList refile:{t}\nInternalHosts refile:{t}\nKeyTable refile:{d}/KeyTable\nSigningTable refile:{d}/SigningTable\n",
                t = trusted.display(),
                d = od_dir.display()
            ),
        );
        let m = Milters {
            endpoints: vec![endpoint],
            pids: vec![child.id()],
            children: vec![child],
            _ours: None,
        };
        outcomes.push(run_setup("OpenDKIM (sign)", &m, &sign, count));
    }
    outcomes.push(run_setup(
        "miab-milter (sign)",
        // Unauthenticated, as OpenDKIM's InternalHosts is: the domain must be named.
        &ours(
            &dir,
            &root,
            "milter-sign",
            "sign_local_domains = [\"example.com\"]\n",
        ),
        &sign,
        count,
    ));
    if !ours_only {
        let external = od_dir.join("External");
        std::fs::write(&external, "192.0.2.1\n").unwrap();
        let (od, od_endpoint) = opendkim(
            &od_dir,
            "verify",
            &format!(
                "Mode v\nAuthservID {HOST}\nInternalHosts refile:{e}\nExternalIgnoreList refile:{e}\n",
                e = external.display()
            ),
        );
        let (dmarc, dmarc_endpoint) = opendmarc(&od_dir);
        let m = Milters {
            endpoints: vec![od_endpoint, dmarc_endpoint],
            pids: vec![od.id(), dmarc.id()],
            children: vec![od, dmarc],
            _ours: None,
        };
        outcomes.push(run_setup("OpenDKIM+OpenDMARC (verify)", &m, &verify, count));
    }
    outcomes.push(run_setup(
        "miab-milter (verify)",
        &ours(
            &dir,
            &root,
            "milter-verify",
            "trusted_hosts = []
",
        ),
        &verify,
        count,
    ));

    if watching {
        for (name, load, extra) in [
            (
                "miab-milter (sign) + journal + metrics",
                &sign,
                "sign_local_domains = [\"example.com\"]\n",
            ),
            (
                "miab-milter (verify) + journal + metrics",
                &verify,
                "trusted_hosts = []\n",
            ),
        ] {
            let m = free_port();
            let journal = dir.join(format!("journal-{m}.sqlite"));
            let extra = format!(
                "{extra}metrics_listen = \"inet:127.0.0.1:{m}\"\njournal = \"{}\"\n",
                journal.display()
            );
            let milters = ours(&dir, &root, &format!("milter-watched-{m}"), &extra);
            let scraper = miab_bench::Scraper::start(m, Duration::from_secs(1));
            outcomes.push(run_setup(name, &milters, load, count));
            assert!(scraper.finish() > 0, "{name}: no scrape answered");
        }
    }
    println!(
        "bench-milter: {count} messages per setup, {SESSIONS} smtp-source sessions, {} body bytes",
        body().len()
    );
    println!(
        "| setup | msgs/s | milter CPU s per 1,000 msgs (= ms per msg) | peak RSS | with result |"
    );
    println!("|---|---|---|---|---|");
    for o in &outcomes {
        println!(
            "| {} | {:.0} | {:.2} | {:.1} MiB | {} |",
            o.name,
            o.rate(),
            o.cpu_per_1000(),
            o.rss_kib as f64 / 1024.0,
            o.marked
        );
    }
    let pairs = if watching {
        vec![
            ("sign, watched / not watched", &outcomes[0], &outcomes[2]),
            ("verify, watched / not watched", &outcomes[1], &outcomes[3]),
        ]
    } else if ours_only {
        vec![]
    } else {
        vec![
            ("sign, ours / theirs", &outcomes[0], &outcomes[1]),
            ("verify, ours / theirs", &outcomes[2], &outcomes[3]),
        ]
    };
    for (label, theirs, ours) in pairs {
        println!(
            "{label}: throughput {}, CPU per message {}, peak RSS {}",
            ratio(ours.rate(), theirs.rate()),
            ratio(ours.cpu_per_1000(), theirs.cpu_per_1000()),
            ratio(ours.rss_kib as f64, theirs.rss_kib as f64)
        );
    }
}
