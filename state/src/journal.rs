//! The decision journal: what a daemon decided about each message or login, and why, kept a
//! bounded number of days in a SQLite file of the daemon's own, for `miabctl explain`.
//!
//! Responsibilities:
//! - [`Journal::record`] never waits: entries go through a bounded queue to one writer thread,
//!   which wakes every [`PACE`] and writes whatever has queued up in one transaction (no
//!   wake-up per entry, one commit per pace); a full queue or a failed write loses entries
//!   (counted, and logged at most once a minute), never a request;
//! - every field is cleaned and bounded before it is queued: control characters become `?`,
//!   text is cut on a character boundary;
//! - entries older than the kept days are deleted, hourly;
//! - the reading side ([`Reader`]) opens the file read-only without following a link, for
//!   root's `miabctl explain`.

use rusqlite::{Connection, OpenFlags, params};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Entries that may wait for the writer; beyond it they are lost (and counted). At the pace
/// below, room for 40,000 decisions a second.
pub const QUEUE: usize = 8192;
/// How often the writer writes what has queued up.
pub const PACE: Duration = Duration::from_millis(200);
/// Bytes kept of an address, login, client or id.
pub const MAX_FIELD: usize = 320;
/// Bytes kept of a detail.
pub const MAX_DETAIL: usize = 2048;
/// Rows one query returns at most.
pub const MAX_ROWS: usize = 5000;

/// One decision.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The daemon that decided (`policyd`, `milter`, `authd`, `lookup`).
    pub daemon: String,
    /// Postfix's queue id, where Postfix gave one.
    pub queue_id: String,
    /// What ties one message's entries together inside one daemon: Postfix's policy
    /// `instance`, the milter's connection and message number.
    pub instance: String,
    /// The client's IP.
    pub client: String,
    /// The envelope sender, lower case.
    pub sender: String,
    /// The envelope recipients, lower case, separated by spaces.
    pub recipient: String,
    /// The SASL login, lower case.
    pub login: String,
    /// What kind of decision (`policy`, `verified`, `signed`, `login`, ...).
    pub event: String,
    /// What was decided and why, for a person.
    pub detail: String,
}

impl Entry {
    /// An entry of `daemon`'s, of kind `event`, stamped now.
    pub fn now(daemon: &str, event: &str) -> Entry {
        Entry {
            at_ms: now_ms(),
            daemon: daemon.to_owned(),
            event: event.to_owned(),
            ..Entry::default()
        }
    }

    /// Every field cleaned and cut to its bound.
    fn bounded(mut self) -> Entry {
        for f in [
            &mut self.daemon,
            &mut self.queue_id,
            &mut self.instance,
            &mut self.client,
            &mut self.sender,
            &mut self.recipient,
            &mut self.login,
            &mut self.event,
        ] {
            clean(f, MAX_FIELD);
        }
        clean(&mut self.detail, MAX_DETAIL);
        self
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Control characters become `?`; the text is cut to at most `max` bytes on a character
/// boundary.
pub fn clean(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    if s.chars().any(char::is_control) {
        *s = s
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS journal (
    at INTEGER NOT NULL,
    daemon TEXT NOT NULL,
    queue_id TEXT NOT NULL,
    instance TEXT NOT NULL,
    client TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    login TEXT NOT NULL,
    event TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_at ON journal (at);
CREATE INDEX IF NOT EXISTS journal_queue_id ON journal (queue_id) WHERE queue_id <> '';
";

/// The writing side: cheap to clone, shared by every connection.
#[derive(Debug, Clone)]
pub struct Journal {
    tx: SyncSender<Entry>,
    /// Entries queued and not yet written (or lost), for [`Journal::flush`].
    pending: Arc<AtomicU64>,
}

/// Called with how many entries were lost.
pub type OnLost = fn(u64);

impl Journal {
    /// Opens (creating it and its directory if needed) the journal at `path`, keeping
    /// entries `keep` long, and starts its writer thread. `on_lost` hears of every entry
    /// lost to a full queue or a failed write.
    pub fn open(
        path: &Path,
        keep: Duration,
        busy_timeout: Duration,
        on_lost: OnLost,
    ) -> rusqlite::Result<Journal> {
        let conn = open(path, busy_timeout)?;
        let (tx, rx) = sync_channel(QUEUE);
        let pending = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            pending: Arc::clone(&pending),
            conn,
            keep_ms: i64::try_from(keep.as_millis()).unwrap_or(i64::MAX),
            on_lost,
            last_complaint: None,
        };
        std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || writer.run(&rx))
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Journal { tx, pending })
    }

    /// Queues `entry`; a full queue loses it (and says so). Never waits.
    pub fn record(&self, entry: Entry) -> bool {
        self.pending.fetch_add(1, Ordering::AcqRel);
        match self.tx.try_send(entry.bounded()) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.pending.fetch_sub(1, Ordering::AcqRel);
                false
            }
        }
    }

    /// Waits, at most `limit`, until what was queued is written: at shutdown, so the last
    /// decisions are kept.
    pub fn flush(&self, limit: Duration) {
        let started = Instant::now();
        while self.pending.load(Ordering::Acquire) > 0 && started.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

struct Writer {
    pending: Arc<AtomicU64>,
    conn: Connection,
    keep_ms: i64,
    on_lost: OnLost,
    last_complaint: Option<Instant>,
}

impl Writer {
    fn run(mut self, rx: &Receiver<Entry>) {
        let mut pruned: Option<Instant> = None;
        loop {
            if pruned.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
                pruned = Some(Instant::now());
                let before = now_ms().saturating_sub(self.keep_ms);
                if let Err(e) = self
                    .conn
                    .execute("DELETE FROM journal WHERE at < ?1", [before])
                {
                    tracing::warn!(error = %e, "journal: could not delete old entries");
                }
            }
            // Asleep between writes rather than waiting on the queue: a request that records
            // wakes nobody.
            std::thread::sleep(PACE);
            let mut batch = Vec::new();
            loop {
                match rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        if !batch.is_empty() {
                            let _ = self.write(&batch);
                        }
                        return;
                    }
                }
            }
            if batch.is_empty() {
                continue;
            }
            let written = self.write(&batch);
            self.pending.fetch_sub(batch.len() as u64, Ordering::AcqRel);
            if let Err(e) = written {
                (self.on_lost)(batch.len() as u64);
                if self
                    .last_complaint
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
                {
                    self.last_complaint = Some(Instant::now());
                    tracing::warn!(error = %e, lost = batch.len(), "journal: entries not written");
                }
            }
        }
    }

    fn write(&mut self, batch: &[Entry]) -> rusqlite::Result<()> {
        insert(&mut self.conn, batch)
    }
}

/// Appends `entries` to the journal at `path` at once, without a writer thread: for a tool
/// that records what it did (`miabctl held release`) in a daemon's journal.
pub fn append(path: &Path, entries: Vec<Entry>, busy_timeout: Duration) -> rusqlite::Result<()> {
    let mut conn = open(path, busy_timeout)?;
    let entries: Vec<Entry> = entries.into_iter().map(Entry::bounded).collect();
    insert(&mut conn, &entries)
}

/// The journal file, made if needed: WAL, `synchronous = NORMAL` (a crash loses at most the
/// last writes, never the file), 4 KiB pages (rows are appended in batches).
fn open(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let conn = Connection::open(path)?;
    conn.busy_timeout(busy_timeout)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

fn insert(conn: &mut Connection, batch: &[Entry]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO journal (at, daemon, queue_id, instance, client, sender, recipient,
                 login, event, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for e in batch {
            insert.execute(params![
                e.at_ms,
                e.daemon,
                e.queue_id,
                e.instance,
                e.client,
                e.sender,
                e.recipient,
                e.login,
                e.event,
                e.detail
            ])?;
        }
    }
    tx.commit()
}

/// The reading side, for `miabctl explain` and `status`.
#[derive(Debug)]
pub struct Reader {
    conn: Connection,
}

/// What to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query<'a> {
    /// Entries with this queue id.
    QueueId(&'a str),
    /// Entries of one message inside one daemon.
    Instance(&'a str),
    /// Entries where the address is the sender, the login or one of the recipients, from
    /// `since_ms` on.
    Address { address: &'a str, since_ms: i64 },
    /// Entries from this sender and client between two times (earlier attempts of a message).
    Attempts {
        sender: &'a str,
        client: &'a str,
        from_ms: i64,
        to_ms: i64,
    },
}

impl Reader {
    /// Opens the journal at `path` read-only; a link is not followed.
    pub fn open(path: &Path) -> rusqlite::Result<Reader> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NOFOLLOW
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(Reader { conn })
    }

    /// The entries `q` asks for, oldest first, at most [`MAX_ROWS`].
    pub fn read(&self, q: &Query<'_>) -> rusqlite::Result<Vec<Entry>> {
        const COLS: &str = "SELECT at, daemon, queue_id, instance, client, sender, recipient,
            login, event, detail FROM journal";
        let limit = MAX_ROWS as i64;
        let row = |r: &rusqlite::Row<'_>| {
            Ok(Entry {
                at_ms: r.get(0)?,
                daemon: r.get(1)?,
                queue_id: r.get(2)?,
                instance: r.get(3)?,
                client: r.get(4)?,
                sender: r.get(5)?,
                recipient: r.get(6)?,
                login: r.get(7)?,
                event: r.get(8)?,
                detail: r.get(9)?,
            })
        };
        use rusqlite::types::Value;
        let text = |t: &str| Value::Text(t.to_owned());
        let (filter, mut args): (&str, Vec<Value>) = match q {
            Query::QueueId(id) => ("queue_id = ?1", vec![text(id)]),
            Query::Instance(i) => ("instance = ?1", vec![text(i)]),
            Query::Address { address, since_ms } => (
                "at >= ?2 AND (sender = ?1 OR login = ?1
                   OR instr(' ' || recipient || ' ', ' ' || ?1 || ' ') > 0)",
                vec![text(&address.to_lowercase()), Value::Integer(*since_ms)],
            ),
            Query::Attempts {
                sender,
                client,
                from_ms,
                to_ms,
            } => (
                "sender = ?1 AND client = ?2 AND at >= ?3 AND at <= ?4",
                vec![
                    text(sender),
                    text(client),
                    Value::Integer(*from_ms),
                    Value::Integer(*to_ms),
                ],
            ),
        };
        let sql = format!(
            "{COLS} WHERE {filter} ORDER BY at, rowid LIMIT ?{}",
            args.len() + 1
        );
        args.push(Value::Integer(limit));
        let mut s = self.conn.prepare(&sql)?;
        let rows = s.query_map(rusqlite::params_from_iter(args), row)?;
        rows.collect()
    }

    /// Entries from `since_ms` on whose detail contains `text`.
    pub fn count_containing(&self, since_ms: i64, text: &str) -> rusqlite::Result<u64> {
        self.conn
            .query_row(
                "SELECT count(*) FROM journal WHERE at >= ?1 AND instr(detail, ?2) > 0",
                params![since_ms, text],
                |r| r.get::<_, i64>(0),
            )
            .map(i64::unsigned_abs)
    }

    /// Entries per event from `since_ms` on, for `status`.
    pub fn counts_since(&self, since_ms: i64) -> rusqlite::Result<Vec<(String, String, u64)>> {
        // The detail's first word, up to its colon: the answer kind, `ok`, `failed`, ...
        let mut s = self.conn.prepare(
            "SELECT event, substr(detail, 1, instr(detail || ':', ':') - 1) AS head, count(*)
             FROM journal WHERE at >= ?1 GROUP BY event, head",
        )?;
        let rows = s.query_map([since_ms], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?.unsigned_abs()))
        })?;
        rows.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_for(r: &Reader, q: &Query<'_>, n: usize) -> Vec<Entry> {
        for _ in 0..200 {
            let got = r.read(q).unwrap();
            if got.len() >= n {
                return got;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        r.read(q).unwrap()
    }

    #[test]
    fn entries_are_written_bounded_and_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("journal.sqlite");
        let j = Journal::open(
            &path,
            Duration::from_secs(86400),
            Duration::from_secs(1),
            |_| {},
        )
        .unwrap();
        let mut e = Entry::now("policyd", "policy");
        e.queue_id = "4ABC".into();
        e.sender = "a@example.org".into();
        e.recipient = "x@box.test y@box.test".into();
        e.client = "192.0.2.1".into();
        e.detail = format!("greylist: {}\n\x1b[31m{}", "é".repeat(2000), "z");
        assert!(j.record(e));
        let mut other = Entry::now("milter", "verified");
        other.instance = "7.1".into();
        other.login = "me@box.test".into();
        assert!(j.record(other));
        j.flush(Duration::from_secs(2));
        let r = Reader::open(&path).unwrap();
        assert_eq!(
            r.read(&Query::QueueId("4ABC")).unwrap().len(),
            1,
            "written by flush"
        );
        let got = wait_for(&r, &Query::QueueId("4ABC"), 1);
        assert_eq!(got.len(), 1);
        assert!(got[0].detail.len() <= MAX_DETAIL);
        assert!(!got[0].detail.chars().any(char::is_control));
        for (addr, n) in [
            ("Y@box.test", 1),
            ("x@box.test", 1),
            ("@box.test", 0),
            ("a@example.org", 1),
            ("me@box.test", 1),
        ] {
            let q = Query::Address {
                address: addr,
                since_ms: 0,
            };
            assert_eq!(wait_for(&r, &q, n).len(), n, "{addr}");
        }
        assert_eq!(r.read(&Query::Instance("7.1")).unwrap().len(), 1);
        let q = Query::Attempts {
            sender: "a@example.org",
            client: "192.0.2.1",
            from_ms: 0,
            to_ms: i64::MAX,
        };
        assert_eq!(r.read(&q).unwrap().len(), 1);
        assert_eq!(r.count_containing(0, "greylist: ").unwrap(), 1);
        let counts = r.counts_since(0).unwrap();
        assert!(counts.contains(&("policy".into(), "greylist".into(), 1)));
    }

    #[test]
    fn a_link_is_not_followed_by_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.sqlite");
        Journal::open(
            &real,
            Duration::from_secs(60),
            Duration::from_secs(1),
            |_| {},
        )
        .unwrap();
        let link = dir.path().join("journal.sqlite");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(Reader::open(&link).is_err());
        assert!(Reader::open(&real).is_ok());
    }

    #[test]
    fn clean_cuts_on_a_char_boundary() {
        let mut s = "aé".repeat(10);
        clean(&mut s, 4);
        assert_eq!(s, "aéa");
        let mut t = "a\r\nb\u{85}".to_string();
        clean(&mut t, 100);
        assert_eq!(t, "a??b?");
    }
}
