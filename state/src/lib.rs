//! The sidecars' own state, each store owned by one daemon and opened only through here.
//!
//! Responsibilities:
//! - the stores, each owned by one daemon, with SQLite as the embedded backend:
//!   miab-policyd's greylist ([`greylist`], behind `GreylistStore`) and its record of what
//!   each login sends with the held logins ([`sending`], behind `SendingStore`); miab-authd's
//!   known devices ([`known_devices`], behind `KnownDeviceStore`) and app-password use
//!   ([`app_password_use`]);
//! - the one group commit every store's writes go through ([`commit`]): requests queue up,
//!   one transaction takes all that wait, each is answered after the commit;
//! - how the SQLite state files are opened ([`sqlite`]); PostgreSQL, for several hosts, with
//!   its schema, deadlines and circuit breaker, and the same stores over it ([`pg`]);
//! - the decision journal each daemon keeps for `miabctl explain` ([`journal`]);
//! - the backup hold that keeps them copyable ([`backup`]);
//! - the clock, and the civil date of a day count, for what the binaries print ([`clock`]).
//!
//! Where each file lives is the storage layout's business (`daemon::Layout`), never a store's.
//! MIAB's own user DB is the `userdb` crate, not state of ours.

pub mod app_password_use;
pub mod backup;
pub mod clock;
pub mod commit;
mod error;
pub mod greylist;
pub mod journal;
pub mod known_devices;
pub mod pg;
pub mod sending;
pub mod sqlite;

pub use error::{Error, Result};
