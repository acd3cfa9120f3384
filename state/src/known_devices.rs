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

/// One change to the known devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// (login, network, when) logged in.
    Seen(String, String, i64),
    /// (login, network) is no longer kept.
    Forget(String, String),
    /// Everything not seen since then goes.
    ExpireBefore(i64),
}

/// What miab-authd's brake asks of its store.
pub trait KnownDeviceStore: Send + 'static {
    /// The (login, network, last seen) seen at or after `since`, newest first, at most `limit`.
    fn load(&self, since: i64, limit: usize) -> Result<Vec<(String, String, i64)>>;
    /// Makes `changes`, in order, in one transaction.
    fn apply(&mut self, changes: &[Change]) -> Result<()>;
}

/// A known-devices store's writes, through the group commit; nobody waits for them, so a
/// failure is logged here.
#[derive(Debug)]
pub struct Writer<S>(pub S);

impl<S: KnownDeviceStore> crate::commit::Batch for Writer<S> {
    type Job = Change;
    type Answer = ();
    fn run(&mut self, jobs: &[Change]) -> Result<Vec<()>, String> {
        match self.0.apply(jobs) {
            Ok(()) => Ok(vec![(); jobs.len()]),
            Err(e) => {
                tracing::warn!(error = %e, "known devices could not be written");
                Err(e.to_string())
            }
        }
    }
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
        let conn = crate::sqlite::open(path, Duration::from_secs(2)).map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(KnownDevices {
            conn,
            path: path.to_owned(),
        })
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        Error::sqlite(&self.path, e)
    }
}

impl KnownDeviceStore for KnownDevices {
    fn load(&self, since: i64, limit: usize) -> Result<Vec<(String, String, i64)>> {
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

    fn apply(&mut self, changes: &[Change]) -> Result<()> {
        let path = self.path.clone();
        let err = |e| Error::sqlite(&path, e);
        let tx = self.conn.transaction().map_err(err)?;
        for c in changes {
            match c {
                Change::Seen(login, net, at) => tx.prepare_cached(
                    "INSERT INTO known_devices (login, network, last_seen) VALUES (?1, ?2, ?3)
                     ON CONFLICT (login, network) DO UPDATE SET last_seen=max(last_seen, excluded.last_seen)",
                )
                .and_then(|mut s| s.execute(params![login, net, at])),
                Change::Forget(login, net) => tx
                    .prepare_cached("DELETE FROM known_devices WHERE login=?1 AND network=?2")
                    .and_then(|mut s| s.execute(params![login, net])),
                Change::ExpireBefore(before) => tx
                    .prepare_cached("DELETE FROM known_devices WHERE last_seen<?1")
                    .and_then(|mut s| s.execute([before])),
            }
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sightings_persist_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mail/authd/known-devices.sqlite");
        let mut k = KnownDevices::open(&p).unwrap();
        k.apply(&[
            Change::Seen("a@x".into(), "192.0.2.1".into(), 100),
            Change::Seen("a@x".into(), "192.0.2.1".into(), 50),
            Change::Seen("b@x".into(), "2001:db8::".into(), 200),
        ])
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
        k.apply(&[Change::Forget("b@x".into(), "2001:db8::".into())])
            .unwrap();
        assert_eq!(k.load(0, 10).unwrap().len(), 1);
        k.apply(&[Change::ExpireBefore(101)]).unwrap();
        assert!(k.load(0, 10).unwrap().is_empty());
    }
}
