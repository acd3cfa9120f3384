//! Keeping the daemons' own SQLite files copyable while Mail-in-a-Box's nightly backup copies
//! `STORAGE_ROOT`.
//!
//! MIAB's `backup.py` stops postgrey (and Postfix, Dovecot) around the copy. On a box switched
//! to the sidecars, the stop of the neutralised postgrey unit runs `miabctl sidecars
//! backup-hold`: it checkpoints our WAL files into their main files and creates the hold file;
//! while it exists the daemons do no background writes (greylist expiry), so each file on disk
//! stays as the checkpoint left it. The start afterwards (`backup-release`) removes it. A hold
//! older than [`HOLD_MAX`] is ignored, so a backup that died never stops expiry for good.

use std::path::Path;
use std::time::{Duration, SystemTime};

/// The hold file.
pub const HOLD_FILE: &str = "/run/miab-sidecars/backup-hold";

/// A hold older than this is stale.
pub const HOLD_MAX: Duration = Duration::from_secs(6 * 3600);

/// Is a backup holding background writes at `file`?
pub fn held_at(file: &Path) -> bool {
    let Ok(modified) = std::fs::metadata(file).and_then(|m| m.modified()) else {
        return false;
    };
    SystemTime::now()
        .duration_since(modified)
        .map_or(true, |age| age < HOLD_MAX)
}

/// Is a backup holding background writes?
pub fn held() -> bool {
    held_at(Path::new(HOLD_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_is_a_fresh_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("hold");
        assert!(!held_at(&f));
        std::fs::write(&f, "").unwrap();
        assert!(held_at(&f));
        let old = SystemTime::now() - HOLD_MAX - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(!held_at(&f), "a stale hold is ignored");
    }
}
