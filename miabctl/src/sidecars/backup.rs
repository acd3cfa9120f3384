//! `sidecars backup-hold | backup-release`, run by the neutralised postgrey unit around MIAB's
//! nightly backup: each SQLite file of the sidecars checkpointed into its main file, and the
//! daemons' background writes held (`userdb::backup`) until the copy is done.

use super::{Sys, status};
use anyhow::{Result, bail};
use std::path::{Path, PathBuf};

/// `backup-hold`: before MIAB's backup copies the storage root.
pub fn hold(sys: &Sys) -> Result<()> {
    let hold = sys.path(userdb::backup::HOLD_FILE);
    if let Some(dir) = hold.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&hold, "")?;
    for db in status::state_dbs(&sys.storage_root) {
        if db.exists()
            && let Err(e) = checkpoint(&db)
        {
            eprintln!("warning: {}: {e:#}", db.display());
        }
    }
    Ok(())
}

/// `backup-release`: after the backup.
pub fn release(sys: &Sys) -> Result<()> {
    match std::fs::remove_file(sys.path(userdb::backup::HOLD_FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Moves everything in a WAL file into the main file and empties it, so a copy of the main
/// file alone is the whole DB. Side files this creates get the DB's owner.
fn checkpoint(db: &Path) -> Result<()> {
    let meta = std::fs::metadata(db)?;
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    if !wal.exists() {
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
    side_files_to_owner(db, &meta);
    Ok(())
}

/// Gives a DB's `-wal` and `-shm` files the owner of the DB itself (`meta`), so the daemon
/// that owns it can still open them after root has.
pub fn side_files_to_owner(db: &Path, meta: &std::fs::Metadata) {
    use std::os::unix::fs::MetadataExt;
    for side in ["-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{side}", db.display()));
        if p.exists() {
            let _ = std::os::unix::fs::chown(&p, Some(meta.uid()), Some(meta.gid()));
        }
    }
}
