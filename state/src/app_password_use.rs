//! miab-authd's record of when each app password was last used (`authd/app-password-use.sqlite`),
//! kept out of MIAB's user DB: a write there can make Postfix's `sqlite:` maps, which have no
//! busy timeout, fail outright. miabctl reads it for its listings.

use crate::error::{Error, Result};
use rusqlite::{Connection, OpenFlags};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const UPSERT: &str = "INSERT INTO app_password_use (id, last_used_at) VALUES (?1, ?2)
    ON CONFLICT (id) DO UPDATE SET last_used_at=max(last_used_at, excluded.last_used_at)";

/// miab-authd's record of when each app password was last used.
#[derive(Debug)]
pub struct UsageLog {
    conn: Connection,
    path: PathBuf,
}

impl UsageLog {
    /// Opens the file, creating it (and its directory) if needed.
    pub fn open(path: &Path) -> Result<UsageLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        let conn = Connection::open(path).map_err(|e| Error::sqlite(path, e))?;
        conn.busy_timeout(std::time::Duration::from_secs(2))
            .and_then(|()| {
                conn.execute_batch(
                    "CREATE TABLE IF NOT EXISTS app_password_use (id INTEGER PRIMARY KEY, last_used_at INTEGER NOT NULL)",
                )
            })
            .map_err(|e| Error::sqlite(path, e))?;
        Ok(UsageLog {
            conn,
            path: path.to_owned(),
        })
    }

    /// Records that app password `id` was used at `now`.
    pub fn record(&self, id: i64, now: i64) -> Result<()> {
        self.conn
            .prepare_cached(UPSERT)
            .and_then(|mut s| s.execute([id, now]))
            .map(drop)
            .map_err(|e| Error::sqlite(&self.path, e))
    }

    /// Records each (id, when), in one transaction.
    pub fn record_all(&mut self, uses: &[(i64, i64)]) -> Result<()> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction()
            .map_err(|e| Error::sqlite(&path, e))?;
        for (id, now) in uses {
            tx.prepare_cached(UPSERT)
                .and_then(|mut s| s.execute([id, now]))
                .map_err(|e| Error::sqlite(&path, e))?;
        }
        tx.commit().map_err(|e| Error::sqlite(&path, e))
    }

    /// Every recorded use; nothing if miab-authd never wrote the file.
    pub fn read(path: &Path) -> Result<HashMap<i64, i64>> {
        if !path.is_file() {
            return Ok(HashMap::new());
        }
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| Error::sqlite(path, e))?;
        let mut stmt = conn
            .prepare("SELECT id, last_used_at FROM app_password_use")
            .map_err(|e| Error::sqlite(path, e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(Iterator::collect);
        rows.map_err(|e| Error::sqlite(path, e))
    }
}

/// Uses are written through the group commit; nobody waits for them, so a failure is logged
/// here.
impl crate::commit::Batch for UsageLog {
    type Job = (i64, i64);
    type Answer = ();
    fn run(&mut self, jobs: &[(i64, i64)]) -> Result<Vec<()>, String> {
        match self.record_all(jobs) {
            Ok(()) => Ok(vec![(); jobs.len()]),
            Err(e) => {
                tracing::warn!(error = %e, "could not record an app password's last use");
                Err(e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_use_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authd/app-password-use.sqlite");
        assert!(UsageLog::read(&path).unwrap().is_empty());
        let usage = UsageLog::open(&path).unwrap();
        usage.record(7, 2000).unwrap();
        usage.record(7, 1500).unwrap();
        assert_eq!(UsageLog::read(&path).unwrap(), HashMap::from([(7, 2000)]));
    }
}
