//! Mail-in-a-Box's user DB (`STORAGE_ROOT/mail/users.sqlite`): the one file MIAB's control
//! panel writes, and the only crate that touches it.
//!
//! Responsibilities:
//! - open any schema generation MIAB ever shipped, or create a fresh one identical to MIAB's
//!   ([`schema`]); never switch it to WAL, always set a busy timeout;
//! - MIAB's address rules and error texts ([`address`], [`admin`]);
//! - MIAB's rows, read key by key ([`db`]) or all at once for the read model ([`rows`]);
//! - app passwords and suspended logins, in our own `miab_sidecar_*` tables in the same file
//!   ([`app_password`], [`suspend`]);
//! - SHA512-CRYPT hashing compatible with `doveadm pw` ([`password`]);
//! - MIAB's display order ([`sort`]).
//!
//! What the daemons ask of these rows (the key walk, the snapshot) is the `directory` crate;
//! the sidecars' own state files are the `state` crate. It knows nothing of sockets or
//! protocols.

pub mod address;
pub mod admin;
pub mod app_password;
pub mod db;
mod error;
pub mod password;
pub mod rows;
pub mod schema;
pub mod sort;
pub mod suspend;

pub use address::Delimiters;
pub use admin::{BoxEnv, KickReport, Outcome};
pub use db::{Access, Alias, Mfa, User, UserDb, db_path};
pub use error::{Error, Result};
pub use password::Password;

/// A DB with the user me@example.com (password "12345678"), for tests; the directory must
/// outlive the test.
#[cfg(any(test, feature = "test-support"))]
pub fn one_user_box() -> (tempfile::TempDir, UserDb, BoxEnv) {
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
