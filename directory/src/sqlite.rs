//! MIAB's `users.sqlite` as a source: [`SqliteSource`] (snapshots, and the cheap check for a
//! change) and [`SqlMaps`] (the maps asked key by key, as Postfix's own `sqlite:` tables do).

use crate::maps::{self, KeyTables};
use crate::{Snapshot, Source, Version};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use userdb::{Access, Delimiters, Error, Result, UserDb};

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
    wal: Option<UserDb>,
}

fn file_id(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

impl SqliteSource {
    /// Checks that `path` is a user DB (so a wrong path fails at start-up).
    pub fn open(path: impl AsRef<Path>, busy_timeout: Duration) -> Result<SqliteSource> {
        let path = path.as_ref().to_owned();
        UserDb::open_with_timeout(&path, Access::ReadOnly, busy_timeout)?;
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
        let db = match p.wal.take() {
            Some(db) => db,
            None => UserDb::open_with_timeout(&self.path, Access::ReadOnly, self.busy_timeout)?,
        };
        let dv = p.wal.insert(db).data_version()?;
        Ok(Version([dev, ino, 2, dv.cast_unsigned()]))
    }

    fn load(&self) -> Result<Snapshot> {
        // The version is taken first: a commit that lands during the read makes the next
        // version differ, so at worst the snapshot is read again, never served stale.
        let version = self.version()?;
        let db = UserDb::open_with_timeout(&self.path, Access::ReadOnly, self.busy_timeout)?;
        Ok(Snapshot::read(&db)?.with_version(version))
    }
}

/// MIAB's maps asked key by key in SQL, through the same key walk as the snapshot: what the
/// differential tests compare with Postfix's own `sqlite:` lookups.
pub trait SqlMaps {
    /// Is `domain` one of ours (`virtual_mailbox_domains`)? Case-insensitive. Parent-style
    /// keys (`.example.org`) and bare names are never found.
    fn is_local_domain(&self, domain: &str) -> Result<bool>;
    /// Is `address` a mailbox (`virtual_mailbox_maps`), trying `user+ext@d`, `user@d`, `@d`?
    fn is_mailbox(&self, address: &str, delims: &Delimiters) -> Result<bool>;
    /// The addresses `address` is rewritten to (`virtual_alias_maps`), as Postfix computes
    /// them from MIAB's map. A user maps to itself. `None` means unlisted.
    fn resolve_alias(&self, address: &str, delims: &Delimiters) -> Result<Option<Vec<String>>>;
    /// The raw owner list of a sender address (`smtpd_sender_login_maps`). `None`: nobody
    /// owns it.
    fn sender_owners(&self, address: &str, delims: &Delimiters) -> Result<Option<Vec<String>>>;
    /// Would `reject_authenticated_sender_login_mismatch` let `login` use `sender`?
    fn may_send_as(&self, login: &str, sender: &str, delims: &Delimiters) -> Result<bool>;
}

/// The key-walk's view of the SQL queries.
struct Keys<'a>(&'a UserDb);

impl KeyTables for Keys<'_> {
    type Error = Error;
    fn domain_key(&self, domain: &str) -> Result<bool> {
        self.0.domain_key(domain)
    }
    fn mailbox_key(&self, key: &str) -> Result<bool> {
        self.0.mailbox_key(key)
    }
    fn alias_key(&self, key: &str) -> Result<Option<Cow<'_, str>>> {
        Ok(self.0.alias_key(key)?.map(Into::into))
    }
    fn sender_key(&self, key: &str) -> Result<Option<Cow<'_, str>>> {
        Ok(self.0.sender_key(key)?.map(Into::into))
    }
}

impl SqlMaps for UserDb {
    fn is_local_domain(&self, domain: &str) -> Result<bool> {
        maps::is_local_domain(&Keys(self), domain)
    }
    fn is_mailbox(&self, address: &str, delims: &Delimiters) -> Result<bool> {
        maps::is_mailbox(&Keys(self), address, delims)
    }
    fn resolve_alias(&self, address: &str, delims: &Delimiters) -> Result<Option<Vec<String>>> {
        maps::resolve_alias(&Keys(self), address, delims)
    }
    fn sender_owners(&self, address: &str, delims: &Delimiters) -> Result<Option<Vec<String>>> {
        maps::sender_owners(&Keys(self), address, delims)
    }
    fn may_send_as(&self, login: &str, sender: &str, delims: &Delimiters) -> Result<bool> {
        maps::may_send_as(&Keys(self), login, sender, delims)
    }
}
