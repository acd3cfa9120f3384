//! Every daemon's `/metrics` (`metrics_listen`) after real traffic through a real Postfix:
//! a greylisted stranger, a failed and a good SMTP AUTH login, a signed submission. The
//! figures move as they should, and Prometheus's own `promtool check metrics` accepts each
//! endpoint's text. Bad requests to the endpoint get their HTTP error and the daemon keeps
//! serving.

use miab_e2e::dns::TestDns;
use miab_e2e::fixture::miab_box;
use miab_e2e::postfix::Postfix;
use miab_e2e::sidecars::{Sidecars, shared_settings};
use miab_e2e::tools::{run, swaks};
use miab_e2e::{Scratch, free_port, http, require_program, wait_for_port};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const PASSWORD: &str = "a-long-password";

/// `/metrics` in OpenMetrics (as Prometheus asks for it).
fn scrape(port: u16) -> String {
    let answer = http(
        port,
        b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n\r\n",
    );
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_default();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        head.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    body.to_owned()
}

/// `/metrics` in Prometheus's text format (what curl and promtool get).
fn scrape_text(port: u16) -> String {
    let answer = http(port, b"GET /metrics HTTP/1.0\r\n\r\n");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_default();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_owned()
}

use miab_e2e::metric as value;

/// `promtool check metrics` on the endpoint's text format: it parses it and lints the names,
/// help texts and types; any finding fails.
fn promtool(what: &str, port: u16) {
    let promtool = require_program("/usr/bin/promtool", "prometheus");
    let text = scrape_text(port);
    let r = run(
        Command::new(promtool).args(["check", "metrics"]),
        Some(&text),
    );
    assert!(
        r.ok(),
        "{what}: promtool check metrics: {}{}\n{text}",
        r.stdout,
        r.stderr
    );
}

#[test]
fn every_daemon_counts_what_postfix_sent_it() {
    let dir = Scratch::new("metrics");
    miab_box(dir.path());
    let dns = TestDns::start();
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let (lookup_m, policyd_m, authd_m, milter_m) = (ports[0], ports[1], ports[2], ports[3]);
    let config = dir.join("sidecars.toml");
    std::fs::write(
        &config,
        format!(
            "{shared}[lookup]\nmetrics_listen = \"inet:127.0.0.1:{lookup_m}\"\n\
             [policyd]\nmetrics_listen = \"inet:127.0.0.1:{policyd_m}\"\n\
             checks = [\"sender_login\", \"dnsbl\", \"greylist\"]\ntrusted_clients = [\"127.0.0.1/32\"]\n\
             [policyd.dnsbl]\nsender_lists = []\nclient_lists = [{{ zone = \"zen.test\", codes = [\"127.0.0.[2..11]\"], action = \"reject\" }}]\n\
             [policyd.greylist]\nsyslog_socket = \"\"\nwhitelist_clients = []\n\
             whitelist_recipients = []\ndelay_secs = 1\n\
             [authd]\nmetrics_listen = \"inet:127.0.0.1:{authd_m}\"\nfailure_delay_ms = 0\n\
             socket_mode = \"0666\"\nproxy_networks = []\n\
             [milter]\nmetrics_listen = \"inet:127.0.0.1:{milter_m}\"\n",
            shared = shared_settings(dir.path(), dns.addr()),
        ),
    )
    .unwrap();
    let daemons = Sidecars::start(&dir, &config);
    let logs = || daemons.logs();
    for p in &ports {
        assert!(
            wait_for_port(*p, Duration::from_secs(10)),
            "metrics port {p}\n{}",
            logs()
        );
    }
    let milter_port = daemons.milter_port;
    let auth_sock = daemons.auth_sock.clone();
    let pf = Postfix::start(daemons.postfix_config());

    // A listed client, refused; a client the list refuses to answer about (Spamhaus's
    // "public resolver" code), greylisted as if unlisted.
    dns.add_a("10.0.0.127.zen.test", std::net::Ipv4Addr::new(127, 0, 0, 4));
    dns.add_a(
        "11.0.0.127.zen.test",
        std::net::Ipv4Addr::new(127, 255, 255, 254),
    );
    let rcpt_from = |client: &str| {
        swaks(
            pf.smtp_port(),
            &[
                "--local-interface",
                client,
                "--from",
                "a@foreign.example",
                "--to",
                "me@example.com",
                "--quit-after",
                "RCPT",
            ],
        )
    };
    let listed = rcpt_from("127.0.0.10");
    assert!(
        listed.stdout.contains("554 5.7.1"),
        "{listed:?}\n{}",
        logs()
    );
    let refused = rcpt_from("127.0.0.11");
    assert!(
        refused.stdout.contains("450 4.2.0"),
        "{refused:?}\n{}",
        logs()
    );
    // A stranger: greylisted.
    let grey = swaks(
        pf.smtp_port(),
        &[
            "--local-interface",
            "127.0.0.9",
            "--from",
            "someone@foreign.example",
            "--to",
            "me@example.com",
            "--quit-after",
            "RCPT",
        ],
    );
    assert!(grey.stdout.contains("450 4.2.0"), "{grey:?}\n{}", logs());
    // A wrong password, then the right one with a signed message.
    let auth = |password: &str| {
        swaks(
            pf.smtp_port(),
            &[
                "--from",
                "me@example.com",
                "--to",
                "someone@elsewhere.example",
                "--auth",
                "PLAIN",
                "--auth-user",
                "me@example.com",
                "--auth-password",
                password,
            ],
        )
    };
    let bad = auth("wrong");
    assert!(bad.stdout.contains("535"), "{bad:?}");
    let good = auth(PASSWORD);
    assert!(good.ok(), "{good:?}\n{}", logs());
    // The stranger retries after the delay: accepted, and verified (no signature, no SPF
    // record here).
    std::thread::sleep(Duration::from_millis(1500));
    let inbound = swaks(
        pf.smtp_port(),
        &[
            "--local-interface",
            "127.0.0.9",
            "--from",
            "someone@foreign.example",
            "--to",
            "me@example.com",
        ],
    );
    assert!(inbound.ok(), "{inbound:?}\n{}", logs());

    // A mechanism miab-authd does not offer, asked on its socket directly.
    {
        use std::io::BufRead;
        let sock = std::os::unix::net::UnixStream::connect(&auth_sock).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        (&sock)
            .write_all(b"VERSION\t1\t2\nCPID\t1\nAUTH\t7\tCRAM-MD5\tservice=smtp\tsecured\n")
            .unwrap();
        let mut lines = std::io::BufReader::new(&sock).lines();
        let refused = lines
            .by_ref()
            .map_while(Result::ok)
            .find(|l| l.starts_with("FAIL\t7"));
        assert!(refused.is_some(), "no FAIL for CRAM-MD5");
    }
    let policy = scrape(policyd_m);
    promtool("miab-policyd", policyd_m);
    assert!(
        value(
            &policy,
            "miab_policyd_check_verdicts_total{check=\"greylist\",outcome=\"stop\",answer=\"defer_if_permit\"}"
        ) >= 1.0,
        "{policy}"
    );
    assert!(
        value(
            &policy,
            "miab_policyd_answers_total{answer=\"defer_if_permit\"}"
        ) >= 1.0,
        "{policy}"
    );
    assert!(
        value(
            &policy,
            "miab_policyd_check_seconds_count{check=\"greylist\"}"
        ) >= 1.0,
        "{policy}"
    );
    for (sample, at_least) in [
        (
            "miab_policyd_list_answers_total{list=\"client\",result=\"listed\"}",
            1.0,
        ),
        (
            "miab_policyd_list_answers_total{list=\"client\",result=\"list_error\"}",
            1.0,
        ),
        (
            "miab_policyd_list_answers_total{list=\"client\",result=\"clean\"}",
            1.0,
        ),
        ("miab_policyd_dns_seconds_count{lookup=\"dnsbl\"}", 3.0),
        (
            "miab_policyd_check_verdicts_total{check=\"dnsbl\",outcome=\"stop\",answer=\"reject\"}",
            1.0,
        ),
        ("miab_store_seconds_count{store=\"greylist\"}", 2.0),
        ("miab_directory_entries", 1.0),
        ("miab_directory_rebuild_seconds_count", 1.0),
        ("miab_directory_snapshot_timestamp_seconds", 1.0),
    ] {
        assert!(value(&policy, sample) >= at_least, "{sample}: {policy}");
    }
    assert!(
        !policy.contains("someone@"),
        "no address as a label: {policy}"
    );
    assert!(!policy.contains("127.0.0.9"), "no IP as a label: {policy}");

    let auth_text = scrape(authd_m);
    promtool("miab-authd", authd_m);
    for (mechanism, result, want) in [
        ("plain", "failed", 1.0),
        ("plain", "ok_password", 1.0),
        ("other", "unsupported", 1.0),
    ] {
        let got = value(
            &auth_text,
            &format!(
                "miab_authd_authentications_total{{service=\"smtp\",mechanism=\"{mechanism}\",result=\"{result}\"}}"
            ),
        );
        assert_eq!(got, want, "{result}: {auth_text}");
    }
    assert!(!auth_text.contains("me@example.com"), "{auth_text}");

    let lookups = scrape(lookup_m);
    assert!(
        value(
            &lookups,
            "miab_lookup_queries_total{map=\"domains\",answer=\"found\"}"
        ) >= 1.0,
        "{lookups}"
    );
    assert!(
        value(&lookups, "miab_lookup_seconds_count{map=\"domains\"}") >= 1.0,
        "{lookups}"
    );
    let milter_text = scrape(milter_m);
    assert_eq!(
        value(
            &milter_text,
            "miab_milter_signatures_total{outcome=\"signed\"}"
        ),
        1.0,
        "{milter_text}"
    );
    assert!(
        value(
            &milter_text,
            "miab_milter_auth_results_total{method=\"dkim\",result=\"none\"}"
        ) >= 1.0,
        "{milter_text}"
    );
    assert!(!milter_text.contains("example.com"), "{milter_text}");
    assert!(
        value(&milter_text, "miab_milter_verify_seconds_count") >= 1.0,
        "{milter_text}"
    );
    assert!(
        value(&milter_text, "miab_directory_entries") >= 1.0,
        "{milter_text}"
    );
    // Postfix's milter connections, on the milter's own listener.
    assert!(
        value(
            &milter_text,
            &format!(
                "miab_connections_accepted_total{{listener=\"inet:127.0.0.1:{milter_port}\"}}"
            )
        ) >= 2.0,
        "{milter_text}"
    );
    for (what, port) in [("miab-lookup", lookup_m), ("miab-milter", milter_m)] {
        let text = scrape(port);
        promtool(what, port);
        let accepted: f64 = text
            .lines()
            .filter(|l| l.starts_with("miab_connections_accepted_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(accepted >= 1.0, "{what}: {text}");
    }

    // Bad requests: their HTTP error, and the endpoint keeps serving.
    let not_found = http(policyd_m, b"GET / HTTP/1.1\r\n\r\n");
    assert!(not_found.starts_with("HTTP/1.1 404 "), "{not_found}");
    let post = http(policyd_m, b"POST /metrics HTTP/1.1\r\n\r\n");
    assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
    let garbage = http(policyd_m, b"\xff\xfe\x00\r\n\r\n");
    assert!(garbage.starts_with("HTTP/1.1 400 "), "{garbage}");
    let huge = http(policyd_m, &vec![b'a'; 20_000]);
    assert!(huge.starts_with("HTTP/1.1 431 "), "{huge}");
    assert!(scrape(policyd_m).contains("# EOF"));

    // The Munin plugin the package installs, over these endpoints: its graphs declared, the
    // figures fetched as they are.
    let plugin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/munin/miab_sidecars");
    let state = dir.mkdir("munin-state");
    let munin = |arg: &[&str]| {
        run(
            Command::new("/usr/bin/python3")
                .arg(&plugin)
                .args(arg)
                .env("config", &config)
                .env("MUNIN_PLUGSTATE", &state),
            None,
        )
    };
    let conf = munin(&["config"]);
    assert!(conf.ok(), "{conf:?}");
    for graph in [
        "multigraph miab_policyd_answers",
        "multigraph miab_authd_authentications",
        "multigraph miab_milter_results",
        "multigraph miab_lookup_queries",
        "graph_category mail",
    ] {
        assert!(conf.stdout.contains(graph), "{graph}: {}", conf.stdout);
    }
    let fetch = munin(&[]);
    assert!(fetch.ok(), "{fetch:?}");
    let field = |graph: &str, name: &str| -> f64 {
        let section = fetch
            .stdout
            .split("multigraph ")
            .find(|s| s.starts_with(&format!("{graph}\n")))
            .unwrap_or_else(|| panic!("{graph}: {}", fetch.stdout));
        value(section, &format!("{name}.value"))
    };
    assert!(
        field("miab_policyd_answers", "defer_if_permit") >= 1.0,
        "{}",
        fetch.stdout
    );
    assert_eq!(
        field("miab_authd_authentications", "failed"),
        1.0,
        "{}",
        fetch.stdout
    );
    assert_eq!(
        field("miab_milter_signatures", "signed"),
        1.0,
        "{}",
        fetch.stdout
    );
    let auto = munin(&["autoconf"]);
    assert_eq!(auto.stdout.trim(), "yes", "{auto:?}");
}

/// The Munin plugin's own tests (fake endpoints: dead, hung, over a UNIX socket), and the
/// Grafana dashboard's metric names.
#[test]
fn munin_plugin_and_grafana_dashboard() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/munin");
    let r = run(
        Command::new("/usr/bin/python3")
            .args(["-m", "unittest", "test_miab_sidecars"])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .current_dir(&dir),
        None,
    );
    assert!(r.ok(), "{}{}", r.stdout, r.stderr);
}
