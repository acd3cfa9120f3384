//! An async-friendly handle for daemons.
//!
//! SQLite calls and password hashing block, so they run on tokio's blocking pool and never on a
//! runtime worker thread. Two semaphores bound them: one for DB connections (each blocking task
//! takes a pooled read-only connection) and one for hash verification, which costs milliseconds
//! of CPU and must not starve the DB lookups.
//!
//! The handle can also remember answers ([`AsyncUserDb::memo`]). The memo is exact: it belongs
//! to one value of the DB file's change counter (bytes 24-27 of the header, which SQLite bumps on
//! every commit in rollback-journal mode, the only mode MIAB uses), read with one `pread`. A hit
//! therefore costs no SQLite call and no trip to the blocking pool. In WAL mode the counter is
//! not maintained, so the memo stays off.

use crate::db::{Access, UserDb};
use crate::error::{Error, Result};
use crate::password::{self, Password};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Limits for [`AsyncUserDb`].
#[derive(Debug, Clone)]
pub struct HandleConfig {
    /// Connections (and concurrent blocking DB tasks). Default 4.
    pub max_connections: usize,
    /// Concurrent password verifications. Default: the number of CPUs.
    pub max_hashers: usize,
    /// SQLite busy timeout per connection. Default 5 s; keep it below the client's own timeout.
    pub busy_timeout: Duration,
    /// Answers [`AsyncUserDb::memo`] keeps; 0 turns the memo off. Default 4096.
    pub memo_entries: usize,
}

impl Default for HandleConfig {
    fn default() -> Self {
        HandleConfig {
            max_connections: 4,
            max_hashers: std::thread::available_parallelism().map_or(2, usize::from),
            busy_timeout: crate::db::DEFAULT_BUSY_TIMEOUT,
            memo_entries: 4096,
        }
    }
}

/// Remembered answers, valid for one value of the file change counter.
#[derive(Default)]
struct Memo {
    counter: Option<u32>,
    answers: HashMap<(u8, String), Option<String>>,
}

// Answers may hold password hashes (miab-authd remembers user rows): show only their number.
impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memo")
            .field("counter", &self.counter)
            .field("answers", &self.answers.len())
            .finish()
    }
}

/// The DB file as opened: a file replaced by a rename (a restore, `cp` over a temporary
/// name) is a new inode, which the open connections would never see.
#[derive(Debug)]
struct Opened {
    /// Opened once to read the header's change counter.
    file: std::fs::File,
    /// Device and inode.
    id: (u64, u64),
    /// Bumped each time the file is found replaced; pooled connections carry theirs.
    generation: u64,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    config: HandleConfig,
    idle: Mutex<Vec<(u64, UserDb)>>,
    memo: Mutex<Memo>,
    opened: Mutex<Opened>,
    db_permits: Semaphore,
    hash_permits: Semaphore,
}

fn file_id(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

/// A cheap-to-clone, read-only handle usable from async code.
#[derive(Debug, Clone)]
pub struct AsyncUserDb {
    inner: Arc<Inner>,
}

impl AsyncUserDb {
    /// Opens one connection right away, so a missing or foreign file is reported at start-up.
    pub fn open(path: impl AsRef<Path>, config: HandleConfig) -> Result<AsyncUserDb> {
        let path = path.as_ref().to_owned();
        let first = UserDb::open_with_timeout(&path, Access::ReadOnly, config.busy_timeout)?;
        let file = std::fs::File::open(&path).map_err(|_| Error::Missing(path.clone()))?;
        let id = file
            .metadata()
            .map(|m| file_id(&m))
            .map_err(|_| Error::Missing(path.clone()))?;
        Ok(AsyncUserDb {
            inner: Arc::new(Inner {
                db_permits: Semaphore::new(config.max_connections.max(1)),
                hash_permits: Semaphore::new(config.max_hashers.max(1)),
                idle: Mutex::new(vec![(0, first)]),
                memo: Mutex::new(Memo::default()),
                opened: Mutex::new(Opened {
                    file,
                    id,
                    generation: 0,
                }),
                path,
                config,
            }),
        })
    }

    /// The generation of the file at the path now: if it was replaced since the last look,
    /// the new file is opened, and the pool and the memo of the old one are dropped.
    fn generation(&self) -> u64 {
        let inner = &self.inner;
        let Ok(mut o) = inner.opened.lock() else {
            return 0;
        };
        if let Ok(m) = std::fs::metadata(&inner.path)
            && file_id(&m) != o.id
            && let Ok(file) = std::fs::File::open(&inner.path)
        {
            tracing::info!(path = ?inner.path, "the user DB file was replaced; reading the new one");
            o.id = file.metadata().map_or((0, 0), |m| file_id(&m));
            o.file = file;
            o.generation += 1;
            if let Ok(mut idle) = inner.idle.lock() {
                idle.clear();
            }
            if let Ok(mut memo) = inner.memo.lock() {
                *memo = Memo::default();
            }
        }
        o.generation
    }

    /// The DB file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on a pooled read-only connection on the blocking pool. The schema is re-checked
    /// first, so a MIAB migration run while the daemon is up is picked up.
    pub async fn read<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&UserDb) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let _permit = self
            .inner
            .db_permits
            .acquire()
            .await
            .map_err(|_| Error::Internal("user DB handle closed".into()))?;
        let generation = self.generation();
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let pooled = inner
                .idle
                .lock()
                .ok()
                .and_then(|mut v| v.pop())
                .filter(|(g, _)| *g == generation);
            let mut db = match pooled {
                Some((_, db)) => db,
                None => UserDb::open_with_timeout(
                    &inner.path,
                    Access::ReadOnly,
                    inner.config.busy_timeout,
                )?,
            };
            db.refresh_schema()?;
            let out = f(&db);
            // A connection that just failed is dropped rather than reused.
            if out.is_ok()
                && let Ok(mut idle) = inner.idle.lock()
            {
                idle.push((generation, db));
            }
            out
        })
        .await
        .map_err(|e| Error::Internal(format!("user DB task failed: {e}")))?
    }

    /// Like [`read`](Self::read) for a single-valued answer, remembered under `(kind, key)`
    /// until the DB changes. `f` gets the connection and the key.
    pub async fn memo<F>(&self, kind: u8, key: String, f: F) -> Result<Option<String>>
    where
        F: FnOnce(&UserDb, &str) -> Result<Option<String>> + Send + 'static,
    {
        let limit = self.inner.config.memo_entries;
        let counter = if limit == 0 {
            None
        } else {
            self.change_counter()
        };
        let Some(counter) = counter else {
            return self.read(move |db| f(db, &key)).await;
        };
        let slot = (kind, key);
        if let Ok(m) = self.inner.memo.lock()
            && m.counter == Some(counter)
            && let Some(hit) = m.answers.get(&slot)
        {
            return Ok(hit.clone());
        }
        let key = slot.1.clone();
        let out = self.read(move |db| f(db, &key)).await?;
        // Filed under the counter read before the query: if a commit came in between, the
        // next request sees a newer counter and starts over, so nothing stale is served.
        if let Ok(mut m) = self.inner.memo.lock() {
            // Crude but bounded: a flood of distinct keys starts the memo over.
            if m.counter != Some(counter) || m.answers.len() >= limit {
                m.answers.clear();
                m.counter = Some(counter);
            }
            m.answers.insert(slot, out.clone());
        }
        Ok(out)
    }

    /// The header's file change counter; `None` in WAL mode or if the header cannot be read.
    fn change_counter(&self) -> Option<u32> {
        use std::os::unix::fs::FileExt;
        self.generation();
        let mut h = [0u8; 10];
        self.inner
            .opened
            .lock()
            .ok()?
            .file
            .read_exact_at(&mut h, 18)
            .ok()?;
        // Bytes 18 and 19: file format write/read versions, 2 for WAL.
        if h[0] != 1 || h[1] != 1 {
            return None;
        }
        Some(u32::from_be_bytes([h[6], h[7], h[8], h[9]]))
    }

    /// Verifies a password against a stored hash on the bounded hashing pool.
    pub async fn verify_password(&self, pw: Password, stored_hash: String) -> bool {
        let Ok(_permit) = self.inner.hash_permits.acquire().await else {
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
    use crate::address::Delimiters;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_and_verifies_off_the_runtime() {
        let (dir, mut db, env) = crate::one_user_box();
        let path = dir.path().join("users.sqlite");
        let h = AsyncUserDb::open(&path, HandleConfig::default()).unwrap();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let h = h.clone();
            tasks.push(tokio::spawn(async move {
                h.read(|db| db.is_mailbox("me+x@example.com", &Delimiters::default()))
                    .await
                    .unwrap()
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap());
        }
        let user = h
            .read(|db| db.user("me@example.com"))
            .await
            .unwrap()
            .unwrap();
        assert!(
            h.verify_password(Password::new("12345678"), user.password_hash.clone())
                .await
        );
        assert!(
            !h.verify_password(Password::new("12345679"), user.password_hash)
                .await
        );
        // A change by another connection is visible to the next read, with no reopen.
        db.add_alias("hello@example.com", "me@example.com", "", false, &env)
            .unwrap();
        let r = h
            .read(|db| db.resolve_alias("hello@example.com", &Delimiters::default()))
            .await
            .unwrap();
        assert_eq!(r, Some(vec!["me@example.com".to_owned()]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memo_is_dropped_when_the_db_changes() {
        let (dir, mut db, env) = crate::one_user_box();
        let path = dir.path().join("users.sqlite");
        let h = AsyncUserDb::open(&path, HandleConfig::default()).unwrap();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ask = |key: &str| {
            let calls = Arc::clone(&calls);
            h.memo(1, key.to_owned(), move |db, k| {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                db.alias_key(k)
            })
        };
        assert_eq!(ask("new@example.com").await.unwrap(), None);
        assert_eq!(ask("new@example.com").await.unwrap(), None);
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "remembered"
        );
        db.add_alias("new@example.com", "me@example.com", "", false, &env)
            .unwrap();
        assert_eq!(
            ask("new@example.com").await.unwrap().as_deref(),
            Some("me@example.com")
        );
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);

        // In WAL mode the change counter is not kept up to date: no memo at all.
        drop(db);
        let c = rusqlite::Connection::open(&path).unwrap();
        c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .unwrap();
        drop(c);
        ask("new@example.com").await.unwrap();
        ask("new@example.com").await.unwrap();
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_replaced_by_a_rename_is_read_at_once() {
        let (dir, mut db, env) = crate::one_user_box();
        let path = dir.path().join("users.sqlite");
        let h = AsyncUserDb::open(&path, HandleConfig::default()).unwrap();
        let ask = || {
            h.memo(1, "restored@example.com".to_owned(), |db, k| {
                db.alias_key(k)
            })
        };
        assert_eq!(ask().await.unwrap(), None);
        // A restore: a copy with the alias, moved over the live file.
        db.add_alias("restored@example.com", "me@example.com", "", false, &env)
            .unwrap();
        let copy = dir.path().join("restore.sqlite");
        std::fs::copy(&path, &copy).unwrap();
        db.remove_alias("restored@example.com", &env).unwrap();
        drop(db);
        assert_eq!(ask().await.unwrap(), None, "the live file has no alias");
        std::fs::rename(&copy, &path).unwrap();
        assert_eq!(
            ask().await.unwrap().as_deref(),
            Some("me@example.com"),
            "the new file is read, not the old inode"
        );
        let r = h
            .read(|db| db.resolve_alias("restored@example.com", &Delimiters::default()))
            .await
            .unwrap();
        assert_eq!(r, Some(vec!["me@example.com".to_owned()]));
    }
}
