//! [`SqliteSource`]: snapshots of MIAB's `users.sqlite`, and the cheap check for a change.

use super::{Snapshot, Source, Version};
use crate::db::UserDb;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// MIAB's `users.sqlite`, read-only.
///
/// The version is the file's identity (a file replaced by a rename is a new inode) and, in
/// rollback-journal mode (the only one MIAB uses), the header's file change counter, which
/// SQLite bumps on every commit: one `stat` and one 10-byte `pread`. In WAL mode the counter
/// is not kept, so `PRAGMA data_version` on a probe connection stands in.
#[derive(Debug)]
pub struct SqliteSource {
    path: PathBuf,
    busy_timeout: Duration,
    probe: Mutex<Probe>,
}

#[derive(Debug)]
struct Probe {
    file: std::fs::File,
    id: (u64, u64),
    wal: Option<rusqlite::Connection>,
}

fn file_id(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

impl SqliteSource {
    /// Checks that `path` is a user DB (so a wrong path fails at start-up).
    pub fn open(path: impl AsRef<Path>, busy_timeout: Duration) -> Result<SqliteSource> {
        let path = path.as_ref().to_owned();
        UserDb::open_with_timeout(&path, crate::Access::ReadOnly, busy_timeout)?;
        let file = std::fs::File::open(&path).map_err(|_| Error::Missing(path.clone()))?;
        let id = file
            .metadata()
            .map(|m| file_id(&m))
            .map_err(|_| Error::Missing(path.clone()))?;
        Ok(SqliteSource {
            probe: Mutex::new(Probe {
                file,
                id,
                wal: None,
            }),
            path,
            busy_timeout,
        })
    }

    /// The DB file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Source for SqliteSource {
    fn version(&self) -> Result<Version> {
        use std::os::unix::fs::FileExt;
        let mut p = self
            .probe
            .lock()
            .map_err(|_| Error::Internal("user DB probe lock poisoned".into()))?;
        // A missing path (mid-restore) keeps the open file: its data is still what it was.
        if let Ok(m) = std::fs::metadata(&self.path)
            && file_id(&m) != p.id
            && let Ok(file) = std::fs::File::open(&self.path)
        {
            p.id = file.metadata().map_or((0, 0), |m| file_id(&m));
            p.file = file;
            p.wal = None;
        }
        let mut h = [0u8; 10];
        p.file
            .read_exact_at(&mut h, 18)
            .map_err(|e| Error::Internal(format!("{}: header: {e}", self.path.display())))?;
        let (dev, ino) = p.id;
        // Bytes 18 and 19: file format write/read versions, 2 for WAL.
        if h[0] == 1 && h[1] == 1 {
            let counter = u32::from_be_bytes([h[6], h[7], h[8], h[9]]);
            return Ok(Version([dev, ino, 1, counter.into()]));
        }
        let conn = match p.wal.take() {
            Some(c) => c,
            None => {
                UserDb::open_with_timeout(&self.path, crate::Access::ReadOnly, self.busy_timeout)?
                    .conn
            }
        };
        let dv: i64 = p
            .wal
            .insert(conn)
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(|e| Error::sqlite(&self.path, e))?;
        Ok(Version([dev, ino, 2, dv.cast_unsigned()]))
    }

    fn load(&self) -> Result<Snapshot> {
        // The version is taken first: a commit that lands during the read makes the next
        // version differ, so at worst the snapshot is read again, never served stale.
        let version = self.version()?;
        let db = UserDb::open_with_timeout(&self.path, crate::Access::ReadOnly, self.busy_timeout)?;
        Ok(Snapshot::read(&db)?.with_version(version))
    }
}
