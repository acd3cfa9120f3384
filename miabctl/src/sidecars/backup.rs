//! `sidecars backup-hold | backup-release`, run by the neutralised postgrey unit around MIAB's
//! nightly backup: each SQLite file of the sidecars checkpointed into its main file, and the
//! daemons' background writes held (`state::backup`) until the copy is done.

use super::{Sys, status};
use crate::owner::AsOwner;
use anyhow::{Result, bail};
use std::path::{Path, PathBuf};

/// `backup-hold`: before MIAB's backup copies the storage root.
pub fn hold(sys: &Sys) -> Result<()> {
    let hold = sys.path(state::backup::HOLD_FILE);
    if let Some(dir) = hold.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&hold, "")?;
    for db in status::state_dbs(&sys.layout) {
        if std::fs::symlink_metadata(&db).is_ok()
            && let Err(e) = checkpoint(&db)
        {
            eprintln!("warning: {}: {e:#}", db.display());
        }
    }
    Ok(())
}

/// `backup-release`: after the backup.
pub fn release(sys: &Sys) -> Result<()> {
    match std::fs::remove_file(sys.path(state::backup::HOLD_FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Moves everything in a WAL file into the main file and empties it, so a copy of the main
/// file alone is the whole DB. Done as the owner of the DB's directory (`owner`), so the side
/// files are the daemon's and a planted link leads nowhere root could go.
fn checkpoint(db: &Path) -> Result<()> {
    let _owner = AsOwner::of(db.parent().unwrap_or(Path::new("/")))?;
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    if std::fs::symlink_metadata(&wal).is_err() {
        return Ok(());
    }
    let conn = rusqlite::Connection::open(db)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let (busy, _, _): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    drop(conn);
    if busy != 0 {
        bail!("a reader kept the checkpoint from finishing");
    }
    Ok(())
}
