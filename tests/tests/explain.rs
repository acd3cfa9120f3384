//! `miabctl explain` over the four daemons' decision journals and a real Postfix's log: a
//! stranger's message greylisted, retried, accepted, verified and delivered; a hijacked
//! login's message held by containment; a failed login; an unknown queue id (exit code 1).

use miab_e2e::dns::TestDns;
use miab_e2e::fixture::miab_box;
use miab_e2e::postfix::Postfix;
use miab_e2e::sidecars::{Sidecars, shared_settings};
use miab_e2e::tools::{Run, run, swaks};
use miab_e2e::{Scratch, free_port, http, metric, wait_until, workspace_bin};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const PASSWORD: &str = "a-long-password";

/// The queue id in swaks's transcript (`250 2.0.0 Ok: queued as 4Qx...`).
fn queued_as(r: &Run) -> String {
    r.stdout
        .split("queued as ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .unwrap_or_else(|| panic!("no queue id: {}", r.stdout))
        .to_owned()
}

fn explain(config: &Path, log: &Path, args: &[&str]) -> Run {
    run(
        Command::new(workspace_bin("miabctl"))
            .arg("--config")
            .arg(config)
            .arg("explain")
            .arg("--mail-log")
            .arg(log)
            .args(args),
        None,
    )
}

/// `explain` until its story holds every one of `want` (the journals are written a moment
/// after the answer).
fn explain_until(config: &Path, log: &Path, args: &[&str], want: &[&str]) -> Run {
    let mut last = None;
    let found = wait_until(Duration::from_secs(20), || {
        let r = explain(config, log, args);
        let ok = r.ok() && want.iter().all(|w| r.stdout.contains(w));
        last = Some(r.clone());
        ok.then_some(r)
    });
    found.unwrap_or_else(|| panic!("explain {args:?}: want {want:?} in\n{:?}", last))
}

#[test]
fn explain_tells_a_messages_story_across_the_daemons() {
    let dir = Scratch::new("explain");
    miab_box(dir.path());
    let dns = TestDns::start();
    let policyd_metrics = free_port();
    let journal = |d: &str| {
        dir.join(format!("journal/{d}.sqlite"))
            .display()
            .to_string()
    };
    let config = dir.join("sidecars.toml");
    std::fs::write(
        &config,
        format!(
            "{shared}[lookup]\njournal = \"{jl}\"\n\
             [policyd]\njournal = \"{jp}\"\nmetrics_listen = \"inet:127.0.0.1:{pm}\"\n\
             checks = [\"sender_login\", \"containment\", \"greylist\"]\n\
             trusted_clients = [\"127.0.0.1/32\"]\n\
             [policyd.greylist]\nsyslog_socket = \"\"\nwhitelist_clients = []\n\
             whitelist_recipients = []\ndelay_secs = 1\n\
             [policyd.containment]\nfloor_messages = 2\nfloor_recipients = 2\n\
             floor_new_recipients = 2\nnotify = \"\"\n\
             [authd]\njournal = \"{ja}\"\nfailure_delay_ms = 0\n\
             socket_mode = \"0666\"\nproxy_networks = []\n\
             [milter]\njournal = \"{jm}\"\n",
            shared = shared_settings(dir.path(), dns.addr()),
            jl = journal("lookup"),
            jp = journal("policyd"),
            ja = journal("authd"),
            jm = journal("milter"),
            pm = policyd_metrics,
        ),
    )
    .unwrap();
    let daemons = Sidecars::start(&dir, &config);
    let pf = Postfix::start(daemons.postfix_config());
    let log = pf.path("postfix.log");
    let logs = || format!("{}\npostfix:\n{}", daemons.logs(), pf.log());

    // A stranger: greylisted, then accepted after the delay.
    let stranger = |quit: &[&str]| {
        let mut args = vec![
            "--local-interface",
            "127.0.0.9",
            "--from",
            "someone@foreign.example",
            "--to",
            "me@example.com",
            "--header",
            "Subject: explain-inbound",
        ];
        args.extend_from_slice(quit);
        swaks(pf.smtp_port(), &args)
    };
    let grey = stranger(&["--quit-after", "RCPT"]);
    assert!(grey.stdout.contains("450 4.2.0"), "{grey:?}\n{}", logs());
    std::thread::sleep(Duration::from_millis(1500));
    let inbound = stranger(&[]);
    assert!(inbound.ok(), "{inbound:?}\n{}", logs());
    let qid = queued_as(&inbound);
    wait_until(Duration::from_secs(30), || {
        pf.log()
            .lines()
            .any(|l| l.contains(&format!(" {qid}: ")) && l.contains("status=sent"))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("{qid} not delivered\n{}", logs()));
    let story = explain_until(
        &config,
        &log,
        &[&qid],
        &[
            "greylist=stop",
            "Greylisted",
            "greylist=header",
            "X-Greylist: delayed",
            "milter  verified accept: ",
            "dmarc=none",
            "status=sent",
        ],
    );
    println!("{}", story.stdout);
    // Oldest first: the refusal before the acceptance, the decisions before the log.
    let at = |s: &str| story.stdout.find(s).unwrap();
    assert!(
        at("greylist=stop") < at("greylist=header"),
        "{}",
        story.stdout
    );
    assert!(at("Decisions") < at("Postfix's log"), "{}", story.stdout);
    let json = explain(&config, &log, &["--json", &qid]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let daemons_seen: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["daemon"].as_str())
        .collect();
    assert!(daemons_seen.contains(&"policyd") && daemons_seen.contains(&"milter"));
    assert!(
        v["postfix"].as_array().unwrap().len() >= 3,
        "{}",
        json.stdout
    );

    // A login sending past its floor: the later messages are held, and the story says why.
    let bad = swaks(
        pf.smtp_port(),
        &[
            "--from",
            "me@example.com",
            "--to",
            "x@elsewhere.example",
            "--auth",
            "PLAIN",
            "--auth-user",
            "me@example.com",
            "--auth-password",
            "wrong",
        ],
    );
    assert!(bad.stdout.contains("535"), "{bad:?}");
    for n in 0..5 {
        let to = format!("r{n}@elsewhere.example");
        let r = swaks(
            pf.smtp_port(),
            &[
                "--from",
                "me@example.com",
                "--to",
                &to,
                "--auth",
                "PLAIN",
                "--auth-user",
                "me@example.com",
                "--auth-password",
                PASSWORD,
            ],
        );
        assert!(r.ok(), "{r:?}\n{}", logs());
    }
    let held = wait_until(Duration::from_secs(30), || {
        let ids = pf.held_ids();
        (!ids.is_empty()).then_some(ids)
    })
    .unwrap_or_else(|| panic!("nothing held\n{}\n{}", pf.queue(), logs()));
    // The holds are counted too.
    let figures = http(policyd_metrics, b"GET /metrics HTTP/1.0\r\n\r\n");
    assert!(
        metric(&figures, "miab_policyd_holds_total{event=\"message_held\"}") >= held.len() as f64,
        "{figures}"
    );
    assert_eq!(
        metric(&figures, "miab_policyd_holds_total{event=\"login_held\"}"),
        1.0,
        "{figures}"
    );
    let story = explain_until(
        &config,
        &log,
        &[&held[0]],
        &["hold: HOLD", "containment=stop", ": hold: END-OF-MESSAGE"],
    );
    assert!(
        story.stdout.contains("login=me@example.com"),
        "{}",
        story.stdout
    );
    println!("{}", story.stdout);
    // Released by the administrator: the story says so.
    let released = run(
        Command::new(workspace_bin("miabctl"))
            .arg("--config")
            .arg(&config)
            .args(["held", "release", "me@example.com", "--postfix-config"])
            .arg(pf.config_dir()),
        None,
    );
    assert!(released.ok(), "{released:?}");
    explain_until(
        &config,
        &log,
        &[&held[0]],
        &["miabctl release  released: by `miabctl held release`"],
    );

    // An address: the failed login and the signed messages are about me@example.com.
    explain_until(
        &config,
        &log,
        &["me@example.com", "--since", "1h"],
        &["authd   login    failed: smtp PLAIN", "milter  signed"],
    );

    // Unknown: a clear answer and exit code 1; garbage is refused the same way.
    let unknown = explain(&config, &log, &["ZZZZZZZZZZ"]);
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert!(unknown.stderr.contains("unknown queue id"), "{unknown:?}");
    let garbage = explain(&config, &log, &["x;rm -rf"]);
    assert_eq!(garbage.code, 1, "{garbage:?}");
}

/// A decision answered just before SIGTERM is in the journal after the daemon exits: shutdown
/// waits for the writer.
#[test]
fn the_last_decisions_are_written_at_shutdown() {
    use std::io::{BufRead, BufReader, Write};
    let dir = Scratch::new("explain-stop");
    miab_box(dir.path());
    let port = free_port();
    let journal = dir.join("journal/policyd.sqlite");
    let config = format!(
        "storage_root = \"{}\"\n[policyd]\njournal = \"{}\"\nchecks = [\"greylist\"]\n\
         trusted_clients = []\n[policyd.greylist]\nsyslog_socket = \"\"\nspf_pool = false\n",
        dir.path().display(),
        journal.display()
    );
    let mut policyd = miab_e2e::process::DaemonProcess::with_config(
        &workspace_bin("miab-policyd"),
        &dir,
        "policyd",
        &config,
        &["--listen", &format!("inet:127.0.0.1:{port}")],
    );
    assert!(miab_e2e::wait_for_port(port, Duration::from_secs(10)));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(
        b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=192.0.2.7\n\
          sender=last@foreign.example\nrecipient=me@example.com\ninstance=1.2.3\n\n",
    )
    .unwrap();
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply).unwrap();
    assert!(reply.starts_with("action="), "{reply}");
    assert!(policyd.terminate().success(), "{}", policyd.log());
    let cfg = dir.join("sidecars.toml");
    std::fs::write(&cfg, &config).unwrap();
    let r = explain(
        &cfg,
        Path::new("/dev/null"),
        &["last@foreign.example", "--since", "1h"],
    );
    assert!(r.ok() && r.stdout.contains("greylist=stop"), "{r:?}");
}
