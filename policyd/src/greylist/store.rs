//! The greylisting state in its own SQLite file (WAL, so readers never wait and a killed
//! process loses nothing committed).
//!
//! One thread owns the connection. Requests queue to it; it takes every waiting request into
//! one transaction (group commit) and answers them only after the commit, so an answer never
//! depends on state that could still be lost. Between batches it deletes expired entries, a
//! bounded batch at a time through indexes: never a full scan, never on a request's path.

use super::{Awl, Outcome, Timing, Triplet, Writes, decide};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Requests answered per transaction at most.
const BATCH: usize = 512;
/// Rows deleted per expiry round at most, so a round takes milliseconds.
const EXPIRE_BATCH: i64 = 2000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS triplets (
    key TEXT PRIMARY KEY,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    confirmed INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS triplets_last_seen ON triplets(last_seen);
CREATE INDEX IF NOT EXISTS triplets_pending ON triplets(last_seen) WHERE confirmed = 0;
CREATE TABLE IF NOT EXISTS clients (
    addr TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    last_seen INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS clients_last_seen ON clients(last_seen);
PRAGMA user_version = 1;
";

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("greylist DB: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("greylist DB {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("greylist DB: {0}")]
    Batch(String),
    #[error("greylist DB worker could not start: {0}")]
    Thread(#[source] std::io::Error),
    #[error("greylist DB worker has stopped")]
    Stopped,
}

/// One decision's inputs.
#[derive(Debug)]
struct Job {
    key: String,
    client: String,
    now: i64,
    reply: oneshot::Sender<Result<(Outcome, Writes), String>>,
}

/// Counts of what the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub triplets: u64,
    pub clients: u64,
}

/// The handle requests go through. Dropping every clone stops the worker after it has
/// committed what it holds.
#[derive(Debug, Clone)]
pub struct Store {
    tx: mpsc::SyncSender<Job>,
}

/// Opens (creating if needed) the DB and its tables.
pub fn open_db(path: &Path) -> Result<Connection, StoreError> {
    let open = |source| StoreError::Open {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let conn = Connection::open(path).map_err(open)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(open)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(open)?;
    // With WAL, NORMAL loses no committed transaction when the process dies, only on power
    // loss, and then only the newest ones: a few triplets greylisted twice.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(open)?;
    conn.pragma_update(None, "cache_size", -4096)
        .map_err(open)?;
    conn.execute_batch(SCHEMA).map_err(open)?;
    Ok(conn)
}

/// What the DB holds now (for tests and the start-up log).
pub fn counts(conn: &Connection) -> Result<Counts, StoreError> {
    let n = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0));
    Ok(Counts {
        triplets: u64::try_from(n("SELECT count(*) FROM triplets")?).unwrap_or(0),
        clients: u64::try_from(n("SELECT count(*) FROM clients")?).unwrap_or(0),
    })
}

impl Store {
    /// Starts the worker thread over `path`.
    pub fn start(
        path: &Path,
        timing: Timing,
        expire_every: Duration,
    ) -> Result<(Store, Counts), StoreError> {
        let conn = open_db(path)?;
        let found = counts(&conn)?;
        let (tx, rx) = mpsc::sync_channel::<Job>(4 * BATCH);
        std::thread::Builder::new()
            .name("greylist-db".into())
            .spawn(move || worker(conn, rx, timing, expire_every))
            .map_err(StoreError::Thread)?;
        Ok((Store { tx }, found))
    }

    /// Decides for `key` (the triplet) and `client` (the address counted for the
    /// auto-whitelist) at `now`, and records the result.
    pub async fn decide(
        &self,
        key: String,
        client: String,
        now: i64,
    ) -> Result<(Outcome, Writes), StoreError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            key,
            client,
            now,
            reply,
        };
        let tx = self.tx.clone();
        // The queue is bounded; a full one is waited for off the async threads.
        match tx.try_send(job) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(job)) => {
                tokio::task::spawn_blocking(move || tx.send(job))
                    .await
                    .map_err(|_| StoreError::Stopped)?
                    .map_err(|_| StoreError::Stopped)?;
            }
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(StoreError::Stopped),
        }
        match rx.await {
            Ok(Ok(d)) => Ok(d),
            Ok(Err(e)) => Err(StoreError::Batch(e)),
            Err(_) => Err(StoreError::Stopped),
        }
    }
}

fn worker(mut conn: Connection, rx: mpsc::Receiver<Job>, t: Timing, expire_every: Duration) {
    let mut next_expiry = Instant::now() + expire_every;
    loop {
        let wait = next_expiry.saturating_duration_since(Instant::now());
        let first = match rx.recv_timeout(wait) {
            Ok(job) => Some(job),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        if let Some(first) = first {
            let mut jobs = vec![first];
            while jobs.len() < BATCH {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            run_batch(&mut conn, jobs, &t);
        }
        if Instant::now() >= next_expiry {
            let now = unix_now();
            match expire(&conn, now, &t) {
                Ok(0) => {}
                Ok(n) => tracing::debug!(deleted = n, "greylist entries expired"),
                Err(e) => tracing::warn!(error = %e, "greylist expiry failed; will retry"),
            }
            next_expiry = Instant::now() + expire_every;
        }
    }
}

fn run_batch(conn: &mut Connection, jobs: Vec<Job>, t: &Timing) {
    let result = (|| -> rusqlite::Result<Vec<(Outcome, Writes)>> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut out = Vec::with_capacity(jobs.len());
        {
            let mut get_t = tx.prepare_cached(
                "SELECT first_seen, last_seen, confirmed FROM triplets WHERE key = ?1",
            )?;
            let mut get_c =
                tx.prepare_cached("SELECT count, last_seen FROM clients WHERE addr = ?1")?;
            let mut put_t = tx.prepare_cached(
                "INSERT OR REPLACE INTO triplets (key, first_seen, last_seen, confirmed) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut put_c = tx.prepare_cached(
                "INSERT OR REPLACE INTO clients (addr, count, last_seen) VALUES (?1, ?2, ?3)",
            )?;
            for j in &jobs {
                let trip = get_t
                    .query_row([&j.key], |r| {
                        Ok(Triplet {
                            first_seen: r.get(0)?,
                            last_seen: r.get(1)?,
                            confirmed: r.get::<_, i64>(2)? != 0,
                        })
                    })
                    .optional()?;
                let awl = if t.awl_threshold > 0 {
                    get_c
                        .query_row([&j.client], |r| {
                            Ok(Awl {
                                count: r.get(0)?,
                                last_seen: r.get(1)?,
                            })
                        })
                        .optional()?
                } else {
                    None
                };
                let (outcome, w) = decide(j.now, trip, awl, t);
                if let Some(s) = w.triplet {
                    put_t.execute(params![j.key, s.first_seen, s.last_seen, s.confirmed])?;
                }
                if let Some(a) = w.awl {
                    put_c.execute(params![j.client, a.count, a.last_seen])?;
                }
                out.push((outcome, w));
            }
        }
        tx.commit()?;
        Ok(out)
    })();
    match result {
        Ok(out) => {
            for (j, d) in jobs.into_iter().zip(out) {
                let _ = j.reply.send(Ok(d));
            }
        }
        Err(e) => {
            let msg = e.to_string();
            for j in jobs {
                let _ = j.reply.send(Err(msg.clone()));
            }
        }
    }
}

/// Deletes up to [`EXPIRE_BATCH`] entries of each kind: triplets and clients not seen for
/// `max_age`, and unconfirmed triplets whose retry window has closed.
pub fn expire(conn: &Connection, now: i64, t: &Timing) -> rusqlite::Result<usize> {
    let old = now - t.max_age;
    let stale = now - t.retry_window;
    let mut n = conn.execute(
        "DELETE FROM triplets WHERE key IN
           (SELECT key FROM triplets WHERE last_seen < ?1 LIMIT ?2)",
        params![old, EXPIRE_BATCH],
    )?;
    n += conn.execute(
        "DELETE FROM triplets WHERE key IN
           (SELECT key FROM triplets WHERE confirmed = 0 AND last_seen < ?1 LIMIT ?2)",
        params![stale, EXPIRE_BATCH],
    )?;
    n += conn.execute(
        "DELETE FROM clients WHERE addr IN
           (SELECT addr FROM clients WHERE last_seen < ?1 LIMIT ?2)",
        params![old, EXPIRE_BATCH],
    )?;
    Ok(n)
}

/// Seconds since the epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        delay: 100,
        max_age: 1000,
        retry_window: 500,
        awl_threshold: 5,
        awl_interval: 3600,
    };

    #[tokio::test]
    async fn decisions_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/greylist.sqlite");
        let (s, c) = Store::start(&path, T, Duration::from_secs(3600)).unwrap();
        assert_eq!(
            c,
            Counts {
                triplets: 0,
                clients: 0
            }
        );
        let (o, _) = s.decide("k".into(), "c".into(), 1000).await.unwrap();
        assert!(matches!(o, Outcome::Greylist { new: true, .. }));
        let (o, _) = s.decide("k".into(), "c".into(), 1150).await.unwrap();
        assert_eq!(o, Outcome::Pass { delayed: Some(150) });
        drop(s);
        let conn = open_db(&path).unwrap();
        assert_eq!(
            counts(&conn).unwrap(),
            Counts {
                triplets: 1,
                clients: 1
            }
        );
    }

    #[test]
    fn expiry_uses_bounded_indexed_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_db(&dir.path().join("g.sqlite")).unwrap();
        let ins = |k: &str, first: i64, last: i64, confirmed: bool| {
            conn.execute(
                "INSERT INTO triplets VALUES (?1, ?2, ?3, ?4)",
                params![k, first, last, confirmed],
            )
            .unwrap();
        };
        ins("fresh", 9000, 9900, true);
        ins("old", 100, 200, true);
        ins("pending-stale", 9000, 9000, false);
        ins("pending-fresh", 9800, 9800, false);
        conn.execute("INSERT INTO clients VALUES ('1.2.3.4', 5, 100)", [])
            .unwrap();
        assert_eq!(expire(&conn, 10_000, &T).unwrap(), 3);
        let left: Vec<String> = conn
            .prepare("SELECT key FROM triplets ORDER BY key")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(left, ["fresh", "pending-fresh"]);
        let plan: String = conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT key FROM triplets WHERE confirmed = 0 AND last_seen < 5 LIMIT 5",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(
            plan.contains("USING INDEX") || plan.contains("USING COVERING INDEX"),
            "{plan}"
        );
    }
}
