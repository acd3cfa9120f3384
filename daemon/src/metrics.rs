//! What a daemon counts, and the endpoint that shows it.
//!
//! Responsibilities:
//! - one registry per process (`prometheus-client`), names prefixed `miab_`; each part of a
//!   daemon registers its metrics once, at start ([`register`]);
//! - the OpenMetrics text of all of them ([`render`]);
//! - `GET /metrics` over HTTP/1.x on the section's `metrics_listen` ([`serve`]), in
//!   OpenMetrics when the scraper asks for it (Prometheus does) and in Prometheus's text
//!   format otherwise (curl, promtool, the Munin plugin); one request per connection, the head bounded and read under the section's I/O timeout, anything but
//!   `GET /metrics` answered 404/405/400 and closed;
//! - the connection figures of every listener ([`Connections`]).
//!
//! Labels are typed and bounded: a check's name, an action, a listener from the
//! configuration; never a login, an address or an IP.

use crate::listen::Listener;
use crate::serve::{Conn, Limits, Shutdown, serve as serve_conns, timed};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};
use std::io;
use std::sync::{LazyLock, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static REGISTRY: LazyLock<Mutex<Registry>> =
    LazyLock::new(|| Mutex::new(Registry::with_prefix("miab")));

/// Registers `metric` under `miab_<name>`; clones of it keep counting into the registry.
pub fn register(name: &str, help: &str, metric: impl Metric) {
    if let Ok(mut r) = REGISTRY.lock() {
        r.register(name, help, metric);
    }
}

/// The OpenMetrics text of every registered metric, ending in `# EOF`.
pub fn render() -> String {
    let mut out = String::new();
    if let Ok(r) = REGISTRY.lock() {
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &r);
    }
    out
}

/// [`render`]'s text in Prometheus's older text format (0.0.4), for scrapers that do not ask
/// for OpenMetrics (curl, `promtool check metrics`, the Munin plugin): counter families are
/// named with their `_total`, and OpenMetrics' `# EOF`, `# UNIT` and `_created` lines go.
pub fn to_text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        if let Some((tag, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                out.push_str(&format!("{tag}{name}_total {tail}\n"));
                continue;
            }
        } else {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            if name
                .strip_suffix("_created")
                .is_some_and(|family| counters.contains(family))
            {
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The most a request head may be.
pub const MAX_HEAD: usize = 8192;

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of [`to_text_format`]'s.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The answer to one request head: status line text, and the content type and body (the
/// metrics, in OpenMetrics if the `Accept` header asks for it, else in the text format)
/// for a good request. Pure, so every malformed head is tested without a socket.
pub fn respond(head: &[u8]) -> (&'static str, Option<(&'static str, String)>) {
    let Some(end) = head.iter().position(|&b| b == b'\n') else {
        return ("400 Bad Request", None);
    };
    let Ok(line) = std::str::from_utf8(&head[..end]) else {
        return ("400 Bad Request", None);
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return ("400 Bad Request", None);
    };
    if !version.starts_with("HTTP/1.") {
        return ("400 Bad Request", None);
    }
    let path = target.split('?').next().unwrap_or_default();
    let openmetrics = String::from_utf8_lossy(&head[end..]).lines().any(|h| {
        h.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("accept") && v.contains("application/openmetrics-text")
        })
    });
    match (method, path) {
        ("GET" | "HEAD", "/metrics") if openmetrics => ("200 OK", Some((CONTENT_TYPE, render()))),
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            Some((TEXT_CONTENT_TYPE, to_text_format(&render()))),
        ),
        (_, "/metrics") => ("405 Method Not Allowed", None),
        _ => ("404 Not Found", None),
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(listener: Listener, limits: Limits, shutdown: Shutdown) -> io::Result<()> {
    let io_timeout = limits.io_timeout;
    serve_conns(listener, &limits, shutdown, move |conn: Conn| async move {
        if let Err(e) = answer(conn, io_timeout).await {
            tracing::debug!(error = %e, "metrics request");
        }
    })
    .await
}

async fn answer(conn: Conn, io_timeout: std::time::Duration) -> io::Result<()> {
    let mut stream = conn.stream;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    // Up to the end of the head, or as much of it as is allowed.
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if head.len() > MAX_HEAD {
            break;
        }
        let n = timed(io_timeout, stream.read(&mut buf)).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let (status, body) = if head.len() > MAX_HEAD {
        ("431 Request Header Fields Too Large", None)
    } else {
        respond(&head)
    };
    let is_head = head.starts_with(b"HEAD ");
    let (content_type, body) = body.unwrap_or(("text/plain; charset=utf-8", String::new()));
    let mut reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !is_head {
        reply.push_str(&body);
    }
    timed(io_timeout, stream.write_all(reply.as_bytes())).await?;
    timed(io_timeout, stream.shutdown()).await?;
    // What the peer still sends (an over-long head) is read and dropped, a bounded amount,
    // so closing does not reset the connection before it has read the answer.
    let mut left = 64 * 1024usize;
    while left > 0 {
        match timed(io_timeout, stream.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
    Ok(())
}

/// Which listener a connection came to: the address from the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: String,
}

/// Every listener's connections: open now, accepted, and accepted only after waiting for a
/// free slot (`max_connections` reached).
#[derive(Debug, Clone)]
pub struct Connections {
    pub open: Family<ListenerLabel, Gauge>,
    pub accepted: Family<ListenerLabel, Counter>,
    pub waited: Family<ListenerLabel, Counter>,
}

/// The process's connection figures, registered on first use.
pub fn connections() -> &'static Connections {
    static C: LazyLock<Connections> = LazyLock::new(|| {
        let c = Connections {
            open: Family::default(),
            accepted: Family::default(),
            waited: Family::default(),
        };
        register(
            "connections_open",
            "Connections open now, per listener",
            c.open.clone(),
        );
        register(
            "connections_accepted",
            "Connections accepted, per listener",
            c.accepted.clone(),
        );
        register(
            "connections_waited_for_slot",
            "Connections accepted only after waiting because max_connections were open",
            c.waited.clone(),
        );
        c
    });
    &C
}

/// The user directory's figures: when the snapshot in use was read, how big it is, how long
/// reads take and how many failed.
#[cfg(feature = "directory")]
pub fn directory_read(r: directory::ReadReport) {
    use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
    struct Figures {
        built: Gauge,
        entries: Gauge,
        seconds: Histogram,
        failures: Counter,
    }
    static F: LazyLock<Figures> = LazyLock::new(|| {
        let f = Figures {
            built: Gauge::default(),
            entries: Gauge::default(),
            // 1 ms to about 30 s.
            seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            failures: Counter::default(),
        };
        register(
            "directory_snapshot_timestamp_seconds",
            "When the user directory in use was read (Unix time); its age is time() minus this",
            f.built.clone(),
        );
        register(
            "directory_entries",
            "Users, aliases and automatic aliases in the directory in use",
            f.entries.clone(),
        );
        register(
            "directory_rebuild_seconds",
            "Time to read the user DB into a new directory",
            f.seconds.clone(),
        );
        register(
            "directory_rebuild_failures",
            "Reads of a changed user DB that failed (answers are temporary failures until one succeeds)",
            f.failures.clone(),
        );
        f
    });
    F.seconds.observe(r.took.as_secs_f64());
    if r.ok {
        F.built.set(state::clock::unix_now());
        F.entries.set(i64::try_from(r.entries).unwrap_or(i64::MAX));
    } else {
        F.failures.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers() {
        let c = Counter::<u64>::default();
        register("test_things", "Things counted by the test", c.clone());
        c.inc_by(3);
        let (status, body) = respond(
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n",
        );
        assert_eq!(status, "200 OK");
        let (ty, body) = body.unwrap();
        assert_eq!(ty, CONTENT_TYPE);
        assert!(body.contains("# TYPE miab_test_things counter"), "{body}");
        assert!(body.contains("miab_test_things_total 3"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        let (_, plain) = respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        let (ty, text) = plain.unwrap();
        assert_eq!(ty, TEXT_CONTENT_TYPE);
        assert!(
            text.contains("# TYPE miab_test_things_total counter"),
            "{text}"
        );
        assert!(
            text.contains("# HELP miab_test_things_total Things"),
            "{text}"
        );
        assert!(text.contains("miab_test_things_total 3"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        assert_eq!(respond(b"GET /metrics?x=1 HTTP/1.0\n\n").0, "200 OK");
        assert_eq!(respond(b"HEAD /metrics HTTP/1.1\r\n\r\n").0, "200 OK");
        assert_eq!(
            respond(b"POST /metrics HTTP/1.1\r\n\r\n").0,
            "405 Method Not Allowed"
        );
        assert_eq!(respond(b"GET / HTTP/1.1\r\n\r\n").0, "404 Not Found");
        assert_eq!(
            respond(b"GET /../metrics HTTP/1.1\r\n\r\n").0,
            "404 Not Found"
        );
        for bad in [
            &b""[..],
            b"GET /metrics",
            b"GET /metrics\r\n\r\n",
            b"GET /metrics SMTP/1.0\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n\r\n",
            b"\xff\xfe /metrics HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(respond(bad).0, "400 Bad Request", "{bad:?}");
        }
    }
}
