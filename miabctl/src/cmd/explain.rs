//! `explain QUEUE_ID|ADDRESS`: the story of a message, or of everything about an address,
//! from every daemon's decision journal and Postfix's own log lines, oldest first.
//!
//! A queue id gathers the entries carrying it, the other entries of the same message inside
//! each daemon (Postfix's policy `instance`, the milter's message), and the earlier attempts
//! of the same sender from the same client to the same recipients (greylisting: the first
//! try has no queue id yet), up to five days before. An address gathers the entries where it
//! is the sender, a recipient or the login, and the messages Postfix logged for it. Nothing
//! found is exit code 1.

use super::print_json;
use crate::cli::Cli;
use crate::owner::AsOwner;
use anyhow::{Result, bail};
use state::journal::{Entry, Query, Reader};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// A Postfix queue id (as in the mail log) or an email address.
    target: String,
    /// How far back to look for an address: a number of minutes, hours or days (`90m`,
    /// `12h`, `7d`) or a date (`2026-12-01`, UTC). Default 1d.
    #[arg(long, default_value = "1d")]
    since: String,
    /// Postfix's log file to search (repeatable). Default /var/log/mail.log.1 and
    /// /var/log/mail.log where they exist, else the systemd journal's mail facility.
    #[arg(long = "mail-log")]
    mail_log: Vec<PathBuf>,
}

/// What was found, for `--json`.
#[derive(Debug, serde::Serialize)]
struct Story {
    target: String,
    /// The journals read, and those that could not be.
    journals: Vec<String>,
    unreadable: Vec<String>,
    entries: Vec<Entry>,
    postfix: Vec<String>,
}

/// Earlier attempts of a message are looked for this far back.
const ATTEMPTS_MS: i64 = 5 * 86_400_000;
/// Postfix log lines printed at most.
const MAX_LOG_LINES: usize = 2000;

pub fn run(cli: &Cli, args: &ExplainArgs) -> Result<()> {
    let config = cli.config()?;
    let journals = config.journals();
    let target = args.target.trim();
    let is_address = target.contains('@');
    if !is_address && (target.is_empty() || !target.chars().all(|c| c.is_ascii_alphanumeric())) {
        bail!("{target:?} is neither a Postfix queue id nor an email address");
    }
    let since_ms = if is_address {
        since(&args.since, state::journal::now_ms())?
    } else {
        0
    };
    let mut story = Story {
        target: target.to_owned(),
        journals: Vec::new(),
        unreadable: Vec::new(),
        entries: Vec::new(),
        postfix: Vec::new(),
    };
    let logs = mail_logs(&args.mail_log, since_ms)?;
    if is_address {
        let needle = format!("<{}>", target.to_lowercase());
        // Each line looked at once: whether it names the address.
        let names: Vec<bool> = logs
            .iter()
            .map(|l| l.to_lowercase().contains(&needle))
            .collect();
        let lines = logs.iter().zip(&names).filter(|(_, n)| **n).map(|(l, _)| l);
        let qids: BTreeSet<String> = lines.filter_map(|l| queue_id_of(l)).collect();
        for (daemon, path) in &journals {
            let found = read_journal(path, |r| {
                let mut out = r.read(&Query::Address {
                    address: target,
                    since_ms,
                })?;
                for q in &qids {
                    out.extend(r.read(&Query::QueueId(q))?);
                }
                Ok(out)
            });
            story.add(daemon, path, found);
        }
        story.postfix = logs
            .into_iter()
            .zip(names)
            .filter(|(l, named)| *named || queue_id_of(l).is_some_and(|q| qids.contains(&q)))
            .map(|(l, _)| l)
            .collect();
    } else {
        for (daemon, path) in &journals {
            let found = read_journal(path, |r| message(r, target));
            story.add(daemon, path, found);
        }
        let mark = format!(" {target}: ");
        story.postfix = logs.into_iter().filter(|l| l.contains(&mark)).collect();
    }
    story.finish();
    if cli.json {
        print_json(&story)?;
    } else {
        story.print();
    }
    if story.entries.is_empty() && story.postfix.is_empty() {
        let what = if is_address {
            "nothing about this address in the journals or Postfix's log"
        } else {
            "unknown queue id: not in the journals or Postfix's log"
        };
        bail!("{target}: {what}");
    }
    Ok(())
}

impl Story {
    fn add(&mut self, daemon: &str, path: &Path, found: Result<Vec<Entry>>) {
        let name = format!("{daemon}: {}", path.display());
        match found {
            Ok(rows) => {
                self.journals.push(name);
                self.entries.extend(rows);
            }
            Err(e) => self.unreadable.push(format!("{name}: {e:#}")),
        }
    }

    /// Oldest first, each entry once; the log lines bounded.
    fn finish(&mut self) {
        self.entries.sort_by(|a, b| {
            (a.at_ms, &a.daemon, &a.event, &a.detail)
                .cmp(&(b.at_ms, &b.daemon, &b.event, &b.detail))
        });
        self.entries.dedup();
        if self.postfix.len() > MAX_LOG_LINES {
            let cut = self.postfix.len() - MAX_LOG_LINES;
            self.postfix.drain(..cut);
        }
    }

    fn print(&self) {
        for u in &self.unreadable {
            eprintln!("journal not read: {u}");
        }
        if self.journals.is_empty() {
            eprintln!(
                "no decision journal is configured (set `journal` in the daemons' sections of sidecars.toml)"
            );
        }
        if !self.entries.is_empty() {
            println!("Decisions ({} entries, UTC):", self.entries.len());
        }
        for e in &self.entries {
            let mut about = Vec::new();
            for (k, v) in [
                ("queue", &e.queue_id),
                ("client", &e.client),
                ("from", &e.sender),
                ("to", &e.recipient),
                ("login", &e.login),
            ] {
                if !v.is_empty() {
                    about.push(format!("{k}={}", shown(v)));
                }
            }
            println!(
                "  {}  {:<7} {:<8} {}\n  {:31}{}",
                utc_ms(e.at_ms),
                e.daemon,
                e.event,
                shown(&e.detail),
                "",
                about.join(" ")
            );
        }
        if !self.postfix.is_empty() {
            println!("Postfix's log:");
            for l in &self.postfix {
                println!("  {}", shown(l));
            }
        }
    }
}

/// Everything about queue id `qid` in one journal.
fn message(r: &Reader, qid: &str) -> rusqlite::Result<Vec<Entry>> {
    let mut out = r.read(&Query::QueueId(qid))?;
    let instances: BTreeSet<String> = out
        .iter()
        .map(|e| e.instance.clone())
        .filter(|i| !i.is_empty())
        .collect();
    for i in &instances {
        out.extend(r.read(&Query::Instance(i))?);
    }
    let (Some(first), Some(last)) = (
        out.iter().map(|e| e.at_ms).min(),
        out.iter().map(|e| e.at_ms).max(),
    ) else {
        return Ok(out);
    };
    let recipients: BTreeSet<&str> = out
        .iter()
        .flat_map(|e| e.recipient.split(' '))
        .filter(|r| !r.is_empty())
        .collect();
    let pairs: BTreeSet<(String, String)> = out
        .iter()
        .filter(|e| !e.client.is_empty())
        .map(|e| (e.sender.clone(), e.client.clone()))
        .collect();
    let mut earlier = Vec::new();
    for (sender, client) in &pairs {
        let attempts = r.read(&Query::Attempts {
            sender,
            client,
            from_ms: first - ATTEMPTS_MS,
            to_ms: last,
        })?;
        earlier.extend(attempts.into_iter().filter(|e| {
            e.queue_id.is_empty()
                && (recipients.is_empty() || e.recipient.split(' ').any(|r| recipients.contains(r)))
        }));
    }
    out.extend(earlier);
    Ok(out)
}

/// Opens a journal read-only as its directory's owner (never root in a daemon's directory);
/// one not written yet reads as nothing.
pub(crate) fn read_journal<T: Default>(
    path: &Path,
    read: impl FnOnce(&Reader) -> rusqlite::Result<T>,
) -> Result<T> {
    let dir = path.parent().unwrap_or(Path::new("."));
    if std::fs::symlink_metadata(dir).is_err() {
        // A daemon that has not started yet has written nothing.
        return Ok(T::default());
    }
    let _owner = AsOwner::of(dir)?;
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(T::default());
    }
    let r = Reader::open(path)?;
    Ok(read(&r)?)
}

/// Postfix's log lines from `files`, or the default files, or the systemd journal.
fn mail_logs(files: &[PathBuf], since_ms: i64) -> Result<Vec<String>> {
    let defaults = [
        PathBuf::from("/var/log/mail.log.1"),
        PathBuf::from("/var/log/mail.log"),
    ];
    let chosen: Vec<&PathBuf> = if files.is_empty() {
        defaults.iter().filter(|p| p.exists()).collect()
    } else {
        files.iter().collect()
    };
    if chosen.is_empty() {
        return Ok(journalctl(since_ms));
    }
    let mut lines = Vec::new();
    for f in chosen {
        let file = std::fs::File::open(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        for line in BufReader::new(file).split(b'\n') {
            let line = line?;
            if line.windows(7).any(|w| w == b"postfix") {
                lines.push(String::from_utf8_lossy(&line).into_owned());
            }
        }
    }
    Ok(lines)
}

/// The mail facility's lines from the systemd journal, when there is no mail log file.
fn journalctl(since_ms: i64) -> Vec<String> {
    let since = if since_ms > 0 {
        format!("@{}", since_ms / 1000)
    } else {
        "-7d".to_owned()
    };
    let out = std::process::Command::new("journalctl")
        .args([
            "--no-pager",
            "-q",
            "-o",
            "short-iso",
            "SYSLOG_FACILITY=2",
            "-S",
        ])
        .arg(&since)
        .stderr(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.contains("postfix"))
            .map(str::to_owned)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The queue id a Postfix log line is about (`postfix/qmgr[12]: 4Qx7Yz1abc: from=...`).
fn queue_id_of(line: &str) -> Option<String> {
    let (_, rest) = line.split_once("]: ")?;
    let (id, _) = rest.split_once(": ")?;
    (id.len() >= 6
        && id.len() <= 20
        && id != "NOQUEUE"
        && id.chars().all(|c| c.is_ascii_alphanumeric()))
    .then(|| id.to_owned())
}

/// `--since`: `90m`, `12h`, `7d` before `now_ms`, or a UTC date.
fn since(text: &str, now_ms: i64) -> Result<i64> {
    let t = text.trim();
    let unit = |c: char| match c {
        'm' => Some(60_000),
        'h' => Some(3_600_000),
        'd' => Some(86_400_000),
        _ => None,
    };
    if let Some(last) = t.chars().last()
        && let Some(ms) = unit(last)
        && let Ok(n) = t[..t.len() - 1].parse::<i64>()
    {
        return Ok(now_ms - n.saturating_mul(ms));
    }
    let parts: Vec<&str> = t.split('-').collect();
    if let [y, m, d] = parts[..]
        && let (Ok(y), Ok(m), Ok(d)) = (y.parse::<i64>(), m.parse::<u32>(), d.parse::<u32>())
        && (1..=12).contains(&m)
        && (1..=31).contains(&d)
    {
        return Ok(days_from_civil(y, m, d) * 86_400_000);
    }
    bail!("--since {t:?}: expected 90m, 12h, 7d or a date like 2026-12-01")
}

/// Days since 1970-01-01 of a civil date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn utc_ms(ms: i64) -> String {
    format!(
        "{}.{:03}",
        super::app_password::utc(ms.div_euclid(1000)),
        ms.rem_euclid(1000)
    )
}

/// Text from a peer, safe for a terminal: control characters escaped.
fn shown(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_spans_and_dates() {
        let now = 1_800_000_000_000;
        assert_eq!(since("90m", now).unwrap(), now - 90 * 60_000);
        assert_eq!(since("2d", now).unwrap(), now - 2 * 86_400_000);
        assert_eq!(since("2026-12-02", now).unwrap(), 20_789 * 86_400_000);
        assert_eq!(since("1970-01-01", now).unwrap(), 0);
        assert!(since("yesterday", now).is_err());
        assert!(since("2026-13-01", now).is_err());
    }

    #[test]
    fn queue_ids_are_read_off_postfix_lines() {
        let l = "Dec  7 17:40:01 box postfix/qmgr[123]: 4Qx7Yz1abcD: from=<a@b>, size=1";
        assert_eq!(queue_id_of(l).as_deref(), Some("4Qx7Yz1abcD"));
        let n = "Dec  7 17:40:01 box postfix/smtpd[9]: NOQUEUE: reject: RCPT from x[1.2.3.4]: 450";
        assert_eq!(queue_id_of(n), None);
        assert_eq!(queue_id_of("garbage"), None);
    }

    #[test]
    fn control_characters_are_shown_escaped() {
        assert_eq!(shown("a\x1b[31mb\n"), "a\\u{1b}[31mb\\n");
    }
}
