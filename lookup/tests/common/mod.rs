//! Starting the real `miab-lookup` binary for the integration tests.

use miab_e2e::Scratch;
use miab_e2e::process::DaemonProcess;
use std::path::Path;

/// Writes `config` to `sidecars.toml` in `dir` and starts the daemon with `--config` and `args`,
/// logging to `lookup.log` there.
pub fn start_lookup(dir: &Scratch, config: &str, args: &[&str]) -> DaemonProcess {
    let path = dir.join("sidecars.toml");
    std::fs::write(&path, config).unwrap();
    let mut all = vec!["--config", path.to_str().unwrap()];
    all.extend_from_slice(args);
    DaemonProcess::start(
        Path::new(env!("CARGO_BIN_EXE_miab-lookup")),
        &all,
        dir.join("lookup.log"),
    )
}
