//! Typed errors. `Invalid` carries Mail-in-a-Box's own user-facing texts verbatim.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input refused by Mail-in-a-Box's rules; the text is MIAB's own.
    #[error("{0}")]
    Invalid(String),
    /// The DB file does not exist.
    #[error("user database not found: {} (is the storage root right? set --storage-root or MIAB_STORAGE_ROOT)", .0.display())]
    Missing(PathBuf),
    /// The file exists but is not a Mail-in-a-Box user DB.
    #[error("{}: not a Mail-in-a-Box user database: {reason}", path.display())]
    NotUserDb { path: PathBuf, reason: String },
    /// Another connection holds a lock for longer than the busy timeout.
    #[error("{}: the user database is locked by another program; nothing was changed, try again", .0.display())]
    Busy(PathBuf),
    /// The file or its directory cannot be written.
    #[error("{}: the user database is read-only; nothing was changed", .0.display())]
    ReadOnly(PathBuf),
    /// The file is older than the feature being used and must be migrated by MIAB first.
    #[error("{}: {what}; run Mail-in-a-Box's setup/migrate.py --migrate first", path.display())]
    SchemaTooOld { path: PathBuf, what: &'static str },
    /// Any other SQLite failure.
    #[error("{}: database error: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// A background task failed (a panic or a closed pool); a bug, reported rather than hidden.
    #[error("internal error in the user DB handle: {0}")]
    Internal(String),
    /// The OS could not provide randomness for a salt.
    #[error("no randomness available for a password salt: {0}")]
    Random(String),
}

impl Error {
    /// Classifies a SQLite error for `path`: lock and permission problems get their own variants.
    pub(crate) fn sqlite(path: &std::path::Path, e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        match e.sqlite_error_code() {
            Some(C::DatabaseBusy | C::DatabaseLocked) => Error::Busy(path.to_owned()),
            Some(C::ReadOnly) => Error::ReadOnly(path.to_owned()),
            Some(C::NotADatabase) => Error::NotUserDb {
                path: path.to_owned(),
                reason: "the file is not an SQLite database".into(),
            },
            _ => Error::Sqlite {
                path: path.to_owned(),
                source: e,
            },
        }
    }

    /// True for failures that may go away on retry (lock held, DB busy).
    pub fn is_temporary(&self) -> bool {
        matches!(self, Error::Busy(_))
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Invalid(msg.into()))
}
