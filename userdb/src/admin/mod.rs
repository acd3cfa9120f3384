//! Changes to users and aliases, with MIAB's validation order and texts (`mailconfig.py`).
//!
//! Every change and the auto-alias regeneration it implies (MIAB's `kick()`) run in one short
//! `BEGIN IMMEDIATE` transaction, so a failure or a lock leaves the DB as it was. Password
//! hashing happens before the transaction starts, so the write lock is held for microseconds.
//!
//! Responsibilities:
//! - the types every change shares ([`BoxEnv`], [`Outcome`], [`KickReport`]) and the write
//!   transaction and schema checks (here);
//! - users: add, remove, password, privileges, quota, MFA (`users`);
//! - manual aliases: add (a pure plan, then its SQL) and remove (`aliases`);
//! - `kick()`: the auto-alias table and the legacy aliases it retires (`auto_aliases`).

mod aliases;
mod auto_aliases;
mod users;

pub use users::validate_quota;

use crate::db::UserDb;
use crate::error::{Error, Result};
use rusqlite::{Transaction, TransactionBehavior};

/// Box-wide settings the rules depend on (MIAB's `env`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoxEnv {
    /// `PRIMARY_HOSTNAME`: auto-aliases point to `administrator@` this name.
    pub primary_hostname: String,
}

impl BoxEnv {
    /// MIAB's `get_system_administrator`.
    pub fn administrator(&self) -> String {
        format!("administrator@{}", self.primary_hostname)
    }
}

/// What a `kick()` changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KickReport {
    /// Auto-aliases that appeared (`source`, `destination`).
    pub auto_added: Vec<(String, String)>,
    /// Auto-aliases that went away.
    pub auto_removed: Vec<(String, String)>,
    /// MIAB's own lines for legacy aliases it removed.
    pub messages: Vec<String>,
}

/// The outcome of a change: MIAB's status line and what the implied `kick()` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `mail user added`, `alias updated`, `OK`, ...
    pub status: String,
    /// Present when the change regenerated auto-aliases.
    pub kick: Option<KickReport>,
}

impl Outcome {
    pub(crate) fn plain(status: &str) -> Self {
        Outcome {
            status: status.to_owned(),
            kick: None,
        }
    }

    /// The text MIAB's API returns: the status line, then kick's own messages.
    pub fn text(&self) -> String {
        let mut s = self.status.clone();
        if let Some(k) = &self.kick {
            for m in &k.messages {
                s.push('\n');
                s.push_str(m);
            }
        }
        s
    }
}

impl UserDb {
    fn write_tx(&mut self) -> Result<Transaction<'_>> {
        let path = self.path.clone();
        self.conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| Error::sqlite(&path, e))
    }

    fn require_auto_aliases(&self) -> Result<()> {
        self.require(
            self.schema.auto_aliases,
            "this user database has no auto_aliases table (MIAB before v55)",
        )
    }

    fn require(&self, present: bool, what: &'static str) -> Result<()> {
        if present {
            Ok(())
        } else {
            Err(Error::SchemaTooOld {
                path: self.path.clone(),
                what,
            })
        }
    }
}
