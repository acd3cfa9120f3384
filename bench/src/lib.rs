//! Measuring helpers shared by the benchmarks: CPU time and memory of processes read from
//! `/proc`, CPU time of finished children through `getrusage`, latency percentiles, and a
//! scraper that asks a daemon's `/metrics` while a benchmark runs.

use std::path::Path;
use std::time::Duration;

/// Clock ticks per second in `/proc/PID/stat` (Linux reports 100 on every architecture).
const TICKS: f64 = 100.0;

/// CPU seconds of a process and its reaped children (user + system).
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime is field 14 overall.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|x| x.parse().ok())
        .collect();
    f.iter().sum::<u64>() as f64 / TICKS
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

/// The parent pid of a process.
fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A Postfix instance's master and its live children.
pub fn postfix_pids(master_pid_file: &Path) -> Vec<u32> {
    std::fs::read_to_string(master_pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .map(with_children)
        .unwrap_or_default()
}

/// A process and its live children (Dovecot's master and its auth processes, for instance).
pub fn with_children(master: u32) -> Vec<u32> {
    let mut pids = vec![master];
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok())
                && ppid(pid) == Some(master)
            {
                pids.push(pid);
            }
        }
    }
    pids
}

/// CPU seconds used so far by finished children of this process (`RUSAGE_CHILDREN`).
pub fn children_cpu_seconds() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    let Ok(u) = getrusage(UsageWho::RUSAGE_CHILDREN) else {
        return 0.0;
    };
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    secs(u.user_time()) + secs(u.system_time())
}

/// The `p`-th percentile (0-100) of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p / 100.0).round() as usize;
    sorted[i]
}

/// Pins this process (and the threads it starts afterwards) to core 1, leaving core 0 to the
/// daemon under test.
pub fn pin_self_to_core_1() {
    let _ = std::process::Command::new("/usr/bin/taskset")
        .args(["-p", "-c", "1", &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status();
}

/// `a / b` formatted as a ratio, or `-` when `b` is zero.
pub fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        "-".into()
    } else {
        format!("{:.2}x", a / b)
    }
}

/// A datagram socket at `/dev/log` that reads and drops what arrives; removed on drop. `None`
/// when a real syslog socket exists.
#[derive(Debug)]
pub struct SyslogSink {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SyslogSink {
    /// Binds `/dev/log` unless it exists.
    pub fn open() -> Option<SyslogSink> {
        let path = Path::new("/dev/log");
        if path.exists() {
            return None;
        }
        let sock = std::os::unix::net::UnixDatagram::bind(path).ok()?;
        let _ = std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o666));
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .ok()?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = sock.recv(&mut buf);
            }
        });
        Some(SyslogSink { stop })
    }
}

impl Drop for SyslogSink {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = std::fs::remove_file("/dev/log");
    }
}

/// The median of `values` (the upper one of an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Asks `GET /metrics` of 127.0.0.1:`port` every `every` until dropped, as Prometheus does
/// (every 15 s by default; a benchmark asks more often, to make the cost visible).
#[derive(Debug)]
pub struct Scraper {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Scraper {
    pub fn start(port: u16, every: Duration) -> Scraper {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut scrapes = 0;
            while !flag.load(Ordering::Relaxed) {
                let text = miab_e2e::http(port, b"GET /metrics HTTP/1.0\r\n\r\n");
                if text.starts_with("HTTP/1.1 200") {
                    scrapes += 1;
                }
                std::thread::sleep(every);
            }
            scrapes
        });
        Scraper {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops, and says how many scrapes were answered.
    pub fn finish(mut self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap_or(0))
    }
}
