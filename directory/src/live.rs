//! The async side for daemons: the live directory and the password-hashing pool.
//!
//! [`Live`] holds the current [`Snapshot`] behind an `Arc` and asks its [`Source`] on every
//! request whether the data moved on (for MIAB's file: one `stat`, one 10-byte `pread`). While
//! it has not, an answer costs no SQLite call and no trip to the blocking pool. When it has,
//! the first request reads a new snapshot on the blocking pool while the others wait for it;
//! the old one is never served once the version moved. A read that fails (the DB locked past
//! the busy timeout) fails every request that was waiting for it, which then answer their
//! protocol's temporary failure; a request that comes later tries again. So a held lock costs
//! each wave of requests one busy timeout, not one each in turn.
//!
//! [`Hashers`] runs password verification (milliseconds of CPU) on the blocking pool, a
//! bounded number at a time.

use crate::{Snapshot, Source, SqliteSource, Version};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use userdb::password::{self, Password};
use userdb::{Error, Result};

/// One read of the directory, for whoever watches (the daemons' metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadReport {
    pub ok: bool,
    /// Users, aliases and automatic aliases in the new snapshot (0 for a failed read).
    pub entries: usize,
    pub took: Duration,
}

static WATCHER: std::sync::OnceLock<fn(ReadReport)> = std::sync::OnceLock::new();

/// Has `f` told of every read from now on (one watcher per process; a second is ignored).
pub fn watch_reads(f: fn(ReadReport)) {
    let _ = WATCHER.set(f);
}

fn report(ok: bool, snap: Option<&Snapshot>, took: Duration) {
    if let Some(f) = WATCHER.get() {
        let entries = snap.map_or(0, |s| {
            let (u, a, x) = s.counts();
            u + a + x
        });
        f(ReadReport { ok, entries, took });
    }
}

/// A failed read, given to the requests that were waiting while it was tried.
#[derive(Debug)]
struct Failure {
    version: Version,
    /// Which read it was (see `Inner::reads`).
    read: u64,
    error: Error,
}

/// The same failure, for another waiter.
fn again(e: &Error) -> Error {
    match e {
        Error::Busy(p) => Error::Busy(p.clone()),
        e => Error::Internal(format!("the user DB changed and could not be read: {e}")),
    }
}

#[derive(Debug)]
struct Inner {
    source: Arc<dyn Source>,
    current: Mutex<Arc<Snapshot>>,
    /// Held while a new snapshot is read; the last failure.
    reading: tokio::sync::Mutex<Option<Failure>>,
    /// Reads finished, successful or not.
    reads: AtomicU64,
}

/// The directory as it is now: cheap to clone, shared by every connection.
#[derive(Debug, Clone)]
pub struct Live {
    inner: Arc<Inner>,
}

impl Live {
    /// MIAB's DB file at `path`, read once now, so a missing or foreign file (or one that
    /// cannot be read) is reported at start-up.
    pub fn open(path: impl AsRef<Path>, busy_timeout: Duration) -> Result<Live> {
        Live::new(Arc::new(SqliteSource::open(path, busy_timeout)?))
    }

    /// A directory over any source, read once now.
    pub fn new(source: Arc<dyn Source>) -> Result<Live> {
        let started = Instant::now();
        let first = source.load();
        report(first.is_ok(), first.as_ref().ok(), started.elapsed());
        let first = first?;
        Ok(Live {
            inner: Arc::new(Inner {
                source,
                current: Mutex::new(Arc::new(first)),
                reading: tokio::sync::Mutex::new(None),
                reads: AtomicU64::new(0),
            }),
        })
    }

    /// The snapshot last read, without asking whether it is still current.
    pub fn latest(&self) -> Arc<Snapshot> {
        match self.inner.current.lock() {
            Ok(c) => Arc::clone(&c),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The snapshot of the data as it is now, reading a new one if the source moved on.
    pub async fn current(&self) -> Result<Arc<Snapshot>> {
        let now = self.inner.source.version()?;
        let snap = self.latest();
        if snap.version() == Some(now) {
            return Ok(snap);
        }
        let before = self.inner.reads.load(Ordering::Acquire);
        let mut last = self.inner.reading.lock().await;
        // Someone else may have read it while this request waited.
        let snap = self.latest();
        let now = self.inner.source.version()?;
        if snap.version() == Some(now) {
            return Ok(snap);
        }
        if let Some(f) = last.as_ref()
            && f.version == now
            && f.read > before
        {
            return Err(again(&f.error));
        }
        let source = Arc::clone(&self.inner.source);
        let started = Instant::now();
        let read = tokio::task::spawn_blocking(move || source.load())
            .await
            .map_err(|e| Error::Internal(format!("user DB read failed: {e}")))
            .and_then(|r| r);
        let read_no = self.inner.reads.fetch_add(1, Ordering::AcqRel) + 1;
        match read {
            Ok(new) => {
                report(true, Some(&new), started.elapsed());
                let (users, aliases, auto) = new.counts();
                tracing::info!(
                    users,
                    aliases,
                    auto_aliases = auto,
                    skipped_rows = new.skipped(),
                    ms = started.elapsed().as_millis(),
                    "user DB changed; directory read again"
                );
                let new = Arc::new(new);
                if let Ok(mut c) = self.inner.current.lock() {
                    *c = Arc::clone(&new);
                }
                *last = None;
                Ok(new)
            }
            Err(error) => {
                report(false, None, started.elapsed());
                tracing::warn!(%error, "user DB changed but could not be read; answering temporary failures until it can");
                let out = again(&error);
                *last = Some(Failure {
                    version: now,
                    read: read_no,
                    error,
                });
                Err(out)
            }
        }
    }
}

/// Password verification on the blocking pool, at most `n` at once, so hashing cannot starve
/// the runtime or pile up without bound.
#[derive(Debug)]
pub struct Hashers {
    permits: Semaphore,
}

impl Hashers {
    /// At most `n` (at least one) verifications at once.
    pub fn new(n: usize) -> Hashers {
        Hashers {
            permits: Semaphore::new(n.max(1)),
        }
    }

    /// Verifies a password against a stored hash.
    pub async fn verify(&self, pw: Password, stored_hash: String) -> bool {
        let Ok(_permit) = self.permits.acquire().await else {
            return false;
        };
        tokio::task::spawn_blocking(move || password::verify_password(&pw, &stored_hash))
            .await
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Directory;
    use userdb::Delimiters;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_is_seen_by_the_next_request() {
        let (dir, mut db, env) = userdb::one_user_box();
        let path = dir.path().join("users.sqlite");
        let live = Live::open(&path, Duration::from_secs(1)).unwrap();
        let d = Delimiters::default();
        let first = live.current().await.unwrap();
        assert!(first.resolve_alias("hello@example.com", &d).is_none());
        assert!(
            Arc::ptr_eq(&first, &live.current().await.unwrap()),
            "not read again"
        );
        db.add_alias("hello@example.com", "me@example.com", "", false, &env)
            .unwrap();
        let now = live.current().await.unwrap();
        assert_eq!(
            now.resolve_alias("hello@example.com", &d),
            Some(vec!["me@example.com".to_owned()])
        );
        // Many requests at once after a change read it once, and all see it.
        db.remove_alias("hello@example.com", &env).unwrap();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let live = live.clone();
            tasks.push(tokio::spawn(async move { live.current().await.unwrap() }));
        }
        let mut seen = Vec::new();
        for t in tasks {
            let s = t.await.unwrap();
            assert!(s.resolve_alias("hello@example.com", &d).is_none());
            seen.push(s);
        }
        assert!(
            seen.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])),
            "one read"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_locked_db_after_a_change_is_a_temporary_failure_not_stale_data() {
        let (dir, mut db, env) = userdb::one_user_box();
        let path = dir.path().join("users.sqlite");
        let live = Live::open(&path, Duration::from_millis(100)).unwrap();
        db.add_alias("gone@example.com", "me@example.com", "", false, &env)
            .unwrap();
        // Another program commits, then holds the lock while the change is not read yet.
        let writer = rusqlite::Connection::open(&path).unwrap();
        writer
            .execute_batch("BEGIN EXCLUSIVE; DELETE FROM aliases;")
            .unwrap();
        let e = live.current().await.unwrap_err();
        assert!(e.is_temporary(), "{e}");
        // Requests waiting during the failed read share its failure: one read, not sixteen.
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let live = live.clone();
            tasks.push(tokio::spawn(async move { live.current().await }));
        }
        let before = live.inner.reads.load(Ordering::Acquire);
        for t in tasks {
            let e = t.await.unwrap().unwrap_err();
            assert!(e.is_temporary(), "{e}");
        }
        let reads = live.inner.reads.load(Ordering::Acquire) - before;
        assert!(reads < 8, "{reads} reads for 16 requests");
        writer.execute_batch("COMMIT").unwrap();
        let s = live.current().await.unwrap();
        assert!(
            s.resolve_alias("gone@example.com", &Delimiters::default())
                .is_none()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_replaced_by_a_rename_is_read_at_once() {
        let (dir, mut db, env) = userdb::one_user_box();
        let path = dir.path().join("users.sqlite");
        let live = Live::open(&path, Duration::from_secs(1)).unwrap();
        let d = Delimiters::default();
        db.add_alias("restored@example.com", "me@example.com", "", false, &env)
            .unwrap();
        let copy = dir.path().join("restore.sqlite");
        std::fs::copy(&path, &copy).unwrap();
        db.remove_alias("restored@example.com", &env).unwrap();
        drop(db);
        let s = live.current().await.unwrap();
        assert!(s.resolve_alias("restored@example.com", &d).is_none());
        std::fs::rename(&copy, &path).unwrap();
        let s = live.current().await.unwrap();
        assert!(
            s.resolve_alias("restored@example.com", &d).is_some(),
            "the new file is read, not the old inode"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wal_mode_changes_are_seen_too() {
        let (dir, mut db, env) = userdb::one_user_box();
        let path = dir.path().join("users.sqlite");
        drop(db);
        let c = rusqlite::Connection::open(&path).unwrap();
        c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .unwrap();
        drop(c);
        db = userdb::UserDb::open(&path, userdb::Access::ReadWrite).unwrap();
        let live = Live::open(&path, Duration::from_secs(1)).unwrap();
        let d = Delimiters::default();
        assert!(
            live.current()
                .await
                .unwrap()
                .resolve_alias("w@example.com", &d)
                .is_none()
        );
        db.add_alias("w@example.com", "me@example.com", "", false, &env)
            .unwrap();
        assert!(
            live.current()
                .await
                .unwrap()
                .resolve_alias("w@example.com", &d)
                .is_some()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hashers_verify() {
        let h = Hashers::new(1);
        let hash = password::hash_password(&Password::new("12345678")).unwrap();
        assert!(h.verify(Password::new("12345678"), hash.clone()).await);
        assert!(!h.verify(Password::new("12345679"), hash).await);
    }
}
