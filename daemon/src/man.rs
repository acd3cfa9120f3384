//! The manual pages, made from the same sources as what they describe, so they cannot drift:
//! each binary's from its `clap` command (the text `--help` prints), `sidecars.toml(5)` from
//! the packaged sample configuration, whose comments document every setting (its tests load
//! it with every daemon's parser).
//!
//! `BINARY --write-man-pages DIR` writes the binary's pages (one per subcommand too) and
//! exits; the package build runs it. It is not a flag `--help` shows.

use clap::{Command, Parser};
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, roman};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The packaged configuration, with its comments.
pub const SAMPLE_CONFIG: &str = include_str!("../../packaging/sidecars.toml");

/// The hidden first argument that writes the pages.
pub const WRITE_FLAG: &str = "--write-man-pages";

/// Parses the command line as `A`; with `--write-man-pages DIR` first, writes `A`'s pages
/// (and, if `config_page`, `sidecars.toml.5`) into DIR and exits.
pub fn parse_or_write<A: Parser>(config_page: bool) -> A {
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == WRITE_FLAG) {
        let Some(dir) = args.next() else {
            eprintln!("{WRITE_FLAG} DIR");
            std::process::exit(2);
        };
        let dir = PathBuf::from(dir);
        let written = write_pages(A::command(), &dir).and_then(|mut w| {
            if config_page {
                let path = dir.join("sidecars.toml.5");
                std::fs::write(&path, config_man_page(SAMPLE_CONFIG))?;
                w.push(path);
            }
            Ok(w)
        });
        match written {
            Ok(pages) => {
                for p in pages {
                    println!("{}", p.display());
                }
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("{}: {e}", dir.display());
                std::process::exit(1);
            }
        }
    }
    A::parse()
}

/// Writes `cmd`'s page and one per (visible) subcommand, in section 8, into `dir`.
pub fn write_pages(cmd: Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    write_one(&cmd, dir, &mut written)?;
    Ok(written)
}

fn write_one(cmd: &Command, dir: &Path, written: &mut Vec<PathBuf>) -> io::Result<()> {
    let man = Man::new(cmd.clone())
        .section("8")
        .manual("miab-sidecars")
        .date("");
    let path = dir.join(man.get_filename());
    let mut out = Vec::new();
    man.render(&mut out)?;
    common_sections(cmd.get_name()).to_writer(&mut out)?;
    std::fs::File::create(&path)?.write_all(&out)?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_one(sub, dir, written)?;
    }
    Ok(())
}

/// FILES, ENVIRONMENT and SEE ALSO, the same for every binary.
fn common_sections(name: &str) -> Roff {
    let mut r = Roff::default();
    r.control("SH", ["FILES"]);
    r.control("TP", []);
    r.text([bold("/etc/miab/sidecars.toml")]);
    r.text([roman(
        "The configuration every binary shares; see sidecars.toml(5). Absent, the built-in defaults apply.",
    )]);
    r.control("TP", []);
    r.text([bold("/var/lib/miab-DAEMON/journal.sqlite")]);
    r.text([roman(
        "Each daemon's decision journal, read by miabctl explain.",
    )]);
    r.control("SH", ["ENVIRONMENT"]);
    for (var, what) in [
        (
            "MIAB_CONFIG",
            "The configuration file, when --config is not given.",
        ),
        (
            "MIAB_STORAGE_ROOT",
            "Mail-in-a-Box's STORAGE_ROOT, over the file's storage_root.",
        ),
        (
            "RUST_LOG",
            "The daemons' log filter (default info), e.g. debug or miab_policyd=debug.",
        ),
    ] {
        r.control("TP", []);
        r.text([bold(var)]);
        r.text([roman(what)]);
    }
    r.control("SH", ["SEE ALSO"]);
    let pages = [
        "miabctl(8)",
        "miab-lookup(8)",
        "miab-policyd(8)",
        "miab-authd(8)",
        "miab-milter(8)",
        "miab-checkpassword(8)",
        "sidecars.toml(5)",
        "postconf(5)",
        "doveconf(1)",
    ];
    let others: Vec<&str> = pages
        .into_iter()
        .filter(|p| !p.starts_with(&format!("{name}(")))
        .collect();
    r.text([roman(others.join(", "))]);
    r
}

/// `sidecars.toml(5)` from the sample configuration: its opening comment is the description,
/// each `[section]` a subsection, each setting (set, or commented out as an example) an item
/// with the comment above it as its text.
pub fn config_man_page(sample: &str) -> String {
    let mut r = Roff::default();
    r.control(
        "TH",
        ["SIDECARS.TOML", "5", "", "miab-sidecars", "miab-sidecars"],
    );
    r.control("SH", ["NAME"]);
    r.text([roman(
        "sidecars.toml - configuration of the Mail-in-a-Box sidecar daemons",
    )]);
    r.control("SH", ["DESCRIPTION"]);
    let mut comment: Vec<String> = Vec::new();
    let mut in_header = true;
    let flush_paragraph = |r: &mut Roff, comment: &mut Vec<String>| {
        if !comment.is_empty() {
            r.control("PP", []);
            r.text([roman(comment.join(" "))]);
            comment.clear();
        }
    };
    for line in sample.lines() {
        let t = line.trim();
        if let Some(text) = t.strip_prefix('#') {
            let text = text.strip_prefix(' ').unwrap_or(text);
            if let Some((key, value)) = setting(text) {
                item(&mut r, key, value, &mut comment, true);
            } else {
                comment.push(text.to_owned());
            }
        } else if t.is_empty() {
            flush_paragraph(&mut r, &mut comment);
        } else if let Some(name) = t.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            if in_header {
                r.control("SH", ["SETTINGS"]);
                in_header = false;
            }
            let heading = format!("[{name}]");
            r.control("SS", [heading.as_str()]);
            flush_paragraph(&mut r, &mut comment);
        } else if let Some((key, value)) = setting(t) {
            if in_header {
                r.control("SH", ["SHARED SETTINGS"]);
                in_header = false;
            }
            item(&mut r, key, value, &mut comment, false);
        } else {
            comment.push(t.to_owned());
        }
    }
    flush_paragraph(&mut r, &mut comment);
    r.control("SH", ["SEE ALSO"]);
    r.text([roman(
        "miabctl(8), miab-lookup(8), miab-policyd(8), miab-authd(8), miab-milter(8)",
    )]);
    r.render()
}

/// `key = value` (a setting's line, set or commented out), if `line` is one.
fn setting(line: &str) -> Option<(&str, &str)> {
    let (key, value) = line.split_once(" = ")?;
    let ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    ok.then_some((key, value))
}

fn item(r: &mut Roff, key: &str, value: &str, comment: &mut Vec<String>, example: bool) {
    r.control("TP", []);
    let shown = if example {
        format!("{key} = {value}  (an example; not set in the package)")
    } else {
        format!("{key} = {value}")
    };
    r.text([bold(shown)]);
    if !comment.is_empty() {
        r.text([roman(comment.join(" "))]);
        comment.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_page_names_every_setting_of_the_sample() {
        let page = config_man_page(SAMPLE_CONFIG);
        assert!(page.contains("\n.TH SIDECARS.TOML 5"), "{page}");
        for line in SAMPLE_CONFIG.lines() {
            let t = line.trim().trim_start_matches("# ");
            if let Some((key, _)) = setting(t) {
                assert!(page.contains(&format!("{key} = ")), "{key} missing");
            }
            if t.starts_with('[') {
                assert!(page.contains(t), "{t} missing");
            }
        }
        assert!(page.contains("journal_days = 7"));
        assert!(page.contains("Days an entry is kept"));
    }

    #[derive(Debug, Parser)]
    #[command(name = "miab-test", version, about = "A test daemon")]
    struct Args {
        #[command(flatten)]
        common: crate::CommonArgs,
    }

    #[test]
    fn a_binary_page_has_its_options_and_the_common_sections() {
        use clap::CommandFactory;
        let dir = tempfile::tempdir().unwrap();
        let pages = write_pages(Args::command(), dir.path()).unwrap();
        assert_eq!(pages, [dir.path().join("miab-test.8")]);
        let text = std::fs::read_to_string(&pages[0]).unwrap();
        for want in [
            ".TH miab-test 8",
            "\\-\\-config",
            "FILES",
            "SEE ALSO",
            "sidecars.toml(5)",
        ] {
            assert!(text.contains(want), "{want}: {text}");
        }
        assert!(!text.contains("miab-test(8)"));
    }
}
