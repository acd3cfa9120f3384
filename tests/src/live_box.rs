//! The live boxes (`tests/live-box/`): a script that builds a Mail-in-a-Box box under real
//! systemd, switches it with the Debian package and checks it, run with its output going
//! straight to the terminal so every step's result shows. All the work is in the scripts
//! (see `tests/live-box/README.md`).
//!
//! They need root and the package (`packaging/build-deb`); without either a test fails, it
//! does not skip.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the repository")
        .to_owned()
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn sidecars_deb(repo: &Path) -> Vec<PathBuf> {
    let dir = repo.join("target/debian");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("miab-sidecars_") && n.ends_with("_amd64.deb"))
        })
        .collect()
}

/// Runs `tests/live-box/<script>` and panics unless every step passed.
pub fn run(script: &str) {
    let repo = repo();
    assert_eq!(
        effective_uid(),
        Some(0),
        "the live-box test needs root (namespaces, overlayfs, systemd as PID 1 of the box); \
         run the tests as root, as .ci/run does"
    );
    let debs = sidecars_deb(&repo);
    assert!(
        !debs.is_empty(),
        "no {}/target/debian/miab-sidecars_*_amd64.deb: build it first with packaging/build-deb",
        repo.display()
    );
    let path = repo.join("tests/live-box").join(script);
    let status = Command::new(&path)
        .current_dir(&repo)
        .status()
        .unwrap_or_else(|e| panic!("start {}: {e}", path.display()));
    assert!(
        status.success(),
        "{} failed ({status}); the first FAIL line above says which step",
        path.display()
    );
}
