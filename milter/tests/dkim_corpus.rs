//! The differential DKIM corpus: a seeded generator (`dkim_corpus.py`: whitespace-only lines
//! anywhere, WSP runs, tabs, empty and CRLF-only bodies, long and folded lines, mixed-case
//! names, 8-bit text, `l=`, and messages changed after signing) makes messages that two
//! independent signers sign in all four `c=` combinations with RSA and Ed25519: dkimpy
//! directly, and OpenDKIM as milters in a signing Postfix. Every signed message goes through
//! a verifying Postfix whose milters are OpenDKIM (verify mode) and miab-milter, and dkimpy
//! checks what was delivered. Where the references agree, every verdict of ours must agree
//! with them but one, chosen on purpose: an `l=` that does not cover the whole body is
//! `policy` for us, `pass` for them. Where they differ (a form feed or vertical tab in a
//! header: whitespace to OpenDKIM's relaxed header canonicalisation, not to dkimpy's), the
//! cases are listed with the side we took. The same messages signed by miab-milter must pass
//! in dkimpy (RFC 6376's reading), and in OpenDKIM unless the references differ.
//!
//! `MIAB_DKIM_CORPUS_COUNT` (default 2000 cases: 6,000 messages, 10,000 signatures)
//! and `MIAB_DKIM_CORPUS_SEED` (default 20261207) choose the run.

mod common;

use common::{HOST, setup};
use miab_e2e::postfix::{Postfix, PostfixConfig};
use miab_e2e::tools::{Run, run};
use miab_e2e::{Scratch, free_port, require_program, wait_for_port};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CANONS: [&str; 4] = [
    "simple/simple",
    "simple/relaxed",
    "relaxed/simple",
    "relaxed/relaxed",
];

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn corpus(args: &[&str]) -> Run {
    let python = require_program("/usr/bin/python3", "python3");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dkim_corpus.py");
    let r = run(Command::new(python).arg(script).args(args), None);
    assert!(
        r.ok(),
        "dkim_corpus.py {args:?}: {}\n{}",
        r.stdout,
        r.stderr
    );
    r
}

/// A throw-away opendkim; killed on drop.
struct OpenDkim(Child);

impl Drop for OpenDkim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts an opendkim configured by `dkim_corpus.py opendkim-conf ARGS` over the corpus in
/// `dir`; returns it and its port.
fn opendkim(dir: &Path, args: &[&str]) -> (OpenDkim, u16) {
    let bin = require_program("/usr/sbin/opendkim", "opendkim");
    let port = free_port();
    let conf = dir.join(format!("opendkim-{port}.conf"));
    let (keys, p, c) = (
        dir.join("keys").display().to_string(),
        port.to_string(),
        conf.display().to_string(),
    );
    let mut all = vec!["opendkim-conf", "--keys", &keys, "--port", &p, "--out", &c];
    all.extend_from_slice(args);
    corpus(&all);
    let child = Command::new(bin)
        .arg("-f")
        .arg("-x")
        .arg(&conf)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_for_port(port, Duration::from_secs(20)),
        "opendkim on {port} did not listen"
    );
    (OpenDkim(child), port)
}

/// Sends `files` as they are to `pf`'s listener on `port` from `source`, waits until its
/// sink holds `total` messages, and returns them all by `X-Corpus-Set` (empty if none) and
/// `X-Corpus-Case`.
fn send_all(
    pf: &Postfix,
    port: u16,
    source: &str,
    files: &[PathBuf],
    total: usize,
) -> HashMap<(String, String), String> {
    let port = port.to_string();
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let mut args = vec![
        "send",
        "--port",
        &port,
        "--source",
        source,
        "--from",
        "corpus@elsewhere.example",
    ];
    args.extend(names.iter().map(String::as_str));
    corpus(&args);
    let deadline = Instant::now() + Duration::from_secs(600);
    while pf.sink.count() < total {
        assert!(
            Instant::now() < deadline,
            "{} of {total} delivered\n{}",
            pf.sink.count(),
            pf.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    pf.sink
        .messages()
        .into_iter()
        .map(|m| {
            let set = header_value(&m.data, "X-Corpus-Set").unwrap_or_default();
            let case = header_value(&m.data, "X-Corpus-Case").expect("a corpus case");
            ((set, case), m.data)
        })
        .collect()
}

/// The unfolded header lines of a message.
fn header_lines(msg: &str) -> Vec<String> {
    let head = msg.split("\r\n\r\n").next().unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.push(' ');
                last.push_str(line.trim_start());
            }
        } else {
            out.push(line.to_owned());
        }
    }
    out
}

fn header_value(msg: &str, name: &str) -> Option<String> {
    header_lines(msg).into_iter().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// `prop=value` in one result text.
fn prop(result: &str, name: &str) -> Option<String> {
    result
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .map(|v| v.trim_matches(['"', ';']).to_owned())
}

/// The dkim results of the Authentication-Results headers of `authserv`, each as
/// (d, s) -> the result word and its text.
fn dkim_results(msg: &str, authserv: &str) -> BTreeMap<(String, String), (String, String)> {
    let mut out = BTreeMap::new();
    for line in header_lines(msg) {
        let Some(v) = line.strip_prefix("Authentication-Results:") else {
            continue;
        };
        let Some(rest) = v.trim().strip_prefix(&format!("{authserv};")) else {
            continue;
        };
        for r in rest.split(';').map(str::trim) {
            let Some(word) = r.strip_prefix("dkim=") else {
                continue;
            };
            let word = word.split([' ', '(']).next().unwrap_or_default().to_owned();
            if let (Some(d), Some(s)) = (prop(r, "header.d"), prop(r, "header.s")) {
                out.insert((d, s), (word, r.to_owned()));
            }
        }
    }
    out
}

/// One signature's three verdicts.
struct Row {
    set: String,
    case: String,
    d: String,
    s: String,
    ours: String,
    ours_text: String,
    opendkim: Option<bool>,
    dkimpy: Option<bool>,
}

impl Row {
    fn line(&self) -> String {
        format!(
            "{} {} d={} s={}: ours {:?}, OpenDKIM pass {:?}, dkimpy pass {:?}",
            self.set, self.case, self.d, self.s, self.ours_text, self.opendkim, self.dkimpy
        )
    }
}

#[test]
fn verdicts_agree_with_opendkim_and_dkimpy() {
    require_program("/usr/bin/swaks", "swaks");
    let count = env_or("MIAB_DKIM_CORPUS_COUNT", 2000);
    let seed = env_or("MIAB_DKIM_CORPUS_SEED", 20_261_207);
    let started = Instant::now();
    let s = setup();
    let dir = Scratch::new("dkc");
    let out = dir.path().display().to_string();
    corpus(&[
        "generate",
        "--seed",
        &seed.to_string(),
        "--count",
        &count.to_string(),
        "--out",
        &out,
    ]);
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    // One DNS for everyone: the corpus's keys and ours (OpenDKIM reads it as a file, values
    // without blanks).
    let mut dns = std::fs::read_to_string(dir.join("dns.txt")).unwrap();
    for line in dns.clone().lines() {
        let (n, v) = line.split_once(' ').unwrap();
        s.dns.add_txt(n, v);
    }
    for (n, v) in &s.records {
        dns.push_str(&format!("{n} {}\n", v.replace(' ', "")));
    }
    let dns_all = dir.join("dns-all.txt");
    std::fs::write(&dns_all, &dns).unwrap();

    // OpenDKIM signs: one instance per algorithm and canonicalisation, chained per port.
    let mut signers = Vec::new();
    let mut master = Vec::new();
    let mut port_of = HashMap::new();
    for canon in CANONS {
        let (rsa, rsa_port) = opendkim(dir.path(), &["--canon", canon, "--alg", "rsa-sha256"]);
        let (ed, ed_port) = opendkim(dir.path(), &["--canon", canon, "--alg", "ed25519-sha256"]);
        signers.extend([rsa, ed]);
        let port = free_port();
        master.push(format!(
            "127.0.0.1:{port} inet n - n - - smtpd -o smtpd_milters=inet:127.0.0.1:{rsa_port},inet:127.0.0.1:{ed_port}"
        ));
        port_of.insert(canon, port);
    }
    let mut signing_cfg = PostfixConfig::default().set("milter_default_action", "tempfail");
    signing_cfg.master_cf = master;
    let signing = Postfix::start(signing_cfg);
    for (canon, port) in &port_of {
        assert!(wait_for_port(*port, Duration::from_secs(20)), "{canon}");
    }
    let unsigned =
        |c: &serde_json::Value| dir.join(format!("unsigned/{}.eml", c["id"].as_str().unwrap()));
    // Sent per canonicalisation to its listener (send_all waits on the one sink).
    let mut od_signed = HashMap::new();
    let mut sent = 0;
    for canon in CANONS {
        let files: Vec<PathBuf> = cases
            .iter()
            .filter(|c| c["canon"] == canon)
            .map(unsigned)
            .collect();
        sent += files.len();
        od_signed = send_all(&signing, port_of[canon], "127.0.0.1", &files, sent);
    }
    drop(signers);

    // miab-milter signs the same messages, From: in one of the box's domains.
    let ours_dir = dir.mkdir("ours-in");
    let ours_files: Vec<PathBuf> = cases
        .iter()
        .map(|c| {
            let raw = std::fs::read(unsigned(c)).unwrap();
            let text = String::from_utf8(raw)
                .unwrap()
                .replace("odkim.example", "example.com");
            let p = ours_dir.join(format!("{}.eml", c["id"].as_str().unwrap()));
            std::fs::write(&p, text).unwrap();
            p
        })
        .collect();
    let ours_signed = send_all(
        &s.pf,
        s.pf.smtp_port(),
        "127.0.0.1",
        &ours_files,
        cases.len(),
    );

    // Everything through the verifying Postfix: OpenDKIM first, then miab-milter.
    let (verifier, v_port) = opendkim(
        dir.path(),
        &["--mode", "v", "--dns", &dns_all.display().to_string()],
    );
    let verifying = Postfix::start(
        PostfixConfig::default()
            .set(
                "smtpd_milters",
                format!("inet:127.0.0.1:{v_port}, inet:127.0.0.1:{}", s.port),
            )
            .set("milter_default_action", "tempfail"),
    );
    let to_verify = dir.mkdir("to-verify");
    let mut files = Vec::new();
    for (set, signed) in [("od", &od_signed), ("ours", &ours_signed)] {
        for ((_, case), msg) in signed {
            let p = to_verify.join(format!("{set}-{case}.eml"));
            std::fs::write(&p, format!("X-Corpus-Set: {set}\r\n{msg}")).unwrap();
            files.push(p);
        }
    }
    for c in &cases {
        let id = c["id"].as_str().unwrap();
        let raw = std::fs::read(dir.join(format!("dkimpy/{id}.eml"))).unwrap();
        let p = to_verify.join(format!("dkimpy-{id}.eml"));
        let mut msg = b"X-Corpus-Set: dkimpy\r\n".to_vec();
        msg.extend(raw);
        std::fs::write(&p, msg).unwrap();
        files.push(p);
    }
    let delivered = send_all(
        &verifying,
        verifying.smtp_port(),
        "127.0.0.5",
        &files,
        files.len(),
    );
    drop(verifier);

    // dkimpy on what was delivered.
    let got = dir.mkdir("delivered");
    let mut paths = Vec::new();
    for ((set, case), msg) in &delivered {
        let p = got.join(format!("{set}-{case}.eml"));
        std::fs::write(&p, msg).unwrap();
        paths.push(p.display().to_string());
    }
    let mut args = vec!["verify", "--dns"];
    let dns_arg = dns_all.display().to_string();
    args.push(&dns_arg);
    args.extend(paths.iter().map(String::as_str));
    let py = corpus(&args);
    let mut dkimpy: HashMap<(String, String, String, String), bool> = HashMap::new();
    for line in py.stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let file = v["file"].as_str().unwrap();
        let stem = Path::new(file).file_stem().unwrap().to_str().unwrap();
        let (set, case) = stem.split_once('-').unwrap();
        for sig in v["sigs"].as_array().unwrap() {
            dkimpy.insert(
                (
                    set.to_owned(),
                    case.to_owned(),
                    sig["d"].as_str().unwrap().to_owned(),
                    sig["s"].as_str().unwrap().to_owned(),
                ),
                sig["pass"].as_bool().unwrap(),
            );
        }
    }

    let mut rows = Vec::new();
    for ((set, case), msg) in &delivered {
        let theirs = dkim_results(msg, "verifier.example");
        for ((d, sel), (word, text)) in dkim_results(msg, HOST) {
            rows.push(Row {
                opendkim: theirs
                    .get(&(d.clone(), sel.clone()))
                    .map(|(w, _)| w == "pass"),
                dkimpy: dkimpy
                    .get(&(set.clone(), case.clone(), d.clone(), sel.clone()))
                    .copied(),
                set: set.clone(),
                case: case.clone(),
                d,
                s: sel,
                ours: word,
                ours_text: text,
            });
        }
    }

    // The tally, and every disagreement.
    let mut tally: BTreeMap<(String, String, bool), usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    let mut chosen = 0;
    let mut references_differ = Vec::new();
    for r in &rows {
        *tally
            .entry((r.set.clone(), r.ours.clone(), r.opendkim == Some(true)))
            .or_default() += 1;
        let (Some(od), Some(py)) = (r.opendkim, r.dkimpy) else {
            wrong.push(format!("{}: a reference gave no verdict", r.line()));
            continue;
        };
        if od != py {
            let with = if (r.ours == "pass") == od {
                "OpenDKIM"
            } else {
                "dkimpy"
            };
            references_differ.push(format!("{} (we agree with {with})", r.line()));
            continue;
        }
        let ours = r.ours == "pass";
        if ours == od {
            continue;
        }
        if r.ours == "policy" && od && r.ours_text.contains("more octets follow") {
            chosen += 1;
            continue;
        }
        wrong.push(r.line());
    }
    let messages = delivered.len();
    eprintln!(
        "seed {seed}: {count} cases, {messages} messages, {} signatures in {:?}; l= chosen differently: {chosen}; references differ: {}",
        rows.len(),
        started.elapsed(),
        references_differ.len()
    );
    for ((set, ours, od), n) in &tally {
        eprintln!("  {set:7} ours={ours:9} opendkim_pass={od:5} {n}");
    }
    for r in &references_differ {
        eprintln!("  references differ: {r}");
    }
    assert_eq!(messages, 3 * cases.len(), "every message delivered");
    // dkimpy's one signature, OpenDKIM's two, ours two.
    assert!(rows.len() >= 5 * cases.len(), "{} signatures", rows.len());
    assert!(
        wrong.is_empty(),
        "{} verdicts disagree:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(
        rows.iter()
            .filter(|r| r.set == "ours")
            .all(|r| r.dkimpy == Some(true)),
        "our own signatures pass in dkimpy, and in OpenDKIM but where the references differ"
    );
}
