//! miab-policyd's greylist: each triplet's first and last sighting, each client's passes for
//! the auto-whitelist. The rule that reads and writes them is policyd's; the store only keeps
//! them, and runs the rule inside its transaction so that no two decisions about one triplet
//! ever read the same old state.
//!
//! [`SqliteGreylist`]: its own SQLite file (WAL, so readers never wait and a killed process
//! loses nothing committed), with no secondary index and small pages: every request writes
//! one random row, and each commit writes each page it touched to the WAL, so fewer and smaller
//! pages per row is what keeps the write volume (and the CPU) per request low. Expiry sweeps a
//! bounded slice of the key space at a time: never a full scan, never on a request's path.

use crate::error::{Error, Result};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Rows examined per table per expiry round, so a round takes milliseconds.
pub const SWEEP_ROWS: i64 = 5000;

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

/// A triplet's stored state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Triplet {
    pub first_seen: i64,
    pub last_seen: i64,
    /// Has it passed (`last_seen - first_seen >= delay` at some point)?
    pub confirmed: bool,
}

/// A client's auto-whitelist state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Awl {
    pub count: u32,
    pub last_seen: i64,
}

/// One question: the triplet's key, the client address counted for the auto-whitelist, and
/// the time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub key: String,
    pub client: String,
    pub now: i64,
}

/// What the rule wants written back; `None` leaves a row alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Update {
    pub triplet: Option<Triplet>,
    pub awl: Option<Awl>,
}

/// Counts of what the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub triplets: u64,
    pub clients: u64,
}

/// How long entries are kept, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ages {
    /// Triplets and clients not seen for this long go.
    pub max_age: i64,
    /// Triplets that never passed go once this has passed since their last sighting.
    pub retry_window: i64,
}

/// What greylisting asks of its store.
pub trait GreylistStore: Send + 'static {
    /// In one transaction, for each lookup in order: reads its triplet and (if `clients`) its
    /// client's entry, asks `rule` (given the lookup's index), and writes what it says before
    /// the next lookup is read.
    fn decide_all(
        &mut self,
        lookups: &[Lookup],
        clients: bool,
        rule: &mut dyn FnMut(usize, Option<Triplet>, Option<Awl>) -> Update,
    ) -> Result<()>;
    /// What it holds.
    fn counts(&self) -> Result<Counts>;
    /// One bounded expiry round; how many entries went.
    fn expire_round(&mut self, now: i64, ages: Ages) -> Result<usize>;
}

/// The greylist in its own SQLite file.
#[derive(Debug)]
pub struct SqliteGreylist {
    conn: Connection,
    path: PathBuf,
    sweep: Sweep,
}

impl SqliteGreylist {
    /// Opens (creating if needed) the file and its tables.
    pub fn open(path: &Path) -> Result<SqliteGreylist> {
        let err = |e| Error::sqlite(path, e);
        let conn = crate::sqlite::open(path, Duration::from_secs(5)).map_err(err)?;
        // Checkpoints (which fsync) every 8 MiB of WAL rather than every 1 MiB. What a power
        // loss can cost under synchronous = NORMAL: a few triplets greylisted twice.
        conn.pragma_update(None, "wal_autocheckpoint", 8192)
            .map_err(err)?;
        conn.pragma_update(None, "cache_size", -2048).map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(SqliteGreylist {
            conn,
            path: path.to_owned(),
            sweep: Sweep::default(),
        })
    }

    /// The connection, for tests that plant rows.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        Error::sqlite(&self.path, e)
    }
}

impl GreylistStore for SqliteGreylist {
    fn decide_all(
        &mut self,
        lookups: &[Lookup],
        clients: bool,
        rule: &mut dyn FnMut(usize, Option<Triplet>, Option<Awl>) -> Update,
    ) -> Result<()> {
        let path = self.path.clone();
        let err = |e| Error::sqlite(&path, e);
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        {
            let mut get_t = tx
                .prepare_cached(
                    "SELECT first_seen, last_seen, confirmed FROM triplets WHERE key = ?1",
                )
                .map_err(err)?;
            let mut get_c = tx
                .prepare_cached("SELECT count, last_seen FROM clients WHERE addr = ?1")
                .map_err(err)?;
            let mut put_t = tx.prepare_cached(
                "INSERT OR REPLACE INTO triplets (key, first_seen, last_seen, confirmed) VALUES (?1, ?2, ?3, ?4)",
            ).map_err(err)?;
            let mut put_c = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO clients (addr, count, last_seen) VALUES (?1, ?2, ?3)",
                )
                .map_err(err)?;
            for (i, l) in lookups.iter().enumerate() {
                let trip = get_t
                    .query_row([&l.key], |r| {
                        Ok(Triplet {
                            first_seen: r.get(0)?,
                            last_seen: r.get(1)?,
                            confirmed: r.get::<_, i64>(2)? != 0,
                        })
                    })
                    .optional()
                    .map_err(err)?;
                let awl = if clients {
                    get_c
                        .query_row([&l.client], |r| {
                            Ok(Awl {
                                count: r.get(0)?,
                                last_seen: r.get(1)?,
                            })
                        })
                        .optional()
                        .map_err(err)?
                } else {
                    None
                };
                let u = rule(i, trip, awl);
                if let Some(s) = u.triplet {
                    put_t
                        .execute(params![l.key, s.first_seen, s.last_seen, s.confirmed])
                        .map_err(err)?;
                }
                if let Some(a) = u.awl {
                    put_c
                        .execute(params![l.client, a.count, a.last_seen])
                        .map_err(err)?;
                }
            }
        }
        tx.commit().map_err(err)
    }

    fn counts(&self) -> Result<Counts> {
        let n = |sql: &str| {
            self.conn
                .query_row(sql, [], |r| r.get::<_, i64>(0))
                .map(|n| u64::try_from(n).unwrap_or(0))
                .map_err(|e| self.err(e))
        };
        Ok(Counts {
            triplets: n("SELECT count(*) FROM triplets")?,
            clients: n("SELECT count(*) FROM clients")?,
        })
    }

    fn expire_round(&mut self, now: i64, ages: Ages) -> Result<usize> {
        let SqliteGreylist { conn, path, sweep } = self;
        sweep
            .round(conn, now, ages)
            .map_err(|e| Error::sqlite(path, e))
    }
}

/// Where the incremental expiry sweep has got to in each table.
#[derive(Debug, Default)]
struct Sweep {
    triplets: String,
    clients: String,
}

impl Sweep {
    /// Examines the next [`SWEEP_ROWS`] keys of each table (wrapping at the end) and deletes
    /// what has expired: triplets and clients not seen for `max_age`, and unconfirmed triplets
    /// whose retry window has closed (a retry would start over anyway).
    fn round(&mut self, conn: &Connection, now: i64, ages: Ages) -> rusqlite::Result<usize> {
        let old = now - ages.max_age;
        let stale = now - ages.retry_window;
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

#[cfg(test)]
mod tests {
    use super::*;

    const AGES: Ages = Ages {
        max_age: 1000,
        retry_window: 500,
    };

    #[test]
    fn expiry_sweeps_the_key_space_in_slices() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = SqliteGreylist::open(&dir.path().join("g.sqlite")).unwrap();
        let ins = |k: &str, first: i64, last: i64, confirmed: bool| {
            g.connection()
                .execute(
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
        g.connection()
            .execute("INSERT INTO clients VALUES ('1.2.3.4', 5, 100)", [])
            .unwrap();
        let first = g.expire_round(10_000, AGES).unwrap();
        assert_eq!(first, usize::try_from(SWEEP_ROWS).unwrap() - 4 + 2 + 1);
        let second = g.expire_round(10_000, AGES).unwrap();
        assert_eq!(second, 14, "the rest of the z keys, then the wrap");
        let left: Vec<String> = g
            .connection()
            .prepare("SELECT key FROM triplets ORDER BY key")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(left, ["fresh", "pending-fresh"]);
        assert_eq!(g.expire_round(10_000, AGES).unwrap(), 0);
    }
}
