//! The shared Mail-in-a-Box user DB (`STORAGE_ROOT/mail/users.sqlite`).
//!
//! Responsibilities:
//! - open any schema generation MIAB ever shipped, or create a fresh one identical to MIAB's
//!   ([`schema`]); never switch it to WAL, always set a busy timeout;
//! - MIAB's address rules and error texts ([`address`], [`admin`]);
//! - MIAB's map queries, key by key ([`db`]), and the partial keys Postfix would try over them
//!   (`user+ext@domain`, `user@domain`, `@domain`), written once (`maps`);
//! - the [`directory`] the daemons ask: an in-memory snapshot with the same answers, and the
//!   live handle that swaps it when the DB changes (`handle`, feature `async`);
//! - app passwords and suspended logins, in our own `miab_sidecar_*` tables ([`app_password`],
//!   [`suspend`]);
//! - miab-policyd's record of what each login sends, and the held logins ([`sending`]);
//! - how the daemons' own SQLite state files are opened ([`state_db`]);
//! - the box's host name, one rule for every binary ([`boxconf`]);
//! - the clock and the civil date of a day count, for what the binaries print ([`clock`]);
//! - the backup hold that keeps the daemons' own files copyable ([`backup`]);
//! - SHA512-CRYPT hashing compatible with `doveadm pw` ([`password`]);
//! - MIAB's display order ([`sort`]).
//!
//! It knows nothing of sockets or protocols.

pub mod address;
pub mod admin;
pub mod app_password;
pub mod backup;
pub mod boxconf;
pub mod clock;
pub mod db;
pub mod directory;
mod error;
#[cfg(feature = "async")]
pub mod handle;
pub mod known_devices;
mod maps;
pub mod password;
pub mod schema;
pub mod sending;
pub mod sort;
pub mod state_db;
pub mod suspend;

pub use address::Delimiters;
pub use admin::{BoxEnv, KickReport, Outcome};
pub use db::{Access, Alias, Mfa, User, UserDb, db_path};
pub use directory::{Directory, Snapshot};
pub use error::{Error, Result};
#[cfg(feature = "async")]
pub use handle::{Hashers, Live};
pub use password::Password;

/// A DB with the user me@example.com (password "12345678"), for unit tests; the directory
/// must outlive the test.
#[cfg(test)]
pub(crate) fn one_user_box() -> (tempfile::TempDir, UserDb, BoxEnv) {
    let dir = tempfile::tempdir().unwrap();
    let mut db = UserDb::create(dir.path().join("users.sqlite")).unwrap();
    let env = BoxEnv {
        primary_hostname: "box.example.com".into(),
    };
    db.add_user("me@example.com", &Password::new("12345678"), "", "0", &env)
        .unwrap();
    (dir, db, env)
}

/// Directories under `STORAGE_ROOT/mail/mailboxes/<domain>/<user>` with no `users` row: MIAB's
/// archived ("inactive") accounts, whose mail was kept when the user was removed.
pub fn archived_mailboxes(
    storage_root: &std::path::Path,
    active: &std::collections::BTreeSet<String>,
) -> Vec<(String, std::path::PathBuf)> {
    let root = storage_root.join("mail").join("mailboxes");
    let mut out = Vec::new();
    let Ok(domains) = std::fs::read_dir(&root) else {
        return out;
    };
    for d in domains.flatten() {
        if !d.path().is_dir() {
            continue;
        }
        let Ok(users) = std::fs::read_dir(d.path()) else {
            continue;
        };
        for u in users.flatten() {
            let email = format!(
                "{}@{}",
                u.file_name().to_string_lossy(),
                d.file_name().to_string_lossy()
            );
            if !active.contains(&email) {
                out.push((email, u.path()));
            }
        }
    }
    out.sort();
    out
}
