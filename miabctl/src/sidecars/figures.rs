//! `sidecars status`'s live figures: what each daemon decided in the last hour (from the
//! decision journals), how slow it is (the p99 of its latency histograms since it started,
//! from its metrics endpoint), and what looks wrong: checks that failed open or closed, DNS
//! lists that refuse the box's resolver or do not answer, a DKIM key that DNS no longer
//! publishes (asked of the box's resolver, as receivers would).

use super::status::{Finding, bad, ok, warn};
use crate::cmd::explain::read_journal;
use daemon::{Config, ListenAddr};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

const HOUR_MS: i64 = 3_600_000;

/// The findings about the figures.
pub fn check(config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    let since = state::journal::now_ms() - HOUR_MS;
    for (daemon, path) in config.journals() {
        let hour = read_journal(&path, |r| {
            Ok(Hour {
                counts: r.counts_since(since)?,
                // A check that could not decide is journalled as `check=failed_open(why)`.
                failed: r.count_containing(since, "=failed_")?,
            })
        });
        match hour {
            Ok(hour) => out.extend(journal_findings(daemon, &hour)),
            Err(e) => out.push(warn(
                format!(
                    "{daemon}'s journal {} could not be read: {e:#}",
                    path.display()
                ),
                format!("ls -l {}", path.display()),
            )),
        }
    }
    out.extend(dkim_in_dns(config));
    for (daemon, addr) in config.metrics_endpoints() {
        match scrape(&addr) {
            Some(text) => out.extend(metric_findings(daemon, &text)),
            None => out.push(warn(
                format!("miab-{daemon}'s metrics do not answer on {addr}"),
                format!("systemctl status miab-{daemon}"),
            )),
        }
    }
    out
}

/// One daemon's last hour in its journal.
#[derive(Debug, Default)]
struct Hour {
    /// (event, the detail's first word, entries).
    counts: Vec<(String, String, u64)>,
    /// Entries where a check could not decide.
    failed: u64,
}

/// The last hour of one daemon.
fn journal_findings(daemon: &str, hour: &Hour) -> Vec<Finding> {
    let mut by_event: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    for (event, head, n) in &hour.counts {
        *by_event
            .entry(event.as_str())
            .or_default()
            .entry(head.as_str())
            .or_default() += n;
    }
    let failed = hour.failed;
    let mut out = Vec::new();
    let summary: Vec<String> = by_event
        .iter()
        .map(|(event, heads)| {
            let total: u64 = heads.values().sum();
            let parts: Vec<String> = heads.iter().map(|(h, n)| format!("{n} {h}")).collect();
            format!("{total} {event} ({})", parts.join(", "))
        })
        .collect();
    if summary.is_empty() {
        out.push(ok(format!("miab-{daemon}, last hour: nothing journalled")));
    } else {
        out.push(ok(format!(
            "miab-{daemon}, last hour: {}",
            summary.join("; ")
        )));
    }
    if failed > 0 {
        out.push(bad(
            format!(
                "miab-{daemon}: {failed} check(s) could not decide in the last hour (failed open: mail let through unchecked; failed closed: mail deferred)"
            ),
            format!("journalctl -u miab-{daemon} -g 'check failed' -n 20"),
        ));
    }
    out
}

/// What one daemon's metrics say is slow or wrong.
fn metric_findings(daemon: &str, text: &str) -> Vec<Finding> {
    let samples = parse(text);
    let mut out = Vec::new();
    let slow: Vec<String> = p99s(&samples)
        .into_iter()
        .map(|(what, secs)| format!("{what} {}", ms(secs)))
        .collect();
    if !slow.is_empty() {
        out.push(ok(format!(
            "miab-{daemon}, p99 since start: {}",
            slow.join(", ")
        )));
    }
    let sum = |name: &str, label: &str| -> f64 {
        samples
            .iter()
            .filter(|(n, l, _)| n == name && l.contains(label))
            .map(|(_, _, v)| v)
            .sum()
    };
    let refused = sum("miab_policyd_list_answers_total", "result=\"list_error\"");
    if refused > 0.0 {
        out.push(warn(
            format!(
                "DNS lists refused {refused} questions since miab-policyd started (127.255.255.x: the list does not answer this box's resolver; a public resolver?)"
            ),
            "ask MIAB's own resolver: [dns] nameservers = [\"127.0.0.1:53\"] in /etc/miab/sidecars.toml",
        ));
    }
    let unanswered = sum("miab_policyd_list_answers_total", "result=\"timeout\"")
        + sum("miab_policyd_list_answers_total", "result=\"error\"");
    if unanswered > 0.0 {
        out.push(warn(
            format!(
                "{unanswered} DNS-list questions got no usable answer since miab-policyd started (no opinion: the mail was let through)"
            ),
            "systemctl status bind9; dig zen.spamhaus.org",
        ));
    }
    out
}

/// Does DNS publish the DKIM keys miab-milter signs with, for every mail domain? A record
/// with another key is a failure (receivers fail the signatures); no record, or no answer,
/// a warning.
fn dkim_in_dns(config: &Config) -> Vec<Finding> {
    let layout = config.layout();
    let domains = match userdb::UserDb::open(layout.users_db(), userdb::Access::ReadOnly)
        .and_then(|db| db.mail_domains())
    {
        Ok(d) => d,
        Err(e) => {
            return vec![warn(
                format!("DKIM keys not checked against DNS: {e}"),
                "miabctl domain list",
            )];
        }
    };
    // The keys are read as the owner of their directory (OpenDKIM's on MIAB): root follows
    // no link planted there.
    let owner = match crate::owner::AsOwner::of(&layout.dkim_dir()) {
        Ok(o) => o,
        Err(e) => {
            return vec![bad(
                format!("the DKIM keys cannot be read: {e:#}"),
                "miabctl dkim generate",
            )];
        }
    };
    let mut wanted = Vec::new();
    for d in &domains {
        match crate::dkim::records(d, &layout) {
            Ok(records) => wanted.extend(
                records
                    .into_iter()
                    .filter(|(name, _)| name.contains("._domainkey.")),
            ),
            Err(e) => {
                return vec![bad(
                    format!("the DKIM key cannot be read: {e:#}"),
                    "miabctl dkim generate",
                )];
            }
        }
    }
    drop(owner);
    if wanted.is_empty() {
        return Vec::new();
    }
    let answers =
        match daemon::dns::authenticator(&config.dns).and_then(|auth| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            Ok(rt.block_on(async {
                // All at once: a resolver that does not answer costs one timeout, not one per
                // domain.
                let asks: Vec<_> = wanted
                    .iter()
                    .map(|(name, _)| {
                        let (auth, name, limit) =
                            (auth.clone(), name.clone(), config.dns.timeout());
                        tokio::spawn(async move {
                            tokio::time::timeout(limit, auth.txt_raw_lookup(name.as_str())).await
                        })
                    })
                    .collect();
                let mut out = Vec::new();
                for ask in asks {
                    out.push(match ask.await {
                        Ok(Ok(Ok(bytes))) => Some(String::from_utf8_lossy(&bytes).into_owned()),
                        // NXDOMAIN or no TXT record (not SERVFAIL): nothing published.
                        Ok(Ok(Err(mail_auth::Error::Dns(
                            mail_auth::DnsError::RecordNotFound(code),
                        )))) if matches!(u16::from(code), 0 | 3) => Some(String::new()),
                        _ => None,
                    });
                }
                out
            }))
        }) {
            Ok(a) => a,
            Err(e) => {
                return vec![warn(
                    format!("DKIM keys not checked against DNS: {e}"),
                    "systemctl status bind9",
                )];
            }
        };
    let key_of = |record: &str| -> String {
        let flat: String = record.chars().filter(|c| !c.is_whitespace()).collect();
        flat.split(';')
            .find_map(|t| t.strip_prefix("p="))
            .unwrap_or_default()
            .to_owned()
    };
    let (mut matching, mut out) = (0, Vec::new());
    for ((name, record), answer) in wanted.iter().zip(answers) {
        match answer {
            Some(text) if !key_of(&text).is_empty() && key_of(&text) == key_of(record) => {
                matching += 1;
            }
            Some(text) if !key_of(&text).is_empty() => out.push(bad(
                format!("DNS publishes another DKIM key at {name}: receivers fail the signatures of miab-milter"),
                format!("publish {}", crate::dkim::quoted(record)),
            )),
            Some(_) => out.push(warn(
                format!("DNS publishes no DKIM key at {name}"),
                format!("publish {}", crate::dkim::quoted(record)),
            )),
            None => out.push(warn(
                format!("DNS did not answer for {name}: the DKIM key is not checked"),
                "systemctl status bind9",
            )),
        }
    }
    if matching > 0 {
        out.insert(
            0,
            ok(format!(
                "DNS publishes the DKIM key miab-milter signs with ({matching} record(s))"
            )),
        );
    }
    out
}

/// `(name, labels, value)` of every sample.
fn parse(text: &str) -> Vec<(String, String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match head.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (head, ""),
            };
            Some((name.to_owned(), labels.to_owned(), value))
        })
        .collect()
}

/// The p99 of each latency histogram (per label set), from its cumulative buckets.
fn p99s(samples: &[(String, String, f64)]) -> Vec<(String, f64)> {
    let mut buckets: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
    for (name, labels, v) in samples {
        let Some(family) = name.strip_suffix("_seconds_bucket") else {
            continue;
        };
        let mut le = f64::INFINITY;
        let mut rest = Vec::new();
        for pair in labels.split(',') {
            match pair.strip_prefix("le=\"") {
                Some(x) => le = x.trim_end_matches('"').parse().unwrap_or(f64::INFINITY),
                None if !pair.is_empty() => rest.push(pair.to_owned()),
                None => {}
            }
        }
        buckets
            .entry((family.to_owned(), rest.join(",")))
            .or_default()
            .push((le, *v));
    }
    let mut out = Vec::new();
    for ((family, labels), mut b) in buckets {
        b.sort_by(|x, y| x.0.total_cmp(&y.0));
        let Some(&(_, count)) = b.last() else {
            continue;
        };
        if count < 1.0 {
            continue;
        }
        let want = 0.99 * count;
        let Some(&(le, _)) = b.iter().find(|(_, c)| *c >= want) else {
            continue;
        };
        let name = family.trim_start_matches("miab_");
        let what = if labels.is_empty() {
            name.to_owned()
        } else {
            format!("{name}{{{labels}}}")
        };
        out.push((what, le));
    }
    out
}

fn ms(secs: f64) -> String {
    if secs.is_infinite() {
        "> the largest bucket".into()
    } else {
        format!("<= {:.2} ms", secs * 1000.0)
    }
}

/// `GET /metrics` on a daemon's endpoint, 3 s at most.
fn scrape(addr: &ListenAddr) -> Option<String> {
    let timeout = Some(Duration::from_secs(3));
    let request = b"GET /metrics HTTP/1.0\r\n\r\n";
    let mut answer = Vec::new();
    match addr {
        ListenAddr::Inet(sa) => {
            let mut s = std::net::TcpStream::connect_timeout(sa, Duration::from_secs(3)).ok()?;
            s.set_read_timeout(timeout).ok()?;
            s.set_write_timeout(timeout).ok()?;
            s.write_all(request).ok()?;
            s.take(16 << 20).read_to_end(&mut answer).ok()?;
        }
        ListenAddr::Unix(path) => {
            let mut s = std::os::unix::net::UnixStream::connect(path).ok()?;
            s.set_read_timeout(timeout).ok()?;
            s.set_write_timeout(timeout).ok()?;
            s.write_all(request).ok()?;
            s.take(16 << 20).read_to_end(&mut answer).ok()?;
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_is_read_off_the_buckets() {
        let text = "\
# TYPE miab_policyd_check_seconds histogram
miab_policyd_check_seconds_bucket{check=\"greylist\",le=\"0.001\"} 90
miab_policyd_check_seconds_bucket{check=\"greylist\",le=\"0.002\"} 99
miab_policyd_check_seconds_bucket{check=\"greylist\",le=\"0.004\"} 100
miab_policyd_check_seconds_bucket{check=\"greylist\",le=\"+Inf\"} 100
miab_policyd_check_seconds_count{check=\"greylist\"} 100
miab_policyd_list_answers_total{list=\"client\",result=\"list_error\"} 3
";
        let p = p99s(&parse(text));
        assert_eq!(p, [("policyd_check{check=\"greylist\"}".to_owned(), 0.002)]);
        let f = metric_findings("policyd", text);
        assert!(f.iter().any(|f| f.what.contains("refused 3 questions")));
        assert!(f.iter().all(|f| f.ok), "a refusing list is a warning");
    }

    #[test]
    fn failed_checks_are_a_failure() {
        let hour = Hour {
            counts: vec![("policy".into(), "dunno".into(), 5)],
            failed: 2,
        };
        let f = journal_findings("policyd", &hour);
        assert!(f[0].what.contains("5 policy (5 dunno)"), "{}", f[0].what);
        assert!(!f[1].ok && f[1].what.contains("2 check(s)"));
    }
}
