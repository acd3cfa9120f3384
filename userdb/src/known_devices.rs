//! miab-authd's known devices: the (login, client network) pairs that logged in, with when
//! they last did, in its own SQLite file next to the app-password log, so that a restart (a
//! package upgrade) does not forget them and a stranger who keeps a login braked cannot lock
//! its owner out of a client the owner used in the last 30 days.

use crate::error::{Error, Result};
use rusqlite::{Connection, params};
use std::path::{Path, PathBuf};
use std::time::Duration;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS known_devices (
    login TEXT NOT NULL,
    network TEXT NOT NULL,
    last_seen INTEGER NOT NULL,
    PRIMARY KEY (login, network)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS known_devices_by_time ON known_devices (last_seen);
PRAGMA user_version = 1;
";

/// Where the file lives, given the user DB's path (`STORAGE_ROOT/mail/authd/`).
pub fn path(db: &Path) -> PathBuf {
    db.with_file_name("authd").join("known-devices.sqlite")
}

/// The known-devices file.
#[derive(Debug)]
pub struct KnownDevices {
    conn: Connection,
    path: PathBuf,
}

impl KnownDevices {
    /// Opens (creating if needed, with its directory) the file at `path`.
    pub fn open(path: &Path) -> Result<KnownDevices> {
        let err = |e| Error::sqlite(path, e);
        let conn = crate::state_db::open(path, Duration::from_secs(2)).map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(KnownDevices {
            conn,
            path: path.to_owned(),
        })
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        Error::sqlite(&self.path, e)
    }

    /// The pairs seen at or after `since`, newest first, at most `limit`.
    pub fn load(&self, since: i64, limit: usize) -> Result<Vec<(String, String, i64)>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT login, network, last_seen FROM known_devices WHERE last_seen>=?1
                 ORDER BY last_seen DESC LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(
                params![since, i64::try_from(limit).unwrap_or(i64::MAX)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// Records sightings and forgets pairs, in one transaction.
    pub fn apply(
        &mut self,
        seen: &[(String, String, i64)],
        forget: &[(String, String)],
    ) -> Result<()> {
        let path = self.path.clone();
        let err = |e| Error::sqlite(&path, e);
        let tx = self.conn.transaction().map_err(err)?;
        for (login, net, at) in seen {
            tx.prepare_cached(
                "INSERT INTO known_devices (login, network, last_seen) VALUES (?1, ?2, ?3)
                 ON CONFLICT (login, network) DO UPDATE SET last_seen=max(last_seen, excluded.last_seen)",
            )
            .and_then(|mut s| s.execute(params![login, net, at]))
            .map_err(err)?;
        }
        for (login, net) in forget {
            tx.prepare_cached("DELETE FROM known_devices WHERE login=?1 AND network=?2")
                .and_then(|mut s| s.execute(params![login, net]))
                .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Forgets pairs not seen since `before`; returns how many.
    pub fn expire(&mut self, before: i64) -> Result<usize> {
        self.conn
            .execute("DELETE FROM known_devices WHERE last_seen<?1", [before])
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sightings_persist_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(&dir.path().join("mail/users.sqlite"));
        assert!(p.ends_with("mail/authd/known-devices.sqlite"));
        let mut k = KnownDevices::open(&p).unwrap();
        k.apply(
            &[
                ("a@x".into(), "192.0.2.1".into(), 100),
                ("a@x".into(), "192.0.2.1".into(), 50),
                ("b@x".into(), "2001:db8::".into(), 200),
            ],
            &[],
        )
        .unwrap();
        drop(k);
        let mut k = KnownDevices::open(&p).unwrap();
        assert_eq!(
            k.load(0, 10).unwrap(),
            vec![
                ("b@x".to_owned(), "2001:db8::".to_owned(), 200),
                ("a@x".to_owned(), "192.0.2.1".to_owned(), 100)
            ]
        );
        assert_eq!(k.load(150, 10).unwrap().len(), 1);
        assert_eq!(k.load(0, 1).unwrap().len(), 1);
        k.apply(&[], &[("b@x".into(), "2001:db8::".into())])
            .unwrap();
        assert_eq!(k.load(0, 10).unwrap().len(), 1);
        assert_eq!(k.expire(101).unwrap(), 1);
        assert!(k.load(0, 10).unwrap().is_empty());
    }
}
