//! The greylisting state in its own SQLite file (WAL, so readers never wait and a killed
//! process loses nothing committed).
//!
//! Requests queue up; one task at a time takes every waiting request into one transaction
//! (group commit) and answers them only after the commit, so an answer never depends on state
//! that could still be lost. A background task sweeps for expired entries, a bounded slice of
//! the key space at a time: never a full scan, never on a request's path.
//!
//! The tables have no secondary index and small pages: every request writes one random row,
//! and each commit writes each page it touched to the WAL, so fewer and smaller pages per row
//! is what keeps the write volume (and the CPU) per request low.

use super::{Awl, Outcome, Timing, Triplet, Writes, decide};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;
use tokio::sync::oneshot;

/// Requests answered per transaction at most.
const BATCH: usize = 512;
/// Rows examined per table per expiry round, so a round takes milliseconds.
const SWEEP_ROWS: i64 = 5000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS triplets (
    key TEXT PRIMARY KEY,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    confirmed INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS clients (
    addr TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    last_seen INTEGER NOT NULL
) WITHOUT ROWID;
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
    #[error("greylist DB commit was abandoned")]
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

/// The handle requests go through; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Mutex<Connection>,
    queue: Mutex<Queue>,
    timing: Timing,
}

/// Requests waiting for the next commit, and whether a task is committing.
#[derive(Debug, Default)]
struct Queue {
    jobs: Vec<Job>,
    leading: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves nothing half-done that matters: SQLite rolls back
    // an unfinished transaction.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Opens (creating if needed) the DB and its tables.
pub fn open_db(path: &Path) -> Result<Connection, StoreError> {
    let open = |source| StoreError::Open {
        path: path.display().to_string(),
        source,
    };
    let conn = userdb::state_db::open(path, Duration::from_secs(5)).map_err(open)?;
    // Checkpoints (which fsync) every 8 MiB of WAL rather than every 1 MiB. What a power loss
    // can cost under state_db's synchronous = NORMAL: a few triplets greylisted twice.
    conn.pragma_update(None, "wal_autocheckpoint", 8192)
        .map_err(open)?;
    conn.pragma_update(None, "cache_size", -2048)
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
    /// Opens the DB at `path` and starts the expiry sweep. Must run inside a tokio runtime.
    pub fn start(
        path: &Path,
        timing: Timing,
        expire_every: Duration,
    ) -> Result<(Store, Counts), StoreError> {
        let conn = open_db(path)?;
        let found = counts(&conn)?;
        let inner = Arc::new(Inner {
            db: Mutex::new(conn),
            queue: Mutex::new(Queue::default()),
            timing,
        });
        tokio::spawn(sweeper(Arc::downgrade(&inner), expire_every));
        Ok((Store { inner }, found))
    }

    /// Decides for `key` (the triplet) and `client` (the address counted for the
    /// auto-whitelist) at `now`, and records the result before answering.
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
        let lead = {
            let mut q = lock(&self.inner.queue);
            q.jobs.push(job);
            !std::mem::replace(&mut q.leading, true)
        };
        if lead {
            tokio::spawn(commit_queued(Arc::clone(&self.inner)));
        }
        match rx.await {
            Ok(Ok(d)) => Ok(d),
            Ok(Err(e)) => Err(StoreError::Batch(e)),
            Err(_) => Err(StoreError::Stopped),
        }
    }
}

/// Group commit: answers everything queued, one transaction per round, until the queue is
/// empty. It runs on the runtime's own thread (no hand-off to another thread and back, which
/// cost more than the SQLite work), and first yields so that every connection with a request
/// ready can queue it for the same commit.
async fn commit_queued(inner: Arc<Inner>) {
    tokio::task::yield_now().await;
    loop {
        let jobs = {
            let mut q = lock(&inner.queue);
            if q.jobs.is_empty() {
                q.leading = false;
                return;
            }
            let n = q.jobs.len().min(BATCH);
            q.jobs.drain(..n).collect::<Vec<_>>()
        };
        let batch = || {
            let mut db = lock(&inner.db);
            // A panic drops the batch's reply senders: those requests get the fail action.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_batch(&mut db, jobs, &inner.timing);
            }));
        };
        match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::CurrentThread => batch(),
            _ => tokio::task::block_in_place(batch),
        }
    }
}

/// Every `every`, one bounded expiry round off the async threads, while the store lives.
async fn sweeper(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let mut sweep = Sweep::default();
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if userdb::backup::held() {
            continue;
        }
        let round = tokio::task::spawn_blocking(move || {
            let n = sweep.round(&lock(&inner.db), unix_now(), &inner.timing);
            (sweep, n)
        })
        .await;
        let Ok((s, n)) = round else {
            return;
        };
        sweep = s;
        match n {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "greylist entries expired"),
            Err(e) => tracing::warn!(error = %e, "greylist expiry failed; will retry"),
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

/// Where the incremental expiry sweep has got to in each table.
#[derive(Debug, Default)]
pub struct Sweep {
    triplets: String,
    clients: String,
}

impl Sweep {
    /// Examines the next [`SWEEP_ROWS`] keys of each table (wrapping at the end) and deletes
    /// what has expired: triplets and clients not seen for `max_age`, and unconfirmed triplets
    /// whose retry window has closed (a retry would start over anyway).
    pub fn round(&mut self, conn: &Connection, now: i64, t: &Timing) -> rusqlite::Result<usize> {
        let old = now - t.max_age;
        let stale = now - t.retry_window;
        let mut n = sweep_table(
            conn,
            "SELECT key, last_seen, confirmed FROM triplets WHERE key > ?1 ORDER BY key LIMIT ?2",
            "DELETE FROM triplets WHERE key = ?1",
            &mut self.triplets,
            |last, confirmed| last < old || (!confirmed && last < stale),
        )?;
        n += sweep_table(
            conn,
            "SELECT addr, last_seen, 1 FROM clients WHERE addr > ?1 ORDER BY addr LIMIT ?2",
            "DELETE FROM clients WHERE addr = ?1",
            &mut self.clients,
            |last, _| last < old,
        )?;
        Ok(n)
    }
}

fn sweep_table(
    conn: &Connection,
    select: &str,
    delete: &str,
    cursor: &mut String,
    expired: impl Fn(i64, bool) -> bool,
) -> rusqlite::Result<usize> {
    let mut doomed = Vec::new();
    let mut seen = 0;
    let mut last = None;
    {
        let mut stmt = conn.prepare_cached(select)?;
        let mut rows = stmt.query(params![cursor.as_str(), SWEEP_ROWS])?;
        while let Some(r) = rows.next()? {
            let key: String = r.get(0)?;
            if expired(r.get(1)?, r.get::<_, i64>(2)? != 0) {
                doomed.push(key.clone());
            }
            last = Some(key);
            seen += 1;
        }
    }
    // A short slice means the end of the table: start again from the beginning.
    *cursor = if seen < SWEEP_ROWS {
        String::new()
    } else {
        last.unwrap_or_default()
    };
    if doomed.is_empty() {
        return Ok(0);
    }
    let tx = conn.unchecked_transaction()?;
    {
        let mut del = tx.prepare_cached(delete)?;
        for k in &doomed {
            del.execute([k])?;
        }
    }
    tx.commit()?;
    Ok(doomed.len())
}

pub use userdb::app_password::unix_now;

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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
    fn expiry_sweeps_the_key_space_in_slices() {
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
        for i in 0..SWEEP_ROWS + 10 {
            ins(&format!("z{i:06}"), 100, 100, true);
        }
        conn.execute("INSERT INTO clients VALUES ('1.2.3.4', 5, 100)", [])
            .unwrap();
        let mut sweep = Sweep::default();
        let first = sweep.round(&conn, 10_000, &T).unwrap();
        assert_eq!(first, usize::try_from(SWEEP_ROWS).unwrap() - 4 + 2 + 1);
        let second = sweep.round(&conn, 10_000, &T).unwrap();
        assert_eq!(second, 14, "the rest of the z keys, then the wrap");
        let left: Vec<String> = conn
            .prepare("SELECT key FROM triplets ORDER BY key")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(left, ["fresh", "pending-fresh"]);
        assert_eq!(sweep.round(&conn, 10_000, &T).unwrap(), 0);
    }
}
