//! What can go wrong with a state file.

use std::path::PathBuf;

/// Why a state store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is not there (and the caller must not create it).
    #[error("{}: not found", .0.display())]
    Missing(PathBuf),
    /// SQLite failed.
    #[error("{}: database error: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// The file or its directory could not be made.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Written by a newer version of the sidecars.
    #[error("{}: schema {found} is newer than this program ({known})", path.display())]
    Newer {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    /// A bug, or a writer that is gone.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub(crate) fn sqlite(path: &std::path::Path, source: rusqlite::Error) -> Self {
        Error::Sqlite {
            path: path.to_owned(),
            source,
        }
    }
}

/// A state store's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
