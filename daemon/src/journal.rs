//! The process's decision journal (`state::journal`), opened by `launch` from the section's
//! `journal` setting, and what the daemon's parts call to record a decision: nothing when no
//! journal is configured, a queued entry otherwise, counted either way it goes.

use prometheus_client::metrics::counter::Counter;
use state::journal::{Entry, Journal};
use std::path::Path;
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

pub use state::journal::Entry as JournalEntry;

static JOURNAL: OnceLock<Journal> = OnceLock::new();

struct Figures {
    written: Counter,
    lost: Counter,
}

fn figures() -> &'static Figures {
    static F: LazyLock<Figures> = LazyLock::new(|| {
        let f = Figures {
            written: Counter::default(),
            lost: Counter::default(),
        };
        crate::metrics::register(
            "journal_entries",
            "Decisions queued for the decision journal",
            f.written.clone(),
        );
        crate::metrics::register(
            "journal_dropped",
            "Decisions lost to a full journal queue or a failed write",
            f.lost.clone(),
        );
        f
    });
    &F
}

fn lost(n: u64) {
    figures().lost.inc_by(n);
}

/// Opens the journal at `path` for this process. A second call keeps the first journal.
pub fn open(path: &Path, keep: Duration, busy_timeout: Duration) -> Result<(), String> {
    let j = Journal::open(path, keep, busy_timeout, lost).map_err(|e| e.to_string())?;
    let _ = JOURNAL.set(j);
    figures();
    Ok(())
}

/// Is a journal kept? (Lets a caller skip building an entry.)
pub fn enabled() -> bool {
    JOURNAL.get().is_some()
}

/// At shutdown: waits (at most a second) until the queued decisions are written.
pub fn flush() {
    if let Some(j) = JOURNAL.get() {
        j.flush(Duration::from_secs(1));
    }
}

/// Records `entry` if a journal is kept.
pub fn record(entry: Entry) {
    if let Some(j) = JOURNAL.get() {
        if j.record(entry) {
            figures().written.inc();
        } else {
            lost(1);
        }
    }
}
